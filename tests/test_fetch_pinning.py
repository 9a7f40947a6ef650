"""DNS rebinding: the manifest fetcher and the webhook sender connect to the address they
checked, check every redirect hop, and refuse names whose answers mix public and private
addresses. Real local servers; only DNS (the outside world) is scripted: 127.0.0.1 stands
for a public server (allow-listed) and 127.0.0.2 for the private network behind it."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from service.fetch import AllowList, FetchError, FetchLimits, fetch_image, pinned_send
from service.settings import Settings
from service.store import JobStore
from service.webhooks import attempt_delivery
from tests.http_fixtures import LocalHTTP, local_http
from tests.support import encode, garment_photo, stored_delivery

PRIVATE = "127.0.0.2"  # loopback, not allow-listed: what a rebinding name switches to


class ScriptedDNS:
    """getaddrinfo with scripted answers per name: each lookup takes the next answer (the
    last one repeats); other names resolve for real. `lookups` counts them per name."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = {name: list(seq) for name, seq in answers.items()}
        self.lookups: dict[str, int] = {}
        self._real = socket.getaddrinfo

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):  # noqa: ANN001, ANN204, A002
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self._real(host, port, family, type, proto, flags)
        self.lookups[name] = self.lookups.get(name, 0) + 1
        seq = self.answers[name]
        addresses = seq.pop(0) if len(seq) > 1 else seq[0]
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port), 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port)))
                for a in addresses]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> ScriptedDNS:
    # Patched in the socket module itself: the check and httpx's connect both see it, as
    # they would both see a rebinding DNS server.
    resolver = ScriptedDNS({})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode(garment_photo(160, 120)[0], "JPEG", quality=85)


@pytest.fixture
def servers(jpeg: bytes) -> Iterator[tuple[LocalHTTP, LocalHTTP]]:
    """The allowed server on 127.0.0.1 and a private one on 127.0.0.2, on the same port."""
    with local_http({"/shirt.jpg": ("image/jpeg", jpeg)}) as good:
        port = int(good.url.rsplit(":", 1)[1])
        secret = {"/shirt.jpg": ("image/jpeg", b"\xff\xd8 internal secret")}
        with local_http(secret, host=PRIVATE, port=port) as private:
            yield good, private


def _limits(allow: str = "127.0.0.1") -> FetchLimits:
    return FetchLimits(max_bytes=1_000_000, timeout_s=3.0, max_redirects=3,
                       allow=AllowList.parse(allow))


def _port(srv: LocalHTTP) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def test_a_name_that_rebinds_after_the_check_is_fetched_from_the_checked_address(
    dns: ScriptedDNS, servers: tuple[LocalHTTP, LocalHTTP], jpeg: bytes
) -> None:
    good, private = servers
    port = _port(good)
    dns.answers["rebind.test"] = [["127.0.0.1"], [PRIVATE]]
    dns.answers["hop.test"] = [["127.0.0.1"], [PRIVATE]]
    data, _ = fetch_image(f"http://rebind.test:{port}/shirt.jpg", _limits())
    assert data == jpeg
    # A redirect hop is resolved, checked and pinned like the first.
    data, _ = fetch_image(f"{good.url}/redirect-to?http://hop.test:{port}/shirt.jpg", _limits())
    assert data == jpeg
    assert private.fetched == []
    assert dns.lookups == {"rebind.test": 1, "hop.test": 1}  # one lookup each, then pinned
    # The server saw the name, not the address, as the Host.
    assert ("/shirt.jpg", f"rebind.test:{port}") in good.fetched
    assert ("/shirt.jpg", f"hop.test:{port}") in good.fetched


def test_a_refused_connection_moves_on_to_the_next_checked_address(
    dns: ScriptedDNS, servers: tuple[LocalHTTP, LocalHTTP], jpeg: bytes
) -> None:
    good, private = servers
    dns.answers["two.test"] = [["127.0.0.3", "127.0.0.1"], [PRIVATE]]  # nothing on .3
    data, _ = fetch_image(f"http://two.test:{_port(good)}/shirt.jpg",
                          _limits("127.0.0.1,127.0.0.3"))
    assert data == jpeg and private.fetched == [] and dns.lookups == {"two.test": 1}


def test_a_redirect_to_a_private_name_is_refused(
    dns: ScriptedDNS, servers: tuple[LocalHTTP, LocalHTTP]
) -> None:
    good, private = servers
    dns.answers["internal.test"] = [[PRIVATE]]
    with pytest.raises(FetchError) as err:
        fetch_image(f"{good.url}/redirect-to?http://internal.test:{_port(good)}/shirt.jpg",
                    _limits())
    assert err.value.code == "url_refused" and PRIVATE in err.value.message
    assert private.fetched == []


@pytest.mark.parametrize("answer", [["127.0.0.1", "93.184.215.14"],
                                    ["2606:4700::1111", "127.0.0.1"]])
def test_answers_mixing_public_and_private_addresses_are_refused(
    dns: ScriptedDNS, servers: tuple[LocalHTTP, LocalHTTP], answer: list[str]
) -> None:
    good, _ = servers
    dns.answers["mixed.test"] = [answer]
    # Refused even though the private address is allow-listed: mixing is the rebinding tell.
    with pytest.raises(FetchError) as err:
        fetch_image(f"http://mixed.test:{_port(good)}/shirt.jpg", _limits())
    assert err.value.code == "url_refused"
    assert "both public" in err.value.message and "127.0.0.1" in err.value.message
    assert good.fetched == []


def _delivery(tmp_path: Path, url: str) -> tuple[JobStore, Settings, str]:
    return stored_delivery(tmp_path, url, fetch_allow_hosts="127.0.0.1", fetch_timeout_s=3.0,
                           webhook_max_attempts=1)


def test_webhooks_are_posted_to_the_checked_address(
    dns: ScriptedDNS, servers: tuple[LocalHTTP, LocalHTTP], tmp_path: Path
) -> None:
    good, private = servers
    dns.answers["hooks.test"] = [["127.0.0.1"], [PRIVATE]]
    store, settings, delivery_id = _delivery(tmp_path, f"http://hooks.test:{_port(good)}/hook")
    try:
        assert attempt_delivery(store, settings, delivery_id) is None
        assert store.get_delivery(delivery_id).status == "succeeded"
    finally:
        store.dispose()
    assert [(p, h["Host"]) for p, h, _ in good.received] == \
        [("/hook", f"hooks.test:{_port(good)}")]
    assert private.received == []


def test_webhooks_to_a_name_with_mixed_answers_are_refused(
    dns: ScriptedDNS, servers: tuple[LocalHTTP, LocalHTTP], tmp_path: Path
) -> None:
    good, _ = servers
    dns.answers["mixed.test"] = [["127.0.0.1", "93.184.215.14"]]
    store, settings, delivery_id = _delivery(tmp_path, f"http://mixed.test:{_port(good)}/hook")
    try:
        attempt_delivery(store, settings, delivery_id)
        delivery = store.get_delivery(delivery_id)
    finally:
        store.dispose()
    assert delivery.status == "failed"
    assert delivery.attempts[0]["error"].startswith("url_refused: mixed.test resolves to both")
    assert good.received == []


# --- TLS: pinned to the address, verified against the name ------------------------------------


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_is_pinned_to_the_address_and_verified_against_the_name(
    dns: ScriptedDNS, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path, "pinned.test")
    server_names: list[str | None] = []
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.sni_callback = lambda sock, name, ctx: server_names.append(name)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    dns.answers["pinned.test"] = [["127.0.0.1"]]
    dns.answers["other.test"] = [["127.0.0.1"]]
    allow = AllowList.parse("127.0.0.1")
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)),
                          trust_env=False, timeout=3.0) as http:
            r = pinned_send(http, "GET", f"https://pinned.test:{port}/", allow, headers={})
            assert r.status_code == 204
            assert server_names == ["pinned.test"]
            # A name the certificate does not cover fails verification, as without pinning.
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                pinned_send(http, "GET", f"https://other.test:{port}/", allow, headers={})
    finally:
        server.shutdown()
        server.server_close()

"""Fetching URLs we were given (manifest images, webhook targets) without becoming a proxy
into the private network.

Every hop, redirects included, must be http(s) to a host whose every address is public,
unless `fetch_allow_hosts` names the host, the address or its network. Limits on time,
size, redirects and content type; each refusal is a FetchError with a code.
Against DNS rebinding, a name is resolved once per hop and the connection goes to the address
that was checked (`pinned_send`: the URL carries the address, the Host header and TLS SNI and
certificate check the name), and a name whose answers mix public and private addresses is
refused outright.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from models.errors import TypedError

IMAGE_CONTENT_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
MAX_URL_LENGTH = 2048


class FetchError(TypedError):
    """A URL we may not or could not fetch (url_invalid, url_refused, url_fetch_failed, …)."""


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks that may be private anyway ("127.0.0.1", "10.0.0.0/8", "minio")."""

    hosts: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, spec: str) -> AllowList:
        hosts, networks = set(), []
        for item in filter(None, (i.strip() for i in spec.split(","))):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower())
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return host.lower() in self.hosts or any(address in n for n in self.networks)


def check_url(url: str) -> tuple[str, int]:
    """(host, port) of an absolute http(s) URL; FetchError `url_invalid` otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise FetchError("url_invalid", f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError("url_invalid", f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("url_invalid", "only absolute http:// and https:// URLs are accepted")
    if parts.username or parts.password:
        raise FetchError("url_invalid", "URLs with credentials are not accepted")
    if any(c in url for c in "\r\n\t\0 "):
        raise FetchError("url_invalid", "the URL contains whitespace or control characters")
    try:
        # What the sender will parse: a URL it cannot (an octal or hex IPv4 spelling) is
        # refused here, not as an exception on every delivery attempt.
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise FetchError("url_invalid", f"not a valid URL: {exc}") from None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_public_url(url: str, allow: AllowList) -> tuple[str, int]:
    """`check_url`, and an address written in the URL refused now when it is private (names
    are checked when connecting): what a submitted manifest or webhook URL must pass."""
    if len(url) <= MAX_URL_LENGTH:
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        if host:
            refuse_private_literal(host, allow)
    return check_url(url)


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address:
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


# IPv4 spellings a resolver reads without DNS (inet_aton): 127.1, 0177.0.0.1, 0x7f.1, 2130706433
_IPV4_NUMERIC = re.compile(r"[0-9][0-9a-fx.]*", re.IGNORECASE)


def literal_address(host: str) -> Address | None:
    """The address a host written as an IP literal stands for, in any spelling a resolver
    takes without DNS (dotted, short, octal, hex, one number, bracketed IPv6); None for a
    name."""
    text = host.strip("[]").rstrip(".")
    try:
        return _address(text)
    except ValueError:
        pass
    if _IPV4_NUMERIC.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def refuse_private_literal(host: str, allow: AllowList) -> None:
    """FetchError `url_refused` when `host` is a literal private, loopback, link-local or
    reserved address that `allow` does not name."""
    address = literal_address(host)
    if address is not None and not address.is_global and not allow.allows(host, address):
        raise FetchError("url_refused", f"{host} is {address}, a private, loopback, link-local "
                         "or reserved address (FLATLAY_FETCH_ALLOW_HOSTS can allow it)")


def resolve_addresses(host: str, port: int, allow: AllowList) -> list[Address]:
    """The addresses `host` may be reached at, in the resolver's order: FetchError
    `url_refused` when one is private and not allowed, or when the answers mix public and
    private addresses (a rebinding name answers with both, hoping a connection picks the
    private one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError("url_fetch_failed", f"cannot resolve {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(_address(info[4][0]) for info in infos))
    if not addresses:
        raise FetchError("url_fetch_failed", f"cannot resolve {host!r}: no address")
    public = [str(a) for a in addresses if a.is_global]
    private = [str(a) for a in addresses if not a.is_global]
    if public and private:
        raise FetchError(
            "url_refused",
            f"{host} resolves to both public ({', '.join(public)}) and private "
            f"({', '.join(private)}) addresses; refused as a DNS rebinding risk",
        )
    for address in addresses:
        if not address.is_global and not allow.allows(host, address):
            raise FetchError(
                "url_refused",
                f"{host} resolves to {address}, a private, loopback, link-local or reserved "
                "address (FLATLAY_FETCH_ALLOW_HOSTS can allow it)",
            )
    return addresses


def pinned_send(http: httpx.Client, method: str, url: str, allow: AllowList, *,
                headers: dict[str, str], content: bytes | None = None,
                stream: bool = False) -> httpx.Response:
    """Check `url` and send one request (no redirects followed) to the addresses checked,
    not to whatever the name resolves to when connecting: each in turn while the connection
    is refused, as a connect by name would. FetchError from `check_url` and
    `resolve_addresses`; httpx errors from the request itself."""
    _, port = check_url(url)
    target = httpx.URL(url)
    name = target.raw_host.decode("ascii")  # IDNA-encoded, as httpx would send it
    addresses = resolve_addresses(name, port, allow)

    def send(address: Address) -> httpx.Response:
        request = http.build_request(
            method, target.copy_with(host=str(address)), content=content,
            headers={**headers, "Host": target.netloc.decode("ascii")},
            # SNI and the certificate check use the name; only the TCP connect uses the address.
            extensions={"sni_hostname": name},
        )
        return http.send(request, stream=stream, follow_redirects=False)

    for address in addresses[:-1]:
        try:
            return send(address)
        except httpx.ConnectError:
            continue  # nothing sent yet: the next checked address
    return send(addresses[-1])


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout_s: float
    max_redirects: int
    allow: AllowList


def fetch_image(url: str, limits: FetchLimits) -> tuple[bytes, str]:
    """GET an image: (bytes, content type). FetchError with `url_invalid`, `url_refused`,
    `url_fetch_failed`, `url_too_many_redirects`, `url_bad_content_type` or `url_too_large`."""
    deadline = time.monotonic() + limits.timeout_s
    with httpx.Client(follow_redirects=False, timeout=limits.timeout_s, trust_env=False) as http:
        # Redirects by hand: each hop is checked and pinned like the first.
        for _ in range(limits.max_redirects + 1):
            try:
                response = pinned_send(http, "GET", url, limits.allow,
                                       headers={"Accept": "image/*"}, stream=True)
                try:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        raise FetchError("url_fetch_failed",
                                         f"the server answered {response.status_code}")
                    return _read_image(response, limits, deadline), _content_type(response)
                finally:
                    response.close()
            except httpx.HTTPError as exc:
                raise FetchError("url_fetch_failed", f"{type(exc).__name__}: {exc}") from None
    raise FetchError("url_too_many_redirects", f"more than {limits.max_redirects} redirects")


def _content_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip().lower()


def _read_image(response: httpx.Response, limits: FetchLimits, deadline: float) -> bytes:
    content_type = _content_type(response)
    if content_type not in IMAGE_CONTENT_TYPES:
        raise FetchError("url_bad_content_type",
                         f"content type {content_type or 'none'!r}; accepted: "
                         f"{', '.join(sorted(IMAGE_CONTENT_TYPES))}")
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise FetchError("url_too_large", f"{declared} bytes; the limit is {limits.max_bytes}")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limits.max_bytes:
            raise FetchError("url_too_large", f"more than the limit of {limits.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError("url_fetch_failed", f"slower than {limits.timeout_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)

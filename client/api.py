"""`Client`: the Flatlay HTTP API from Python, with retries and idempotent submissions.

    from client import Client
    flatlay = Client("http://127.0.0.1:8000", api_key="fl_…")
    png = flatlay.result(flatlay.wait(flatlay.submit("shirt.jpg", preset="amazon-main")))

Only httpx and the standard library: no torch, no FastAPI, nothing of the server.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import mimetypes
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from client.errors import (
    ConnectionFailed,
    FlatlayError,
    JobFailed,
    WaitTimeout,
    error_from_response,
)

# The option fields of `POST /assets` and `POST /batches` (service/options.py OPTION_FIELDS,
# plus the pipeline); tests/test_submit.py keeps the two lists equal.
OPTION_NAMES = ("pipeline", "preset", "output_size", "background", "format", "seed",
                "structure", "steps", "hint")
# The side outputs a job may have and their file suffixes (models/pipeline.py SIDE_OUTPUTS).
SIDE_OUTPUTS = {"mask": "png", "landmarks": "json", "neighbours": "json", "overlay": "png",
                "coarse": "png", "attributes": "json"}
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
# Answers worth another try: the server says so (429 with Retry-After, 503), or a proxy in
# front of a restarting API does (502, 504).
_RETRY_STATUS = frozenset({429, 502, 503, 504})
# Connection refused or reset, a request cut off, a timeout: the API restarting, a network
# blip. Safe to retry: reads are idempotent and every create carries an Idempotency-Key.
_RETRY_ERRORS = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)

Photo = str | os.PathLike | bytes
AssetRef = str | Mapping[str, Any]


def _id_of(ref: AssetRef) -> str:
    """An id, or the id of a status or creation answer (so calls chain)."""
    return str(ref["id"]) if isinstance(ref, Mapping) else str(ref)


def _read_photo(photo: Photo, filename: str | None) -> tuple[str, bytes]:
    if isinstance(photo, bytes | bytearray):
        return filename or "photo", bytes(photo)
    path = Path(photo)
    return filename or path.name, path.read_bytes()


def _form(options: Mapping[str, Any]) -> dict[str, str]:
    """Options as multipart form fields; None means "not given" (the preset decides)."""
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; options are "
                        f"{', '.join(OPTION_NAMES)}")
    form = {}
    for name, value in options.items():
        if value is None:
            continue
        form[name] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return form


def request_key(kind: str, form: Mapping[str, str], files: Iterable[tuple[str, bytes]],
                    extra: str = "") -> str:
    """A key that is the same for the same request: what it asks (route, options, file names
    and contents), so a retried or repeated post makes no second job; another request gets
    another key (the service answers 409 for a reused key with another request)."""
    h = hashlib.sha256(json.dumps([kind, dict(sorted(form.items())), extra]).encode())
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"flc1-{kind}-{h.hexdigest()}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)  # an HTTP date
        return max(0.0, when.timestamp() - time.time()) if when else None


class Client:
    """A Flatlay server. Every call retries 429 (after its `Retry-After`), 502–504 and
    connection errors with exponential backoff for up to `retry_for_s` seconds, then raises
    a typed error (client.errors); other errors raise at once. Thread-safe: one client may
    serve several threads."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 120.0,
                 retry_for_s: float = 120.0, backoff_s: float = 0.25, max_backoff_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the server URL must start with http:// or https://, got "
                             f"{base_url!r}")
        headers = {"User-Agent": "flatlay-client/1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.retry_for_s = retry_for_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s,
                                  transport=transport)

    def __repr__(self) -> str:  # never the key
        return f"Client({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport --------------------------------------------------------------------------

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One call with the retries above; the answer when it is 2xx, a typed error
        otherwise."""
        deadline = time.monotonic() + self.retry_for_s
        attempt = 0
        while True:
            attempt += 1
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
            wait *= 0.5 + random.random() / 2  # jitter: many clients do not retry in step
            try:
                response = self._http.request(method, path, **kw)
            except _RETRY_ERRORS as exc:
                if time.monotonic() + wait > deadline:
                    raise ConnectionFailed(
                        "connection_failed", f"{method} {self.base_url}{path}: "
                        f"{type(exc).__name__}: {exc} (retried {attempt - 1} times)") from exc
                self._sleep(wait)
                continue
            if response.is_success:
                return response
            after = _retry_after(response)
            if response.status_code in _RETRY_STATUS:
                if after is not None:
                    wait = after  # the server knows when a token is free
                if time.monotonic() + wait <= deadline:
                    self._sleep(wait)
                    continue
            raise self._error(response, after)

    @staticmethod
    def _error(response: httpx.Response, retry_after: float | None) -> FlatlayError:
        try:
            body = response.json()
        except ValueError:
            body = None
        return error_from_response(response.status_code, body,
                                   response.headers.get("x-request-id"), retry_after)

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        return self.request(method, path, **kw).json()

    # --- assets -----------------------------------------------------------------------------

    def submit(self, photo: Photo, *, filename: str | None = None,
               idempotency_key: str | None = None, webhook_url: str | None = None,
               **options: Any) -> dict[str, Any]:
        """`POST /assets`: one photo (a path or its bytes) with options (pipeline, preset,
        output_size, background, format, seed, structure, steps, hint). Returns the creation
        answer ({id, status, links}); the same photo with the same options returns the same
        job, since the Idempotency-Key is derived from them."""
        name, data = _read_photo(photo, filename)
        form = _form(options)
        if webhook_url:
            form["webhook_url"] = webhook_url
        key = idempotency_key or request_key("asset", form, [(name, data)])
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return self._json("POST", "/assets", data=form,
                          files={"file": (name, data, content_type)},
                          headers={"Idempotency-Key": key})

    def status(self, asset: AssetRef) -> dict[str, Any]:
        """`GET /assets/{id}`: status, progress, timings, error, side outputs, compliance,
        attributes."""
        return self._json("GET", f"/assets/{_id_of(asset)}")

    def wait(self, asset: AssetRef, timeout: float = 600.0, poll_s: float = 0.5,
             check: bool = True) -> dict[str, Any]:
        """The job's status once it has finished; JobFailed when it failed or was canceled
        (unless `check` is false), WaitTimeout after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(asset)
            if status["status"] in TERMINAL:
                if check and status["status"] != "succeeded":
                    raise JobFailed(status)
                return status
            if time.monotonic() + poll_s > deadline:
                raise WaitTimeout("wait_timeout", f"asset {_id_of(asset)} still "
                                  f"{status['status']} after {timeout:g} s")
            self._sleep(poll_s)

    def result(self, asset: AssetRef) -> bytes:
        """`GET /assets/{id}/result`: the flat-lay's bytes (Conflict `asset_not_ready` until
        it has succeeded)."""
        return self.request("GET", f"/assets/{_id_of(asset)}/result").content

    def output(self, asset: AssetRef, name: str) -> bytes:
        """`GET /assets/{id}/outputs/{name}`: a side output (mask, landmarks, neighbours,
        overlay, coarse, attributes: those the pipeline produced)."""
        return self.request("GET", f"/assets/{_id_of(asset)}/outputs/{name}").content

    def cancel(self, asset: AssetRef) -> dict[str, Any]:
        return self._json("POST", f"/assets/{_id_of(asset)}/cancel")

    # --- batches ----------------------------------------------------------------------------

    def submit_batch(self, files: Sequence[Photo | tuple[str, bytes]] | None = None, *,
                     archive: Photo | None = None,
                     manifest: Sequence[Mapping[str, Any]] | None = None,
                     idempotency_key: str | None = None, webhook_url: str | None = None,
                     **options: Any) -> dict[str, Any]:
        """`POST /batches` with exactly one of `files` (paths, bytes or (name, bytes); the
        SKU is the file's stem), `archive` (a ZIP) or `manifest` (items {sku, image_url,
        options?}). Options apply to every item. Returns {id, counts, rejected, links};
        members the service refused are in `rejected` with their code."""
        if sum(x is not None for x in (files, archive, manifest)) != 1:
            raise TypeError("give exactly one of files, archive or manifest")
        form = _form(options)
        if webhook_url:
            form["webhook_url"] = webhook_url
        parts: list[tuple[str, tuple[str, bytes, str]]] = []
        if files is not None:
            for i, f in enumerate(files, start=1):
                if isinstance(f, tuple):
                    name, data = f
                else:
                    name, data = _read_photo(f, f"photo-{i}" if isinstance(f, bytes) else None)
                parts.append(("files", (name, data, mimetypes.guess_type(name)[0]
                                        or "application/octet-stream")))
        elif archive is not None:
            name, data = _read_photo(archive, "batch.zip" if isinstance(archive, bytes) else None)
            parts.append(("archive", (name, data, "application/zip")))
        else:
            body = json.dumps(list(manifest or []), sort_keys=True).encode()
            parts.append(("manifest", ("manifest.json", body, "application/json")))
        key = idempotency_key or request_key(
            "batch", form, [(f"{field}:{name}", data) for field, (name, data, _) in parts])
        return self._json("POST", "/batches", data=form, files=parts,
                          headers={"Idempotency-Key": key})

    def batch(self, batch_id: AssetRef) -> dict[str, Any]:
        """`GET /batches/{id}`: counts per state, every SKU's status, the rejected."""
        return self._json("GET", f"/batches/{_id_of(batch_id)}")

    def wait_batch(self, batch_id: AssetRef, timeout: float = 3600.0,
                   poll_s: float = 1.0) -> dict[str, Any]:
        """The batch's status once every item has finished (WaitTimeout otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.batch(batch_id)
            if status["status"] == "completed" or all(
                    i["status"] in TERMINAL for i in status["items"]):
                return status
            if time.monotonic() + poll_s > deadline:
                raise WaitTimeout("wait_timeout", f"batch {_id_of(batch_id)} unfinished "
                                  f"after {timeout:g} s: {status['counts']}")
            self._sleep(poll_s)

    def batch_results(self, batch_id: AssetRef, dest: str | os.PathLike) -> Path:
        """`GET /batches/{id}/results`: the ZIP of the finished outputs named by SKU, with
        manifest.csv, streamed to `dest` (written whole or not at all)."""
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        deadline = time.monotonic() + self.retry_for_s
        while True:
            try:
                with self._http.stream("GET", f"/batches/{_id_of(batch_id)}/results") as r:
                    if not r.is_success:
                        r.read()
                        if r.status_code in _RETRY_STATUS and time.monotonic() < deadline:
                            self._sleep(_retry_after(r) or self.backoff_s)
                            continue
                        raise self._error(r, _retry_after(r))
                    with part.open("wb") as fh:
                        for chunk in r.iter_bytes():
                            fh.write(chunk)
                break
            except _RETRY_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise ConnectionFailed("connection_failed", str(exc)) from exc
                self._sleep(self.backoff_s)
        part.replace(dest)
        return dest

    # --- the server -------------------------------------------------------------------------

    def pipelines(self) -> dict[str, Any]:
        """`GET /pipelines`: {default, pipelines}."""
        return self._json("GET", "/pipelines")

    def presets(self) -> dict[str, Any]:
        """`GET /presets`: {default, presets: [{name, size, background, formats, …}]}."""
        return self._json("GET", "/presets")


__all__ = ["OPTION_NAMES", "SIDE_OUTPUTS", "TERMINAL", "Client", "request_key"]

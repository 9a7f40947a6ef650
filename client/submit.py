"""`flatlay submit`: catalog inputs in, flat-lays out, against any Flatlay server.

Items go as batches (`POST /batches`) of bounded size and bytes, one at a time, with at
most `max_in_flight` items unfinished; each batch is polled as a whole and each finished
item's result and side outputs are downloaded (a few at once) into OUT, named by SKU.

Resumable: OUT/.flatlay-submit.json records every batch as soon as the service has taken
it, so the same command after an interruption polls what was sent instead of sending it
again. A batch sent but not recorded (killed between the two) is sent again with the same
Idempotency-Key, which the service answers with the batch it made the first time.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from client.api import SIDE_OUTPUTS, TERMINAL, Client
from client.errors import ConnectionFailed, FlatlayError, InvalidRequest, NotFound
from client.inputs import InputError, Item

STATE_FILE = ".flatlay-submit.json"
MANIFEST_FILE = "manifest.csv"
# The service's manifest.csv attribute columns (service/batch_results.py ATTRIBUTE_COLUMNS).
ATTRIBUTE_COLUMNS = ("category", "category_confidence", "sleeve_length", "length",
                     "neckline", "pattern", "closure", "color", "color_hex", "color_share",
                     "hint", "hint_category", "hint_won")
MANIFEST_COLUMNS = ("sku", "status", "error_code", "error_message", "file", "side_outputs",
                    "compliance_passed", "compliance_failed_checks", *ATTRIBUTE_COLUMNS,
                    "asset_id", "source")
_RESULT_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class SubmitAbort(Exception):
    """The run cannot go on (the server refused the key or the options, or is unreachable);
    what was sent is in the state file."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage  # the caller's mistake (exit 2), not the server's state (exit 1)


def public_url(url: str) -> str:
    """The URL without user:password (it is shown and stored)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass
class SubmitOptions:
    out: Path
    job_options: dict[str, Any] = field(default_factory=dict)  # pipeline, preset, …
    outputs: list[str] = field(default_factory=list)  # side outputs to download
    batch_size: int = 50
    batch_bytes: int = 64 * 1024 * 1024
    max_in_flight: int | None = None  # default: 4 batches' worth
    poll_s: float = 0.5
    download_workers: int = 4
    progress: bool = True


# --- the state file ----------------------------------------------------------------------------


class State:
    """OUT/.flatlay-submit.json: the server and options of the run, and per SKU what was
    sent (digest, batch, asset) and how it ended. Written whole (temp file, then rename)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.items: dict[str, dict[str, Any]] = data.setdefault("items", {})

    @classmethod
    def open(cls, out: Path, server: str, options: dict[str, Any]) -> State:
        path = out / STATE_FILE
        fresh = {"version": 1, "server": server, "options": options, "items": {}}
        if not path.exists():
            return cls(path, fresh)
        try:
            data = json.loads(path.read_text())
            assert isinstance(data, dict) and isinstance(data.get("items"), dict)
        except (OSError, ValueError, AssertionError) as exc:
            raise InputError(f"{path} is not a state file of flatlay submit ({exc}); move it "
                             "away or use another -o") from None
        if data.get("server") != server or data.get("options") != options:
            raise InputError(
                f"{out} holds a run against {data.get('server')} with options "
                f"{json.dumps(data.get('options'))}; this one is against {server} with "
                f"{json.dumps(options)}. Use another -o, or the same server and options to "
                "continue it")
        return cls(path, data)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _files_complete(rec: dict[str, Any], out: Path, outputs: list[str]) -> bool:
    """A succeeded item whose files are all there, with every side output asked for (or
    known to be one its pipeline does not make)."""
    if not rec.get("file") or not (out / rec["file"]).exists():
        return False
    have = rec.get("side_outputs") or {}
    lacking = set(rec.get("missing_outputs") or [])
    return all((name in have and (out / have[name]).exists()) or name in lacking
               for name in outputs)


# --- one item's download -----------------------------------------------------------------------


def _compliance(c: dict[str, Any] | None) -> dict[str, Any] | None:
    if not c:
        return None
    return {"preset": c.get("preset"), "passed": c.get("passed"),
            "failed_checks": [x["name"] for x in c.get("checks", []) if not x.get("passed")]}


def download(client: Client, asset_id: str, name: str, out: Path,
             outputs: list[str]) -> dict[str, Any]:
    """A succeeded asset's result and the side outputs asked for, into OUT as
    `<name>.<ext>` and `<name>.<output>.<ext>`; the record of the item."""
    status = client.status(asset_id)
    if status["status"] != "succeeded":
        return _failure(status)
    fmt = (status.get("options") or {}).get("format", "png")
    file = f"{name}.{_RESULT_EXT.get(fmt, fmt)}"
    _write_atomic(out / file, client.result(asset_id))
    side, missing = {}, []
    for output in outputs:
        if output not in (status.get("side_outputs") or {}):
            missing.append(output)  # not one its pipeline makes (e.g. cutout: landmarks)
            continue
        side[output] = f"{name}.{output}.{SIDE_OUTPUTS[output]}"
        _write_atomic(out / side[output], client.output(asset_id, output))
    return {"state": "succeeded", "file": file, "side_outputs": side, "missing_outputs": missing,
            "compliance": _compliance(status.get("compliance")),
            "attributes": status.get("attributes"), "error_code": None, "error_message": None}


def _failure(status: dict[str, Any]) -> dict[str, Any]:
    error = status.get("error") or {}
    return {"state": "failed", "error_code": error.get("code") or status["status"],
            "error_message": error.get("message") or f"the job was {status['status']}"}


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Report:
    items: list[Item]
    records: dict[str, dict[str, Any]]  # sku → the state's record, or a failure of this run
    submitted: int = 0  # items sent in this run
    interrupted: bool = False

    def status_of(self, sku: str) -> str:
        rec = self.records.get(sku) or {}
        return rec.get("state") if rec.get("state") in ("succeeded", "failed") else "pending"

    @property
    def counts(self) -> collections.Counter:
        return collections.Counter(self.status_of(i.sku) for i in self.items)

    @property
    def ok(self) -> bool:
        return all(self.status_of(i.sku) == "succeeded" for i in self.items)


def _chunks(items: list[Item], size: int, max_bytes: int) -> Iterator[list[Item]]:
    """Consecutive items of one kind (files or URLs), at most `size` items and `max_bytes`
    bytes each: the same inputs give the same chunks, hence the same Idempotency-Keys."""
    chunk: list[Item] = []
    total = 0
    for item in items:
        if chunk and ((item.url is None) != (chunk[0].url is None) or len(chunk) >= size
                      or total + item.size > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += item.size
    if chunk:
        yield chunk


class _Run:
    def __init__(self, client: Client, items: list[Item], opts: SubmitOptions,
                 state: State) -> None:
        self.client, self.items, self.opts, self.state = client, items, opts, state
        self.by_sku = {i.sku: i for i in items}
        self.records: dict[str, dict[str, Any]] = {}  # this run's view, by SKU
        self.waiting: set[str] = set()  # sent, not finished
        self.downloading: dict[cf.Future, str] = {}
        self.batches: dict[str, dict[str, str]] = {}  # batch id → {service SKU: our SKU}
        self.submitted = 0
        self.bar: Any = None
        self.saved_at = 0.0

    # Records: the state's, for items sent; this run's failures for items never sent.
    def _record(self, sku: str, rec: dict[str, Any], persist: bool = True) -> None:
        self.records[sku] = rec
        if persist:
            self.state.items[sku] = rec

    def plan(self) -> list[Item]:
        """Which items to send; items already sent are polled (their batch), finished ones
        kept as they are."""
        pending = []
        for item in self.items:
            if item.error is not None:
                self._record(item.sku, {"state": "failed", "error_code": item.error[0],
                                        "error_message": item.error[1],
                                        "source": item.source}, persist=False)
                continue
            rec = self.state.items.get(item.sku)
            if rec is not None and rec.get("digest") != item.digest:
                rec = None  # the photo changed since: it is a new item
            if rec is None or not rec.get("batch_id"):
                pending.append(item)
                continue
            self.records[item.sku] = rec
            if rec.get("state") == "failed" or (
                    rec.get("state") == "succeeded"
                    and _files_complete(rec, self.opts.out, self.opts.outputs)):
                continue
            self._wait_for(rec["batch_id"], rec["service_sku"], item.sku)
        return pending

    def _wait_for(self, batch_id: str, service_sku: str, sku: str) -> None:
        self.batches.setdefault(batch_id, {})[service_sku] = sku
        self.waiting.add(sku)

    def _finish(self, sku: str, rec: dict[str, Any], persist: bool = True) -> None:
        base = self.records.get(sku) or {}
        self._record(sku, {**base, **rec}, persist)
        self.waiting.discard(sku)
        self._show()

    def _show(self) -> None:
        if self.bar is None:
            return
        done = sum(1 for r in self.records.values() if r.get("state") == "succeeded")
        failed = sum(1 for r in self.records.values() if r.get("state") == "failed")
        self.bar.n = done + failed
        self.bar.set_postfix(submitted=self.submitted, done=done, failed=failed, refresh=False)
        self.bar.refresh()

    # --- sending ---

    def send(self, chunk: list[Item]) -> list[list[Item]]:
        """POST one chunk as a batch and record it; what must be sent again instead (the
        halves of a chunk the service found too large)."""
        try:
            if chunk[0].url is not None:
                created = self.client.submit_batch(
                    manifest=[{"sku": i.sku, "image_url": i.url} for i in chunk],
                    **self.opts.job_options)
                service_sku = {i.sku: i.sku for i in chunk}
            else:
                files = []
                for item in list(chunk):
                    try:
                        files.append((item.upload_name, item.read()))
                    except OSError as exc:  # gone or unreadable since it was hashed
                        chunk.remove(item)
                        self._finish(item.sku, {"state": "failed", "error_code": "unreadable_file",
                                                "error_message": f"{item.source}: {exc}"},
                                     persist=False)
                if not chunk:
                    return []
                created = self.client.submit_batch(files=files, **self.opts.job_options)
                service_sku = {i.sku: i.name for i in chunk}  # the stem of upload_name
        except InvalidRequest as exc:
            if exc.code in ("batch_too_large", "payload_too_large") and len(chunk) > 1:
                half = len(chunk) // 2
                return [chunk[:half], chunk[half:]]
            if exc.code in ("batch_too_large", "payload_too_large", "file_too_large"):
                self._finish(chunk[0].sku, {"state": "failed", "error_code": exc.code,
                                            "error_message": exc.message}, persist=False)
                return []
            where = FLAGS.get(exc.field or "", exc.field)
            raise SubmitAbort(f"the server refused the batch: {exc.code}: "
                              + (f"{where}: " if where else "") + exc.message,
                              usage=True) from exc
        batch_id = created["id"]
        for item in chunk:
            self._record(item.sku, {"state": "submitted", "batch_id": batch_id,
                                    "service_sku": service_sku[item.sku],
                                    "digest": item.digest, "source": item.source,
                                    "name": item.name, "asset_id": None})
            self._wait_for(batch_id, service_sku[item.sku], item.sku)
        self.submitted += len(chunk)
        self.state.save()  # before anything else: the batch is the service's now
        self._rejected(batch_id, created.get("rejected") or [])
        self._show()
        return []

    def _rejected(self, batch_id: str, rejected: list[dict[str, Any]]) -> None:
        mapping = self.batches.get(batch_id, {})
        for r in rejected:
            sku = mapping.get(r.get("sku") or PurePosixPath(r.get("name", "")).stem)
            if sku in self.waiting:
                self._finish(sku, {"state": "failed", "error_code": r.get("code"),
                                   "error_message": r.get("message")})

    # --- polling and downloads ---

    def poll(self) -> None:
        for batch_id in list(self.batches):
            mapping = self.batches[batch_id]
            if not any(sku in self.waiting for sku in mapping.values()):
                del self.batches[batch_id]
                continue
            try:
                status = self.client.batch(batch_id)
            except NotFound as exc:
                for sku in mapping.values():
                    if sku in self.waiting:
                        self._finish(sku, {"state": "failed", "error_code": exc.code,
                                           "error_message": exc.message})
                continue
            self._rejected(batch_id, status.get("rejected") or [])
            busy = set(self.downloading.values())
            for it in status.get("items") or []:
                sku = mapping.get(it["sku"])
                if sku is None or sku not in self.waiting or sku in busy:
                    continue
                rec = self.records[sku]
                if rec.get("asset_id") != it["asset_id"]:
                    rec["asset_id"] = it["asset_id"]
                if it["status"] == "succeeded":
                    fut = self.pool.submit(download, self.client, it["asset_id"],
                                           self.by_sku[sku].name, self.opts.out,
                                           self.opts.outputs)
                    self.downloading[fut] = sku
                elif it["status"] in TERMINAL:
                    self._finish(sku, _failure(it))

    def collect(self, block: bool) -> None:
        if not self.downloading:
            return
        done, _ = cf.wait(list(self.downloading), timeout=self.opts.poll_s if block else 0,
                          return_when=cf.FIRST_COMPLETED)
        for fut in done:
            sku = self.downloading.pop(fut)
            try:
                self._finish(sku, fut.result())
            except NotFound as exc:  # deleted or expired on the server
                self._finish(sku, {"state": "failed", "error_code": exc.code,
                                   "error_message": exc.message})
            except ConnectionFailed:
                raise
            except (FlatlayError, OSError) as exc:
                # This run could not fetch it; the record stays `submitted`, so a rerun will.
                code = getattr(exc, "code", "write_failed")
                self.records[sku] = {**self.records[sku], "run_error": f"{code}: {exc}"}
                self.waiting.discard(sku)
        # A finished item not yet in the file is only downloaded again on a rerun: saving
        # at most once a second keeps large runs from rewriting the file per item.
        if time.monotonic() - self.saved_at > 1.0:
            self.state.save()
            self.saved_at = time.monotonic()

    def run(self, pending: list[Item]) -> None:
        queue = collections.deque(_chunks(pending, self.opts.batch_size, self.opts.batch_bytes))
        limit = self.opts.max_in_flight or 4 * self.opts.batch_size
        with cf.ThreadPoolExecutor(self.opts.download_workers) as self.pool:
            try:
                while queue or self.waiting:
                    while queue and (not self.waiting
                                     or len(self.waiting) + len(queue[0]) <= limit):
                        queue.extendleft(reversed(self.send(queue.popleft())))
                    self.poll()
                    self.collect(block=True)
                    if not self.downloading and self.waiting:
                        time.sleep(self.opts.poll_s)
            finally:
                for fut in self.downloading:
                    fut.cancel()


def _attribute_cells(attributes: dict[str, Any] | None) -> list[str]:
    """A job's attributes as the cells of ATTRIBUTE_COLUMNS, as the service's manifest
    writes them (service/batch_results.py attribute_cells)."""
    a = attributes or {}
    category = a.get("category") or {}
    confidence = category.get("confidence")
    colors = a.get("colors") or []
    hint = a.get("hint") or {}
    return [category.get("value") or "", "" if confidence is None else f"{confidence:.4f}",
            a.get("sleeve_length") or "", a.get("length") or "", a.get("neckline") or "",
            a.get("pattern") or "", a.get("closure") or "", "/".join(c["name"] for c in colors),
            "/".join(c["hex"] for c in colors), "/".join(f"{c['share']:.3f}" for c in colors),
            hint.get("text") or "", hint.get("category") or "", hint.get("won") or ""]


def write_manifest(report: Report, out: Path) -> Path:
    """OUT/manifest.csv: one row per input item (MANIFEST_COLUMNS)."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(MANIFEST_COLUMNS)
    for item in report.items:
        rec = report.records.get(item.sku) or {}
        status = report.status_of(item.sku)
        compliance = rec.get("compliance") or {}
        ok = status == "succeeded"
        error_code, error_message = rec.get("error_code") or "", rec.get("error_message") or ""
        if status == "pending" and rec.get("run_error"):
            error_code, _, error_message = rec["run_error"].partition(": ")
        writer.writerow([
            item.sku, status, error_code, error_message,
            rec.get("file", "") if ok else "",
            ";".join((rec.get("side_outputs") or {}).values()) if ok else "",
            "" if not ok or compliance.get("passed") is None else str(compliance["passed"]).lower(),
            ";".join(compliance.get("failed_checks") or []) if ok else "",
            *(_attribute_cells(rec.get("attributes")) if ok else [""] * len(ATTRIBUTE_COLUMNS)),
            rec.get("asset_id") or "", item.source,
        ])
    path = out / MANIFEST_FILE
    _write_atomic(path, text.getvalue().encode())
    return path


def submit(client: Client, items: list[Item], opts: SubmitOptions, server: str) -> Report:
    """Send what the state file of OUT does not hold yet, wait for everything, download the
    results; the state and manifest.csv are written even when interrupted (Ctrl-C)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    state = State.open(opts.out, server, opts.job_options)
    run = _Run(client, items, opts, state)
    pending = run.plan()
    report = Report(items, run.records)
    bar = None
    if opts.progress:
        from tqdm import tqdm  # only the command shows a bar; the library needs no tqdm

        bar = tqdm(total=len(items), unit="item", desc="flatlay submit", leave=True)
        run.bar = bar
        run._show()
    try:
        run.run(pending)
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    except ConnectionFailed as exc:
        raise SubmitAbort(f"cannot reach {server}: {exc.message}") from exc
    except SubmitAbort:
        raise
    except FlatlayError as exc:
        raise SubmitAbort(f"the server answered {exc}", usage=exc.status in (401, 403)) from exc
    finally:
        if bar is not None:
            bar.close()
        report.submitted = run.submitted
        state.save()
        write_manifest(report, opts.out)
    return report


def dry_run(items: list[Item], opts: SubmitOptions, server: str | None,
            echo: Callable[[str], None] = print) -> int:
    """What a run would send (and what the state file says was sent); sends nothing."""
    recs: dict[str, Any] = {}
    path = opts.out / STATE_FILE
    if path.exists():
        try:
            recs = json.loads(path.read_text()).get("items", {})
        except (OSError, ValueError):
            recs = {}
    new = []
    echo(f"{'sku':30} {'bytes':>10}  {'what':10} source")
    for item in items:
        rec = recs.get(item.sku)
        if item.error is not None:
            what = f"error {item.error[0]}: {item.error[1]}"
        elif rec is not None and rec.get("digest") == item.digest and rec.get("batch_id"):
            what = rec.get("state", "submitted")
        else:
            what = "send"
            new.append(item)
        echo(f"{item.sku[:30]:30} {item.size:>10}  {what:10} {item.source}")
    chunks = list(_chunks(new, opts.batch_size, opts.batch_bytes))
    echo(f"would send {len(new)} of {len(items)} items as {len(chunks)} batch(es) of at most "
         f"{opts.batch_size} to {server or '(no --url)'} with {json.dumps(opts.job_options)}"
         + (f", downloading {', '.join(opts.outputs)}" if opts.outputs else "")
         + f"; results in {opts.out}")
    return 0


def summary(report: Report, out: Path, elapsed_s: float) -> str:
    """The table printed at the end of a run."""
    counts = report.counts
    rows = [("succeeded", counts["succeeded"]), ("failed", counts["failed"])]
    if counts["pending"]:
        rows.append(("pending", counts["pending"]))
    rows.append(("total", len(report.items)))
    lines = ["", "| status | items |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows]
    codes = collections.Counter(
        (report.records.get(i.sku) or {}).get("error_code") or "?"
        for i in report.items if report.status_of(i.sku) == "failed")
    if codes:
        lines.append("failed by code: " + ", ".join(f"{c} {n}" for c, n in codes.most_common()))
    failed = [i for i in report.items if report.status_of(i.sku) == "failed"]
    for item in failed[:20]:
        rec = report.records.get(item.sku) or {}
        lines.append(f"  {item.sku}: {rec.get('error_code')}: {rec.get('error_message')}")
    if len(failed) > 20:
        lines.append(f"  … and {len(failed) - 20} more (manifest.csv lists every item)")
    noncompliant = [i.sku for i in report.items if report.status_of(i.sku) == "succeeded"
                    and ((report.records[i.sku].get("compliance") or {}).get("passed") is False)]
    if noncompliant:
        lines.append(f"{len(noncompliant)} result(s) fail their preset's compliance check "
                     "(manifest.csv: compliance_failed_checks)")
    lines.append(f"sent {report.submitted} item(s) in this run; {elapsed_s:.1f} s; results and "
                 f"{MANIFEST_FILE} in {out}")
    if counts["pending"]:
        lines.append("some items are unfinished: run the same command again to continue")
    return "\n".join(lines)


# The command-line flag of each option field, for the service's errors that name a field.
FLAGS = {"pipeline": "--pipeline", "preset": "--preset", "output_size": "--size",
         "background": "--background", "format": "--format"}


def _preflight(client: Client, job_options: dict[str, Any]) -> None:
    """Check the key, the pipeline and the preset before any photo is sent."""
    try:
        pipelines = client.pipelines()
        presets = client.presets()
    except ConnectionFailed as exc:
        raise SubmitAbort(f"cannot reach {client.base_url}: {exc.message}") from exc
    except FlatlayError as exc:
        raise SubmitAbort(f"{client.base_url} answered {exc}",
                          usage=exc.status in (401, 403, 404)) from exc
    names = pipelines.get("pipelines") or []
    if job_options.get("pipeline") and job_options["pipeline"] not in names:
        raise SubmitAbort(f"--pipeline {job_options['pipeline']!r} is not one of the server's: "
                          f"{', '.join(names)}", usage=True)
    known = [p["name"] for p in presets.get("presets") or []]
    if job_options.get("preset") and job_options["preset"] not in known:
        raise SubmitAbort(f"--preset {job_options['preset']!r} is not one of the server's: "
                          f"{', '.join(known)}", usage=True)


def run_command(paths: list[Path], url: str | None, api_key: str | None, opts: SubmitOptions,
                dry: bool = False, echo: Callable[[str], None] = print) -> int:
    """`flatlay submit`: 0 when every item succeeded, 1 otherwise; InputError and
    SubmitAbort(usage=True) are the caller's mistakes (nothing sent that is not recorded)."""
    from client.inputs import discover

    unknown = [o for o in opts.outputs if o not in SIDE_OUTPUTS]
    if unknown:
        raise InputError(f"--outputs: unknown {', '.join(unknown)}; side outputs are "
                         f"{', '.join(SIDE_OUTPUTS)}")
    if not 1 <= opts.batch_size <= 1000:
        raise InputError(f"--batch-size must be within 1–1000, got {opts.batch_size}")
    if opts.out.exists() and not opts.out.is_dir():
        raise InputError(f"-o {opts.out} exists and is not a folder")
    if url is not None and not url.lower().startswith(("http://", "https://")):
        raise InputError(f"--url must start with http:// or https://, got {public_url(url)!r}")
    items = discover(paths, exclude=opts.out)
    if not items:
        raise InputError("no JPEG, PNG or WebP photos in the given inputs")
    server = public_url(url) if url else None
    if dry:
        return dry_run(items, opts, server, echo)
    if url is None:
        raise InputError("no server: give --url or set FLATLAY_URL")
    assert server is not None
    started = time.monotonic()
    with Client(url, api_key) as client:
        _preflight(client, opts.job_options)
        try:
            report = submit(client, items, opts, server)
        except SubmitAbort as exc:
            echo(f"stopped: {exc}; what was sent is recorded in {opts.out / STATE_FILE}: run "
                 "the same command to continue")
            raise
        except KeyboardInterrupt:
            echo(f"\ninterrupted; what was sent is recorded in {opts.out / STATE_FILE}: run the "
                 "same command to continue")
            raise
    echo(summary(report, opts.out, time.monotonic() - started))
    return 0 if report.ok else 1

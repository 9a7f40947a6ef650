"""Soak under faults: N jobs through real processes while workers are SIGKILLed and Redis,
PostgreSQL and the API restart, then every job accounted for (issue 13). A benchmark, not a
CI test.

    python bench/soak.py --mode distributed [--jobs 1000] [--kills 12] [--seed 13] [--out DIR]
    python bench/soak.py --mode embedded    [--jobs 1000] [--kills 12] [--serve-kills 2]

It starts and stops everything it uses, on 127.0.0.1 only, under fresh temp folders:
- distributed: its own `redis-server` (no persistence: a restart loses every message) and its
  own PostgreSQL cluster (`initdb` on a spare port; run as user postgres when we are root),
  `flatlay api` and 2 `flatlay worker` processes (concurrency 1 each). Faults: `--kills`
  SIGKILLs of a worker that holds a running job (alternately its whole process group, which
  the bench restarts a second later, and only its Celery pool child, which Celery replaces),
  one Redis restart, one PostgreSQL restart (`pg_ctl stop -m immediate`), one API restart
  (SIGKILL, then started again).
- embedded: `flatlay serve` (SQLite, file blobs, file queue, its supervised worker). Faults:
  `--kills` SIGKILLs of the worker (its supervisor restarts it) and `--serve-kills` SIGKILLs
  of the whole `flatlay serve` (the API and its worker), started again by the bench.
Faults fire at random points of the run's progress (share of jobs finished), so they land
while jobs run, whatever the machine's speed.

The load: `--jobs` jobs as single `POST /assets` and `POST /batches` of 2–8 files, mostly the
`cutout` pipeline and `--flatten-share` `flatten`; an Idempotency-Key on `--keyed-share` of
the submissions, some of those sent again later (the replay must answer the same id with
`Idempotent-Replayed: true`) and a few sent again with other options (409
`idempotency_key_reused`). Submissions are paced to at most `--in-flight` unfinished jobs
(twice that while a server is down), so the outages meet requests in flight. A client retries
connection errors, 429, 500, 502–504 and 503 as a catalog client would; a retry of a
submission without a key after an ambiguous failure (the request may have been taken) may
make a job nobody was told about: such `strays` are accounted like the rest and are no
service fault, unless there are more of them than such retries.

Webhooks: API keys are on; the key's default webhook URL is a receiver in this process on
127.0.0.1 (`FLATLAY_FETCH_ALLOW_HOSTS=127.0.0.1`, as the webhook tests do), which checks
every signature, answers 503 to `--hook-fail-share` of the attempts (retried) and always 500
on `/dead` (a few submissions name it: those deliveries must end recorded as exhausted).

At the end (after the jobs drain, at most `--drain-timeout` s) it accounts for every job, from
the job store, the blob folder, the workers' logs, the receiver and the API:
- lost: an acknowledged job missing from the store, still `queued`/`running`, `canceled`,
  `succeeded` without its result blob, `failed` without an error code, or the API disagreeing;
- duplicated: a job whose workers logged `job succeeded` more than once, an asset or batch
  with more than one event delivery, a replay that answered another id, more strays than
  ambiguous unkeyed retries;
- orphaned: any blob that its job row does not reference (no row at all, another attempt's
  outputs, a temp file) and, once more, any job with more than one result blob;
- webhooks: every ended job's event delivered (and received, signature valid) or recorded as
  exhausted; none pending.
It prints a table and writes OUT/soak-<mode>.{md,json} (`bench/harness.write_variants`; the
JSON has the details: faults and their times, states, failure codes, attempts, retries,
orphans by kind, webhook outcomes, notable log lines, the slowest jobs). `--keep` keeps the
temp folders (every process's log, the blobs). The exit status is 1 when anything was lost,
duplicated or orphaned, or a webhook is missing or pending.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime as dt
import glob
import hashlib
import hmac
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import write_variants  # noqa: E402

from service.multiproc import pid_alive  # noqa: E402
from tests.support import encode, free_port, garment_photo  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled")
ERROR_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
HOOK, BATCH_HOOK, DEAD_HOOK = "/hook", "/batch-hook", "/dead"


def log(msg: str) -> None:
    """One line for people, above the progress bar."""
    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


# --- Processes ------------------------------------------------------------------------------


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == pid:
            found.append(int(entry))
    return found


def killpg(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Fleet:
    """`python -m cli ARGS` processes of this run, each in its own session (its pid is its
    process group), with one log file per start; every group ever started or seen (a
    supervised worker) is remembered, so that stop() leaves nothing behind."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.args: dict[str, list[str]] = {}
        self.starts: collections.Counter[str] = collections.Counter()
        self.logs: list[Path] = []
        self.groups: set[int] = set()
        self.lock = threading.Lock()

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        with self.lock:
            self.starts[name] += 1
            log_path = self.log_dir / f"{name}-{self.starts[name]}.log"
            self.logs.append(log_path)
            proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=REPO, env=self.env,
                                    stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.procs[name], self.args[name] = proc, args
            self.groups.add(proc.pid)
        return proc

    def restart(self, name: str) -> subprocess.Popen:
        return self.start(name, self.args[name])

    def kill(self, name: str) -> None:
        """SIGKILL the process group of `name` and reap it."""
        proc = self.procs[name]
        killpg(proc.pid)
        proc.wait()

    def remember_groups_below(self, pid: int) -> None:
        """Record the process groups of `pid`'s children (serve's supervised worker)."""
        for child in children_of(pid):
            with contextlib.suppress(ProcessLookupError):
                self.groups.add(os.getpgid(child))

    def stop(self, timeout: float = 40.0) -> None:
        for proc in self.procs.values():
            self.remember_groups_below(proc.pid)
            if proc.poll() is None:
                killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for pgid in self.groups:
            killpg(pgid)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def wait_ready(base_url: str, proc: subprocess.Popen, timeout: float = 180.0) -> float:
    """Seconds until GET /readyz answers 200; RuntimeError if the process exits first."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=3).status_code == 200:
                return time.monotonic() - start
        time.sleep(0.3)
    raise RuntimeError(f"{base_url} not ready after {timeout:.0f} s")


# --- Private servers ------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server of our own on a spare loopback port, nothing kept on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"],
            stdout=(self.root / "redis.log").open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                client.ping()
                return
            time.sleep(0.1)
        raise RuntimeError("the private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # no save configured: every message is gone
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def _pg_bin(name: str) -> str:
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    found = versions[-1] if versions else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed (apt-get install postgresql)")
    return found


class PrivatePostgres:
    """A PostgreSQL cluster of our own (initdb) on a spare loopback port, trust auth, one
    database `soak`. As root it runs as user postgres (the server refuses root)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="flatlay-soak-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/soak"

    def _run(self, *argv: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if self.as_postgres else list(argv)
        with (self.root / "commands.log").open("ab") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=120,
                                  cwd=self.root)
        if done.returncode != 0:
            tail = (self.root / "commands.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{tail}")

    def init(self) -> None:
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-sync")
        self.start()
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as admin:
            admin.execute("CREATE DATABASE soak")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c max_connections=200")
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float) -> None:
        self.stop("immediate")  # as if it crashed: recovery on the next start
        time.sleep(down_s)
        self.start()

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- Webhook receiver -----------------------------------------------------------------------


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + body
    except (KeyError, ValueError):
        return False
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in h.get("webhook-signature", "").split())


class Receiver:
    """A webhook receiver on 127.0.0.1: records every POST (path, webhook-id, event, id,
    signature check, the answer), answers 503 to a share of them and 500 on /dead."""

    def __init__(self, fail_share: float, seed: int) -> None:
        self.secret = ""
        self.fail_share = fail_share
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(receiver.record(self.path, dict(self.headers), body))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        try:
            event = json.loads(body)
        except ValueError:
            event = {}
        data = event.get("data") or {}
        webhook_id = {k.lower(): v for k, v in headers.items()}.get("webhook-id")
        with self.lock:
            if path == DEAD_HOOK:
                status = 500
            else:
                status = 503 if self.rng.random() < self.fail_share else 200
            self.received.append({"path": path, "webhook_id": webhook_id,
                                  "type": event.get("type"), "id": data.get("id"),
                                  "valid": signature_ok(self.secret, headers, body),
                                  "answered": status})
        return status

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- The load -------------------------------------------------------------------------------


@dataclass
class Submission:
    """One request of the plan and what came of it."""

    index: int
    kind: str  # asset | batch | replay | conflict
    pipeline: str
    photos: list[int]
    key: str | None = None
    webhook: str | None = None  # a receiver path; None: the key's default
    of: int | None = None  # the original of a replay or conflict
    # Outcome.
    id: str | None = None
    status_code: int | None = None
    error: str | None = None
    replayed: bool = False
    tries: int = 0
    retried: list[str] = field(default_factory=list)
    ambiguous: int = 0  # retries after a failure that may have been taken
    ack_s: float | None = None  # the answered request's own time
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def jobs(self) -> int:
        return len(self.photos) if self.kind in ("asset", "batch") else 0


def make_plan(n_jobs: int, rng: random.Random, flatten_share: float, keyed_share: float,
              replay_share: float, batch_share: float, n_photos: int) -> list[Submission]:
    """Submissions adding up to n_jobs jobs, with replays and conflicts interleaved later."""
    originals: list[Submission] = []
    jobs = 0
    while jobs < n_jobs:
        left = n_jobs - jobs
        batch = left >= 2 and rng.random() < batch_share
        size = rng.randint(2, min(8, left)) if batch else 1
        sub = Submission(
            index=len(originals), kind="batch" if batch else "asset",
            pipeline="flatten" if rng.random() < flatten_share else "cutout",
            photos=[rng.randrange(n_photos) for _ in range(size)],
            key=f"soak-{uuid.UUID(int=rng.getrandbits(128)).hex}"
            if rng.random() < keyed_share else None)
        if batch and rng.random() < 0.5:
            sub.webhook = BATCH_HOOK
        elif not batch and rng.random() < 0.01:
            sub.webhook = DEAD_HOOK
        originals.append(sub)
        jobs += size
    if flatten_share > 0 and not any(s.pipeline == "flatten" for s in originals):
        originals[len(originals) // 2].pipeline = "flatten"  # the model path, even when small
    if not any(s.webhook == DEAD_HOOK for s in originals):
        next(s for s in originals if s.kind == "asset").webhook = DEAD_HOOK
    keyed = [s for s in originals if s.key]
    if not keyed:
        originals[0].key = f"soak-{uuid.UUID(int=rng.getrandbits(128)).hex}"
        keyed = [originals[0]]
    replays = [s for s in keyed if rng.random() < replay_share] or [keyed[0]]
    conflicts = rng.sample(keyed, max(1, len(keyed) // 40))
    ordered: list[tuple[float, Submission]] = [(float(s.index), s) for s in originals]
    for kind, of in [("replay", s) for s in replays] + [("conflict", s) for s in conflicts]:
        twin = Submission(index=0, kind=kind, pipeline=of.pipeline, photos=list(of.photos),
                          key=of.key, webhook=of.webhook, of=of.index)
        ordered.append((of.index + rng.uniform(2, 40), twin))
    ordered.sort(key=lambda t: t[0])
    plan = [s for _, s in ordered]
    for i, sub in enumerate(plan):
        if sub.kind in ("replay", "conflict"):
            sub.index = len(originals) + i  # originals keep their indexes
    return plan


def photo_variants(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    backgrounds = ("coffee", "astronaut", "chelsea", "rocket")
    photos = []
    for i in range(n):
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        offset = (float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.04, 0.04)))
        rgb, _ = garment_photo(320, 240, colour=colour, background=backgrounds[i % 4],
                               offset=offset)
        photos.append(encode(rgb, "JPEG", quality=90))
    return photos


class Submitter:
    """Sends the plan with a few client threads, at most `in_flight` unfinished jobs at a
    time, retrying what a catalog client would retry."""

    RETRY_STATUSES = {429: False, 500: True, 502: True, 503: False, 504: True}

    def __init__(self, base_url: str, api_key: str, photos: list[bytes], receiver: Receiver,
                 monitor: Monitor, in_flight: int, give_up_s: float,
                 outage: threading.Event) -> None:
        self.base_url = base_url
        # Set while a server is being restarted: submissions go on regardless of the cap,
        # so that the outage meets requests in flight.
        self.outage = outage
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.photos = photos
        self.receiver = receiver
        self.monitor = monitor
        self.in_flight = in_flight
        self.give_up_s = give_up_s
        self.by_index: dict[int, Submission] = {}
        self.stop = threading.Event()

    @property
    def cap(self) -> int:
        """Unfinished jobs allowed now: twice as many while a server is down (or the job
        store cannot tell), so that requests meet the outage."""
        down = self.outage.is_set() or not self.monitor.up
        return self.in_flight * (2 if down else 1)

    def _request(self, sub: Submission) -> tuple[str, dict, list, dict[str, str]]:
        headers = dict(self.headers)
        if sub.key:
            headers["Idempotency-Key"] = sub.key
        data = {"pipeline": sub.pipeline, "output_size": "256"}
        if sub.kind == "conflict":
            data["output_size"] = "512"  # the same key with another request
        if sub.webhook:
            data["webhook_url"] = self.receiver.url + sub.webhook
        original = self.by_index.get(sub.of) if sub.of is not None else sub
        assert original is not None
        if original.kind == "asset":
            files = [("file", (f"s{original.index}.jpg", self.photos[sub.photos[0]],
                               "image/jpeg"))]
            return "/assets", data, files, headers
        files = [("files", (f"b{original.index}-{j}.jpg", self.photos[p], "image/jpeg"))
                 for j, p in enumerate(sub.photos)]
        return "/batches", data, files, headers

    def send(self, client: httpx.Client, sub: Submission) -> None:
        path, data, files, headers = self._request(sub)
        deadline = time.monotonic() + self.give_up_s
        backoff = 0.25
        while not self.stop.is_set():
            sub.tries += 1
            start = time.perf_counter()
            try:
                r = client.post(path, data=data, files=files, headers=headers)
            except httpx.TransportError as exc:
                sub.retried.append(type(exc).__name__)
                # Refused: the request never arrived. Anything else may have been taken.
                sub.ambiguous += not isinstance(exc, httpx.ConnectError)
                wait = backoff
            else:
                if r.status_code not in self.RETRY_STATUSES:
                    sub.ack_s = time.perf_counter() - start
                    sub.status_code = r.status_code
                    body = r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else {}
                    if r.status_code == 202:
                        sub.id = body["id"]
                        sub.replayed = r.headers.get("Idempotent-Replayed") == "true"
                    else:
                        sub.error = (body.get("error") or {}).get("code") or r.text[:200]
                    return
                code = ""
                with contextlib.suppress(ValueError, AttributeError):
                    code = r.json()["error"]["code"]
                sub.retried.append(f"{r.status_code} {code}".strip())
                sub.ambiguous += self.RETRY_STATUSES[r.status_code]
                wait = float(r.headers.get("Retry-After") or backoff)
            if time.monotonic() + wait > deadline:
                sub.error = f"gave up after {sub.tries} tries: {sub.retried[-3:]}"
                return
            time.sleep(wait)
            backoff = min(backoff * 2, 4.0)

    def _worker(self, work: Iterator[Submission], lock: threading.Lock) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.stop.is_set():
                with lock:
                    sub = next(work, None)
                if sub is None:
                    return
                if sub.of is not None:
                    original = self.by_index[sub.of]
                    original.done.wait(self.give_up_s)
                    if original.id is None:
                        sub.error = "original not acknowledged"
                        sub.done.set()
                        continue
                else:
                    while (self.monitor.active + sub.jobs > self.cap
                           and self.monitor.active > 0 and not self.stop.is_set()):
                        time.sleep(0.2)
                    self.monitor.expect(sub.jobs)
                try:
                    self.send(client, sub)
                finally:
                    if sub.of is None and sub.id is None:
                        self.monitor.expect(-sub.jobs)  # never coming
                    sub.done.set()

    def run(self, plan: list[Submission], clients: int) -> None:
        self.by_index = {s.index: s for s in plan}
        work = iter(plan)
        lock = threading.Lock()
        threads = [threading.Thread(target=self._worker, args=(work, lock), daemon=True)
                   for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


# --- The job store, watched -----------------------------------------------------------------


def _engine(database_url: str):  # noqa: ANN202 (sqlalchemy Engine)
    from sqlalchemy import create_engine

    if database_url.startswith("sqlite"):
        return create_engine(database_url, connect_args={"timeout": 30})
    return create_engine(database_url, pool_pre_ping=True, pool_size=2,
                         connect_args={"connect_timeout": 3})


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class Monitor:
    """Polls the job store (counts by state, pending deliveries, open batches, live workers)
    and drives the progress bar. A store that cannot be reached keeps the last answer."""

    def __init__(self, database_url: str, total: int, heartbeat_s: float) -> None:
        self.engine = _engine(database_url)
        self.total = total
        self.heartbeat_s = heartbeat_s
        self.counts: dict[str, int] = {}
        self.pending_deliveries = 0
        self.open_batches = 0
        self.live_workers = 0
        self.up = True
        self.expected = 0  # jobs submitted or being submitted
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.bar: tqdm | None = None
        self.bar_shown = 0.0
        self.postfix: Callable[[], dict[str, object]] = dict
        self.thread = threading.Thread(target=self._run, daemon=True)

    def expect(self, jobs: int) -> None:
        with self.lock:
            self.expected += jobs

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in TERMINAL)

    @property
    def active(self) -> int:
        """Unfinished jobs: those in the store, or submitted and not yet there."""
        in_store = sum(self.counts.values())
        return (self.counts.get("queued", 0) + self.counts.get("running", 0)
                + max(0, self.expected - in_store))

    def poll(self) -> None:
        from sqlalchemy import func, select

        from service.rows import BatchRow, Job, WebhookDeliveryRow, WorkerRow

        try:
            with self.engine.connect() as conn:
                counts = dict(conn.execute(select(Job.status, func.count())
                                           .group_by(Job.status)).all())
                pending = conn.execute(select(func.count()).select_from(WebhookDeliveryRow)
                                       .where(WebhookDeliveryRow.status == "pending")).scalar()
                open_batches = conn.execute(select(func.count()).select_from(BatchRow)
                                            .where(BatchRow.completed_at.is_(None))).scalar()
                seen = conn.execute(select(WorkerRow.last_seen_at)).scalars().all()
        except Exception:  # noqa: BLE001 (the store is down on purpose at times)
            self.up = False
            return
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3 * self.heartbeat_s)
        self.counts, self.pending_deliveries = counts, int(pending or 0)
        self.open_batches = int(open_batches or 0)
        self.live_workers = sum(1 for t in seen if (_utc(t) or cutoff) > cutoff)
        self.up = True

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()
            # A terminal gets every change; a log file a line every 10 s.
            if self.bar is not None and (sys.stderr.isatty()
                                         or time.monotonic() - self.bar_shown >= 10):
                self.bar.n = min(self.done, self.total)
                self.bar.set_postfix(active=self.active, store="up" if self.up else "DOWN",
                                     **self.postfix(), refresh=False)
                self.bar.refresh()
                self.bar_shown = time.monotonic()

    def start(self) -> None:
        self.poll()
        self.thread.start()

    def wait_workers(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if self.live_workers >= n:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{n} live workers expected, {self.live_workers} after {timeout} s")

    def running_workers(self) -> list[int]:
        """Pids of the worker processes holding a running job now."""
        from sqlalchemy import select

        from service.rows import Job

        try:
            with self.engine.connect() as conn:
                names = conn.execute(select(Job.worker).where(Job.status == "running")).scalars()
                return [int(n.rsplit(":", 1)[1]) for n in names if n and ":" in n]
        except Exception:  # noqa: BLE001
            return []

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.engine.dispose()


# --- Faults ---------------------------------------------------------------------------------


@dataclass
class Fault:
    at: float  # share of the jobs finished when it fires
    kind: str  # worker_kill | redis | postgres | api | serve
    fired_s: float | None = None  # seconds into the run
    detail: str = ""
    took_s: float | None = None


class Chaos:
    """Fires the faults in order as the run progresses, at least `gap_s` apart."""

    def __init__(self, run: SoakRun, faults: list[Fault], gap_s: float) -> None:
        self.run = run
        self.faults = sorted(faults, key=lambda f: f.at)
        self.gap_s = gap_s
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        last = 0.0
        for fault in self.faults:
            while not self.stop.is_set():
                m = self.run.monitor
                progress = m.done / max(1, self.run.total_jobs)
                # All submitted and nothing left to run: no more progress will come.
                idle = self.run.submitted.is_set() and m.up and m.active == 0
                if (progress >= fault.at or idle) and time.monotonic() - last >= self.gap_s:
                    break
                time.sleep(0.2)
            if self.stop.is_set():
                return
            start = time.monotonic()
            fault.fired_s = round(start - self.run.t0, 1)
            try:
                fault.detail = self.run.inject(fault.kind)
            except Exception as exc:  # noqa: BLE001 (a fault that failed is reported, not fatal)
                fault.detail = f"ERROR {type(exc).__name__}: {exc}"
                self.errors.append(fault.detail)
            fault.took_s = round(time.monotonic() - start, 1)
            log(f"fault {fault.kind} at {fault.at:.0%} of jobs: {fault.detail} "
                f"({fault.took_s} s)")
            last = time.monotonic()

    @property
    def finished(self) -> bool:
        return not self.thread.is_alive()


class SoakRun:
    """One soak in one mode: servers, processes, load, faults, drain, accounting."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode: str = args.mode
        self.rng = random.Random(args.seed)
        self.root = Path(tempfile.mkdtemp(prefix=f"flatlay-soak-{self.mode}-"))
        self.data_dir = self.root / "data"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.redis: PrivateRedis | None = None
        self.postgres: PrivatePostgres | None = None
        self.receiver = Receiver(args.hook_fail_share, args.seed)
        self.fleet: Fleet | None = None
        self.monitor: Monitor  # set up once the job store is there (setup)
        self.total_jobs = args.jobs
        self.t0 = time.monotonic()
        self.counts: collections.Counter[str] = collections.Counter()
        self.kill_no = 0
        self.database_url = ""
        self.api_key = ""
        self.outage = threading.Event()
        self.submitted = threading.Event()

    # Setup -------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLATLAY_")}
        a = self.args
        env.update({
            "PYTHONUNBUFFERED": "1",
            "FLATLAY_DATA_DIR": str(self.data_dir),
            "FLATLAY_LOG_LEVEL": "info",
            "FLATLAY_LOG_FORMAT": "json",
            "FLATLAY_PRELOAD_PIPELINES": "cutout,flatten",
            "FLATLAY_DEFAULT_PIPELINE": "cutout",
            "FLATLAY_FETCH_ALLOW_HOSTS": "127.0.0.1",
            "FLATLAY_WEBHOOK_BACKOFF_S": "0.5",
            "FLATLAY_WEBHOOK_MAX_ATTEMPTS": str(a.webhook_attempts),
            "FLATLAY_WORKER_HEARTBEAT_S": str(a.heartbeat_s),
            "FLATLAY_RECONCILE_INTERVAL_S": "2",
            "FLATLAY_REQUEUE_QUEUED_AFTER_S": str(a.requeue_after_s),
            "FLATLAY_TASK_SOFT_TIME_LIMIT_S": str(a.task_time_limit_s),
            "FLATLAY_TASK_TIME_LIMIT_S": str(a.task_time_limit_s + 30),
            "FLATLAY_RATE_LIMIT_PER_S": "1000",
            "FLATLAY_RATE_LIMIT_BURST": "1000",
            "FLATLAY_RESULT_RETENTION_S": "0",
        })
        if self.mode == "distributed":
            assert self.redis is not None and self.postgres is not None
            env.update(FLATLAY_BROKER_URL=self.redis.url,
                       FLATLAY_DATABASE_URL=self.postgres.url)
        return env

    def _cli(self, env: dict[str, str], *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                              check=True, capture_output=True, text=True, timeout=300).stdout

    def setup(self) -> str:
        """Servers, schema, an API key whose default webhook is the receiver, the service;
        returns the key."""
        if self.mode == "distributed":
            self.redis = PrivateRedis(self.root)
            self.redis.start()
            self.postgres = PrivatePostgres()
            self.postgres.init()
            self.database_url = self.postgres.url
        else:
            self.database_url = f"sqlite:///{self.data_dir / 'jobs.sqlite3'}"
        env = self.env()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._cli(env, "migrate")
        out = self._cli(env, "keys", "create", "--tenant", "soak", "--webhook-url",
                        self.receiver.url + HOOK)
        key = self.api_key = out.strip().splitlines()[-1]
        secret = re.search(r"whsec_\S+", out)
        if secret is None:
            raise RuntimeError(f"`flatlay keys create` printed no webhook secret: {out!r}")
        self.receiver.secret = secret.group(0)
        self.fleet = Fleet(env, self.root)
        self.monitor = Monitor(self.database_url, self.total_jobs, self.args.heartbeat_s)
        if self.mode == "distributed":
            wait_ready(self.base_url, self.fleet.start("api", ["api", "--port", str(self.port)]))
            for i in range(self.args.workers):
                self.fleet.start(f"worker{i}", ["worker"])
            self.monitor.wait_workers(self.args.workers, 300)
        else:
            wait_ready(self.base_url, self.fleet.start("serve", ["serve", "--port",
                                                                 str(self.port)]))
            self.monitor.wait_workers(1, 300)
        return key

    def faults(self) -> list[Fault]:
        a, rng = self.args, self.rng
        faults = [Fault(rng.uniform(0.05, 0.9), "worker_kill") for _ in range(a.kills)]
        if self.mode == "distributed":
            # Early enough that submissions are still going on (at most --in-flight ahead).
            faults += [Fault(rng.uniform(0.1, 0.25), "redis"),
                       Fault(rng.uniform(0.3, 0.45), "postgres"),
                       Fault(rng.uniform(0.5, 0.65), "api")]
        else:
            faults += [Fault(rng.uniform(0.15, 0.65), "serve") for _ in range(a.serve_kills)]
        return faults

    # Faults ------------------------------------------------------------------------------

    def _worker_groups(self) -> dict[int, str]:
        """Process group → the name of the fleet process it belongs to."""
        assert self.fleet is not None
        if self.mode == "distributed":
            return {p.pid: n for n, p in self.fleet.procs.items() if n.startswith("worker")}
        serve = self.fleet.procs["serve"]
        groups = {}
        for child in children_of(serve.pid):
            with contextlib.suppress(ProcessLookupError):
                groups[os.getpgid(child)] = "serve's worker"
        self.fleet.groups.update(groups)
        return groups

    def _victim(self, timeout: float = 20.0) -> tuple[int | None, int, str, bool]:
        """(pool child pid or None, its group, fleet name, whether it held a running job): a
        worker in the middle of a job when there is one within `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            groups = self._worker_groups()
            for pid in self.monitor.running_workers():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    pgid = os.getpgid(pid)
                    if pgid in groups and pid_alive(pid):
                        return pid, pgid, groups[pgid], True
            if time.monotonic() > deadline and groups:
                pgid = self.rng.choice(sorted(groups))
                kids = children_of(pgid)
                return (kids[0] if kids else None), pgid, groups[pgid], False
            time.sleep(0.1)

    def inject(self, kind: str) -> str:
        if kind == "worker_kill":
            return self._inject(kind)
        self.outage.set()
        try:
            return self._inject(kind)
        finally:
            self.outage.clear()

    def _inject(self, kind: str) -> str:
        assert self.fleet is not None
        a = self.args
        if kind == "worker_kill":
            self.kill_no += 1
            pid, pgid, name, busy = self._victim()
            doing = "mid-job" if busy else "idle"
            if self.kill_no % 2 == 0 and pid is not None:
                # The Celery pool child alone; the worker's main process starts another.
                os.kill(pid, signal.SIGKILL)
                self.counts["worker_kills_child"] += 1
                return f"SIGKILL pool child {pid} of {name} ({doing})"
            killpg(pgid)
            self.counts["worker_kills_group"] += 1
            if self.mode == "distributed":
                self.fleet.procs[name].wait()
                time.sleep(a.restart_delay_s)
                self.fleet.restart(name)
                return f"SIGKILL {name} (group {pgid}, {doing}); started again"
            return f"SIGKILL {name} (group {pgid}, {doing}); its supervisor restarts it"
        if kind == "redis":
            assert self.redis is not None
            self.redis.restart(a.outage_s)
            self.counts["redis_restarts"] += 1
            return f"redis-server stopped (no save), down {a.outage_s:g} s, started"
        if kind == "postgres":
            assert self.postgres is not None
            self.postgres.restart(a.outage_s)
            self.counts["postgres_restarts"] += 1
            return f"pg_ctl stop -m immediate, down {a.outage_s:g} s, started"
        if kind == "api":
            self.fleet.kill("api")
            time.sleep(a.restart_delay_s)
            ready = wait_ready(self.base_url, self.fleet.restart("api"))
            self.counts["api_restarts"] += 1
            return f"SIGKILL flatlay api; started again, ready in {ready:.1f} s"
        if kind == "serve":
            serve = self.fleet.procs["serve"]
            workers = self._worker_groups()
            self.fleet.kill("serve")  # its own group: the API and the supervisor
            time.sleep(1.0)
            survivors = [g for g in workers if pid_alive(g)]
            if survivors:
                self.counts["workers_outliving_serve"] += 1
            for pgid in workers:
                killpg(pgid)
            time.sleep(a.restart_delay_s)
            ready = wait_ready(self.base_url, self.fleet.restart("serve"))
            self.counts["serve_restarts"] += 1
            left = (f"; its worker (group {survivors}) was still alive 1 s later, killed too"
                    if survivors else "")
            return (f"SIGKILL flatlay serve (pid {serve.pid}){left}; started again, ready in "
                    f"{ready:.1f} s")
        raise ValueError(kind)

    # The run -----------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        a = self.args
        log(f"{self.mode}: setting up under {self.root}")
        key = self.setup()
        photos = photo_variants(12, a.seed)
        plan = make_plan(a.jobs, self.rng, a.flatten_share, a.keyed_share, a.replay_share,
                         a.batch_share, len(photos))
        faults = self.faults()
        submitter = Submitter(self.base_url, key, photos, self.receiver, self.monitor,
                              a.in_flight, a.give_up_s, self.outage)
        chaos = Chaos(self, faults, a.gap_s)
        log(f"{self.mode}: {sum(s.jobs for s in plan)} jobs in "
            f"{sum(1 for s in plan if s.jobs)} submissions, {len(faults)} faults")
        self.t0 = time.monotonic()
        bar = tqdm(total=self.total_jobs, desc=f"soak {self.mode}", unit="job", file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 10)
        self.monitor.bar = bar
        self.monitor.postfix = lambda: {"faults": sum(f.fired_s is not None for f in faults)}
        self.monitor.start()
        chaos.thread.start()
        submitter.run(plan, a.clients)
        self.submitted.set()
        submitted_s = time.monotonic() - self.t0
        log(f"all submissions answered after {submitted_s:.0f} s")
        # Drain: every fault fired, nothing queued or running, no delivery pending, every
        # batch completed.
        drain_deadline = time.monotonic() + a.drain_timeout
        while time.monotonic() < drain_deadline:
            m = self.monitor
            if (chaos.finished and m.up and m.active == 0 and m.pending_deliveries == 0
                    and m.open_batches == 0):
                break
            time.sleep(1.0)
        else:
            log(f"drain timeout: {self.monitor.counts}, pending deliveries "
                f"{self.monitor.pending_deliveries}, open batches {self.monitor.open_batches}")
        drained_s = time.monotonic() - self.t0
        chaos.stop.set()
        submitter.stop.set()
        bar.n = min(self.monitor.done, self.total_jobs)
        bar.close()
        self.monitor.bar = None
        time.sleep(1.0)  # the last webhook answers
        report = self.account(plan, faults)
        report.update(submitted_s=round(submitted_s, 1), wall_s=round(drained_s, 1),
                      chaos_errors=chaos.errors)
        return report

    def close(self) -> None:
        if hasattr(self, "monitor"):
            self.monitor.close()
        if self.fleet is not None:
            self.fleet.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.remove()
        self.receiver.close()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    # Accounting --------------------------------------------------------------------------

    def _rows(self) -> tuple[list[Any], list[Any], list[Any]]:
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from service.rows import BatchRow, Job, WebhookDeliveryRow

        deadline = time.monotonic() + 60
        while True:
            try:
                with Session(self.monitor.engine) as s:
                    jobs = list(s.scalars(select(Job)).all())
                    batches = list(s.scalars(select(BatchRow)).all())
                    deliveries = list(s.scalars(select(WebhookDeliveryRow)).all())
                return jobs, batches, deliveries
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    LOG_SIGNALS = {
        "pool child start timed out": "Timed out waiting for UP message",
        "worker lost (SIGKILL)": "WorkerLostError",
        "job crashed (unexpected error)": "crashed: Traceback",
        "task raised unexpected": "raised unexpected",
        "reconcile pass failed": "reconcile pass failed",
        "enqueue failed (reconciler resends)": "the reconciler will retry",
        "webhook not queued": "could not queue webhook delivery",
    }

    def _read_logs(self) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """(job id → `job succeeded` lines, LOG_SIGNALS name → lines) in every log of the run."""
        assert self.fleet is not None
        seen: collections.Counter[str] = collections.Counter()
        signals: collections.Counter[str] = collections.Counter()
        for path in self.fleet.logs:
            with path.open(errors="replace") as fh:
                for line in fh:
                    for name, needle in self.LOG_SIGNALS.items():
                        signals[name] += needle in line
                    if '"job succeeded"' not in line:
                        continue
                    with contextlib.suppress(ValueError):
                        entry = json.loads(line)
                        if entry.get("message") == "job succeeded" and entry.get("job_id"):
                            seen[entry["job_id"]] += 1
        return seen, +signals

    def _blobs(self, jobs: dict[str, Any]) -> dict[str, Any]:
        """Every blob file against the job rows: orphans by kind, result files per job."""
        root = self.data_dir / "blobs"
        orphans: dict[str, list[str]] = collections.defaultdict(list)
        results_per_job: collections.Counter[str] = collections.Counter()
        missing: list[str] = []
        referenced: dict[str, set[str]] = {}
        for job in jobs.values():
            refs = {job.input_blob}
            if job.status == "succeeded":
                refs |= {job.result_blob, *(job.side_outputs or {}).values()}
            referenced[job.id] = {r for r in refs if r}
        assets = root / "assets"
        for folder in sorted(assets.iterdir()) if assets.is_dir() else []:
            files = [p for p in folder.rglob("*") if p.is_file()]
            job = jobs.get(folder.name)
            for p in files:
                key = p.relative_to(root).as_posix()
                if job is None:
                    orphans["no_job_row"].append(key)
                elif p.name.startswith(".tmp-"):
                    orphans["temp_file"].append(key)
                elif key not in referenced[job.id]:
                    orphans["unreferenced_output"].append(key)
                if job is not None and p.parent == folder and p.name.startswith("result"):
                    results_per_job[job.id] += 1
        for job in jobs.values():
            for key in referenced[job.id]:
                if job.status == "succeeded" and not (root / key).is_file():
                    missing.append(key)
        other = [p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and not p.relative_to(root).as_posix().startswith("assets/")]
        if other:
            orphans["outside_assets"] = other
        return {"orphans": dict(orphans), "results_per_job": results_per_job,
                "missing_blobs": missing}

    def _api_check(self, ids: list[str], key_header: dict[str, str],
                   jobs: dict[str, Any]) -> list[str]:
        """Each job's status (and result, when succeeded) through the API; what disagrees."""
        problems: list[str] = []
        lock = threading.Lock()
        work = iter(ids)

        def check() -> None:
            with httpx.Client(base_url=self.base_url, headers=key_header, timeout=30) as c:
                while True:
                    with lock:
                        job_id = next(work, None)
                    if job_id is None:
                        return
                    trouble = None
                    try:
                        status = c.get(f"/assets/{job_id}")
                        if status.status_code != 200:
                            trouble = f"{job_id}: GET answered {status.status_code}"
                        elif status.json()["status"] != jobs[job_id].status:
                            trouble = f"{job_id}: API says {status.json()['status']}"
                        elif jobs[job_id].status == "succeeded":
                            result = c.get(f"/assets/{job_id}/result")
                            if result.status_code != 200 or not result.content:
                                trouble = f"{job_id}: result answered {result.status_code}"
                    except httpx.HTTPError as exc:
                        trouble = f"{job_id}: {type(exc).__name__}: {exc}"
                    if trouble:
                        with lock:
                            problems.append(trouble)

        threads = [threading.Thread(target=check) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return problems

    def account(self, plan: list[Submission], faults: list[Fault]) -> dict[str, Any]:
        a = self.args
        job_rows, batch_rows, delivery_rows = self._rows()
        jobs = {j.id: j for j in job_rows}
        batches = {b.id: b for b in batch_rows}
        deliveries = delivery_rows
        originals = [s for s in plan if s.kind in ("asset", "batch")]
        planned_jobs = sum(s.jobs for s in originals)
        problems: dict[str, list[str]] = collections.defaultdict(list)

        # Acknowledged jobs: single assets by id, batches by their rows' batch_id.
        acked: set[str] = set()
        for s in originals:
            if s.id is None:
                problems["not_acknowledged"].append(f"submission {s.index}: {s.error}")
            elif s.kind == "asset":
                acked.add(s.id)
                if s.id not in jobs:
                    problems["lost"].append(f"asset {s.id}: acknowledged, not in the store")
            else:
                members = [j for j in jobs.values() if j.batch_id == s.id]
                acked |= {j.id for j in members}
                if s.id not in batches:
                    problems["lost"].append(f"batch {s.id}: acknowledged, not in the store")
                if len(members) != len(s.photos):
                    problems["lost"].append(
                        f"batch {s.id}: {len(s.photos)} files sent, {len(members)} jobs")
        strays = sorted(set(jobs) - acked)
        # A stray is a submission nobody was told about: a single job, or a whole batch.
        stray_submissions = len({jobs[i].batch_id or i for i in strays})
        ambiguous = sum(s.ambiguous for s in originals if not s.key)
        if stray_submissions > ambiguous:
            problems["duplicated"].append(
                f"{stray_submissions} submissions made jobs nobody was told about, only "
                f"{ambiguous} unkeyed retries could have (keyed retries must not)")

        # Every job in the store, acknowledged or stray.
        states = collections.Counter(j.status for j in jobs.values())
        failure_codes = collections.Counter(j.error_code for j in jobs.values()
                                            if j.status == "failed")
        for j in jobs.values():
            if j.status in ("queued", "running"):
                problems["lost"].append(f"job {j.id}: still {j.status} (attempts {j.attempts})")
            elif j.status == "canceled":
                problems["lost"].append(f"job {j.id}: canceled, nobody asked")
            elif j.status == "failed" and not ERROR_CODE.match(j.error_code or ""):
                problems["lost"].append(f"job {j.id}: failed without a typed code")
            elif j.status == "succeeded" and not j.result_blob:
                problems["lost"].append(f"job {j.id}: succeeded without a result")
        blobs = self._blobs(jobs)
        for key in blobs["missing_blobs"]:
            problems["lost"].append(f"blob {key}: recorded, not on disk")
        for job_id, n in blobs["results_per_job"].items():
            if n > 1:
                problems["extra_result_blobs"].append(f"job {job_id}: {n} result blobs")
        for j in jobs.values():
            if j.status == "succeeded" and blobs["results_per_job"][j.id] == 0:
                problems["lost"].append(f"job {j.id}: succeeded, no result file")

        # Exactly once.
        logged, log_signals = self._read_logs()
        for job_id, n in logged.items():
            if n > 1:
                problems["duplicated"].append(f"job {job_id}: `job succeeded` logged {n} times")
        for s in plan:
            if s.kind == "replay":
                original = next(o for o in originals if o.index == s.of)
                if original.id is None:
                    continue
                if s.id != original.id or not s.replayed:
                    problems["duplicated"].append(
                        f"replay of submission {s.of}: {s.status_code} id {s.id} (first "
                        f"{original.id}), Idempotent-Replayed {s.replayed}, {s.error}")
            elif s.kind == "conflict" and s.status_code != 409:
                problems["conflict_not_refused"].append(
                    f"submission {s.of} again with other options: {s.status_code} {s.error}")

        # Webhooks: one delivery per ended job and per completed batch; each delivered
        # (and received with a valid signature) or recorded as exhausted.
        got = collections.defaultdict(list)
        for r in self.receiver.received:
            got[r["webhook_id"]].append(r)
        per_subject: dict[tuple[str, str | None], list[Any]] = collections.defaultdict(list)
        for d in deliveries:
            subject = d.asset_id if d.event.startswith("asset.") else d.batch_id
            per_subject[(d.event, subject)].append(d)
        hooks = collections.Counter()
        for j in jobs.values():
            if j.status in ("succeeded", "failed") and j.webhook_url:
                found = per_subject.get((f"asset.{j.status}", j.id), [])
                if not found:
                    problems["webhook_missing"].append(f"job {j.id}: no asset.{j.status} event")
        for b in batches.values():
            if b.completed_at is None:
                problems["lost"].append(f"batch {b.id}: never completed")
            elif b.webhook_url and not per_subject.get(("batch.completed", b.id)):
                problems["webhook_missing"].append(f"batch {b.id}: no batch.completed event")
        for (event, subject), found in per_subject.items():
            if len(found) > 1:
                problems["duplicated"].append(f"{event} {subject}: {len(found)} deliveries")
        for d in deliveries:
            hooks[d.status] += 1
            if d.status == "pending":
                problems["webhook_pending"].append(f"delivery {d.id} ({d.event}) still pending")
            elif d.status == "succeeded":
                answers = got.get(d.id, [])
                if not any(r["answered"] == 200 for r in answers):
                    problems["webhook_not_received"].append(
                        f"delivery {d.id}: recorded delivered, the receiver has no 2xx")
            elif d.status == "failed":
                hooks["exhausted_" + ("dead_url" if d.url.endswith(DEAD_HOOK) else "live_url")] \
                    += 1
        bad_signatures = sum(1 for r in self.receiver.received if not r["valid"])
        if bad_signatures:
            problems["webhook_bad_signature"].append(f"{bad_signatures} bad signatures")
        redelivered = sum(1 for rs in got.values()
                          if sum(r["answered"] == 200 for r in rs) > 1)

        # Through the API too.
        if a.api_check:
            key_header = {"Authorization": f"Bearer {self.api_key}"}
            for p in self._api_check(sorted(jobs), key_header, jobs):
                problems["lost"].append(p)

        # Numbers.
        took = {j.id: (_utc(j.finished_at) - _utc(j.created_at)).total_seconds()
                for j in jobs.values() if j.status == "succeeded" and j.finished_at}
        latencies = list(took.values())
        slow = sorted(((t, i) for i, t in took.items() if t > a.slow_s), reverse=True)
        acks = [s.ack_s for s in plan if s.ack_s is not None]
        orphans = blobs["orphans"]
        n_orphans = sum(len(v) for v in orphans.values()) + len(problems["extra_result_blobs"])
        attempts = collections.Counter(j.attempts for j in jobs.values())
        sent_again = [s for s in originals if s.retried]
        row = {
            "variant": self.mode,
            "jobs": planned_jobs,
            "accepted": len(acked),
            "succeeded": states.get("succeeded", 0),
            "failed": states.get("failed", 0),
            "worker_kills": self.counts["worker_kills_group"] + self.counts["worker_kills_child"],
            "restarts": " · ".join(f"{k.removesuffix('_restarts')} {v}"
                                   for k, v in sorted(self.counts.items())
                                   if k.endswith("_restarts")) or "—",
            "lost": len(problems["lost"]) + len(problems["not_acknowledged"]),
            "duplicated": len(problems["duplicated"]),
            "orphaned": n_orphans,
            "strays": len(strays),
            "webhooks": f"{hooks['succeeded']} ok · {hooks['failed']} exhausted · "
                        f"{len(problems['webhook_missing'])} missing",
            "wall_s": None,
            "p50_s": float(np.percentile(latencies, 50)) if latencies else None,
            "p99_s": float(np.percentile(latencies, 99)) if latencies else None,
            # Details (JSON only).
            "seed": a.seed,
            "states": dict(states),
            "failure_codes": dict(failure_codes),
            "attempts_histogram": {str(k): v for k, v in sorted(attempts.items())},
            "kills": {"group": self.counts["worker_kills_group"],
                      "pool_child": self.counts["worker_kills_child"]},
            "restart_counts": {k: v for k, v in self.counts.items() if k.endswith("_restarts")},
            "workers_outliving_serve_kill": self.counts["workers_outliving_serve"],
            "faults": [vars(f) for f in sorted(faults, key=lambda f: f.fired_s or 1e9)],
            "submissions": {
                "assets": sum(s.kind == "asset" for s in plan),
                "batches": sum(s.kind == "batch" for s in plan),
                "keyed": sum(bool(s.key) for s in originals),
                "replays": sum(s.kind == "replay" for s in plan),
                "conflicts": sum(s.kind == "conflict" for s in plan),
                "flatten_jobs": sum(s.jobs for s in originals if s.pipeline == "flatten"),
                "retried": len(sent_again),
                "retry_reasons": dict(collections.Counter(
                    r for s in plan for r in s.retried)),
                "ambiguous_unkeyed_retries": ambiguous,
                "ambiguous_keyed_retries": sum(s.ambiguous for s in originals if s.key),
                "ack_p50_ms": round(float(np.percentile(acks, 50)) * 1000, 1) if acks else None,
                "ack_p99_ms": round(float(np.percentile(acks, 99)) * 1000, 1) if acks else None,
            },
            "stray_submissions": stray_submissions,
            "stray_ids": strays[:50],
            "log_signals": dict(log_signals),
            "slow_jobs": [{"id": i, "seconds": round(t, 1), "attempts": jobs[i].attempts}
                          for t, i in slow[:50]],
            "webhook_deliveries": dict(hooks),
            "webhook_events_received": len(self.receiver.received),
            "webhook_ids_delivered_more_than_once": redelivered,
            "orphan_blobs": {k: len(v) for k, v in orphans.items()},
            "orphan_examples": {k: v[:10] for k, v in orphans.items()},
            "problems": {k: v[:50] for k, v in problems.items() if v},
            "problem_counts": {k: len(v) for k, v in problems.items() if v},
        }
        return row


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop everything we started, as Ctrl-C does


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """One soak in args.mode; the report row (see `SoakRun.account`)."""
    run = SoakRun(args)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run.execute()
    finally:
        run.close()
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            log(f"kept {run.root} (logs, data)")


COLUMNS = [("jobs", "jobs", "d"), ("succeeded", "succeeded", "d"), ("failed", "failed", "d"),
           ("worker_kills", "worker kills", "d"), ("restarts", "restarts", ""),
           ("lost", "lost", "d"), ("duplicated", "duplicated", "d"),
           ("orphaned", "orphaned", "d"), ("strays", "strays", "d"),
           ("webhooks", "webhooks", ""), ("wall_s", "wall s", ".0f"),
           ("p50_s", "p50 s", ".2f"), ("p99_s", "p99 s", ".2f")]


def print_table(row: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"soak ({row['variant']})")
    table.add_column("")
    table.add_column(row["variant"], justify="right")
    for k, label, spec in COLUMNS:
        table.add_row(label, "—" if row.get(k) is None else format(row[k], spec))
    console = Console()
    console.print(table)
    for name, items in row["problems"].items():
        console.print(f"[bold]{name}[/bold] ({row['problem_counts'][name]}): "
                      + "; ".join(items[:5]))


def _intro(args: argparse.Namespace, row: dict[str, Any],
           argv: list[str] | None = None) -> list[str]:
    s = row["submissions"]
    faults = "; ".join(f"{f['fired_s']} s {f['kind']}: {f['detail']}" for f in row["faults"])
    command = " ".join(["python bench/soak.py", *(argv if argv is not None else sys.argv[1:])])
    return [
        f"# Soak under faults ({row['variant']})", "",
        f"`{command}` (seed {args.seed}). Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs. "
        f"{row['jobs']} jobs ({s['flatten_jobs']} `flatten`, the rest `cutout`, 256 px) in "
        f"{s['assets']} single assets and {s['batches']} batches; {s['keyed']} with an "
        f"Idempotency-Key, {s['replays']} replays, {s['conflicts']} conflicting reuses; at most "
        f"{args.in_flight} unfinished jobs at a time. "
        + ("2 `flatlay worker` processes, a private Redis and PostgreSQL."
           if args.mode == "distributed" else "`flatlay serve` (one supervised worker)."), "",
        f"Faults: {faults}.", "",
        f"States: {row['states']}; failure codes: {row['failure_codes'] or 'none'}; attempts: "
        f"{row['attempts_histogram']}. Submission retries: {s['retried']} ({s['retry_reasons']})"
        f", {s['ambiguous_unkeyed_retries']} ambiguous without a key. Webhook deliveries: "
        f"{row['webhook_deliveries']}. Orphan blobs: {row['orphan_blobs'] or 'none'}. "
        f"Jobs slower than {args.slow_s:g} s: {len(row['slow_jobs'])}. Log lines: "
        f"{row['log_signals'] or 'none'}. "
        f"Latency is created → finished of succeeded jobs; wall time includes the drain.", "",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["distributed", "embedded"], default="distributed")
    p.add_argument("--jobs", type=int, default=1000, help="jobs in all (default 1000)")
    p.add_argument("--kills", type=int, default=12, help="worker SIGKILLs (default 12)")
    p.add_argument("--serve-kills", type=int, default=2,
                   help="embedded: SIGKILLs of the whole flatlay serve (default 2)")
    p.add_argument("--workers", type=int, default=2, help="distributed: worker processes")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--flatten-share", type=float, default=0.1)
    p.add_argument("--keyed-share", type=float, default=0.3)
    p.add_argument("--replay-share", type=float, default=0.15,
                   help="share of keyed submissions sent again later")
    p.add_argument("--batch-share", type=float, default=0.3, help="share of submissions")
    p.add_argument("--clients", type=int, default=4, help="client threads")
    p.add_argument("--in-flight", type=int, default=None,
                   help="most unfinished jobs at once (default: jobs/5, 8 to 60)")
    p.add_argument("--hook-fail-share", type=float, default=0.05)
    p.add_argument("--webhook-attempts", type=int, default=4)
    p.add_argument("--outage-s", type=float, default=3.0, help="Redis/PostgreSQL downtime")
    p.add_argument("--restart-delay-s", type=float, default=1.0)
    p.add_argument("--gap-s", type=float, default=3.0, help="least time between faults")
    p.add_argument("--heartbeat-s", type=float, default=2.0)
    p.add_argument("--requeue-after-s", type=float, default=20.0)
    p.add_argument("--task-time-limit-s", type=int, default=120,
                   help="soft limit; a job running past it + 90 s is taken back")
    p.add_argument("--give-up-s", type=float, default=300.0,
                   help="a submission retried this long is given up")
    p.add_argument("--drain-timeout", type=float, default=900.0)
    p.add_argument("--slow-s", type=float, default=60.0, help="a job slower than this is listed")
    p.add_argument("--no-api-check", dest="api_check", action="store_false")
    p.add_argument("--keep", action="store_true", help="keep the temp folders (logs, data)")
    args = p.parse_args(argv)
    if args.in_flight is None:
        args.in_flight = max(8, min(60, args.jobs // 5))
    row = run_soak(args)
    print_table(row)
    write_variants(args.out, f"soak-{args.mode}", _intro(args, row, argv), [row], COLUMNS)
    log(f"wrote {args.out / f'soak-{args.mode}.md'} and .json")
    bad = row["lost"] + row["duplicated"] + row["orphaned"] + len(
        row["problems"].get("webhook_missing", [])) + len(row["problems"].get(
            "webhook_pending", []))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

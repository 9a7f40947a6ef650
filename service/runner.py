"""`flatlay serve`: the API in this process, a real Celery worker in a child process.

The worker runs in its own session, so Ctrl-C reaches only us; we then stop the API and give
the worker a warm shutdown (it finishes the job in hand), killing it only after a grace
period. A worker that dies on its own is restarted. When we die without a word (SIGKILL, an
out-of-memory kill), the worker dies with us (`die_with_parent`): a `flatlay serve` started
again must not find a second worker, unsupervised, on its queue.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("flatlay.serve")

# Set by WorkerSupervisor in its child's environment: the pid the worker must not outlive.
PARENT_PID_ENV = "FLATLAY_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(poll_s: float = 1.0) -> None:
    """In a worker started by `flatlay serve`: be killed when that process dies. Linux sends
    SIGKILL at once (prctl PR_SET_PDEATHSIG); elsewhere a thread polls the parent pid. With
    the worker's pool children (Celery sets their death signal on its own), its whole
    process group goes. A no-op when no supervisor started us."""
    wanted = os.environ.get(PARENT_PID_ENV)
    if not wanted:
        return
    parent = int(wanted)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the thread below still watches
    # The parent may have died before the death signal was set (or there is none): the
    # poll catches both; a dead parent's children are adopted, so getppid changes.

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.error("flatlay serve (pid %s) is gone; the worker stops with it", parent)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    if os.getppid() != parent:
        watch()
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class WorkerSupervisor:
    """Keeps one worker child process alive until `stop()`.

    Every child is started by the supervisor thread, and that thread lasts until its child
    has exited: Linux sends a child's death signal when the *thread* that forked it ends, so
    a child started by a shorter-lived thread would be killed before its warm shutdown."""

    def __init__(self, argv: list[str], env: dict[str, str], grace_s: float = 30.0) -> None:
        self.argv = argv
        self.env = {**env, PARENT_PID_ENV: str(os.getpid())}
        self.grace_s = grace_s
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # no child starts once stop() has begun
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
            log.info("worker started (pid %s)", self.proc.pid)

    def _watch(self) -> None:
        try:
            self._spawn()
        except BaseException as exc:  # start() raises it
            self._start_error = exc
            return
        finally:
            self._started.set()
        backoff = 1.0
        while True:
            assert self.proc is not None
            code = self.proc.poll()
            if self._stopping.is_set():
                if code is not None:
                    return  # only once the child is gone (see the class's note)
            elif code is not None:
                log.warning("worker exited with %s; restarting in %.0f s", code, backoff)
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 30.0)
                self._spawn()
                continue
            else:
                backoff = 1.0
            time.sleep(0.5)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
            try:
                proc.wait(self.grace_s)
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop within %.0f s; killing it", self.grace_s)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


class _Terminated(Exception):
    """SIGTERM arrived: a requested, graceful stop."""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


# glibc's M_MMAP_THRESHOLD: allocations this large or larger are mapped, and unmapped on free.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1024 * 1024


def return_large_frees_to_the_os() -> bool:
    """Fix glibc's mmap threshold at 1 MB; True where it was set.

    By default glibc raises the threshold after each large free (up to 32 MB), so buffers the
    size of an upload then come from per-thread arenas that keep what is freed: 50 concurrent
    20 MB uploads took the API to 820 MB over its baseline while at most 4 were held at once;
    with the threshold fixed, 220 MB (bench/bench_uploads.py).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl…): its allocator has no such arenas
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def serve(
    host: str | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    worker: bool = True,
) -> int:
    import uvicorn

    from service.logs import configure_logging
    from service.multiproc import prepare_metrics_dir
    from service.settings import get_settings
    from service.store import migrate

    settings = get_settings(data_dir=data_dir, host=host, port=port)
    try:
        settings.check_auth_bind()
    except ValueError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    settings.ensure_dirs()
    configure_logging(settings.log_level, settings.log_format)
    return_large_frees_to_the_os()
    # Before prometheus_client is imported (by service.app); the worker child inherits it.
    prepare_metrics_dir(settings.metrics_dir, "serve" if worker else "api")
    migrate(settings.resolved_database_url)

    from service.app import create_app

    # The app is built before the worker starts, so that a broken app leaves no orphan.
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            # Our logging (JSON lines) and our access log line (with the request id).
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
            # An idle keep-alive connection is closed after this (slow bodies: BodyGuard).
            timeout_keep_alive=settings.keep_alive_timeout_s,
        )
    )

    supervisor = None
    if worker:
        env = {
            **os.environ,
            "FLATLAY_DATA_DIR": str(settings.data_dir.resolve()),
            # The API's /metrics already shows the worker's series; no second endpoint.
            "FLATLAY_WORKER_METRICS_PORT": "0",
        }
        argv = [sys.executable, "-m", "cli", "worker"]
        supervisor = WorkerSupervisor(argv, env)
        supervisor.start()

    mode = "embedded" if settings.embedded_broker else "distributed"
    print(
        f"Flatlay on http://{settings.host}:{settings.port} ({mode}; jobs: "
        f"{settings.redacted_database_url}; data: {settings.data_dir.resolve()})",
        flush=True,
    )
    # uvicorn re-raises the signal that stopped it once it is done; make SIGTERM end in an
    # exception (as SIGINT does) so that the worker is stopped below rather than orphaned.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.run()
    except _Terminated:
        pass
    except SystemExit:
        # uvicorn exits this way when it cannot bind or start the application.
        if server.started:
            raise
        print(f"could not start the API on {settings.host}:{settings.port}", file=sys.stderr)
        return 1
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0

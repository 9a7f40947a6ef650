"""Where prometheus_client keeps the metrics of a group of processes.

prometheus_client reads PROMETHEUS_MULTIPROC_DIR when it is imported, so this module never
imports it: `flatlay serve`, `api` and `worker` call `prepare_metrics_dir` first. Every
process of a group (the API, the worker child of `flatlay serve`, a worker's prefork
children) writes its series as files in the group's folder, and one `/metrics` sums them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs: it exists (ours or another user's) and is not a zombie
    (exited, waiting for its parent to reap it; Linux /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def prepare_metrics_dir(metrics_root: Path, role: str) -> Path:
    """Point this process (and its children) at a metrics folder and return it.

    A folder already named in the environment is kept as it is: the parent that made it (or
    the operator) owns it. Otherwise a fresh `<role>-<host>-<pid>` folder under
    `metrics_root` is made, and folders left by dead processes of this host are removed, so
    that counters of an earlier run never leak into this one.
    """
    inherited = os.environ.get(MULTIPROC_ENV)
    if inherited:
        Path(inherited).mkdir(parents=True, exist_ok=True)
        return Path(inherited)
    host = socket.gethostname()
    metrics_root.mkdir(parents=True, exist_ok=True)
    for old in metrics_root.glob(f"*-{host}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = metrics_root / f"{role}-{host}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder

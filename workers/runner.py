"""Start a Celery worker on the job queue (`flatlay worker`)."""

from __future__ import annotations

import os
from pathlib import Path


class WorkerStartError(Exception):
    """The worker cannot start as asked (the front door prints it as a usage error)."""


def worker_argv(concurrency: int, queues: str, pool: str, loglevel: str, embedded: bool) -> list:
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={queues}",
        f"--loglevel={loglevel.upper()}",
        "--without-gossip",
        "--without-mingle",
    ]
    if embedded:
        argv.append("--without-heartbeat")  # the file transport has no broadcast
    return argv


def run_worker(data_dir: Path | None, concurrency: int = 1, queues: str | None = None) -> int:
    if concurrency < 1:
        raise WorkerStartError(f"--concurrency must be at least 1, got {concurrency}")
    from service.runner import die_with_parent

    # Under `flatlay serve`: never outlive it (a restarted serve would find us unsupervised).
    die_with_parent()
    if data_dir is not None:
        # workers.app reads its settings at import: set the environment first.
        os.environ["FLATLAY_DATA_DIR"] = str(Path(data_dir).resolve())
    from service.multiproc import prepare_metrics_dir
    from service.settings import get_settings
    from service.store import migrate

    settings = get_settings()
    settings.ensure_dirs()
    # Before prometheus_client is imported: the pool's processes share one metrics folder
    # (under `flatlay serve`, the API's, inherited through the environment).
    prepare_metrics_dir(settings.metrics_dir, "worker")
    migrate(settings.resolved_database_url)

    from workers.app import app

    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        from service.metrics import process_registry

        try:
            start_http_server(settings.worker_metrics_port, registry=process_registry())
        except OSError as exc:
            raise WorkerStartError(
                f"cannot serve worker metrics on port {settings.worker_metrics_port}: {exc}"
            ) from None

    app.worker_main(
        worker_argv(
            concurrency,
            queues or f"{settings.queue_name},{settings.cpu_queue_name}",
            settings.worker_pool,
            settings.log_level,
            settings.embedded_broker,
        )
    )
    return 0

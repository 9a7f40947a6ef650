"""The Celery application's configuration, shared by the API (which only sends job ids)
and the workers (which also register the tasks). No task code and no torch here."""

from __future__ import annotations

import logging

from celery import Celery

from service.filequeue import TRANSPORT, is_message_of
from service.settings import Settings

log = logging.getLogger("flatlay.queue")

PROCESS_ASSET_TASK = "flatlay.process_asset"
DELIVER_WEBHOOK_TASK = "flatlay.deliver_webhook"
ADD_STRUCTURE_TASK = "flatlay.add_structure"

# How long a new prefork pool child may take to report alive before Celery kills it and
# starts another: it loads the models first, which takes far more than Celery's 4 s on a busy
# machine (a replacement child would be killed and respawned forever). Celery 5 passes this
# setting to the pool; asynpool.PROC_ALIVE_TIMEOUT is only the fallback without an app.
WORKER_PROC_ALIVE_TIMEOUT_S = 600.0


def celery_config(settings: Settings) -> dict:
    conf: dict = {
        "broker_url": settings.resolved_broker_url,
        "task_default_queue": settings.queue_name,
        "task_routes": {PROCESS_ASSET_TASK: {"queue": settings.queue_name},
                        DELIVER_WEBHOOK_TASK: {"queue": settings.cpu_queue_name}},
        # The job row holds the outcome; Celery results would be a second, weaker copy.
        "task_ignore_result": True,
        "result_backend": None,
        # Long GPU jobs: acknowledge after the work, give the message back if the worker dies,
        # and never hold more than the job in hand.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_proc_alive_timeout": WORKER_PROC_ALIVE_TIMEOUT_S,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if settings.embedded_broker:
        folder = str(settings.queue_dir)
        # kombu's file channel, but a message file appears only once it is whole.
        conf["broker_transport"] = TRANSPORT
        conf["broker_transport_options"] = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            # Exchange bindings; kombu's default is ./control, in whatever folder we run.
            "control_folder": str(settings.queue_dir / "control"),
            "store_processed": False,
            # The file transport polls its folder; its 1 s default adds ~1 s to every job.
            "polling_interval": 0.05,
        }
        # The file transport has no broadcast exchange for remote control or events.
        conf["worker_enable_remote_control"] = False
        conf["worker_send_task_events"] = False
    else:
        conf["broker_transport_options"] = {
            "visibility_timeout": settings.redis_visibility_timeout_s,
        }
    return conf


def make_celery(settings: Settings) -> Celery:
    app = Celery("flatlay", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def send_job(app: Celery, settings: Settings, job_id: str, *, countdown: float | None = None,
             headers: dict[str, str] | None = None) -> None:
    """Send asset job `job_id` to the workers (raises on broker errors). The task id is the
    job id, so that a cancel can revoke every message of the job without keeping ids."""
    app.send_task(PROCESS_ASSET_TASK, args=[job_id], task_id=job_id, headers=headers,
                  queue=settings.queue_name, countdown=countdown, retry=True,
                  retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5})


def revoke_job(app: Celery, settings: Settings, job_id: str, timeout_s: float = 2.0) -> bool:
    """Ask the workers to discard the job's messages still waiting (Celery's revoke, by the
    task id `send_job` gave it). Distributed mode only: the file transport has no broadcast.
    Best effort, and bounded: a worker that takes the message anyway finds the job not
    queued and skips it. False when nothing was sent."""
    if settings.embedded_broker:
        return False
    try:
        with app.connection_for_write() as conn:
            # Bounded here, because the broadcast itself retries a dead broker forever.
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            app.control.revoke(job_id, connection=conn)
    except Exception as exc:  # broker errors come in many types (kombu, redis, OS)
        log.warning("could not revoke job %s: %s", job_id, exc)
        return False
    return True


def send_webhook(app: Celery, settings: Settings, delivery_id: str,
                 countdown: float | None = None) -> bool:
    """Queue a delivery attempt on the CPU queue; False when the broker is down (the
    reconciler sends overdue deliveries again)."""
    try:
        app.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=settings.cpu_queue_name,
                      countdown=countdown, retry=True,
                      retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5})
    except Exception as exc:  # broker errors come in many types (kombu, redis, OS)
        log.warning("could not queue webhook delivery %s: %s", delivery_id, exc)
        return False
    return True


def ping_broker(app: Celery, settings: Settings, timeout_s: float = 2.0) -> None:
    """Raise when the broker cannot be reached."""
    if settings.embedded_broker:
        if not settings.queue_dir.is_dir():
            raise OSError(f"queue folder {settings.queue_dir} is missing")
        return
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout_s)


def broker_queue_depth(settings: Settings, timeout_s: float = 1.0) -> int | None:
    """Messages waiting in the broker for the job queue; None when the broker cannot tell.

    The job store's count of `queued` jobs is the number that matters (the broker may have
    dropped or duplicated messages); this one shows what the broker itself holds.
    """
    if settings.embedded_broker:
        # The file transport keeps one file per message.
        try:
            return sum(1 for p in settings.queue_dir.iterdir()
                       if is_message_of(p.name, settings.queue_name))
        except OSError:
            return None
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(
            settings.resolved_broker_url, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        try:
            return int(client.llen(settings.queue_name))  # kombu: one Redis list per queue
        except redis.RedisError:
            return None
        finally:
            client.close()
    return None

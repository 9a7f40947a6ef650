"""Prometheus metrics; every series is named `flatlay_…`.

Process metrics (requests, stage latencies, jobs processed, model load time) are recorded
where they happen. With PROMETHEUS_MULTIPROC_DIR set (see `service.multiproc`), each process
writes them to files and `process_registry()` sums the files of the whole group, so the
API's `/metrics` shows the embedded worker's series too. The job store's view (jobs by
state, queue depth, live workers) is read at scrape time by `JobStoreCollector`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.multiproc import MULTIPROC_ENV
from service.queue import broker_queue_depth
from service.rows import JOB_STATES

if TYPE_CHECKING:
    from service.settings import Settings
    from service.store import JobStore


class _Context(Protocol):
    """What the collector reads of a `service.context.ServiceContext` (named by shape:
    the context imports the rate limiter, which imports these metrics)."""

    store: JobStore
    settings: Settings

log = logging.getLogger("flatlay.metrics")

# Not prometheus_client's default registry: that one adds python_* and process_* series.
REGISTRY = CollectorRegistry()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
                  300)

HTTP_REQUESTS = Counter(
    "flatlay_http_requests", "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"], registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "flatlay_http_request_duration_seconds", "Seconds to answer an HTTP request",
    ["route", "method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "flatlay_stage_seconds", "Seconds a job spent in each stage (decode and encode included)",
    ["pipeline", "stage"], buckets=_STAGE_BUCKETS, registry=REGISTRY,
)
JOBS_PROCESSED = Counter(
    "flatlay_jobs_processed", "Jobs a worker finished, by pipeline and outcome "
    "(succeeded, failed, dropped when canceled while running, skipped when not queued)",
    ["pipeline", "status"], registry=REGISTRY,
)
MODEL_LOAD_SECONDS = Gauge(
    "flatlay_model_load_seconds", "Seconds the latest load of a pipeline's models took",
    ["pipeline"], multiprocess_mode="mostrecent", registry=REGISTRY,
)
RATE_LIMITER_UP = Gauge(
    "flatlay_rate_limiter_up", "1 while the shared rate limiter (Redis) answers, 0 during an "
    "outage (the lowest of the live API processes)",
    ["backend"], multiprocess_mode="livemin", registry=REGISTRY,
)
RATE_LIMITER_OUTAGES = Counter(
    "flatlay_rate_limiter_outages", "Times the shared rate limiter became unreachable",
    ["backend"], registry=REGISTRY,
)
RATE_LIMITER_UNCHECKED = Counter(
    "flatlay_rate_limiter_unchecked_requests", "Requests decided without the rate limiter "
    "during an outage: allowed or denied, as FLATLAY_RATE_LIMIT_ON_ERROR says",
    ["decision"], registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "flatlay_webhook_deliveries", "Webhook delivery attempts by event and outcome",
    ["event", "outcome"], registry=REGISTRY,
)


def process_registry() -> CollectorRegistry:
    """This process group's series: summed from the multiprocess files when enabled."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


class JobStoreCollector:
    """Jobs by state, queue depths and live workers, read when Prometheus scrapes."""

    def __init__(self, get_context: Callable[[], _Context]) -> None:
        self.get_context = get_context

    def collect(self) -> Iterator[Metric]:
        ctx = self.get_context()
        up = GaugeMetricFamily("flatlay_job_store_up", "1 when the job store answered this scrape")
        try:
            counts = ctx.store.count_by_status()
            live = len(ctx.store.live_workers(ctx.settings.worker_live_within_s))
        except Exception as exc:  # a scrape must answer even when the store is down
            log.warning("metrics: job store unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("flatlay_jobs", "Jobs in the job store by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "flatlay_queue_depth", "Jobs queued in the job store, waiting for a worker",
            value=counts.get("queued", 0),
        )
        yield GaugeMetricFamily(
            "flatlay_workers_live", "Worker processes with a recent heartbeat", value=live
        )
        depth = broker_queue_depth(ctx.settings)
        if depth is not None:
            broker = GaugeMetricFamily(
                "flatlay_broker_queue_depth", "Messages waiting in the broker's job queue",
                labels=["queue"],
            )
            broker.add_metric([ctx.settings.queue_name], depth)
            yield broker


def render(*extra: CollectorRegistry) -> bytes:
    """The exposition text of this process group plus `extra` registries."""
    return b"".join(generate_latest(r) for r in (process_registry(), *extra))

"""All settings of the service, in one pydantic-settings class (`FLATLAY_*` variables).

The embedded default needs nothing installed: SQLite for jobs, files for blobs and a
file-based Celery transport, all under one data directory. Distributed mode changes only
settings: a Redis broker URL, a PostgreSQL database URL, a shared blob directory.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from models.attributes import REVIEW_CONFIDENCE

if TYPE_CHECKING:
    from models.io import ImageLimits

DEFAULT_DATA_DIR = Path("flatlay-data")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLATLAY_", extra="ignore")

    # Where everything lives in embedded mode.
    data_dir: Path = DEFAULT_DATA_DIR
    # None: derived from data_dir (SQLite file, blob folder, file-based queue).
    database_url: str | None = None
    broker_url: str | None = None
    blob_dir: Path | None = None
    # s3://bucket/prefix: blobs in an S3-compatible store instead of blob_dir (credentials
    # from the AWS_* variables); the endpoint of a non-AWS server (MinIO…) and the region.
    blob_url: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Every route but health, readiness and metrics needs `Authorization: Bearer <key>`.
    # Off only on a loopback bind (the local demo): `check_auth_bind` refuses anything else.
    auth_enabled: bool = True
    # Tenants whose keys may add structures to the bank (`POST /structures`).
    admin_tenants: str = "admin"
    # The bank the service retrieves from and grows (default: <data_dir>/bank, created from
    # the shipped bank on first use).
    bank_dir: Path | None = None
    # Token bucket per API key: refill rate (requests/s; 0 turns limits off) and capacity.
    rate_limit_per_s: float = Field(default=20.0, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)
    # While the shared limiter (Redis) is unreachable: "deny" answers 503
    # `rate_limiter_unavailable`, "allow" serves requests unlimited. Default (None): deny
    # with API keys on, allow for the key-less loopback demo.
    rate_limit_on_error: Literal["allow", "deny"] | None = None
    # Finished jobs' blobs (input and result) are removed this long after they finish
    # (0: kept forever); the job row stays, its result answers 410 `asset_expired`.
    result_retention_s: float = Field(default=7 * 86400.0, ge=0)

    # Ingest limits.
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_pixels: int = Field(default=50_000_000, ge=1)
    min_image_side: int = Field(default=32, ge=1)
    # Uploads held in memory (bytes and decode) at once by one API process; the rest wait.
    ingest_concurrency: int = Field(default=4, ge=1)
    # Batches: items per batch, bytes of one request (files or a ZIP), of a manifest.
    batch_max_items: int = Field(default=1000, ge=1)
    max_batch_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_manifest_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    # Request bodies at the edge (service.body_guard): every other route's (JSON) bound; a
    # body must be complete within body_timeout_s plus one second per body_min_rate bytes
    # received (slower: 408); idle keep-alive connections close after keep_alive_timeout_s.
    max_json_bytes: int = Field(default=5 * 1024 * 1024, ge=1)
    body_timeout_s: float = Field(default=30.0, gt=0)
    body_min_rate: float = Field(default=50_000.0, gt=0)
    keep_alive_timeout_s: int = Field(default=5, ge=1)
    # Fetching manifest images and delivering webhooks: per-request time, redirects, and the
    # hosts or networks (comma-separated names, addresses, CIDRs) that may be private.
    fetch_timeout_s: float = Field(default=15.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0)
    fetch_allow_hosts: str = ""
    # Webhooks: attempts per event, first retry delay (doubling each time, at most an hour),
    # and the signing secret of the key-less local mode ("whsec_…"; without it, a webhook
    # URL needs an API key, whose secret signs its events).
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=5.0, gt=0)
    local_webhook_secret: str = ""

    default_pipeline: str = "ragdiffusion"
    # A succeeded job whose category confidence is below this says `review_suggested: true`
    # (status and webhook), so catalog tooling can route it to a person.
    review_confidence: float = Field(default=REVIEW_CONFIDENCE, ge=0, le=1)

    # Queue behaviour for long GPU jobs.
    queue_name: str = "flatlay.gpu"
    # Light work (webhook deliveries) goes to its own queue; `flatlay serve`'s worker and a
    # default `flatlay worker` consume both.
    cpu_queue_name: str = "flatlay.cpu"
    task_soft_time_limit_s: int = Field(default=300, ge=1)
    task_time_limit_s: int = Field(default=360, ge=1)
    worker_pool: Literal["prefork", "solo", "threads"] = "prefork"
    # Pipelines a worker loads at start-up ("all" or a comma-separated list).
    preload_pipelines: str = "all"
    # More pipelines to register, "name=module:factory,…", in the API (to validate names)
    # and the workers alike. The fault-injection tests register theirs from tests/pipelines.py.
    extra_pipelines: str = ""

    # Reconciler: the job row is the truth, the broker only delivers.
    reconcile_interval_s: float = Field(default=15.0, gt=0)
    requeue_queued_after_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # An attempt that the blob store failed (disk full, S3 5xx) is sent again after this many
    # seconds, doubling per attempt (at most a minute), until max_attempts.
    storage_retry_s: float = Field(default=5.0, gt=0)

    log_level: str = "info"
    # One JSON object per line (ts, level, logger, message, request_id, job_id) or plain text.
    log_format: Literal["json", "text"] = "json"

    # A worker records itself in the job store every this many seconds; `flatlay status`
    # counts it live while its last record is younger than three intervals.
    worker_heartbeat_s: float = Field(default=10.0, gt=0)
    # Distributed mode: a worker serves its own Prometheus /metrics on this port (0: off).
    # In embedded mode the API's /metrics already includes the worker's series.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("task_time_limit_s")
    @classmethod
    def _hard_above_soft(cls, v: int, info) -> int:  # noqa: ANN001
        soft = info.data.get("task_soft_time_limit_s")
        if soft is not None and v <= soft:
            raise ValueError("task_time_limit_s must be above task_soft_time_limit_s")
        return v

    # Derived values -------------------------------------------------------------------------

    def fetch_limits(self):  # noqa: ANN201 (service.fetch imports httpx; lazily)
        from service.fetch import AllowList, FetchLimits

        return FetchLimits(self.max_upload_bytes, self.fetch_timeout_s, self.fetch_max_redirects,
                           AllowList.parse(self.fetch_allow_hosts))

    def image_limits(self) -> ImageLimits:
        """What a photo may be (bytes, pixels, shortest side), for uploads and fetches."""
        from models.io import ImageLimits  # Pillow and numpy: only where photos are read

        return ImageLimits(self.max_upload_bytes, self.max_pixels, self.min_image_side)

    @property
    def extra_pipeline_targets(self) -> dict[str, str]:
        """`extra_pipelines` parsed: name → "module:factory"."""
        targets = {}
        for item in filter(None, (i.strip() for i in self.extra_pipelines.split(","))):
            name, sep, target = item.partition("=")
            if not sep or ":" not in target or not name.strip():
                raise ValueError(f"extra_pipelines: {item!r} is not name=module:factory")
            targets[name.strip()] = target.strip()
        return targets

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'jobs.sqlite3').resolve()}"

    @property
    def resolved_rate_limit_on_error(self) -> Literal["allow", "deny"]:
        if self.rate_limit_on_error is not None:
            return self.rate_limit_on_error
        return "deny" if self.auth_enabled else "allow"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").resolve()

    @property
    def resolved_bank_dir(self) -> Path:
        return (self.bank_dir or self.data_dir / "bank").resolve()

    @property
    def queue_dir(self) -> Path:
        """The file-based transport's message folder (embedded mode only)."""
        return (self.data_dir / "queue").resolve()

    @property
    def embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def running_stale_after_s(self) -> float:
        """A job `running` longer than the hard limit plus a grace period lost its worker."""
        return float(self.task_time_limit_s + 60)

    @property
    def redis_visibility_timeout_s(self) -> int:
        # Above the hard limit, or Redis would hand a still-running job to a second worker.
        return self.task_time_limit_s + 120

    @property
    def metrics_dir(self) -> Path:
        """Parent of the prometheus_client multiprocess folders (one per process group)."""
        return (self.data_dir / "metrics").resolve()

    @property
    def worker_live_within_s(self) -> float:
        return 3 * self.worker_heartbeat_s

    @property
    def redacted_database_url(self) -> str:
        return make_url(self.resolved_database_url).render_as_string(hide_password=True)

    def check_auth_bind(self) -> None:
        """Raise ValueError when authentication is off on an address others can reach."""
        if not self.auth_enabled and not is_loopback_host(self.host):
            raise ValueError(
                f"FLATLAY_AUTH_ENABLED=false is allowed only on a loopback address, not on "
                f"{self.host!r}: bind to 127.0.0.1, or create keys with `flatlay keys create`"
            )

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.resolved_blob_dir.mkdir(parents=True, exist_ok=True)
        if self.embedded_broker:
            self.queue_dir.mkdir(parents=True, exist_ok=True)


def get_settings(data_dir: Path | None = None, **overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) winning."""
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    return Settings(**{k: v for k, v in overrides.items() if v is not None})

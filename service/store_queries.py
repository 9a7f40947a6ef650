"""The job store's queries on API keys, batches and webhook deliveries.

Each class is one family of queries, mixed into service.store.JobStore, which provides the
sessions (and the idempotent insert that jobs and batches share).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from sqlalchemy import and_, exists, select, update
from sqlalchemy.orm import Session

from service.rows import (
    ApiKeyRow,
    ApiKeyView,
    Base,
    BatchRow,
    BatchView,
    DeliveryView,
    Idempotency,
    Job,
    JobView,
    WebhookDeliveryRow,
    normalise,
    utcnow,
)

# The rows that belong to a tenant.
Owned = TypeVar("Owned", Job, BatchRow, WebhookDeliveryRow)


class _Queries:
    """What the store provides to each family of queries."""

    def _session(self) -> Session:
        raise NotImplementedError

    @staticmethod
    def _owned_row(s: Session, model: type[Owned], row_id: str,
                   tenant_id: str | None) -> Owned | None:
        """The row, or None; with `tenant_id`, None also when it belongs to another tenant."""
        row = s.get(model, row_id)
        if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
            return None
        return row

    def _insert_with_idempotency(
        self, rows: list[Base], tenant_id: str, idempotency: Idempotency | None,
        resource: str, resource_id: str,
    ) -> None:
        raise NotImplementedError


class ApiKeyQueries(_Queries):
    """API keys: created, found by hash, listed and revoked."""

    def create_api_key(
        self, *, key_id: str, prefix: str, key_hash: str, tenant_id: str, name: str | None,
        webhook_url: str | None, webhook_secret: str,
    ) -> ApiKeyView:
        row = ApiKeyRow(id=key_id, prefix=prefix, key_hash=key_hash, tenant_id=tenant_id,
                        name=name, webhook_url=webhook_url, webhook_secret=webhook_secret,
                        created_at=utcnow())
        with self._session() as s, s.begin():
            s.add(row)
        return ApiKeyView.of(row)

    def api_key_by_hash(self, key_hash: str) -> ApiKeyView | None:
        """The key with this hash while it is not revoked."""
        with self._session() as s:
            row = s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash,
                                                    ApiKeyRow.revoked_at.is_(None))).first()
            return ApiKeyView.of(row) if row is not None else None

    def get_api_key(self, key_id: str) -> ApiKeyView | None:
        with self._session() as s:
            row = s.get(ApiKeyRow, key_id)
            return ApiKeyView.of(row) if row is not None else None

    def list_api_keys(self, tenant_id: str | None = None) -> list[ApiKeyView]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if tenant_id is not None:
            query = query.where(ApiKeyRow.tenant_id == tenant_id)
        with self._session() as s:
            return [ApiKeyView.of(r) for r in s.scalars(query).all()]

    def revoke_api_key(self, key_id_or_prefix: str) -> ApiKeyView | None:
        """Revoke the key with this id or visible prefix; None when no live key matches."""
        with self._session() as s, s.begin():
            rows = s.scalars(select(ApiKeyRow).where(
                (ApiKeyRow.id == key_id_or_prefix) | (ApiKeyRow.prefix == key_id_or_prefix),
                ApiKeyRow.revoked_at.is_(None),
            )).all()
            if len(rows) != 1:
                return None
            rows[0].revoked_at = utcnow()
            return ApiKeyView.of(rows[0])

class BatchQueries(_Queries):
    """Batches: created with all their jobs at once, read, and completed when done."""

    def create_batch(
        self, *, batch_id: str, tenant_id: str, source: str, options: dict[str, Any],
        rejected: list[dict[str, Any]], webhook_url: str | None, jobs: list[Job],
        idempotency: Idempotency | None = None, key_id: str | None = None,
    ) -> BatchView:
        """The batch and all its jobs in one transaction (none are lost half-way)."""
        batch = BatchRow(id=batch_id, tenant_id=tenant_id, source=source, options=options,
                         rejected=rejected, webhook_url=webhook_url, key_id=key_id,
                         created_at=utcnow(),
                         completed_at=None if jobs else utcnow())
        self._insert_with_idempotency([batch, *jobs], tenant_id, idempotency, "batch",
                                      batch_id)
        return self.get_batch(batch_id)  # type: ignore[return-value]

    def get_batch(self, batch_id: str, tenant_id: str | None = None) -> BatchView | None:
        with self._session() as s:
            row = self._owned_row(s, BatchRow, batch_id, tenant_id)
            return None if row is None else BatchView.of(row)

    def batch_jobs(self, batch_id: str) -> list[JobView]:
        with self._session() as s:
            rows = s.scalars(select(Job).where(Job.batch_id == batch_id)
                             .order_by(Job.created_at, Job.id)).all()
            return [normalise(JobView.of(j)) for j in rows]

    def complete_batch_if_done(self, batch_id: str) -> bool:
        """Mark the batch completed once none of its jobs is queued or running; True only
        for the one caller that completed it (it sends `batch.completed`)."""
        active = select(Job.id).where(Job.batch_id == batch_id,
                                      Job.status.in_(("queued", "running"))).exists()
        with self._session() as s, s.begin():
            return s.execute(
                update(BatchRow).where(BatchRow.id == batch_id, BatchRow.completed_at.is_(None),
                                       ~active).values(completed_at=utcnow())
            ).rowcount == 1

    def open_batches(self, limit: int = 500) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(BatchRow.id).where(BatchRow.completed_at.is_(None))
                                  .limit(limit)).all())

class DeliveryQueries(_Queries):
    """Webhook deliveries: one event for one URL, and every attempt to deliver it."""

    def add_delivery(
        self, *, delivery_id: str, tenant_id: str, key_id: str | None, event: str, url: str,
        payload: dict[str, Any], asset_id: str | None = None, batch_id: str | None = None,
    ) -> DeliveryView:
        row = WebhookDeliveryRow(id=delivery_id, tenant_id=tenant_id, key_id=key_id,
                                 event=event, url=url, payload=payload, asset_id=asset_id,
                                 batch_id=batch_id, status="pending", attempts=[],
                                 next_attempt_at=utcnow(), created_at=utcnow())
        with self._session() as s, s.begin():
            s.add(row)
        return DeliveryView.of(row)

    def get_delivery(self, delivery_id: str, tenant_id: str | None = None) -> DeliveryView | None:
        with self._session() as s:
            row = self._owned_row(s, WebhookDeliveryRow, delivery_id, tenant_id)
            return None if row is None else DeliveryView.of(row)

    def list_deliveries(
        self, tenant_id: str, asset_id: str | None = None, batch_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryView]:
        query = select(WebhookDeliveryRow).where(WebhookDeliveryRow.tenant_id == tenant_id)
        if asset_id is not None:
            query = query.where(WebhookDeliveryRow.asset_id == asset_id)
        if batch_id is not None:
            query = query.where(WebhookDeliveryRow.batch_id == batch_id)
        query = query.order_by(WebhookDeliveryRow.created_at.desc()).limit(limit)
        with self._session() as s:
            return [DeliveryView.of(r) for r in s.scalars(query).all()]

    def record_attempt(
        self, delivery_id: str, attempt: dict[str, Any], status: str,
        next_attempt_at: dt.datetime | None,
    ) -> None:
        """Append an attempt; status pending (retry at next_attempt_at), succeeded or failed."""
        with self._session() as s, s.begin():
            row = s.get(WebhookDeliveryRow, delivery_id, with_for_update=True)
            if row is None or row.status != "pending":
                return
            row.attempts = [*row.attempts, attempt]
            row.status = status
            row.next_attempt_at = next_attempt_at
            if status != "pending":
                row.finished_at = utcnow()

    def overdue_deliveries(self, late_by_s: float, limit: int = 500) -> list[str]:
        """Pending deliveries whose retry is long overdue (its message was lost)."""
        cutoff = utcnow() - dt.timedelta(seconds=late_by_s)
        with self._session() as s:
            return list(s.scalars(
                select(WebhookDeliveryRow.id).where(WebhookDeliveryRow.status == "pending",
                                                    WebhookDeliveryRow.next_attempt_at < cutoff)
                .limit(limit)).all())

    def ended_without_event(self, grace_s: float, window_s: float,
                            limit: int = 500) -> list[str]:
        """Jobs with a webhook that ended between `window_s` and `grace_s` ago and have no
        delivery of their `asset.<status>` event: their worker died (or the job store went
        away) between recording the end and recording the event."""
        now = utcnow()
        event = WebhookDeliveryRow.event == "asset." + Job.status
        has_event = exists().where(and_(WebhookDeliveryRow.asset_id == Job.id, event))
        with self._session() as s:
            return list(s.scalars(
                select(Job.id).where(Job.status.in_(("succeeded", "failed")),
                                     Job.webhook_url.is_not(None),
                                     Job.finished_at < now - dt.timedelta(seconds=grace_s),
                                     Job.finished_at > now - dt.timedelta(seconds=window_s),
                                     ~has_event).limit(limit)).all())

    def touch_delivery(self, delivery_id: str) -> None:
        with self._session() as s, s.begin():
            s.execute(update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery_id)
                      .values(next_attempt_at=utcnow()))

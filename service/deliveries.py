"""`/webhooks/deliveries`: what was sent to the caller's webhook URLs and how each attempt
went (the sending itself is service.webhooks)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import MAX_ID_CHARS, Ctx, Key, owned
from service.errors import error_responses
from service.rows import DeliveryView
from service.schemas import DeliveryAttempt, WebhookDelivery, WebhookDeliveryList

router = APIRouter()


def _delivery(d: DeliveryView) -> WebhookDelivery:
    return WebhookDelivery(
        id=d.id, event=d.event, url=d.url, status=d.status,  # type: ignore[arg-type]
        asset_id=d.asset_id, batch_id=d.batch_id,
        attempts=[DeliveryAttempt(**a) for a in d.attempts], next_attempt_at=d.next_attempt_at,
        created_at=d.created_at, finished_at=d.finished_at, payload=d.payload,
    )


@router.get(
    "/webhooks/deliveries",
    response_model=WebhookDeliveryList,
    summary="Webhook deliveries and their attempts (newest first, at most 100)",
    responses=error_responses("unauthorized", "validation_error", "rate_limited"),
)
def list_deliveries(
    ctx: Ctx, key: Key,
    asset_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    batch_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
) -> WebhookDeliveryList:
    found = ctx.store.list_deliveries(key.tenant_id, asset_id=asset_id, batch_id=batch_id)
    return WebhookDeliveryList(deliveries=[_delivery(d) for d in found])


@router.get(
    "/webhooks/deliveries/{delivery_id}",
    response_model=WebhookDelivery,
    summary="One webhook delivery and its attempts",
    responses=error_responses("unauthorized", "delivery_not_found", "rate_limited"),
)
def get_delivery(delivery_id: str, ctx: Ctx, key: Key) -> WebhookDelivery:
    return _delivery(owned(ctx.store.get_delivery, delivery_id, key, "delivery_not_found",
                           "webhook delivery"))

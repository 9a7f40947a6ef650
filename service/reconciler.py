"""The reconciler: the job store is the truth, the broker only a delivery mechanism.

A broker can drop a message (the file transport does when the worker holding it is
killed; Redis redelivers only after its visibility timeout). So, periodically:
- a job `running` past the hard time limit, or whose worker's heartbeat stopped (killed),
  lost its worker: back to `queued` and sent again, or `failed` with `worker_crashed` once
  it has used up its attempts;
- a job `queued` whose last send is old is sent again. Duplicates are harmless: a worker
  takes a job only by the conditional queued → running update;
- a job that ended with a webhook but without its `asset.*` event (its worker died between
  the two writes) gets the event, after the same grace period;
- a finished job past the retention period loses its blobs, side outputs and temp files
  included (the row stays, `expired_at`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from service.context import ServiceContext
from service.outputs import delete_job_blobs, discard_leftovers
from service.webhooks import complete_batch, job_ended

log = logging.getLogger("flatlay.reconciler")
# How far back a missing asset event is looked for (older jobs predate the sweep).
EVENT_WINDOW_S = 7 * 24 * 3600.0


@dataclass
class ReconcileReport:
    requeued_running: int = 0
    failed_crashed: int = 0
    resent_queued: int = 0
    expired: int = 0
    batches_completed: int = 0
    resent_webhooks: int = 0
    recovered_events: int = 0


def reconcile_once(ctx: ServiceContext) -> ReconcileReport:
    report = ReconcileReport()
    settings = ctx.settings
    stuck = set(ctx.store.stale_running(settings.running_stale_after_s))
    stuck |= set(ctx.store.orphaned_running(settings.worker_live_within_s))
    for job_id in sorted(stuck):
        outcome = ctx.store.release(job_id, settings.max_attempts)
        if outcome == "queued":
            report.requeued_running += 1
            ctx.enqueue(job_id)
        elif outcome == "failed":
            report.failed_crashed += 1
            job_ended(ctx.store, ctx.send_webhook, job_id, ctx.settings.review_confidence)
            # Failed for good: what its killed attempts wrote is no output of anything.
            if (job := ctx.store.get(job_id)) is not None:
                discard_leftovers(ctx.blobs, job)
    for job_id in ctx.store.stale_queued(settings.requeue_queued_after_s):
        if ctx.enqueue(job_id):
            report.resent_queued += 1
    for batch_id in ctx.store.open_batches():
        # Jobs that ended outside a worker (canceled, deleted, crashed) complete theirs here.
        if complete_batch(ctx.store, ctx.send_webhook, batch_id):
            report.batches_completed += 1
    # An event never recorded (the worker died between the job's end and its event) is made
    # now: after a grace period, so a worker still on its way does not send it twice.
    for job_id in ctx.store.ended_without_event(settings.requeue_queued_after_s,
                                                EVENT_WINDOW_S):
        job_ended(ctx.store, ctx.send_webhook, job_id, ctx.settings.review_confidence)
        report.recovered_events += 1
    # A retry whose message was lost (a worker holding it died) is sent again.
    for delivery_id in ctx.store.overdue_deliveries(settings.requeue_queued_after_s):
        ctx.store.touch_delivery(delivery_id)
        ctx.send_webhook(delivery_id)
        report.resent_webhooks += 1
    if settings.result_retention_s > 0:
        for job in ctx.store.expirable(settings.result_retention_s):
            delete_job_blobs(ctx.blobs, job)
            ctx.store.mark_expired(job.id)
            report.expired += 1
    if report != ReconcileReport():
        log.info("reconciled: %s", report)
    return report


async def reconcile_forever(ctx: ServiceContext) -> None:
    while True:
        try:
            await asyncio.to_thread(reconcile_once, ctx)
        except Exception:  # a store outage must not kill the loop
            log.exception("reconcile pass failed")
        await asyncio.sleep(ctx.settings.reconcile_interval_s)

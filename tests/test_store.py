"""The job store on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import inspect, update

from service.store import Job, JobStore, downgrade, migrate, new_job_id


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(database_url: str) -> JobStore:
    migrate(database_url)
    s = JobStore(database_url)
    yield s
    s.dispose()


def _job(store: JobStore) -> str:
    job_id = new_job_id()
    store.create_job(
        job_id=job_id,
        pipeline="cutout",
        options={"output_size": 512, "background": "#ffffff", "format": "png", "seed": None},
        input_blob=f"assets/{job_id}/input.jpg",
        input_meta={"filename": "a.jpg", "content_type": "image/jpeg", "width": 10,
                    "height": 10, "bytes": 100},
    )
    return job_id


def test_migrations_go_up_and_down(database_url: str) -> None:
    migrate(database_url)
    s = JobStore(database_url)
    assert "jobs" in inspect(s.engine).get_table_names()
    downgrade(database_url, "base")
    assert "jobs" not in inspect(s.engine).get_table_names()
    migrate(database_url)
    assert "jobs" in inspect(s.engine).get_table_names()
    s.dispose()


def test_life_of_a_job(store: JobStore) -> None:
    job_id = _job(store)
    job = store.get(job_id)
    assert job.status == "queued" and job.attempts == 0 and job.created_at.tzinfo is not None
    claimed = store.claim(job_id, "w1")
    assert claimed.status == "running" and claimed.attempts == 1 and claimed.worker == "w1"
    store.set_progress(job_id, "parse", 40)
    assert (store.get(job_id).stage, store.get(job_id).percent) == ("parse", 40)
    assert store.succeed(job_id, result_blob="r.png", content_type="image/png",
                         timings={"parse": 0.1})
    done = store.get(job_id)
    assert done.status == "succeeded" and done.percent == 100 and done.finished_at
    assert done.timings == {"parse": 0.1}
    assert store.count_by_status()["succeeded"] == 1


def test_a_job_is_taken_once(store: JobStore) -> None:
    job_id = _job(store)
    assert store.claim(job_id, "w1") is not None
    assert store.claim(job_id, "w2") is None  # duplicate delivery
    assert store.succeed(job_id, result_blob="r", content_type="image/png", timings={})
    assert store.claim(job_id, "w3") is None  # finished jobs never come back


def test_canceled_job_cannot_succeed(store: JobStore) -> None:
    job_id = _job(store)
    store.claim(job_id, "w1")
    assert store.cancel(job_id)
    assert not store.succeed(job_id, result_blob="r", content_type="image/png", timings={})
    assert store.get(job_id).status == "canceled"
    assert not store.cancel(job_id)


def test_failures_keep_their_code(store: JobStore) -> None:
    job_id = _job(store)
    store.claim(job_id, "w1")
    assert store.fail(job_id, code="corrupt_image", message="truncated")
    job = store.get(job_id)
    assert (job.status, job.error_code, job.error_message) == ("failed", "corrupt_image",
                                                               "truncated")


def test_stale_running_jobs_are_released_then_failed(store: JobStore) -> None:
    job_id = _job(store)
    store.claim(job_id, "w1")
    assert store.stale_running(60) == []
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with store._session() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(started_at=old))
    assert store.stale_running(60) == [job_id]
    assert store.release(job_id, max_attempts=2) == "queued"
    assert store.get(job_id).status == "queued"
    store.claim(job_id, "w2")  # attempt 2
    assert store.release(job_id, max_attempts=2) == "failed"
    job = store.get(job_id)
    assert job.status == "failed" and job.error_code == "worker_crashed"


def test_stale_queued_jobs_are_found(store: JobStore) -> None:
    job_id = _job(store)
    assert store.stale_queued(60) == []
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with store._session() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(created_at=old))
    assert store.stale_queued(60) == [job_id]
    store.mark_enqueued(job_id)  # just sent again: not stale any more
    assert store.stale_queued(60) == []


def test_worker_heartbeats(store: JobStore) -> None:
    store.heartbeat("h:1", hostname="h", pid=1, pipelines=["cutout"], current_job=None)
    first = store.live_workers(within_s=30)
    assert [(w.name, w.pipelines, w.current_job) for w in first] == [("h:1", ["cutout"], None)]
    store.heartbeat("h:1", hostname="h", pid=1, pipelines=["cutout"], current_job="j")
    (again,) = store.live_workers(within_s=30)
    assert again.current_job == "j" and again.started_at == first[0].started_at
    assert again.last_seen_at >= first[0].last_seen_at and again.last_seen_at.tzinfo
    assert store.live_workers(within_s=0) == []  # none seen in the last instant
    assert store.prune_workers(older_than_s=3600) == 0
    store.forget_worker("h:1")
    assert store.live_workers(within_s=30) == []


def test_an_idempotency_key_makes_one_job(store: JobStore) -> None:
    from service.store import Idempotency, IdempotencyConflict

    first = new_job_id()
    common = {"pipeline": "cutout", "options": {}, "input_blob": "b", "input_meta": {}}
    store.create_job(job_id=first, tenant_id="t", idempotency=Idempotency("k", "f1"), **common)
    with pytest.raises(IdempotencyConflict) as conflict:
        store.create_job(job_id=new_job_id(), tenant_id="t",
                         idempotency=Idempotency("k", "f2"), **common)
    assert conflict.value.existing.resource_id == first
    assert sum(store.count_by_status().values()) == 1
    # The same key of another tenant is another key.
    store.create_job(job_id=new_job_id(), tenant_id="u", idempotency=Idempotency("k", "f1"),
                     **common)
    assert sum(store.count_by_status().values()) == 2

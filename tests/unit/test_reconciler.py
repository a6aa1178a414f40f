"""The reconciler's rules on fakeredis, with sends read back from kombu's in-memory broker.

The real thing (workers SIGKILLed, Redis restarted) is in tests/integration/test_chaos.py;
here each rule is checked on records placed by hand, including the ones it must leave alone.
"""
from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from unit_helpers import drain, memory_app

from settings import Settings
from tasks import keys, lease, reconciler
from tasks.callbacks import CALLBACK_TASK
from tasks.celery_app import WEBHOOK_QUEUE
from tasks.job import Job, now
from tasks.runtime import Runtime
from tasks.status import JobStatus

LEASE = 30


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0", lease_seconds=LEASE, retry_jitter=False))
    runtime.redis = fakeredis.FakeRedis()
    runtime.celery = memory_app("test-reconciler")
    drain(runtime.celery)
    return runtime


def make_job(rt: Runtime, status: JobStatus, age: float, job_id: str, **fields: Any) -> Job:
    created = now() - age
    job = Job(id=job_id, text="Hello.", voice="heart", status=status, created_at=created, queued_at=created,
              task_id=f"{job_id}-t1", **fields)
    rt.jobs.create(job)
    return job


def test_a_running_job_whose_lease_expired_is_sent_again_with_a_worker_lost_entry(rt):
    job = make_job(rt, JobStatus.RUNNING, 60, "lost", attempts=1, worker="dead-host")
    report = reconciler.sweep(rt)
    assert report.lost == ["lost"]
    stored = rt.jobs.get(job.id)
    assert stored.status is JobStatus.QUEUED and stored.task_id != "lost-t1"
    (message,) = drain(rt.celery)
    assert message["id"] == stored.task_id and message["args"] == ["lost"]
    (entry,) = rt.jobs.history(job.id)
    assert entry["outcome"] == "worker_lost" and entry["attempt"] == 1 and entry["worker"] == "dead-host"


def test_a_running_job_with_a_live_lease_or_fanned_out_is_left_alone(rt):
    live = make_job(rt, JobStatus.RUNNING, 60, "live", attempts=1)
    rt.redis.set(keys.lease(live.id), lease.LeaseHolder("live-t1", "h", 1).value(), px=LEASE * 1000)
    make_job(rt, JobStatus.RUNNING, 60, "fanned", attempts=1, extra={"fanout": {"parts": 3, "chunks": 9}})
    report = reconciler.sweep(rt)
    assert report.sent_again == 0 and drain(rt.celery) == []
    assert rt.jobs.status("live") is JobStatus.RUNNING and rt.jobs.status("fanned") is JobStatus.RUNNING


def test_an_overdue_retry_is_sent_again_and_a_pending_one_is_not(rt):
    make_job(rt, JobStatus.QUEUED, 120, "overdue", next_retry_at=now() - LEASE - 5)
    make_job(rt, JobStatus.QUEUED, 120, "waiting", next_retry_at=now() + 3)
    report = reconciler.sweep(rt)
    assert report.overdue == ["overdue"]
    assert [m["args"] for m in drain(rt.celery)] == [["overdue"]]
    assert rt.jobs.get("waiting").task_id == "waiting-t1"


def test_a_queued_job_without_a_message_is_sent_again_on_the_second_sweep_only(rt):
    job = make_job(rt, JobStatus.QUEUED, LEASE + 10, "unsent")
    first = reconciler.sweep(rt)
    assert first.unsent == [] and drain(rt.celery) == []  # a suspect, not yet a verdict
    assert rt.redis.hget(keys.RECONCILE_SUSPECTS, job.id) == b"unsent-t1"
    second = reconciler.sweep(rt)
    assert second.unsent == ["unsent"]
    stored = rt.jobs.get(job.id)
    assert [m["id"] for m in drain(rt.celery)] == [stored.task_id]
    assert rt.redis.hget(keys.RECONCILE_SUSPECTS, job.id) is None


def test_a_queued_job_whose_message_waits_in_the_queue_is_not_a_suspect(rt):
    job = make_job(rt, JobStatus.QUEUED, LEASE + 10, "waiting")
    rt.redis.lpush("synthesis", json.dumps({"headers": {"id": job.task_id}, "body": ""}))
    for _ in range(2):
        assert reconciler.sweep(rt).sent_again == 0
    assert drain(rt.celery) == []


def test_a_young_queued_job_is_not_a_suspect(rt):
    make_job(rt, JobStatus.QUEUED, 1, "young")
    for _ in range(2):
        assert reconciler.sweep(rt).sent_again == 0


def test_a_job_picked_up_between_two_sweeps_is_not_sent_again(rt):
    job = make_job(rt, JobStatus.QUEUED, LEASE + 10, "picked")
    reconciler.sweep(rt)  # suspect: its message is being handed to a worker right now
    rt.jobs.transition(job.id, {JobStatus.QUEUED}, status=JobStatus.RUNNING)
    rt.redis.set(keys.lease(job.id), "picked-t1|h|1", px=LEASE * 1000)
    assert reconciler.sweep(rt).sent_again == 0
    assert drain(rt.celery) == []


def test_finished_and_expired_jobs_leave_the_index(rt):
    job = make_job(rt, JobStatus.QUEUED, 5, "done")
    rt.jobs.transition(job.id, {JobStatus.QUEUED}, status=JobStatus.SUCCEEDED)
    assert rt.redis.zscore(keys.ACTIVE_JOBS, job.id) is None  # the final transition took it out
    make_job(rt, JobStatus.QUEUED, 5, "expired")
    rt.redis.delete(keys.job("expired"))  # what the TTL does
    report = reconciler.sweep(rt)
    assert report.forgotten == 1 and rt.redis.zcard(keys.ACTIVE_JOBS) == 0


def test_only_one_worker_sweeps_per_interval(rt):
    make_job(rt, JobStatus.RUNNING, 60, "lost", attempts=1)
    assert reconciler.sweep_if_due(rt, "worker-a") is not None
    assert reconciler.sweep_if_due(rt, "worker-b") is None
    assert rt.redis.get(keys.RECONCILE_LOCK) == b"worker-a"


def test_a_sweep_queues_the_callbacks_a_dead_process_left_in_the_outbox(rt):
    for job_id in ("owed", "young"):
        make_job(rt, JobStatus.SUCCEEDED, 120, job_id, finished_at=now() - 60, callback_url="https://hooks.example/")
    rt.redis.zadd(keys.CALLBACK_OUTBOX, {"owed": now() - LEASE - 1, "young": now() - 1})  # young: its hook may be at it
    reconciler.sweep(rt)
    (message,) = [m for m in drain(rt.celery, WEBHOOK_QUEUE) if m["task"] == CALLBACK_TASK]
    assert message["args"][0]["id"] == "owed"
    assert rt.redis.zrange(keys.CALLBACK_OUTBOX, 0, -1) == [b"young"]

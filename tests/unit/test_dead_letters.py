"""The RabbitMQ dead-letter consumer's decisions on fakeredis (``tasks.dead_letters.handle_dead_letter``).

The real path (RabbitMQ dead-lettering a message past its delivery limit, a worker consuming
it) is in tests/integration/test_rabbitmq.py; here each case is a message built by hand,
including the ones that must change nothing.
"""
from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from unit_helpers import drain, memory_app

from settings import Settings
from tasks import keys
from tasks.dead_letters import ERROR_TYPE, handle_dead_letter
from tasks.job import Job, now
from tasks.runtime import Runtime
from tasks.status import JobStatus


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0", retry_jitter=False, max_attempts=3))
    runtime.redis = fakeredis.FakeRedis()
    runtime.celery = memory_app("test-dead-letters")
    drain(runtime.celery)
    return runtime


def make_job(rt: Runtime, job_id: str, status: JobStatus = JobStatus.QUEUED, attempts: int = 0) -> Job:
    job = Job(id=job_id, text="Hello.", voice="heart", status=status, created_at=now(), queued_at=now(),
              task_id=f"{job_id}-t1", attempts=attempts, max_attempts=3)
    rt.jobs.create(job)
    return job


def dead(task_id: str, job_id: str, task: str = "tts.synthesize", extra: list[Any] | None = None) -> tuple[dict, list]:
    headers = {"task": task, "id": task_id, "x-delivery-count": 15,
               "x-death": [{"reason": "delivery_limit", "queue": "synthesis", "count": 1}]}
    return headers, [[job_id, *(extra or [])], {}, {}]


def test_attempts_left_count_one_lost_attempt_and_send_the_job_again(rt):
    make_job(rt, "j1", attempts=1)
    assert handle_dead_letter(rt, *dead("j1-t1", "j1")) == "sent_again"
    job = rt.jobs.get("j1")
    assert job.status is JobStatus.QUEUED and job.attempts == 2 and job.task_id != "j1-t1"
    sent = drain(rt.celery)
    assert [m["id"] for m in sent] == [job.task_id] and sent[0]["args"] == ["j1"]
    (entry,) = rt.jobs.history("j1")
    assert entry["outcome"] == "worker_lost" and entry["attempt"] == 2 and "delivery_limit" in entry["error"]
    assert len(rt.dlq) == 0


def test_the_last_attempt_fails_the_job_through_the_one_failure_path(rt, alerts):
    make_job(rt, "j2", attempts=2)
    assert handle_dead_letter(rt, *dead("j2-t1", "j2")) == "dead_lettered"
    job = rt.jobs.get("j2")
    assert job.status is JobStatus.FAILED and job.error_code == "worker_lost" and job.error_type == ERROR_TYPE
    assert rt.dlq.ids() == ["j2"]
    assert {event for event, _ in alerts} == {"job.failed", "job.retry_exhausted"}
    # The same dead letter again (redelivered before its ack) changes nothing.
    assert handle_dead_letter(rt, *dead("j2-t1", "j2")) == "finished"
    assert len(rt.dlq) == 1 and drain(rt.celery) == []


def test_stale_running_and_foreign_dead_letters_change_nothing(rt):
    make_job(rt, "j3", attempts=1)
    assert handle_dead_letter(rt, *dead("an-older-delivery", "j3")) == "stale"
    make_job(rt, "j4", JobStatus.RUNNING, attempts=1)
    rt.redis.set(keys.lease("j4"), "live")
    assert handle_dead_letter(rt, *dead("j4-t1", "j4")) == "running"
    assert handle_dead_letter(rt, *dead("w1", "hook", task="tts.deliver_webhook")) == "dropped"
    assert handle_dead_letter(rt, {"x-death": []}, "not a celery body") == "dropped"
    assert [rt.jobs.get(j).attempts for j in ("j3", "j4")] == [1, 1]
    assert drain(rt.celery) == [] and len(rt.dlq) == 0


def test_a_part_past_the_limit_fails_its_job(rt, alerts):
    make_job(rt, "j5", JobStatus.RUNNING, attempts=1)
    assert handle_dead_letter(rt, *dead("p1", "j5", task="tts.synthesize_part", extra=[1])) == "dead_lettered"
    job = rt.jobs.get("j5")
    assert job.status is JobStatus.FAILED and job.error.startswith("part 2: ")

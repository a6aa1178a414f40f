"""Which queue each synthesis message goes to: single jobs on ``synthesis``, bulk work on ``bulk``.

The fair-share rule (docs/architecture.md, "Scheduling and fair share"): a batch item and
every fan-out part go to ``bulk``, a single job to ``synthesis``, and every later send of
the same work (a retry, a time-limit retry, a dead-letter replay, the reconciler's send
again) lands on the queue of the first one. Read back from kombu's in-memory broker; the
reconciler's broker view is fakeredis, as in test_reconciler.py.
"""
from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from billiard.exceptions import TimeLimitExceeded
from unit_helpers import drain, fanned_out_job, memory_app

from settings import Settings
from tasks import fanout, keys, lifecycle, reconciler
from tasks.celery_app import BULK_QUEUE, QUEUES, SYNTHESIS_QUEUE, SYNTHESIS_QUEUES, celery_config
from tasks.job import Job, now
from tasks.job_request import JobInput
from tasks.publish import PART_QUEUE, SYNTHESIZE_PART_TASK, SYNTHESIZE_TASK, queue_for
from tasks.runtime import Runtime
from tasks.service import JobService
from tasks.status import JobStatus

LEASE = 30
AUDIO = b"ID3\x04fake mp3 bytes"


@pytest.fixture
def rt(tmp_path) -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0", lease_seconds=LEASE, retry_jitter=False, max_attempts=3,
                               data_dir=str(tmp_path)))
    runtime.redis = fakeredis.FakeRedis()  # cached properties, set before first use
    runtime.celery = memory_app("test-queue-routing")
    return runtime


@pytest.fixture
def svc(rt: Runtime) -> JobService:
    return JobService(rt)


def queues(rt: Runtime) -> dict[str, list[dict[str, Any]]]:
    """Every message now waiting, taken off both synthesis queues."""
    return {queue: drain(rt.celery, queue) for queue in SYNTHESIS_QUEUES}


def build(svc: JobService, text: str = "Hello there.", **fields: Any) -> Job:
    return svc.build_job(JobInput.model_validate({"text": text, "voice": "heart", "cache": False}).resolve(), None, **fields)


def stored_job(rt: Runtime, job_id: str, status: JobStatus, age: float = 0.0, **fields: Any) -> Job:
    created = now() - age
    job = Job(id=job_id, text="Hello.", voice="heart", status=status, created_at=created, queued_at=created,
              task_id=f"{job_id}-t1", max_attempts=3, **fields)
    rt.jobs.create(job)
    return job


# --- the rule and the configuration ------------------------------------------------------------------
def test_queue_for_sends_batch_items_to_bulk_and_single_jobs_to_synthesis():
    assert queue_for(Job(id="single", text="Hi.", voice="heart")) == SYNTHESIS_QUEUE
    assert queue_for(Job(id="item", text="Hi.", voice="heart", batch_id="b1", batch_index=0)) == BULK_QUEUE
    assert PART_QUEUE == BULK_QUEUE


def test_workers_consume_both_queues_round_robin():
    config = celery_config(Settings(redis_url="redis://fake/0"))
    assert {q.name for q in config["task_queues"]} == set(QUEUES) >= {SYNTHESIS_QUEUE, BULK_QUEUE}
    assert config["task_routes"][SYNTHESIZE_TASK] == {"queue": SYNTHESIS_QUEUE}
    assert config["task_routes"][SYNTHESIZE_PART_TASK] == {"queue": BULK_QUEUE}
    # kombu's Redis transport rotates a served queue to the end of the BRPOP order: no queue starves.
    assert config["broker_transport_options"]["queue_order_strategy"] == "round_robin"
    assert config["worker_prefetch_multiplier"] == 1 and config["task_acks_late"] is True


# --- first sends ---------------------------------------------------------------------------------------
def test_a_single_job_goes_to_synthesis_and_a_batchs_items_to_bulk(svc, rt):
    single = svc.accept(build(svc, "A single job."))
    items = [build(svc, f"Item {n}.", batch_id="b1", batch_index=n) for n in range(3)]
    assert svc.accept_many(items, correlation_id="batch-corr") == []

    sent = queues(rt)
    assert [(m["args"], m["routing_key"]) for m in sent[SYNTHESIS_QUEUE]] == [([single.id], SYNTHESIS_QUEUE)]
    assert [m["args"] for m in sent[BULK_QUEUE]] == [[job.id] for job in items]
    assert {m["routing_key"] for m in sent[BULK_QUEUE]} == {BULK_QUEUE}
    assert all(queue_for(job) == BULK_QUEUE for job in items)  # accept_many's queue is the rule's


def test_a_batch_item_the_cache_lost_meanwhile_is_queued_on_bulk_too(svc, rt, monkeypatch):
    item = build(svc, "Cached once.", batch_id="b1", batch_index=0)
    item.cache, item.cache_key = True, "k-evicted"
    rt.cache.put("k-evicted", AUDIO, {"duration": 1.0, "sample_rate": 24000})
    # The pipelined EXISTS says cached; the read a moment later finds nothing (evicted): the one-job path.
    monkeypatch.setattr(rt.cache, "get", lambda key: None)
    assert svc.accept_many([item]) == []
    sent = queues(rt)
    assert sent[SYNTHESIS_QUEUE] == [] and [m["args"] for m in sent[BULK_QUEUE]] == [[item.id]]


# --- later sends keep the queue -------------------------------------------------------------------------
@pytest.mark.parametrize(("batch_id", "queue"), [(None, SYNTHESIS_QUEUE), ("b1", BULK_QUEUE)])
def test_a_retry_goes_to_the_queue_of_the_first_send(rt, batch_id, queue):
    job = stored_job(rt, "retried", JobStatus.RUNNING, attempts=1, batch_id=batch_id,
                     batch_index=0 if batch_id else None)
    task_id = lifecycle.send_again(rt, job.id, {JobStatus.RUNNING}, job.task_id, "retry after attempt 1", 0.5)
    sent = queues(rt)
    (message,) = sent[queue]
    assert message["id"] == task_id and message["args"] == [job.id] and message["eta"] is not None
    assert sum(len(messages) for messages in sent.values()) == 1


@pytest.mark.parametrize(("batch_id", "queue"), [(None, SYNTHESIS_QUEUE), ("b1", BULK_QUEUE)])
def test_a_time_limit_retry_goes_to_the_queue_of_the_first_send(rt, batch_id, queue):
    job = stored_job(rt, "killed", JobStatus.RUNNING, attempts=1, batch_id=batch_id,
                     batch_index=0 if batch_id else None)
    lifecycle.retry_after_time_limit(rt, job.id, TimeLimitExceeded(660))
    sent = queues(rt)
    assert [m["args"] for m in sent[queue]] == [[job.id]]
    assert sum(len(messages) for messages in sent.values()) == 1


def test_a_replayed_batch_item_goes_to_bulk(svc, rt, alerts):
    item = build(svc, "Replayed.", batch_id="b1", batch_index=0)
    svc.accept_many([item])
    queues(rt)
    lifecycle.dead_letter(rt, rt.jobs.get(item.id), "SynthesisRuntimeError", "boom", code="retry_exhausted")
    replayed = svc.replay(item.id)
    sent = queues(rt)
    assert sent[SYNTHESIS_QUEUE] == [] and [m["id"] for m in sent[BULK_QUEUE]] == [replayed.task_id]


@pytest.mark.parametrize(("batch_id", "queue"), [(None, SYNTHESIS_QUEUE), ("b1", BULK_QUEUE)])
def test_the_reconciler_sends_a_lost_job_to_the_queue_of_the_first_send(rt, batch_id, queue):
    stored_job(rt, "lost", JobStatus.RUNNING, age=60, attempts=1, worker="dead-host", batch_id=batch_id,
               batch_index=0 if batch_id else None)
    assert reconciler.sweep(rt).lost == ["lost"]
    sent = queues(rt)
    assert [m["args"] for m in sent[queue]] == [["lost"]]
    assert sum(len(messages) for messages in sent.values()) == 1


@pytest.mark.parametrize("queue", SYNTHESIS_QUEUES)
def test_the_reconciler_finds_a_waiting_message_in_either_queue(rt, queue):
    job = stored_job(rt, "waiting", JobStatus.QUEUED, age=LEASE + 10, batch_id="b1", batch_index=0)
    rt.redis.lpush(queue, json.dumps({"headers": {"id": job.task_id}, "body": ""}))
    for _ in range(2):
        assert reconciler.sweep(rt).sent_again == 0
    assert rt.redis.hget(keys.RECONCILE_SUSPECTS, job.id) is None


# --- fan-out parts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_id", [None, "b1"])
def test_the_parts_of_any_fanned_out_job_go_to_bulk(rt, batch_id):
    job, _ = fanned_out_job(rt, batch_id=batch_id)
    assert fanout.queue_parts(rt, job).total == 3
    sent = queues(rt)
    assert sent[SYNTHESIS_QUEUE] == []
    # part 0 is stored; part 1, the first left, is the leading synthesize task's own
    assert [(m["task"], m["args"]) for m in sent[BULK_QUEUE]] == [(SYNTHESIZE_PART_TASK, [job.id, 2])]


def test_a_parts_time_limit_retry_goes_to_bulk(rt):
    job, _ = fanned_out_job(rt)
    rt.redis.hset(keys.job_parts(job.id), "attempts:1", 1)
    lifecycle.retry_after_time_limit(rt, job.id, TimeLimitExceeded(660), part=1)
    sent = queues(rt)
    assert sent[SYNTHESIS_QUEUE] == []
    (message,) = sent[BULK_QUEUE]
    assert (message["task"], message["args"]) == (SYNTHESIZE_PART_TASK, [job.id, 1]) and message["eta"] is not None


def test_a_redelivered_leader_sends_only_the_parts_nobody_claimed(rt):
    job, _ = fanned_out_job(rt)
    rt.redis.hset(keys.job_parts(job.id), mapping={"total": 5, "text:3": '["Four."]', "text:4": '["Five."]',
                                                   "claim:1": "part", "claim:2": "lead:1"})
    assert fanout.queue_parts(rt, job).total == 5
    # 1 is a helper's (its message exists), 2 the dead leader's (this one takes it over), 3 is this leader's next
    assert [m["args"] for m in queues(rt)[BULK_QUEUE]] == [[job.id, 4]]

"""Batch bookkeeping on fakeredis: request checks, status rules, counting finished items."""
from __future__ import annotations

import fakeredis
import pytest
from pydantic import ValidationError

from settings import Settings
from tasks import keys
from tasks.batches import (
    _ITEM_FIELDS,
    Batch,
    BatchRequest,
    ItemMeta,
    on_item_finished,
    on_item_started,
)
from tasks.job import Job, now
from tasks.runtime import Runtime
from tasks.status import BatchStatus, JobStatus


@pytest.fixture
def rt() -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0"))
    runtime.redis = fakeredis.FakeRedis()  # the cached property, set before first use
    return runtime


def parse(body):
    return BatchRequest.model_validate(body)


def test_batch_defaults_merge_over_the_service_defaults():
    req = parse({"inputs": [{"text": "hi"}], "defaults": {"format": "wav", "speed": None}, "concatenate": True,
                 "gap_ms": 250})
    assert req.merged_defaults("heart", "mp3") == {"voice": "heart", "format": "wav"}
    assert req.concatenate is True and req.gap_ms == 250


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (None, ()), ([], ()), ({"inputs": None}, ("inputs",)), ({"inputs": {}}, ("inputs",)),
        ({"inputs": []}, ("inputs",)), ({"inputs": [{"text": "x"}], "extra": 1}, ("extra",)),
        ({"inputs": [{"text": "x"}], "defaults": []}, ("defaults",)),
        ({"inputs": [{"text": "x"}], "defaults": {"name": "x"}}, ("defaults", "name")),
        ({"inputs": [{"text": "x"}], "concatenate": 1}, ("concatenate",)),
        ({"inputs": [{"text": "x"}], "gap_ms": 0.5}, ("gap_ms",)),
        ({"inputs": [{"text": "x"}], "gap_ms": 60_001}, ("gap_ms",)),
        ({"inputs": [{"text": "x"}], "gap_ms": True}, ("gap_ms",)),
        ({"inputs": [{"text": "x"}, {"text": 5}]}, ("inputs", 1, "text")),
        ({"inputs": [{"text": "x"}, {"voice": "heart"}]}, ("inputs", 1, "text")),
        ({"inputs": ["x"]}, ("inputs", 0)),
    ],
)
def test_malformed_batch_bodies_are_refused_naming_the_field(body, param):
    with pytest.raises(ValidationError) as info:
        parse(body)
    assert info.value.errors()[0]["loc"] == param


def batch(**counts) -> Batch:
    return Batch(id="b", total=4, created_at=1.0, **counts)


@pytest.mark.parametrize(
    ("counts", "status"),
    [
        ({}, BatchStatus.QUEUED),
        ({"failed": 1, "finished": 1, "settled_at_submit": 1}, BatchStatus.QUEUED),  # rejected at submit only
        ({"started_at": 2.0}, BatchStatus.RUNNING),
        ({"succeeded": 1, "finished": 1}, BatchStatus.RUNNING),
        ({"succeeded": 4, "finished": 4}, BatchStatus.SUCCEEDED),
        ({"succeeded": 3, "failed": 1, "finished": 4}, BatchStatus.PARTIALLY_SUCCEEDED),
        ({"failed": 3, "cancelled": 1, "finished": 4}, BatchStatus.FAILED),
        ({"cancelled": 4, "finished": 4}, BatchStatus.CANCELLED),
        ({"succeeded": 2, "finished": 2, "cancelled_at": 3.0}, BatchStatus.CANCELLED),
    ],
)
def test_batch_status(counts, status):
    assert batch(**counts).status is status


def test_batch_counts_and_percent():
    b = batch(succeeded=1, failed=1, finished=2, running=1)
    assert b.counts() == {"total": 4, "queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 0}
    body = b.public()
    assert body["percent_done"] == 50.0
    assert body["request_counts"] == {"total": 4, "completed": 1, "failed": 1}


def _job(rt: Runtime, index: int, status: JobStatus, duration: float | None = None) -> Job:
    job = Job(id=f"j{index}", text="x", voice="heart", status=status, batch_id="b", batch_index=index,
              duration=duration, created_at=now())
    rt.jobs.create(job)
    return job


def test_items_are_counted_once_and_the_batch_finishes(rt):
    rt.redis.hset(keys.batch("b"), mapping={"total": 2, "created_at": now(), "finished": 0})
    first = _job(rt, 0, JobStatus.RUNNING)
    on_item_started(rt, first)
    assert rt.redis.scard(keys.batch_running("b")) == 1
    assert rt.redis.hget(keys.batch("b"), "started_at")
    rt.jobs.update(first.id, status=JobStatus.SUCCEEDED, duration=1.5)
    on_item_finished(rt, first.id)
    on_item_finished(rt, first.id)  # a redelivered task must not count it twice
    second = _job(rt, 1, JobStatus.FAILED)
    on_item_finished(rt, second.id)
    data = rt.redis.hgetall(keys.batch("b"))
    b = Batch.from_redis("b", data, int(rt.redis.scard(keys.batch_running("b"))))
    assert (b.succeeded, b.failed, b.finished, b.running) == (1, 1, 2, 0)
    assert b.audio_seconds == 1.5
    assert b.finished_at is not None
    assert b.status is BatchStatus.PARTIALLY_SUCCEEDED
    assert rt.redis.ttl(keys.batch("b")) > 0


def test_unfinished_or_batchless_jobs_are_not_counted(rt):
    rt.redis.hset(keys.batch("b"), mapping={"total": 1, "created_at": now()})
    running = _job(rt, 0, JobStatus.RUNNING)
    on_item_finished(rt, running.id)
    lone = Job(id="lone", text="x", voice="heart", status=JobStatus.SUCCEEDED, created_at=now())
    rt.jobs.create(lone)
    on_item_finished(rt, "lone")
    on_item_finished(rt, "expired-job")
    assert rt.redis.hget(keys.batch("b"), "finished") is None


def test_item_meta_from_a_record_and_an_expired_one():
    values = dict.fromkeys(_ITEM_FIELDS)
    values.update(status=b"failed", name=b"intro", attempts=b"3", error_code=b"retry_exhausted", error=b"boom",
                  characters=b"12", cache_hit=b"0")
    item = ItemMeta.from_fields(4, "j4", [values[n] for n in _ITEM_FIELDS])
    body = item.public()
    assert (body["index"], body["name"], body["attempts"], body["status"]) == (4, "intro", 3, "failed")
    assert body["error"] == {"code": "retry_exhausted", "message": "boom"}
    gone = ItemMeta.from_fields(5, "j5", [None] * len(_ITEM_FIELDS))
    assert gone.status == "expired" and gone.error_body["code"] == "expired"


def test_an_item_that_finishes_again_differently_moves_between_counts(rt):
    """A dead-lettered item replayed to success: counted once, now as succeeded."""
    rt.redis.hset(keys.batch("b"), mapping={"total": 1, "created_at": now()})
    job = _job(rt, 0, JobStatus.FAILED)
    on_item_finished(rt, job.id)
    rt.jobs.update(job.id, status=JobStatus.SUCCEEDED, duration=2.0)
    on_item_finished(rt, job.id)
    on_item_finished(rt, job.id)
    b = Batch.from_redis("b", rt.redis.hgetall(keys.batch("b")))
    assert (b.succeeded, b.failed, b.finished, b.audio_seconds) == (1, 0, 1, 2.0)
    assert b.status is BatchStatus.SUCCEEDED

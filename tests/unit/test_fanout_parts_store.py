"""Fan-out parts in the result store (fakeredis with a real folder store): a helper's part is named by
``ref:{n}`` in the plan, read back by the leader, and a part marked done whose audio cannot be read
(its object gone, or stored in Redis by an older version) is forgotten so it is made again."""
from __future__ import annotations

import fakeredis
import pytest
from unit_helpers import fanned_out_job

from settings import Settings
from tasks import fanout, keys
from tasks.job import now
from tasks.runtime import Runtime


@pytest.fixture
def rt(tmp_path) -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0", data_dir=str(tmp_path)))
    runtime.redis = fakeredis.FakeRedis()  # the cached property, set before first use
    return runtime


def test_a_stored_part_is_named_in_the_plan_and_read_back(rt):
    job, _ = fanned_out_job(rt, "j1")
    fanout._store_part(rt, job.id, 1, b"\x01\x02" * 500, 500, 0.25)
    ref = rt.redis.hget(keys.job_parts(job.id), "ref:1").decode()
    assert rt.result_store.read(ref) == b"\x01\x02" * 500
    assert fanout._stored_part(rt, job.id, 1) == (b"\x01\x02" * 500, 0.25)
    assert rt.redis.sismember(keys.job_parts_done(job.id), "1")
    assert rt.redis.lrange(keys.job_parts_ready(job.id), 0, -1) == [b"1"]
    assert not list(rt.redis.scan_iter("tts:job:j1:part:*"))  # no PCM in Redis
    assert fanout._stored_part(rt, job.id, 2) is None  # not stored yet
    assert fanout._forgot_part(rt, job.id, 1) is False  # readable: kept


def test_cleanup_forgets_the_refs_and_leaves_the_objects_to_expire(rt):
    job, _ = fanned_out_job(rt, "j1")
    fanout._store_part(rt, job.id, 1, b"pcm" * 100, 100, 0.1)
    ref = rt.redis.hget(keys.job_parts(job.id), "ref:1").decode()
    fanout.cleanup(rt, job.id)
    assert not rt.redis.exists(keys.job_parts(job.id), keys.job_parts_done(job.id), keys.job_parts_ready(job.id))
    assert rt.result_store.read(ref) == b"pcm" * 100
    assert rt.result_store.index.expires_at(ref) > now()


def test_a_done_part_whose_object_is_gone_is_forgotten_to_be_made_again(rt):
    job, _ = fanned_out_job(rt, "j1")
    rt.redis.hset(keys.job_parts(job.id), "claim:1", fanout.PART_CLAIM)
    fanout._store_part(rt, job.id, 1, b"pcm" * 100, 100, 0.1)
    ref = rt.redis.hget(keys.job_parts(job.id), "ref:1").decode()
    rt.result_store.path(ref).unlink()
    assert fanout._stored_part(rt, job.id, 1) is None
    assert fanout._forgot_part(rt, job.id, 1) is True
    assert not rt.redis.sismember(keys.job_parts_done(job.id), "1")
    assert not rt.redis.hexists(keys.job_parts(job.id), "claim:1")
    assert not rt.redis.hexists(keys.job_parts(job.id), "ref:1")
    assert fanout._forgot_part(rt, job.id, 1) is False  # not marked done any more


def test_a_done_part_of_the_old_layout_is_forgotten(rt):
    """A part an older version stored in Redis (``tts:job:{id}:part:{n}``, no ref in the plan)."""
    job, _ = fanned_out_job(rt, "j1")
    rt.redis.hset(keys.job_parts(job.id), "claim:2", fanout.PART_CLAIM)
    rt.redis.sadd(keys.job_parts_done(job.id), 2)
    assert fanout._stored_part(rt, job.id, 2) is None
    assert fanout._forgot_part(rt, job.id, 2) is True
    assert not rt.redis.hexists(keys.job_parts(job.id), "claim:2")

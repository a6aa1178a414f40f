"""Fan-out on fakeredis: a part that fails for good dead-letters its job once; who claims which part."""
from __future__ import annotations

import fakeredis
import numpy as np
import pytest
from unit_helpers import fanned_out_job

from engine.exceptions import OptionError
from settings import Settings
from tasks import fanout, keys, lifecycle
from tasks.job import now
from tasks.runtime import Runtime
from tasks.status import JobStatus


@pytest.fixture
def rt(tmp_path) -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0", data_dir=str(tmp_path)))
    runtime.redis = fakeredis.FakeRedis()  # the cached property, set before first use
    return runtime


def test_a_permanent_part_failure_dead_letters_the_job_once_and_drops_the_parts(rt):
    job, plan = fanned_out_job(rt, "j1")
    outcome = fanout._part_failed(None, rt, job, plan, 1, 1, OptionError("bad option"), now())
    assert outcome == {"job_id": job.id, "part": 1, "status": "failed"}
    failed = rt.jobs.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_code == "invalid_option"
    assert failed.error == "part 2 of 3: bad option"
    assert rt.dlq.get(job.id)["error_type"] == "OptionError"
    assert rt.redis.zcard(keys.DLQ_INDEX) == 1
    assert not rt.redis.exists(keys.job_parts(job.id), keys.job_parts_done(job.id))

    # Another part failing afterwards changes nothing: still one dead-letter record, one failure.
    fanout._part_failed(None, rt, job, plan, 2, 1, OptionError("also bad"), now())
    assert rt.redis.zcard(keys.DLQ_INDEX) == 1
    assert rt.jobs.get(job.id).error == "part 2 of 3: bad option"
    history = rt.jobs.history(job.id)
    assert [h["part"] for h in history if h.get("outcome") == "part_failed"] == [1, 2]


def test_parts_of_a_finished_job_are_dropped(rt):
    job, _ = fanned_out_job(rt, "j1")
    rt.jobs.update(job.id, status=JobStatus.CANCELLED)
    assert fanout._run_part(None, rt, rt.jobs.get(job.id), 1) is None
    assert not rt.redis.exists(keys.job_parts(job.id))


def test_a_part_without_a_plan_is_dropped(rt):
    job, _ = fanned_out_job(rt, "j1")
    rt.redis.delete(keys.job_parts(job.id))
    assert fanout._run_part(None, rt, job, 1) is None
    assert rt.jobs.get(job.id).status is JobStatus.RUNNING


def test_a_part_task_drops_its_message_when_the_leader_claimed_the_part(rt):
    job, _ = fanned_out_job(rt, "j1")
    rt.redis.hset(keys.job_parts(job.id), "claim:1", "lead:1")
    assert fanout._run_part(None, rt, job, 1) == {"job_id": job.id, "part": 1, "status": "led"}
    assert rt.redis.hget(keys.job_parts(job.id), "attempts:1") is None  # not counted as a delivery of the part
    assert fanout._claim_part(rt, job.id, 2) is True
    assert fanout._claim_part(rt, job.id, 2) is True  # the same part's redelivery or retry takes it again


def test_the_leader_claims_the_lowest_free_part_and_takes_over_a_dead_leaders(rt):
    job, plan = fanned_out_job(rt, "j1")
    parts = keys.job_parts(job.id)
    rt.redis.hset(parts, mapping={"claim:0": "part", "claim:1": "lead:1"})
    leader = fanout._Leader(rt, job, plan, token="lead:2")
    assert leader.claim(0) == 1  # part 0 is a helper's; part 1 was the first delivery's, which is gone
    assert rt.redis.hget(parts, "claim:1") == b"lead:2"
    leader.own[1] = np.zeros(1, np.float32)
    assert leader.claim(0) == 2
    leader.own[2] = np.zeros(1, np.float32)
    assert leader.claim(0) is None and leader.helped == {0}
    rt.redis.hset(parts, "claim:0", "lead:9")  # a helper's part is never claimed back, whatever happens to it
    assert leader.claim(0) is None


def test_the_leader_stops_when_a_part_dead_lettered_the_job(rt):
    job, plan = fanned_out_job(rt, "j1")
    leader = fanout._Leader(rt, job, plan, token="lead:1")
    fanout._part_failed(None, rt, job, plan, 1, 1, OptionError("bad option"), now())
    with pytest.raises(lifecycle.JobCancelled):
        leader.check_running()

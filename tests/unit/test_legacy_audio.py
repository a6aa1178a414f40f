"""Audio an earlier version kept in Redis (``tts:job:{id}:audio``) after an upgrade: the first
download moves it into the result store, DELETE removes it, and an expired record is not revived."""
from __future__ import annotations

import fakeredis
import pytest

from settings import Settings
from tasks import keys
from tasks.exceptions import AudioGone
from tasks.job import Job, JobStore, now
from tasks.runtime import Runtime
from tasks.service import JobService
from tasks.status import JobStatus

OLD_AUDIO = b"RIFF" + bytes(range(256)) * 40


@pytest.fixture
def rt(tmp_path) -> Runtime:
    """A runtime on fakeredis with its real folder result store under ``tmp_path``."""
    runtime = Runtime(Settings(redis_url="redis://fake/0", data_dir=str(tmp_path)))
    runtime.redis = fakeredis.FakeRedis()  # a cached property, set before first use
    return runtime


@pytest.fixture
def jobs(rt: Runtime) -> JobStore:
    return rt.jobs


def old_succeeded_job(jobs: JobStore) -> Job:
    """A record as the previous version left it: succeeded, no audio_ref, its bytes at the old key."""
    job = Job(id="a" * 32, text="Old audio.", voice="heart", format="wav", status=JobStatus.SUCCEEDED,
              created_at=now(), finished_at=now(), audio_bytes=len(OLD_AUDIO))
    jobs.redis.hset(keys.job(job.id), mapping=job.to_redis())
    jobs.redis.set(keys.legacy_job_audio(job.id), OLD_AUDIO, ex=3600)
    return job


def test_the_first_read_moves_old_audio_into_the_store(rt: Runtime, jobs: JobStore) -> None:
    job = old_succeeded_job(jobs)
    svc = JobService(rt)
    ref = svc.audio_ref_of(jobs.get(job.id))
    assert jobs.results.read(ref) == OLD_AUDIO
    assert jobs.get(job.id).audio_ref == ref
    assert not jobs.redis.exists(keys.legacy_job_audio(job.id))
    assert svc.audio_of(jobs.get(job.id)) == OLD_AUDIO  # the second read goes by the ref


def test_delete_removes_old_audio_too(rt: Runtime, jobs: JobStore) -> None:
    job = old_succeeded_job(jobs)
    assert jobs.delete_audio(job.id) is True
    assert not jobs.redis.exists(keys.legacy_job_audio(job.id))
    with pytest.raises(AudioGone):
        JobService(rt).audio_ref_of(jobs.get(job.id))


def test_an_expired_record_is_not_brought_back(jobs: JobStore) -> None:
    job = old_succeeded_job(jobs)
    jobs.redis.delete(keys.job(job.id))
    assert jobs.adopt_legacy_audio(job.id) is None
    assert not jobs.redis.exists(keys.job(job.id))

"""JobService on fakeredis with a real Celery app on kombu's in-memory transport.

What is published is read back from the memory transport's queues: the synthesis queue
for single jobs' task messages, the bulk queue for a batch's, a queue bound to the control
exchange for revoke broadcasts. The
in-memory broker is process-wide, so each test starts and ends with the queues drained.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import kombu.exceptions
import pytest
from celery import Celery
from celery.signals import before_task_publish
from conftest import wait_until
from kombu import Queue
from unit_helpers import drain, memory_app

from engine.exceptions import EmptyTextError, OptionError, UnknownVoiceError
from settings import Settings
from tasks import keys, lifecycle
from tasks.celery_app import BULK_QUEUE, SYNTHESIS_QUEUE
from tasks.exceptions import (
    AudioGone,
    DeadLetterNotFound,
    IdempotencyConflict,
    IdempotencyKeyInUse,
    JobNotFinished,
    JobNotFound,
)
from tasks.idempotency import IdempotencyKeys, ResourceKind
from tasks.job import Job, now
from tasks.job_request import JobRequest
from tasks.publish import SYNTHESIZE_TASK
from tasks.runtime import Runtime
from tasks.service import JobService
from tasks.status import JobStatus

AUDIO = b"ID3\x04fake mp3 bytes"
META = {"duration": 1.5, "sample_rate": 24000}


@contextlib.contextmanager
def revoke_spy(app: Celery) -> Iterator[list[dict[str, Any]]]:
    """A queue bound to the control (pidbox) exchange: the broadcasts sent while inside, read at exit."""
    received: list[dict[str, Any]] = []
    with app.connection_for_write() as conn:
        spy = Queue(f"revoke-spy-{uuid.uuid4().hex}", app.control.mailbox.exchange, channel=conn.default_channel,
                    auto_delete=True)
        spy.declare()
        try:
            yield received
            while (message := spy.get(no_ack=True)) is not None:
                received.append(message.payload)
        finally:
            spy.delete()


@pytest.fixture
def app() -> Iterator[Celery]:
    celery = memory_app()
    drain(celery)
    yield celery
    drain(celery)


@pytest.fixture
def refused_app() -> Iterator[Celery]:
    """A Celery app whose Redis broker refuses connections: a socket bound to a port, never listening."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    celery = Celery("test-refused", broker=f"redis://127.0.0.1:{port}/0")
    celery.conf.update(broker_connection_timeout=0.5, broker_connection_retry=False, task_publish_retry=False,
                       broker_transport_options={"max_retries": 0, "socket_connect_timeout": 0.5})
    try:
        yield celery
    finally:
        holder.close()


# --- the runtime --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def catalog():
    """One real voice catalog for the module (discovery takes a little while; no model is loaded)."""
    return Runtime(Settings(redis_url="redis://fake/0")).catalog


@pytest.fixture
def rt(app, catalog, tmp_path) -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0", data_dir=str(tmp_path)))
    runtime.redis = fakeredis.FakeRedis()  # cached properties, set before first use
    runtime.celery = app
    runtime.catalog = catalog
    return runtime


@pytest.fixture
def svc(rt) -> JobService:
    return JobService(rt)


@pytest.fixture
def finished_calls(monkeypatch) -> list[list[tuple[str, JobStatus, str | None]]]:
    """Calls of a finished-hook, each a list of (job id, status, batch id); only this hook is registered."""
    monkeypatch.setattr(lifecycle, "_finished_hooks", [])
    monkeypatch.setattr(lifecycle, "_started_hooks", [])
    calls: list[list[tuple[str, JobStatus, str | None]]] = []
    lifecycle.on_finished(lambda rt, jobs: calls.append([(j.id, j.status, j.batch_id) for j in jobs]))
    return calls


def request(**fields: Any) -> JobRequest:
    return JobRequest(**{"text": "Hello there.", "voice": "heart", **fields})


def stored_job_keys(rt: Runtime) -> list[bytes]:
    return rt.redis.keys("tts:job:*")


def finished_job(svc: JobService, status: JobStatus = JobStatus.SUCCEEDED, audio: bytes | None = AUDIO,
                 **fields: Any) -> Job:
    job = svc.build_job(request(), **fields)
    job.status = status
    job.started_at = job.finished_at = now()
    svc.rt.jobs.create(job, audio=audio)
    return job


# --- prepare ------------------------------------------------------------------------------------
def test_prepare_returns_the_normalised_text_and_a_key(svc):
    text, key = svc.prepare(request(text="Hello   there."))
    assert text == "Hello there."
    assert key is not None and len(key) == 64


def test_prepare_memoises_model_versions_per_voice(svc):
    memo: dict[str, str] = {}
    svc.prepare(request(), memo)
    svc.prepare(request(text="Again."), memo)
    assert memo == {"heart": svc.rt.catalog.model_version("heart")}


@pytest.mark.parametrize("fields, error", [
    ({"voice": "nobody"}, UnknownVoiceError),
    ({"speed": 100.0}, OptionError),
    ({"format": "mp4"}, OptionError),
    ({"seed": -1}, OptionError),
    ({"text": "---", "markdown": True}, EmptyTextError),  # a Markdown rule: nothing to speak
    ({"text": "\u200b"}, EmptyTextError),  # a zero-width space is not whitespace to str.strip()
])
def test_submit_refuses_what_cannot_succeed_and_stores_nothing(svc, app, fields, error):
    with pytest.raises(error):
        svc.submit(request(**fields))
    assert stored_job_keys(svc.rt) == []
    assert drain(app) == []


# --- submit: queued -------------------------------------------------------------------------------
def test_submit_queues_the_job_and_publishes_one_message(svc, rt, app):
    seen_at_publish: list[bytes | None] = []

    def before_publish(sender=None, body=None, headers=None, **_: Any) -> None:
        # what the job record holds at the moment the message goes out
        seen_at_publish.append(rt.redis.hget(keys.job(body[0][0]), "task_id"))

    before_task_publish.connect(before_publish, weak=False)
    try:
        job, created = svc.submit(request(format="wav", speed=1.25, seed=4, name="greeting"), correlation_id="req-7")
    finally:
        before_task_publish.disconnect(before_publish)

    assert created is True
    stored = rt.jobs.get(job.id)
    assert stored.status is JobStatus.QUEUED
    assert stored.task_id and stored.task_id == job.task_id
    assert (stored.format, stored.speed, stored.seed, stored.name, stored.correlation_id) == (
        "wav", 1.25, 4, "greeting", "req-7")
    assert stored.characters == len("Hello there.")
    assert stored.max_attempts == rt.settings.max_attempts
    assert stored.cache_key == svc.prepare(request(format="wav", speed=1.25, seed=4))[1]
    assert stored.queued_at == stored.created_at > 0

    assert seen_at_publish == [job.task_id.encode()]  # the record had its task id before the publish
    messages = drain(app)
    assert len(messages) == 1
    message = messages[0]
    assert message["id"] == stored.task_id
    assert message["task"] == SYNTHESIZE_TASK
    assert message["args"] == [job.id] and message["kwargs"] == {}
    assert message["correlation_id"] == "req-7"
    assert message["routing_key"] == SYNTHESIS_QUEUE
    assert message["eta"] is None

    listed, _ = svc.list()
    assert [j.id for j in listed] == [job.id]


def test_submit_without_correlation_id_sends_no_correlation_header(svc, app):
    svc.submit(request())
    (message,) = drain(app)
    assert message["correlation_id"] is None


def test_submit_with_cache_off_is_queued_even_when_the_audio_is_cached(svc, rt, app):
    rt.cache.put(svc.prepare(request())[1], AUDIO, META)
    job, _ = svc.submit(request(cache=False))
    assert job.cache_key is None
    assert rt.jobs.get(job.id).status is JobStatus.QUEUED
    assert [m["args"] for m in drain(app)] == [[job.id]]


# --- submit: served from the cache -----------------------------------------------------------
def test_submit_is_served_from_the_cache_at_once(svc, rt, app, finished_calls):
    rt.cache.put(svc.prepare(request())[1], AUDIO, META)
    job, created = svc.submit(request(name="cached one"), correlation_id="req-9")
    assert created is True
    stored = rt.jobs.get(job.id)
    assert stored.status is JobStatus.SUCCEEDED
    assert stored.cache_hit is True
    assert stored.audio_bytes == len(AUDIO)
    assert stored.media_type == "audio/mpeg"
    assert (stored.duration, stored.output_sample_rate) == (1.5, 24000)
    assert stored.started_at == stored.finished_at is not None
    assert stored.task_id is None
    assert rt.jobs.audio(job.id) == AUDIO
    assert svc.audio(job.id)[1] == AUDIO
    assert drain(app) == []  # nothing published
    assert finished_calls == [[(job.id, JobStatus.SUCCEEDED, None)]]


def test_submit_for_audio_hands_back_a_cache_hits_audio_and_nothing_for_a_queued_job(svc, rt, app):
    rt.cache.put(svc.prepare(request())[1], AUDIO, META)
    hit, audio = svc.submit_for_audio(request())
    assert audio == AUDIO and hit.status is JobStatus.SUCCEEDED and rt.jobs.audio(hit.id) == AUDIO
    queued, nothing = svc.submit_for_audio(request(text="Not cached yet."))
    assert nothing is None and queued.status is JobStatus.QUEUED
    assert [m["args"] for m in drain(app)] == [[queued.id]]


def test_a_cache_hit_that_owes_a_callback_is_stored_with_it_in_the_outbox(svc, rt, app, finished_calls):
    # finished_calls: no callback hook runs, as if the API died right after storing the job
    rt.settings = rt.settings.replace(webhook_secret="operator-secret")
    rt.cache.put(svc.prepare(request())[1], AUDIO, META)
    owed, _ = svc.submit(request(callback_url="https://hooks.example.com/tts"))
    plain, _ = svc.submit(request())
    assert rt.jobs.get(owed.id).status is rt.jobs.get(plain.id).status is JobStatus.SUCCEEDED
    assert rt.redis.zrange(keys.CALLBACK_OUTBOX, 0, -1) == [owed.id.encode()]


# --- idempotency ------------------------------------------------------------------------------------
def test_same_key_and_body_returns_the_same_job_and_publishes_nothing_more(svc, rt, app):
    first, created = svc.submit(request(), idempotency_key="idem-1")
    assert created is True
    again, created_again = svc.submit(request(), idempotency_key="idem-1")
    assert created_again is False
    assert again.id == first.id
    assert again.task_id == first.task_id
    assert again.idempotency_key == "idem-1"
    assert len(drain(app)) == 1
    assert rt.redis.zcard(keys.JOBS_INDEX) == 1


def test_same_key_with_a_different_body_is_a_conflict(svc, rt, app):
    first, _ = svc.submit(request(), idempotency_key="idem-2")
    with pytest.raises(IdempotencyConflict) as info:
        svc.submit(request(text="Something else."), idempotency_key="idem-2")
    assert info.value.job_id == first.id
    assert info.value.code == "idempotency_key_reused"
    assert len(drain(app)) == 1
    assert rt.redis.zcard(keys.JOBS_INDEX) == 1


def test_different_keys_make_different_jobs(svc, app):
    a, _ = svc.submit(request(), idempotency_key="k-a")
    b, _ = svc.submit(request(), idempotency_key="k-b")
    assert a.id != b.id
    assert len(drain(app)) == 2


def test_a_submit_whose_publish_fails_releases_the_key_and_deletes_the_record(svc, rt, app, refused_app):
    rt.celery = refused_app
    with pytest.raises(kombu.exceptions.OperationalError):
        svc.submit(request(), idempotency_key="idem-3")
    assert rt.redis.get(keys.idempotency("idem-3")) is None
    assert stored_job_keys(rt) == []
    assert rt.redis.zcard(keys.JOBS_INDEX) == 0

    rt.celery = app  # the broker is back: the client's retry with the same key is a fresh submit
    job, created = svc.submit(request(), idempotency_key="idem-3")
    assert created is True
    assert [m["args"] for m in drain(app)] == [[job.id]]
    assert svc.submit(request(), idempotency_key="idem-3") == (rt.jobs.get(job.id), False)


def test_a_failed_publish_without_a_key_deletes_the_record(svc, rt, refused_app):
    rt.celery = refused_app
    job = svc.build_job(request(), cache_key=None)
    with pytest.raises(kombu.exceptions.OperationalError):
        svc.accept(job)
    assert not rt.jobs.exists(job.id)
    assert rt.redis.zcard(keys.JOBS_INDEX) == 0


def test_idempotency_claims(rt):
    claims = IdempotencyKeys(rt.redis, ttl=600)
    assert claims.claim(ResourceKind.JOB, "K", "job-1", "fp") is None
    assert claims.claim(ResourceKind.JOB, "K", "job-2", "fp") == "job-1"
    with pytest.raises(IdempotencyConflict):
        claims.claim(ResourceKind.JOB, "K", "job-2", "other-fp")
    assert 0 < rt.redis.ttl(keys.idempotency("K")) <= 600
    # batches have their own namespace
    assert claims.claim(ResourceKind.BATCH, "K", "batch-1", "fp") is None
    assert claims.claim(ResourceKind.BATCH, "K", "batch-2", "fp") == "batch-1"
    # only the holder releases a claim
    claims.release(ResourceKind.JOB, "K", "job-2")
    assert claims.claim(ResourceKind.JOB, "K", "job-3", "fp") == "job-1"
    claims.release(ResourceKind.JOB, "K", "job-1")
    assert claims.claim(ResourceKind.JOB, "K", "job-3", "fp") is None
    assert claims.claim(ResourceKind.BATCH, "K", "batch-2", "fp") == "batch-1"


# --- accept_many ------------------------------------------------------------------------------------
def build_batch(svc: JobService, texts: list[str], batch_id: str = "b1", **fields: Any) -> list[Job]:
    jobs = []
    memo: dict[str, str] = {}
    for index, text in enumerate(texts):
        req = request(text=text, **fields)
        _, key = svc.prepare(req, memo)
        jobs.append(svc.build_job(req, "batch-corr", cache_key=key, batch_id=batch_id, batch_index=index))
    return jobs


def test_accept_many_stores_the_records_and_publishes_one_message_per_job(svc, rt, app, finished_calls):
    jobs = build_batch(svc, ["One.", "Two.", "Three.", "Four."])
    rt.cache.put(jobs[1].cache_key, AUDIO, META)

    served = svc.accept_many(jobs, correlation_id="batch-corr")

    assert [j.id for j in served] == [jobs[1].id]
    assert rt.jobs.get(jobs[1].id).status is JobStatus.SUCCEEDED
    assert rt.jobs.audio(jobs[1].id) == AUDIO
    assert finished_calls == [[(jobs[1].id, JobStatus.SUCCEEDED, "b1")]]

    misses = [jobs[0], jobs[2], jobs[3]]
    assert drain(app) == []  # batch items go to the bulk queue, never ahead of single jobs
    messages = drain(app, BULK_QUEUE)
    assert [m["args"] for m in messages] == [[j.id] for j in misses]
    for job, message in zip(misses, messages):
        stored = rt.jobs.get(job.id)
        assert stored.status is JobStatus.QUEUED
        assert (stored.batch_id, stored.batch_index) == ("b1", job.batch_index)
        assert message["id"] == stored.task_id == job.task_id
        assert message["task"] == SYNTHESIZE_TASK
        assert message["correlation_id"] == "batch-corr"
        assert message["routing_key"] == BULK_QUEUE
    assert len({m["id"] for m in messages}) == 3
    assert rt.redis.zcard(keys.JOBS_INDEX) == 4


def test_accept_many_without_cache_keys_publishes_everything(svc, rt, app):
    jobs = build_batch(svc, ["One.", "Two."], cache=False)
    rt.cache.put(svc.prepare(request(text="One."))[1], AUDIO, META)  # cached, but these jobs do not look
    assert svc.accept_many(jobs) == []
    messages = drain(app, BULK_QUEUE)
    assert [m["args"] for m in messages] == [[j.id] for j in jobs]
    assert all(m["correlation_id"] is None for m in messages)


def test_accept_many_all_cached_publishes_nothing(svc, rt, app):
    jobs = build_batch(svc, ["One.", "Two."])
    for job in jobs:
        rt.cache.put(job.cache_key, AUDIO, META)
    served = svc.accept_many(jobs)
    assert [j.id for j in served] == [j.id for j in jobs]
    assert all(rt.jobs.get(j.id).status is JobStatus.SUCCEEDED for j in jobs)
    assert drain(app) == [] and drain(app, BULK_QUEUE) == []


# --- cancel ------------------------------------------------------------------------------------------
def running(svc: JobService, job: Job) -> Job:
    assert svc.rt.jobs.transition(job.id, {JobStatus.QUEUED}, status=JobStatus.RUNNING, started_at=now())
    return svc.rt.jobs.get(job.id)


def test_cancel_many_cancels_unfinished_jobs_only(svc, rt, app, finished_calls):
    queued, _ = svc.submit(request(text="Queued one."))
    running_job = running(svc, svc.submit(request(text="Running one."))[0])
    done = finished_job(svc)
    failed = finished_job(svc, status=JobStatus.FAILED, audio=None)
    drain(app)

    with revoke_spy(app) as broadcasts:
        cancelled = svc.cancel_many([queued, running_job, done, failed])

    assert [j.id for j in cancelled] == [queued.id, running_job.id]
    assert all(j.status is JobStatus.CANCELLED for j in cancelled)
    for job in (queued, running_job):
        stored = rt.jobs.get(job.id)
        assert stored.status is JobStatus.CANCELLED and stored.finished_at is not None
    assert rt.jobs.get(done.id).status is JobStatus.SUCCEEDED
    assert rt.jobs.audio(done.id) == AUDIO  # finished jobs keep their audio
    assert rt.jobs.get(failed.id).status is JobStatus.FAILED
    assert finished_calls == [[(queued.id, JobStatus.CANCELLED, None), (running_job.id, JobStatus.CANCELLED, None)]]
    assert [(b["method"], b["arguments"]["task_id"]) for b in broadcasts] == [
        ("revoke", [queued.task_id, running_job.task_id])]
    assert broadcasts[0]["arguments"]["terminate"] is False
    assert drain(app) == []


def test_cancel_many_groups_the_finished_hooks_by_batch(svc, finished_calls):
    jobs = build_batch(svc, ["One.", "Two."], batch_id="b1") + build_batch(svc, ["Three."], batch_id="b2")
    svc.accept_many(jobs)
    svc.cancel_many(jobs)
    assert sorted(finished_calls) == sorted([
        [(jobs[0].id, JobStatus.CANCELLED, "b1"), (jobs[1].id, JobStatus.CANCELLED, "b1")],
        [(jobs[2].id, JobStatus.CANCELLED, "b2")],
    ])


def test_cancel_many_twice_cancels_once(svc, app, finished_calls):
    job, _ = svc.submit(request())
    assert len(svc.cancel_many([job])) == 1
    with revoke_spy(app) as broadcasts:
        assert svc.cancel_many([svc.get(job.id)]) == []
    assert broadcasts == []  # nothing cancelled: no revoke
    assert len(finished_calls) == 1


def test_cancel_of_a_queued_job(svc, app, finished_calls):
    job, _ = svc.submit(request())
    with revoke_spy(app) as broadcasts:
        result = svc.cancel(job.id)
    assert result.status is JobStatus.CANCELLED
    assert svc.get(job.id).status is JobStatus.CANCELLED
    assert [b["arguments"]["task_id"] for b in broadcasts] == [[job.task_id]]
    assert finished_calls == [[(job.id, JobStatus.CANCELLED, None)]]


def test_cancel_of_a_finished_job_changes_nothing(svc, rt, app, finished_calls):
    done = finished_job(svc)
    with revoke_spy(app) as broadcasts:
        result = svc.cancel(done.id)
    assert result.status is JobStatus.SUCCEEDED and result.deleted_at is None
    assert rt.jobs.audio(done.id) is not None
    assert broadcasts == [] and finished_calls == []


def test_delete_of_a_finished_job_drops_its_audio_and_hides_it_from_its_tenant(svc, rt, app, finished_calls):
    done = finished_job(svc)
    with revoke_spy(app) as broadcasts:
        result = svc.delete(done.id, done.tenant)
    assert result.status is JobStatus.SUCCEEDED and result.deleted_at is not None
    assert rt.jobs.audio(done.id) is None
    assert broadcasts == [] and finished_calls == []
    for call in (lambda: svc.get(done.id, done.tenant), lambda: svc.audio(done.id, done.tenant),
                 lambda: svc.cancel(done.id, done.tenant), lambda: svc.delete(done.id, done.tenant)):
        with pytest.raises(JobNotFound):
            call()
    assert svc.get(done.id).deleted_at == result.deleted_at  # the record stays for the workers


def test_cancel_of_a_missing_job(svc):
    with pytest.raises(JobNotFound):
        svc.cancel("no-such-job")


# --- wait ------------------------------------------------------------------------------------------
def test_wait_returns_at_once_for_a_finished_job(svc):
    done = finished_job(svc)
    started = time.monotonic()
    assert svc.wait(done.id, timeout=30) is JobStatus.SUCCEEDED
    assert time.monotonic() - started < 1.0


def test_wait_returns_the_unfinished_status_after_the_timeout(svc):
    job, _ = svc.submit(request())
    started = time.monotonic()
    assert svc.wait(job.id, timeout=0.1) is JobStatus.QUEUED
    elapsed = time.monotonic() - started
    assert 0.1 <= elapsed < 1.0


def test_wait_with_no_time_left_reads_the_status_once(svc):
    job, _ = svc.submit(request())
    assert svc.wait(job.id, timeout=0) is JobStatus.QUEUED


def test_wait_answers_on_the_finished_message_not_at_the_next_read(svc, rt, monkeypatch):
    """The final transition publishes on the job's channel: the waiter returns at once, long before it reads again."""
    monkeypatch.setattr("tasks.service.WAIT_RECHECK_SECONDS", 60.0)
    job, _ = svc.submit(request())
    channel = keys.job_finished(job.id)
    answer: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: answer.update(status=svc.wait(job.id, timeout=120)))
    started = time.monotonic()
    waiter.start()
    wait_until(lambda: rt.redis.pubsub_numsub(channel)[0][1], 30, "the waiter subscribed", interval=0.005)
    assert rt.jobs.transition(job.id, {JobStatus.QUEUED}, status=JobStatus.RUNNING)
    assert rt.jobs.transition(job.id, {JobStatus.RUNNING}, status=JobStatus.SUCCEEDED, finished_at=now())
    waiter.join(30)
    assert not waiter.is_alive() and answer["status"] is JobStatus.SUCCEEDED
    assert time.monotonic() - started < 30  # well inside the 60 s between reads: the message woke it


def test_wait_for_a_missing_job_is_none(svc):
    started = time.monotonic()
    assert svc.wait("no-such-job", timeout=30) is None
    assert time.monotonic() - started < 1.0


# --- audio -----------------------------------------------------------------------------------------
def test_audio_of_a_succeeded_job(svc):
    done = finished_job(svc)
    job, data = svc.audio(done.id)
    assert (job.id, data) == (done.id, AUDIO)


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED])
def test_audio_of_a_job_that_did_not_succeed(svc, status):
    job = finished_job(svc, status=status, audio=None)
    with pytest.raises(JobNotFinished) as info:
        svc.audio(job.id)
    assert info.value.status == status.value


def test_audio_gone(svc):
    job = finished_job(svc, audio=None)
    with pytest.raises(AudioGone):
        svc.audio(job.id)


def test_audio_of_a_missing_job(svc):
    with pytest.raises(JobNotFound):
        svc.audio("no-such-job")


# --- list ------------------------------------------------------------------------------------------
def make_listed(svc: JobService, statuses: list[JobStatus]) -> list[Job]:
    """Jobs created one second apart, the first the newest."""
    base = now()
    jobs = []
    for i, status in enumerate(statuses):
        job = svc.build_job(request(text=f"Job {i}."))
        job.status = status
        job.created_at = job.queued_at = base - i
        svc.rt.jobs.create(job)
        jobs.append(job)
    return jobs


def test_list_is_newest_first_with_a_cursor(svc):
    jobs = make_listed(svc, [JobStatus.QUEUED] * 5)
    page1, cursor1 = svc.list(limit=2)
    page2, cursor2 = svc.list(limit=2, cursor=cursor1)
    page3, cursor3 = svc.list(limit=2, cursor=cursor2)
    assert [j.id for j in page1 + page2 + page3] == [j.id for j in jobs]
    assert [len(page1), len(page2), len(page3)] == [2, 2, 1]
    assert cursor1 is not None and cursor2 is not None and cursor3 is None


def test_list_exact_multiple_of_the_limit_ends_with_an_empty_page(svc):
    jobs = make_listed(svc, [JobStatus.QUEUED] * 2)
    page, cursor = svc.list(limit=2)
    assert [j.id for j in page] == [j.id for j in jobs]
    assert svc.list(limit=2, cursor=cursor) == ([], None)


def test_list_filters_by_status_across_pages(svc):
    statuses = [JobStatus.SUCCEEDED, JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED,
                JobStatus.QUEUED, JobStatus.SUCCEEDED]
    jobs = make_listed(svc, statuses)
    succeeded = [j.id for j, s in zip(jobs, statuses) if s is JobStatus.SUCCEEDED]
    page1, cursor = svc.list(status="succeeded", limit=2)
    page2, end = svc.list(status="succeeded", limit=2, cursor=cursor)
    assert [j.id for j in page1 + page2] == succeeded
    assert end is None
    assert [j.id for j in svc.list(status="failed")[0]] == [jobs[3].id]
    assert svc.list(status="cancelled") == ([], None)


def test_list_refuses_an_unknown_status(svc):
    with pytest.raises(ValueError):
        svc.list(status="finished")


def test_list_skips_and_unindexes_expired_jobs(svc, rt):
    jobs = make_listed(svc, [JobStatus.QUEUED] * 3)
    rt.redis.delete(keys.job(jobs[1].id))  # what the TTL does
    assert [j.id for j in svc.list()[0]] == [jobs[0].id, jobs[2].id]
    assert rt.redis.zscore(keys.JOBS_INDEX, jobs[1].id) is None


# --- replay -----------------------------------------------------------------------------------------
def test_replay_resets_the_job_removes_it_from_the_dlq_and_publishes_again(svc, rt, app, alerts):
    job, _ = svc.submit(request(), correlation_id="req-r")
    old_task_id = job.task_id
    drain(app)
    rt.jobs.update(job.id, attempts=3)
    lifecycle.dead_letter(rt, rt.jobs.get(job.id), "SynthesisRuntimeError", "boom", code="retry_exhausted")
    assert rt.jobs.get(job.id).status is JobStatus.FAILED
    assert rt.dlq.ids() == [job.id]

    replayed = svc.replay(job.id)

    stored = rt.jobs.get(job.id)
    assert replayed == stored
    assert stored.status is JobStatus.QUEUED
    assert stored.attempts == 0
    assert stored.replays == 1
    assert (stored.error, stored.error_type, stored.error_code) == (None, None, None)
    assert (stored.started_at, stored.finished_at, stored.next_retry_at) == (None, None, None)
    assert stored.task_id and stored.task_id != old_task_id
    assert rt.dlq.ids() == []
    with pytest.raises(DeadLetterNotFound):
        rt.dlq.get(job.id)
    messages = drain(app)
    assert [(m["id"], m["args"], m["correlation_id"]) for m in messages] == [(stored.task_id, [job.id], "req-r")]


def test_replay_of_a_job_not_in_the_dlq(svc, rt, app):
    job, _ = svc.submit(request())
    drain(app)
    with pytest.raises(DeadLetterNotFound):
        svc.replay(job.id)
    assert drain(app) == []
    assert rt.jobs.get(job.id).replays == 0


def test_a_replay_that_cannot_publish_leaves_the_job_failed_and_dead_lettered(svc, rt, app, refused_app, alerts):
    job, _ = svc.submit(request())
    drain(app)
    rt.jobs.update(job.id, attempts=3)
    lifecycle.dead_letter(rt, rt.jobs.get(job.id), "SynthesisRuntimeError", "boom", code="retry_exhausted")
    before = rt.jobs.get(job.id)
    rt.celery = refused_app

    with pytest.raises(kombu.exceptions.OperationalError):  # the broker refused the connection
        svc.replay(job.id)

    after = rt.jobs.get(job.id)
    assert (after.status, after.attempts, after.error_code, after.replays, after.task_id) == (
        JobStatus.FAILED, 3, "retry_exhausted", 0, before.task_id)
    assert rt.dlq.ids() == [job.id]  # still there to be replayed again
    rt.celery = app
    assert svc.replay(job.id).status is JobStatus.QUEUED
    assert [m["args"] for m in drain(app)] == [[job.id]]


def test_a_replay_of_a_job_that_is_no_longer_failed_only_drops_the_stale_record(svc, rt, app, alerts):
    job, _ = svc.submit(request())
    drain(app)
    lifecycle.dead_letter(rt, rt.jobs.get(job.id), "SynthesisRuntimeError", "boom", code="retry_exhausted")
    rt.jobs.update(job.id, status=JobStatus.QUEUED)  # a replay got this far before its last step failed
    assert svc.replay(job.id).status is JobStatus.QUEUED
    assert drain(app) == []  # no second message
    assert rt.dlq.ids() == []


def test_a_key_claimed_by_a_submit_that_died_before_storing_its_job_is_taken_over(svc, rt, app):
    # the API process claimed the key for job "ghost" a while ago and was killed before writing the record
    rt.redis.set(keys.idempotency("k-ghost"), json.dumps({"job_id": "ghost", "fingerprint": request().fingerprint(),
                                                          "claimed_at": time.time() - 60}))
    job, created = svc.submit(request(), idempotency_key="k-ghost")
    assert created and job.id != "ghost"
    assert [m["args"] for m in drain(app)] == [[job.id]]
    again, created_again = svc.submit(request(), idempotency_key="k-ghost")  # the client's retry
    assert (again.id, created_again) == (job.id, False)
    assert drain(app) == []


def test_a_replayed_job_that_fails_again_at_once_is_dead_lettered_again(svc, rt, app, alerts):
    job, _ = svc.submit(request())
    drain(app)
    lifecycle.dead_letter(rt, rt.jobs.get(job.id), "SynthesisRuntimeError", "boom", code="retry_exhausted")
    svc.replay(job.id)
    assert rt.dlq.ids() == []
    running = rt.jobs.get(job.id)
    rt.jobs.transition(job.id, {JobStatus.QUEUED}, status=JobStatus.RUNNING)
    lifecycle.dead_letter(rt, running, "SynthesisRuntimeError", "boom again", code="retry_exhausted")
    assert rt.dlq.ids() == [job.id] and rt.dlq.get(job.id)["error"] == "boom again"


def test_a_cancellation_is_in_the_job_history(svc, rt, app):
    job, _ = svc.submit(request())
    svc.cancel(job.id)
    (entry,) = rt.jobs.history(job.id)
    assert (entry["outcome"], entry["was"]) == ("cancelled", "queued")


def test_a_key_claimed_moments_ago_by_a_submit_still_storing_its_job_answers_in_use(svc, rt, app):
    # a retry that overtook its own first attempt, which has claimed the key and not stored its job yet
    IdempotencyKeys(rt.redis, ttl=60).claim(ResourceKind.JOB, "k-busy", "in-flight", request().fingerprint())
    with pytest.raises(IdempotencyKeyInUse):
        svc.submit(request(), idempotency_key="k-busy")
    assert drain(app) == [] and stored_job_keys(rt) == []
    assert IdempotencyKeys(rt.redis, ttl=60).holder(ResourceKind.JOB, "k-busy") == "in-flight"


def test_the_idempotency_key_of_a_deleted_job_names_nothing_and_is_free_again(svc, app):
    """Found by schemathesis: a retry with the key of a deleted job came back with the deleted job."""
    first, created = svc.submit(request(), idempotency_key="key-1")
    assert created
    svc.delete(first.id, first.tenant)
    second, created = svc.submit(request(), idempotency_key="key-1")
    assert created and second.id != first.id
    assert svc.submit(request(), idempotency_key="key-1") == (svc.get(second.id), False)

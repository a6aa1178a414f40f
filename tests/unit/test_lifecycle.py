"""The job lifecycle on fakeredis: the guarded transition, attempts, dead-lettering, retries and hooks."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import fakeredis
import pytest
from celery.exceptions import Retry, SoftTimeLimitExceeded
from unit_helpers import drain, memory_app

import engine
from engine.exceptions import (
    EncodingError,
    OptionError,
    SynthesisRuntimeError,
    UnknownVoiceError,
)
from settings import Settings
from tasks import keys, lease, lifecycle, webhooks
from tasks.exceptions import JobNotFound
from tasks.job import Job, JobStore, now
from tasks.lifecycle import HOSTNAME, begin_attempt, dead_letter, fail_or_retry
from tasks.runtime import Runtime
from tasks.status import JobStatus

FINAL = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
UNFINISHED = {JobStatus.QUEUED, JobStatus.RUNNING}


@pytest.fixture
def rt(tmp_path) -> Runtime:
    runtime = Runtime(Settings(redis_url="redis://fake/0", retry_jitter=False, max_attempts=3, base_delay_ms=100,
                               max_delay_ms=5000, exponential_base=2.0, data_dir=str(tmp_path)))
    runtime.redis = fakeredis.FakeRedis()  # the cached property, set before first use
    runtime.celery = memory_app("test-lifecycle")  # retries are published: read back with drain()
    drain(runtime.celery)
    return runtime


@pytest.fixture
def hooks(monkeypatch) -> dict[str, list[Any]]:
    """Started- and finished-hook calls; only these two hooks are registered."""
    monkeypatch.setattr(lifecycle, "_finished_hooks", [])
    monkeypatch.setattr(lifecycle, "_started_hooks", [])
    calls: dict[str, list[Any]] = {"started": [], "finished": []}
    lifecycle.on_started(lambda rt, job: calls["started"].append((job.id, job.status)))
    lifecycle.on_finished(lambda rt, jobs: calls["finished"].append([(j.id, j.status) for j in jobs]))
    return calls


def make_job(rt: Runtime, status: JobStatus = JobStatus.QUEUED, **fields: Any) -> Job:
    created = now()
    job = Job(id=fields.pop("id", f"job-{status.value}-{len(rt.redis.keys('tts:job:*'))}"), text="Hello there.",
              voice="heart", status=status, created_at=created, queued_at=created, max_attempts=3,
              correlation_id="corr-1", **fields)
    rt.jobs.create(job)
    return job


class RecordingTask:
    """The part of a Celery task fail_or_retry uses: ``retry`` returns the exception to raise."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def retry(self, countdown: float, exc: Exception, max_retries: int | None) -> Retry:
        self.calls.append({"countdown": countdown, "exc": exc, "max_retries": max_retries})
        return Retry(exc=exc, when=countdown)


def test_notify_sends_nothing_without_webhook_urls(monkeypatch):
    # what dead_letter's alerts do when TTS_WEBHOOK_URLS is unset (the tests here record them instead)
    monkeypatch.setattr(webhooks, "get_settings", lambda: Settings())
    queued: list[Any] = []
    monkeypatch.setattr(webhooks, "enqueue_payload", lambda payload: queued.append(payload) or 1)
    assert webhooks.notify("job.failed", job_id="x", error="e", attempts=1) == 0
    assert queued == []


# --- JobStore.transition ------------------------------------------------------------------------
@pytest.mark.parametrize("final", FINAL)
def test_transition_never_overwrites_a_final_status(rt, final):
    job = make_job(rt, final, error="kept")
    before = rt.redis.hgetall(keys.job(job.id))
    for target in (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED):
        assert rt.jobs.transition(job.id, UNFINISHED, status=target, error=None, worker="w") is False
    assert rt.redis.hgetall(keys.job(job.id)) == before
    assert rt.jobs.status(job.id) is final


def test_transition_applies_sets_and_deletes_when_the_status_matches(rt):
    job = make_job(rt, JobStatus.QUEUED, error="old", next_retry_at=123.0)
    assert rt.jobs.transition(job.id, UNFINISHED, status=JobStatus.RUNNING, worker="w1", attempts=2,
                              error=None, next_retry_at=None)
    stored = rt.jobs.get(job.id)
    assert (stored.status, stored.worker, stored.attempts) == (JobStatus.RUNNING, "w1", 2)
    assert stored.error is None and stored.next_retry_at is None
    assert rt.redis.hget(keys.job(job.id), "error") is None


def test_transition_of_a_missing_job_creates_nothing(rt):
    assert rt.jobs.transition("ghost", UNFINISHED, status=JobStatus.RUNNING) is False
    assert not rt.redis.exists(keys.job("ghost"))


def test_transition_refreshes_the_ttl(rt):
    job = make_job(rt)
    rt.redis.expire(keys.job(job.id), 5)
    rt.jobs.transition(job.id, UNFINISHED, status=JobStatus.RUNNING)
    assert rt.redis.ttl(keys.job(job.id)) > rt.settings.result_ttl - 5


def test_job_round_trips_through_the_store(rt):
    job = make_job(rt, JobStatus.SUCCEEDED, speed=1.25, sample_rate=16000, seed=3, markdown=True, cache=False,
                   duration=1.5, batch_id="b", batch_index=2, extra={"audio_deleted": True}, name="n")
    assert rt.jobs.get(job.id) == job


def test_update_sets_deletes_and_history_is_oldest_first(rt):
    job = make_job(rt)
    rt.jobs.update(job.id, error="x", worker="w")
    rt.jobs.update(job.id, error=None)
    stored = rt.jobs.get(job.id)
    assert (stored.error, stored.worker) == (None, "w")
    rt.jobs.add_history(job.id, {"attempt": 1})
    rt.jobs.add_history(job.id, {"attempt": 2})
    assert rt.jobs.history(job.id) == [{"attempt": 1}, {"attempt": 2}]


def test_create_many_get_and_delete(rt):
    store = JobStore(rt.redis, ttl=100, results=rt.result_store)
    jobs = [Job(id=f"m{i}", text="t", voice="heart", created_at=now() - i) for i in range(3)]
    store.create_many(jobs)
    assert [store.get(j.id) for j in jobs] == jobs
    assert 0 < rt.redis.ttl(keys.job("m0")) <= 100
    store.delete("m1")
    with pytest.raises(JobNotFound):
        store.get("m1")
    assert store.status("m1") is None
    assert rt.redis.zscore(keys.JOBS_INDEX, "m1") is None
    assert rt.redis.zcard(keys.JOBS_INDEX) == 2


# --- begin_attempt -------------------------------------------------------------------------------
def test_begin_attempt_counts_the_attempt_and_marks_the_job_running(rt, hooks):
    job = make_job(rt)
    attempt = begin_attempt(rt, job, "task-1")
    assert attempt is not None and attempt.number == 1 and attempt.job is job
    stored = rt.jobs.get(job.id)
    assert (stored.status, stored.attempts, stored.task_id, stored.worker) == (
        JobStatus.RUNNING, 1, "task-1", HOSTNAME)
    assert stored.started_at == attempt.started_at
    assert hooks["started"] == [(job.id, JobStatus.RUNNING)]
    assert hooks["finished"] == []


def test_begin_attempt_dead_letters_with_worker_lost_past_max_attempts(rt, hooks, alerts):
    job = make_job(rt, task_id="task-1")
    # three deliveries of the same message that started and never reported back: the
    # worker died under each, and its lease expired before the message came back
    for expected in (1, 2, 3):
        attempt = begin_attempt(rt, rt.jobs.get(job.id), "task-1")
        assert attempt is not None and attempt.number == expected
        rt.redis.delete(keys.lease(job.id))  # what the lease's TTL does once nobody renews it
    assert begin_attempt(rt, rt.jobs.get(job.id), "task-1") is None

    stored = rt.jobs.get(job.id)
    assert stored.status is JobStatus.FAILED
    assert stored.error_code == "worker_lost"
    assert stored.error_type == "WorkerLostError"
    assert stored.attempts == 4
    assert rt.dlq.ids() == [job.id]
    assert rt.dlq.get(job.id)["error_code"] == "worker_lost"
    assert rt.jobs.history(job.id)[-1]["error"] == "WorkerLostError"
    assert rt.jobs.history(job.id)[-1]["attempt"] == 3
    assert [event for event, _ in alerts] == ["job.retry_exhausted", "job.failed"]
    assert alerts[1][1]["job_id"] == job.id and alerts[1][1]["correlation_id"] == "corr-1"
    assert hooks["finished"] == [[(job.id, JobStatus.FAILED)]]
    assert len(hooks["started"]) == 3
    assert rt.redis.get(keys.lease(job.id)) is None  # the dead-lettering delivery let its lease go


def test_begin_attempt_takes_the_lease_and_a_duplicate_delivery_is_dropped(rt, hooks):
    job = make_job(rt, task_id="task-1")
    attempt = begin_attempt(rt, rt.jobs.get(job.id), "task-1")
    assert attempt is not None
    holder = lease.holder(rt.redis, job.id)
    assert holder == lease.LeaseHolder(task_id="task-1", host=HOSTNAME, pid=os.getpid())
    assert 0 < rt.redis.pttl(keys.lease(job.id)) <= rt.settings.lease_seconds * 1000
    # kombu hands the same message to another worker while this attempt lives: dropped, not counted
    assert begin_attempt(rt, rt.jobs.get(job.id), "task-1") is None
    assert rt.jobs.get(job.id).attempts == 1
    attempt.lease.release()
    assert rt.redis.get(keys.lease(job.id)) is None


def test_a_stale_delivery_of_an_earlier_series_is_dropped(rt, hooks):
    job = make_job(rt, task_id="task-new")  # the job was sent again (replay, retry, reconciler) as task-new
    assert begin_attempt(rt, rt.jobs.get(job.id), "task-old") is None
    stored = rt.jobs.get(job.id)
    assert (stored.status, stored.attempts, stored.task_id) == (JobStatus.QUEUED, 0, "task-new")
    assert rt.redis.get(keys.lease(job.id)) is None
    assert hooks["started"] == []


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(rt, hooks):
    job = make_job(rt, task_id="task-1")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead_pid = int(child.stdout)  # that process has exited: a SIGKILLed pool child looks the same
    rt.redis.set(keys.lease(job.id), lease.LeaseHolder("task-1", HOSTNAME, dead_pid).value(), px=30_000)
    rt.jobs.update(job.id, attempts=1)  # the dead process's attempt
    attempt = begin_attempt(rt, rt.jobs.get(job.id), "task-1")
    assert attempt is not None and attempt.number == 2
    assert lease.holder(rt.redis, job.id) == lease.LeaseHolder("task-1", HOSTNAME, os.getpid())
    (entry,) = rt.jobs.history(job.id)  # the lost attempt is in the history
    assert (entry["outcome"], entry["attempt"], entry["pid"]) == ("worker_lost", 1, dead_pid)


def test_the_lease_of_another_host_is_respected_until_it_expires(rt, hooks):
    job = make_job(rt, task_id="task-1")
    rt.redis.set(keys.lease(job.id), lease.LeaseHolder("task-1", "other-host", 1).value(), px=30_000)
    assert begin_attempt(rt, rt.jobs.get(job.id), "task-1") is None
    rt.redis.delete(keys.lease(job.id))
    assert begin_attempt(rt, rt.jobs.get(job.id), "task-1") is not None


def test_a_kept_alive_lease_is_renewed_and_a_lost_one_is_not_touched(rt):
    job = make_job(rt, task_id="task-1")
    held = lease.Lease(rt.redis, job.id, "task-1", ttl=3)
    assert held.acquire()
    rt.redis.pexpire(keys.lease(job.id), 1500)
    assert held.renew() and rt.redis.pttl(keys.lease(job.id)) > 2000
    rt.redis.set(keys.lease(job.id), "someone-else")
    assert not held.renew()
    held.release()
    assert rt.redis.get(keys.lease(job.id)) == b"someone-else"


def test_begin_attempt_on_a_finished_job_does_nothing(rt, hooks):
    job = make_job(rt, JobStatus.SUCCEEDED)
    assert begin_attempt(rt, job, "task-x") is None
    stored = rt.jobs.get(job.id)
    assert stored.attempts == 0 and stored.status is JobStatus.SUCCEEDED and stored.task_id is None
    assert hooks == {"started": [], "finished": []}


def test_begin_attempt_loses_to_a_cancellation_made_meanwhile(rt, hooks):
    job = make_job(rt)
    stale = rt.jobs.get(job.id)  # the worker read the job while it was queued ...
    rt.jobs.update(job.id, status=JobStatus.CANCELLED)  # ... and the API cancelled it
    assert begin_attempt(rt, stale, "task-1") is None
    assert rt.jobs.status(job.id) is JobStatus.CANCELLED
    assert hooks["started"] == []


# --- dead_letter ---------------------------------------------------------------------------------
def test_dead_letter_records_once_even_when_called_twice(rt, hooks, alerts):
    job = make_job(rt, JobStatus.RUNNING, attempts=3)
    dead_letter(rt, job, "OptionError", "bad option", "Traceback ...", code="invalid_option")
    dead_letter(rt, rt.jobs.get(job.id), "OptionError", "bad option again", code="invalid_option")

    assert rt.dlq.ids() == [job.id]
    record = rt.dlq.get(job.id)
    assert (record["error_type"], record["error"], record["error_code"]) == ("OptionError", "bad option",
                                                                               "invalid_option")
    assert record["traceback"] == "Traceback ..."
    assert record["attempts"] == 3 and record["worker"] == HOSTNAME
    assert record["request"]["text"] == "Hello there." and record["request"]["voice"] == "heart"
    stored = rt.jobs.get(job.id)
    assert (stored.status, stored.error, stored.error_code) == (JobStatus.FAILED, "bad option", "invalid_option")
    assert stored.finished_at is not None
    assert [event for event, _ in alerts] == ["job.failed"]
    assert hooks["finished"] == [[(job.id, JobStatus.FAILED)]]


def test_dead_letter_without_a_code_is_synthesis_failed(rt, alerts):
    job = make_job(rt, JobStatus.RUNNING)
    dead_letter(rt, job, "RuntimeError", "boom")
    assert rt.jobs.get(job.id).error_code == "synthesis_failed"


def test_dead_letter_of_a_cancelled_job_does_nothing(rt, hooks, alerts):
    job = make_job(rt, JobStatus.CANCELLED)
    dead_letter(rt, job, "RuntimeError", "boom")
    assert rt.jobs.status(job.id) is JobStatus.CANCELLED
    assert len(rt.dlq) == 0 and alerts == [] and hooks["finished"] == []


# --- fail_or_retry -------------------------------------------------------------------------------
def run_failure(rt: Runtime, job: Job, exc: Exception, attempt: int, **kwargs: Any):
    task = RecordingTask()
    try:
        outcome = fail_or_retry(task, rt, job, exc, attempt, {"started_at": job.started_at}, **kwargs)
    except Retry as retry:
        return task, retry
    return task, outcome


@pytest.mark.parametrize("exc, code", [(OptionError("speed out of range"), "invalid_option"),
                                       (UnknownVoiceError("nobody", ["heart"]), "unknown_voice")])
def test_a_permanent_engine_error_dead_letters_with_its_code(rt, hooks, alerts, exc, code):
    job = make_job(rt, JobStatus.RUNNING, attempts=1, started_at=now())
    cleaned: list[bool] = []
    task, outcome = run_failure(rt, job, exc, 1, cleanup=lambda: cleaned.append(True))

    assert outcome == {"job_id": job.id, "status": "failed"}
    assert task.calls == []  # no retry
    stored = rt.jobs.get(job.id)
    assert (stored.status, stored.error_code, stored.error_type) == (JobStatus.FAILED, code, type(exc).__name__)
    assert stored.error == str(exc)
    assert rt.dlq.get(job.id)["error_code"] == code
    assert f"{type(exc).__name__}: {exc}" in rt.dlq.get(job.id)["traceback"]
    (entry,) = rt.jobs.history(job.id)
    assert entry["outcome"] == "failed" and entry["attempt"] == 1 and entry["worker"] == HOSTNAME
    assert entry["error"] == f"{type(exc).__name__}: {exc}"
    assert cleaned == [True]
    assert [event for event, _ in alerts] == ["job.failed"]
    assert hooks["finished"] == [[(job.id, JobStatus.FAILED)]]


def test_a_permanent_failure_names_its_subject(rt, alerts):
    job = make_job(rt, JobStatus.RUNNING, attempts=1)
    run_failure(rt, job, OptionError("bad"), 1, subject="part 2 of 5")
    assert rt.jobs.get(job.id).error == "part 2 of 5: bad"


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_transient_error_is_retried_as_a_new_delivery_after_the_policy_delay(rt, hooks, alerts, attempt):
    job = make_job(rt, JobStatus.RUNNING, attempts=attempt, started_at=now(), task_id="task-1")
    exc = SynthesisRuntimeError("onnxruntime hiccup")
    before = now()
    task, outcome = run_failure(rt, job, exc, attempt)

    expected = rt.retry_policy.delay_seconds(attempt)
    assert expected == pytest.approx(0.1 * 2 ** (attempt - 1))  # jitter is off in these settings
    assert outcome == {"job_id": job.id, "status": "retrying"}
    assert task.calls == []  # not Celery's retry: a new message with its own id
    stored = rt.jobs.get(job.id)
    assert stored.status is JobStatus.QUEUED  # waiting for its retry
    assert stored.next_retry_at == pytest.approx(stored.queued_at)
    assert before + expected <= stored.next_retry_at <= now() + expected
    assert (stored.error, stored.error_type, stored.error_code) == (
        "onnxruntime hiccup", "SynthesisRuntimeError", "synthesis_failed")
    (message,) = drain(rt.celery)
    assert message["id"] == stored.task_id != "task-1" and message["args"] == [job.id]
    assert message["eta"] is not None  # the countdown travels with the message
    (entry,) = rt.jobs.history(job.id)
    assert entry["retry_in"] == round(expected, 4) and entry["attempt"] == attempt
    assert len(rt.dlq) == 0 and alerts == [] and hooks["finished"] == []


def test_a_transient_error_without_a_code_is_transient_error(rt):
    job = make_job(rt, JobStatus.RUNNING, attempts=1)
    _, outcome = run_failure(rt, job, ConnectionResetError("reset"), 1)
    assert outcome["status"] == "retrying"
    assert rt.jobs.get(job.id).error_code == "transient_error"
    assert len(drain(rt.celery)) == 1


def test_a_soft_time_limit_is_retried_as_a_runtime_error(rt):
    job = make_job(rt, JobStatus.RUNNING, attempts=1)
    _, outcome = run_failure(rt, job, SoftTimeLimitExceeded(), 1)
    assert outcome["status"] == "retrying"
    stored = rt.jobs.get(job.id)
    assert stored.error_type == "SynthesisRuntimeError" and "soft time limit of 600s" in (stored.error or "")
    assert rt.jobs.history(job.id)[0]["retry_in"] == pytest.approx(0.1)
    assert len(drain(rt.celery)) == 1


def test_a_retry_that_does_not_requeue_leaves_the_job_running(rt):
    job = make_job(rt, JobStatus.RUNNING, attempts=1)
    _, raised = run_failure(rt, job, EncodingError("encoder hiccup"), 1, requeue_job=False)
    assert isinstance(raised, Retry)
    stored = rt.jobs.get(job.id)
    assert stored.status is JobStatus.RUNNING and stored.error is None


def test_a_transient_error_on_the_last_attempt_dead_letters_as_retry_exhausted(rt, hooks, alerts):
    job = make_job(rt, JobStatus.RUNNING, attempts=3)
    task, outcome = run_failure(rt, job, SynthesisRuntimeError("still failing"), 3)
    assert outcome == {"job_id": job.id, "status": "failed"}
    assert task.calls == []
    stored = rt.jobs.get(job.id)
    assert (stored.status, stored.error_code) == (JobStatus.FAILED, "retry_exhausted")
    assert rt.dlq.get(job.id)["error_code"] == "retry_exhausted"
    assert [event for event, _ in alerts] == ["job.retry_exhausted", "job.failed"]
    assert hooks["finished"] == [[(job.id, JobStatus.FAILED)]]


def test_a_failure_of_a_job_cancelled_meanwhile_changes_nothing(rt, hooks, alerts):
    job = make_job(rt, JobStatus.CANCELLED, attempts=1)
    _, outcome = run_failure(rt, job, OptionError("bad"), 1)
    assert outcome["status"] == "failed"
    assert rt.jobs.status(job.id) is JobStatus.CANCELLED
    assert len(rt.dlq) == 0 and alerts == [] and hooks["finished"] == []


def test_with_jitter_on_the_countdown_stays_within_the_cap():
    runtime = Runtime(Settings(redis_url="redis://fake/0", retry_jitter=True, base_delay_ms=100))
    runtime.redis = fakeredis.FakeRedis()
    runtime.celery = memory_app("test-lifecycle-jitter")
    drain(runtime.celery)
    delays = []
    for i in range(30):
        job = make_job(runtime, JobStatus.RUNNING, attempts=2, id=f"jit-{i}")
        _, outcome = run_failure(runtime, job, SynthesisRuntimeError("x"), 2)
        assert outcome["status"] == "retrying"
        delays.append(runtime.jobs.history(job.id)[0]["retry_in"])
    assert len(drain(runtime.celery)) == 30
    assert all(0.0 <= d <= 0.2 for d in delays)
    assert len(set(delays)) > 1


# --- hooks ---------------------------------------------------------------------------------------
def test_finished_hooks_receive_the_finished_jobs(rt, hooks):
    jobs = [make_job(rt, JobStatus.SUCCEEDED, id="h1"), make_job(rt, JobStatus.FAILED, id="h2")]
    lifecycle.finished(rt, jobs)
    assert hooks["finished"] == [[("h1", JobStatus.SUCCEEDED), ("h2", JobStatus.FAILED)]]


def test_finished_with_no_jobs_calls_no_hook(rt, hooks):
    lifecycle.finished(rt, [])
    assert hooks["finished"] == []


def test_a_hook_registered_twice_runs_once(rt, monkeypatch):
    monkeypatch.setattr(lifecycle, "_finished_hooks", [])
    calls: list[int] = []

    def hook(rt, jobs):
        calls.append(len(jobs))

    assert lifecycle.on_finished(hook) is hook
    lifecycle.on_finished(hook)
    lifecycle.finished(rt, [make_job(rt, JobStatus.SUCCEEDED)])
    assert calls == [1]


def test_every_registered_hook_runs_in_order(rt, monkeypatch):
    monkeypatch.setattr(lifecycle, "_finished_hooks", [])
    order: list[str] = []
    lifecycle.on_finished(lambda rt, jobs: order.append("first"))
    lifecycle.on_finished(lambda rt, jobs: order.append("second"))
    lifecycle.finished(rt, [make_job(rt, JobStatus.SUCCEEDED)])
    assert order == ["first", "second"]


def test_a_bug_of_ours_dead_letters_as_internal_error_without_a_retry_exhausted_alert(rt, hooks, alerts):
    job = make_job(rt, JobStatus.RUNNING, attempts=1)
    task, outcome = run_failure(rt, job, KeyError("missing"), 1)
    assert outcome["status"] == "failed" and task.calls == []  # not worth a retry
    assert rt.jobs.get(job.id).error_code == "internal_error"
    assert [event for event, _ in alerts] == ["job.failed"]


def test_the_last_transient_failure_is_retry_exhausted(rt, alerts):
    job = make_job(rt, JobStatus.RUNNING, attempts=3)
    _, outcome = run_failure(rt, job, SynthesisRuntimeError("again"), 3)
    assert outcome["status"] == "failed"
    assert rt.jobs.get(job.id).error_code == "retry_exhausted"
    assert [event for event, _ in alerts] == ["job.retry_exhausted", "job.failed"]


def test_a_superseded_attempt_drops_its_result(rt, hooks):
    job = make_job(rt, JobStatus.RUNNING, attempts=1, task_id="task-1")
    lifecycle.send_again(rt, job.id, {JobStatus.RUNNING}, "task-1", "its worker was lost")  # the reconciler
    result = engine.SynthesisResult(audio=b"RIFF....", format="wav", media_type="audio/wav", sample_rate=24000,
                                    duration=1.0, characters=12, chunks=1, voice="heart", synthesis_seconds=0.1)
    outcome = lifecycle.succeed(rt, job, result, now())
    assert outcome["status"] == "superseded"
    assert rt.jobs.status(job.id) is JobStatus.QUEUED and rt.jobs.audio(job.id) is None
    assert hooks["finished"] == [] and [m["args"] for m in drain(rt.celery)] == [[job.id]]

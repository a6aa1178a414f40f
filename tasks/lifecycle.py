"""The job lifecycle: every change of a job's state made by a worker goes through here.

``queued → running → succeeded | failed | cancelled``. The synthesize task, the part
task of a fanned-out job, its stitch, and the worker's time-limit handlers all call
the same few functions:

* :func:`begin_attempt`: count the delivery *before* any work, then mark the job
  running. A job whose deliveries keep killing the worker (``task_reject_on_worker_lost``
  requeues it each time) is dead-lettered once it has used up its attempts, instead of
  looping forever.
* :func:`succeed`: store the audio, cache it, mark the job succeeded, count it.
* :func:`fail_or_retry`: classify an exception with the retry policy; a transient one
  is retried with backoff (``Task.retry``), anything else, or the last attempt,
  dead-letters the job.
* :func:`dead_letter`: the one failure path. The status transition is the lock: a job
  is marked failed, recorded in the dead-letter queue and alerted about once, however
  many parts or handlers race to fail it.
* :func:`cancel_jobs`: the API's cancellation of unfinished jobs, one or many.
* :func:`retry_after_time_limit`: a child killed by the hard time limit is acknowledged
  by Celery, not requeued; the worker's main process sends the work again from here.

Every transition goes through :meth:`JobStore.transition`, a guarded compare-and-set:
a final status is never overwritten, and a redelivered message for a finished job
does nothing.

The finished-hooks run after the final transition, in the same process: one killed in
between never runs them. So a job with a ``callback_url`` also enters the callback
outbox in its final transition itself (:func:`outbox_of`); ``tasks.callbacks`` queues the
callback from a hook and takes the member out, and the reconciler's sweep queues what a
dead process left there.

Other concepts learn about jobs through hooks, not imports back into the tasks: a
batch counts its items with :func:`on_started` and :func:`on_finished` hooks
(``tasks.batches`` registers them), so this module imports nothing that imports it.
"""
from __future__ import annotations

import logging
import os
import signal
import traceback as tb
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import kombu.exceptions
import redis
from celery.exceptions import SoftTimeLimitExceeded

import engine
from engine.exceptions import EngineError, SynthesisRuntimeError
from monitoring.correlation import bind
from monitoring.recorder import JOBS_CANCELLED

from . import keys
from .celery_app import SYNTHESIS_QUEUE
from .exceptions import JobNotFound
from .job import Job, now
from .lease import HOSTNAME, Lease
from .publish import SYNTHESIZE_PART_TASK, enqueue, send_tasks
from .retry import is_transient
from .runtime import Runtime
from .status import JobStatus
from .webhooks import notify

log = logging.getLogger(__name__)

__all__ = [
    "HOSTNAME",
    "Attempt",
    "Failure",
    "JobCancelled",
    "begin_attempt",
    "bind_task",
    "bookkeeping",
    "cancel_jobs",
    "dead_letter",
    "fail_or_retry",
    "inject_fault",
    "inject_fault_after_finish",
    "load_task_job",
    "on_finished",
    "on_started",
    "outbox_of",
    "retry_after_time_limit",
    "succeed",
]

UNFINISHED = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
#: What Redis (job store or broker) raises when it is unreachable or fails mid-command.
BROKER_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, kombu.exceptions.OperationalError)

#: Called with the job when an attempt starts.
StartedHook = Callable[[Runtime, Job], None]
#: Called with jobs that just reached a final status (each with its final status and duration).
FinishedHook = Callable[[Runtime, Sequence[Job]], None]
_started_hooks: list[StartedHook] = []
_finished_hooks: list[FinishedHook] = []


class JobCancelled(Exception):
    """The job was cancelled (or failed elsewhere) while this task ran."""


# --- hooks -----------------------------------------------------------------------------------
def on_started(hook: StartedHook) -> StartedHook:
    """Register ``hook(rt, job)`` to run when an attempt of a job starts (usable as a decorator)."""
    if hook not in _started_hooks:
        _started_hooks.append(hook)
    return hook


def on_finished(hook: FinishedHook) -> FinishedHook:
    """Register ``hook(rt, jobs)`` to run when jobs reach a final status (usable as a decorator)."""
    if hook not in _finished_hooks:
        _finished_hooks.append(hook)
    return hook


def finished(rt: Runtime, jobs: Sequence[Job]) -> None:
    """Tell every finished-hook that ``jobs`` reached their final status."""
    if not jobs:
        return
    for hook in _finished_hooks:
        hook(rt, jobs)


def _started(rt: Runtime, job: Job) -> None:
    for hook in _started_hooks:
        hook(rt, job)


# --- what every task does first ------------------------------------------------------------------
def load_task_job(rt: Runtime, job_id: str, dropping: str) -> Job | None:
    """The job a task was sent for, or None (logged) when it expired or was deleted meanwhile."""
    try:
        return rt.jobs.get(job_id)
    except JobNotFound:
        log.warning("job %s no longer exists (expired or deleted); dropping %s", job_id, dropping)
        return None


def bind_task(task: Any, job: Job) -> Any:
    """Bind the correlation id (the task header's, else the job's), job id and voice to log lines."""
    headers = task.request.headers or {}
    correlation_id = headers.get("correlation_id") if isinstance(headers, dict) else None
    return bind(correlation_id=correlation_id or job.correlation_id, job_id=job.id, voice=job.voice)


def inject_fault(rt: Runtime, job: Job, attempt: int) -> None:
    """The test-only fault switch (``TTS_FAULT_INJECTION``); never reachable from the API.

    ``attempt`` is the delivery being made: the job's, or a part's own count.
    """
    kind, count = rt.settings.fault
    if not kind:
        return
    if kind == "transient" and attempt <= count:
        raise SynthesisRuntimeError(f"injected transient fault on attempt {attempt} of {count}")
    if kind == "permanent":
        raise EngineError("injected permanent fault")
    if kind == "crash" and (count == 0 or attempt <= count):
        log.warning("fault injection: killing worker process %d for job %s", os.getpid(), job.id)
        os.kill(os.getpid(), signal.SIGKILL)


def inject_fault_after_finish(rt: Runtime, job: Job) -> None:
    """The test-only ``crash_before_callback`` fault: SIGKILL this worker process right after
    ``job``'s final transition committed and before any finished-hook ran (its callback is in
    the outbox, not queued). Called by :func:`succeed` only, which runs in a worker, never in the API.
    """
    if rt.settings.fault[0] == "crash_before_callback":
        log.warning("fault injection: killing worker process %d after job %s finished, before its hooks",
                    os.getpid(), job.id)
        os.kill(os.getpid(), signal.SIGKILL)


def outbox_of(job: Job) -> str | None:
    """The outbox member a job's final transition (or a record stored final: a cache hit) adds:
    its id when a callback is owed (``callback_url`` set), else None. ``tasks.callbacks`` takes it
    out once the callback is queued."""
    return job.id if job.callback_url else None


@dataclass
class Attempt:
    """One delivery of a job to a worker that got as far as running, with its lease."""

    job: Job
    number: int
    started_at: float
    lease: Lease


def begin_attempt(rt: Runtime, job: Job, task_id: str | None) -> Attempt | None:
    """Take the job's lease, count this delivery and mark the job running; None when there is nothing to do.

    Nothing to do: the job already finished (a redelivery); the message is a stale
    delivery (the record names a newer one: the job was sent again after its worker
    was lost, or retried); a live attempt holds the lease (a duplicate delivery of the
    same message); the job used up its attempts on deliveries that never reported
    back (dead-lettered here as ``worker_lost``); or another transition won the race
    (cancelled meanwhile). The caller keeps the lease alive while it works and
    releases it at the end (:meth:`Lease.kept_alive`, :meth:`Lease.release`).
    """
    if job.status.finished:
        log.info("job %s is already %s; nothing to do", job.id, job.status.value)
        return None
    if task_id and job.task_id and task_id != job.task_id:
        log.info("job %s: delivery %s is stale (the job was sent again as %s); dropped", job.id, task_id,
                 job.task_id)
        return None
    lease = Lease(rt.redis, job.id, task_id or "", rt.settings.lease_seconds)
    if not lease.acquire():
        log.info("job %s is held by a live attempt; duplicate delivery %s dropped", job.id, task_id)
        return None
    try:
        number = rt.jobs.incr_attempts(job.id)
        job.attempts = number
        if lease.took_over is not None:  # the previous attempt's process died holding it
            rt.jobs.add_history(job.id, {"attempt": number - 1, "outcome": "worker_lost", "at": now(),
                                         "worker": lease.took_over.host, "pid": lease.took_over.pid,
                                         "error": "its worker process died during the attempt"})
        if number > job.max_attempts:
            # Earlier deliveries started but never reported back: the worker died under them.
            rt.jobs.add_history(job.id, {"attempt": number - 1, "error": "WorkerLostError", "at": now()})
            dead_letter(rt, job, "WorkerLostError", f"the worker was lost during {number - 1} attempts",
                        code="worker_lost")
            lease.release()
            return None
        started = now()
        if not rt.jobs.transition(job.id, set(UNFINISHED), status=JobStatus.RUNNING, started_at=started,
                                  worker=HOSTNAME, next_retry_at=None, task_id=task_id):
            lease.release()
            return None
    except BaseException:
        lease.release()
        raise
    job.status, job.started_at = JobStatus.RUNNING, started
    wait = started - (job.queued_at or job.created_at)
    bookkeeping("job_started", rt.metrics.job_started, job.voice, SYNTHESIS_QUEUE, max(0.0, wait))
    _started(rt, job)
    log.info("job %s attempt %d/%d started", job.id, number, job.max_attempts,
             extra={"attempt": number, "queue_wait_seconds": round(wait, 3)})
    return Attempt(job=job, number=number, started_at=started, lease=lease)


def bookkeeping(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Metrics and alerts never fail a job: a Redis error here is logged, not raised."""
    try:
        call(*args, **kwargs)
    except BROKER_ERRORS as exc:
        log.warning("could not record %s: %s", what, exc)


def send_again(rt: Runtime, job_id: str, expected: set[JobStatus], seen_task_id: str | None, reason: str,
               countdown: float | None = None, history: dict[str, Any] | None = None,
               **changes: Any) -> str | None:
    """Send a job again as a new delivery; returns its task id, or None when the job moved on meanwhile.

    The record's status becomes ``queued`` and its ``task_id`` the new delivery's, in
    one guarded transition (status in ``expected`` and task id still ``seen_task_id``,
    with ``history`` appended in it); only then is the message published, so any older
    delivery still in the broker is recognised as stale and dropped. If the publish
    fails the record already says queued, and the reconciler sends it again on a later sweep.
    """
    task_id = uuid.uuid4().hex
    queued_at = now() + (countdown or 0.0)
    fields: dict[str, Any] = {"queued_at": queued_at, "next_retry_at": queued_at if countdown else None,
                              **changes}
    if not rt.jobs.transition(job_id, expected, task_id_is=seen_task_id, history=history, status=JobStatus.QUEUED,
                              task_id=task_id, **fields):
        return None
    job = rt.jobs.get(job_id)
    enqueue(rt, job, countdown=countdown, task_id=task_id)
    log.info("job %s sent again as %s (%s)", job_id, task_id, reason)
    return task_id


# --- success ------------------------------------------------------------------------------------
def succeed(rt: Runtime, job: Job, result: engine.SynthesisResult, started: float) -> dict[str, Any]:
    """Store a running job's audio, cache it, and mark the job succeeded in one transaction (once: the
    transition guards it).

    Only the current delivery may: an attempt that lost its lease (Redis paused, a
    worker cut off) while the reconciler sent the job again is superseded, and its
    result is dropped instead of overwriting the newer attempt's audio. The transition
    checks that the record is still running under this attempt's task id and names the
    audio (``audio_ref``) with the status, so there is no separate check that could be stale
    by the time the audio is named. The bytes go to the result store once, before the
    transition (a superseded attempt leaves an unnamed object that expires by itself), for as
    long as the job and its cache entry need them; the cache entry names the same object and
    is written before the transition too, so whoever sees the job succeed (a waiting
    ``/v1/audio/speech``) and asks again for the same text finds it cached. A superseded
    attempt's audio is as good an answer for its cache key as the current one's.
    """
    caching = bool(job.cache and job.cache_key)
    lives_until = rt.cache.keep_until() if caching else None
    audio_ref = rt.jobs.put_audio(result.audio, lives_until)
    if caching:
        try:
            rt.cache.put(job.cache_key or "", result.audio,
                         {"duration": round(result.duration, 3), "sample_rate": result.sample_rate},
                         ref=audio_ref, expires_at=lives_until)
        except Exception as exc:  # noqa: BLE001 - a cache failure must not fail the job
            log.warning("could not cache job %s audio: %s", job.id, exc)
    finished_at = now()
    duration = round(result.duration, 3)
    entry = {"attempt": job.attempts, "started_at": started, "finished_at": finished_at, "outcome": "succeeded",
             "worker": HOSTNAME}
    changed = rt.jobs.transition(
        job.id, {JobStatus.RUNNING}, task_id_is=job.task_id, history=entry, outbox=outbox_of(job),
        audio_ref=audio_ref, status=JobStatus.SUCCEEDED, finished_at=finished_at,
        audio_bytes=len(result.audio), duration=duration, output_sample_rate=result.sample_rate,
        media_type=result.media_type, synthesis_seconds=round(result.synthesis_seconds, 3),
        error=None, error_type=None, error_code=None,
    )
    if not changed:
        log.warning("job %s: attempt %d is no longer the job's current one (sent again, cancelled or deleted "
                    "meanwhile); its result is dropped", job.id, job.attempts)
        return {"job_id": job.id, "status": "superseded"}
    inject_fault_after_finish(rt, job)
    job.status, job.finished_at, job.duration = JobStatus.SUCCEEDED, finished_at, duration
    bookkeeping("job_succeeded", rt.metrics.job_succeeded, job.voice, SYNTHESIS_QUEUE,
                result.synthesis_seconds, finished_at - job.created_at, result.characters, result.duration)
    log.info("job %s succeeded: %.1fs of audio in %.2fs", job.id, result.duration, result.synthesis_seconds,
             extra={"audio_seconds": round(result.duration, 3),
                    "synthesis_seconds": round(result.synthesis_seconds, 3),
                    "characters": result.characters})
    finished(rt, [job])
    return {"job_id": job.id, "status": "succeeded"}


# --- failure ------------------------------------------------------------------------------------
@dataclass
class Failure:
    """An exception as the lifecycle sees it: its type, message, code and traceback."""

    exc: Exception
    error_type: str
    message: str
    code: str | None
    permanent: bool

    @classmethod
    def of(cls, exc: Exception, soft_time_limit: float) -> Failure:
        """Classify ``exc``; a soft time limit counts as a transient runtime error."""
        if isinstance(exc, SoftTimeLimitExceeded):
            exc = SynthesisRuntimeError(f"synthesis exceeded the soft time limit of {soft_time_limit}s")
        code = getattr(exc, "code", None) if isinstance(exc, EngineError) else None
        permanent = isinstance(exc, EngineError) and exc.permanent
        return cls(exc=exc, error_type=type(exc).__name__, message=str(exc) or type(exc).__name__, code=code,
                   permanent=permanent)

    @property
    def dead_letter_code(self) -> str:
        """The error code a job failed by this gets: the engine's own, retries used up, or a bug of ours."""
        if self.permanent:
            return self.code or "synthesis_failed"
        return "retry_exhausted" if is_transient(self.exc) else "internal_error"

    @property
    def trace(self) -> str:
        """The formatted traceback."""
        return "".join(tb.format_exception(type(self.exc), self.exc, self.exc.__traceback__))


def fail_or_retry(task: Any, rt: Runtime, job: Job, exc: Exception, attempt: int, history: dict[str, Any], *,
                  subject: str = "", requeue_job: bool = True,
                  cleanup: Callable[[], None] | None = None) -> dict[str, Any]:
    """Retry a failed attempt with the retry policy (raises Celery's ``Retry``) or dead-letter the job.

    ``attempt``: the number of this attempt (the job's, or a part's or stitch's own);
    ``history``: the entry to record (outcome, error and times are added); ``subject``:
    what failed, prefixed to the error message when the job is dead-lettered ("part 2
    of 5", "stitching"); ``requeue_job``: put the job itself back to ``queued`` while it
    waits (a whole job does; a part or a stitch leaves the job running); ``cleanup``:
    called after a dead-letter (a fanned-out job drops its parts).
    """
    failure = Failure.of(exc, rt.settings.task_soft_time_limit)
    failed_at = now()
    history = {**history, "attempt": attempt, "finished_at": failed_at,
               "error": f"{failure.error_type}: {failure.message}", "worker": HOSTNAME}
    history.setdefault("outcome", "failed")
    what = f"job {job.id} {subject}".rstrip()
    policy = rt.retry_policy
    if policy.should_retry(attempt, failure.exc):
        delay = policy.delay_seconds(attempt)
        history["retry_in"] = round(delay, 4)
        rt.jobs.add_history(job.id, history)
        bookkeeping("job_retried", rt.metrics.job_retried, job.voice, SYNTHESIS_QUEUE)
        log.warning("%s attempt %d failed (%s: %s); retrying in %.3fs", what, attempt, failure.error_type,
                    failure.message, delay)
        if requeue_job:  # a new delivery with a countdown; this message is done with
            send_again(rt, job.id, {JobStatus.RUNNING}, job.task_id, f"retry after attempt {attempt}", delay,
                       error=failure.message, error_type=failure.error_type,
                       error_code=failure.code or "transient_error")
            return {"job_id": job.id, "status": "retrying"}
        _retry(task, failure.exc, delay)
    rt.jobs.add_history(job.id, history)
    log.error("%s failed for good after %d attempt(s): %s: %s", what, attempt, failure.error_type, failure.message)
    message = f"{subject}: {failure.message}" if subject else failure.message
    dead_letter(rt, job, failure.error_type, message, failure.trace, code=failure.dead_letter_code)
    if cleanup is not None:
        cleanup()
    return {"job_id": job.id, "status": "failed"}


def _retry(task: Any, exc: Exception, delay: float) -> NoReturn:
    raise task.retry(countdown=delay, exc=exc, max_retries=None)


def dead_letter(rt: Runtime, job: Job, exc_type: str, message: str, trace: str = "", code: str | None = None) -> None:
    """Mark a job failed for good, keep a dead-letter record and alert once."""
    finished_at = now()
    changed = rt.jobs.transition(
        job.id, set(UNFINISHED), outbox=outbox_of(job), status=JobStatus.FAILED, finished_at=finished_at,
        error=message, error_type=exc_type, error_code=code or "synthesis_failed", next_retry_at=None,
    )
    if not changed:
        return
    job = rt.jobs.get(job.id)
    if rt.dlq.add(job, exc_type, message, trace, worker=HOSTNAME):
        bookkeeping("job_failed", rt.metrics.job_failed, job.voice, SYNTHESIS_QUEUE)
        bookkeeping("job_dead_lettered", rt.metrics.job_dead_lettered, job.voice, SYNTHESIS_QUEUE)
        fields = {"job_id": job.id, "error": f"{exc_type}: {message}", "attempts": job.attempts,
                  "correlation_id": job.correlation_id, "voice": job.voice, "batch_id": job.batch_id,
                  "tenant": job.tenant}
        if code in ("retry_exhausted", "worker_lost"):
            bookkeeping("the job.retry_exhausted alert", notify, "job.retry_exhausted", **fields)
        bookkeeping("the job.failed alert", notify, "job.failed", **fields)
    finished(rt, [job])


# --- cancellation -------------------------------------------------------------------------------
def cancel_jobs(rt: Runtime, jobs: Sequence[Job]) -> list[Job]:
    """Cancel the unfinished ones of ``jobs``; returns those this call cancelled.

    One guarded transition per job (each job needs its ``callback_url``: the transition
    puts an owed callback in the outbox), then one revoke broadcast, one metrics update
    per voice and one round of finished-hooks for all of them.
    """
    cancelled: list[Job] = []
    for job in jobs:
        at = now()
        if rt.jobs.transition(job.id, set(UNFINISHED), status=JobStatus.CANCELLED, finished_at=at, next_retry_at=None,
                              history={"attempt": job.attempts, "outcome": "cancelled", "at": at,
                                       "was": job.status.value}, outbox=outbox_of(job)):
            job.status = JobStatus.CANCELLED
            cancelled.append(job)
    task_ids = [job.task_id for job in cancelled if job.task_id]
    if task_ids:
        rt.celery.control.revoke(task_ids)
    per_voice: dict[str, int] = {}
    for job in cancelled:
        per_voice[job.voice] = per_voice.get(job.voice, 0) + 1
    for voice, count in per_voice.items():
        bookkeeping("jobs_cancelled", rt.metrics.count, JOBS_CANCELLED, float(count), voice=voice,
                     queue=SYNTHESIS_QUEUE)
    by_batch: dict[str | None, list[Job]] = {}
    for job in cancelled:
        by_batch.setdefault(job.batch_id, []).append(job)
    for group in by_batch.values():
        finished(rt, group)
    return cancelled


# --- the worker's main process: a child killed by the hard time limit ------------------------------
def retry_after_time_limit(rt: Runtime, job_id: str, exception: BaseException, part: int | None = None) -> None:
    """Send the work of a killed attempt again with backoff, or dead-letter the job after its last attempt.

    Celery acknowledges a task whose child the hard time limit killed, so nothing would
    redeliver it. ``part``: the part number for a fanned-out job's part task.
    """
    job = rt.jobs.get_unfinished(job_id)
    if job is None:
        return
    with bind(correlation_id=job.correlation_id, job_id=job_id, voice=job.voice):
        error_type = type(exception).__name__
        message = str(exception) or error_type
        if part is None:
            attempts = job.attempts
            entry: dict[str, Any] = {"outcome": "failed"}
        else:
            attempts = int(rt.redis.hget(keys.job_parts(job_id), f"attempts:{part}") or 0)
            entry = {"part": part, "outcome": "part_failed"}
        rt.jobs.add_history(job_id, {**entry, "attempt": attempts, "finished_at": now(),
                                     "error": f"{error_type}: {message}"})
        if attempts >= job.max_attempts:
            subject = f"part {part + 1}: " if part is not None else ""
            dead_letter(rt, job, error_type, subject + message, code="retry_exhausted")
            return
        delay = rt.retry_policy.delay_seconds(max(1, attempts))
        if part is None:
            send_again(rt, job_id, set(UNFINISHED), job.task_id, f"after {error_type}", delay, error=message,
                       error_type=error_type, error_code="time_limit")
        else:
            send_tasks(rt, SYNTHESIZE_PART_TASK, [([job_id, part], delay)], job.correlation_id)
        bookkeeping("job_retried", rt.metrics.job_retried, job.voice, SYNTHESIS_QUEUE)
        log.warning("job %s%s hit %s; retrying in %.3fs", job_id, f" part {part}" if part is not None else "",
                    error_type, delay)

"""The synthesize task: a job id in, audio and a finished job record out.

Idempotent: a redelivered message for a job that already finished does nothing. Each
delivery counts as an attempt in the job record *before* any work, so a job whose
attempts keep killing the worker (``task_reject_on_worker_lost`` requeues it each
time) is dead-lettered once it has used up its attempts instead of looping forever.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import traceback as tb
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

import engine
from engine.exceptions import EngineError, SynthesisRuntimeError
from engine.synthesis import AudioChunk
from monitoring.correlation import bind

from .celery_app import SYNTHESIS_QUEUE, celery_app
from .exceptions import JobNotFound
from .job import Job, now
from .runtime import Runtime, get_runtime
from .status import JobStatus

log = logging.getLogger(__name__)

__all__ = ["synthesize_job", "run_job", "dead_letter", "enqueue"]

HOSTNAME = socket.gethostname()


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


def enqueue(rt: Runtime, job: Job, countdown: float | None = None) -> str:
    """Send a job to the synthesis queue; returns the Celery task id."""
    headers = {"correlation_id": job.correlation_id} if job.correlation_id else None
    result = rt.celery.send_task("tts.synthesize", args=[job.id], queue=SYNTHESIS_QUEUE, countdown=countdown,
                                 headers=headers)
    return result.id


def _inject_fault(job: Job, rt: Runtime) -> None:
    """The test-only fault switch (``TTS_FAULT_INJECTION``); never reachable from the API."""
    kind, count = rt.settings.fault
    if not kind:
        return
    if kind == "transient" and job.attempts <= count:
        raise SynthesisRuntimeError(f"injected transient fault on attempt {job.attempts} of {count}")
    if kind == "permanent":
        raise EngineError("injected permanent fault")
    if kind == "crash" and (count == 0 or job.attempts <= count):
        log.warning("fault injection: killing worker process %d", os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)


def dead_letter(rt: Runtime, job: Job, exc_type: str, message: str, trace: str = "", code: str | None = None) -> None:
    """Mark a job failed for good, keep a dead-letter record and alert once."""
    finished = now()
    changed = rt.jobs.transition(
        job.id, {JobStatus.QUEUED, JobStatus.RUNNING}, status=JobStatus.FAILED, finished_at=finished,
        error=message, error_type=exc_type, error_code=code or "synthesis_failed", next_retry_at=None,
    )
    if not changed:
        return
    job = rt.jobs.get(job.id)
    if rt.dlq.add(job, exc_type, message, trace, worker=HOSTNAME):
        rt.metrics.job_failed(job.voice, SYNTHESIS_QUEUE)
        rt.metrics.job_dead_lettered(job.voice, SYNTHESIS_QUEUE)
        from .webhooks import notify

        fields = dict(job_id=job.id, error=f"{exc_type}: {message}", attempts=job.attempts,
                      correlation_id=job.correlation_id, voice=job.voice, batch_id=job.batch_id)
        if code in ("retry_exhausted", "worker_lost"):
            notify("job.retry_exhausted", **fields)
        notify("job.failed", **fields)
    _after_finish(rt, job.id)


def _after_finish(rt: Runtime, job_id: str) -> None:
    """Tell the job's batch (if any) that one more item is done."""
    from .batches import on_item_finished

    on_item_finished(rt, job_id)


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


def run_job(rt: Runtime, job: Job) -> engine.SynthesisResult:
    """Synthesize a job's text with the engine, checking for cancellation every few sentences."""

    def check_cancelled(piece: AudioChunk) -> None:
        if piece.index % 8 == 7 and rt.jobs.get(job.id).status is JobStatus.CANCELLED:
            raise JobCancelled(job.id)

    return engine.synthesize(job.text, engine.SynthesisOptions(**job.options()), rt.catalog,
                             on_chunk=check_cancelled)


@celery_app.task(bind=True, name="tts.synthesize", acks_late=True, reject_on_worker_lost=True, max_retries=None)
def synthesize_job(self: Any, job_id: str) -> dict[str, Any] | None:
    """Synthesize one job by id."""
    rt = get_runtime()
    job = load_task_job(rt, job_id, "its task")
    if job is None:
        return None
    with bind_task(self, job):
        return _synthesize(self, rt, job)


def _synthesize(task: Any, rt: Runtime, job: Job) -> dict[str, Any] | None:
    if job.status.finished:
        log.info("job %s is already %s; nothing to do", job.id, job.status.value)
        return None
    attempt = rt.jobs.incr_attempts(job.id)
    job.attempts = attempt
    if attempt > job.max_attempts:
        # Earlier deliveries started but never reported back: the worker died under them.
        message = f"the worker was lost during {attempt - 1} attempts"
        rt.jobs.add_history(job.id, {"attempt": attempt - 1, "error": "WorkerLostError", "at": now()})
        dead_letter(rt, job, "WorkerLostError", message, code="worker_lost")
        return None
    started = now()
    if not rt.jobs.transition(job.id, {JobStatus.QUEUED, JobStatus.RUNNING}, status=JobStatus.RUNNING,
                              started_at=started, worker=HOSTNAME, next_retry_at=None, task_id=task.request.id):
        return None
    wait = started - (job.queued_at or job.created_at)
    rt.metrics.job_started(job.voice, SYNTHESIS_QUEUE, max(0.0, wait))
    if job.batch_id:
        from .batches import on_item_started

        on_item_started(rt, job)
    log.info("job %s attempt %d/%d started", job.id, attempt, job.max_attempts,
             extra={"attempt": attempt, "queue_wait_seconds": round(wait, 3)})
    try:
        _inject_fault(job, rt)
        from .fanout import fan_out, should_fan_out

        if should_fan_out(rt, job):  # a long text: parts on every worker, stitched by the last one
            return fan_out(rt, job)
        result = run_job(rt, job)
    except JobCancelled:
        log.info("job %s was cancelled while running", job.id)
        return None
    except Exception as exc:  # noqa: BLE001 - every failure is classified below
        return _handle_failure(task, rt, job, exc, started)
    return _finish(rt, job, result, started)


def _finish(rt: Runtime, job: Job, result: engine.SynthesisResult, started: float) -> dict[str, Any]:
    rt.jobs.store_audio(job.id, result.audio)
    finished = now()
    if job.cache and job.cache_key:
        try:
            rt.cache.put(job.cache_key, result.audio,
                         {"duration": round(result.duration, 3), "sample_rate": result.sample_rate})
        except Exception as exc:  # noqa: BLE001 - a cache failure must not fail the job
            log.warning("could not cache job %s audio: %s", job.id, exc)
    changed = rt.jobs.transition(
        job.id, {JobStatus.RUNNING}, status=JobStatus.SUCCEEDED, finished_at=finished,
        audio_bytes=len(result.audio), duration=round(result.duration, 3), output_sample_rate=result.sample_rate,
        media_type=result.media_type, synthesis_seconds=round(result.synthesis_seconds, 3),
        error=None, error_type=None, error_code=None,
    )
    rt.jobs.add_history(job.id, {"attempt": job.attempts, "started_at": started, "finished_at": finished,
                                 "outcome": "succeeded", "worker": HOSTNAME})
    if changed:
        rt.metrics.job_succeeded(job.voice, SYNTHESIS_QUEUE, result.synthesis_seconds, finished - job.created_at,
                                 result.characters, result.duration)
        log.info("job %s succeeded: %.1fs of audio in %.2fs", job.id, result.duration, result.synthesis_seconds,
                 extra={"audio_seconds": round(result.duration, 3),
                        "synthesis_seconds": round(result.synthesis_seconds, 3),
                        "characters": result.characters})
        _after_finish(rt, job.id)
    return {"job_id": job.id, "status": "succeeded"}


def _handle_failure(task: Any, rt: Runtime, job: Job, exc: Exception, started: float) -> dict[str, Any] | None:
    failed_at = now()
    if isinstance(exc, SoftTimeLimitExceeded):
        exc = SynthesisRuntimeError(f"synthesis exceeded the soft time limit of {rt.settings.task_soft_time_limit}s")
    policy = rt.retry_policy
    error_type = type(exc).__name__
    message = str(exc) or error_type
    code = getattr(exc, "code", None) if isinstance(exc, EngineError) else None
    history = {"attempt": job.attempts, "started_at": started, "finished_at": failed_at,
               "outcome": "failed", "error": f"{error_type}: {message}", "worker": HOSTNAME}
    if policy.should_retry(job.attempts, exc):
        delay = policy.delay_seconds(job.attempts)
        history["retry_in"] = round(delay, 4)
        rt.jobs.add_history(job.id, history)
        rt.jobs.transition(job.id, {JobStatus.RUNNING}, status=JobStatus.QUEUED, queued_at=failed_at + delay,
                           next_retry_at=failed_at + delay, error=message, error_type=error_type,
                           error_code=code or "transient_error")
        rt.metrics.job_retried(job.voice, SYNTHESIS_QUEUE)
        log.warning("job %s attempt %d failed (%s: %s); retrying in %.3fs", job.id, job.attempts, error_type,
                    message, delay)
        raise task.retry(countdown=delay, exc=exc, max_retries=None)
    rt.jobs.add_history(job.id, history)
    permanent = isinstance(exc, EngineError) and exc.permanent
    trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    log.error("job %s failed for good after %d attempt(s): %s: %s", job.id, job.attempts, error_type, message)
    dead_letter(rt, job, error_type, message, trace, code=code if permanent else "retry_exhausted")
    return {"job_id": job.id, "status": "failed"}

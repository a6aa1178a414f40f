"""The synthesize task: a job id in, audio and a finished job record out.

Idempotent: a redelivered message for a job that already finished does nothing. The
state changes (attempt counting, success, retry, dead-letter) belong to
:mod:`tasks.lifecycle`; this module only runs the engine, or hands a long text to
:mod:`tasks.fanout`. A result store that cannot take the audio (``ResultStoreUnavailable``)
fails the attempt like any transient error: it is retried by the retry policy, never
acknowledged with the job left running.
"""
from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject

import engine
from engine.synthesis import AudioChunk

from . import lifecycle, speech_stream
from .celery_app import celery_app
from .exceptions import ResultStoreUnavailable
from .fanout import fan_out, should_fan_out
from .job import Job
from .publish import SYNTHESIZE_TASK
from .runtime import Runtime, get_runtime
from .status import JobStatus

log = logging.getLogger(__name__)

__all__ = ["run_job", "synthesize_job"]

#: Check for cancellation after this many sentences.
CANCEL_CHECK_EVERY = 8


def run_job(rt: Runtime, job: Job) -> engine.SynthesisResult:
    """Synthesize a job's text with the engine, checking for cancellation every few sentences.

    A streamed speech job (``tasks.speech_stream``) also publishes each sentence's audio as
    it is made, tagged with this attempt, and marks the attempt's end before it succeeds.
    """
    publisher = speech_stream.open_publisher(rt, job)

    def on_chunk(piece: AudioChunk) -> None:
        if publisher is not None:
            publisher.write(piece)
        if piece.index % CANCEL_CHECK_EVERY == CANCEL_CHECK_EVERY - 1 and \
                rt.jobs.get(job.id).status is JobStatus.CANCELLED:
            raise lifecycle.JobCancelled(job.id)

    try:
        result = engine.synthesize(job.text, job.options(), rt.catalog, on_chunk=on_chunk)
        if publisher is not None:
            publisher.finish()
    finally:
        if publisher is not None:
            publisher.close()
    return result


@celery_app.task(bind=True, name=SYNTHESIZE_TASK, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def synthesize_job(self: Any, job_id: str) -> dict[str, Any] | None:
    """Synthesize one job by id.

    A Redis error anywhere in the lifecycle (loading the job, counting the attempt,
    storing audio, updating the batch) gives the message back to the broker instead of
    letting Celery acknowledge a job that is not final; if the broker cannot take it
    back either, the job's lease expires and the reconciler sends it again.
    """
    rt = get_runtime()
    try:
        job = lifecycle.load_task_job(rt, job_id, "its task")
        if job is None:
            return None
        with lifecycle.bind_task(self, job):
            return _synthesize(self, rt, job)
    except lifecycle.BROKER_ERRORS as exc:
        log.warning("job %s: Redis failed (%s: %s); its message goes back to the queue", job_id,
                    type(exc).__name__, exc)
        raise Reject(exc, requeue=True) from exc


def _synthesize(task: Any, rt: Runtime, job: Job) -> dict[str, Any] | None:
    attempt = lifecycle.begin_attempt(rt, job, task.request.id)
    if attempt is None:
        return None
    try:
        with attempt.lease.kept_alive():
            return _run_attempt(task, rt, job, attempt)
    finally:
        attempt.lease.release()


def _run_attempt(task: Any, rt: Runtime, job: Job, attempt: lifecycle.Attempt) -> dict[str, Any] | None:
    try:
        lifecycle.inject_fault(rt, job, attempt.number)
        if should_fan_out(rt, job):  # a long text: parts on every worker, stitched by the last one
            return fan_out(rt, job)
        result = run_job(rt, job)
    except lifecycle.JobCancelled:
        log.info("job %s was cancelled while running", job.id)
        return None
    except lifecycle.BROKER_ERRORS:
        raise  # not the attempt's fault: the message goes back (see synthesize_job)
    except Exception as exc:  # noqa: BLE001 - every failure is classified by the lifecycle
        return lifecycle.fail_or_retry(task, rt, job, exc, attempt.number, {"started_at": attempt.started_at})
    try:
        return lifecycle.succeed(rt, job, result, attempt.started_at)
    except ResultStoreUnavailable as exc:  # the audio could not be stored: a failed attempt, retried as any
        return lifecycle.fail_or_retry(task, rt, job, exc, attempt.number, {"started_at": attempt.started_at})

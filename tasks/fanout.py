"""Long documents: one job fanned out over every worker process and stitched back in order.

A job whose text is longer than ``TTS_CHUNK_FANOUT_CHARS`` (default 2,000 characters;
0 turns fan-out off) is not synthesized in one task. The synthesize task, once it has
counted the attempt and marked the job running, calls :func:`fan_out`:

1. The text is normalised and split by sentence exactly as a whole job would be
   (``engine.synthesis.prepare``), and the sentences are grouped into parts of about
   ``TTS_FANOUT_PART_CHARS`` characters (``engine.text.group_chunks``). The plan (part
   texts, output rate) is stored in ``tts:job:{id}:parts``.
2. One ``tts.synthesize_part`` task per part goes to the ``bulk`` queue
   (``tasks.publish.PART_QUEUE``), all in one Redis pipeline, so idle worker processes
   pick parts up in parallel, and the tens of parts of one long text share the workers
   round-robin with other callers' single jobs instead of queueing ahead of them.
3. Each part stores its audio under ``tts:job:{id}:part:{n}`` and adds ``n`` to
   ``tts:job:{id}:parts:done`` (SADD + SCARD in one transaction). The part whose SADD
   completes the set stitches: it joins the parts in order, and finishes the job through
   the synthesize task's own finish path (audio, cache, metrics, history, batch counts).

What a part stores depends on the format, so that the serial stitch stays cheap:

* mp3, aac and pcm: the part encodes its own audio, in parallel with the other parts;
  the stitch joins the encoded segments (MP3 frames with one rewritten Xing/LAME header
  so players see the full length; ADTS frames and raw PCM as they are). Encoding MP3
  costs about as much as synthesizing with ``heart``, so this matters.
* wav, flac and opus: the part stores 16-bit PCM at the output rate and the stitch
  encodes once (wav and flac at hundreds of times real time; opus is the slow one).

Reliability: each part counts its deliveries (``attempts:{n}`` in the plan) before any
work and is retried on its own with the job's retry policy; a part that fails for good,
or keeps killing its worker, dead-letters the job once (the job's status transition is
the lock). A redelivered part that already stored its audio does nothing but re-check
whether the job can be stitched, so a stitcher killed mid-way is finished by the
redelivery. Parts of a cancelled job stop at the next sentence group and drop their audio.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from celery.exceptions import Reject

import engine
from engine.audio import (
    AudioEncoder,
    effective_rate,
    resample,
    to_pcm16,
    validate_format,
)
from engine.exceptions import SynthesisRuntimeError
from engine.join import FRAME_JOINABLE, Segment, concat
from engine.mp3 import join as join_mp3  # its old name, kept for importers
from engine.synthesis import prepare, stream_chunks
from engine.text import group_chunks

from . import keys, lifecycle
from .celery_app import celery_app
from .job import Job, now
from .publish import PART_QUEUE, SYNTHESIZE_PART_TASK, send_tasks
from .redis_values import HashMapping, as_bytes, decode_hash
from .runtime import Runtime, get_runtime
from .status import JobStatus

log = logging.getLogger(__name__)

__all__ = ["SEGMENT_FORMATS", "PartPlan", "fan_out", "join_mp3", "should_fan_out", "synthesize_part"]

#: Formats whose parts are encoded by the part tasks and joined without re-encoding.
SEGMENT_FORMATS = FRAME_JOINABLE
#: Check for cancellation after this many sentences of a part.
CANCEL_CHECK_EVERY = 8


def should_fan_out(rt: Runtime, job: Job) -> bool:
    """True when the job's text is long enough to be split across workers."""
    limit = rt.settings.chunk_fanout_chars
    return limit > 0 and len(job.text) > limit


@dataclass
class PartPlan:
    """How a fanned-out job is split: part texts, output format and rate."""

    job_id: str
    groups: list[list[str]]
    format: str
    rate: int
    voice_rate: int
    replays: int = 0

    @property
    def total(self) -> int:
        """Number of parts."""
        return len(self.groups)

    @property
    def segments(self) -> bool:
        """True when parts are encoded by the part tasks (mp3, aac, pcm)."""
        return self.format in SEGMENT_FORMATS

    @property
    def characters(self) -> int:
        """Characters of normalised text in all parts."""
        return sum(len(c) for g in self.groups for c in g)

    @property
    def chunks(self) -> int:
        """Sentences (engine chunks) in all parts."""
        return sum(len(g) for g in self.groups)

    def first_chunk(self, index: int) -> int:
        """The number of the first sentence of part ``index`` (seeds stay distinct per part)."""
        return sum(len(g) for g in self.groups[:index])

    def to_redis(self) -> HashMapping:
        """The plan as hash fields."""
        out: HashMapping = {"total": str(self.total), "format": self.format, "rate": str(self.rate),
                            "voice_rate": str(self.voice_rate), "replays": str(self.replays)}
        for i, group in enumerate(self.groups):
            out[f"text:{i}"] = json.dumps(group, ensure_ascii=False)
        return out

    @classmethod
    def from_redis(cls, job_id: str, data: Mapping[bytes | str, bytes | str]) -> PartPlan | None:
        """Rebuild a stored plan; None when there is none (never made, cleaned up or expired)."""
        fields = decode_hash(data)
        if "total" not in fields:
            return None
        total = int(fields["total"])
        groups = [json.loads(fields[f"text:{i}"]) for i in range(total)]
        return cls(job_id=job_id, groups=groups, format=fields["format"], rate=int(fields["rate"]),
                   voice_rate=int(fields["voice_rate"]), replays=int(fields.get("replays", 0)))


def _load_plan(rt: Runtime, job_id: str) -> PartPlan | None:
    return PartPlan.from_redis(job_id, rt.redis.hgetall(keys.job_parts(job_id)))


def _make_plan(rt: Runtime, job: Job) -> PartPlan:
    options = job.options()
    info = options.validate(rt.catalog)
    chunks = prepare(job.text, options, rt.catalog)
    groups = group_chunks(chunks, max(1, rt.settings.fanout_part_chars))
    return PartPlan(job_id=job.id, groups=groups, format=options.format,
                    rate=effective_rate(options.format, options.output_rate(info)), voice_rate=info.sample_rate,
                    replays=job.replays)


def cleanup(rt: Runtime, job_id: str, total: int | None = None) -> None:
    """Drop a fanned-out job's plan and part audio."""
    if total is None:
        raw = rt.redis.hget(keys.job_parts(job_id), "total")
        total = int(raw) if raw is not None else 0
    names = [keys.job_parts(job_id), keys.job_parts_done(job_id)]
    names += [keys.job_part(job_id, i) for i in range(total)]
    rt.redis.delete(*names)


def fan_out(rt: Runtime, job: Job) -> dict[str, Any] | None:
    """Split a running job into parts and queue them (called by the synthesize task).

    Idempotent: a redelivered synthesize task reuses the stored plan and queues only
    the parts whose audio is not stored yet (or stitches at once if every part is).
    """
    plan = _load_plan(rt, job.id)
    if plan is not None and plan.replays != job.replays:
        cleanup(rt, job.id, plan.total)  # left over from before a dead-letter replay
        plan = None
    if plan is None:
        plan = _make_plan(rt, job)
        ttl = rt.settings.result_ttl
        pipe = rt.redis.pipeline(transaction=True)
        pipe.delete(keys.job_parts(job.id), keys.job_parts_done(job.id))
        pipe.hset(keys.job_parts(job.id), mapping=plan.to_redis())
        pipe.expire(keys.job_parts(job.id), ttl)
        pipe.execute()
    done = {int(m) for m in rt.redis.smembers(keys.job_parts_done(job.id))}
    pending = [i for i in range(plan.total) if i not in done]
    rt.jobs.update(job.id, extra={**job.extra, "fanout": {"parts": plan.total, "chunks": plan.chunks}})
    rt.jobs.add_history(job.id, {"attempt": job.attempts, "at": now(), "outcome": "fanned_out",
                                 "parts": plan.total, "pending": len(pending), "worker": lifecycle.HOSTNAME,
                                 "pid": os.getpid()})
    if not pending:
        return _stitch(rt, job.id)
    _send_parts(rt, job, pending)
    log.info("job %s fanned out into %d parts (%d characters, %d queued now)", job.id, plan.total,
             plan.characters, len(pending))
    return {"job_id": job.id, "status": "fanned_out", "parts": plan.total}


def _send_parts(rt: Runtime, job: Job, indexes: list[int]) -> None:
    """Queue part tasks in one pipelined publish."""
    send_tasks(rt, SYNTHESIZE_PART_TASK, [([job.id, i], None) for i in indexes], job.correlation_id,
               queue=PART_QUEUE)


# --- the part task -----------------------------------------------------------------------
@celery_app.task(bind=True, name=SYNTHESIZE_PART_TASK, acks_late=True, reject_on_worker_lost=True,
                 max_retries=None)
def synthesize_part(self: Any, job_id: str, index: int) -> dict[str, Any] | None:
    """Synthesize part ``index`` of a fanned-out job; the last part to finish stitches the job.

    A Redis error gives the message back to the broker, as for a whole job, instead of
    letting Celery acknowledge a part whose audio was never stored.
    """
    rt = get_runtime()
    try:
        job = lifecycle.load_task_job(rt, job_id, f"its part {index}")
        if job is None:
            return None
        with lifecycle.bind_task(self, job):
            return _run_part(self, rt, job, int(index))
    except lifecycle.BROKER_ERRORS as exc:
        log.warning("job %s part %s: Redis failed (%s: %s); its message goes back to the queue", job_id, index,
                    type(exc).__name__, exc)
        raise Reject(exc, requeue=True) from exc


def _run_part(task: Any, rt: Runtime, job: Job, index: int) -> dict[str, Any] | None:
    if job.status.finished:
        if job.status is not JobStatus.SUCCEEDED:
            cleanup(rt, job.id)
        log.info("job %s is %s; dropping part %d", job.id, job.status.value, index)
        return None
    plan = _load_plan(rt, job.id)
    if plan is None or index >= plan.total:
        log.warning("job %s has no fan-out plan for part %d (expired or replaced); dropping it", job.id, index)
        return None
    if rt.redis.sismember(keys.job_parts_done(job.id), str(index)):
        # A redelivery of a part that already stored its audio: only make sure the job gets stitched.
        return _maybe_stitch_again(task, rt, job, plan)
    attempt = int(rt.redis.hincrby(keys.job_parts(job.id), f"attempts:{index}", 1))
    part_name = f"part {index + 1} of {plan.total}"
    if attempt > job.max_attempts:
        message = f"the worker was lost during {attempt - 1} attempts at {part_name}"
        rt.jobs.add_history(job.id, {"part": index, "attempt": attempt - 1, "error": "WorkerLostError",
                                     "at": now()})
        _fail(rt, job, plan, "WorkerLostError", message, code="worker_lost")
        return None
    started = now()
    try:
        lifecycle.inject_fault(rt, job, attempt)
        data, samples, seconds = _render_part(rt, job, plan, index)
        if rt.jobs.status(job.id) in (JobStatus.CANCELLED, JobStatus.FAILED, None):
            raise lifecycle.JobCancelled(job.id)
        added, count = _store_part(rt, job.id, index, data, samples, seconds)
    except lifecycle.JobCancelled:
        log.info("job %s was cancelled or failed; part %d dropped", job.id, index)
        cleanup(rt, job.id, plan.total)
        return None
    except lifecycle.BROKER_ERRORS:
        raise  # not the part's fault: its message goes back (see synthesize_part)
    except Exception as exc:  # noqa: BLE001 - classified like a whole job's failure
        return _part_failed(task, rt, job, plan, index, attempt, exc, started)
    rt.jobs.add_history(job.id, {"part": index, "parts": plan.total, "attempt": attempt, "started_at": started,
                                 "finished_at": now(), "outcome": "part_succeeded", "worker": lifecycle.HOSTNAME,
                                 "pid": os.getpid(), "characters": sum(len(c) for c in plan.groups[index]),
                                 "audio_seconds": round(samples / plan.rate, 3),
                                 "synthesis_seconds": round(seconds, 3)})
    log.info("job %s %s done (%.1fs of audio in %.2fs, %d/%d parts stored)", job.id, part_name,
             samples / plan.rate, seconds, count, plan.total)
    if added and count >= plan.total:
        return _stitch_or_retry(task, rt, job, plan)
    if rt.jobs.status(job.id) in (JobStatus.CANCELLED, JobStatus.FAILED):  # cancelled while storing
        cleanup(rt, job.id, plan.total)
    return {"job_id": job.id, "part": index, "status": "stored"}


def _store_part(rt: Runtime, job_id: str, index: int, data: bytes, samples: int, seconds: float) -> tuple[bool, int]:
    """Keep a part's audio and mark it done; returns (newly done, parts done so far) from one transaction."""
    ttl = rt.settings.result_ttl
    pipe = rt.redis.pipeline(transaction=True)
    pipe.set(keys.job_part(job_id, index), data, ex=ttl)
    pipe.hset(keys.job_parts(job_id), mapping={f"samples:{index}": samples, f"seconds:{index}": round(seconds, 4)})
    pipe.sadd(keys.job_parts_done(job_id), index)
    pipe.scard(keys.job_parts_done(job_id))
    pipe.expire(keys.job_parts_done(job_id), ttl)
    results = pipe.execute()
    return bool(results[2]), int(results[3])


def _render_part(rt: Runtime, job: Job, plan: PartPlan, index: int) -> tuple[bytes, int, float]:
    """Synthesize one part; returns (stored bytes, samples at the output rate, seconds taken)."""
    started = now()
    options = job.options()
    info = options.validate(rt.catalog)
    pieces: list[np.ndarray] = []
    for k, piece in enumerate(stream_chunks(plan.groups[index], options, rt.catalog,
                                            seed_offset=plan.first_chunk(index))):
        pieces.append(piece.samples)
        if k % CANCEL_CHECK_EVERY == CANCEL_CHECK_EVERY - 1 and rt.jobs.status(job.id) is JobStatus.CANCELLED:
            raise lifecycle.JobCancelled(job.id)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if plan.segments:
        encoder = AudioEncoder(plan.format, plan.rate, input_rate=info.sample_rate)
        encoder.write(samples)
        data = encoder.finish()
        count = encoder.samples_written
    else:
        pcm = resample(samples, info.sample_rate, plan.rate)
        data = to_pcm16(pcm)
        count = len(pcm)
    return data, count, now() - started


def _part_failed(task: Any, rt: Runtime, job: Job, plan: PartPlan, index: int, attempt: int, exc: Exception,
                 started: float) -> dict[str, Any] | None:
    """Retry a failed part with the job's retry policy, or dead-letter the job (the job stays running meanwhile)."""
    history = {"part": index, "parts": plan.total, "started_at": started, "outcome": "part_failed",
               "pid": os.getpid()}
    outcome = lifecycle.fail_or_retry(task, rt, job, exc, attempt, history,
                                      subject=f"part {index + 1} of {plan.total}", requeue_job=False,
                                      cleanup=lambda: cleanup(rt, job.id, plan.total))
    return {**outcome, "part": index}


def _fail(rt: Runtime, job: Job, plan: PartPlan, error_type: str, message: str, code: str | None = None) -> None:
    """Dead-letter the whole job (once: the status transition guards it) and drop its parts."""
    lifecycle.dead_letter(rt, rt.jobs.get(job.id), error_type, message, code=code)
    cleanup(rt, job.id, plan.total)


# --- stitching ---------------------------------------------------------------------------
def _maybe_stitch_again(task: Any, rt: Runtime, job: Job, plan: PartPlan) -> dict[str, Any] | None:
    if job.status is not JobStatus.RUNNING:
        return None
    if int(rt.redis.scard(keys.job_parts_done(job.id))) < plan.total:
        return None
    log.info("job %s: every part is stored but the job is not finished; stitching (redelivery)", job.id)
    return _stitch_or_retry(task, rt, job, plan)


def _stitch_or_retry(task: Any, rt: Runtime, job: Job, plan: PartPlan) -> dict[str, Any] | None:
    """Stitch; a failed stitch is retried (as a redelivered part) with the job's retry policy."""
    attempt = int(rt.redis.hincrby(keys.job_parts(job.id), "attempts:stitch", 1))
    if attempt > job.max_attempts:
        _fail(rt, job, plan, "WorkerLostError", f"the worker was lost during {attempt - 1} attempts to stitch",
              code="worker_lost")
        return None
    started = now()
    try:
        return _stitch(rt, job.id)
    except Exception as exc:  # noqa: BLE001 - classified like a part's failure
        history = {"stitch": True, "started_at": started, "outcome": "stitch_failed", "pid": os.getpid()}
        lifecycle.fail_or_retry(task, rt, job, exc, attempt, history, subject="stitching", requeue_job=False,
                                cleanup=lambda: cleanup(rt, job.id, plan.total))
        return None


def _stitch(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    """Join every part in order and finish the job exactly as a whole job finishes."""
    job = rt.jobs.get(job_id)
    if job.status is not JobStatus.RUNNING:
        log.info("job %s is %s; not stitching", job_id, job.status.value)
        return None
    plan = _load_plan(rt, job_id)
    if plan is None:
        raise SynthesisRuntimeError(f"job {job_id}: the fan-out plan disappeared before stitching")
    counts = rt.redis.hmget(keys.job_parts(job_id), [f"samples:{i}" for i in range(plan.total)])
    work = sum(float(v or 0) for v in rt.redis.hmget(keys.job_parts(job_id), [f"seconds:{i}" for i in range(plan.total)]))
    stitch_started = now()
    fmt = validate_format(plan.format)

    def part_audio(index: int) -> bytes:
        data = rt.redis.get(keys.job_part(job_id, index))
        if data is None:
            raise SynthesisRuntimeError(f"job {job_id}: the audio of part {index + 1} expired before stitching")
        return as_bytes(data)

    # mp3, aac and pcm parts are encoded segments, joined as they are; the others are PCM, encoded once.
    joined = concat([Segment(format=plan.format if plan.segments else "pcm", rate=plan.rate,
                             data=functools.partial(part_audio, i), samples=int(c or 0))
                     for i, c in enumerate(counts)], plan.format, plan.rate)
    audio, samples, sample_rate = joined.audio, joined.samples, joined.sample_rate
    finished = now()
    # The work done, as for a whole job (every part's synthesis plus the stitch); the wall
    # time, parallel and including queue waits, is finished_at - started_at.
    result = engine.SynthesisResult(
        audio=audio, format=plan.format, media_type=fmt.media_type, sample_rate=sample_rate,
        duration=samples / sample_rate, characters=plan.characters, chunks=plan.chunks, voice=job.voice,
        synthesis_seconds=work + (finished - stitch_started),
    )
    log.info("job %s stitched from %d parts in %.2fs", job_id, plan.total, finished - stitch_started,
             extra={"parts": plan.total, "stitch_seconds": round(finished - stitch_started, 3)})
    outcome = lifecycle.succeed(rt, job, result, job.started_at or stitch_started)
    cleanup(rt, job_id, plan.total)
    return outcome

"""Long documents: one job fanned out over every worker process and encoded once, in order.

A job whose text is longer than ``TTS_CHUNK_FANOUT_CHARS`` (default 2,000 characters;
0 turns fan-out off) is not synthesized in one piece. The synthesize task, once it has
counted the attempt and marked the job running, calls :func:`fan_out`:

1. The text is normalised and split by sentence exactly as a whole job would be
   (``engine.synthesis.prepare``), and the sentences are grouped into parts of about
   ``TTS_FANOUT_PART_CHARS`` characters (``engine.text.group_chunks``). The plan (part
   texts, output rate) is stored in ``tts:job:{id}:parts``.
2. One ``tts.synthesize_part`` task per part but the first goes to the ``bulk`` queue
   (``tasks.publish.PART_QUEUE``), all in one Redis pipeline, so idle worker processes
   help in parallel, and the tens of parts of one long text share the workers
   round-robin with other callers' single jobs instead of queueing ahead of them.
3. The synthesize task itself then *leads* (:func:`_lead`): it holds the job's one
   encoder and feeds it the parts in order. It synthesizes the lowest part nobody has
   claimed yet (``HSETNX claim:{n}`` in the plan), encodes every part that is ready in
   order (its own from memory, the helpers' from the result store), and when
   every part left is claimed by a helper it blocks on ``tts:job:{id}:parts:ready``
   until the next one is stored. After the last part it finishes the job through the
   whole job's own finish path (audio, cache, metrics, history, batch counts).
4. A part task claims its part (or finds the leader took it and drops the message),
   synthesizes it, and stores 16-bit PCM at the output rate in the result store
   (``tasks.result_store``: a long chapter's parts hold hundreds of MB of PCM, which must
   not sit in Redis), then names it in the plan (``ref:{n}``), marks it done and announces
   it (HSET, SADD, RPUSH in one transaction). The object is content-addressed and expires
   with the plan (``TTS_RESULT_TTL``); a cleaned-up plan only forgets its refs. A part
   marked done whose object is gone (or that has no ref: stored by an older version in
   Redis) is forgotten and made again by the leader.

Every format is encoded once from the samples of every part in order, so the file is
exactly the samples the parts made: no encoder delay or padding at part boundaries
(an mp3 or aac part encoded on its own kept 43-60 ms of near-silence at each stitch),
and the encode is not a serial tail: it runs part by part while the helpers are still
synthesizing later parts. On one worker process the leader does all the parts itself,
in order, as the un-split job would, and the part messages are dropped when they come.

Reliability: the leader is the job's synthesize task, with its lease, attempt count and
retry policy; a leader killed mid-way is redelivered (or sent again) like any job, and
the new delivery keeps the plan and the parts already stored, takes over the parts the
dead one had claimed, and encodes from the first part again. Each part task counts its
deliveries (``attempts:{n}`` in the plan) before any work and is retried on its own
with the job's retry policy; a part that fails for good, or keeps killing its worker,
dead-letters the job once (the job's status transition is the lock), and the leader
stops. Parts of a cancelled job stop at the next sentence group and drop their audio;
the leader notices within :data:`WAIT_SECONDS` or the next sentence group.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from celery.exceptions import Reject

import engine
from engine.audio import (
    AudioEncoder,
    decode,
    effective_rate,
    resample,
    to_pcm16,
    validate_format,
)
from engine.exceptions import SynthesisRuntimeError
from engine.synthesis import prepare, stream_chunks
from engine.text import group_chunks

from . import keys, lifecycle
from .celery_app import celery_app
from .job import Job, now
from .publish import PART_QUEUE, SYNTHESIZE_PART_TASK, send_tasks
from .redis_values import HashMapping, decode_hash, text_or_none
from .runtime import Runtime, get_runtime
from .status import JobStatus

log = logging.getLogger(__name__)

__all__ = ["PartPlan", "fan_out", "queue_parts", "should_fan_out", "synthesize_part"]

#: Check for cancellation after this many sentences of a part.
CANCEL_CHECK_EVERY = 8
#: Seconds the leader blocks for a helper's part before it looks at the job's status again
#: (below the Redis client's socket timeout, ``tasks.runtime.SOCKET_TIMEOUT``).
WAIT_SECONDS = 0.5
#: The claim a part task writes; the leader's is ``lead:{attempt}``.
PART_CLAIM = "part"
#: Statuses after which no part's audio is wanted any more.
_GONE = (JobStatus.CANCELLED, JobStatus.FAILED, None)


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


def cleanup(rt: Runtime, job_id: str) -> None:
    """Drop a fanned-out job's plan, claims and the refs of its parts' audio (the objects expire by
    themselves: content-addressed, they may be another job's too)."""
    rt.redis.delete(keys.job_parts(job_id), keys.job_parts_done(job_id), keys.job_parts_ready(job_id))


@lifecycle.on_finished
def _drop_parts_of_finished(rt: Runtime, jobs: Sequence[Job]) -> None:
    """A fanned-out job that reached a final status by any path (cancelled, dead-lettered) drops its parts."""
    for job in jobs:
        if "fanout" in job.extra:
            cleanup(rt, job.id)


def queue_parts(rt: Runtime, job: Job) -> PartPlan:
    """Make (or reuse) the job's plan and queue a part task for every part nobody claimed yet but the first.

    The first part left is the leader's own (:func:`fan_out` goes on to lead). A
    redelivered synthesize task reuses the stored plan, so the parts already stored are
    kept, and a part a helper is making is not sent twice; a plan made before a
    dead-letter replay is dropped and made again.
    """
    plan = _load_plan(rt, job.id)
    if plan is not None and plan.replays != job.replays:
        cleanup(rt, job.id)  # left over from before a dead-letter replay
        plan = None
    if plan is None:
        plan = _make_plan(rt, job)
        ttl = rt.settings.result_ttl
        pipe = rt.redis.pipeline(transaction=True)
        pipe.delete(keys.job_parts(job.id), keys.job_parts_done(job.id), keys.job_parts_ready(job.id))
        pipe.hset(keys.job_parts(job.id), mapping=plan.to_redis())
        pipe.expire(keys.job_parts(job.id), ttl)
        pipe.execute()
    done = {int(m) for m in rt.redis.smembers(keys.job_parts_done(job.id))}
    pending = [i for i in range(plan.total) if i not in done]
    # A redelivered leader: a part some task claimed already has its message (a helper's
    # own, or this task's to take over), so only parts nobody claimed get one.
    claims = rt.redis.hmget(keys.job_parts(job.id), [f"claim:{i}" for i in pending]) if pending else []
    free = [i for i, holder in zip(pending, claims, strict=True) if holder is None]
    job.extra = {**job.extra, "fanout": {"parts": plan.total, "chunks": plan.chunks}}
    rt.jobs.update(job.id, extra=job.extra)
    rt.jobs.add_history(job.id, {"attempt": job.attempts, "at": now(), "outcome": "fanned_out",
                                 "parts": plan.total, "pending": len(pending), "worker": lifecycle.HOSTNAME,
                                 "pid": os.getpid()})
    if len(free) > 1:
        send_tasks(rt, SYNTHESIZE_PART_TASK, [([job.id, i], None) for i in free[1:]], job.correlation_id,
                   queue=PART_QUEUE)
    log.info("job %s fanned out into %d parts (%d characters, %d to do)", job.id, plan.total,
             plan.characters, len(pending))
    return plan


def fan_out(rt: Runtime, job: Job) -> dict[str, Any] | None:
    """Split a running job into parts, queue them, and lead: synthesize, encode in order, finish the job.

    Called by the synthesize task; returns what a whole job's run returns (None when
    the job was cancelled or failed meanwhile). A failure of the leader's own work is
    raised, for the synthesize task's retry policy, and the plan and stored parts are
    kept for the next delivery.
    """
    plan = queue_parts(rt, job)
    try:
        return _lead(rt, job, plan)
    except lifecycle.JobCancelled:
        log.info("job %s was cancelled or failed while fanned out; dropping its parts", job.id)
        cleanup(rt, job.id)
        return None


# --- the leader --------------------------------------------------------------------------
@dataclass
class _Leader:
    """What the leading synthesize task keeps while it goes through the parts in order."""

    rt: Runtime
    job: Job
    plan: PartPlan
    token: str
    #: Parts this task synthesized that are not encoded yet (float samples at the output rate).
    own: dict[int, np.ndarray] = field(default_factory=dict)
    #: Parts a part task claimed (never claimed back: its own redelivery or retry finishes it).
    helped: set[int] = field(default_factory=set)
    #: Seconds of synthesis and encoding done by this task, and of waiting for helpers.
    work: float = 0.0
    waited: float = 0.0
    mine: int = 0

    def check_running(self) -> None:
        """Raise JobCancelled once the job is cancelled or failed (a part dead-lettered it)."""
        if self.rt.jobs.status(self.job.id) in _GONE:
            raise lifecycle.JobCancelled(self.job.id)

    def claim(self, start: int) -> int | None:
        """Claim the lowest part from ``start`` on that nobody else has; None when every one is taken."""
        parts = keys.job_parts(self.job.id)
        for index in range(start, self.plan.total):
            if index in self.own or index in self.helped:
                continue
            if self.rt.redis.hsetnx(parts, f"claim:{index}", self.token):
                return index
            holder = text_or_none(self.rt.redis.hget(parts, f"claim:{index}")) or ""
            if holder.startswith("lead:") and holder != self.token:
                # An earlier delivery of this task claimed it and is gone (its lease was taken over).
                self.rt.redis.hset(parts, f"claim:{index}", self.token)
                return index
            self.helped.add(index)
        return None

    def synthesize(self, index: int) -> None:
        """Synthesize part ``index`` here and keep it until its turn to be encoded."""
        started = now()
        self.own[index] = samples = _render_part(self.rt, self.job, self.plan, index)
        finished = now()
        self.work += finished - started
        self.mine += 1
        self.rt.jobs.add_history(self.job.id, _part_history(self.plan, index, self.job.attempts, started, finished,
                                                            samples.size, lead=True))

    def wait(self, index: int) -> None:
        """Block until a helper announces a stored part (or WAIT_SECONDS pass), then check the job's status."""
        started = now()
        self.rt.redis.blpop([keys.job_parts_ready(self.job.id)], timeout=WAIT_SECONDS)
        self.waited += now() - started
        self.check_running()
        log.debug("job %s: waiting for part %d from a helper", self.job.id, index)


def _lead(rt: Runtime, job: Job, plan: PartPlan) -> dict[str, Any] | None:
    """Go through the parts in order: synthesize unclaimed ones, encode each when its turn comes, finish."""
    started = now()
    leader = _Leader(rt, job, plan, token=f"lead:{job.attempts}")
    encoder = AudioEncoder(plan.format, plan.rate)
    fmt = validate_format(plan.format)
    helper_seconds = 0.0
    index = 0
    while index < plan.total:
        samples = leader.own.pop(index, None)
        if samples is None:
            stored = _stored_part(rt, job.id, index)
            if stored is not None:
                samples = decode(stored[0], "pcm", pcm_rate=plan.rate)[0]
                helper_seconds += stored[1]
            elif index in leader.helped and _forgot_part(rt, job.id, index):
                leader.helped.discard(index)  # claimable again: made here, or by the helper retrying
        if samples is not None:
            tick = now()
            encoder.write(samples)
            leader.work += now() - tick
            index += 1
            continue
        claimed = leader.claim(index)
        if claimed is not None:
            leader.synthesize(claimed)
            if leader.mine % 2 == 0:  # the sentence checks cover a part; this covers a run of short ones
                leader.check_running()
            continue
        leader.wait(index)
    tick = now()
    audio = encoder.finish()
    finished = now()
    leader.work += finished - tick
    samples_out = encoder.samples_written
    if samples_out <= 0:
        raise SynthesisRuntimeError(f"job {job.id}: the parts made no sound")
    # The work done, as for a whole job: this task's synthesis and encoding plus every helper's part;
    # the wall time, parallel and including queue waits, is finished_at - started_at.
    result = engine.SynthesisResult(
        audio=audio, format=plan.format, media_type=fmt.media_type, sample_rate=encoder.sample_rate,
        duration=samples_out / encoder.sample_rate, characters=plan.characters, chunks=plan.chunks,
        voice=job.voice, synthesis_seconds=leader.work + helper_seconds,
    )
    log.info("job %s: %d parts encoded in order (%d synthesized here, %.2fs waiting for helpers, %.2fs in all)",
             job.id, plan.total, leader.mine, leader.waited, finished - started,
             extra={"parts": plan.total, "parts_led": leader.mine, "wait_seconds": round(leader.waited, 3)})
    outcome = lifecycle.succeed(rt, job, result, job.started_at or started)
    cleanup(rt, job.id)
    return outcome


# --- the part task -----------------------------------------------------------------------
@celery_app.task(bind=True, name=SYNTHESIZE_PART_TASK, acks_late=True, reject_on_worker_lost=True,
                 max_retries=None)
def synthesize_part(self: Any, job_id: str, index: int) -> dict[str, Any] | None:
    """Synthesize part ``index`` of a fanned-out job for its leader, unless the leader took it.

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


def _claim_part(rt: Runtime, job_id: str, index: int) -> bool:
    """Claim part ``index`` for this part task; False when the leader has it.

    The part's claim stays a part task's: the same message redelivered, or retried, takes it again.
    """
    parts = keys.job_parts(job_id)
    if rt.redis.hsetnx(parts, f"claim:{index}", PART_CLAIM):
        return True
    return text_or_none(rt.redis.hget(parts, f"claim:{index}")) == PART_CLAIM


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
        log.info("job %s part %d is stored already (a redelivery); nothing to do", job.id, index)
        return None
    if not _claim_part(rt, job.id, index):
        log.debug("job %s part %d is the leader's; message dropped", job.id, index)
        return {"job_id": job.id, "part": index, "status": "led"}
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
        pcm = _render_part(rt, job, plan, index)
        samples = pcm.size
        data = to_pcm16(pcm)
        seconds = now() - started
        if rt.jobs.status(job.id) in _GONE:
            raise lifecycle.JobCancelled(job.id)
        _store_part(rt, job.id, index, data, samples, seconds)
    except lifecycle.JobCancelled:
        log.info("job %s was cancelled or failed; part %d dropped", job.id, index)
        cleanup(rt, job.id)
        return None
    except lifecycle.BROKER_ERRORS:
        raise  # not the part's fault: its message goes back (see synthesize_part)
    except Exception as exc:  # noqa: BLE001 - classified like a whole job's failure
        return _part_failed(task, rt, job, plan, index, attempt, exc, started)
    rt.jobs.add_history(job.id, _part_history(plan, index, attempt, started, now(), samples, lead=False))
    log.info("job %s %s stored (%.1fs of audio in %.2fs)", job.id, part_name, samples / plan.rate, seconds)
    if rt.jobs.status(job.id) in _GONE:  # cancelled while storing
        cleanup(rt, job.id)
    return {"job_id": job.id, "part": index, "status": "stored"}


def _part_history(plan: PartPlan, index: int, attempt: int, started: float, finished: float, samples: int,
                  lead: bool) -> dict[str, Any]:
    """The history entry of a part done (``samples`` at the output rate)."""
    return {"part": index, "parts": plan.total, "attempt": attempt, "started_at": started, "finished_at": finished,
            "outcome": "part_succeeded", "worker": lifecycle.HOSTNAME, "pid": os.getpid(), "lead": lead,
            "characters": sum(len(c) for c in plan.groups[index]), "samples": samples,
            "audio_seconds": round(samples / plan.rate, 3), "synthesis_seconds": round(finished - started, 3)}


def _stored_part(rt: Runtime, job_id: str, index: int) -> tuple[bytes, float] | None:
    """A helper's part as (16-bit PCM, seconds it took), or None while it is not stored."""
    ref, seconds = rt.redis.hmget(keys.job_parts(job_id), [f"ref:{index}", f"seconds:{index}"])
    if ref is None:
        return None
    data = rt.result_store.read(text_or_none(ref) or "")
    if data is None:
        return None  # gone from the store: _forgot_part sees to it
    return data, float(seconds or 0)


def _forgot_part(rt: Runtime, job_id: str, index: int) -> bool:
    """Forget a part marked done whose audio cannot be read (its object is gone, or it was stored in
    Redis by an older version): its claim, ref and mark go, so it is made again. True if it was marked."""
    parts = keys.job_parts(job_id)
    ref = text_or_none(rt.redis.hget(parts, f"ref:{index}"))
    if not rt.redis.sismember(keys.job_parts_done(job_id), str(index)):
        return False
    if ref is not None and rt.result_store.size(ref) is not None:
        return False  # stored meanwhile: read it on the next turn
    log.warning("job %s: part %d is marked done but its audio is not in the result store; making it again",
                job_id, index)
    pipe = rt.redis.pipeline(transaction=True)
    pipe.srem(keys.job_parts_done(job_id), str(index))
    pipe.hdel(parts, f"ref:{index}", f"claim:{index}")
    pipe.execute()
    return True


def _store_part(rt: Runtime, job_id: str, index: int, data: bytes, samples: int, seconds: float) -> None:
    """Keep a part's PCM in the result store, then name it in the plan, mark it done and announce it to the
    leader, in one transaction."""
    ttl = rt.settings.result_ttl
    ref = rt.result_store.put(data, now() + ttl)
    pipe = rt.redis.pipeline(transaction=True)
    pipe.hset(keys.job_parts(job_id), mapping={f"ref:{index}": ref, f"samples:{index}": samples,
                                               f"seconds:{index}": round(seconds, 4)})
    pipe.sadd(keys.job_parts_done(job_id), index)
    pipe.expire(keys.job_parts_done(job_id), ttl)
    pipe.rpush(keys.job_parts_ready(job_id), index)
    pipe.expire(keys.job_parts_ready(job_id), ttl)
    pipe.execute()


def _render_part(rt: Runtime, job: Job, plan: PartPlan, index: int) -> np.ndarray:
    """Synthesize one part: its samples at the output rate.

    A helper stores them as 16-bit PCM; the leader encodes its own as they are (for wav,
    flac and pcm that is the same 16-bit file: quantizing twice rounds to the same values).
    """
    options = job.options()
    info = options.validate(rt.catalog)
    pieces: list[np.ndarray] = []
    for k, piece in enumerate(stream_chunks(plan.groups[index], options, rt.catalog,
                                            seed_offset=plan.first_chunk(index))):
        pieces.append(piece.samples)
        if k % CANCEL_CHECK_EVERY == CANCEL_CHECK_EVERY - 1 and rt.jobs.status(job.id) in _GONE:
            raise lifecycle.JobCancelled(job.id)
    samples = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return resample(samples, info.sample_rate, plan.rate)


def _part_failed(task: Any, rt: Runtime, job: Job, plan: PartPlan, index: int, attempt: int, exc: Exception,
                 started: float) -> dict[str, Any] | None:
    """Retry a failed part with the job's retry policy, or dead-letter the job (the job stays running meanwhile)."""
    history = {"part": index, "parts": plan.total, "started_at": started, "outcome": "part_failed",
               "pid": os.getpid()}
    outcome = lifecycle.fail_or_retry(task, rt, job, exc, attempt, history,
                                      subject=f"part {index + 1} of {plan.total}", requeue_job=False,
                                      cleanup=lambda: cleanup(rt, job.id))
    return {**outcome, "part": index}


def _fail(rt: Runtime, job: Job, plan: PartPlan, error_type: str, message: str, code: str | None = None) -> None:
    """Dead-letter the whole job (once: the status transition guards it) and drop its parts."""
    lifecycle.dead_letter(rt, rt.jobs.get(job.id), error_type, message, code=code)
    cleanup(rt, job.id)

"""Batches: many inputs submitted at once, each its own job, counted as they finish.

A batch (``tts:batch:{id}``) is a hash of counters beside a list of its item job ids in
input order (``tts:batch:{id}:items``). Every input becomes an ordinary job (same
validation, cache, retries, dead-letter queue and metrics as ``POST /v1/jobs``) that
knows its ``batch_id`` and ``batch_index``. The job lifecycle tells this module when an
item starts and finishes through hooks (:func:`on_item_started`, :func:`on_items_finished`,
registered with :mod:`tasks.lifecycle`), so reading a batch's status costs one HGETALL
and one SCARD however many inputs it has.

A batch finishes once: the transaction that counts its last item (:func:`_count_finished`)
also sets its ``finished_at`` and puts its callback, if it has a ``callback_url``, in the
callback outbox. So nobody ever reads a batch whose counts say it is done without a
``finished_at``, and a process killed right after the count still leaves the callback owed
(``tasks.callbacks`` queues it, or the reconciler's sweep does through the requeuer
registered here). (Setting it in a second transaction left a window, seen in a test under
load, where a batch read "succeeded" with no ``finished_at``, and a process killed in it
left the batch without one and its callback unsent.)

An input that cannot succeed (empty text, unknown voice, bad speed...) is stored at
submit time as a failed job carrying its error, and counted; it does not sink the
batch. Only a malformed body, or a batch whose every input is bad, is refused.

Submitting is built for 10,000 inputs: ``JobService.accept_many`` writes the job
records in pipelines and publishes the tasks in pipelined batches (kombu's
``Producer.batch``); ``JobService.cancel_many`` cancels them with one revoke.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

import engine
from engine.exceptions import EngineError

from . import callbacks, keys, lifecycle
from .exceptions import (
    BatchNotFound,
    IdempotencyKeyInUse,
    InvalidBatch,
    JobNotFound,
    PipelineError,
    TooManyInputs,
)
from .idempotency import ResourceKind, tenant_key
from .job import COMPACT_DEFAULTS, PIPELINE_CHUNK, Job, iso, job_score, new_job_id, now
from .job_request import CallbackUrl, JobInput, JobRequest, SpeechOptions
from .outbound import public_callback
from .redis_values import MAX_INDEX, HashMapping, members, scored_members, text, text_or_none
from .runtime import Runtime
from .service import JobService
from .status import BatchStatus, JobStatus
from .tenants import DEFAULT_TENANT, OPEN_PRINCIPAL, Principal

log = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "BatchRequest",
    "BatchService",
    "ItemMeta",
    "on_item_finished",
    "on_item_started",
    "on_items_finished",
]

MAX_GAP_MS = 60_000
#: A batch claim younger than this may belong to a submit still checking and storing 10,000
#: inputs (3-4 s measured, 12 s on a busy machine): not taken over.
BATCH_CLAIM_GRACE_SECONDS = 120.0
#: Item records read per pipeline when listing or zipping.
READ_WINDOW = 500
#: Uncounted items one reconciler sweep counts at most.
UNCOUNTED_SWEEP_LIMIT = 1000
#: Rejected inputs listed in an error body or a submit response, at most.
MAX_LISTED_ERRORS = 1000
_ITEM_FIELDS = ("status", "name", "attempts", "duration", "error_code", "error", "error_type", "characters",
                "audio_bytes", "format", "output_sample_rate", "cache_hit", "started_at", "finished_at", "voice",
                "task_id", "callback_url", "audio_ref")


# --- the lifecycle's hooks -------------------------------------------------------------------------
@lifecycle.on_started
def on_item_started(rt: Runtime, job: Job) -> None:
    """Note that a batch item started (the batch is running; the item counts as running)."""
    if not job.batch_id:
        return
    ttl = rt.settings.result_ttl
    pipe = rt.redis.pipeline(transaction=False)
    pipe.sadd(keys.batch_running(job.batch_id), job.id)
    pipe.expire(keys.batch_running(job.batch_id), ttl)
    pipe.hsetnx(keys.batch(job.batch_id), "started_at", str(now()))
    pipe.execute()


def on_item_finished(rt: Runtime, job_id: str) -> None:
    """Count a finished job in its batch, read from its record (no-op for a job outside any batch)."""
    try:
        job = rt.jobs.get(job_id)
    except Exception:  # noqa: BLE001 - an expired job has no batch to update
        return
    on_items_finished(rt, [job])


@lifecycle.on_finished
def on_items_finished(rt: Runtime, jobs: Sequence[Job]) -> None:
    """Count jobs that reached a final status in their batches (jobs outside any batch are skipped)."""
    by_batch: dict[str, list[Job]] = {}
    for job in jobs:
        if job.batch_id and job.status.finished:
            by_batch.setdefault(job.batch_id, []).append(job)
    for group in by_batch.values():
        _count_finished(rt, group)


def sweep_uncounted(rt: Runtime, grace: float | None = None, limit: int = UNCOUNTED_SWEEP_LIMIT) -> int:
    """Count the finished batch items whose count never landed; returns how many were looked at.

    A batch item enters ``tts:batches:uncounted`` in its final transition (``JobStore``) and
    leaves it when :func:`_count_finished` counts it. One still there after ``grace`` seconds
    (a lease period by default; a younger one may be being counted right now) was left by a
    process killed between the two: it is counted here (counting is idempotent: the done hash
    remembers what each item was counted as). Run from every reconciler sweep.
    """
    wait = float(rt.settings.lease_seconds) if grace is None else grace
    due = members(rt.redis.zrangebyscore(keys.BATCH_UNCOUNTED, "-inf", now() - wait, start=0, num=limit))
    for job_id in due:
        try:
            job = rt.jobs.get(job_id)
        except JobNotFound:  # expired meanwhile: nothing left to count
            rt.redis.zrem(keys.BATCH_UNCOUNTED, job_id)
            continue
        if not job.batch_id:
            rt.redis.zrem(keys.BATCH_UNCOUNTED, job_id)
            continue
        log.warning("batch %s: counting item %s, finished but never counted (its process died)", job.batch_id,
                    job_id)
        on_items_finished(rt, [job])
        if not job.status.finished:  # replayed since: its next final transition adds it again
            rt.redis.zrem(keys.BATCH_UNCOUNTED, job_id)
    return len(due)


def _count_finished(rt: Runtime, jobs: list[Job]) -> None:
    """Count finished items of one batch.

    ``tts:batch:{id}:done`` maps each counted item to the status (and audio seconds) it
    was counted with, so a redelivered task never counts an item twice, and an item that
    finishes again differently (a dead-lettered item replayed to success) moves from one
    count to the other instead of being lost. WATCH keeps concurrent finishes exact.
    """
    if not jobs:
        return
    batch_id = jobs[0].batch_id or ""
    key, done_key = keys.batch(batch_id), keys.batch_done(batch_id)
    ttl = rt.settings.result_ttl
    values = {job.id: f"{job.status.value}:{job.duration or 0}" for job in jobs}
    with rt.redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                # The batch record too: the count that finishes the batch sets its finished_at.
                pipe.watch(done_key, key)
                counted = dict(zip(values, pipe.hmget(done_key, list(values))))
                changed = {job_id: text_or_none(old) for job_id, old in counted.items()
                           if old is None or text(old) != values[job_id]}
                if not changed:
                    pipe.unwatch()
                    rt.redis.zrem(keys.BATCH_UNCOUNTED, *values)
                    return
                total, finished_before, finished_at, url = pipe.hmget(key, ["total", "finished", "finished_at",
                                                                             "callback_url"])
                pipe.multi()
                deltas: Counter[str] = Counter()
                audio = 0.0
                for job_id, old in changed.items():
                    status, duration = values[job_id].split(":")
                    deltas[f"count_{status}"] += 1
                    audio += float(duration) if status == JobStatus.SUCCEEDED.value else 0.0
                    if old is None:
                        deltas["finished"] += 1
                    else:
                        old_status, old_duration = old.split(":")
                        deltas[f"count_{old_status}"] -= 1
                        audio -= float(old_duration) if old_status == JobStatus.SUCCEEDED.value else 0.0
                for name, n in deltas.items():
                    if n:
                        pipe.hincrby(key, name, n)
                if audio:
                    pipe.hincrbyfloat(key, "audio_seconds", round(audio, 3))
                completes = (total is not None and finished_at is None
                             and int(finished_before or 0) + deltas["finished"] >= int(total))
                if completes:
                    at = now()
                    pipe.hset(key, "finished_at", str(at))
                    if url:
                        pipe.zadd(keys.CALLBACK_OUTBOX, {callbacks.outbox_member("batch", batch_id): at})
                pipe.hset(done_key, mapping={job_id: values[job_id] for job_id in changed})
                pipe.srem(keys.batch_running(batch_id), *changed)
                pipe.zrem(keys.BATCH_UNCOUNTED, *values)
                for name in (key, keys.batch_items(batch_id), done_key, keys.batch_running(batch_id)):
                    pipe.expire(name, ttl)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    if completes:
        log.info("batch %s finished", batch_id)
        _batch_finished(rt, batch_id)


@callbacks.outbox_kind("batch")
def _batch_finished(rt: Runtime, batch_id: str) -> callbacks.Outcome | None:
    """Queue the batch's callback if it has one; never raises. Called once, by whoever set its
    ``finished_at`` (:func:`_count_finished`), and by the outbox sweep for a batch whose callback
    that caller never queued. None: nothing is owed (no such batch, or no ``callback_url``)."""
    try:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hgetall(keys.batch(batch_id))
        pipe.scard(keys.batch_running(batch_id))
        data, running = pipe.execute()
    except redis.RedisError as exc:
        log.warning("batch %s finished, but its callback could not be looked up: %s", batch_id, exc)
        return callbacks.Outcome.LEFT
    batch = Batch.from_redis(batch_id, data, int(running)) if data else None
    if batch is None or not batch.callback_url or batch.finished_at is None:
        return None
    return callbacks.queue_batch_callback(rt, batch_id, batch.callback_url, batch.key_id, batch.callback_summary())


# --- requests --------------------------------------------------------------------------------
class BatchRequest(BaseModel):
    """Many inputs at once (``POST /v1/batches``): each is a job; ``defaults`` fill what an input leaves out.

    The model checks every input's shape: an input of the wrong type refuses the whole
    batch (400 naming ``inputs[i].field``), as it is the sender's bug. What depends on the
    service (an unknown voice, a text too long or with nothing to speak) rejects only that
    input, which the answer lists under ``rejected``.
    """

    model_config = ConfigDict(extra="forbid")

    inputs: list[JobInput] = Field(min_length=1, description="the inputs, at most TTS_MAX_BATCH_INPUTS")
    defaults: SpeechOptions | None = Field(None, description="voice, format, speed ... for every input")
    concatenate: StrictBool = Field(False, description="true: the result is one concatenated file")
    gap_ms: StrictInt = Field(0, ge=0, le=MAX_GAP_MS, description="milliseconds of silence between items "
                                                                 "when concatenated")
    callback_url: CallbackUrl | None = None

    def fingerprint(self) -> str:
        """A hash of the request, to tell an idempotent retry from a different request."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def merged_defaults(self, default_voice: str, default_format: str) -> dict[str, Any]:
        """The batch's defaults over the service's."""
        given = self.defaults.given() if self.defaults is not None else {}
        return {"voice": default_voice, "format": default_format, **given}


# --- the batch record ---------------------------------------------------------------------------
@dataclass
class Batch:
    """A batch as stored, with its live counters."""

    id: str
    total: int
    created_at: float
    format: str = "mp3"
    concatenate: bool = False
    gap_ms: int = 0
    defaults: dict[str, Any] = field(default_factory=dict)
    characters: int = 0
    audio_seconds: float = 0.0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    finished: int = 0
    running: int = 0
    rejected: int = 0
    settled_at_submit: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    cancelled_at: float | None = None
    correlation_id: str | None = None
    #: The tenant that owns the batch and its items (``tasks.tenants``).
    tenant: str = DEFAULT_TENANT
    key_id: str | None = None
    #: Where to POST a signed notice when the whole batch has finished (``tasks.callbacks``).
    callback_url: str | None = None
    #: That callback's delivery state (``tasks.callbacks``), JSON in the record.
    callback: dict[str, Any] | None = None

    @classmethod
    def from_redis(cls, batch_id: str, data: Mapping[bytes, bytes], running: int = 0) -> Batch:
        """Rebuild from HGETALL output and the running set's size."""
        f = {k.decode(): v.decode() for k, v in data.items()}

        def opt(name: str) -> float | None:
            return float(f[name]) if f.get(name) else None

        return cls(
            id=batch_id, total=int(f.get("total", 0)), created_at=float(f.get("created_at", 0)),
            format=f.get("format", "mp3"), concatenate=f.get("concatenate") == "1",
            gap_ms=int(f.get("gap_ms", 0)), defaults=json.loads(f.get("defaults", "{}")),
            characters=int(f.get("characters", 0)), audio_seconds=float(f.get("audio_seconds", 0)),
            succeeded=int(f.get("count_succeeded", 0)), failed=int(f.get("count_failed", 0)),
            cancelled=int(f.get("count_cancelled", 0)), finished=int(f.get("finished", 0)), running=running,
            rejected=int(f.get("rejected", 0)), settled_at_submit=int(f.get("settled_at_submit", 0)),
            started_at=opt("started_at"), finished_at=opt("finished_at"), cancelled_at=opt("cancelled_at"),
            correlation_id=f.get("correlation_id"), tenant=f.get("tenant", DEFAULT_TENANT), key_id=f.get("key_id"),
            callback_url=f.get("callback_url"), callback=json.loads(f["callback"]) if f.get("callback") else None,
        )

    @property
    def done(self) -> bool:
        """True when every item has finished."""
        return self.finished >= self.total

    @property
    def status(self) -> BatchStatus:
        """queued, running, succeeded, partially_succeeded, failed or cancelled (see docs/batches.md)."""
        if self.cancelled_at:
            return BatchStatus.CANCELLED
        if not self.done:
            started = self.started_at or self.finished > self.settled_at_submit
            return BatchStatus.RUNNING if started else BatchStatus.QUEUED
        if self.succeeded >= self.total:
            return BatchStatus.SUCCEEDED
        if self.succeeded:
            return BatchStatus.PARTIALLY_SUCCEEDED
        if self.failed:
            return BatchStatus.FAILED
        return BatchStatus.CANCELLED

    def counts(self) -> dict[str, int]:
        """Items by status (an item waiting for a retry counts as running)."""
        running = max(0, min(self.running, self.total - self.finished))
        return {
            "total": self.total,
            "queued": max(0, self.total - self.finished - running),
            "running": running,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
        }

    def public(self) -> dict[str, Any]:
        """The batch as the API shows it."""
        return {
            "id": self.id,
            "object": "batch",
            "status": self.status.value,
            "counts": self.counts(),
            "request_counts": {"total": self.total, "completed": self.succeeded,
                               "failed": self.failed + self.cancelled},
            "percent_done": round(100.0 * self.finished / self.total, 1) if self.total else 100.0,
            "characters": self.characters,
            "audio_duration_seconds": round(self.audio_seconds, 3),
            "rejected_at_submit": self.rejected,
            "format": self.format,
            "defaults": self.defaults,
            "concatenate": self.concatenate,
            "gap_ms": self.gap_ms,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "cancelled_at": iso(self.cancelled_at),
            "correlation_id": self.correlation_id,
            **({"callback": public_callback(self.callback_url, self.callback)} if self.callback_url else {}),
        }

    def callback_summary(self) -> dict[str, Any]:
        """What the batch's callback says about it: id, status, tenant, counts, size and times."""
        return {"id": self.id, "status": self.status.value, "tenant": self.tenant, "counts": self.counts(),
                "characters": self.characters, "audio_duration_seconds": round(self.audio_seconds, 3),
                "created_at": iso(self.created_at), "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at), "cancelled_at": iso(self.cancelled_at),
                "correlation_id": self.correlation_id}


@dataclass
class ItemMeta:
    """What the batch endpoints show of one item (read from its job record)."""

    index: int
    job_id: str
    status: str
    name: str | None = None
    attempts: int = 0
    characters: int = 0
    duration: float | None = None
    audio_bytes: int | None = None
    format: str | None = None
    sample_rate: int | None = None
    cache_hit: bool = False
    error_code: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    voice: str | None = None
    task_id: str | None = None
    callback_url: str | None = None
    #: The result store's name of the item's audio (``Job.audio_ref``), so a zip streams it without
    #: reading the record again.
    audio_ref: str | None = None

    @classmethod
    def from_fields(cls, index: int, job_id: str, values: list[bytes | None]) -> ItemMeta:
        """From an HMGET of :data:`_ITEM_FIELDS` (all None: the job expired)."""
        f = dict(zip(_ITEM_FIELDS, (v.decode() if v is not None else None for v in values)))
        if f["status"] is None:
            return cls(index=index, job_id=job_id, status="expired")

        def num(name: str, kind: type = float) -> Any:
            return kind(f[name]) if f.get(name) not in (None, "") else None

        return cls(index=index, job_id=job_id, status=f["status"], name=f["name"], attempts=num("attempts", int) or 0,
                   characters=num("characters", int) or 0, duration=num("duration"),
                   audio_bytes=num("audio_bytes", int), format=f["format"] or COMPACT_DEFAULTS["format"], sample_rate=num("output_sample_rate", int),
                   cache_hit=f["cache_hit"] == "1", error_code=f["error_code"], error=f["error"],
                   started_at=num("started_at"), finished_at=num("finished_at"), voice=f["voice"],
                   task_id=f["task_id"], callback_url=f["callback_url"], audio_ref=f["audio_ref"])

    @property
    def error_body(self) -> dict[str, Any] | None:
        """The item's error as ``{code, message}``, or None."""
        if self.status == "expired":
            return {"code": "expired", "message": "the item's job record has expired"}
        if not self.error or self.status == JobStatus.SUCCEEDED.value:
            return None
        return {"code": self.error_code or "synthesis_failed", "message": self.error}

    def public(self) -> dict[str, Any]:
        """The item as ``GET /v1/batches/{id}/items`` shows it."""
        return {
            "id": self.job_id,
            "index": self.index,
            "name": self.name,
            "status": self.status,
            "attempts": self.attempts,
            "characters": self.characters,
            "duration_seconds": self.duration,
            "bytes": self.audio_bytes,
            "cache_hit": self.cache_hit,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error_body,
        }


@dataclass
class Rejection:
    """An input refused at submit time."""

    index: int
    job_id: str
    code: str
    message: str
    name: str | None = None

    def public(self) -> dict[str, Any]:
        """As listed in responses."""
        return {"index": self.index, "id": self.job_id, "name": self.name,
                "error": {"code": self.code, "message": self.message}}


# --- the service ----------------------------------------------------------------------------------
class BatchService:
    """Batch operations over a runtime and its :class:`~tasks.service.JobService`."""

    def __init__(self, runtime: Runtime, jobs: JobService) -> None:
        self.rt = runtime
        self.jobs = jobs

    # --- submit ------------------------------------------------------------------------
    def submit(self, request: BatchRequest, correlation_id: str | None = None,
               idempotency_key: str | None = None,
               owner: Principal = OPEN_PRINCIPAL) -> tuple[Batch, list[Rejection], bool]:
        """Create a batch for ``owner``: every good input queued (or served from the cache), bad ones stored as failed.

        Returns (batch, rejected inputs, created). With an ``idempotency_key`` already used by the same
        tenant for the same request, the earlier batch comes back with ``created`` False and nothing is
        queued. Admission (:mod:`tasks.admission`) is checked with the batch's size before anything is stored.
        """
        settings = self.rt.settings
        if len(request.inputs) > settings.max_batch_inputs:
            raise TooManyInputs(len(request.inputs), settings.max_batch_inputs)
        defaults = request.merged_defaults(settings.default_voice, settings.default_format)
        self._check_defaults(defaults)
        callbacks.check_callback(self.rt, request.callback_url, owner.key_id)
        batch_id = uuid.uuid4().hex
        claims = self.jobs.idempotency
        claim = tenant_key(owner.tenant, idempotency_key) if idempotency_key else None
        if claim:
            earlier = self._claim(claim, batch_id, request, owner.tenant)
            if earlier is not None:
                return earlier, [], False
        try:
            batch, rejected = self._create(request, defaults, batch_id, correlation_id, owner)
        except BaseException:
            if claim:  # nothing was accepted: the key is free for a retry
                claims.release(ResourceKind.BATCH, claim, batch_id)
            raise
        return batch, rejected, True

    def _claim(self, key: str, batch_id: str, request: BatchRequest, tenant: str) -> Batch | None:
        """Claim ``key`` for a new batch; the earlier batch when a stored one holds it."""
        claims, fingerprint = self.jobs.idempotency, request.fingerprint()
        while True:
            existing = claims.claim(ResourceKind.BATCH, key, batch_id, fingerprint)
            if existing is None:
                return None
            try:
                return self.get(existing, tenant)
            except BatchNotFound:  # claimed by a submit that died before storing its batch, or still storing it
                if self.rt.redis.hexists(keys.batch(existing), "deleted_at"):
                    # Its owner deleted it: the key names nothing now, and is free for this request.
                    if claims.take_over(ResourceKind.BATCH, key, existing, batch_id, fingerprint, older_than=0):
                        return None
                    continue  # another submit took it over first: look again
                if claims.take_over(ResourceKind.BATCH, key, existing, batch_id, fingerprint,
                                    older_than=BATCH_CLAIM_GRACE_SECONDS):
                    return None
                if claims.holder(ResourceKind.BATCH, key) == existing and not self.rt.redis.exists(
                        keys.batch(existing)):
                    raise IdempotencyKeyInUse(key, kind="batch") from None
                # the batch appeared meanwhile, or another submit moved the claim: look again

    def _create(self, request: BatchRequest, defaults: dict[str, Any], batch_id: str, correlation_id: str | None,
                owner: Principal) -> tuple[Batch, list[Rejection]]:
        created = now()
        versions: dict[str, str] = {}
        good: list[Job] = []
        rejected: list[Rejection] = []
        rejected_jobs: list[Job] = []
        for index, job_input in enumerate(request.inputs):
            job_request = job_input.resolve(defaults)
            try:
                _, key = self.jobs.prepare(job_request, versions)
                good.append(self.jobs.build_job(job_request, correlation_id, owner, cache_key=key, batch_id=batch_id,
                                                batch_index=index))
            except (PipelineError, EngineError) as exc:
                job = self._rejected_job(job_request, exc, batch_id, index, correlation_id, created)
                job.tenant, job.key_id = owner.tenant, None if owner.open_mode else owner.key_id
                rejected_jobs.append(job)
                rejected.append(Rejection(index=index, job_id=job.id, code=job.error_code or "invalid_request",
                                          message=job.error or "", name=job.name))
        if not good:
            first = rejected[0]
            raise InvalidBatch(f"every input was rejected (input {first.index}: {first.message})",
                               [r.public() for r in rejected[:MAX_LISTED_ERRORS]])
        characters = sum(job.characters for job in good)
        self.jobs.admission.check(owner, jobs=len(good), characters=characters)
        items: list[str | None] = [None] * len(request.inputs)
        for job in good + rejected_jobs:
            items[job.batch_index or 0] = job.id
        batch = Batch(
            id=batch_id, total=len(items), created_at=created,
            format=engine.audio.validate_format(str(defaults.get("format"))).name,
            concatenate=request.concatenate, gap_ms=request.gap_ms, defaults=defaults,
            characters=characters, rejected=len(rejected_jobs),
            failed=len(rejected_jobs), finished=len(rejected_jobs), correlation_id=correlation_id,
            tenant=owner.tenant, key_id=None if owner.open_mode else owner.key_id, callback_url=request.callback_url,
        )
        batch.settled_at_submit = len(rejected_jobs)
        self._store_batch(batch, [i for i in items if i is not None], rejected_jobs)
        try:
            served = self.jobs.accept_many(good, correlation_id)
            if served:  # items finished at submit do not make the batch "running"
                self.rt.redis.hincrby(keys.batch(batch_id), "settled_at_submit", len(served))
        except Exception:
            self._discard(batch, items)
            raise
        self.jobs.admission.charge(owner, characters)
        log.info("batch %s accepted: %d inputs, %d queued, %d from the cache, %d rejected", batch_id, batch.total,
                 len(good) - len(served), len(served), len(rejected_jobs))
        return self.get(batch_id), rejected

    def _check_defaults(self, defaults: Mapping[str, Any]) -> None:
        """Bad defaults are the request's fault, not each input's: refuse the whole batch."""
        try:
            JobInput.model_validate({"text": "check"}).resolve(defaults).options().validate(self.rt.catalog)
        except (PipelineError, EngineError) as exc:
            exc.args = (f"defaults: {exc}",)
            raise

    def _rejected_job(self, request: JobRequest, exc: Exception, batch_id: str, index: int,
                      correlation_id: str | None, created: float) -> Job:
        return Job(
            id=new_job_id(), text=_storable(request.text), voice=_storable(request.voice), format=request.format,
            speed=request.speed, status=JobStatus.FAILED, characters=len(request.text),
            max_attempts=self.rt.settings.max_attempts,
            created_at=created + index * 1e-6, finished_at=created,  # distinct listing scores
            error_code=getattr(exc, "code", None) or "invalid_request",
            error=str(exc) or type(exc).__name__, error_type=type(exc).__name__, correlation_id=correlation_id,
            batch_id=batch_id, batch_index=index, name=_storable(request.name) if request.name else None,
        )

    def _store_batch(self, batch: Batch, item_ids: list[str], rejected: list[Job]) -> None:
        ttl = self.rt.settings.result_ttl
        key = keys.batch(batch.id)
        record: HashMapping = {
            "id": batch.id, "total": batch.total, "created_at": batch.created_at, "format": batch.format,
            "concatenate": "1" if batch.concatenate else "0", "gap_ms": batch.gap_ms,
            "defaults": json.dumps(batch.defaults), "characters": batch.characters, "audio_seconds": 0,
            "rejected": batch.rejected, "settled_at_submit": batch.settled_at_submit,
            "count_failed": batch.failed, "finished": batch.finished,
        }
        for name in ("correlation_id", "tenant", "key_id", "callback_url"):
            value = getattr(batch, name)
            if value:
                record[name] = value
        pipe = self.rt.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=record)
        for start in range(0, len(item_ids), PIPELINE_CHUNK):
            pipe.rpush(keys.batch_items(batch.id), *item_ids[start:start + PIPELINE_CHUNK])
        if rejected:
            pipe.hset(keys.batch_done(batch.id), mapping={job.id: f"{job.status.value}:0" for job in rejected})
            pipe.expire(keys.batch_done(batch.id), ttl)
        for name in (key, keys.batch_items(batch.id)):
            pipe.expire(name, ttl)
        for index in (keys.BATCHES_INDEX, keys.tenant_batches(batch.tenant)):
            pipe.zadd(index, {batch.id: job_score(batch.created_at)})
            pipe.zremrangebyscore(index, 0, job_score(now() - ttl))
        pipe.execute()
        self.rt.jobs.create_many(rejected)
        if batch.finished >= batch.total:
            self.rt.redis.hsetnx(key, "finished_at", str(now()))

    def _discard(self, batch: Batch, items: Sequence[str | None]) -> None:
        """Best effort: take back a batch that could not be queued, so nothing claims to be accepted."""
        ids = [i for i in items if i]
        try:
            pipe = self.rt.redis.pipeline(transaction=False)
            for start in range(0, len(ids), PIPELINE_CHUNK):
                chunk = ids[start:start + PIPELINE_CHUNK]
                pipe.delete(*[keys.job(i) for i in chunk])
                for index in (keys.JOBS_INDEX, keys.ACTIVE_JOBS, keys.tenant_jobs(batch.tenant),
                              keys.tenant_active(batch.tenant)):
                    pipe.zrem(index, *chunk)
            pipe.delete(keys.batch(batch.id), keys.batch_items(batch.id), keys.batch_done(batch.id),
                        keys.batch_running(batch.id))
            pipe.zrem(keys.BATCHES_INDEX, batch.id)
            pipe.zrem(keys.tenant_batches(batch.tenant), batch.id)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis is probably down; the records expire by TTL
            log.warning("could not take back batch %s: %s", batch.id, exc)

    # --- read --------------------------------------------------------------------------
    def get(self, batch_id: str, tenant: str | None = None) -> Batch:
        """The batch, or BatchNotFound; with ``tenant``, another tenant's batch (or a deleted one) is BatchNotFound too."""
        pipe = self.rt.redis.pipeline(transaction=False)
        pipe.hgetall(keys.batch(batch_id))
        pipe.scard(keys.batch_running(batch_id))
        data, running = pipe.execute()
        if not data:
            raise BatchNotFound(batch_id)
        batch = Batch.from_redis(batch_id, data, int(running))
        if tenant is not None and (batch.tenant != tenant or b"deleted_at" in data):
            raise BatchNotFound(batch_id)
        return batch

    def iter_items(self, batch_id: str, start: int = 0, window: int = READ_WINDOW) -> Iterator[ItemMeta]:
        """Every item from ``start`` on, in input order (records read ``window`` at a time)."""
        pos = max(0, start)
        while True:
            stop = min(pos + window - 1, MAX_INDEX)
            ids = [text(i) for i in self.rt.redis.lrange(keys.batch_items(batch_id), pos, stop)]
            if not ids:
                return
            pipe = self.rt.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), _ITEM_FIELDS)
            for offset, (job_id, values) in enumerate(zip(ids, pipe.execute())):
                yield ItemMeta.from_fields(pos + offset, job_id, values)
            pos += len(ids)
            if len(ids) < window:
                return

    def items(self, batch_id: str, status: str | None = None, cursor: int = 0, limit: int = 100,
              tenant: str | None = None) -> tuple[list[ItemMeta], int | None]:
        """A page of items in input order, optionally of one status; returns (items, next cursor)."""
        batch = self.get(batch_id, tenant)
        out: list[ItemMeta] = []
        for item in self.iter_items(batch_id, start=cursor, window=max(limit, 100) if status is None else READ_WINDOW):
            if status is not None and item.status != status:
                continue
            out.append(item)
            if len(out) >= limit:
                following = item.index + 1
                return out, following if following < batch.total else None
        return out, None

    def list(self, limit: int = 50, cursor: int | None = None,
             tenant: str | None = None) -> tuple[list[Batch], int | None]:
        """Batches newest first (``tenant``'s only, from its index); returns (batches, next cursor:
        an exclusive creation-time score)."""
        index = keys.tenant_batches(tenant) if tenant is not None else keys.BATCHES_INDEX
        upper: str | int = f"({cursor}" if cursor is not None else "+inf"
        out: list[Batch] = []
        while len(out) < limit:
            rows = scored_members(self.rt.redis.zrevrangebyscore(index, upper, "-inf", start=0,
                                                                 num=limit - len(out), withscores=True))
            if not rows:
                return out, None
            pipe = self.rt.redis.pipeline(transaction=False)
            for member, _ in rows:
                pipe.hgetall(keys.batch(member))
                pipe.scard(keys.batch_running(member))
            results = pipe.execute()
            for n, (member, _score) in enumerate(rows):
                data, running = results[2 * n], results[2 * n + 1]
                if data:
                    out.append(Batch.from_redis(member, data, int(running)))
                else:
                    self.rt.redis.zrem(index, member)
            upper = f"({int(rows[-1][1])}"
            if len(out) >= limit:
                return out, int(rows[-1][1])
        return out, None

    # --- change ------------------------------------------------------------------------
    def cancel(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Cancel every item that has not finished; finished items keep their audio.

        Per item this is what ``JobService.cancel`` does to an unfinished job (the same
        guarded status transition, revoke, metrics and batch count), done in bulk: one
        revoke broadcast and one counting pipeline for the whole batch. No audio is
        deleted, even for an item that finishes while the batch is being cancelled.
        """
        batch = self.get(batch_id, tenant)
        if batch.done:
            return batch
        self.rt.redis.hsetnx(keys.batch(batch_id), "cancelled_at", str(now()))
        unfinished = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
        items = [Job(id=item.job_id, text="", voice=item.voice or "", status=JobStatus(item.status),
                     batch_id=batch_id, batch_index=item.index, task_id=item.task_id, callback_url=item.callback_url)
                 for item in self.iter_items(batch_id) if item.status in unfinished]
        cancelled = self.jobs.cancel_many(items)
        log.info("batch %s cancelled: %d unfinished items cancelled", batch_id, len(cancelled))
        return self.get(batch_id)

    def delete(self, batch_id: str, tenant: str | None = None) -> Batch:
        """Delete a batch (``tenant``'s only): cancel what is unfinished, then hide it and its items.

        Each item's job is deleted as ``JobService.delete`` deletes one (audio dropped, record
        marked ``deleted_at``, out of the tenant's list), a window of items per pipeline; the
        batch record is marked the same way and leaves the tenant's batch list. Every
        tenant-scoped read of the batch or of an item answers 404 from then on.
        """
        batch = self.cancel(batch_id, tenant)
        deleted_at = str(now())
        job_ids = [item.job_id for item in self.iter_items(batch_id)]
        for start in range(0, len(job_ids), READ_WINDOW):
            pipe = self.rt.redis.pipeline(transaction=False)
            for job_id in job_ids[start:start + READ_WINDOW]:
                pipe.hdel(keys.job(job_id), "audio_ref")  # as JobStore.delete_audio does
                pipe.delete(keys.legacy_job_audio(job_id))
                pipe.hset(keys.job(job_id), "deleted_at", deleted_at)
                pipe.expire(keys.job(job_id), self.rt.jobs.ttl)  # as JobStore.update does
            pipe.zrem(keys.tenant_jobs(batch.tenant), *job_ids[start:start + READ_WINDOW])
            pipe.execute()
        pipe = self.rt.redis.pipeline(transaction=True)
        pipe.hset(keys.batch(batch_id), "deleted_at", deleted_at)
        pipe.zrem(keys.tenant_batches(batch.tenant), batch_id)
        pipe.execute()
        log.info("batch %s deleted with its %d items", batch_id, len(job_ids))
        return batch


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(value: str) -> str:
    """A rejected input's text or name as it can be stored: a lone surrogate (which UTF-8
    cannot encode, and the reason it was refused) becomes U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", value)


def format_extension(fmt: str | None) -> str:
    """The file extension of a format (``mp3`` when unknown)."""
    spec = engine.FORMATS.get(fmt or "")
    return spec.extension if spec else "mp3"

"""Jobs and the Redis store that keeps them.

A job is a Redis hash (``tts:job:{id}``) holding the request, status, timings and
outcome; its attempt history sits beside it. Both expire ``TTS_RESULT_TTL`` seconds after
the job was last written.

Its audio is not in Redis: it lives in the result store (:mod:`tasks.result_store`, a
folder or an S3 bucket), content-addressed, and the record names it by ``audio_ref`` (the
sha256 of the bytes). The bytes are stored *before* the transaction that names them, so a
record never names an object that was not written; a writer that then loses its
transaction (a superseded attempt) leaves an object nobody references, which the store's
own expiry index deletes after ``TTS_RESULT_TTL`` like any other. One object may be named
by several records (identical audio, a cache hit) and by a cache entry: each reference
extends the object's life (``ResultStore.retain`` never shortens it), so dropping one
reference (``delete_audio``) never deletes bytes another one still needs.

A batch item that reaches a final status also enters ``tts:batches:uncounted`` in the same
transaction: its batch counts it later, from a hook (``tasks.batches``), and takes it out
then; a process killed in between leaves it there for the reconciler's sweep, so a batch
never stays "running" for want of one count.

Work that must follow a write even if the writing process dies right after it (a job's
callback) is not queued inside the store: the caller names an ``outbox`` member, which
:meth:`JobStore.create` and :meth:`JobStore.transition` add to ``tts:callbacks:outbox``
in the same MULTI as the record, so the record and the debt it creates commit together or
not at all. The store knows nothing of what the member means; ``tasks.callbacks`` drains it.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import redis

from engine.synthesis import SynthesisOptions

from . import keys
from .exceptions import JobNotFound, ResultMissing
from .outbound import public_callback
from .redis_values import HashMapping, as_bytes, decode_hash, scored_members, text, text_or_none
from .result_store import ResultStore
from .status import JobStatus
from .tenants import DEFAULT_TENANT

log = logging.getLogger(__name__)

__all__ = ["Job", "JobStore", "new_job_id", "now"]

#: Redis commands per pipeline when writing many job records.
PIPELINE_CHUNK = 1000


def now() -> float:
    """Wall-clock time in seconds (float), the unit of every timestamp in a job."""
    return time.time()


def new_job_id() -> str:
    """A new random job id (32 hex characters)."""
    return uuid.uuid4().hex


def job_score(created_at: float) -> int:
    """The listing index score of a job: its creation time in microseconds."""
    return int(created_at * 1_000_000)


def iso(ts: float | None) -> str | None:
    """An ISO 8601 UTC string for a timestamp, or None."""
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


@dataclass
class Job:
    """One synthesis request and everything known about its progress."""

    id: str
    text: str
    voice: str
    format: str = "mp3"
    speed: float = 1.0
    sample_rate: int | None = None
    seed: int | None = None
    markdown: bool = False
    cache: bool = True
    status: JobStatus = JobStatus.QUEUED
    characters: int = 0
    attempts: int = 0
    max_attempts: int = 3
    created_at: float = 0.0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    next_retry_at: float | None = None
    error_code: str | None = None
    error: str | None = None
    error_type: str | None = None
    cache_key: str | None = None
    cache_hit: bool = False
    audio_bytes: int | None = None
    #: The result store's name for the job's audio (the sha256 of its bytes), once it succeeded.
    audio_ref: str | None = None
    duration: float | None = None
    output_sample_rate: int | None = None
    media_type: str | None = None
    correlation_id: str | None = None
    task_id: str | None = None
    worker: str | None = None
    batch_id: str | None = None
    batch_index: int | None = None
    name: str | None = None
    idempotency_key: str | None = None
    replays: int = 0
    synthesis_seconds: float | None = None
    #: The tenant that owns the job (``tasks.tenants``): every API read and write is filtered by it.
    tenant: str = DEFAULT_TENANT
    #: The id of the API key that submitted it (None: open mode or a bootstrap key).
    key_id: str | None = None
    #: Where to POST a signed notice when the job finishes (``tasks.callbacks``).
    callback_url: str | None = None
    #: Its callback's delivery state (``tasks.callbacks``: status, attempts, last error), JSON in the record.
    callback: dict[str, Any] | None = None
    #: When its owner deleted it (``DELETE /v1/jobs/{id}``): the API answers 404 for it from then
    #: on, while the record stays for a worker still running it until the record expires.
    deleted_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # --- (de)serialisation ------------------------------------------------------------------
    def to_redis(self, *, defaults: bool = False) -> HashMapping:
        """Flat string mapping for HSET: None fields are left out, and so are fields at their
        default value (:data:`COMPACT_FIELDS`; :meth:`from_redis` restores them), unless
        ``defaults`` (a change that sets a field back to its default must write it)."""
        out: HashMapping = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if not defaults and f.name in COMPACT_DEFAULTS and value == COMPACT_DEFAULTS[f.name]:
                continue
            if isinstance(value, JobStatus):
                value = value.value
            elif isinstance(value, bool):
                value = "1" if value else "0"
            elif isinstance(value, dict):
                value = json.dumps(value)
            out[f.name] = str(value)
        return out

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Job:
        """Rebuild a job from HGETALL output (decoded strings); a field left out is its default.

        Reads records of every earlier version too (they wrote every non-None field).
        """
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            raw = data[f.name]
            kind = str(f.type)
            if f.name == "status":
                kwargs[f.name] = JobStatus(raw)
            elif kind.startswith("bool"):
                kwargs[f.name] = raw == "1"
            elif kind.startswith("int"):
                kwargs[f.name] = int(raw)
            elif kind.startswith("float"):
                kwargs[f.name] = float(raw)
            elif kind.startswith("dict"):
                kwargs[f.name] = json.loads(raw)
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)

    def options(self) -> SynthesisOptions:
        """The engine options of this job."""
        return SynthesisOptions(voice=self.voice, speed=self.speed, format=self.format,
                                sample_rate=self.sample_rate, seed=self.seed, markdown=self.markdown)

    def public(self, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The job as the API shows it (no text, ISO times)."""
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "voice": self.voice,
            "format": self.format,
            "speed": self.speed,
            "sample_rate": self.output_sample_rate or self.sample_rate,
            "seed": self.seed,
            "characters": self.characters,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "cache_hit": self.cache_hit,
            "created_at": iso(self.created_at),
            "queued_at": iso(self.queued_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "next_retry_at": iso(self.next_retry_at),
            "audio": None,
            "error": None,
        }
        if self.name:
            body["name"] = self.name
        if self.batch_id:
            body["batch_id"] = self.batch_id
            body["batch_index"] = self.batch_index
        if self.correlation_id:
            body["correlation_id"] = self.correlation_id
        if self.callback_url:
            body["callback"] = public_callback(self.callback_url, self.callback)
        if self.status is JobStatus.SUCCEEDED:
            body["audio"] = {
                "duration_seconds": self.duration,
                "bytes": self.audio_bytes,
                "media_type": self.media_type,
                "sample_rate": self.output_sample_rate,
            }
        if self.error:
            body["error"] = {"code": self.error_code or "synthesis_failed", "message": self.error,
                             "type": self.error_type}
        if history is not None:
            body["history"] = history
        return body

    def as_dict(self) -> dict[str, Any]:
        """Every field (for dead-letter records and debugging)."""
        data = asdict(self)
        data["status"] = self.status.value
        return data


#: Fields :meth:`Job.to_redis` leaves out of the hash while they hold their default (about 110
#: bytes of a queued record, a sixth of it: a 10,000-item batch is 10,000 records). Never
#: ``status``, ``id``, ``text``, ``voice`` or the timestamps: raw readers (HMGET in
#: ``JobStore.transition``, ``tasks.reconciler``, ``tasks.batches``) need those present, and read
#: every field listed here with its default when it is missing (``attempts`` by HINCRBY too).
COMPACT_FIELDS = ("format", "speed", "markdown", "cache", "characters", "attempts", "max_attempts", "cache_hit",
                  "replays", "tenant", "extra")
COMPACT_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not MISSING else f.default
    for f in fields(Job) if f.name in COMPACT_FIELDS
}


class JobStore:
    """Jobs in Redis, their audio in ``results``. ``ttl``: seconds a job, its audio and history live
    after the last write."""

    def __init__(self, client: redis.Redis, ttl: int = 24 * 3600, *, results: ResultStore) -> None:
        self.redis = client
        self.ttl = ttl
        self.results = results

    def put_audio(self, data: bytes, lives_until: float | None = None) -> str:
        """Store a job's audio in the result store for ``ttl`` seconds (or until ``lives_until``, when
        something else names it longer: its cache entry); returns its ref for ``audio_ref``.

        Call it before the transaction that names the ref (module docstring).
        """
        return self.results.put(data, max(now() + self.ttl, lives_until or 0.0))

    def create(self, job: Job, audio: bytes | None = None, outbox: str | None = None, *,
               audio_ref: str | None = None, audio_expires_at: float | None = None) -> Job:
        """Store a new job and index it for listing, globally and by tenant.

        A job stored finished with audio (a cache hit) names it: ``audio`` is put into the
        result store first; or ``audio_ref`` names an object already stored (the cache's),
        whose life is extended to the job's unless ``audio_expires_at`` (when the caller
        knows the object lives until then) already covers it; an object gone by then raises
        :class:`ResultMissing` and nothing is stored. ``outbox``: a member added to the
        outbox in the same transaction (see the module docstring).
        """
        if audio is not None:
            job.audio_ref = self.put_audio(audio)
        elif audio_ref is not None:
            lives_until = now() + self.ttl
            if (audio_expires_at is None or audio_expires_at < lives_until) \
                    and not self.results.retain(audio_ref, lives_until):
                raise ResultMissing(audio_ref)
            job.audio_ref = audio_ref
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.job(job.id), mapping=job.to_redis())
        pipe.expire(keys.job(job.id), self.ttl)
        self._index(pipe, [job])
        if job.batch_id and job.status.finished:  # a batch item served from the cache: owed to the count
            pipe.zadd(keys.BATCH_UNCOUNTED, {job.id: now()})
        if outbox is not None:
            pipe.zadd(keys.CALLBACK_OUTBOX, {outbox: now()})
        pipe.execute()
        return job

    def create_many(self, jobs: list[Job]) -> None:
        """Store many new jobs as :meth:`create` does, :data:`PIPELINE_CHUNK` records per round trip."""
        for start in range(0, len(jobs), PIPELINE_CHUNK):
            chunk = jobs[start:start + PIPELINE_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for job in chunk:
                pipe.hset(keys.job(job.id), mapping=job.to_redis())
                pipe.expire(keys.job(job.id), self.ttl)
            self._index(pipe, chunk, trim=start + PIPELINE_CHUNK >= len(jobs))
            pipe.execute()

    def _index(self, pipe: Any, jobs: list[Job], trim: bool = True) -> None:
        """Add ``jobs`` to the listing indexes (all jobs, the tenant's, the unfinished ones) in ``pipe``."""
        by_tenant: dict[str, list[Job]] = {}
        for job in jobs:
            by_tenant.setdefault(job.tenant, []).append(job)
        pipe.zadd(keys.JOBS_INDEX, {job.id: job_score(job.created_at) for job in jobs})
        active = {job.id: job_score(job.created_at) for job in jobs if not job.status.finished}
        if active:
            pipe.zadd(keys.ACTIVE_JOBS, active)
        horizon = job_score(now() - self.ttl)
        for tenant, owned in by_tenant.items():
            pipe.zadd(keys.tenant_jobs(tenant), {job.id: job_score(job.created_at) for job in owned})
            mine = {job.id: job_score(job.created_at) for job in owned if not job.status.finished}
            if mine:
                pipe.zadd(keys.tenant_active(tenant), mine)
            if trim:
                pipe.zremrangebyscore(keys.tenant_jobs(tenant), 0, horizon)
        if trim:
            pipe.zremrangebyscore(keys.JOBS_INDEX, 0, horizon)

    def delete(self, job_id: str) -> None:
        """Take a job record back (it was never accepted): the record and its listing entries."""
        tenant = text_or_none(self.redis.hget(keys.job(job_id), "tenant")) or DEFAULT_TENANT
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.job(job_id))
        pipe.zrem(keys.JOBS_INDEX, job_id)
        pipe.zrem(keys.ACTIVE_JOBS, job_id)
        pipe.zrem(keys.tenant_jobs(tenant), job_id)
        pipe.zrem(keys.tenant_active(tenant), job_id)
        pipe.execute()

    def status(self, job_id: str) -> JobStatus | None:
        """The job's status (one HGET), or None when it is not stored."""
        raw = self.redis.hget(keys.job(job_id), "status")
        return JobStatus(text(raw)) if raw is not None else None

    def get(self, job_id: str) -> Job:
        """The job, or :class:`JobNotFound`."""
        data = self.redis.hgetall(keys.job(job_id))
        if not data:
            raise JobNotFound(job_id)
        return Job.from_redis(decode_hash(data))

    def get_unfinished(self, job_id: str) -> Job | None:
        """The job if it is still stored and not finished, else None."""
        try:
            job = self.get(job_id)
        except JobNotFound:
            return None
        return None if job.status.finished else job

    def exists(self, job_id: str) -> bool:
        """True when the job is stored."""
        return bool(self.redis.exists(keys.job(job_id)))

    def update(self, job_id: str, **changes: Any) -> None:
        """Set some fields (None deletes the field) and refresh the TTL."""
        sets: HashMapping = {}
        dels: list[str] = []
        probe = Job(id=job_id, text="", voice="")
        for name, value in changes.items():
            if value is None:
                dels.append(name)
                continue
            setattr(probe, name, value)
            sets[name] = probe.to_redis(defaults=True)[name]
        pipe = self.redis.pipeline(transaction=True)
        if sets:
            pipe.hset(keys.job(job_id), mapping=sets)
        if dels:
            pipe.hdel(keys.job(job_id), *dels)
        pipe.expire(keys.job(job_id), self.ttl)
        pipe.expire(keys.job_history(job_id), self.ttl)
        pipe.execute()

    def transition(self, job_id: str, expected: set[JobStatus], *, task_id_is: str | None = None,
                   history: dict[str, Any] | None = None, outbox: str | None = None, audio: bytes | None = None,
                   **changes: Any) -> bool:
        """Apply ``changes`` only if the job's status is one of ``expected`` (optimistic lock).

        ``task_id_is``: also require that the record still names this delivery (the
        reconciler's guard against a worker that picked the job up meanwhile);
        ``history``: an entry appended in the same transaction, so the record and its
        history never disagree; ``outbox``: a member added to the outbox in the same
        transaction, so a process killed right after the transition still leaves the work
        it owes behind (module docstring); ``audio``: the job's audio, put into the result
        store before the transaction (:meth:`put_audio`) and named by ``audio_ref`` in it, so
        only the attempt that wins the transition makes the record point at its audio, and a
        superseded attempt can never replace the current one's (it leaves an unreferenced
        object, which expires by itself). A caller that stored the audio already passes
        ``audio_ref=`` among the changes instead. A job that reaches a final status leaves the
        index of unfinished jobs in the same transaction.
        """
        if audio is not None:
            changes["audio_ref"] = self.put_audio(audio)
        key = keys.job(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    status, current_task, owner, batch_id = pipe.hmget(key, ["status", "task_id", "tenant",
                                                                             "batch_id"])
                    if status is None or JobStatus(text(status)) not in expected:
                        pipe.unwatch()
                        return False
                    if task_id_is is not None and text_or_none(current_task) != task_id_is:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    probe = Job(id=job_id, text="", voice="")
                    sets: HashMapping = {}
                    dels: list[str] = []
                    for name, value in changes.items():
                        if value is None:
                            dels.append(name)
                        else:
                            setattr(probe, name, value)
                            sets[name] = probe.to_redis(defaults=True)[name]
                    if sets:
                        pipe.hset(key, mapping=sets)
                    if dels:
                        pipe.hdel(key, *dels)
                    pipe.expire(key, self.ttl)
                    if history is not None:
                        pipe.rpush(keys.job_history(job_id), json.dumps(history))
                        pipe.expire(keys.job_history(job_id), self.ttl)
                    if outbox is not None:
                        pipe.zadd(keys.CALLBACK_OUTBOX, {outbox: now()})
                    new_status = changes.get("status")
                    tenant_active = keys.tenant_active(text_or_none(owner) or DEFAULT_TENANT)
                    if new_status is not None and JobStatus(new_status).finished:
                        pipe.publish(keys.job_finished(job_id), JobStatus(new_status).value)
                        pipe.zrem(keys.ACTIVE_JOBS, job_id)
                        pipe.zrem(tenant_active, job_id)
                        if batch_id is not None:  # owed to its batch's count, whoever dies next
                            pipe.zadd(keys.BATCH_UNCOUNTED, {job_id: now()})
                    elif new_status is not None:  # unfinished again (a replay) or still: keep it indexed
                        pipe.zadd(keys.ACTIVE_JOBS, {job_id: job_score(now())}, nx=True)
                        pipe.zadd(tenant_active, {job_id: job_score(now())}, nx=True)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def incr_attempts(self, job_id: str) -> int:
        """Count one more delivery of the job to a worker; returns the new count."""
        return int(self.redis.hincrby(keys.job(job_id), "attempts", 1))

    def add_history(self, job_id: str, entry: dict[str, Any]) -> None:
        """Append one attempt's record."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(keys.job_history(job_id), json.dumps(entry))
        pipe.expire(keys.job_history(job_id), self.ttl)
        pipe.execute()

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """Every attempt's record, oldest first."""
        return [json.loads(text(raw)) for raw in self.redis.lrange(keys.job_history(job_id), 0, -1)]

    def audio_ref(self, job_id: str) -> str | None:
        """The result store's ref of the job's audio (one HGET), or None when it has none (any more)."""
        return text_or_none(self.redis.hget(keys.job(job_id), "audio_ref"))

    def audio(self, job_id: str) -> bytes | None:
        """The job's audio bytes, if still there (read whole from the result store)."""
        ref = self.audio_ref(job_id)
        return None if ref is None else self.results.read(ref)

    def adopt_legacy_audio(self, job_id: str) -> str | None:
        """Move audio an earlier version kept in Redis (``tts:job:{id}:audio``) into the result store
        and name it in the record; returns its ref, or None when there is none (any more).

        An upgrade leaves the jobs finished before it with their audio in Redis for up to
        ``TTS_RESULT_TTL``; the first download of each moves it (the bytes are stored first,
        then the record names them and the old key goes in one transaction, only while the
        record still exists and names no audio, so a record that expired meanwhile is not
        brought back as a fragment). Nothing writes the old key any more.
        """
        legacy = keys.legacy_job_audio(job_id)
        data = self.redis.get(legacy)
        if data is None:
            return None
        ref = self.put_audio(as_bytes(data))
        key = keys.job(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if not pipe.exists(key):
                        pipe.unwatch()
                        return None
                    current = text_or_none(pipe.hget(key, "audio_ref"))
                    pipe.multi()
                    if current is None:
                        pipe.hset(key, "audio_ref", ref)
                    pipe.delete(legacy)
                    pipe.execute()
                    log.info("job %s: audio of an earlier version moved from Redis into the result store", job_id)
                    return current or ref
                except redis.WatchError:
                    continue

    def delete_audio(self, job_id: str) -> bool:
        """Drop the job's reference to its audio; True if it had one.

        The audio is unreachable through the API at once (every download reads the ref from
        the record). The object itself stays until its expiry in the store's index: other
        records or a cache entry may name the same bytes. Audio an earlier version kept in
        Redis for this job (:meth:`adopt_legacy_audio`) is deleted outright.
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(keys.job(job_id), "audio_ref")
        pipe.delete(keys.legacy_job_audio(job_id))
        dropped, legacy = pipe.execute()
        return bool(dropped or legacy)

    def iter_recent(self, before: int | None = None, batch: int = 200,
                    tenant: str | None = None) -> Iterator[tuple[int, Job]]:
        """Jobs newest first, as (score, job), skipping expired ones; ``before``: an exclusive score cursor;
        ``tenant``: only that tenant's jobs (from its own index)."""
        index = keys.tenant_jobs(tenant) if tenant is not None else keys.JOBS_INDEX
        upper: str | int = f"({before}" if before is not None else "+inf"
        while True:
            rows = scored_members(self.redis.zrevrangebyscore(index, upper, "-inf", start=0, num=batch,
                                                              withscores=True))
            if not rows:
                return
            pipe = self.redis.pipeline(transaction=False)
            for member, _ in rows:
                pipe.hgetall(keys.job(member))
            for (member, score), data in zip(rows, pipe.execute()):
                if data:
                    yield int(score), Job.from_redis(decode_hash(data))
                else:
                    self.redis.zrem(index, member)
            upper = f"({int(rows[-1][1])}"
            if len(rows) < batch:
                return


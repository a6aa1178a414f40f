"""What the API, batches and the CLI do with jobs: submit, accept, look up, wait, cancel, list, replay.

Validation happens here, once, for every front end: a request that cannot succeed is
refused before anything is stored, with an error naming the field. State changes of
unfinished jobs (cancellation, and everything a worker does) go through
:mod:`tasks.lifecycle`; publishing goes through :mod:`tasks.publish`.
"""
from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import engine
from engine.exceptions import EmptyTextError
from engine.text import check_readable, chunk_text, normalize
from monitoring.recorder import CACHE_MISSES, JOBS_SUBMITTED

from . import keys, lifecycle
from .admission import Admission
from .cache import CachedAudio, cache_key
from .callbacks import check_callback
from .celery_app import BULK_QUEUE, SYNTHESIS_QUEUE
from .exceptions import AudioGone, IdempotencyKeyInUse, JobNotFinished, JobNotFound, TextTooLong
from .idempotency import IdempotencyKeys, ResourceKind, tenant_key
from .job import Job, new_job_id, now
from .job_request import JobRequest, check_name
from .publish import SYNTHESIZE_TASK, enqueue, send_tasks
from .runtime import Runtime
from .status import JobStatus
from .tenants import OPEN_PRINCIPAL, Principal

log = logging.getLogger(__name__)

__all__ = ["JobService"]

#: While :meth:`JobService.wait` listens on a job's channel it still reads the record this
#: often (seconds): a job deleted or expired meanwhile publishes nothing, and a message sent
#: while the subscription was reconnecting (Redis restarted) is not replayed.
WAIT_RECHECK_SECONDS = 1.0
#: A claim younger than this may belong to a submit still storing its job: not taken over.
CLAIM_GRACE_SECONDS = 10.0
#: Characters per chunk when checking that a text has something to speak.
CHECK_CHUNK_CHARS = 400



class JobService:
    """Job operations over a :class:`~tasks.runtime.Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.idempotency = IdempotencyKeys(runtime.redis, ttl=runtime.settings.result_ttl)
        self.admission = Admission(runtime)

    # --- submit --------------------------------------------------------------------------
    def prepare(self, request: JobRequest, versions: dict[str, str] | None = None) -> tuple[str, str | None]:
        """Validate a request against the engine; returns (normalised text, cache key or None).

        ``versions``: a voice id -> model version memo, so a batch looks each voice up once.
        """
        limit = self.rt.settings.max_text_chars
        if len(request.text) > limit:
            raise TextTooLong(len(request.text), limit)
        if not request.text.strip():
            raise EmptyTextError("'text' is empty")
        if request.name is not None:
            check_name(request.name)
        options = request.options()
        info = options.validate(self.rt.catalog)
        normalized = normalize(request.text, markdown=request.markdown)
        if not chunk_text(normalized, CHECK_CHUNK_CHARS):
            raise EmptyTextError("text is empty after normalising (nothing to speak)")
        # Letters the voice would skip are a 400 now, not a job that fails or speaks nothing.
        check_readable(request.text, info.id, info.family, markdown=request.markdown, normalized=normalized)
        if not request.cache:
            return normalized, None
        memo = versions if versions is not None else {}
        if info.id not in memo:
            memo[info.id] = self.rt.catalog.model_version(info.id)
        return normalized, cache_key(normalized, options.to_dict() | {"voice": info.id}, options.output_rate(info),
                                     memo[info.id])

    def build_job(self, request: JobRequest, correlation_id: str | None = None,
                  owner: Principal = OPEN_PRINCIPAL, **extra: Any) -> Job:
        """A new queued job record for a validated request, owned by ``owner``'s tenant (not stored yet)."""
        check_callback(self.rt, request.callback_url, owner.key_id)  # CallbackRefused, CallbacksUnavailable: 400
        created = now()
        return Job(
            id=new_job_id(), text=request.text, voice=request.voice, format=request.format,
            speed=request.speed, sample_rate=request.sample_rate, seed=request.seed, markdown=request.markdown,
            cache=request.cache, characters=len(request.text), max_attempts=self.rt.settings.max_attempts,
            created_at=created, queued_at=created, correlation_id=correlation_id, name=request.name,
            tenant=owner.tenant, key_id=None if owner.open_mode else owner.key_id,
            callback_url=request.callback_url, **extra,
        )

    def submit(self, request: JobRequest, correlation_id: str | None = None,
               idempotency_key: str | None = None, owner: Principal = OPEN_PRINCIPAL,
               extra: dict[str, Any] | None = None) -> tuple[Job, bool]:
        """Accept a job for ``owner``: a cache hit finishes it at once, otherwise it is queued.

        Returns (job, created): ``created`` is False when an Idempotency-Key matched an
        earlier job of the same tenant, which is returned unchanged. A submit that fails
        releases its key. Admission (:mod:`tasks.admission`) is checked before anything is stored.
        """
        job, created, _ = self._submit(request, correlation_id, idempotency_key, owner, extra)
        return job, created

    def submit_for_audio(self, request: JobRequest, correlation_id: str | None = None,
                         owner: Principal = OPEN_PRINCIPAL) -> tuple[Job, bytes | None]:
        """:meth:`submit` for a caller that answers with the audio itself (``/v1/audio/speech``):
        also returns the audio when the cache answered (read from the result store before the
        job is stored: a hit whose bytes are gone is served as a miss)."""
        job, _, audio = self._submit(request, correlation_id, None, owner, None, want_audio=True)
        return job, audio

    def _submit(self, request: JobRequest, correlation_id: str | None, idempotency_key: str | None,
                owner: Principal, extra: dict[str, Any] | None,
                want_audio: bool = False) -> tuple[Job, bool, bytes | None]:
        _, key = self.prepare(request)
        job = self.build_job(request, correlation_id, owner, cache_key=key, idempotency_key=idempotency_key,
                             extra=dict(extra or {}))
        claim = tenant_key(owner.tenant, idempotency_key) if idempotency_key else None
        if claim:
            earlier = self._claim(claim, job, request)
            if earlier is not None:
                return earlier, False, None
        try:
            self.admission.check(owner, jobs=1, characters=job.characters)
            audio = self._accept(job, want_audio)
        except BaseException:
            if claim:  # nothing was accepted: the key is free for the client's retry
                self.idempotency.release(ResourceKind.JOB, claim, job.id)
            raise
        self.admission.charge(owner, job.characters)
        return job, True, audio

    def _claim(self, key: str, job: Job, request: JobRequest) -> Job | None:
        """Claim ``key`` for ``job``; the earlier job when the key is already held by a stored one."""
        fingerprint = request.fingerprint()
        while True:
            existing = self.idempotency.claim(ResourceKind.JOB, key, job.id, fingerprint)
            if existing is None:
                return None
            try:
                earlier = self.rt.jobs.get(existing)
                if earlier.deleted_at is None:
                    return earlier
                # Its owner deleted it: the key names nothing now, and is free for this request.
                if self.idempotency.take_over(ResourceKind.JOB, key, existing, job.id, fingerprint, older_than=0):
                    log.info("Idempotency-Key %r pointed at deleted job %s; now job %s", key, existing, job.id)
                    return None
                continue  # another submit took it over first: look again
            except JobNotFound:  # claimed by a submit that died before storing its job, or still storing it
                if self.idempotency.take_over(ResourceKind.JOB, key, existing, job.id, fingerprint,
                                              older_than=CLAIM_GRACE_SECONDS):
                    log.info("Idempotency-Key %r pointed at job %s, never stored; now job %s", key, existing, job.id)
                    return None
                if not self.rt.jobs.exists(existing) and self.idempotency.holder(ResourceKind.JOB, key) == existing:
                    raise IdempotencyKeyInUse(key) from None
                # the job appeared meanwhile, or another submit moved the claim: look again

    def accept(self, job: Job) -> Job:
        """Store a built job, serving it from the cache or queueing it."""
        self._accept(job)
        return job

    def _accept(self, job: Job, want_audio: bool = False) -> bytes | None:
        """:meth:`accept`; with ``want_audio``, returns the audio when the cache answered."""
        hit = self._cached(job)
        if hit is not None:
            audio = self.rt.result_store.read(hit.ref) if want_audio else None
            if not want_audio or audio is not None:
                self._serve_from_cache(job, hit)
                return audio
            log.warning("cache entry %s names audio %s that the result store no longer has; a miss",
                        job.cache_key, hit.ref)
            self.rt.cache.delete(job.cache_key or "")
        looked_up = bool(job.cache and job.cache_key)
        job.task_id = uuid.uuid4().hex  # known before the message is sent, so the record never lacks it
        self.rt.jobs.create(job)
        try:
            enqueue(self.rt, job, task_id=job.task_id)
        except Exception:
            # Not queued: take the record back so nothing claims to be accepted.
            self.rt.jobs.delete(job.id)
            raise
        # Accepted from here on: nothing after the publish may turn this into a 5xx.
        lifecycle.bookkeeping("job_submitted", self.rt.metrics.job_submitted, job.voice, SYNTHESIS_QUEUE,
                              cache_hit=False, looked_up=looked_up)
        log.info("job %s queued (%d characters, voice %s)", job.id, job.characters, job.voice)
        return None

    def accept_many(self, jobs: Sequence[Job], correlation_id: str | None = None) -> list[Job]:
        """Store and queue many built jobs at once (a batch); returns those served from the cache.

        Jobs whose audio is probably cached (one pipelined EXISTS each) go through
        :meth:`accept`, which serves them from the cache; the rest are written in
        pipelines and their tasks published in pipelined round trips. On failure the
        caller takes the records back (a batch discards itself whole).
        """
        hits, misses = self._split_cached(jobs)
        for job in hits:  # rare (a resubmitted batch): the one-job path, which re-checks the cache
            self.accept(job)
        served = [job for job in hits if job.status.finished]
        if not misses:
            return served
        for job in misses:
            job.task_id = uuid.uuid4().hex
        self.rt.jobs.create_many(misses)
        send_tasks(self.rt, SYNTHESIZE_TASK, [([job.id], None) for job in misses], correlation_id,
                   task_ids=[job.task_id or "" for job in misses], queue=BULK_QUEUE)
        metrics = self.rt.metrics
        lookups = sum(1 for job in misses if job.cache and job.cache_key)
        if lookups:
            lifecycle.bookkeeping("cache misses", metrics.count, CACHE_MISSES, float(lookups))
        for voice, n in Counter(job.voice for job in misses).items():
            lifecycle.bookkeeping("jobs_submitted", metrics.count, JOBS_SUBMITTED, float(n), voice=voice,
                                  queue=SYNTHESIS_QUEUE)
        return served

    def _serve_from_cache(self, job: Job, hit: CachedAudio) -> None:
        job.status = JobStatus.SUCCEEDED
        job.cache_hit = True
        job.started_at = job.finished_at = now()
        job.audio_bytes = hit.size
        job.media_type = engine.FORMATS[job.format].media_type
        job.output_sample_rate = hit.meta.get("sample_rate")
        job.duration = hit.meta.get("duration")
        # The job names the cache's object (stored once); the hit already keeps it alive for the job's life.
        self.rt.jobs.create(job, audio_ref=hit.ref, audio_expires_at=hit.expires_at,
                            outbox=lifecycle.outbox_of(job))  # a callback owed survives a crash
        lifecycle.bookkeeping("job_submitted", self.rt.metrics.job_submitted, job.voice, SYNTHESIS_QUEUE,
                              cache_hit=True, looked_up=True)
        log.info("job %s served from the cache", job.id)
        lifecycle.finished(self.rt, [job])

    def _cached(self, job: Job) -> CachedAudio | None:
        if not job.cache or not job.cache_key:
            return None
        return self.rt.cache.get(job.cache_key)  # counted with the submit (job_submitted's looked_up)

    def _split_cached(self, jobs: Sequence[Job]) -> tuple[list[Job], list[Job]]:
        """(jobs whose audio is probably cached, the rest), with one pipelined EXISTS per job."""
        candidates = [job for job in jobs if job.cache and job.cache_key]
        if not candidates:
            return [], list(jobs)
        pipe = self.rt.cache_redis.pipeline(transaction=False)
        for job in candidates:
            pipe.exists(keys.audio(job.cache_key or ""))
        cached = {job.id for job, hit in zip(candidates, pipe.execute()) if hit}
        return [j for j in jobs if j.id in cached], [j for j in jobs if j.id not in cached]

    # --- read ----------------------------------------------------------------------------
    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job, or JobNotFound; with ``tenant``, another tenant's job (or a deleted one) is JobNotFound too."""
        job = self.rt.jobs.get(job_id)
        if tenant is not None and (job.tenant != tenant or job.deleted_at is not None):
            raise JobNotFound(job_id)
        return job

    def wait(self, job_id: str, timeout: float) -> JobStatus | None:
        """Wait until the job finishes or ``timeout`` seconds pass; returns its status then.

        None when the job disappeared (expired or deleted). Subscribes to the job's
        ``finished`` channel (published in the same transaction as the final status,
        ``JobStore.transition``) before reading the status, so a job finishing in between
        is seen either by the read or by the message: the answer leaves as soon as the
        job is final, with no polling delay; the record is read again at least every
        :data:`WAIT_RECHECK_SECONDS`.
        """
        deadline = time.monotonic() + timeout
        with self.rt.redis.pubsub() as subscription:  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            subscription.subscribe(keys.job_finished(job_id))
            # Redis confirms the subscription before the status is read: from then on no final
            # transition can go unseen (it commits either before that read or before a message).
            subscription.get_message(timeout=min(timeout, WAIT_RECHECK_SECONDS))
            while True:
                status = self.rt.jobs.status(job_id)
                if status is None or status.finished:
                    return status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return status
                subscription.get_message(timeout=min(remaining, WAIT_RECHECK_SECONDS))

    def audio(self, job_id: str, tenant: str | None = None) -> tuple[Job, bytes]:
        """A succeeded job's audio, or JobNotFound (also another tenant's) / JobNotFinished / AudioGone."""
        job = self.get(job_id, tenant)
        return job, self.audio_of(job)

    def audio_of(self, job: Job) -> bytes:
        """The audio of a job record already read (and checked against its caller's tenant), read
        whole from the result store: JobNotFinished unless it succeeded, AudioGone when the audio
        expired or was deleted."""
        data = self.rt.result_store.read(self.audio_ref_of(job))
        if data is None:
            raise AudioGone(job.id)
        return data

    def audio_ref(self, job_id: str, tenant: str | None = None) -> tuple[Job, str]:
        """A succeeded job and the result store's ref of its audio, for a download that streams it:
        JobNotFound (also another tenant's) / JobNotFinished / AudioGone (the ref dropped)."""
        job = self.get(job_id, tenant)
        return job, self.audio_ref_of(job)

    def audio_ref_of(self, job: Job) -> str:
        """The ref of a job record's audio: JobNotFinished unless it succeeded, AudioGone without one.

        Whether the object is still in the store is for the reader to find out.
        """
        if job.status is not JobStatus.SUCCEEDED:
            raise JobNotFinished(job.id, job.status.value)
        if job.audio_ref is None:
            # A job finished by a version that kept audio in Redis: moved into the store on first read.
            adopted = self.rt.jobs.adopt_legacy_audio(job.id)
            if adopted is None:
                raise AudioGone(job.id)
            job.audio_ref = adopted
        return job.audio_ref

    def list(self, status: str | None = None, limit: int = 50, cursor: int | None = None,
             tenant: str | None = None) -> tuple[list[Job], int | None]:
        """Jobs newest first, optionally of one status and one tenant; returns (jobs, next cursor)."""
        wanted = JobStatus(status) if status else None
        out: list[Job] = []
        last_score: int | None = None
        for score, job in self.rt.jobs.iter_recent(before=cursor, tenant=tenant):
            last_score = score
            if wanted is None or job.status is wanted:
                out.append(job)
                if len(out) >= limit:
                    return out, score
        return out, None if last_score is None or len(out) < limit else last_score

    # --- change --------------------------------------------------------------------------
    def cancel(self, job_id: str, tenant: str | None = None) -> Job:
        """Cancel a queued job or revoke a running one (``tenant``'s only); a finished job stays as it is."""
        job = self.get(job_id, tenant)
        if not job.status.finished and self.cancel_many([job]):
            log.info("job %s cancelled (was %s)", job_id, job.status.value)
        return self.rt.jobs.get(job_id)

    def delete(self, job_id: str, tenant: str | None = None) -> Job:
        """Delete a job (``tenant``'s only): cancel it if unfinished, drop its audio, hide it from then on.

        Its audio is unreachable through the API at once (the record no longer names it); the
        bytes stay in the result store until they expire, since other jobs or a cache entry
        may name the same object.

        The record is kept, marked ``deleted_at``, until it expires: a worker running the job
        reads it to see the cancellation. Every tenant-scoped read answers 404 for it, and it
        leaves the tenant's list. Returns the record as it was left.
        """
        job = self.get(job_id, tenant)
        if not job.status.finished and self.cancel_many([job]):
            log.info("job %s cancelled (was %s) to be deleted", job_id, job.status.value)
        self.rt.jobs.delete_audio(job_id)
        self.rt.jobs.update(job_id, deleted_at=now())
        self.rt.redis.zrem(keys.tenant_jobs(job.tenant), job_id)
        log.info("job %s deleted", job_id)
        return self.rt.jobs.get(job_id)

    def cancel_many(self, jobs: Sequence[Job]) -> builtins.list[Job]:  # ``list`` here is the method above
        """Cancel the unfinished ones of ``jobs`` (each needs its id, voice, batch id and task id).

        Finished jobs are left as they are, audio included. Returns the jobs this call cancelled.
        """
        return lifecycle.cancel_jobs(self.rt, jobs)

    def replay(self, job_id: str) -> Job:
        """Send a dead-lettered job through a fresh series of attempts.

        The job goes from ``failed`` to ``queued`` through the status guard (two replays
        at once send one message). Its dead-letter record is taken out before the message
        is sent, so a replay that fails again at once is dead-lettered anew; a replay that
        cannot publish puts the job and its record back as they were, to be replayed again.
        """
        self.rt.dlq.get(job_id)
        job = self.rt.jobs.get(job_id)
        task_id = uuid.uuid4().hex
        if not self.rt.jobs.transition(job_id, {JobStatus.FAILED}, status=JobStatus.QUEUED, attempts=0,
                                       queued_at=now(), started_at=None, finished_at=None, next_retry_at=None,
                                       error=None, error_type=None, error_code=None, replays=job.replays + 1,
                                       task_id=task_id):
            # Not failed any more (replayed meanwhile): only the stale record goes.
            self.rt.dlq.remove(job_id)
            return self.rt.jobs.get(job_id)
        # Out of the dead-letter queue before the message exists: a replay that fails at
        # once must be able to dead-letter the job again (DeadLetterQueue.add is once per record).
        taken = self.rt.dlq.take(job_id)
        try:
            enqueue(self.rt, self.rt.jobs.get(job_id), task_id=task_id)
        except Exception:
            self.rt.jobs.transition(job_id, {JobStatus.QUEUED}, status=JobStatus.FAILED, attempts=job.attempts,
                                    queued_at=job.queued_at, started_at=job.started_at, finished_at=job.finished_at,
                                    error=job.error, error_type=job.error_type, error_code=job.error_code,
                                    replays=job.replays, task_id=job.task_id)
            if taken is not None:
                self.rt.dlq.put_back(job_id, taken)
            raise
        job = self.rt.jobs.get(job_id)
        log.info("job %s replayed from the dead-letter queue", job_id)
        return job

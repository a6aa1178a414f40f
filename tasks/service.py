"""What the API and the CLI do with jobs: submit, look up, cancel, list, replay.

Validation happens here, once, for every front end: a request that cannot succeed is
refused before anything is stored, with an error naming the field.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import engine
from engine.exceptions import EmptyTextError
from engine.text import chunk_text, normalize

from . import keys
from .cache import cache_key
from .celery_app import SYNTHESIS_QUEUE
from .exceptions import AudioGone, IdempotencyConflict, InvalidRequest, JobNotFinished, TextTooLong
from .job import Job, new_job_id, now
from .runtime import Runtime
from .status import JobStatus
from .synthesize import enqueue

log = logging.getLogger(__name__)

__all__ = ["JobRequest", "JobService", "parse_job_request"]

_FIELDS = {"text", "voice", "format", "speed", "sample_rate", "seed", "cache", "markdown", "name"}


@dataclass
class JobRequest:
    """A validated synthesis request."""

    text: str
    voice: str
    format: str = "mp3"
    speed: float = 1.0
    sample_rate: int | None = None
    seed: int | None = None
    cache: bool = True
    markdown: bool = False
    name: str | None = None

    def options(self) -> engine.SynthesisOptions:
        """The engine options of this request."""
        return engine.SynthesisOptions(voice=self.voice, speed=self.speed, format=self.format,
                                       sample_rate=self.sample_rate, seed=self.seed, markdown=self.markdown)

    def fingerprint(self) -> str:
        """A hash of the request, to tell an idempotent retry from a different request."""
        body = json.dumps([self.text, self.voice, self.format, self.speed, self.sample_rate, self.seed,
                           self.cache, self.markdown], ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()


def _number(body: Mapping[str, Any], name: str, default: float | None, integer: bool = False) -> Any:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"'{name}' must be a {'whole number' if integer else 'number'}, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequest(f"'{name}' must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def parse_job_request(body: Any, defaults: Mapping[str, Any] | None = None,
                      max_chars: int | None = None) -> JobRequest:
    """Check a JSON request body's fields and types (values are checked against the engine later)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    merged = {**(defaults or {}), **{k: v for k, v in body.items() if v is not None}}
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}")
    text = merged.get("text")
    if text is None:
        raise InvalidRequest("'text' is required")
    if not isinstance(text, str):
        raise InvalidRequest("'text' must be a string")
    if not text.strip():
        raise EmptyTextError("'text' is empty")
    if max_chars is not None and len(text) > max_chars:
        raise TextTooLong(len(text), max_chars)
    voice = merged.get("voice")
    if not isinstance(voice, str) or not voice.strip():
        raise InvalidRequest("'voice' must be a non-empty string")
    fmt = merged.get("format", "mp3")
    if not isinstance(fmt, str):
        raise InvalidRequest("'format' must be a string")
    for flag in ("cache", "markdown"):
        if flag in merged and not isinstance(merged[flag], bool):
            raise InvalidRequest(f"'{flag}' must be true or false")
    name = merged.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest("'name' must be a string")
    return JobRequest(
        text=text,
        voice=voice.strip(),
        format=fmt.strip().lower(),
        speed=_number(merged, "speed", 1.0),
        sample_rate=_number(merged, "sample_rate", None, integer=True),
        seed=_number(merged, "seed", None, integer=True),
        cache=merged.get("cache", True),
        markdown=merged.get("markdown", False),
        name=name,
    )


class JobService:
    """Job operations over a :class:`~tasks.runtime.Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    # --- submit --------------------------------------------------------------------------
    def prepare(self, request: JobRequest) -> tuple[str, str | None]:
        """Validate a request against the engine; returns (normalised text, cache key or None)."""
        options = request.options()
        info = options.validate(self.rt.catalog)
        normalized = normalize(request.text, markdown=request.markdown)
        if not chunk_text(normalized, 400):
            raise EmptyTextError("text is empty after normalising (nothing to speak)")
        key = cache_key(normalized, options.to_dict() | {"voice": info.id}, options.output_rate(info),
                        self.rt.catalog.model_version(info.id)) if request.cache else None
        return normalized, key

    def build_job(self, request: JobRequest, correlation_id: str | None = None, **extra: Any) -> Job:
        """A new queued job record for a validated request (not stored yet)."""
        created = now()
        return Job(
            id=new_job_id(), text=request.text, voice=request.voice, format=request.format,
            speed=request.speed, sample_rate=request.sample_rate, seed=request.seed, markdown=request.markdown,
            cache=request.cache, characters=len(request.text), max_attempts=self.rt.settings.max_attempts,
            created_at=created, queued_at=created, correlation_id=correlation_id, name=request.name, **extra,
        )

    def submit(self, request: JobRequest, correlation_id: str | None = None,
               idempotency_key: str | None = None) -> tuple[Job, bool]:
        """Accept a job: a cache hit finishes it at once, otherwise it is queued.

        Returns (job, created): ``created`` is False when an Idempotency-Key matched an
        earlier job, which is returned unchanged.
        """
        _, key = self.prepare(request)
        if idempotency_key:
            existing = self._idempotent(idempotency_key, request)
            if existing is not None:
                return existing, False
        job = self.build_job(request, correlation_id, cache_key=key, idempotency_key=idempotency_key)
        if idempotency_key and not self._claim_key(idempotency_key, job, request):
            existing = self._idempotent(idempotency_key, request)
            if existing is not None:
                return existing, False
        self.accept(job)
        return job, True

    def accept(self, job: Job) -> Job:
        """Store a built job, serving it from the cache or queueing it."""
        cached = self._cached(job)
        metrics = self.rt.metrics
        if cached is not None:
            audio, meta = cached
            job.status = JobStatus.SUCCEEDED
            job.cache_hit = True
            job.started_at = job.finished_at = now()
            job.audio_bytes = len(audio)
            job.media_type = engine.FORMATS[job.format].media_type
            job.output_sample_rate = meta.get("sample_rate")
            job.duration = meta.get("duration")
            self.rt.jobs.create(job, audio=audio)
            metrics.job_submitted(job.voice, SYNTHESIS_QUEUE, cache_hit=True)
            log.info("job %s served from the cache", job.id)
            return job
        self.rt.jobs.create(job)
        try:
            job.task_id = enqueue(self.rt, job)
        except Exception:
            # Not queued: take the record back so nothing claims to be accepted.
            self.rt.redis.delete(keys.job(job.id))
            self.rt.redis.zrem(keys.JOBS_INDEX, job.id)
            raise
        self.rt.jobs.update(job.id, task_id=job.task_id)
        metrics.job_submitted(job.voice, SYNTHESIS_QUEUE, cache_hit=False)
        log.info("job %s queued (%d characters, voice %s)", job.id, job.characters, job.voice)
        return job

    def _cached(self, job: Job) -> tuple[bytes, dict[str, Any]] | None:
        if not job.cache or not job.cache_key:
            return None
        audio = self.rt.cache.get(job.cache_key)
        self.rt.metrics.cache_lookup(hit=audio is not None)
        return audio

    def _claim_key(self, key: str, job: Job, request: JobRequest) -> bool:
        value = json.dumps({"job_id": job.id, "fingerprint": request.fingerprint()})
        return bool(self.rt.redis.set(keys.idempotency(key), value, nx=True, ex=self.rt.settings.result_ttl))

    def _idempotent(self, key: str, request: JobRequest) -> Job | None:
        raw = self.rt.redis.get(keys.idempotency(key))
        if raw is None:
            return None
        stored = json.loads(raw)
        if stored.get("fingerprint") != request.fingerprint():
            raise IdempotencyConflict(key, stored.get("job_id", "?"))
        return self.rt.jobs.get(stored["job_id"])

    # --- read ----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """The job, or JobNotFound."""
        return self.rt.jobs.get(job_id)

    def audio(self, job_id: str) -> tuple[Job, bytes]:
        """A succeeded job's audio, or JobNotFinished / AudioGone."""
        job = self.rt.jobs.get(job_id)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobNotFinished(job_id, job.status.value)
        data = self.rt.jobs.audio(job_id)
        if data is None:
            raise AudioGone(job_id)
        return job, data

    def list(self, status: str | None = None, limit: int = 50, cursor: int | None = None) -> tuple[list[Job], int | None]:
        """Jobs newest first, optionally of one status; returns (jobs, next cursor)."""
        wanted = JobStatus(status) if status else None
        out: list[Job] = []
        last_score: int | None = None
        for score, job in self.rt.jobs.iter_recent(before=cursor):
            last_score = score
            if wanted is None or job.status is wanted:
                out.append(job)
                if len(out) >= limit:
                    return out, score
        return out, None if last_score is None or len(out) < limit else last_score

    # --- change --------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job, revoke a running one, or delete a finished one's audio."""
        job = self.rt.jobs.get(job_id)
        if job.status.finished:
            self.rt.jobs.delete_audio(job_id)
            self.rt.jobs.update(job_id, extra={**job.extra, "audio_deleted": True})
            return self.rt.jobs.get(job_id)
        if self.rt.jobs.transition(job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, status=JobStatus.CANCELLED,
                                   finished_at=now(), next_retry_at=None):
            if job.task_id:
                self.rt.celery.control.revoke(job.task_id)
            self.rt.metrics.job_cancelled(job.voice, SYNTHESIS_QUEUE)
            from .batches import on_item_finished

            on_item_finished(self.rt, job_id)
            log.info("job %s cancelled (was %s)", job_id, job.status.value)
        return self.rt.jobs.get(job_id)

    def replay(self, job_id: str) -> Job:
        """Send a dead-lettered job through a fresh series of attempts."""
        self.rt.dlq.get(job_id)
        job = self.rt.jobs.get(job_id)
        t = now()
        self.rt.jobs.update(job_id, status=JobStatus.QUEUED, attempts=0, queued_at=t, started_at=None,
                            finished_at=None, next_retry_at=None, error=None, error_type=None, error_code=None,
                            replays=job.replays + 1)
        self.rt.dlq.remove(job_id)
        job = self.rt.jobs.get(job_id)
        job.task_id = enqueue(self.rt, job)
        self.rt.jobs.update(job_id, task_id=job.task_id)
        log.info("job %s replayed from the dead-letter queue", job_id)
        return job


"""The dead-letter queue: jobs whose last attempt failed, kept for an operator.

A record keeps the request, error type and message, traceback, attempts, timestamps,
worker host and correlation id. Operators list, replay (a fresh attempt series) or
purge records through the API (``/v1/dlq``) or ``tts-batch dlq``.
"""
from __future__ import annotations

import builtins
import json
import logging
from typing import Any

import redis

from . import keys
from .exceptions import DeadLetterNotFound
from .job import Job, iso, now
from .redis_values import MAX_INDEX, HashMapping, decode_hash, members
from .tenants import DEFAULT_TENANT

log = logging.getLogger(__name__)

__all__ = ["DeadLetterQueue"]


class DeadLetterQueue:
    """Dead-letter records in Redis (``tts:dlq`` index + ``tts:dlq:{job_id}`` hashes). They do not expire."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, job: Job, error_type: str, error: str, traceback: str = "", worker: str | None = None) -> bool:
        """Record a dead job; returns False if it was already recorded (so alerts fire once)."""
        record: HashMapping = {
            "job_id": job.id,
            "tenant": job.tenant,
            "request": json.dumps({"text": job.text, **job.options().to_dict(), "cache": job.cache, "name": job.name,
                                   "batch_id": job.batch_id}),
            "error_type": error_type,
            "error": error,
            "error_code": job.error_code or "",
            "traceback": traceback[-20000:],
            "attempts": str(job.attempts),
            "created_at": str(job.created_at),
            "started_at": str(job.started_at or ""),
            "failed_at": str(now()),
            "worker": worker or job.worker or "",
            "correlation_id": job.correlation_id or "",
        }
        added = self.redis.zadd(keys.DLQ_INDEX, {job.id: now()}, nx=True)
        self.redis.hset(keys.dead_letter(job.id), mapping=record)
        if added:
            log.warning("job %s dead-lettered after %d attempts: %s: %s", job.id, job.attempts, error_type, error)
        return bool(added)

    def get(self, job_id: str) -> dict[str, Any]:
        """One record, or :class:`DeadLetterNotFound`."""
        data = self.redis.hgetall(keys.dead_letter(job_id))
        if not data:
            raise DeadLetterNotFound(job_id)
        return _public(decode_hash(data))

    def list(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Records, newest first, without the job's text (its length instead): :meth:`get` shows it."""
        ids = members(self.redis.zrevrange(keys.DLQ_INDEX, offset, min(offset + limit - 1, MAX_INDEX)))
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.dead_letter(job_id))
        out = []
        for data in pipe.execute():
            if data:
                record = _public(decode_hash(data))
                request = record["request"]
                request["characters"] = len(request.pop("text", "") or "")
                out.append(record)
        return out

    def ids(self) -> builtins.list[str]:  # ``list`` here is the method above
        """Every dead-lettered job id, oldest first."""
        return members(self.redis.zrange(keys.DLQ_INDEX, 0, -1))

    def __len__(self) -> int:
        return int(self.redis.zcard(keys.DLQ_INDEX))

    def remove(self, job_id: str) -> None:
        """Delete one record, or :class:`DeadLetterNotFound`."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(keys.DLQ_INDEX, job_id)
        pipe.delete(keys.dead_letter(job_id))
        removed, _ = pipe.execute()
        if not removed:
            raise DeadLetterNotFound(job_id)

    def take(self, job_id: str) -> tuple[dict[bytes, bytes], float] | None:
        """Remove one record and return it as stored (fields, index score), for :meth:`put_back`."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(keys.dead_letter(job_id))
        pipe.zscore(keys.DLQ_INDEX, job_id)
        pipe.zrem(keys.DLQ_INDEX, job_id)
        pipe.delete(keys.dead_letter(job_id))
        data, score, _, _ = pipe.execute()
        return (dict(data), float(score)) if data else None

    def put_back(self, job_id: str, taken: tuple[dict[bytes, bytes], float]) -> None:
        """Restore a record removed by :meth:`take` (a replay that could not be sent)."""
        data, score = taken
        mapping: HashMapping = dict(data.items())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.dead_letter(job_id), mapping=mapping)
        pipe.zadd(keys.DLQ_INDEX, {job_id: score})
        pipe.execute()

    def purge(self) -> int:
        """Delete every record; returns how many there were."""
        ids = self.ids()
        if ids:
            pipe = self.redis.pipeline(transaction=True)
            for job_id in ids:
                pipe.delete(keys.dead_letter(job_id))
            pipe.zrem(keys.DLQ_INDEX, *ids)
            pipe.execute()
        return len(ids)


def _public(record: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(record)
    out["request"] = json.loads(record.get("request") or "{}")
    out["attempts"] = int(record.get("attempts") or 0)
    out["tenant"] = record.get("tenant") or DEFAULT_TENANT
    for name in ("created_at", "started_at", "failed_at"):
        out[name] = iso(float(record[name])) if record.get(name) else None
    return out

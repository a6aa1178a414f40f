"""Worker heartbeats in Redis: who is online, how busy, from any machine.

Each worker process calls :meth:`WorkerRegistry.heartbeat` from a timer (every few seconds,
well under ``ttl``). The heartbeat is a hash ``tts:metrics:worker:{hostname}`` that expires
after ``ttl`` seconds, so a worker that dies silently drops out on its own. A sorted set
``tts:metrics:workers`` remembers when each hostname was last seen, so the exporter can
report ``celery_worker_up 0`` for a worker that went away recently (for a day).
"""
from __future__ import annotations

import builtins
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import redis

from tasks import keys

__all__ = ["DEFAULT_TTL", "FORGET_AFTER", "WorkerRegistry"]

logger = logging.getLogger(__name__)

#: Seconds a heartbeat stays valid.
DEFAULT_TTL = 30
#: Seconds after its last heartbeat a worker is forgotten (no more ``celery_worker_up 0``).
FORGET_AFTER = 24 * 3600
_MAX_HOSTNAME = 200


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class WorkerRegistry:
    """Heartbeats of the worker processes, kept in Redis under ``prefix``."""

    def __init__(self, redis_client: redis.Redis, prefix: str = keys.METRICS_PREFIX) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.seen_key = prefix + "workers"

    def _key(self, hostname: str) -> str:
        return f"{self.prefix}worker:{hostname}"

    def heartbeat(self, hostname: str, busy: int, concurrency: int, ttl: int = DEFAULT_TTL) -> bool:
        """Record that ``hostname`` is alive with ``busy`` of ``concurrency`` slots in use.

        Never raises; returns False when the heartbeat could not be written.
        """
        name = str(hostname).strip()[:_MAX_HOSTNAME]
        if not name:
            logger.warning("worker heartbeat without a hostname ignored")
            return False
        now = time.time()
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(
                self._key(name),
                mapping={
                    "hostname": name,
                    "busy": max(0, int(busy)),
                    "concurrency": max(0, int(concurrency)),
                    "pid": os.getpid(),
                    "updated_at": repr(now),
                },
            )
            pipe.expire(self._key(name), max(1, int(ttl)))
            pipe.zadd(self.seen_key, {name: now})
            pipe.zremrangebyscore(self.seen_key, "-inf", now - FORGET_AFTER)
            pipe.execute()
            return True
        except Exception as exc:  # noqa: BLE001 - a heartbeat must never break the worker
            logger.warning("worker heartbeat for %s not written: %s", name, exc)
            return False

    def remove(self, hostname: str) -> bool:
        """Drop ``hostname``'s heartbeat at once (on a clean shutdown). Never raises."""
        try:
            self.redis.delete(self._key(str(hostname)))
            return True
        except Exception as exc:  # noqa: BLE001
            logger.warning("worker heartbeat for %s not removed: %s", hostname, exc)
            return False

    def list(self) -> list[dict[str, Any]]:
        """Workers with a live heartbeat, sorted by hostname.

        Each: ``{"hostname", "busy", "concurrency", "pid", "updated_at", "age_seconds"}``.
        Raises :class:`redis.RedisError` when Redis is unreachable.
        """
        return [w for w in self.known() if w["up"]]

    def known(self) -> builtins.list[dict[str, Any]]:  # ``list`` here is the method above
        """Every worker seen in the last day; ``up`` tells whether its heartbeat is live.

        Raises :class:`redis.RedisError` when Redis is unreachable.
        """
        now = time.time()
        seen: Iterable[Any] = self.redis.zrangebyscore(self.seen_key, now - FORGET_AFTER, "+inf", withscores=True)
        names = [(_text(name), float(score)) for name, score in seen]
        if not names:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name, _ in names:
            pipe.hgetall(self._key(name))
        hashes = pipe.execute()
        workers: list[dict[str, Any]] = []
        for (name, last_seen), raw in zip(names, hashes):
            data = {_text(k): _text(v) for k, v in (raw or {}).items()}
            if data:
                updated = _float(data.get("updated_at"), last_seen)
                workers.append(
                    {
                        "hostname": name,
                        "up": True,
                        "busy": int(_float(data.get("busy"), 0)),
                        "concurrency": int(_float(data.get("concurrency"), 0)),
                        "pid": int(_float(data.get("pid"), 0)),
                        "updated_at": updated,
                        "age_seconds": max(0.0, now - updated),
                    }
                )
            else:
                workers.append(
                    {
                        "hostname": name,
                        "up": False,
                        "busy": 0,
                        "concurrency": 0,
                        "pid": 0,
                        "updated_at": last_seen,
                        "age_seconds": max(0.0, now - last_seen),
                    }
                )
        workers.sort(key=lambda w: w["hostname"])
        return workers


def _float(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default

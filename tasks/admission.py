"""Admission: whether the service takes more work, checked before anything is stored.

Four bounds, in this order, each a 429 with ``Retry-After`` when hit (nothing is stored):

1. **Redis memory.** When Redis reports a ``maxmemory`` and uses more than
   ``TTS_REDIS_MEMORY_HIGH_WATER`` of it, submits are refused (``queue_full``) until it
   drains. The job store and broker run with ``noeviction``, so without this bound a full
   Redis would refuse writes half-way through a submit; with it, the API says no first.
   ``INFO memory`` is read at most once a second per process.
2. **The global queue bound** ``TTS_MAX_QUEUED``: unfinished jobs of every tenant (the
   reconciler's index of active jobs).
3. **The key's ``max_queued``**: unfinished jobs of the key's tenant (all its keys
   together), from the tenant's own index of active jobs.
4. **The key's ``chars_per_day``**: characters submitted in a 24-hour window that starts
   with the key's first submit (the ``limits`` library's fixed window on Redis, charged
   only for work that was accepted, so a refused or failed submit costs nothing).

The checks read counts and then the submit writes: two submits racing at the edge can
both pass, so a bound may be overshot by the number of submits in flight at that moment
(a few jobs), never by a whole batch: a batch is checked with its size.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import limits
import limits.storage
import limits.strategies
import redis.exceptions

from . import keys
from .exceptions import QueueFull, QuotaExceeded
from .job import job_score, now
from .runtime import Runtime
from .tenants import Principal

log = logging.getLogger(__name__)

__all__ = ["Admission", "limiter_storage"]

#: Seconds an ``INFO memory`` answer is reused.
MEMORY_SAMPLE_SECONDS = 1.0
#: What a client is told to wait when a queue bound is hit (jobs take seconds to drain).
QUEUE_RETRY_AFTER = 5


def limiter_storage(rt: Runtime) -> limits.storage.RedisStorage:
    """The ``limits`` storage on the job store's Redis (its own connection pool is reused)."""
    return limits.storage.RedisStorage("redis://", connection_pool=rt.redis.connection_pool,
                                       key_prefix=keys.LIMITS_PREFIX)


@dataclass
class _MemorySample:
    at: float = 0.0
    used: int = 0
    maximum: int = 0


class Admission:
    """The bounds a submit of ``jobs`` jobs with ``characters`` characters must pass."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.daily = limits.strategies.FixedWindowRateLimiter(limiter_storage(rt))
        self._memory = _MemorySample()
        self._memory_lock = threading.Lock()

    def check(self, principal: Principal, jobs: int, characters: int) -> None:
        """Raise QueueFull or QuotaExceeded when ``principal`` may not submit this much now."""
        settings = self.rt.settings
        self._check_memory()
        redis = self.rt.redis
        pipe = redis.pipeline(transaction=False)
        pipe.zcard(keys.ACTIVE_JOBS)
        if principal.max_queued is not None:
            active = keys.tenant_active(principal.tenant)
            pipe.zremrangebyscore(active, 0, job_score(now() - settings.result_ttl))  # expired unfinished jobs
            pipe.zcard(active)
        replies = pipe.execute()
        if int(replies[0]) + jobs > settings.max_queued:
            raise QueueFull(f"the service holds {int(replies[0])} unfinished jobs and admits at most "
                            f"{settings.max_queued} (TTS_MAX_QUEUED); nothing was accepted, retry later")
        if principal.max_queued is not None:
            tenant_active = int(replies[2])
            if tenant_active + jobs > principal.max_queued:
                raise QuotaExceeded(
                    f"tenant {principal.tenant!r} has {tenant_active} unfinished jobs; this key allows "
                    f"{principal.max_queued} at once and this request adds {jobs}: nothing was accepted, "
                    "retry when some have finished",
                    retry_after=QUEUE_RETRY_AFTER, limit=principal.max_queued,
                    remaining=principal.max_queued - tenant_active, reset=QUEUE_RETRY_AFTER)
        if principal.chars_per_day is not None:
            item = self._daily_item(principal)
            if not self.daily.test(item, principal.key_id, cost=max(1, characters)):
                stats = self.daily.get_window_stats(item, principal.key_id)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise QuotaExceeded(
                    f"this key may submit {principal.chars_per_day} characters per day; {stats.remaining} are "
                    f"left in this window and this request has {characters}: nothing was accepted",
                    retry_after=wait, limit=principal.chars_per_day, remaining=stats.remaining, reset=wait,
                    code="character_quota_exceeded")

    def charge(self, principal: Principal, characters: int) -> None:
        """Count accepted characters against the key's daily quota (never fails the submit)."""
        if principal.chars_per_day is None or characters <= 0:
            return
        try:
            self.daily.hit(self._daily_item(principal), principal.key_id, cost=characters)
        except Exception as exc:  # noqa: BLE001 - the work is accepted; a lost count is only logged
            log.warning("could not count %d characters against key %s: %s", characters, principal.key_id, exc)

    @staticmethod
    def _daily_item(principal: Principal) -> limits.RateLimitItem:
        return limits.RateLimitItemPerDay(principal.chars_per_day or 1, namespace="chars")

    def _check_memory(self) -> None:
        sample = self._memory
        if time.monotonic() - sample.at > MEMORY_SAMPLE_SECONDS:
            with self._memory_lock:
                if time.monotonic() - self._memory.at > MEMORY_SAMPLE_SECONDS:
                    try:
                        info = self.rt.redis.info("memory")
                    except redis.exceptions.ResponseError as exc:  # INFO disabled (some managed Redis)
                        log.debug("INFO memory refused (%s): the memory bound is off", exc)
                        info = {}
                    self._memory = _MemorySample(at=time.monotonic(), used=int(info.get("used_memory", 0)),
                                                 maximum=int(info.get("maxmemory", 0)))
            sample = self._memory
        high_water = self.rt.settings.redis_memory_high_water
        if sample.maximum and sample.used >= high_water * sample.maximum:
            log.warning("refusing submits: Redis uses %d of %d bytes (high water %.0f%%)", sample.used,
                        sample.maximum, 100 * high_water)
            raise QueueFull(f"Redis is {100 * sample.used / sample.maximum:.0f}% full (the service stops "
                            f"admitting work at {100 * high_water:.0f}%); nothing was accepted, retry later")

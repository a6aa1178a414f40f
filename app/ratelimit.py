"""Per-key request rates: a key created with ``--rate 10/s`` makes at most that many requests.

The counting is the ``limits`` library's sliding-window counter on the job store's Redis
(so every API process shares one count per key). A request over the rate is answered
429 ``rate_limited`` before its view runs, with ``Retry-After``; every response to a
limited key carries ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``
(seconds until the window frees a request), as in the IETF RateLimit header draft.
Keys without a rate, bootstrap keys and open mode are not counted.
"""
from __future__ import annotations

import math
import time
from typing import Any

import limits
import limits.strategies
from flask import g

from tasks.admission import limiter_storage
from tasks.runtime import Runtime
from tasks.tenants import Principal

from .errors import error_response

__all__ = ["RequestLimiter", "ratelimit_headers"]


def ratelimit_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    """The ``RateLimit-*`` headers for a window."""
    return {"RateLimit-Limit": str(limit), "RateLimit-Remaining": str(max(0, remaining)),
            "RateLimit-Reset": str(max(0, reset))}


class RequestLimiter:
    """Counts each rate-limited key's requests; made once per app."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._strategy: limits.strategies.SlidingWindowCounterRateLimiter | None = None

    @property
    def strategy(self) -> limits.strategies.SlidingWindowCounterRateLimiter:
        """The limiter (made on first use, so an app can be built while Redis is down)."""
        if self._strategy is None:
            self._strategy = limits.strategies.SlidingWindowCounterRateLimiter(limiter_storage(self.runtime))
        return self._strategy

    def check(self, principal: Principal) -> Any:
        """Count this request: None when it may go on, else the 429 response."""
        if principal.rate is None:
            return None
        item = limits.parse(principal.rate)
        allowed = self.strategy.hit(item, "requests", principal.key_id)
        stats = self.strategy.get_window_stats(item, "requests", principal.key_id)
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        g.ratelimit = ratelimit_headers(item.amount, stats.remaining, reset)
        if allowed:
            return None
        return error_response(429, "rate_limited",
                              f"this key may make {principal.rate.replace('/', ' requests per ')}; "
                              f"retry in {reset} s", headers={**g.ratelimit, "Retry-After": str(reset)})

    @staticmethod
    def add_headers(response: Any) -> Any:
        """Put the request's ``RateLimit-*`` headers on its response."""
        for name, value in g.get("ratelimit", {}).items():
            response.headers.setdefault(name, value)
        return response

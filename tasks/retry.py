"""The retry policy: which errors are worth retrying, and how long to wait.

Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff
and Jitter"): the n-th retry waits a uniformly random time between 0 and
``min(max_delay, base_delay * exponential_base ** (n - 1))``. Celery's own
``retry_backoff`` works in whole seconds, too coarse for a 100 ms base, so the task
computes the countdown here and hands it to ``Task.retry``.
"""
from __future__ import annotations

import random
import socket
from dataclasses import dataclass

import redis.exceptions

from engine.exceptions import EngineError

__all__ = ["RetryPolicy", "is_transient"]


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a job gets, and the delays between them."""

    max_attempts: int = 3
    base_delay_ms: int = 100
    max_delay_ms: int = 5000
    exponential_base: float = 2.0
    jitter: bool = True

    @classmethod
    def from_settings(cls, settings: object) -> RetryPolicy:
        """The policy configured by ``TTS_MAX_ATTEMPTS``, ``TTS_BASE_DELAY_MS`` and friends."""
        return cls(
            max_attempts=settings.max_attempts,  # type: ignore[attr-defined]
            base_delay_ms=settings.base_delay_ms,  # type: ignore[attr-defined]
            max_delay_ms=settings.max_delay_ms,  # type: ignore[attr-defined]
            exponential_base=settings.exponential_base,  # type: ignore[attr-defined]
            jitter=settings.retry_jitter,  # type: ignore[attr-defined]
        )

    def cap_ms(self, attempt: int) -> float:
        """The longest wait after failed attempt number ``attempt`` (1-based)."""
        try:
            growth = self.exponential_base ** max(0, attempt - 1)
        except OverflowError:  # thousands of attempts: the cap has long been reached
            return float(self.max_delay_ms)
        return min(float(self.max_delay_ms), self.base_delay_ms * growth)

    def delay_seconds(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt ``attempt``: full jitter, or the cap itself without jitter."""
        cap = self.cap_ms(attempt)
        if self.jitter:
            cap = (rng or random).uniform(0, cap)
        return cap / 1000.0

    def should_retry(self, attempt: int, exc: BaseException) -> bool:
        """True when ``exc`` is transient and attempts remain after attempt number ``attempt``."""
        return attempt < self.max_attempts and is_transient(exc)


def is_transient(exc: BaseException) -> bool:
    """Errors that may heal by themselves: engine runtime errors, lost connections, timeouts."""
    if isinstance(exc, EngineError):
        return not exc.permanent
    return isinstance(
        exc,
        (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            ConnectionError,
            TimeoutError,
            socket.timeout,
            MemoryError,
        ),
    )

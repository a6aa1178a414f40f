"""Metrics history for the dashboard and ``/api/metrics/history``: samples kept in Redis.

A sample is a small JSON snapshot (queue lengths, job totals, latency percentiles, cache
counts, CPU and memory) stored in the sorted set ``tts:metrics:history`` scored by time and
capped at ``TTS_METRICS_HISTORY_MAX`` samples (2880: a day at the default 30 s interval).

:meth:`MetricsHistory.record_if_due` lets any number of processes sample on a timer while
only one sample per interval is stored (a ``SET NX`` slot key decides). The exporter runs
such a timer; :func:`with_rates` turns consecutive totals into per-second throughput.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from monitoring import recorder as names
from monitoring.recorder import MetricsRecorder, merge_series, summarize
from tasks import keys

__all__ = ["MetricsHistory", "take_sample", "with_rates"]

logger = logging.getLogger(__name__)

#: Totals in each sample, turned into ``<name>_per_second`` by :func:`with_rates`.
RATE_FIELDS: tuple[str, ...] = ("submitted", "succeeded", "failed", "retried", "cache_hits", "cache_misses")


def take_sample(
    recorder: MetricsRecorder,
    queue_lengths: Mapping[str, int],
    system: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A history sample from the recorder's totals, the queues and a :func:`monitoring.system.snapshot`.

    Raises :class:`redis.RedisError` when Redis fails.
    """
    counters = recorder.counters()
    histograms = recorder.histograms()

    def total(name: str) -> float:
        return sum((item["value"] for item in counters.get(name, [])), 0.0)

    synthesis = summarize(merge_series(histograms.get(names.SYNTHESIS, [])))
    duration = summarize(merge_series(histograms.get(names.JOB_DURATION, [])))
    wait = summarize(merge_series(histograms.get(names.QUEUE_WAIT, [])))
    sample: dict[str, Any] = {
        "ts": round(time.time() if now is None else float(now), 3),
        "queues": {str(q): int(n) for q, n in queue_lengths.items()},
        "queue_length": int(sum(queue_lengths.values())),
        "submitted": total(names.JOBS_SUBMITTED),
        "succeeded": total(names.JOBS_SUCCEEDED),
        "failed": total(names.JOBS_FAILED),
        "retried": total(names.JOBS_RETRIED),
        "dead_lettered": total(names.JOBS_DEAD_LETTERED),
        "cache_hits": total(names.CACHE_HITS),
        "cache_misses": total(names.CACHE_MISSES),
        "synthesis_p50": synthesis["p50"],
        "synthesis_p95": synthesis["p95"],
        "synthesis_p99": synthesis["p99"],
        "job_duration_p50": duration["p50"],
        "job_duration_p95": duration["p95"],
        "job_duration_p99": duration["p99"],
        "queue_wait_p95": wait["p95"],
    }
    if system:
        cpu = system.get("cpu", {})
        memory = system.get("memory", {})
        sample["cpu_percent"] = cpu.get("percent") if isinstance(cpu, Mapping) else None
        sample["memory_percent"] = memory.get("percent") if isinstance(memory, Mapping) else None
    return sample


def with_rates(samples: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``samples`` (oldest first) with ``<total>_per_second`` since the previous one.

    The first sample, and any after a counter reset, get None rates.
    """
    out: list[dict[str, Any]] = []
    previous: Mapping[str, Any] | None = None
    for sample in samples:
        item = dict(sample)
        for field in RATE_FIELDS:
            rate = None
            if previous is not None:
                elapsed = float(sample.get("ts", 0)) - float(previous.get("ts", 0))
                delta = float(sample.get(field) or 0) - float(previous.get(field) or 0)
                if elapsed > 0 and delta >= 0:
                    rate = delta / elapsed
            item[f"{field}_per_second"] = rate
        out.append(item)
        previous = sample
    return out


class MetricsHistory:
    """Samples in a capped, time-scored sorted set."""

    def __init__(self, redis_client: redis.Redis, prefix: str = keys.METRICS_PREFIX, max_samples: int = 2880) -> None:
        self.redis = redis_client
        self.key = prefix + "history"
        self.slot_prefix = prefix + "history:slot:"
        self.max_samples = max(1, int(max_samples))

    def record(self, sample: Mapping[str, Any]) -> bool:
        """Store ``sample`` (it must carry ``ts``) and trim to the cap. Never raises."""
        try:
            ts = float(sample["ts"])
            pipe = self.redis.pipeline(transaction=True)
            pipe.zadd(self.key, {json.dumps(sample, separators=(",", ":"), default=str): ts})
            pipe.zremrangebyrank(self.key, 0, -(self.max_samples + 1))
            pipe.execute()
            return True
        except Exception as exc:  # noqa: BLE001 - history must never break its caller
            logger.warning("metrics sample not stored: %s", exc)
            return False

    def record_if_due(self, build: Callable[[], Mapping[str, Any]], interval: float, now: float | None = None) -> bool:
        """Build and store a sample unless another process already did in this interval slot.

        Never raises; True when this call stored one.
        """
        now = time.time() if now is None else float(now)
        interval = max(1.0, float(interval))
        slot = int(now // interval)
        try:
            if not self.redis.set(f"{self.slot_prefix}{slot}", "1", nx=True, ex=int(interval * 2) + 1):
                return False
            return self.record(build())
        except Exception as exc:  # noqa: BLE001
            logger.warning("metrics sample not taken: %s", exc)
            return False

    def since(self, seconds: float, now: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Samples from the last ``seconds``, oldest first (at most ``limit``, the newest ones).

        Raises :class:`redis.RedisError` when Redis fails.
        """
        now = time.time() if now is None else float(now)
        raw = self.redis.zrangebyscore(self.key, now - float(seconds), "+inf")
        samples = []
        for item in raw:
            if not isinstance(item, (bytes, str)):  # asked without scores: members only
                continue
            try:
                samples.append(json.loads(item))
            except ValueError:
                continue
        if limit is not None and len(samples) > limit:
            samples = samples[-limit:]
        return samples

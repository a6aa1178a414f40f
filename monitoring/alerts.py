"""Threshold alerts, evaluated periodically (task ``tts.evaluate_alerts``, every
``TTS_ALERT_INTERVAL`` seconds), de-duplicated in Redis.

Conditions:

``alert.error_rate``   failed / (succeeded + failed) over the last ``TTS_ALERT_WINDOW`` seconds
                       above ``TTS_ALERT_ERROR_RATE`` (0.05), once at least ``TTS_ALERT_MIN_JOBS``
                       jobs finished in the window
``alert.latency_p95``  p95 of ``tts_synthesis_seconds`` or of ``tts_job_duration_seconds`` over
                       the window above ``TTS_ALERT_RESPONSE_TIME_P95_MS`` (1000 ms); one alert each
``alert.queue_length`` a queue holding more than ``TTS_ALERT_QUEUE_LENGTH`` (1000) messages

Counters and histograms only ever grow, so each evaluation stores a snapshot of the totals
(``tts:metrics:alerts:samples``) and compares with the oldest snapshot inside the window.
An alert is sent when it starts firing, not again while it keeps firing, and once more with
``"status": "resolved"`` when it clears (state in ``tts:metrics:alerts:state``). A short
lock keeps two evaluations from racing.
"""
from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

from redis.typing import EncodableT, FieldT

from monitoring import recorder as names
from monitoring.recorder import MetricsRecorder, merge_series, quantile
from monitoring.webhooks import build_payload
from settings import Settings

__all__ = ["LATENCY_METRICS", "evaluate_thresholds"]

logger = logging.getLogger(__name__)

#: Histograms whose windowed p95 is compared with ``alert_response_time_p95_ms``.
LATENCY_METRICS: tuple[str, ...] = (names.SYNTHESIS, names.JOB_DURATION)
#: Snapshots kept at most (a backstop; old ones are trimmed by time).
MAX_SAMPLES = 1000



def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _snapshot(recorder: MetricsRecorder, now: float) -> dict[str, Any]:
    counters = recorder.counters()
    histograms = recorder.histograms()

    def total(name: str) -> float:
        return sum((item["value"] for item in counters.get(name, [])), 0.0)

    hist: dict[str, dict[str, float]] = {}
    for name in LATENCY_METRICS:
        merged = merge_series(histograms.get(name, []))
        hist[name] = {repr(bound): count for bound, count in merged["buckets"]}
    return {
        "ts": now,
        "succeeded": total(names.JOBS_SUCCEEDED),
        "failed": total(names.JOBS_FAILED),
        "hist": hist,
    }


def _delta_buckets(current: Mapping[str, float], base: Mapping[str, float]) -> list[tuple[float, float]] | None:
    """Cumulative buckets of the observations made between two snapshots (None on a reset)."""
    bounds = sorted({float(b) for b in current} | {float(b) for b in base})
    buckets = []
    for bound in bounds:
        key = repr(bound)
        delta = float(current.get(key, 0.0)) - float(base.get(key, 0.0))
        if delta < 0:
            return None
        buckets.append((bound, delta))
    if not bounds or not math.isinf(bounds[-1]):
        return None
    return buckets


class _Evaluation:
    """One evaluation: readings, the baseline snapshot, and the state transitions it causes."""

    def __init__(self, recorder: MetricsRecorder, settings: Settings, now: float) -> None:
        self.redis = recorder.redis
        self.settings = settings
        self.now = now
        prefix = recorder.prefix + "alerts:"
        self.samples_key = prefix + "samples"
        self.state_key = prefix + "state"
        self.lock_key = prefix + "lock"
        self.current = _snapshot(recorder, now)
        self.state = {_text(k): json.loads(v) for k, v in self.redis.hgetall(self.state_key).items()}
        self.payloads: list[dict[str, Any]] = []
        self.changes: dict[FieldT, EncodableT] = {}  # HSET's mapping type (its keys are invariant)

    def baseline(self) -> dict[str, Any] | None:
        window = max(1, self.settings.alert_window)
        found = self.redis.zrangebyscore(self.samples_key, self.now - window, f"({self.now}", start=0, num=1)
        if not found:
            found = self.redis.zrevrangebyscore(self.samples_key, f"({self.now}", "-inf", start=0, num=1)
        if not found or not isinstance(found[0], (bytes, str)):  # asked without scores: members only
            return None
        try:
            sample: dict[str, Any] = json.loads(found[0])
        except ValueError:
            return None
        return sample

    def transition(self, key: str, firing: bool, event: str, **fields: Any) -> None:
        """Record the condition's state; queue a payload when it starts or stops firing."""
        was_firing = bool(self.state.get(key, {}).get("firing"))
        if firing == was_firing:
            return
        since = self.now if firing else self.state.get(key, {}).get("since")
        self.changes[key] = json.dumps({"firing": firing, "since": since, "changed_at": self.now})
        status = "firing" if firing else "resolved"
        self.payloads.append(build_payload(event, status=status, **fields))
        log = logger.warning if firing else logger.info
        log("alert %s %s: %s", key, status, fields)

    def store(self) -> None:
        window = max(1, self.settings.alert_window)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self.samples_key, {json.dumps(self.current, separators=(",", ":")): self.now})
        pipe.zremrangebyscore(self.samples_key, "-inf", f"({self.now - 2 * window}")
        pipe.zremrangebyrank(self.samples_key, 0, -(MAX_SAMPLES + 1))
        if self.changes:
            pipe.hset(self.state_key, mapping=self.changes)
        pipe.execute()


def evaluate_thresholds(
    recorder: MetricsRecorder,
    queue_lengths: Mapping[str, int],
    settings: Settings,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every threshold once; return the webhook payloads to send (often none).

    ``recorder`` gives the readings and the Redis that holds snapshots and alert state;
    ``queue_lengths`` maps queue name to waiting messages. Returns ``[]`` without evaluating
    when another evaluation holds the lock. Raises :class:`redis.RedisError` when Redis fails.
    """
    now = time.time() if now is None else float(now)
    client = recorder.redis
    lock_key = recorder.prefix + "alerts:lock"
    token = uuid.uuid4().hex
    if not client.set(lock_key, token, nx=True, ex=max(5, min(60, settings.alert_interval))):
        logger.info("alert evaluation skipped: another one is running")
        return []
    try:
        evaluation = _Evaluation(recorder, settings, now)
        base = evaluation.baseline()
        window = max(1, settings.alert_window)
        if base is not None:
            _error_rate(evaluation, base, window)
            _latency(evaluation, base, window)
        _queue_length(evaluation, queue_lengths)
        evaluation.store()
        return evaluation.payloads
    finally:
        _release(client, lock_key, token)


def _release(client: Any, key: str, token: str) -> None:
    """Delete the lock only if it is still ours (WATCH/MULTI; no Lua needed)."""
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            if _text(pipe.get(key) or b"") == token:
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
            else:
                pipe.unwatch()
    except Exception as exc:  # noqa: BLE001 - the lock expires on its own
        logger.debug("alert lock not released: %s", exc)


def _error_rate(evaluation: _Evaluation, base: Mapping[str, Any], window: int) -> None:
    settings = evaluation.settings
    succeeded = evaluation.current["succeeded"] - float(base.get("succeeded", 0.0))
    failed = evaluation.current["failed"] - float(base.get("failed", 0.0))
    finished = succeeded + failed
    if succeeded < 0 or failed < 0 or finished < max(1, settings.alert_min_jobs):
        return  # counters were reset, or too few jobs to judge: keep the current state
    rate = failed / finished
    evaluation.transition(
        "error_rate",
        rate > settings.alert_error_rate,
        "alert.error_rate",
        value=round(rate, 4),
        threshold=settings.alert_error_rate,
        window_seconds=window,
        failed=int(failed),
        finished=int(finished),
    )


def _latency(evaluation: _Evaluation, base: Mapping[str, Any], window: int) -> None:
    threshold_ms = evaluation.settings.alert_response_time_p95_ms
    for metric in LATENCY_METRICS:
        buckets = _delta_buckets(
            evaluation.current["hist"].get(metric, {}), base.get("hist", {}).get(metric, {})
        )
        if buckets is None or buckets[-1][1] <= 0:
            continue  # nothing observed in the window (or a reset): keep the current state
        p95 = quantile(0.95, buckets)
        if p95 is None:
            continue
        value_ms = p95 * 1000.0
        evaluation.transition(
            f"latency_p95:{metric}",
            value_ms > threshold_ms,
            "alert.latency_p95",
            metric=metric,
            value_ms=round(value_ms, 1),
            threshold_ms=threshold_ms,
            window_seconds=window,
            observations=int(buckets[-1][1]),
        )


def _queue_length(evaluation: _Evaluation, queue_lengths: Mapping[str, int]) -> None:
    threshold = evaluation.settings.alert_queue_length
    for queue, length in sorted(queue_lengths.items()):
        evaluation.transition(
            f"queue_length:{queue}",
            int(length) > threshold,
            "alert.queue_length",
            queue=queue,
            value=int(length),
            threshold=threshold,
        )

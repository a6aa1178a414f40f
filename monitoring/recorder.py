"""Counters and histograms kept in Redis, so every process on every machine adds to them.

prometheus-client's in-process metrics (and its multiprocess mode, which breaks under
Celery's prefork child churn) only see one process. tts-batch instead writes every
observation to Redis, and the exporter and the API read the totals back on each scrape.

Layout under the prefix (``tts:metrics:`` by default)::

    counters            hash   field JSON [name, [[label, value], ...]] -> float total
    histograms          set    members JSON [name, [[label, value], ...]] (the index)
    hist:<member>       hash   "<upper bound>" -> observations in that bucket (not cumulative),
                               "sum" -> float, "count" -> int

Every write is one MULTI/EXEC pipeline, so a histogram's buckets, sum and count always agree.
Writers never raise: metrics must not break synthesis. Readers raise
:class:`redis.RedisError` so the exporter can report ``tts_redis_up 0``.

Label values are bounded: a voice id containing ``+`` or ``*`` (a Kokoro blend such as
``jf_alpha*0.7+jm_kumo*0.3``) is recorded as ``blend``, anything else that is not a plain
identifier as ``other``.
"""
from __future__ import annotations

import bisect
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis

from tasks import keys

__all__ = [
    "DEFAULT_BUCKETS",
    "HISTOGRAM_BUCKETS",
    "MetricsRecorder",
    "compute_realtime_factors",
    "merge_series",
    "quantile",
    "queue_label",
    "summarize",
    "voice_label",
]

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = keys.METRICS_PREFIX

# --- metric names (Prometheus conventions: base units, _total, _seconds) -----------------
JOBS_SUBMITTED = "tts_jobs_submitted_total"
JOBS_STARTED = "tts_jobs_started_total"
JOBS_SUCCEEDED = "tts_jobs_succeeded_total"
JOBS_FROM_CACHE = "tts_jobs_served_from_cache_total"
JOBS_RETRIED = "tts_jobs_retried_total"
JOBS_FAILED = "tts_jobs_failed_total"
JOBS_DEAD_LETTERED = "tts_jobs_dead_lettered_total"
JOBS_CANCELLED = "tts_jobs_cancelled_total"
CHARACTERS = "tts_characters_synthesized_total"
AUDIO_SECONDS = "tts_audio_seconds_synthesized_total"
CACHE_HITS = "tts_cache_hits_total"
CACHE_MISSES = "tts_cache_misses_total"
TASKS_SUCCEEDED = "celery_task_succeeded_total"
TASKS_FAILED = "celery_task_failed_total"
TASKS_RETRIED = "celery_task_retried_total"
#: Per-job and per-batch callback delivery attempts by ``event`` and ``outcome`` (delivered, retried,
#: failed, refused), written by ``tasks.callbacks``.
CALLBACK_DELIVERIES = "tts_callback_deliveries_total"
QUEUE_WAIT = "tts_queue_wait_seconds"
SYNTHESIS = "tts_synthesis_seconds"
JOB_DURATION = "tts_job_duration_seconds"

#: Prometheus client's default buckets, for histograms without their own.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
#: Fixed upper bounds per histogram (``+Inf`` is implied). Waiting and whole-job times
#: reach into hours for big batches; synthesis of one chunk is seconds to minutes.
HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {
    QUEUE_WAIT: (
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        1800.0, 3600.0,
    ),
    SYNTHESIS: (
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
        300.0, 600.0,
    ),
    JOB_DURATION: (
        0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        1800.0, 3600.0,
    ),
}

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PLAIN_VALUE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
_MAX_LABEL_VALUE = 100
#: Warnings about an unreachable Redis are logged at most this often (seconds).
_WARNING_INTERVAL = 60.0

Labels = tuple[tuple[str, str], ...]


def voice_label(voice: object) -> str:
    """A bounded label value for a voice id: blends become ``blend``, oddities ``other``."""
    text = "" if voice is None else str(voice).strip()
    if not text:
        return "unknown"
    if "+" in text or "*" in text:
        return "blend"
    if not _PLAIN_VALUE_RE.match(text):
        return "other"
    return text


def queue_label(queue: object) -> str:
    """A bounded label value for a queue name."""
    text = "" if queue is None else str(queue).strip()
    if not text:
        return "unknown"
    if not _PLAIN_VALUE_RE.match(text):
        return "other"
    return text


def _label_value(name: str, value: object) -> str:
    if name == "voice":
        return voice_label(value)
    if name == "queue":
        return queue_label(value)
    text = "" if value is None else str(value)
    return text[:_MAX_LABEL_VALUE]


def _normalise_labels(labels: Mapping[str, object]) -> Labels | None:
    """Sorted, bounded label pairs; None when a label name is unusable."""
    pairs = []
    for name, value in labels.items():
        if not _LABEL_NAME_RE.match(name) or name.startswith("__") or name == "le":
            return None
        pairs.append((name, _label_value(name, value)))
    return tuple(sorted(pairs))


def _series_id(name: str, labels: Labels) -> str:
    return json.dumps([name, [list(p) for p in labels]], separators=(",", ":"))


def _parse_series_id(raw: bytes | str) -> tuple[str, dict[str, str]] | None:
    try:
        name, pairs = json.loads(raw)
        return str(name), {str(k): str(v) for k, v in pairs}
    except (ValueError, TypeError):
        return None


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (so one bad timing does not drop a whole write)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _bound_field(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (0..1) interpolated from cumulative buckets, like ``histogram_quantile``.

    ``buckets`` are ``(upper_bound, cumulative_count)`` sorted by bound and ending with
    ``+Inf``. Linear interpolation inside the bucket holding the rank, from the previous bound
    (0 for the first bucket); a rank in the ``+Inf`` bucket answers the highest finite bound.
    None when there are no observations.
    """
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    q = min(max(float(q), 0.0), 1.0)
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank and cumulative > 0:
            if math.isinf(bound):
                return previous_bound
            in_bucket = cumulative - previous_count
            if in_bucket <= 0:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / in_bucket
        previous_bound, previous_count = bound, cumulative
    return previous_bound


def merge_series(series: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Add histogram series (as returned by :meth:`MetricsRecorder.histograms`) into one.

    Returns ``{"buckets": [(bound, cumulative)], "sum": float, "count": float}``.
    """
    per_bound: dict[float, float] = {}
    total_sum = 0.0
    total_count = 0.0
    for item in series:
        previous = 0.0
        for bound, cumulative in item["buckets"]:
            per_bound[bound] = per_bound.get(bound, 0.0) + (cumulative - previous)
            previous = cumulative
        total_sum += float(item["sum"])
        total_count += float(item["count"])
    per_bound.setdefault(math.inf, 0.0)
    running = 0.0
    buckets = []
    for bound in sorted(per_bound):
        running += per_bound[bound]
        buckets.append((bound, running))
    return {"buckets": buckets, "sum": total_sum, "count": total_count}


def compute_realtime_factors(
    counters: Mapping[str, list[dict[str, Any]]], histograms: Mapping[str, list[dict[str, Any]]]
) -> dict[str, float]:
    """Audio seconds per synthesis second, per voice, from :meth:`MetricsRecorder.counters`
    and :meth:`MetricsRecorder.histograms` readings."""
    audio: dict[str, float] = {}
    for item in counters.get(AUDIO_SECONDS, []):
        voice = item["labels"].get("voice", "")
        audio[voice] = audio.get(voice, 0.0) + item["value"]
    spent: dict[str, float] = {}
    for series in histograms.get(SYNTHESIS, []):
        voice = series["labels"].get("voice", "")
        spent[voice] = spent.get(voice, 0.0) + float(series["sum"])
    return {voice: audio.get(voice, 0.0) / s for voice, s in sorted(spent.items()) if s > 0}


def _matches(labels: Mapping[str, str], wanted: Mapping[str, object]) -> bool:
    return all(labels.get(k) == _label_value(k, v) for k, v in wanted.items())


class MetricsRecorder:
    """Counters and histograms in Redis, shared by the API, every worker and the exporter.

    Writers (``job_*``, ``task_*``, ``cache_lookup``, ``count``, ``observe``) never raise:
    a Redis error is logged (a warning at most once a minute, debug otherwise) and dropped.
    """

    def __init__(self, redis_client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.counters_key = prefix + "counters"
        self.histogram_index_key = prefix + "histograms"
        self._last_warning = 0.0

    # --- job lifecycle (called by the API and the workers) ------------------------------

    def job_submitted(self, voice: str, queue: str, cache_hit: bool, looked_up: bool = False) -> None:
        """A job was accepted. A cache hit finishes it at once, so it also counts as succeeded
        (do not call :meth:`job_succeeded` for it). ``looked_up``: its audio was looked for in
        the cache, counted here as a hit or a miss in the same transaction (one round trip
        instead of a separate :meth:`cache_lookup`)."""
        labels = {"voice": voice, "queue": queue}

        def build(pipe: Any) -> None:
            self._add_count(pipe, JOBS_SUBMITTED, 1.0, labels)
            if looked_up:
                self._add_count(pipe, CACHE_HITS if cache_hit else CACHE_MISSES, 1.0, {})
            if cache_hit:
                self._add_count(pipe, JOBS_SUCCEEDED, 1.0, labels)
                self._add_count(pipe, JOBS_FROM_CACHE, 1.0, labels)

        self._write("job_submitted", build)

    def job_started(self, voice: str, queue: str, wait_seconds: float) -> None:
        """A worker picked a job up after ``wait_seconds`` in the queue."""

        def build(pipe: Any) -> None:
            self._add_count(pipe, JOBS_STARTED, 1.0, {"voice": voice, "queue": queue})
            self._add_observation(pipe, QUEUE_WAIT, wait_seconds, {"queue": queue})

        self._write("job_started", build)

    def job_succeeded(
        self,
        voice: str,
        queue: str,
        synthesis_seconds: float,
        total_seconds: float,
        characters: int,
        audio_seconds: float,
    ) -> None:
        """A job finished: synthesis time, submit-to-finish time, input size and audio length."""
        labels = {"voice": voice, "queue": queue}

        def build(pipe: Any) -> None:
            self._add_count(pipe, JOBS_SUCCEEDED, 1.0, labels)
            self._add_count(pipe, CHARACTERS, characters, {"voice": voice})
            self._add_count(pipe, AUDIO_SECONDS, audio_seconds, {"voice": voice})
            self._add_observation(pipe, SYNTHESIS, synthesis_seconds, {"voice": voice})
            self._add_observation(pipe, JOB_DURATION, total_seconds, {"queue": queue})

        self._write("job_succeeded", build)

    def job_retried(self, voice: str, queue: str) -> None:
        """An attempt failed with a transient error and the job went back to the queue."""
        self.count(JOBS_RETRIED, 1.0, voice=voice, queue=queue)

    def job_failed(self, voice: str, queue: str) -> None:
        """The job's last attempt failed: it is ``failed`` for good."""
        self.count(JOBS_FAILED, 1.0, voice=voice, queue=queue)

    def job_dead_lettered(self, voice: str, queue: str) -> None:
        """A dead-letter record was written for the job."""
        self.count(JOBS_DEAD_LETTERED, 1.0, voice=voice, queue=queue)

    def job_cancelled(self, voice: str, queue: str) -> None:
        """The job was cancelled before it finished."""
        self.count(JOBS_CANCELLED, 1.0, voice=voice, queue=queue)

    def cache_lookup(self, hit: bool) -> None:
        """One audio cache lookup, hit or miss."""
        self.count(CACHE_HITS if hit else CACHE_MISSES, 1.0)

    # --- Celery task outcomes (any task: synthesis, batch, webhooks) -------------------

    def task_succeeded(self, task: str, queue: str) -> None:
        """A Celery task returned (connect to ``celery.signals.task_success``)."""
        self.count(TASKS_SUCCEEDED, 1.0, name=task, queue=queue)

    def task_failed(self, task: str, queue: str) -> None:
        """A Celery task raised for good (connect to ``celery.signals.task_failure``)."""
        self.count(TASKS_FAILED, 1.0, name=task, queue=queue)

    def task_retried(self, task: str, queue: str) -> None:
        """A Celery task asked to be retried (connect to ``celery.signals.task_retry``)."""
        self.count(TASKS_RETRIED, 1.0, name=task, queue=queue)

    # --- generic writers -----------------------------------------------------------------

    def count(self, name: str, amount: float = 1.0, /, **labels: object) -> None:
        """Add ``amount`` (not negative) to counter ``name`` with ``labels``.

        ``name`` and ``amount`` are positional-only, so ``name=`` can be a label.
        """
        self._write(name, lambda pipe: self._add_count(pipe, name, amount, labels))

    def observe(self, name: str, value: float, /, **labels: object) -> None:
        """Record ``value`` in histogram ``name`` (buckets from :data:`HISTOGRAM_BUCKETS`).

        ``name`` and ``value`` are positional-only, so ``name=`` can be a label.
        """
        self._write(name, lambda pipe: self._add_observation(pipe, name, value, labels))

    # --- readers (raise redis.RedisError) --------------------------------------------

    def counters(self) -> dict[str, list[dict[str, Any]]]:
        """Every counter: ``{name: [{"labels": {label: value}, "value": float}, ...]}``."""
        result: dict[str, list[dict[str, Any]]] = {}
        for field, raw in self.redis.hgetall(self.counters_key).items():
            parsed = _parse_series_id(field)
            if parsed is None:
                continue
            name, labels = parsed
            try:
                value = float(raw)
            except (TypeError, ValueError):
                continue
            result.setdefault(name, []).append({"labels": labels, "value": value})
        for series in result.values():
            series.sort(key=lambda item: sorted(item["labels"].items()))
        return result

    def histograms(self) -> dict[str, list[dict[str, Any]]]:
        """Every histogram series.

        ``{name: [{"labels": {...}, "buckets": [(upper_bound, cumulative_count), ...],
        "sum": float, "count": float}, ...]}`` with buckets sorted and ending in ``+Inf``
        (``math.inf``), ready for ``HistogramMetricFamily`` and :func:`quantile`.
        """
        members = sorted(_text(m) for m in self.redis.smembers(self.histogram_index_key))
        if not members:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(self._histogram_key(member))
        raw_hashes = pipe.execute()
        result: dict[str, list[dict[str, Any]]] = {}
        for member, raw in zip(members, raw_hashes):
            parsed = _parse_series_id(member)
            if parsed is None or not raw:
                continue
            name, labels = parsed
            result.setdefault(name, []).append(self._decode_histogram(name, labels, raw))
        return result

    def counter_total(self, name: str, /, **labels: object) -> float:
        """Sum of counter ``name`` over every series whose labels match ``labels``."""
        return sum(
            (item["value"] for item in self.counters().get(name, []) if _matches(item["labels"], labels)),
            0.0,
        )

    def counter_by(self, name: str, label: str) -> dict[str, float]:
        """Counter ``name`` summed per value of one label, e.g. jobs per voice."""
        totals: dict[str, float] = {}
        for item in self.counters().get(name, []):
            key = item["labels"].get(label, "")
            totals[key] = totals.get(key, 0.0) + item["value"]
        return totals

    def histogram_summary(self, name: str, /, **labels: object) -> dict[str, float | None]:
        """Count, sum, mean and p50/p95/p99 (seconds) of histogram ``name`` over matching series."""
        series = [s for s in self.histograms().get(name, []) if _matches(s["labels"], labels)]
        return summarize(merge_series(series))

    def realtime_factors(self) -> dict[str, float]:
        """Audio seconds produced per second of synthesis, per voice (from the totals)."""
        return compute_realtime_factors(self.counters(), self.histograms())

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest for ``/metrics/json`` and the dashboard (one pair of reads)."""
        counters = self.counters()
        histograms = self.histograms()

        def total(name: str) -> float:
            return sum((item["value"] for item in counters.get(name, [])), 0.0)

        def by_voice(name: str) -> dict[str, float]:
            out: dict[str, float] = {}
            for item in counters.get(name, []):
                voice = item["labels"].get("voice", "")
                out[voice] = out.get(voice, 0.0) + item["value"]
            return out

        hits, misses = total(CACHE_HITS), total(CACHE_MISSES)
        succeeded, failed = total(JOBS_SUCCEEDED), total(JOBS_FAILED)
        return {
            "jobs": {
                "submitted": total(JOBS_SUBMITTED),
                "started": total(JOBS_STARTED),
                "succeeded": succeeded,
                "served_from_cache": total(JOBS_FROM_CACHE),
                "retried": total(JOBS_RETRIED),
                "failed": failed,
                "dead_lettered": total(JOBS_DEAD_LETTERED),
                "cancelled": total(JOBS_CANCELLED),
                "error_rate": failed / (succeeded + failed) if succeeded + failed else 0.0,
                "by_voice": by_voice(JOBS_SUBMITTED),
            },
            "characters_synthesized": total(CHARACTERS),
            "audio_seconds_synthesized": total(AUDIO_SECONDS),
            "latency_seconds": {
                "queue_wait": summarize(merge_series(histograms.get(QUEUE_WAIT, []))),
                "synthesis": summarize(merge_series(histograms.get(SYNTHESIS, []))),
                "job_duration": summarize(merge_series(histograms.get(JOB_DURATION, []))),
            },
            "cache": {
                "hits": hits,
                "misses": misses,
                "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            },
            "realtime_factor": compute_realtime_factors(counters, histograms),
        }

    # --- internals -------------------------------------------------------------------------

    def _histogram_key(self, series_id: str) -> str:
        return f"{self.prefix}hist:{series_id}"

    def _add_count(self, pipe: Any, name: str, amount: float, labels: Mapping[str, object]) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        value = _finite(amount)
        if value is None or value < 0:
            logger.warning("counter %s not incremented by %r: not a finite, non-negative number", name, amount)
            return
        pairs = _normalise_labels(labels)
        if pairs is None:
            raise ValueError(f"invalid label names {sorted(labels)} for {name}")
        if value:
            pipe.hincrbyfloat(self.counters_key, _series_id(name, pairs), value)

    def _add_observation(
        self, pipe: Any, name: str, value: float, labels: Mapping[str, object]
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        number = _finite(value)
        if number is None:
            logger.warning("histogram %s did not record %r: not a finite number", name, value)
            return
        number = max(0.0, number)
        pairs = _normalise_labels(labels)
        if pairs is None:
            raise ValueError(f"invalid label names {sorted(labels)} for {name}")
        bounds = HISTOGRAM_BUCKETS.get(name, DEFAULT_BUCKETS)
        index = bisect.bisect_left(bounds, number)
        bound = bounds[index] if index < len(bounds) else math.inf
        series_id = _series_id(name, pairs)
        key = self._histogram_key(series_id)
        pipe.hincrby(key, _bound_field(bound), 1)
        pipe.hincrbyfloat(key, "sum", number)
        pipe.hincrby(key, "count", 1)
        pipe.sadd(self.histogram_index_key, series_id)

    def _decode_histogram(
        self, name: str, labels: dict[str, str], raw: Mapping[bytes | str, bytes | str]
    ) -> dict[str, Any]:
        per_bound = {float(b): 0.0 for b in HISTOGRAM_BUCKETS.get(name, DEFAULT_BUCKETS)}
        per_bound[math.inf] = 0.0
        total_sum = 0.0
        total_count = 0.0
        for field, value in raw.items():
            key = _text(field)
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if key == "sum":
                total_sum = number
            elif key == "count":
                total_count = number
            else:
                try:
                    bound = float(key)
                except ValueError:
                    continue
                per_bound[bound] = per_bound.get(bound, 0.0) + number
        running = 0.0
        buckets = []
        for bound in sorted(per_bound):
            running += per_bound[bound]
            buckets.append((bound, running))
        return {"labels": labels, "buckets": buckets, "sum": total_sum, "count": total_count}

    def _write(self, what: str, build: Callable[[Any], None]) -> None:
        try:
            pipe = self.redis.pipeline(transaction=True)
            build(pipe)
            if len(pipe):
                pipe.execute()
            else:
                pipe.reset()
        except (ValueError, TypeError) as exc:
            logger.warning("metric %s not recorded: %s", what, exc)
        except Exception as exc:  # noqa: BLE001 - a metric must never break the caller
            now = time.monotonic()
            if now - self._last_warning >= _WARNING_INTERVAL:
                self._last_warning = now
                logger.warning("metric %s not recorded (Redis unavailable?): %s", what, exc)
            else:
                logger.debug("metric %s not recorded: %s", what, exc)


def summarize(merged: Mapping[str, Any]) -> dict[str, float | None]:
    """Count, sum, mean and p50/p95/p99 of a merged histogram (see :func:`merge_series`)."""
    count = float(merged["count"])
    total = float(merged["sum"])
    buckets = merged["buckets"]
    return {
        "count": count,
        "sum": total,
        "mean": total / count if count else None,
        "p50": quantile(0.50, buckets),
        "p95": quantile(0.95, buckets),
        "p99": quantile(0.99, buckets),
    }


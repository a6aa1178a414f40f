"""Prometheus exposition of tts-batch, read from Redis on every scrape.

:class:`RedisStateCollector` turns the broker's queues, the worker heartbeats, the audio
cache and the :class:`~monitoring.recorder.MetricsRecorder` counters and histograms into
metric families. Nothing is kept in process memory, so the standalone exporter and the
API's ``/metrics/prometheus`` show the same numbers, however many workers write them.

When Redis does not answer, a scrape still succeeds with ``tts_redis_up 0`` (and nothing
else from Redis), so Prometheus can alert on it instead of on a failed scrape.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from monitoring import queues as broker
from monitoring import recorder as names
from monitoring.recorder import MetricsRecorder
from monitoring.webhooks import DELIVERIES_METRIC
from monitoring.workers import WorkerRegistry
from settings import Settings
from tasks import keys

__all__ = ["COUNTER_HELP", "HISTOGRAM_HELP", "RedisStateCollector", "build_registry", "render"]

logger = logging.getLogger(__name__)

#: Help text and label names of the counters the recorder writes. Listed counters are
#: always exposed (at 0 when unlabelled and never incremented) so rules see them.
COUNTER_HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    names.JOBS_SUBMITTED: ("Jobs accepted by the API.", ("voice", "queue")),
    names.JOBS_STARTED: ("Job attempts picked up by a worker.", ("voice", "queue")),
    names.JOBS_SUCCEEDED: ("Jobs finished with audio (cache hits included).", ("voice", "queue")),
    names.JOBS_FROM_CACHE: ("Jobs answered from the audio cache at submit time.", ("voice", "queue")),
    names.JOBS_RETRIED: ("Job attempts that failed transiently and were retried.", ("voice", "queue")),
    names.JOBS_FAILED: ("Jobs whose last attempt failed.", ("voice", "queue")),
    names.JOBS_DEAD_LETTERED: ("Jobs moved to the dead-letter queue.", ("voice", "queue")),
    names.JOBS_CANCELLED: ("Jobs cancelled before they finished.", ("voice", "queue")),
    names.CHARACTERS: ("Characters of input text synthesized.", ("voice",)),
    names.AUDIO_SECONDS: ("Seconds of audio synthesized.", ("voice",)),
    names.CACHE_HITS: ("Audio cache lookups that found audio.", ()),
    names.CACHE_MISSES: ("Audio cache lookups that found nothing.", ()),
    names.TASKS_SUCCEEDED: ("Celery tasks that succeeded.", ("name", "queue")),
    names.TASKS_FAILED: ("Celery tasks that failed.", ("name", "queue")),
    names.TASKS_RETRIED: ("Celery tasks that were retried.", ("name", "queue")),
    DELIVERIES_METRIC: ("Webhook delivery attempts by event and outcome.", ("event", "outcome")),
    names.CALLBACK_DELIVERIES: ("Callback delivery attempts by event and outcome.", ("event", "outcome")),
}
#: Help text and label names of the histograms the recorder writes.
HISTOGRAM_HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    names.QUEUE_WAIT: ("Seconds a job waited in the queue before a worker started it.", ("queue",)),
    names.SYNTHESIS: ("Seconds of engine time to synthesize a job.", ("voice",)),
    names.JOB_DURATION: ("Seconds from submit to finish of a successful job.", ("queue",)),
}


def _label_names(series: Iterable[dict[str, Any]], declared: Sequence[str]) -> list[str]:
    found = set(declared)
    for item in series:
        found.update(item["labels"])
    ordered = [n for n in declared if n in found]
    return ordered + sorted(found - set(declared))


class RedisStateCollector(Collector):
    """Reads queues, workers, cache and recorded metrics from Redis on each ``collect()``."""

    def __init__(
        self,
        redis_client: redis.Redis,
        queues: Sequence[str],
        cache_client: redis.Redis | None = None,
        discover: bool = True,
        prefix: str = keys.METRICS_PREFIX,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings  # with a RabbitMQ broker, queue lengths come from RabbitMQ
        self.redis = redis_client
        self.cache_redis = cache_client if cache_client is not None else redis_client
        self.queues = list(queues)
        self.discover = discover
        self.recorder = MetricsRecorder(redis_client, prefix=prefix)
        self.workers = WorkerRegistry(redis_client, prefix=prefix)

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not touch Redis."""
        return []

    def collect(self) -> Iterator[Metric]:
        """All families, or only ``tts_redis_up 0`` when Redis fails during the scrape."""
        started = time.perf_counter()
        up = GaugeMetricFamily("tts_redis_up", "1 when the exporter could read Redis, else 0.")
        try:
            families = list(self._collect_redis())
            up.add_metric([], 1.0)
        except Exception as exc:  # noqa: BLE001 - a scrape must answer whatever Redis does
            logger.warning("metrics scrape could not read Redis: %s", exc)
            families = []
            up.add_metric([], 0.0)
        yield up
        yield from families
        duration = GaugeMetricFamily(
            "tts_exporter_scrape_duration_seconds", "Seconds this scrape spent reading Redis."
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    # --- families --------------------------------------------------------------------------

    def _collect_redis(self) -> Iterator[Metric]:
        self.redis.ping()
        queue_names = list(self.queues)
        amqp = self.settings is not None and self.settings.broker_is_amqp
        if self.discover and not amqp:  # kombu's binding tables exist on a Redis broker only
            queue_names += broker.discover_queues(self.redis)
        if self.settings is not None:
            lengths = broker.broker_queue_lengths(self.settings, self.redis, queue_names)
        else:
            lengths = broker.queue_lengths(self.redis, queue_names)
        queue_length = GaugeMetricFamily(
            "celery_queue_length",
            "Messages waiting in a Celery queue (all priorities; not counting reserved ones).",
            labels=["queue"],
        )
        for queue, length in sorted(lengths.items()):
            queue_length.add_metric([queue], float(length))
        yield queue_length

        if not amqp:  # AMQP does not tell how many are unacknowledged: no value rather than a wrong 0
            yield GaugeMetricFamily(
                "celery_task_reserved",
                "Messages delivered to workers and not yet acknowledged (prefetched or running).",
                value=float(broker.reserved_count(self.redis)),
            )
        yield GaugeMetricFamily(
            "tts_dead_letter_queue_length",
            "Dead-lettered jobs waiting for an operator.",
            value=float(broker.dead_letter_count(self.redis)),
        )
        yield from self._worker_families()
        yield from self._cache_families()

        counters = self.recorder.counters()
        histograms = self.recorder.histograms()
        yield from self._counter_families(counters)
        yield from self._histogram_families(histograms)
        yield from self._realtime_factor(counters, histograms)

    def _worker_families(self) -> Iterator[Metric]:
        known = self.workers.known()
        up = GaugeMetricFamily(
            "celery_worker_up", "1 while a worker's heartbeat is live, 0 after it stopped.",
            labels=["hostname"],
        )
        active = GaugeMetricFamily(
            "celery_worker_tasks_active", "Tasks a worker is running now.", labels=["hostname"]
        )
        concurrency = GaugeMetricFamily(
            "tts_worker_concurrency", "Task slots of a worker.", labels=["hostname"]
        )
        for worker in known:
            up.add_metric([worker["hostname"]], 1.0 if worker["up"] else 0.0)
            if worker["up"]:
                active.add_metric([worker["hostname"]], float(worker["busy"]))
                concurrency.add_metric([worker["hostname"]], float(worker["concurrency"]))
        live = [w for w in known if w["up"]]
        yield up
        yield active
        yield concurrency
        yield GaugeMetricFamily(
            "tts_workers_online", "Workers with a live heartbeat.", value=float(len(live))
        )
        yield GaugeMetricFamily(
            "tts_workers_busy", "Tasks running on all workers.", value=float(sum(w["busy"] for w in live))
        )

    def _cache_families(self) -> Iterator[Metric]:
        stats = broker.cache_stats(self.cache_redis)
        yield GaugeMetricFamily(
            "tts_cache_bytes", "Bytes of audio held by the cache.", value=float(stats["bytes"])
        )
        yield GaugeMetricFamily(
            "tts_cache_entries", "Audio entries held by the cache.", value=float(stats["entries"])
        )

    def _counter_families(self, counters: dict[str, list[dict[str, Any]]]) -> Iterator[Metric]:
        for name in list(COUNTER_HELP) + sorted(set(counters) - set(COUNTER_HELP)):
            help_text, declared = COUNTER_HELP.get(name, (f"tts-batch counter {name}.", ()))
            series = counters.get(name, [])
            labels = _label_names(series, declared)
            family = CounterMetricFamily(name, help_text, labels=labels)
            if not labels and not series:
                family.add_metric([], 0.0)
            for item in series:
                family.add_metric([item["labels"].get(n, "") for n in labels], item["value"])
            yield family

    def _histogram_families(self, histograms: dict[str, list[dict[str, Any]]]) -> Iterator[Metric]:
        for name in list(HISTOGRAM_HELP) + sorted(set(histograms) - set(HISTOGRAM_HELP)):
            help_text, declared = HISTOGRAM_HELP.get(name, (f"tts-batch histogram {name}.", ()))
            series = histograms.get(name, [])
            labels = _label_names(series, declared)
            family = HistogramMetricFamily(name, help_text, labels=labels)
            for item in series:
                family.add_metric(
                    [item["labels"].get(n, "") for n in labels],
                    buckets=[(floatToGoString(b), c) for b, c in item["buckets"]],
                    sum_value=item["sum"],
                )
            yield family

    def _realtime_factor(
        self, counters: dict[str, list[dict[str, Any]]], histograms: dict[str, list[dict[str, Any]]]
    ) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "tts_engine_realtime_factor",
            "Seconds of audio per second of synthesis, per voice, since metrics began.",
            labels=["voice"],
        )
        for voice, factor in names.compute_realtime_factors(counters, histograms).items():
            family.add_metric([voice], factor)
        yield family


def build_registry(
    redis_client: redis.Redis,
    queues: Sequence[str],
    cache_client: redis.Redis | None = None,
    discover: bool = True,
    settings: Settings | None = None,
) -> CollectorRegistry:
    """A registry holding only the Redis-backed collector (no process metrics).

    ``queues`` are always reported (0 when empty); with ``discover`` the queues declared
    on the broker are added. ``cache_client`` is the audio cache's Redis when it is separate.
    ``settings``: with a RabbitMQ broker the queue lengths are RabbitMQ's (ready messages) and
    ``celery_task_reserved`` is left out.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        RedisStateCollector(redis_client, queues, cache_client=cache_client, discover=discover, settings=settings)
    )
    return registry


def render(
    redis_client: redis.Redis,
    queues: Sequence[str],
    cache_client: redis.Redis | None = None,
    discover: bool = True,
    accept: str | None = None,
    settings: Settings | None = None,
) -> tuple[bytes, str]:
    """The exposition and its content type, for ``/metrics/prometheus``.

    Pass the request's ``Accept`` header as ``accept`` to answer OpenMetrics when the scraper
    asks for it; without it the classic text format 0.0.4 is returned.
    """
    registry = build_registry(redis_client, queues, cache_client=cache_client, discover=discover, settings=settings)
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type

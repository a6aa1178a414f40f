"""Process-wide handles built from settings: Redis clients, stores and the voice catalog.

The result store (:mod:`tasks.result_store`, where audio lives) is one object per process,
shared by the job store and the cache, with its expiry index in the main Redis (beside the
job records that reference its objects) even when the cache has a Redis of its own.

Built lazily, once per process (a prefork child builds its own after the fork), so
that importing a module never opens a connection or loads a model.
"""
from __future__ import annotations

import functools
import logging

import redis
from celery import Celery
from redis import Redis

from engine import VoiceCatalog
from monitoring.recorder import MetricsRecorder
from settings import Settings, get_settings

from .cache import AudioCache
from .celery_app import celery_app, create_celery
from .dlq import DeadLetterQueue
from .job import JobStore
from .result_store import ResultStore, open_result_store
from .retry import RetryPolicy

log = logging.getLogger(__name__)

#: Redis calls from the API give up after this long, so a dead Redis becomes a quick 503.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0


def make_redis(url: str) -> redis.Redis:
    """A Redis client with bounded timeouts."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=15,
        retry_on_timeout=False,
    )


class Runtime:
    """Everything a request handler or task needs, built once per process from settings."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()

    @functools.cached_property
    def redis(self) -> Redis:
        """The main Redis (broker, job store, dead-letter queue, metrics)."""
        return make_redis(self.settings.effective_redis_url)

    @functools.cached_property
    def cache_redis(self) -> Redis:  # ``redis`` in this class is the property above
        """The Redis that holds the audio cache (the main one unless TTS_CACHE_URL is set)."""
        if not self.settings.cache_url:
            return self.redis
        return make_redis(self.settings.cache_url)

    @functools.cached_property
    def result_store(self) -> ResultStore:
        """Where audio and other large results live (a folder, or an S3 bucket)."""
        return open_result_store(self.settings, self.redis)

    @functools.cached_property
    def jobs(self) -> JobStore:
        """The job store."""
        return JobStore(self.redis, ttl=self.settings.result_ttl, results=self.result_store)

    @functools.cached_property
    def cache(self) -> AudioCache:
        """The audio cache (its objects must outlive a job served from it: ``hold``)."""
        s = self.settings
        return AudioCache(self.cache_redis, self.result_store, ttl=s.cache_ttl,
                          max_entry_bytes=s.cache_max_entry_bytes, max_bytes=s.cache_max_bytes,
                          hold=max(s.cache_ttl, s.result_ttl))

    @functools.cached_property
    def dlq(self) -> DeadLetterQueue:
        """The dead-letter queue."""
        return DeadLetterQueue(self.redis)

    @functools.cached_property
    def metrics(self) -> MetricsRecorder:
        """Counters and histograms shared by every process."""
        return MetricsRecorder(self.redis)

    @functools.cached_property
    def catalog(self) -> VoiceCatalog:
        """The voice catalog (models load on first use)."""
        s = self.settings
        return VoiceCatalog(voices_dir=s.voices_dir or None, kokoro_voices=s.kokoro_voices or None,
                            onnx_threads=s.onnx_threads, model_cache_dir=s.model_cache)

    @functools.cached_property
    def celery(self) -> Celery:
        """The Celery app to send tasks with: the process's own, or one for these settings."""
        if self.settings == get_settings():
            return celery_app
        return create_celery(self.settings)

    @functools.cached_property
    def retry_policy(self) -> RetryPolicy:
        """The configured retry policy."""
        return RetryPolicy.from_settings(self.settings)


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's runtime."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


def reset_runtime(settings: Settings | None = None) -> Runtime:
    """Rebuild the runtime (after a fork, or with other settings in tests)."""
    global _runtime
    _runtime = Runtime(settings)
    return _runtime

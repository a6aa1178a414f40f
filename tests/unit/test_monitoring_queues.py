"""Broker views, worker registry, history and system snapshot on fakeredis; key names in step."""
from __future__ import annotations

import json

import fakeredis
import pytest
from kombu.transport import redis as kombu_redis

from monitoring import queues, system
from monitoring.exporter import default_queues
from monitoring.history import MetricsHistory, take_sample, with_rates
from monitoring.recorder import MetricsRecorder
from monitoring.workers import WorkerRegistry
from settings import Settings
from tasks import keys
from tasks.celery_app import BATCH_QUEUE, QUEUES


def test_key_mirrors_match_tasks_keys() -> None:
    assert queues.DLQ_INDEX_KEY == keys.DLQ_INDEX
    assert queues.AUDIO_INDEX_KEY == keys.AUDIO_INDEX
    assert queues.AUDIO_BYTES_KEY == keys.AUDIO_BYTES
    assert MetricsRecorder(fakeredis.FakeRedis()).prefix == keys.METRICS_PREFIX


def test_the_exporter_always_reports_every_queue_that_carries_work() -> None:
    # monitoring names the queues without importing Celery: in step with tasks.celery_app.
    # (``batch`` carries no task today; it is reported once discovered.)
    assert set(default_queues(Settings(redis_url="redis://fake/0"))) == set(QUEUES) - {BATCH_QUEUE}


def test_priority_names_match_kombu() -> None:
    assert kombu_redis.Channel.sep == queues.KOMBU_SEPARATOR
    assert list(queues.PRIORITY_STEPS) == list(kombu_redis.PRIORITY_STEPS)
    assert kombu_redis.Channel.unacked_key == queues.UNACKED_KEY
    assert queues.priority_queue_names("synthesis") == [
        "synthesis", "synthesis\x06\x163", "synthesis\x06\x166", "synthesis\x06\x169"
    ]


def test_queue_lengths_sum_priorities() -> None:
    client = fakeredis.FakeRedis()
    client.rpush("synthesis", 1, 2)
    client.rpush("synthesis\x06\x163", 1)
    client.rpush("synthesis\x06\x169", 1, 2, 3)
    client.rpush("batch", 1)
    assert queues.queue_lengths(client, ["synthesis", "batch", "webhooks", "synthesis"]) == {
        "synthesis": 6, "batch": 1, "webhooks": 0
    }
    assert queues.queue_lengths(client, []) == {}


def test_discover_skips_celery_internal_queues() -> None:
    client = fakeredis.FakeRedis()
    sep = queues.KOMBU_SEPARATOR
    client.sadd("_kombu.binding.synthesis", f"synthesis{sep}{sep}synthesis")
    client.sadd("_kombu.binding.batch", f"batch{sep}{sep}batch")
    client.sadd("_kombu.binding.celeryev", f"worker.#{sep}{sep}celeryev.1234")
    client.sadd("_kombu.binding.celery.pidbox", f"{sep}{sep}celery@host.celery.pidbox")
    client.sadd("_kombu.binding_permanent.synthesis", f"synthesis{sep}{sep}synthesis")
    assert queues.discover_queues(client) == ["batch", "synthesis"]


def test_cache_stats() -> None:
    client = fakeredis.FakeRedis()
    assert queues.cache_stats(client) == {"entries": 0, "bytes": 0}
    client.zadd(keys.AUDIO_INDEX, {"a": 1})
    client.incrby(keys.AUDIO_BYTES, 123)
    assert queues.cache_stats(client) == {"entries": 1, "bytes": 123}


def test_worker_registry_expiry_and_known_workers() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    registry = WorkerRegistry(client)
    assert registry.heartbeat("celery@a", busy=1, concurrency=4, ttl=30)
    assert registry.heartbeat("celery@b", busy=0, concurrency=2)
    assert client.ttl("tts:metrics:worker:celery@a") > 0
    assert [w["hostname"] for w in registry.list()] == ["celery@a", "celery@b"]
    registry.remove("celery@b")
    assert [(w["hostname"], w["up"]) for w in registry.known()] == [("celery@a", True), ("celery@b", False)]
    (a,) = registry.list()
    assert (a["busy"], a["concurrency"]) == (1, 4)
    assert not registry.heartbeat("", 0, 1)
    server.connected = False
    assert registry.heartbeat("celery@a", 0, 1) is False  # never raises


def test_history_cap_window_and_rates() -> None:
    client = fakeredis.FakeRedis()
    history = MetricsHistory(client, max_samples=5)
    for i in range(8):
        assert history.record({"ts": 1000.0 + i * 30, "succeeded": i * 3.0, "submitted": i * 3.0})
    samples = history.since(10_000, now=1300.0)
    assert [s["ts"] for s in samples] == [1090.0, 1120.0, 1150.0, 1180.0, 1210.0]
    assert [s["ts"] for s in history.since(60, now=1210.0)] == [1150.0, 1180.0, 1210.0]
    rated = with_rates(samples)
    assert rated[0]["succeeded_per_second"] is None
    assert rated[1]["succeeded_per_second"] == pytest.approx(0.1)


def test_history_one_sample_per_slot() -> None:
    client = fakeredis.FakeRedis()
    history = MetricsHistory(client)
    built = []

    def build() -> dict:
        built.append(1)
        return {"ts": 1000.0 + len(built)}

    assert history.record_if_due(build, 30, now=1000.0)
    assert not history.record_if_due(build, 30, now=1010.0)  # same 30 s slot
    assert history.record_if_due(build, 30, now=1031.0)
    assert len(built) == 2


def test_take_sample_is_json() -> None:
    recorder = MetricsRecorder(fakeredis.FakeRedis())
    recorder.job_submitted("heart", "synthesis", cache_hit=False)
    recorder.job_succeeded("heart", "synthesis", 0.3, 0.5, 10, 2.0)
    sample = take_sample(recorder, {"synthesis": 4, "webhooks": 1}, system.snapshot("."), now=123.0)
    json.dumps(sample, allow_nan=False)
    assert (sample["ts"], sample["queue_length"], sample["submitted"], sample["succeeded"]) == (123.0, 5, 1.0, 1.0)
    assert sample["synthesis_p95"] is not None
    assert 0 <= sample["memory_percent"] <= 100


def test_system_snapshot_shape() -> None:
    snap = system.snapshot("/definitely/not/here")
    assert set(snap) == {"time", "cpu", "memory", "process", "disk"}
    assert snap["process"]["rss_bytes"] > 0
    assert snap["memory"]["total_bytes"] >= snap["memory"]["available_bytes"]
    assert snap["disk"]["path"] == "/"
    assert snap["cpu"]["count"] >= 1

"""Metrics in a real Redis: many writer processes, the exposition, the exporter process,
health checks and bounded timeouts when Redis is down or hangs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from kombu import Connection, Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families

from monitoring import health
from monitoring.alerts import evaluate_thresholds
from monitoring.exporter import connect
from monitoring.history import MetricsHistory
from monitoring.prometheus import render
from monitoring.recorder import MetricsRecorder
from monitoring.workers import WorkerRegistry
from scripts.embedded_redis import find_free_port
from settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUEUES = ["synthesis", "batch", "webhooks"]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = connect(redis_url)
    yield c
    c.close()


def scrape(client: redis.Redis, queues: list[str] = QUEUES) -> str:
    body, content_type = render(client, queues)
    assert content_type.startswith("text/plain")
    return body.decode("utf-8")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def test_counters_add_up_across_processes(redis_url: str, client: redis.Redis) -> None:
    """Four processes recording at the same time: nothing lost, histograms consistent."""
    code = textwrap.dedent(
        f"""
        import redis, sys
        sys.path.insert(0, {str(ROOT)!r})
        from monitoring.recorder import MetricsRecorder
        rec = MetricsRecorder(redis.Redis.from_url({redis_url!r}))
        for i in range(50):
            rec.job_submitted("heart", "synthesis", cache_hit=False)
            rec.job_succeeded("heart", "synthesis", synthesis_seconds=0.1 * (i % 10 + 1),
                              total_seconds=1.0, characters=10, audio_seconds=2.0)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    rec = MetricsRecorder(client)
    assert rec.counter_total("tts_jobs_submitted_total") == 200
    assert rec.counter_total("tts_characters_synthesized_total", voice="heart") == 2000
    (synth,) = rec.histograms()["tts_synthesis_seconds"]
    assert synth["count"] == 200
    assert synth["buckets"][-1][1] == 200
    assert synth["sum"] == pytest.approx(4 * 5 * sum(0.1 * k for k in range(1, 11)))
    assert rec.realtime_factors()["heart"] == pytest.approx(400.0 / synth["sum"])
    text = scrape(client)
    assert value(text, "tts_jobs_succeeded_total", voice="heart", queue="synthesis") == 200
    assert value(text, "tts_synthesis_seconds_count", voice="heart") == 200


def test_exposition_moves_with_jobs_and_matches_kombu(redis_url: str, client: redis.Redis) -> None:
    before = scrape(client)
    assert value(before, "tts_redis_up") == 1
    assert value(before, "celery_queue_length", queue="synthesis") == 0
    assert value(before, "tts_cache_hits_total") == 0
    assert value(before, "tts_jobs_submitted_total", voice="heart", queue="synthesis") is None

    # Real messages through kombu's Redis transport, at several priorities.
    exchange = Exchange("synthesis", type="direct")
    queue = Queue("synthesis", exchange, routing_key="synthesis", queue_arguments={"x-max-priority": 10})
    with Connection(redis_url) as conn:
        producer = conn.Producer()
        for priority in (0, 0, 3, 6, 9):
            producer.publish({"p": priority}, exchange=exchange, routing_key="synthesis", declare=[queue],
                             priority=priority, serializer="json")
        channel = conn.default_channel
        kombu_count = channel._size("synthesis")
        # One message taken by a "worker" and not acknowledged yet: reserved, not queued.
        taken = conn.SimpleQueue(queue).get(timeout=5)
        assert taken is not None

        rec = MetricsRecorder(client)
        rec.job_submitted("heart", "synthesis", cache_hit=False)
        rec.job_submitted("jf_alpha*0.7+jm_kumo*0.3", "synthesis", cache_hit=True)
        rec.job_started("heart", "synthesis", 0.4)
        rec.job_succeeded("heart", "synthesis", 0.5, 2.0, 40, 6.0)
        rec.cache_lookup(True)
        rec.cache_lookup(False)
        rec.job_failed("joe", "synthesis")
        client.zadd("tts:dlq", {"job-1": time.time()})
        client.zadd("tts:audio:index", {"k1": 1, "k2": 2})
        client.incrby("tts:audio:bytes", 4096)
        WorkerRegistry(client).heartbeat("celery@box", busy=1, concurrency=2)

        after = scrape(client)
        taken.ack()
    assert kombu_count == 5
    assert value(after, "celery_queue_length", queue="synthesis") == 4
    assert value(after, "celery_task_reserved") == 1
    assert value(after, "celery_queue_length", queue="webhooks") == 0
    assert value(after, "tts_jobs_submitted_total", voice="heart", queue="synthesis") == 1
    assert value(after, "tts_jobs_submitted_total", voice="blend", queue="synthesis") == 1
    assert value(after, "tts_jobs_succeeded_total", voice="heart", queue="synthesis") == 1
    assert value(after, "tts_jobs_failed_total", voice="joe", queue="synthesis") == 1
    assert value(after, "tts_characters_synthesized_total", voice="heart") == 40
    assert value(after, "tts_audio_seconds_synthesized_total", voice="heart") == 6
    assert value(after, "tts_cache_hits_total") == 1
    assert value(after, "tts_cache_misses_total") == 1
    assert value(after, "tts_cache_entries") == 2
    assert value(after, "tts_cache_bytes") == 4096
    assert value(after, "tts_dead_letter_queue_length") == 1
    assert value(after, "celery_worker_up", hostname="celery@box") == 1
    assert value(after, "tts_workers_online") == 1
    assert value(after, "tts_workers_busy") == 1
    assert value(after, "tts_engine_realtime_factor", voice="heart") == pytest.approx(12.0)
    assert value(after, "tts_queue_wait_seconds_count", queue="synthesis") == 1
    assert value(after, "tts_job_duration_seconds_bucket", queue="synthesis", le="2.5") == 1
    assert value(after, "tts_job_duration_seconds_bucket", queue="synthesis", le="1.0") == 0
    assert value(after, "tts_synthesis_seconds_sum", voice="heart") == pytest.approx(0.5)


def test_openmetrics_when_asked(client: redis.Redis) -> None:
    MetricsRecorder(client).job_submitted("heart", "synthesis", cache_hit=False)
    body, content_type = render(client, QUEUES, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_promtool_accepts_the_exposition(client: redis.Redis, tmp_path: Path, promtool: str) -> None:
    rec = MetricsRecorder(client)
    rec.job_submitted("heart", "synthesis", cache_hit=False)
    rec.job_started("heart", "synthesis", 0.2)
    rec.job_succeeded("heart", "synthesis", 0.5, 1.0, 10, 3.0)
    rec.task_succeeded("tts.synthesize", "synthesis")
    rec.cache_lookup(False)
    WorkerRegistry(client).heartbeat("celery@box", busy=0, concurrency=1)
    text = scrape(client)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool's lint notes come on stdout; there must be none.
    assert result.stdout.strip() == "", result.stdout


def test_scrape_answers_fast_when_redis_is_down() -> None:
    dead = connect(f"redis://127.0.0.1:{find_free_port()}/0")
    started = time.monotonic()
    text = scrape(dead)
    assert time.monotonic() - started < 3.0
    assert value(text, "tts_redis_up") == 0
    assert value(text, "celery_queue_length", queue="synthesis") is None


def test_scrape_answers_when_redis_hangs(hung_redis_url: str) -> None:
    wedged = connect(hung_redis_url, timeout=0.5)
    started = time.monotonic()
    text = scrape(wedged)
    assert time.monotonic() - started < 3.0
    assert value(text, "tts_redis_up") == 0


def test_worker_heartbeat_expires(client: redis.Redis) -> None:
    registry = WorkerRegistry(client)
    registry.heartbeat("celery@gone", busy=0, concurrency=1, ttl=1)
    assert value(scrape(client), "celery_worker_up", hostname="celery@gone") == 1
    deadline = time.monotonic() + 5
    while registry.list() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert registry.list() == []
    text = scrape(client)
    assert value(text, "celery_worker_up", hostname="celery@gone") == 0
    assert value(text, "tts_workers_online") == 0


def test_health_checks_against_real_redis(client: redis.Redis, hung_redis_url: str, tmp_path: Path) -> None:
    ok = health.check_redis(client)
    assert ok["status"] == "healthy", ok
    assert ok["version"] and ok["latency_ms"] < 1000
    broker = health.check_broker(client, QUEUES)
    assert broker["status"] == "healthy" and broker["queues"] == dict.fromkeys(QUEUES, 0)
    assert health.check_cache(client)["status"] == "healthy"

    dead = connect(f"redis://127.0.0.1:{find_free_port()}/0")
    assert health.check_redis(dead)["status"] == "unhealthy"
    assert health.check_broker(dead, QUEUES)["status"] == "unhealthy"

    # A client without any socket timeout on a wedged server: still answered in ~1 s.
    wedged = redis.Redis.from_url(hung_redis_url)
    started = time.monotonic()
    results = health.run_checks({
        "redis": lambda: health.check_redis(wedged, timeout=1.0),
        "broker": lambda: health.check_broker(wedged, QUEUES, timeout=1.0),
        "workers": lambda: health.check_workers(WorkerRegistry(client), timeout=1.0),
        "disk": lambda: health.check_disk(tmp_path),
    }, timeout=2.0)
    assert time.monotonic() - started < 3.0
    assert results["redis"]["status"] == "unhealthy" and "timed out" in results["redis"]["detail"]
    assert results["workers"]["status"] == "unhealthy"  # no heartbeat
    assert health.overall(results) == "unhealthy"


def test_alert_state_and_lock_in_real_redis(client: redis.Redis) -> None:
    rec = MetricsRecorder(client)
    settings = Settings(alert_queue_length=10)
    now = time.time()
    (alert,) = evaluate_thresholds(rec, {"synthesis": 11}, settings, now=now)
    assert alert["event"] == "alert.queue_length"
    assert evaluate_thresholds(rec, {"synthesis": 12}, settings, now=now + 60) == []
    assert client.get("tts:metrics:alerts:lock") is None
    assert client.zcard("tts:metrics:alerts:samples") == 2


def test_exporter_process(redis_url: str, client: redis.Redis) -> None:
    """``python -m monitoring.exporter``: serves /metrics, keeps history, stops on SIGTERM."""
    port = find_free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_")}
    env.update(REDIS_URL=redis_url, TTS_EXPORTER_PORT=str(port), TTS_METRICS_SAMPLE_INTERVAL="1",
               TTS_LOG_LEVEL="INFO")
    proc = subprocess.Popen([sys.executable, "-m", "monitoring.exporter"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                response = requests.get(url + "/metrics", timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "exporter did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert value(response.text, "tts_redis_up") == 1
        assert value(response.text, "tts_jobs_submitted_total", voice="joe", queue="synthesis") is None

        MetricsRecorder(client).job_submitted("joe", "synthesis", cache_hit=False)
        client.rpush("synthesis", b"{}")
        text = requests.get(url + "/metrics", timeout=5).text
        assert value(text, "tts_jobs_submitted_total", voice="joe", queue="synthesis") == 1
        assert value(text, "celery_queue_length", queue="synthesis") == 1

        assert requests.get(url + "/healthz", timeout=5).text == "ok\n"
        assert requests.get(url + "/nope", timeout=5).status_code == 404

        history = MetricsHistory(client)
        deadline = time.monotonic() + 10
        while not history.since(60) and time.monotonic() < deadline:
            time.sleep(0.2)
        (first, *_) = history.since(60)
        assert "queue_length" in first and "cpu_percent" in first

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, stderr = proc.communicate(timeout=5)
        assert '"component": "exporter"' in stderr
        assert "exporter serving" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

"""Health endpoints against a real Redis and a real worker: every component, liveness and
readiness, workload warnings that never answer 503, and quick JSON 503 answers (never a 500,
never slow) when Redis is dead, hangs or refuses writes."""
from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import redis

from app import create_app
from app.health import engine_check
from engine import VoiceCatalog
from monitoring.health import write_probe_key
from settings import load_settings
from tests.conftest import WorkerProcess, wait_until

pytestmark = pytest.mark.integration

COMPONENTS = {"redis", "broker", "workers", "engine", "cache", "disk", "results"}
#: The brief: a health answer with a component down comes within this many seconds.
QUICK = 2.5
#: Liveness and readiness with a hung Redis answer 503 in about a second (one check timeout).
PROBE_QUICK = 1.8


def unique(text: str) -> str:
    return f"{text} Health {uuid.uuid4().hex[:6]}."


def wait_healthy(client: Any, path: str = "/health", timeout: float = 30.0) -> Any:
    """The first 200 answer of ``path`` (the voice catalog warms up in the background)."""
    def answered() -> Any:
        response = client.get(path)
        return response if response.status_code == 200 else None

    return wait_until(answered, timeout, f"a 200 from {path}", interval=0.25)


def assert_error_shape(body: dict[str, Any]) -> None:
    assert set(body["error"]) >= {"code", "message"}, body
    assert body["error"]["message"]


def assert_probe_503(response: Any, kind: str, failed: list[str]) -> dict[str, Any]:
    """A liveness or readiness 503: JSON error, ``failed`` naming the checks, Retry-After, no caching."""
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body[kind] is False and body["status"] == "unhealthy"
    assert body["failed"] == failed, body
    assert_error_shape(body)
    assert body["error"]["code"] == f"not_{kind}"
    for name in failed:
        assert name in body["error"]["message"]
        assert body["checks"][name]["status"] == "unhealthy"
    return body


def wait_engine_warm(client: Any, path: str = "/health", timeout: float = 30.0) -> dict[str, Any]:
    """The first ``path`` body whose engine check no longer times out (the catalog warms up in the background)."""
    def warm() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(path).get_json()
        return None if "timed out" in body["components"]["engine"]["detail"] else body

    return wait_until(warm, timeout, f"{path} with a warm engine check", interval=0.25)


def test_health_with_a_worker_is_healthy_and_complete(stack: Any) -> None:
    client = stack.client
    r = wait_healthy(client)
    assert r.headers["X-Request-ID"]
    assert r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert body["status"] == "healthy"
    assert body["ready"] is True
    assert isinstance(body["warnings"], list)
    assert "error" not in body
    datetime.fromisoformat(body["timestamp"])
    assert body["model_loaded"] is True
    voices = client.get("/v1/voices").get_json()["voices"]
    assert body["voices_available"] == len(voices) >= 7
    assert body["uptime_seconds"] >= 0
    assert set(body["components"]) == COMPONENTS
    for name, component in body["components"].items():
        assert component["status"] == "healthy", (name, component)
        assert component["latency_ms"] >= 0
        assert component["detail"]
    performance = body["performance"]
    assert set(performance["jobs"]) >= {"submitted", "succeeded", "failed", "retried", "dead_lettered"}
    assert set(performance["latency_seconds"]) == {"queue_wait", "synthesis", "job_duration"}
    assert "p95" in performance["latency_seconds"]["synthesis"]


def test_performance_summary_moves_when_a_job_runs(make_stack: Any) -> None:
    stack = make_stack()  # its own database: no other test's jobs in the counts
    client = stack.client
    before = wait_healthy(client).get_json()["performance"]
    job = client.post("/v1/jobs", json={"text": unique("Counting on health."), "voice": "heart"}).get_json()
    assert stack.wait_for(job["id"])["status"] == "succeeded"
    after = client.get("/health").get_json()["performance"]
    assert after["jobs"]["submitted"] == before["jobs"]["submitted"] + 1
    assert after["jobs"]["succeeded"] == before["jobs"]["succeeded"] + 1
    synthesis = after["latency_seconds"]["synthesis"]
    assert synthesis["count"] == before["latency_seconds"]["synthesis"]["count"] + 1
    assert synthesis["p50"] is not None and synthesis["p50"] <= synthesis["p95"] <= synthesis["p99"]


def test_components_detailed_and_voices(stack: Any) -> None:
    client = stack.client
    wait_healthy(client)
    components = client.get("/health/components").get_json()
    assert components["status"] == "healthy"
    comp = components["components"]
    assert set(comp) == COMPONENTS
    assert comp["redis"]["version"] and comp["redis"]["ping_ms"] >= 0
    assert comp["redis"]["writable"] is True
    assert set(comp["broker"]["queues"]) == {"synthesis", "bulk", "batch", "webhooks"}
    assert comp["broker"]["dead_letter"] >= 0
    hostname = stack.workers[0].hostname
    assert hostname in comp["workers"]["hostnames"]
    assert comp["workers"]["concurrency"] >= 2
    assert comp["engine"]["default_voice"] == "heart"
    assert any(path.endswith(".onnx") for path in comp["engine"]["model_files"])
    assert isinstance(comp["engine"]["loaded_here"], list)
    assert comp["cache"]["entries"] >= 0 and comp["cache"]["bytes"] >= 0
    assert 0 < comp["disk"]["free_ratio"] <= 1

    detailed = client.get("/health/detailed").get_json()
    assert detailed["status"] == "healthy"
    assert set(detailed["components"]) == COMPONENTS
    assert hostname in detailed["workers"]["hostnames"]
    assert detailed["system"]["cpu"]["count"] >= 1
    assert 0 <= detailed["system"]["memory"]["percent"] <= 100
    assert detailed["settings"]["max_attempts"] == stack.settings.max_attempts
    assert detailed["performance"]["jobs"]["submitted"] >= 0

    r = client.get("/health/voices")
    assert r.status_code == 200
    voices = r.get_json()
    assert voices["status"] == "healthy"
    by_id = {v["id"]: v for v in voices["voices"]}
    assert by_id["heart"]["default"] is True and by_id["heart"]["available"] is True
    assert by_id["joe"]["family"] == "piper" and by_id["joe"]["available"] is True
    assert by_id["jf_alpha"]["family"] == "kokoro" and by_id["jf_alpha"]["available"] is True
    assert voices["count"] == voices["available"] == len(by_id)


def test_live_and_ready_with_a_worker(stack: Any) -> None:
    client = stack.client
    live = client.get("/health/live")
    assert live.status_code == 200, live.get_json()
    assert live.headers["Cache-Control"] == "no-store"
    body = live.get_json()
    assert (body["status"], body["live"], body["failed"]) == ("healthy", True, [])
    assert set(body["checks"]) == {"redis"} and body["checks"]["redis"]["ping_ms"] >= 0
    assert body["uptime_seconds"] >= 0
    datetime.fromisoformat(body["timestamp"])

    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.get_json()
    body = ready.get_json()
    assert (body["status"], body["ready"], body["failed"]) == ("healthy", True, [])
    assert set(body["checks"]) == {"redis", "workers"}
    assert body["checks"]["redis"]["writable"] is True
    assert stack.workers[0].hostname in body["checks"]["workers"]["hostnames"]
    # The write was real: the probe's key is in Redis and expires by itself.
    client_redis = stack.redis
    try:
        ttl_ms = client_redis.pttl(write_probe_key())
    finally:
        client_redis.close()
    assert 0 < ttl_ms <= 10_000


def test_a_deep_queue_dead_letters_and_errors_are_warnings_not_503(make_stack: Any) -> None:
    # A worker that takes no synthesis task: what is submitted stays queued, as behind a busy fleet.
    stack = make_stack(start=False, TTS_FAULT_INJECTION="permanent")
    idle = WorkerProcess(stack.env, stack.tmp / "batch-only.log", queues="batch,webhooks").start()
    stack.workers.append(idle)
    inputs = [{"text": unique(f"Queued item {n}.")} for n in range(stack.settings.alert_queue_length + 1)]
    submitted = stack.client.post("/v1/batches", json={"inputs": inputs, "defaults": {"voice": "heart"}})
    assert submitted.status_code == 202, submitted.get_json()
    client = stack.client
    wait_engine_warm(client)

    for path in ("/health", "/health/detailed", "/health/components", "/health/ready"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.get_json())
        assert r.get_json()["ready"] is True, path
    body = client.get("/health").get_json()
    assert body["components"]["broker"]["status"] == "healthy"  # a deep queue is the service working
    (queue_warning,) = [w for w in body["warnings"] if w["code"] == "queue_length"]
    assert queue_warning["queue"] == "bulk"  # where a batch's items wait
    assert queue_warning["value"] > queue_warning["threshold"] == 1000
    assert queue_warning["message"]
    detailed = client.get("/health/detailed").get_json()
    assert [w["code"] for w in detailed["warnings"]] == ["queue_length"]
    assert detailed["queues"]["bulk"] == queue_warning["value"]

    # A worker that fails every job: dead letters and a 100 % error rate, still no 503.
    stack.start_worker()
    min_jobs = stack.settings.alert_min_jobs
    stack.wait_until(lambda: client.get("/v1/dlq?limit=1").get_json()["total"] >= min_jobs, timeout=60,
                     what=f"{min_jobs} dead letters")
    stack.wait_until(lambda: client.get("/health").get_json()["performance"]["jobs"]["failed"] >= min_jobs,
                     timeout=30, what=f"{min_jobs} failures counted")
    for path in ("/health", "/health/detailed"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.get_json())
        warnings = {w["code"]: w for w in r.get_json()["warnings"]}
        assert warnings["dead_letters"]["value"] >= min_jobs, path
        assert warnings["error_rate"]["value"] == 1.0 > warnings["error_rate"]["threshold"], path
        assert warnings["error_rate"]["finished"] >= min_jobs, path
    assert client.get("/health/ready").status_code == 200


def test_no_worker_is_degraded_with_503(make_stack: Any) -> None:
    stack = make_stack(start=False)
    client = stack.client
    def engine_healthy() -> Any:
        response = client.get("/health")
        return response if response.get_json()["components"]["engine"]["status"] == "healthy" else None

    r = wait_until(engine_healthy, 30, "a healthy engine check", interval=0.25)
    body = r.get_json()
    assert r.status_code == 503
    assert body["status"] == "degraded"
    assert body["components"]["workers"]["status"] == "unhealthy"
    assert body["components"]["redis"]["status"] == "healthy"
    assert body["model_loaded"] is False
    assert body["ready"] is False
    assert_error_shape(body)
    assert "workers" in body["error"]["message"]
    assert r.headers["Retry-After"] == "5"

    assert_probe_503(client.get("/health/ready"), "ready", ["workers"])
    assert client.get("/health/live").status_code == 200  # no worker is no reason to restart the API


def test_redis_that_refuses_writes_is_not_ready(make_stack: Any, own_redis: Any) -> None:
    stack = make_stack(start=False, server=own_redis)
    client = stack.client
    admin = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    # A replica of a master that is not there (a failover gone wrong): PING works, writes fail.
    admin.execute_command("REPLICAOF", "127.0.0.1", "1")
    try:
        body = assert_probe_503(client.get("/health/ready"), "ready", ["redis", "workers"])
        assert body["checks"]["redis"]["writable"] is False
        assert "read only replica" in body["checks"]["redis"]["detail"]  # READONLY
        assert client.get("/health/live").status_code == 200  # Redis answers: this process is alive
        health = client.get("/health")
        assert health.status_code == 503
        assert health.get_json()["status"] == "unhealthy"
        assert health.get_json()["components"]["redis"]["status"] == "unhealthy"
        assert_error_shape(health.get_json())
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
        admin.close()
    body = assert_probe_503(client.get("/health/ready"), "ready", ["workers"])
    assert body["checks"]["redis"]["writable"] is True


def test_unknown_default_voice_degrades_the_engine(redis_url: str, tmp_path: Any) -> None:
    settings = load_settings({"REDIS_URL": redis_url, "TTS_DATA_DIR": str(tmp_path), "TTS_DEFAULT_VOICE": "nobody"})
    result = engine_check(VoiceCatalog(), settings)()
    assert result["status"] == "degraded"
    assert "nobody" in result["detail"]
    client = create_app(settings).test_client()
    body = wait_engine_warm(client, "/health/components")
    assert body["components"]["engine"]["status"] == "degraded"
    voices = client.get("/health/voices")
    assert voices.status_code == 503
    assert voices.get_json()["status"] == "degraded"
    assert_error_shape(voices.get_json())


def test_killed_redis_gives_quick_json_503_then_recovers(make_stack: Any, own_redis: Any) -> None:
    server = own_redis
    client = make_stack(start=False, server=server).client
    assert client.get("/health/components").get_json()["components"]["redis"]["status"] == "healthy"

    server.kill()
    for path, kind in (("/health/live", "live"), ("/health/ready", "ready")):
        started = time.monotonic()
        r = client.get(path)
        elapsed = time.monotonic() - started
        assert elapsed < QUICK, f"{path} took {elapsed:.2f}s"
        assert_probe_503(r, kind, ["redis"] if kind == "live" else ["redis", "workers"])
    for path in ("/health", "/health/components", "/health/detailed", "/api/status/summary"):
        started = time.monotonic()
        r = client.get(path)
        elapsed = time.monotonic() - started
        assert elapsed < QUICK, f"{path} took {elapsed:.2f}s"
        assert r.status_code == 503, (path, r.get_data(as_text=True))
        body = r.get_json()
        assert body["status"] == "unhealthy", (path, body)
        assert_error_shape(body)
        if "components" in body:
            assert body["components"]["redis"]["status"] == "unhealthy"
            assert body["components"]["broker"]["status"] == "unhealthy"
    # Metrics answer too: the exposition with tts_redis_up 0, the JSON with the error shape.
    started = time.monotonic()
    prom = client.get("/metrics/prometheus")
    assert time.monotonic() - started < QUICK
    assert prom.status_code == 200 and "tts_redis_up 0.0" in prom.get_data(as_text=True)
    for path in ("/metrics/json", "/api/metrics/history?hours=1"):
        started = time.monotonic()
        r = client.get(path)
        assert time.monotonic() - started < QUICK
        assert r.status_code == 503
        assert_error_shape(r.get_json())

    server.restart()
    body = client.get("/health/components").get_json()
    assert body["components"]["redis"]["status"] == "healthy"
    assert body["components"]["broker"]["status"] == "healthy"
    assert body["status"] == "degraded"  # Redis is back; still no worker here
    assert client.get("/health/live").status_code == 200
    assert_probe_503(client.get("/health/ready"), "ready", ["workers"])


def test_hung_redis_still_answers_within_bounds(hung_redis_url: str, tmp_path: Any) -> None:
    settings = load_settings({"REDIS_URL": hung_redis_url, "TTS_DATA_DIR": str(tmp_path)})
    client = create_app(settings).test_client()
    for path in ("/health", "/health/components", "/api/status/summary"):
        started = time.monotonic()
        r = client.get(path)
        elapsed = time.monotonic() - started
        assert elapsed < QUICK, f"{path} took {elapsed:.2f}s"
        assert r.status_code == 503
        body = r.get_json()
        assert body["status"] == "unhealthy"
        assert "timed out" in body["components"]["redis"]["detail"]
        assert_error_shape(body)
    for path, kind in (("/health/live", "live"), ("/health/ready", "ready")):
        started = time.monotonic()
        r = client.get(path)
        elapsed = time.monotonic() - started
        assert elapsed < PROBE_QUICK, f"{path} took {elapsed:.2f}s"
        body = assert_probe_503(r, kind, ["redis"] if kind == "live" else ["redis", "workers"])
        assert "timed out" in body["checks"]["redis"]["detail"]

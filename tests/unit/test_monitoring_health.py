"""Health checks: bounded, never raising, folded into one status (fakeredis where Redis is needed)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import fakeredis
import pytest

from monitoring import health
from monitoring.workers import WorkerRegistry


def test_run_check_bounds_a_hanging_check() -> None:
    release = threading.Event()
    started = time.monotonic()
    result = health.run_check(lambda: release.wait(10), timeout=0.2)
    elapsed = time.monotonic() - started
    release.set()
    assert result["status"] == "unhealthy"
    assert "timed out" in result["detail"]
    assert elapsed < 1.0


def test_run_check_turns_exceptions_into_unhealthy() -> None:
    def boom() -> dict:
        raise ConnectionError("refused")

    result = health.run_check(boom)
    assert result["status"] == "unhealthy"
    assert "ConnectionError: refused" in result["detail"]
    assert result["latency_ms"] >= 0


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (True, "healthy"),
        (False, "unhealthy"),
        ({"status": "degraded", "detail": "slow", "voices": 7}, "degraded"),
        ({"status": "sideways"}, "unhealthy"),
        ("yes", "unhealthy"),
    ],
)
def test_run_check_accepts_bools_and_dicts(answer: object, status: str) -> None:
    result = health.run_check(lambda: answer)
    assert result["status"] == status
    assert set(result) >= {"status", "latency_ms", "detail"}
    if isinstance(answer, dict) and "voices" in answer:
        assert result["voices"] == 7 and result["detail"] == "slow"


def test_run_checks_runs_concurrently() -> None:
    def slow() -> bool:
        time.sleep(0.3)  # the thing under test: a slow check (three of them must overlap, not queue up)
        return True

    started = time.monotonic()
    # "hang" sleeps on purpose: a check that never answers within the timeout.
    results = health.run_checks({"a": slow, "b": slow, "c": slow, "hang": lambda: time.sleep(5)}, timeout=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert [results[n]["status"] for n in ("a", "b", "c", "hang")] == ["healthy"] * 3 + ["unhealthy"]
    assert list(results) == ["a", "b", "c", "hang"]


def test_overall_status() -> None:
    ok = {"status": "healthy"}
    bad = {"status": "unhealthy"}
    slow = {"status": "degraded"}
    assert health.overall({"redis": ok, "broker": ok, "workers": ok}) == "healthy"
    assert health.overall({"redis": ok, "broker": ok, "workers": bad}) == "degraded"
    assert health.overall({"redis": slow, "broker": ok}) == "degraded"
    assert health.overall({"redis": bad, "broker": ok}) == "unhealthy"
    assert health.overall({"redis": ok, "broker": bad}) == "unhealthy"
    assert health.overall({"engine": {}}) == "degraded"  # no status is not healthy
    assert health.http_status("healthy") == 200
    assert health.http_status("degraded") == 503
    assert health.http_status("unhealthy") == 503


def test_check_workers_reads_heartbeats() -> None:
    registry = WorkerRegistry(fakeredis.FakeRedis())
    assert health.check_workers(registry)["status"] == "unhealthy"
    registry.heartbeat("celery@a", busy=1, concurrency=2)
    registry.heartbeat("celery@b", busy=2, concurrency=2)
    result = health.check_workers(registry)
    assert result["status"] == "healthy"
    assert (result["workers"], result["busy"], result["concurrency"]) == (2, 3, 4)
    assert result["hostnames"] == ["celery@a", "celery@b"]


def test_check_workers_when_redis_is_down() -> None:
    server = fakeredis.FakeServer()
    registry = WorkerRegistry(fakeredis.FakeRedis(server=server))
    server.connected = False
    assert health.check_workers(registry)["status"] == "unhealthy"


def test_check_disk(tmp_path: Path) -> None:
    result = health.check_disk(tmp_path / "not" / "created" / "yet")
    assert result["status"] in {"healthy", "degraded", "unhealthy"}
    assert result["path"] == str(tmp_path)
    assert 0 <= result["free_ratio"] <= 1
    assert health.check_disk(tmp_path, degraded_free_ratio=1.01)["status"] == "degraded"
    assert health.check_disk(tmp_path, degraded_free_ratio=1.01, unhealthy_free_ratio=1.01)["status"] == "unhealthy"


def test_check_cache_size_limit() -> None:
    client = fakeredis.FakeRedis()
    client.zadd("tts:audio:index", {"a": 1, "b": 2})
    client.set("tts:audio:bytes", 5000)
    result = health.check_cache(client)
    assert (result["status"], result["entries"], result["bytes"]) == ("healthy", 2, 5000)
    assert health.check_cache(client, max_bytes=100)["status"] == "degraded"


def test_check_broker_reports_backlog() -> None:
    client = fakeredis.FakeRedis()
    client.rpush("synthesis", *range(5))
    client.rpush("synthesis\x06\x169", *range(3))
    client.hset("unacked", mapping={"t1": "x"})
    client.zadd("tts:dlq", {"j1": 1})
    result = health.check_broker(client, ["synthesis", "webhooks"])
    assert result["status"] == "healthy"
    assert result["queues"] == {"synthesis": 8, "webhooks": 0}
    assert (result["reserved"], result["dead_letter"]) == (1, 1)
    backed_up = health.check_broker(client, ["synthesis"], max_queue_length=5)
    assert backed_up["status"] == "degraded" and "synthesis" in backed_up["detail"]

"""Health checks: bounded, never raising, folded into one status (fakeredis where Redis is needed)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import fakeredis
import pytest
import redis

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


# --- liveness and readiness probes ------------------------------------------------------------


class ReadOnlyRedis(fakeredis.FakeRedis):
    """A Redis that answers reads and refuses every write, as a replica does (the client library's error)."""

    def set(self, *args: object, **kwargs: object) -> bool:  # type: ignore[override]
        raise redis.ReadOnlyError("You can't write against a read only replica.")


def test_check_redis_ping() -> None:
    server = fakeredis.FakeServer()
    result = health.check_redis_ping(fakeredis.FakeRedis(server=server))
    assert result["status"] == "healthy" and result["ping_ms"] >= 0
    server.connected = False
    assert health.check_redis_ping(fakeredis.FakeRedis(server=server))["status"] == "unhealthy"


def test_check_redis_write_sets_a_key_that_expires() -> None:
    client = fakeredis.FakeRedis()
    result = health.check_redis_write(client, "probe-key", ttl_ms=2000)
    assert (result["status"], result["writable"]) == ("healthy", True)
    assert 0 < client.pttl("probe-key") <= 2000
    assert health.write_probe_key().startswith("tts:metrics:health:write:")
    refused = health.check_redis_write(ReadOnlyRedis(), "probe-key")
    assert (refused["status"], refused["writable"]) == ("unhealthy", False)
    assert "read only replica" in refused["detail"]
    server = fakeredis.FakeServer()
    server.connected = False
    assert health.check_redis_write(fakeredis.FakeRedis(server=server), "k")["status"] == "unhealthy"


def test_check_redis_with_a_write_probe_that_is_refused() -> None:
    # (A write that succeeds is checked against a real Redis: fakeredis has no INFO.)
    refused = health.check_redis(ReadOnlyRedis(), write_key="probe")
    assert (refused["status"], refused["writable"]) == ("unhealthy", False)
    assert "read only replica" in refused["detail"]


def test_check_workers_names_the_heartbeat_window() -> None:
    result = health.check_workers(WorkerRegistry(fakeredis.FakeRedis()))
    assert result["status"] == "unhealthy" and "30 s" in result["detail"]


def test_failed_checks() -> None:
    results = {"redis": {"status": "healthy"}, "workers": {"status": "unhealthy"}, "disk": {"status": "degraded"}}
    assert health.failed_checks(results) == ["workers"]
    assert health.failed_checks(results, ["redis"]) == []
    assert health.failed_checks(results, ["redis", "engine"]) == ["engine"]  # missing counts as failed


# --- workload warnings ------------------------------------------------------------------------


def warnings_of(**overrides: object) -> list[dict]:
    args: dict = {"queues": {"synthesis": 0}, "dead_letter": 0, "error_rate": None, "queue_threshold": 1000,
                  "error_rate_threshold": 0.05, "min_jobs": 5}
    args.update(overrides)
    return health.collect_warnings(**args)


def test_no_warnings_for_a_quiet_service() -> None:
    assert warnings_of() == []
    assert warnings_of(queues=None, dead_letter=None) == []  # Redis did not answer: nothing to say


def test_deep_queues_are_warnings() -> None:
    found = warnings_of(queues={"synthesis": 1001, "batch": 1000, "webhooks": 5000})
    assert [(w["code"], w["queue"], w["value"]) for w in found] == [("queue_length", "synthesis", 1001),
                                                                     ("queue_length", "webhooks", 5000)]
    assert all(w["threshold"] == 1000 and w["message"] for w in found)


def test_dead_letters_are_a_warning() -> None:
    (found,) = warnings_of(dead_letter=3)
    assert (found["code"], found["value"]) == ("dead_letters", 3)
    assert "/v1/dlq" in found["message"]


def test_error_rate_warning_needs_enough_jobs_and_a_rate_above_the_threshold() -> None:
    high = health.error_rate_reading({"succeeded": 90, "failed": 10}, None, None)
    assert high == {"value": 0.1, "failed": 10, "finished": 100, "window_seconds": None}
    (found,) = warnings_of(error_rate=high)
    assert (found["code"], found["value"], found["threshold"]) == ("error_rate", 0.1, 0.05)
    assert "since the counters started" in found["message"]
    assert warnings_of(error_rate=high, error_rate_threshold=0.1) == []  # at the threshold is fine
    few = health.error_rate_reading({"succeeded": 1, "failed": 3}, None, None)
    assert warnings_of(error_rate=few) == []  # 4 finished jobs are too few to judge


def test_error_rate_reading_over_a_window() -> None:
    reading = health.error_rate_reading({"succeeded": 120, "failed": 30}, {"succeeded": 100, "failed": 10}, 300.0)
    assert reading == {"value": 0.5, "failed": 20, "finished": 40, "window_seconds": 300.0}
    (found,) = warnings_of(error_rate=reading)
    assert "over the last 300 s" in found["message"]
    idle = health.error_rate_reading({"succeeded": 100, "failed": 10}, {"succeeded": 100, "failed": 10}, 300.0)
    assert idle["finished"] == 0 and warnings_of(error_rate=idle) == []
    reset = health.error_rate_reading({"succeeded": 5, "failed": 5}, {"succeeded": 100, "failed": 10}, 300.0)
    assert reset == {"value": 0.5, "failed": 5, "finished": 10, "window_seconds": None}  # counters restarted

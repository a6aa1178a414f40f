"""Component health checks for ``/health`` and friends: bounded in time, never raising.

Each check returns ``{"status": "healthy" | "degraded" | "unhealthy", "latency_ms": float,
"detail": str, ...}`` (plus a few numbers of its own). Every check runs in a helper thread
and is abandoned after ``timeout`` seconds (1 s by default), answering ``unhealthy`` with
"timed out"; the abandoned thread ends when the client's own socket timeout fires, so pass
clients that have one.

:func:`run_checks` runs several checks at once, so a page of checks costs one timeout, not
their sum. :func:`overall` folds the components into one status: ``unhealthy`` when Redis or
the broker is, ``degraded`` when anything else is not healthy.

Probes for load balancers and orchestrators: :func:`check_redis_ping` (liveness: Redis
answers PING) and :func:`check_redis_write` (readiness: a real write, a key that expires by
itself) with :func:`check_workers` (a live worker heartbeat). :func:`failed_checks` names the
ones that failed. What the workload looks like (a deep queue, dead letters, a high error rate)
is never a failed check: :func:`collect_warnings` lists it as warnings.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from monitoring import queues as broker
from monitoring.workers import DEFAULT_TTL as HEARTBEAT_TTL
from monitoring.workers import WorkerRegistry
from settings import Settings
from tasks import keys

__all__ = [
    "CRITICAL_COMPONENTS",
    "DEGRADED",
    "HEALTHY",
    "UNHEALTHY",
    "check_broker",
    "check_cache",
    "check_disk",
    "check_redis",
    "check_redis_ping",
    "check_redis_write",
    "check_workers",
    "collect_warnings",
    "error_rate_reading",
    "failed_checks",
    "http_status",
    "overall",
    "run_check",
    "run_checks",
    "write_probe_key",
]

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
DEFAULT_TIMEOUT = 1.0
#: Components without which no job can be accepted or run: their failure is ``unhealthy``.
CRITICAL_COMPONENTS: frozenset[str] = frozenset({"redis", "broker"})
#: A Redis answering slower than this (ms) is ``degraded``.
SLOW_MS = 250.0
#: Milliseconds the write probe's key lives; each probe of a process overwrites the same key.
WRITE_PROBE_TTL_MS = 10_000

Check = Callable[[], Mapping[str, Any]]


def _result(status: str, latency_ms: float, detail: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, "latency_ms": round(latency_ms, 2), "detail": detail, **extra}


def run_check(check: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Run ``check`` in a helper thread for at most ``timeout`` seconds; never raises.

    ``check`` returns a dict with at least ``status`` (and optionally ``detail`` and other
    keys), or a bool (True: healthy). ``latency_ms`` is measured here. An exception or a
    timeout answers ``unhealthy``. Use it for the engine check too.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = check()
        except BaseException as exc:  # noqa: BLE001 - a check must never raise
            outcome["error"] = exc

    started = time.perf_counter()
    thread = threading.Thread(target=target, name="health-check", daemon=True)
    thread.start()
    thread.join(timeout)
    elapsed = (time.perf_counter() - started) * 1000.0
    if thread.is_alive():
        return _result(UNHEALTHY, elapsed, f"timed out after {timeout:g} s")
    if "error" in outcome:
        exc = outcome["error"]
        return _result(UNHEALTHY, elapsed, f"{type(exc).__name__}: {exc}")
    value = outcome.get("value")
    if isinstance(value, bool):
        return _result(HEALTHY if value else UNHEALTHY, elapsed, "ok" if value else "check failed")
    if isinstance(value, Mapping):
        status = value.get("status")
        if status not in (HEALTHY, DEGRADED, UNHEALTHY):
            return _result(UNHEALTHY, elapsed, f"check answered an unknown status {status!r}")
        extra = {k: v for k, v in value.items() if k not in ("status", "latency_ms", "detail")}
        return _result(status, elapsed, str(value.get("detail", "ok")), **extra)
    return _result(UNHEALTHY, elapsed, f"check answered {type(value).__name__}, not a dict")


def run_checks(checks: Mapping[str, Check], timeout: float = DEFAULT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """Run named checks concurrently, each bounded by ``timeout``; ``{name: result}``."""
    results: dict[str, dict[str, Any]] = {}
    threads = []
    for name, check in checks.items():
        def target(name: str = name, check: Check = check) -> None:
            results[name] = run_check(check, timeout)

        thread = threading.Thread(target=target, name=f"health-{name}", daemon=True)
        thread.start()
        threads.append((name, thread))
    deadline = time.monotonic() + timeout + 0.5
    for name, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if name not in results:
            results[name] = _result(UNHEALTHY, timeout * 1000.0, f"timed out after {timeout:g} s")
    return {name: results[name] for name in checks}


def write_probe_key() -> str:
    """The key this process's write probes set: one per host and process, expiring by itself."""
    return f"{keys.METRICS_PREFIX}health:write:{socket.gethostname()}:{os.getpid()}"


def _write(client: redis.Redis, key: str, ttl_ms: int) -> str | None:
    """SET ``key`` with a TTL of ``ttl_ms``; None when Redis took it, else why it refused
    (a replica: READONLY; out of memory: OOM; failing persistence: MISCONF)."""
    try:
        client.set(key, repr(time.time()), px=max(1, int(ttl_ms)))
    except redis.ResponseError as exc:
        return f"Redis refused a write: {type(exc).__name__}: {exc}"
    return None


def check_redis_ping(client: redis.Redis, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """PING only (liveness): healthy when Redis answers, unhealthy when it does not in time."""

    def probe() -> dict[str, Any]:
        started = time.perf_counter()
        client.ping()
        ping_ms = (time.perf_counter() - started) * 1000.0
        return {"status": HEALTHY, "detail": f"PONG in {ping_ms:.1f} ms", "ping_ms": round(ping_ms, 2)}

    return run_check(probe, timeout)


def check_redis_write(
    client: redis.Redis, key: str | None = None, timeout: float = DEFAULT_TIMEOUT, ttl_ms: int = WRITE_PROBE_TTL_MS
) -> dict[str, Any]:
    """A real write (readiness): SET ``key`` (:func:`write_probe_key` by default) with a short TTL.

    Healthy when Redis takes it; unhealthy when it refuses (read-only replica, out of memory,
    persistence failing), is unreachable or does not answer within ``timeout``.
    """
    target = key or write_probe_key()

    def probe() -> dict[str, Any]:
        started = time.perf_counter()
        refused = _write(client, target, ttl_ms)
        write_ms = (time.perf_counter() - started) * 1000.0
        extra = {"writable": refused is None, "write_ms": round(write_ms, 2)}
        if refused is not None:
            return {"status": UNHEALTHY, "detail": refused, **extra}
        return {"status": HEALTHY, "detail": f"write took {write_ms:.1f} ms", **extra}

    return run_check(probe, timeout)


def check_redis(
    client: redis.Redis, timeout: float = DEFAULT_TIMEOUT, write_key: str | None = None
) -> dict[str, Any]:
    """PING and INFO: unhealthy when unreachable, degraded when slow or near ``maxmemory``.

    With ``write_key`` it also writes that key (with a short TTL, as :func:`check_redis_write`
    does) and is unhealthy when Redis refuses the write; ``writable`` tells the outcome.
    """

    def probe() -> dict[str, Any]:
        started = time.perf_counter()
        client.ping()
        ping_ms = (time.perf_counter() - started) * 1000.0
        refused = _write(client, write_key, WRITE_PROBE_TTL_MS) if write_key else None
        if refused is not None:
            return {"status": UNHEALTHY, "detail": refused, "writable": False, "ping_ms": round(ping_ms, 2)}
        info = client.info()
        used = int(info.get("used_memory", 0))
        limit = int(info.get("maxmemory", 0) or 0)
        extra = {
            "version": info.get("redis_version"),
            "used_memory_bytes": used,
            "maxmemory_bytes": limit,
            "connected_clients": info.get("connected_clients"),
            "ping_ms": round(ping_ms, 2),
        }
        if write_key:
            extra["writable"] = True
        if limit and used > 0.9 * limit:
            return {"status": DEGRADED, "detail": f"memory {used}/{limit} bytes (>90%)", **extra}
        if ping_ms > SLOW_MS:
            return {"status": DEGRADED, "detail": f"slow: PING took {ping_ms:.0f} ms", **extra}
        return {"status": HEALTHY, "detail": "ok", **extra}

    return run_check(probe, timeout)


def check_broker(
    client: redis.Redis,
    queues: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    max_queue_length: int | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Queue lengths and reserved messages; degraded when a queue exceeds ``max_queue_length``.

    ``settings``: with a RabbitMQ broker (``TTS_BROKER_URL=amqp://``) the lengths come from
    RabbitMQ and ``reserved`` is None (AMQP does not tell); without, kombu's Redis lists.
    """

    def probe() -> dict[str, Any]:
        if settings is not None:
            lengths = broker.broker_queue_lengths(settings, client, queues)
            reserved = broker.broker_reserved_count(settings, client)
        else:
            lengths = broker.queue_lengths(client, queues)
            reserved = broker.reserved_count(client)
        dead = broker.dead_letter_count(client)
        extra = {"queues": lengths, "reserved": reserved, "dead_letter": dead}
        if max_queue_length is not None:
            backed_up = sorted(q for q, n in lengths.items() if n > max_queue_length)
            if backed_up:
                return {
                    "status": DEGRADED,
                    "detail": f"queue(s) {', '.join(backed_up)} above {max_queue_length} messages",
                    **extra,
                }
        return {"status": HEALTHY, "detail": "ok", **extra}

    return run_check(probe, timeout)


def check_workers(registry: WorkerRegistry, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Live worker heartbeats (each lives ``monitoring.workers.DEFAULT_TTL`` = 30 s after the
    worker last wrote it): unhealthy with none (jobs would wait forever)."""

    def probe() -> dict[str, Any]:
        workers = registry.list()
        busy = sum(w["busy"] for w in workers)
        slots = sum(w["concurrency"] for w in workers)
        extra = {
            "workers": len(workers),
            "busy": busy,
            "concurrency": slots,
            "hostnames": [w["hostname"] for w in workers],
        }
        if not workers:
            return {"status": UNHEALTHY, "detail": f"no worker heartbeat in the last {HEARTBEAT_TTL} s", **extra}
        return {"status": HEALTHY, "detail": f"{len(workers)} worker(s), {busy}/{slots} busy", **extra}

    return run_check(probe, timeout)


def check_disk(
    path: str | Path,
    timeout: float = DEFAULT_TIMEOUT,
    degraded_free_ratio: float = 0.10,
    unhealthy_free_ratio: float = 0.02,
) -> dict[str, Any]:
    """Free space where ``path`` lives (its nearest existing parent): degraded under 10 %
    free, unhealthy under 2 %."""

    def probe() -> dict[str, Any]:
        target = Path(path).resolve()
        while not target.exists() and target != target.parent:
            target = target.parent
        usage = shutil.disk_usage(target)
        free_ratio = usage.free / usage.total if usage.total else 0.0
        extra = {
            "path": str(target),
            "total_bytes": usage.total,
            "free_bytes": usage.free,
            "free_ratio": round(free_ratio, 4),
        }
        if free_ratio < unhealthy_free_ratio:
            return {"status": UNHEALTHY, "detail": f"only {free_ratio:.1%} free", **extra}
        if free_ratio < degraded_free_ratio:
            return {"status": DEGRADED, "detail": f"only {free_ratio:.1%} free", **extra}
        return {"status": HEALTHY, "detail": f"{free_ratio:.1%} free", **extra}

    return run_check(probe, timeout)


def check_cache(
    client: redis.Redis, timeout: float = DEFAULT_TIMEOUT, max_bytes: int | None = None
) -> dict[str, Any]:
    """The audio cache's Redis and size; degraded when above ``max_bytes`` (eviction lagging)."""

    def probe() -> dict[str, Any]:
        client.ping()
        stats = broker.cache_stats(client)
        extra = {"entries": stats["entries"], "bytes": stats["bytes"]}
        if max_bytes is not None and stats["bytes"] > max_bytes:
            return {"status": DEGRADED, "detail": f"{stats['bytes']} bytes, above {max_bytes}", **extra}
        return {"status": HEALTHY, "detail": f"{stats['entries']} entries", **extra}

    return run_check(probe, timeout)


def overall(components: Mapping[str, Mapping[str, Any]]) -> str:
    """One status for all components.

    ``unhealthy`` when a critical component (:data:`CRITICAL_COMPONENTS`) is unhealthy;
    ``degraded`` when any component is not healthy; else ``healthy``.
    """
    statuses = {name: str(result.get("status", UNHEALTHY)) for name, result in components.items()}
    if any(statuses.get(name) == UNHEALTHY for name in CRITICAL_COMPONENTS):
        return UNHEALTHY
    if any(status != HEALTHY for status in statuses.values()):
        return DEGRADED
    return HEALTHY


def http_status(status: str) -> int:
    """200 for ``healthy``, 503 for ``degraded`` or ``unhealthy``."""
    return 200 if status == HEALTHY else 503


def failed_checks(results: Mapping[str, Mapping[str, Any]], names: Sequence[str] | None = None) -> list[str]:
    """The names (of ``names``, or of every result) whose result is ``unhealthy`` or missing, sorted."""
    wanted = list(results) if names is None else list(names)
    return sorted(name for name in wanted if results.get(name, {}).get("status", UNHEALTHY) == UNHEALTHY)


def error_rate_reading(
    current: Mapping[str, Any], baseline: Mapping[str, Any] | None, window_seconds: float | None
) -> dict[str, Any]:
    """Failed / finished jobs between ``baseline`` and ``current`` (job totals, each with
    ``succeeded`` and ``failed``). Without a baseline, or after a counter reset, since the
    counters started (``window_seconds`` None).

    Returns ``{"value", "failed", "finished", "window_seconds"}``.
    """
    succeeded = float(current.get("succeeded") or 0.0)
    failed = float(current.get("failed") or 0.0)
    if baseline is not None:
        d_succeeded = succeeded - float(baseline.get("succeeded") or 0.0)
        d_failed = failed - float(baseline.get("failed") or 0.0)
        if d_succeeded >= 0 and d_failed >= 0:
            succeeded, failed = d_succeeded, d_failed
        else:
            window_seconds = None
    else:
        window_seconds = None
    finished = succeeded + failed
    return {"value": round(failed / finished, 4) if finished else 0.0, "failed": int(failed),
            "finished": int(finished), "window_seconds": window_seconds}


def collect_warnings(
    *,
    queues: Mapping[str, int] | None,
    dead_letter: int | None,
    error_rate: Mapping[str, Any] | None,
    queue_threshold: int,
    error_rate_threshold: float,
    min_jobs: int,
) -> list[dict[str, Any]]:
    """What an operator should look at but that does not stop the service accepting jobs.

    Each warning is ``{"code", "message", ...numbers}``: ``queue_length`` per queue holding more
    than ``queue_threshold`` messages, ``dead_letters`` when any record waits, and ``error_rate``
    when the :func:`error_rate_reading` is above ``error_rate_threshold`` over at least
    ``min_jobs`` finished jobs. A reading that is None (Redis did not answer) adds nothing.
    """
    found: list[dict[str, Any]] = []
    for queue, length in sorted((queues or {}).items()):
        if int(length) > queue_threshold:
            found.append({"code": "queue_length", "queue": queue, "value": int(length), "threshold": queue_threshold,
                          "message": f"queue {queue} holds {int(length)} messages (above {queue_threshold}); "
                                     "jobs wait longer, none is lost"})
    if dead_letter:
        found.append({"code": "dead_letters", "value": int(dead_letter),
                      "message": f"{int(dead_letter)} dead-lettered job(s) wait for a decision (GET /v1/dlq)"})
    if error_rate is not None and int(error_rate.get("finished") or 0) >= max(1, min_jobs):
        rate = float(error_rate.get("value") or 0.0)
        if rate > error_rate_threshold:
            window = error_rate.get("window_seconds")
            span = f"over the last {window:g} s" if isinstance(window, (int, float)) else "since the counters started"
            found.append({"code": "error_rate", "value": rate, "threshold": error_rate_threshold,
                          "failed": error_rate.get("failed"), "finished": error_rate.get("finished"),
                          "window_seconds": window,
                          "message": f"{rate:.1%} of {error_rate.get('finished')} finished jobs failed {span} "
                                     f"(above {error_rate_threshold:.1%})"})
    return found

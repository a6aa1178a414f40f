"""Health endpoints: is this process alive, can the service take jobs, which component is in trouble?

``GET /health/live``        liveness: this process answers and Redis answers PING; 200 or 503
``GET /health/ready``       readiness: Redis takes a real write and a worker heartbeat is live;
                            200 or 503 naming the failed checks (for load balancers)
``GET /health``             the readiness summary: status, ready, timestamp, model_loaded,
                            voices_available, uptime_seconds, components (status, latency,
                            detail each), warnings and a performance summary
``GET /health/detailed``    the same with every check's numbers, the workers, queues, the
                            machine (psutil) and the settings an operator tunes
``GET /health/components``  redis, broker, workers, engine, cache, disk and result store checks only
``GET /health/voices``      every voice with whether its model files are on this machine

Every check runs in a helper thread bounded by :data:`CHECK_TIMEOUT` (all of them at once,
see :func:`monitoring.health.run_checks`), so an answer never takes much more than a second,
whatever Redis does; a 503 carries an ``error`` object and ``Retry-After``, never a 500.

``/health``, ``/health/components`` and ``/health/detailed`` answer 503 exactly when a
:data:`BLOCKING` component is ``unhealthy``: Redis (unreachable, or refusing writes), the
broker, the engine (no usable voice) or the workers (no heartbeat), i.e. when the service
cannot accept or run jobs; otherwise 200, also while ``degraded``. Status: ``unhealthy`` when
Redis, the broker or the engine fails; ``degraded`` when anything else is not healthy (no
worker heartbeat, the cache above ``TTS_CACHE_MAX_BYTES``, little disk space, a slow Redis,
a result store that cannot be reached: ``results`` gives its ``url`` and ``reachable``).
The workload is never a failure: a queue above ``TTS_ALERT_QUEUE_LENGTH``, dead letters and
an error rate above ``TTS_ALERT_ERROR_RATE`` are listed under ``warnings`` and leave the
status and the answer as they are.

``model_loaded`` is true when the default voice's model files are present and at least one
worker is online: workers load the default voice when they start, while the API itself never
loads a model (no synthesis in a request thread).
"""
from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from flask import Flask, current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from engine import VoiceCatalog
from monitoring import health as checks
from monitoring import system
from monitoring.history import MetricsHistory
from monitoring.workers import WorkerRegistry
from settings import Settings
from tasks.celery_app import QUEUES
from tasks.exceptions import ResultStoreUnavailable
from tasks.result_store import ResultStore

from .contract import SECURITY, answer, error_responses, report_with_error
from .schemas import AnyBody

log = logging.getLogger(__name__)

bp = APIBlueprint("health", __name__, abp_tags=[Tag(name="health", description="probes and component checks")])

_RETRY = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def _health_responses(what: str, admin: bool) -> dict[Any, Any]:
    """200 and 503 with the same body (the 503 adds ``error``), plus the key errors of admin views."""
    return {200: answer(AnyBody, what),
            503: answer(None, what + ", with error: the service cannot take jobs", headers=_RETRY,
                        media=report_with_error(AnyBody)),
            **(error_responses(401, 403, 429) if admin else {})}


#: Seconds any one check may take before it counts as ``unhealthy`` ("timed out").
CHECK_TIMEOUT = 1.0
#: Components whose failure makes the whole service ``unhealthy`` (not merely degraded).
CRITICAL = frozenset(checks.CRITICAL_COMPONENTS | {"engine"})
#: What accepting and running a job needs (``/health/ready``): Redis writable, a live worker.
READINESS = ("redis", "workers")
#: Components whose ``unhealthy`` answers 503 on ``/health``, ``/health/components`` and ``/health/detailed``.
BLOCKING = frozenset(CRITICAL | set(READINESS))
#: Seconds a 503 tells the client (or load balancer) to wait before asking again.
RETRY_AFTER = 5
#: Kinds of :class:`engine.voices.ModelFile` listed as a voice's model files.
LISTED_KINDS = frozenset({"model", "config"})
_PERFORMANCE = "_performance"


@bp.record_once
def _warm_catalog(state: Any) -> None:
    """Discover the voices in the background at start-up (it imports the engines: ~2 s cold),
    so the first health check does not time out on it."""
    app: Flask = state.app
    ext = app.extensions.get("tts")
    if not ext:
        return
    catalog = ext["runtime"].catalog

    def warm() -> None:
        try:
            catalog.ids()
        except Exception as exc:  # noqa: BLE001 - the engine check reports it
            log.warning("voice catalog discovery failed: %s", exc)

    threading.Thread(target=warm, name="catalog-warmup", daemon=True).start()


# --- the engine check ----------------------------------------------------------------------


def voice_model_files(catalog: VoiceCatalog, voice: str) -> dict[str, Any]:
    """Where a voice's model files are and whether they exist, without loading anything.

    Returns ``{"voice", "family", "files": [paths], "present": bool, "detail": str}``;
    ``files`` lists the model and config files in place (not the parts a model is still
    to be assembled from). Raises the catalog's errors for an unknown voice.
    """
    info = catalog.info(voice)
    needed = catalog.model_files(info.id)
    files = [str(f.path) for f in needed if f.kind in LISTED_KINDS and f.path is not None]
    missing = [str(f.path) if f.path is not None else f"{f.kind.replace('_', ' ')} of {f.distribution}"
               for f in needed if not f.exists]
    if missing:
        present, detail = False, f"missing model file(s): {', '.join(missing)}"
    elif any(f.kind == "model_part" for f in needed):
        present, detail = True, "model parts installed; workers assemble them on first use"
    else:
        present, detail = True, "ok"
    return {"voice": info.id, "family": info.family, "files": files, "present": present, "detail": detail}


def engine_check(catalog: VoiceCatalog, settings: Settings) -> Callable[[], dict[str, Any]]:
    """A check for :func:`monitoring.health.run_check`: the catalog lists voices and the
    default voice's model files exist. Cheap: nothing is loaded or synthesized."""

    def probe() -> dict[str, Any]:
        ids = catalog.ids()
        extra: dict[str, Any] = {"voices": len(ids), "default_voice": settings.default_voice,
                                 "loaded_here": catalog.loaded()}
        if not ids:
            return {"status": checks.UNHEALTHY, "detail": "no voice found on this machine", **extra}
        if settings.default_voice not in ids:
            return {"status": checks.DEGRADED,
                    "detail": f"default voice {settings.default_voice!r} is not installed", **extra}
        files = voice_model_files(catalog, settings.default_voice)
        extra["model_files"] = files["files"]
        if not files["present"]:
            return {"status": checks.UNHEALTHY, "detail": files["detail"], **extra}
        return {"status": checks.HEALTHY, "detail": f"{len(ids)} voices; default {settings.default_voice!r} ready",
                **extra}

    return probe


def result_store_check(store: ResultStore, timeout: float = CHECK_TIMEOUT) -> dict[str, Any]:
    """The result store (where audio lives), with its ``url`` and ``reachable``: unhealthy when it
    cannot be reached or written (no job can store its audio, no download can read it)."""

    def probe() -> dict[str, Any]:
        try:
            store.check()
        except ResultStoreUnavailable as exc:
            return {"status": checks.UNHEALTHY, "detail": str(exc), "url": store.url, "reachable": False}
        return {"status": checks.HEALTHY, "detail": "reachable", "url": store.url, "reachable": True}

    result = checks.run_check(probe, timeout)
    result.setdefault("url", store.url)  # a probe that timed out or raised
    result.setdefault("reachable", False)
    return result


# --- running the checks ----------------------------------------------------------------------


def _context() -> tuple[Any, Settings, float]:
    ext = current_app.extensions["tts"]
    return ext["runtime"], ext["settings"], ext["started"]


def component_checks(runtime: Any, settings: Settings) -> dict[str, checks.Check]:
    """The named component checks (each already bounded by :data:`CHECK_TIMEOUT`)."""
    registry = WorkerRegistry(runtime.redis)
    engine = engine_check(runtime.catalog, settings)
    write_key = checks.write_probe_key()
    return {
        # The queue length is a warning (collect_warnings), never a component status.
        "redis": lambda: checks.check_redis(runtime.redis, CHECK_TIMEOUT, write_key=write_key),
        "broker": lambda: checks.check_broker(runtime.redis, QUEUES, CHECK_TIMEOUT, settings=runtime.settings),
        "workers": lambda: checks.check_workers(registry, CHECK_TIMEOUT),
        "engine": lambda: checks.run_check(engine, CHECK_TIMEOUT),
        "cache": lambda: checks.check_cache(runtime.cache_redis, CHECK_TIMEOUT,
                                            max_bytes=settings.cache_max_bytes),
        "disk": lambda: checks.check_disk(settings.data_dir, CHECK_TIMEOUT),
        "results": lambda: result_store_check(runtime.result_store),
    }


def performance_probe(runtime: Any, settings: Settings) -> dict[str, Any]:
    """The recorder's summary and the error rate over the last ``TTS_ALERT_WINDOW`` seconds
    (against the oldest history sample inside it; without one, since the counters started)."""
    summary = runtime.metrics.summary()
    now = time.time()
    samples = MetricsHistory(runtime.redis).since(settings.alert_window, now=now)
    baseline = samples[0] if samples else None
    span = round(now - float(baseline.get("ts", now)), 1) if baseline else None
    return {"status": checks.HEALTHY, "summary": summary,
            "error_rate": checks.error_rate_reading(summary["jobs"], baseline, span)}


def run_components(runtime: Any, settings: Settings, with_performance: bool = False) -> tuple[
        dict[str, dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
    """Run every check at once (one timeout in all); the results and, when asked, the
    recorder's summary and the error-rate reading (None when Redis could not give them in time)."""
    named = component_checks(runtime, settings)
    if with_performance:
        named[_PERFORMANCE] = lambda: performance_probe(runtime, settings)
    results = checks.run_checks(named, timeout=CHECK_TIMEOUT + 0.25)
    performance = error_rate = None
    if with_performance:
        outcome = results.pop(_PERFORMANCE)
        if outcome.get("status") == checks.HEALTHY:
            performance, error_rate = outcome.get("summary"), outcome.get("error_rate")
    return results, performance, error_rate


def warnings_for(components: Mapping[str, Mapping[str, Any]], error_rate: Mapping[str, Any] | None,
                 settings: Settings) -> list[dict[str, Any]]:
    """The workload warnings (:func:`monitoring.health.collect_warnings`) from the broker check
    and the error-rate reading, with the alert thresholds as limits."""
    broker = components.get("broker", {})
    return checks.collect_warnings(
        queues=broker.get("queues"), dead_letter=broker.get("dead_letter"), error_rate=error_rate,
        queue_threshold=settings.alert_queue_length, error_rate_threshold=settings.alert_error_rate,
        min_jobs=settings.alert_min_jobs)


def fold(components: Mapping[str, Mapping[str, Any]]) -> str:
    """One status: ``unhealthy`` when a critical component is, ``degraded`` when any is not healthy."""
    if any(components.get(name, {}).get("status") == checks.UNHEALTHY for name in CRITICAL):
        return checks.UNHEALTHY
    return checks.overall(components)


def _brief(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": result.get("status"), "latency_ms": result.get("latency_ms"), "detail": result.get("detail")}


def _performance_brief(summary: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    latency = summary.get("latency_seconds", {})

    def pct(name: str) -> dict[str, Any]:
        item = latency.get(name, {})
        return {"count": item.get("count"), "p50": item.get("p50"), "p95": item.get("p95"), "p99": item.get("p99")}

    jobs = summary.get("jobs", {})
    return {
        "jobs": {k: jobs.get(k) for k in ("submitted", "succeeded", "failed", "retried", "dead_lettered",
                                          "cancelled", "served_from_cache")},
        "error_rate": jobs.get("error_rate"),
        "latency_seconds": {name: pct(name) for name in ("queue_wait", "synthesis", "job_duration")},
        "cache_hit_rate": summary.get("cache", {}).get("hit_rate"),
        "realtime_factor": summary.get("realtime_factor", {}),
    }


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _describe(results: Mapping[str, Any], names: list[str]) -> str:
    return ", ".join(f"{name} {results[name].get('status')} ({results[name].get('detail')})"
                     for name in names if isinstance(results.get(name), Mapping))


def _send(body: dict[str, Any], code: int) -> Any:
    response = jsonify(body)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    if code == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def _respond(body: dict[str, Any], status: str) -> Any:
    """200 for healthy; 503 with an ``error`` object naming the failing components otherwise
    (``/health/voices``)."""
    code = checks.http_status(status)
    if code != 200:
        components = body.get("components") or {}
        failing = [name for name, result in sorted(components.items())
                   if isinstance(result, Mapping) and result.get("status") != checks.HEALTHY]
        reason = _describe(components, failing) or str(body.get("detail") or "see the document")
        body["error"] = {"code": f"service_{status}", "message": f"service is {status}: {reason}"}
    return _send(body, code)


def _respond_components(body: dict[str, Any], status: str, components: Mapping[str, Any]) -> Any:
    """503 when a :data:`BLOCKING` component is unhealthy, with an ``error`` object naming
    every component that is not healthy; 200 otherwise, also when degraded."""
    blocking = checks.failed_checks(components, sorted(BLOCKING))
    if not blocking:
        return _send(body, 200)
    failing = [name for name, result in sorted(components.items())
               if isinstance(result, Mapping) and result.get("status") != checks.HEALTHY]
    body["error"] = {"code": f"service_{status}",
                     "message": f"service is {status}, cannot accept or run jobs: {_describe(components, failing)}"}
    return _send(body, 503)


def _respond_probe(body: dict[str, Any], results: Mapping[str, Any], kind: str) -> Any:
    """A probe's answer: 200 when no check failed, else 503 with ``failed`` and an ``error``."""
    failed = checks.failed_checks(results)
    body["failed"] = failed
    if not failed:
        return _send(body, 200)
    body["error"] = {"code": f"not_{kind}", "message": f"not {kind}: {_describe(results, failed)}"}
    return _send(body, 503)


def _voices_available(components: Mapping[str, Mapping[str, Any]]) -> int | None:
    engine = components.get("engine", {})
    voices = engine.get("voices")
    return int(voices) if isinstance(voices, int) else None


def _model_loaded(components: Mapping[str, Mapping[str, Any]]) -> bool:
    return (components.get("engine", {}).get("status") == checks.HEALTHY
            and int(components.get("workers", {}).get("workers") or 0) > 0)


def _version() -> str:
    try:
        return metadata.version("tts-batch")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- endpoints -------------------------------------------------------------------------------


def _overview(status: str, components: dict[str, Any], settings: Any, started: float) -> dict[str, Any]:
    """The fields /health and /health/detailed share."""
    return {
        "status": status,
        "ready": not checks.failed_checks(components, READINESS),
        "timestamp": _timestamp(),
        "model_loaded": _model_loaded(components),
        "voices_available": _voices_available(components),
        "default_voice": settings.default_voice,
        "uptime_seconds": round(time.time() - started, 1),
        "version": _version(),
    }


@bp.get("/health/live", operation_id="health_live", summary="Liveness",
        responses=_health_responses("this process answers and Redis answers PING", admin=False))
def health_live() -> Any:
    """Liveness: this process answers and Redis answers PING (bounded); 200, or 503 with ``error``."""
    runtime, _, started = _context()
    results = checks.run_checks({"redis": lambda: checks.check_redis_ping(runtime.redis, CHECK_TIMEOUT)},
                                timeout=CHECK_TIMEOUT + 0.25)
    live = not checks.failed_checks(results)
    body = {"status": checks.HEALTHY if live else checks.UNHEALTHY, "live": live, "timestamp": _timestamp(),
            "uptime_seconds": round(time.time() - started, 1), "checks": results}
    return _respond_probe(body, results, "live")


@bp.get("/health/ready", operation_id="health_ready", summary="Readiness",
        responses=_health_responses("Redis takes a write and a worker heartbeat is live", admin=False))
def health_ready() -> Any:
    """Readiness: Redis takes a real write (a key with a short TTL) and a worker heartbeat is
    live, both checked at once and bounded; 200, or 503 with ``failed``, ``error`` and Retry-After."""
    runtime, _, _ = _context()
    registry = WorkerRegistry(runtime.redis)
    key = checks.write_probe_key()
    results = checks.run_checks({
        "redis": lambda: checks.check_redis_write(runtime.redis, key, CHECK_TIMEOUT),
        "workers": lambda: checks.check_workers(registry, CHECK_TIMEOUT),
    }, timeout=CHECK_TIMEOUT + 0.25)
    ready = not checks.failed_checks(results)
    body = {"status": checks.HEALTHY if ready else checks.UNHEALTHY, "ready": ready, "timestamp": _timestamp(),
            "checks": results}
    return _respond_probe(body, results, "ready")


@bp.get("/health", operation_id="get_health", security=SECURITY, summary="Health summary",
        responses=_health_responses("status, readiness, components, warnings", admin=True))
def health() -> Any:
    """The readiness summary: status, ``ready``, one line per component, warnings and a
    performance summary; 503 when a :data:`BLOCKING` component is unhealthy."""
    runtime, settings, started = _context()
    components, summary, error_rate = run_components(runtime, settings, with_performance=True)
    status = fold(components)
    body = {
        **_overview(status, components, settings, started),
        "components": {name: _brief(result) for name, result in components.items()},
        "warnings": warnings_for(components, error_rate, settings),
        "performance": _performance_brief(summary),
    }
    return _respond_components(body, status, components)


@bp.get("/health/components", operation_id="get_health_components", security=SECURITY, summary="Component checks",
        responses=_health_responses("redis, broker, workers, engine, cache and disk", admin=True))
def health_components() -> Any:
    """Every component check in full: redis, broker, workers, engine, cache, disk."""
    runtime, settings, _ = _context()
    components, _, _ = run_components(runtime, settings)
    status = fold(components)
    body = {"status": status, "ready": not checks.failed_checks(components, READINESS), "timestamp": _timestamp(),
            "components": components}
    return _respond_components(body, status, components)


@bp.get("/health/detailed", operation_id="get_health_detailed", security=SECURITY, summary="Detailed health",
        responses=_health_responses("every check with its numbers, workers, queues, the machine", admin=True))
def health_detailed() -> Any:
    """Everything: full checks, warnings, performance, workers and queues, the machine, tunable settings."""
    runtime, settings, started = _context()
    components, summary, error_rate = run_components(runtime, settings, with_performance=True)
    status = fold(components)
    broker = components.get("broker", {})
    workers = components.get("workers", {})
    body = {
        **_overview(status, components, settings, started),
        "python": platform.python_version(),
        "components": components,
        "warnings": warnings_for(components, error_rate, settings),
        "error_rate": error_rate,
        "performance": summary,
        "queues": broker.get("queues"),
        "reserved": broker.get("reserved"),
        "dead_letter": broker.get("dead_letter"),
        "workers": {"online": workers.get("workers"), "busy": workers.get("busy"),
                    "concurrency": workers.get("concurrency"), "hostnames": workers.get("hostnames")},
        "system": system.snapshot(settings.data_dir),
        "settings": {
            "queue": settings.queue,
            "max_attempts": settings.max_attempts,
            "visibility_timeout": settings.visibility_timeout,
            "task_soft_time_limit": settings.task_soft_time_limit,
            "task_time_limit": settings.task_time_limit,
            "cache_max_bytes": settings.cache_max_bytes,
            "cache_ttl": settings.cache_ttl,
            "alert_error_rate": settings.alert_error_rate,
            "alert_response_time_p95_ms": settings.alert_response_time_p95_ms,
            "alert_queue_length": settings.alert_queue_length,
            "alert_window": settings.alert_window,
            "alert_min_jobs": settings.alert_min_jobs,
            "webhooks_configured": len(settings.webhook_urls),
            "webhook_signing": bool(settings.webhook_secret),
        },
    }
    return _respond_components(body, status, components)


@bp.get("/health/voices", operation_id="get_health_voices", summary="Voice files",
        responses=_health_responses("every voice with whether its model files are here", admin=False))
def health_voices() -> Any:
    """Every voice with its family, sample rate and whether its model files are present."""
    runtime, settings, _ = _context()
    catalog = runtime.catalog

    def probe() -> dict[str, Any]:
        voices = []
        for info in catalog.list():
            try:
                files = voice_model_files(catalog, info.id)
            except Exception as exc:  # noqa: BLE001 - one odd voice must not hide the others
                files = {"present": False, "detail": f"{type(exc).__name__}: {exc}", "files": []}
            voices.append({"id": info.id, "name": info.name, "language": info.language, "family": info.family,
                           "sample_rate": info.sample_rate, "default": info.id == settings.default_voice,
                           "available": files["present"], "detail": files["detail"]})
        default_ok = any(v["default"] and v["available"] for v in voices)
        extra = {"voices": voices, "loaded_in_api": catalog.loaded()}
        if not voices:
            return {"status": checks.UNHEALTHY, "detail": "no voice found", **extra}
        if not default_ok:
            return {"status": checks.DEGRADED, "detail": f"default voice {settings.default_voice!r} unavailable",
                    **extra}
        return {"status": checks.HEALTHY, "detail": f"{len(voices)} voices", **extra}

    result = checks.run_check(probe, CHECK_TIMEOUT)
    status = result["status"]
    voices = result.get("voices", [])
    body = {
        "status": status,
        "timestamp": _timestamp(),
        "default_voice": settings.default_voice,
        "count": len(voices),
        "available": sum(1 for v in voices if v["available"]),
        "loaded_in_api": result.get("loaded_in_api", []),
        "detail": result.get("detail"),
        "voices": voices,
        "blends": "Kokoro voices blend as 'a+b' or 'a*0.7+b*0.3'",
    }
    return _respond(body, status)

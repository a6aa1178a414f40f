"""Health endpoints: can the service take and run jobs, and which component is in trouble?

``GET /health``             status, timestamp, model_loaded, voices_available, uptime_seconds,
                            components (status, latency, detail each) and a performance summary
``GET /health/detailed``    the same with every check's numbers, the workers, queues, the
                            machine (psutil) and the settings an operator tunes
``GET /health/components``  redis, broker, workers, engine, cache and disk checks only
``GET /health/voices``      every voice with whether its model files are on this machine

Every check runs in a helper thread bounded by :data:`CHECK_TIMEOUT` (all of them at once,
see :func:`monitoring.health.run_checks`), so an answer never takes much more than a second,
whatever Redis does. ``healthy`` answers 200; ``degraded`` or ``unhealthy`` answer 503 with the
same document plus an ``error`` object, never a 500.

Status: ``unhealthy`` when Redis, the broker or the engine (no usable voice) fails; ``degraded``
when anything else is not healthy (no worker heartbeat, a queue above
``TTS_ALERT_QUEUE_LENGTH``, the cache above ``TTS_CACHE_MAX_BYTES``, little disk space).

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

from flask import Blueprint, Flask, current_app, jsonify

from engine import VoiceCatalog
from monitoring import health as checks
from monitoring import system
from monitoring.workers import WorkerRegistry
from settings import Settings
from tasks.celery_app import QUEUES

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

#: Seconds any one check may take before it counts as ``unhealthy`` ("timed out").
CHECK_TIMEOUT = 1.0
#: Components whose failure makes the whole service ``unhealthy`` (not merely degraded).
CRITICAL = frozenset(checks.CRITICAL_COMPONENTS | {"engine"})
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


# --- running the checks ----------------------------------------------------------------------


def _context() -> tuple[Any, Settings, float]:
    ext = current_app.extensions["tts"]
    return ext["runtime"], ext["settings"], ext["started"]


def component_checks(runtime: Any, settings: Settings) -> dict[str, checks.Check]:
    """The named component checks (each already bounded by :data:`CHECK_TIMEOUT`)."""
    registry = WorkerRegistry(runtime.redis)
    engine = engine_check(runtime.catalog, settings)
    return {
        "redis": lambda: checks.check_redis(runtime.redis, CHECK_TIMEOUT),
        "broker": lambda: checks.check_broker(runtime.redis, QUEUES, CHECK_TIMEOUT,
                                              max_queue_length=settings.alert_queue_length),
        "workers": lambda: checks.check_workers(registry, CHECK_TIMEOUT),
        "engine": lambda: checks.run_check(engine, CHECK_TIMEOUT),
        "cache": lambda: checks.check_cache(runtime.cache_redis, CHECK_TIMEOUT,
                                            max_bytes=settings.cache_max_bytes),
        "disk": lambda: checks.check_disk(settings.data_dir, CHECK_TIMEOUT),
    }


def run_components(runtime: Any, settings: Settings, with_performance: bool = False) -> tuple[
        dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Run every check at once (one timeout in all); the results and, when asked, the
    recorder's summary (None when Redis could not give it in time)."""
    named = component_checks(runtime, settings)
    if with_performance:
        named[_PERFORMANCE] = lambda: {"status": checks.HEALTHY, "summary": runtime.metrics.summary()}
    results = checks.run_checks(named, timeout=CHECK_TIMEOUT + 0.25)
    performance = None
    if with_performance:
        outcome = results.pop(_PERFORMANCE)
        performance = outcome.get("summary") if outcome.get("status") == checks.HEALTHY else None
    return results, performance


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


def _respond(body: dict[str, Any], status: str) -> Any:
    """200 for healthy; 503 with an ``error`` object naming the failing components otherwise."""
    code = checks.http_status(status)
    if code != 200:
        components = body.get("components") or {}
        failing = [f"{name} {result.get('status')} ({result.get('detail')})"
                   for name, result in sorted(components.items())
                   if isinstance(result, Mapping) and result.get("status") != checks.HEALTHY]
        reason = ", ".join(failing) or str(body.get("detail") or "see the document")
        body["error"] = {"code": f"service_{status}", "message": f"service is {status}: {reason}"}
    response = jsonify(body)
    response.status_code = code
    response.headers["Cache-Control"] = "no-store"
    if code == 503:
        response.headers["Retry-After"] = "5"
    return response


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
        "timestamp": _timestamp(),
        "model_loaded": _model_loaded(components),
        "voices_available": _voices_available(components),
        "default_voice": settings.default_voice,
        "uptime_seconds": round(time.time() - started, 1),
        "version": _version(),
    }


@bp.get("/health")
def health() -> Any:
    """Overall status with one line per component and a performance summary; 503 unless healthy."""
    runtime, settings, started = _context()
    components, summary = run_components(runtime, settings, with_performance=True)
    status = fold(components)
    body = {
        **_overview(status, components, settings, started),
        "components": {name: _brief(result) for name, result in components.items()},
        "performance": _performance_brief(summary),
    }
    return _respond(body, status)


@bp.get("/health/components")
def health_components() -> Any:
    """Every component check in full: redis, broker, workers, engine, cache, disk."""
    runtime, settings, _ = _context()
    components, _ = run_components(runtime, settings)
    status = fold(components)
    return _respond({"status": status, "timestamp": _timestamp(), "components": components}, status)


@bp.get("/health/detailed")
def health_detailed() -> Any:
    """Everything: full checks, performance, workers and queues, the machine, tunable settings."""
    runtime, settings, started = _context()
    components, summary = run_components(runtime, settings, with_performance=True)
    status = fold(components)
    broker = components.get("broker", {})
    workers = components.get("workers", {})
    body = {
        **_overview(status, components, settings, started),
        "python": platform.python_version(),
        "components": components,
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
            "webhooks_configured": len(settings.webhook_urls),
            "webhook_signing": bool(settings.webhook_secret),
        },
    }
    return _respond(body, status)


@bp.get("/health/voices")
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

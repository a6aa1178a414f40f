"""``/health``: is the service able to take and run jobs?"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Any:
    """Overall status with the Redis check; 503 when Redis is unreachable."""
    ext = current_app.extensions["tts"]
    runtime = ext["runtime"]
    started = time.perf_counter()
    try:
        runtime.redis.ping()
        redis_status = {"status": "healthy", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, never a 500
        redis_status = {"status": "unhealthy", "detail": str(exc)}
    status = "healthy" if redis_status["status"] == "healthy" else "unhealthy"
    body = {
        "status": status,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime_seconds": round(time.time() - ext["started"], 1),
        "voices_available": len(runtime.catalog.ids()),
        "components": {"redis": redis_status},
    }
    response = jsonify(body)
    response.status_code = 200 if status == "healthy" else 503
    return response

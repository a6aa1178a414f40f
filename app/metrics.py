"""Metrics over HTTP: Prometheus exposition, a JSON digest, history and a live stream.

``GET /metrics/prometheus``      the same exposition as ``python -m monitoring.exporter``
                                 (OpenMetrics when the scraper's ``Accept`` asks for it)
``GET /metrics``, ``/metrics/json``
                                 JSON: jobs, throughput, latency p50/p95/p99, cache, queues,
                                 workers, recent failures and the machine (psutil)
``GET /api/status/summary``      a compact status line for scripts and the dashboard header
``GET /api/metrics/history``     ``?hours=24`` (1..168): samples kept in Redis (capped at
                                 ``TTS_METRICS_HISTORY_MAX``), oldest first, with per-second rates
``GET /api/metrics/stream``      Server-Sent Events: one ``data: {json}`` digest every ``interval``
                                 seconds (default 2, 0.5..60) for ``max_events`` events (default and
                                 most: ``TTS_STREAM_MAX_SECONDS``' worth, 300 s), then the stream ends
                                 and an ``EventSource`` reconnects on its own after ``retry`` ms. At
                                 most ``TTS_STREAM_MAX_CLIENTS`` streams per API process (app/streams.py):
                                 the next get 429 ``too_many_streams`` with ``Retry-After``

Everything is read from Redis on each request, so every API process and the exporter show the
same numbers. Serving ``/metrics/json`` also stores a history sample when one is due (at most
one per ``TTS_METRICS_SAMPLE_INTERVAL`` across all processes), so the history fills even when
no exporter runs.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from flask import Response, current_app, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from monitoring import queues as broker
from monitoring import system
from monitoring.health import (
    HEALTHY,
    UNHEALTHY,
    check_broker,
    check_redis,
    check_workers,
    run_checks,
)
from monitoring.history import MetricsHistory, take_sample, with_rates
from monitoring.prometheus import render
from monitoring.workers import WorkerRegistry
from settings import Settings
from tasks.celery_app import QUEUES

from .contract import SECURITY, SSE_EVENT, answer, error_responses, report_with_error
from .schemas import AnyBody, QueryModel, omit_default
from .streams import held_response, stream_limits, too_many_streams

log = logging.getLogger(__name__)

bp = APIBlueprint("metrics", __name__, abp_security=SECURITY,
                  abp_tags=[Tag(name="metrics", description="numbers for operators (admin)")])

#: Dead-letter records shown as "recent failures".
RECENT_FAILURES = 10
#: Throughput is measured against a history sample at least this old (seconds) ...
RATE_MIN_WINDOW = 10.0
#: ... or, when there is none, at least this old ...
RATE_FALLBACK_MIN_WINDOW = 1.0
#: ... and at most this old.
RATE_MAX_WINDOW = 300.0
#: Bounds of ``/api/metrics/history?hours=``.
MIN_HOURS, MAX_HOURS = 1, 168
#: Bounds and defaults of the stream.
STREAM_DEFAULT_INTERVAL = 2.0
STREAM_MIN_INTERVAL, STREAM_MAX_INTERVAL = 0.5, 60.0
#: Milliseconds an ``EventSource`` waits before it reconnects to a stream that ended.
STREAM_RETRY_MS = 3000
#: A stream whose next digest is further off than this sends an SSE comment meanwhile, so
#: that a client that went away is noticed (the write fails) and its slot comes back.
STREAM_HEARTBEAT_SECONDS = 5.0
STATUS_TIMEOUT = 1.0


def _context() -> tuple[Any, Settings, float]:
    ext = current_app.extensions["tts"]
    return ext["runtime"], ext["settings"], ext["started"]


# --- the JSON digest -------------------------------------------------------------------------


def _rates(current: Mapping[str, float], samples: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """Per-second rates of ``current`` totals against a history sample 10 s to 5 min old."""
    base = None
    for sample in reversed(samples):  # newest first: the most recent one old enough
        age = now - float(sample.get("ts", now))
        if RATE_MIN_WINDOW <= age <= RATE_MAX_WINDOW:
            base = sample
            break
    if base is None and samples:
        oldest = samples[0]
        if RATE_FALLBACK_MIN_WINDOW <= now - float(oldest.get("ts", now)) <= RATE_MAX_WINDOW:
            base = oldest
    out: dict[str, Any] = {"window_seconds": None}
    for field in current:
        out[f"{field}_per_second"] = None
    if base is None:
        return out
    elapsed = now - float(base["ts"])
    if elapsed <= 0:
        return out
    out["window_seconds"] = round(elapsed, 1)
    for field, value in current.items():
        delta = float(value) - float(base.get(field) or 0.0)
        out[f"{field}_per_second"] = round(delta / elapsed, 4) if delta >= 0 else None
    return out


def _recent_failures(runtime: Any) -> list[dict[str, Any]]:
    """The newest dead letters as an operator view shows them: ids, codes and times, never the
    job's text nor the error message (a message may quote the text); ``/v1/dlq/<id>`` has both."""
    items = []
    for record in runtime.dlq.list(limit=RECENT_FAILURES):
        request_body = record.get("request") or {}
        items.append({
            "job_id": record.get("job_id"),
            "tenant": record.get("tenant"),
            "failed_at": record.get("failed_at"),
            "error_type": record.get("error_type"),
            "error": record.get("error_code") or "synthesis_failed",
            "attempts": record.get("attempts"),
            "voice": request_body.get("voice") if isinstance(request_body, Mapping) else None,
            "correlation_id": record.get("correlation_id") or None,
        })
    return items


def metrics_document(runtime: Any, settings: Settings, started: float) -> dict[str, Any]:
    """The ``/metrics/json`` body. Raises :class:`redis.RedisError` when Redis fails."""
    now = time.time()
    client = runtime.redis
    summary = runtime.metrics.summary()
    lengths = broker.broker_queue_lengths(settings, client, QUEUES)
    reserved = broker.broker_reserved_count(settings, client)  # None on RabbitMQ: AMQP does not tell
    dead = broker.dead_letter_count(client)
    cache = broker.cache_stats(runtime.cache_redis)
    workers = WorkerRegistry(client).list()
    snapshot = system.snapshot(settings.data_dir)
    history = MetricsHistory(client, max_samples=settings.metrics_history_max)
    history.record_if_due(lambda: take_sample(runtime.metrics, lengths, snapshot, now=now),
                          settings.metrics_sample_interval, now=now)
    jobs = summary["jobs"]
    totals = {
        "submitted": jobs["submitted"],
        "succeeded": jobs["succeeded"],
        "failed": jobs["failed"],
        "retried": jobs["retried"],
        "cache_hits": summary["cache"]["hits"],
        "cache_misses": summary["cache"]["misses"],
    }
    throughput = _rates(totals, history.since(RATE_MAX_WINDOW + settings.metrics_sample_interval, now=now), now)
    throughput["characters_synthesized_total"] = summary["characters_synthesized"]
    throughput["audio_seconds_synthesized_total"] = summary["audio_seconds_synthesized"]
    return {
        "timestamp": now,
        "uptime_seconds": round(now - started, 1),
        "jobs": jobs,
        "throughput": throughput,
        "latency_seconds": summary["latency_seconds"],
        "cache": {**summary["cache"], "entries": cache["entries"], "bytes": cache["bytes"],
                  "max_bytes": settings.cache_max_bytes},
        "queues": {"lengths": lengths, "total": sum(lengths.values()), "reserved": reserved, "dead_letter": dead},
        "workers": {
            "online": len(workers),
            "busy": sum(w["busy"] for w in workers),
            "concurrency": sum(w["concurrency"] for w in workers),
            "hostnames": [w["hostname"] for w in workers],
        },
        "realtime_factor": summary["realtime_factor"],
        "recent_failures": _recent_failures(runtime),
        "system": snapshot,
    }


_ERRORS = (401, 403, 429, 503)


@bp.get("/metrics/json", operation_id="get_metrics_json", summary="The metrics digest",
        responses={200: answer(AnyBody, "jobs, throughput, latency, cache, queues, workers, failures, machine"),
                   **error_responses(*_ERRORS)})
def metrics_json() -> Any:
    """Jobs, throughput, latency percentiles, cache, queues, workers, failures and the machine."""
    runtime, settings, started = _context()
    response = jsonify(metrics_document(runtime, settings, started))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics", operation_id="get_metrics", summary="The metrics digest (as /metrics/json)",
        responses={200: answer(AnyBody, "the same as /metrics/json"), **error_responses(*_ERRORS)})
def metrics() -> Any:
    """The same digest as ``/metrics/json``."""
    return metrics_json()


@bp.get("/metrics/prometheus", operation_id="get_metrics_prometheus", summary="Prometheus exposition",
        responses={200: answer(None, "text exposition 0.0.4, or OpenMetrics when Accept asks for it",
                               media={"text/plain": {"schema": {"type": "string"}},
                                      "application/openmetrics-text": {"schema": {"type": "string"}}}),
                   **error_responses(*_ERRORS)})
def metrics_prometheus() -> Any:
    """The Prometheus exposition (text 0.0.4, or OpenMetrics when ``Accept`` asks for it)."""
    runtime, _, _ = _context()
    body, content_type = render(runtime.redis, QUEUES, cache_client=runtime.cache_redis,
                                accept=request.headers.get("Accept"), settings=runtime.settings)
    return Response(body, status=200, content_type=content_type, headers={"Cache-Control": "no-store"})


# --- status summary and history ------------------------------------------------------------------


@bp.get("/api/status/summary", operation_id="get_status_summary", summary="A compact status",
        responses={200: answer(AnyBody, "status of Redis, broker and workers and the headline numbers"),
                   503: answer(None, "Redis or the broker is unreachable (the same body, with error)",
                               headers={"Retry-After": {"schema": {"type": "integer"}}},
                               media=report_with_error(AnyBody)),
                   **error_responses(401, 403, 429)})
def status_summary() -> Any:
    """Status of Redis, broker and workers plus the headline numbers; 503 when Redis is down."""
    runtime, settings, started = _context()
    registry = WorkerRegistry(runtime.redis)
    components = run_checks({
        "redis": lambda: check_redis(runtime.redis, STATUS_TIMEOUT),
        "broker": lambda: check_broker(runtime.redis, QUEUES, STATUS_TIMEOUT,
                                       max_queue_length=settings.alert_queue_length, settings=settings),
        "workers": lambda: check_workers(registry, STATUS_TIMEOUT),
        "summary": lambda: {"status": HEALTHY, "summary": runtime.metrics.summary()},
    }, timeout=STATUS_TIMEOUT + 0.25)
    summary_result = components.pop("summary")
    summary = summary_result.get("summary") if summary_result.get("status") == HEALTHY else None
    statuses = {name: result["status"] for name, result in components.items()}
    if UNHEALTHY in (statuses["redis"], statuses["broker"]):
        status = UNHEALTHY
    elif all(s == HEALTHY for s in statuses.values()):
        status = HEALTHY
    else:
        status = "degraded"
    broker_result = components["broker"]
    workers_result = components["workers"]
    body: dict[str, Any] = {
        "status": status,
        "timestamp": time.time(),
        "uptime_seconds": round(time.time() - started, 1),
        "components": {name: {"status": r["status"], "detail": r.get("detail")} for name, r in components.items()},
        "queues": broker_result.get("queues"),
        "queue_length": sum((broker_result.get("queues") or {}).values()) if broker_result.get("queues") else None,
        "reserved": broker_result.get("reserved"),
        "dead_letter": broker_result.get("dead_letter"),
        "workers": {"online": workers_result.get("workers"), "busy": workers_result.get("busy"),
                    "concurrency": workers_result.get("concurrency")},
        "jobs": None,
        "latency_p95_seconds": None,
        "cache_hit_rate": None,
    }
    if summary is not None:
        jobs = summary["jobs"]
        body["jobs"] = {k: jobs[k] for k in ("submitted", "succeeded", "failed", "retried", "dead_lettered",
                                             "cancelled", "error_rate")}
        body["latency_p95_seconds"] = {name: item["p95"] for name, item in summary["latency_seconds"].items()}
        body["cache_hit_rate"] = summary["cache"]["hit_rate"]
    code = 200
    if status == UNHEALTHY:
        code = 503
        body["error"] = {"code": "service_unavailable",
                         "message": "Redis or the broker is unreachable: " + "; ".join(
                             f"{n}: {components[n].get('detail')}" for n in ("redis", "broker")
                             if statuses[n] != HEALTHY)}
    response = jsonify(body)
    response.status_code = code
    if code == 503:
        response.headers["Retry-After"] = "5"
    response.headers["Cache-Control"] = "no-store"
    return response


class HistoryQuery(QueryModel):
    """How far back the history goes."""

    hours: int = Field(24, ge=MIN_HOURS, le=MAX_HOURS, description="hours of samples, oldest first")


class StreamQuery(QueryModel):
    """How often the stream sends, and for how long."""

    interval: float = Field(STREAM_DEFAULT_INTERVAL, ge=STREAM_MIN_INTERVAL, le=STREAM_MAX_INTERVAL,
                            allow_inf_nan=False, description="seconds between events")
    max_events: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = Field(
        None, json_schema_extra=omit_default,
        description="events before the stream ends (at most TTS_STREAM_MAX_SECONDS' worth)")


@bp.get("/api/metrics/history", operation_id="get_metrics_history", summary="Metrics history",
        responses={200: answer(AnyBody, "samples oldest first, with per-second rates"),
                   **error_responses(400, *_ERRORS)})
def metrics_history(query: HistoryQuery) -> Any:
    """Samples of the last ``hours`` (1..168, default 24), oldest first, with per-second rates."""
    runtime, settings, _ = _context()
    hours = query.hours
    history = MetricsHistory(runtime.redis, max_samples=settings.metrics_history_max)
    samples = with_rates(history.since(hours * 3600.0, limit=settings.metrics_history_max))
    response = jsonify({
        "hours": hours,
        "interval_seconds": settings.metrics_sample_interval,
        "max_samples": settings.metrics_history_max,
        "count": len(samples),
        "samples": samples,
    })
    response.headers["Cache-Control"] = "no-store"
    return response


# --- Server-Sent Events ---------------------------------------------------------------------------


def _sse(data: Mapping[str, Any], event: str | None = None, event_id: int | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


def metrics_events(runtime: Any, settings: Settings, started: float, interval: float,
                   max_events: int) -> Iterator[str]:
    """``max_events`` SSE messages, one digest every ``interval`` seconds, for
    ``TTS_STREAM_MAX_SECONDS`` at most; Redis errors become ``event: error`` messages (the stream
    goes on). Waits longer than ``STREAM_HEARTBEAT_SECONDS`` are broken by SSE comments."""
    began = time.monotonic()
    ends_at = began + settings.stream_max_seconds
    yield f"retry: {STREAM_RETRY_MS}\n\n"
    next_at = began
    for number in range(max_events):
        if number:
            if next_at >= ends_at:
                return
            while (delay := next_at - time.monotonic()) > 0:
                time.sleep(min(delay, STREAM_HEARTBEAT_SECONDS))
                if next_at - time.monotonic() > 0:
                    yield ": keep-alive\n\n"
        next_at = time.monotonic() + interval
        try:
            document = metrics_document(runtime, settings, started)
        except Exception as exc:  # noqa: BLE001 - report it to the client and keep streaming
            log.warning("metrics stream: digest unavailable: %s", exc)
            yield _sse({"error": {"code": "service_unavailable", "message": f"metrics unavailable: {exc}"}},
                       event="error", event_id=number)
            continue
        yield _sse(document, event_id=number)


@bp.get("/api/metrics/stream", operation_id="get_metrics_stream", summary="Live metrics (Server-Sent Events)",
        responses={200: answer(None, "one data: {json} digest per interval", media={"text/event-stream": {"schema": SSE_EVENT}}),
                   **error_responses(400, *_ERRORS)})
def metrics_stream(query: StreamQuery) -> Any:
    """Server-Sent Events: the ``/metrics/json`` digest every ``?interval=`` seconds, ending after
    ``?max_events=`` (default and most: ``TTS_STREAM_MAX_SECONDS``' worth) so no server thread is
    held for long; 429 ``too_many_streams`` when this process already serves
    ``TTS_STREAM_MAX_CLIENTS`` streams."""
    runtime, settings, started = _context()
    interval = query.interval
    most_events = max(1, int(settings.stream_max_seconds // interval))
    max_events = most_events if query.max_events is None else min(query.max_events, most_events)
    slots = stream_limits().metrics
    slot = slots.try_acquire()
    if slot is None:
        return too_many_streams(slots)
    events = metrics_events(runtime, settings, started, interval, max_events)
    return held_response(slot, events, status=200, mimetype="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

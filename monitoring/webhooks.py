"""Webhook alert payloads, signatures and one HTTP delivery attempt.

A payload is built once per event (:func:`build_payload`) and posted as JSON to every
configured URL by the ``tts.deliver_webhook`` Celery task, which retries
:func:`deliver` with backoff while it raises :class:`WebhookDeliveryError`.

The retry schedule (:func:`retry_bounds`, :func:`retry_delay`, :func:`retry_schedule`) is
capped exponential backoff with *equal jitter*: the wait after attempt ``n`` is drawn from
``[c/2, c]`` with ``c = min(cap, base * 2**(n-1))``, so no draw can collapse to zero and the
floors alone add up to a known minimum. :func:`attempts_for_window` gives the fewest attempts
whose floors cover :data:`RETRY_WINDOW` (15 minutes of receiver outage).

Headers of each POST:

``X-TTS-Event``       the event name, e.g. ``job.failed``
``X-TTS-Delivery``    the payload's ``id``: the same on every retry, so receivers can drop repeats
``X-TTS-Signature``   ``sha256=<hex HMAC-SHA256 of the raw body with TTS_WEBHOOK_SECRET>``
                      (only when a secret is set); check it with :func:`verify_signature`

The body carries ``event``, ``id``, ``time`` (ISO 8601 UTC), ``job_id``, ``error``,
``attempts``, ``correlation_id``, any extra fields of the event, and a Slack-compatible
``text``, so a Slack incoming-webhook URL works as a receiver as it is.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

__all__ = [
    "ALERT_EVENTS",
    "DELIVERIES_METRIC",
    "DELIVERY_HEADER",
    "EVENTS",
    "EVENT_HEADER",
    "RETRY_BASE",
    "RETRY_CAP",
    "RETRY_WINDOW",
    "SIGNATURE_HEADER",
    "RetryStep",
    "WebhookDeliveryError",
    "attempts_for_window",
    "build_payload",
    "deliver",
    "encode",
    "redact_url",
    "request_headers",
    "retry_bounds",
    "retry_delay",
    "retry_schedule",
    "sign",
    "verify_signature",
]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-TTS-Signature"
EVENT_HEADER = "X-TTS-Event"
DELIVERY_HEADER = "X-TTS-Delivery"
USER_AGENT = "tts-batch-webhook/1"
#: Counter of delivery attempts by ``event`` and ``outcome`` (delivered, retried, failed).
DELIVERIES_METRIC = "tts_webhook_deliveries_total"

#: Threshold alerts (evaluated periodically by :mod:`monitoring.alerts`).
ALERT_EVENTS: frozenset[str] = frozenset({"alert.error_rate", "alert.latency_p95", "alert.queue_length"})
#: Every event a payload may carry.
EVENTS: frozenset[str] = frozenset({"job.failed", "job.retry_exhausted", "webhook.test"}) | ALERT_EVENTS
#: Ceiling of the first retry's wait (seconds); each later ceiling is twice the one before ...
RETRY_BASE = 10.0
#: ... but never more than this (the delivery task lowers it to half the broker visibility
#: timeout, or Redis would hand the waiting message to a second worker).
RETRY_CAP = 300.0
#: Receiver outage (seconds) every delivery outlasts before it is given up, whatever the
#: jitter draws: the floors of the waits between the first and the last attempt add up to
#: at least this much.
RETRY_WINDOW = 900.0
_CORE_FIELDS = ("event", "id", "time", "job_id", "error", "attempts", "correlation_id", "text")
_MAX_ERROR_IN_TEXT = 500


@dataclass(frozen=True)
class RetryStep:
    """The wait before one retry of a delivery, and the time since the first attempt.

    ``attempt`` is the attempt the wait precedes (2 for the first retry); ``min_delay`` and
    ``max_delay`` bound the wait; ``min_elapsed`` and ``max_elapsed`` bound the time from the
    first attempt to this one (sums of the waits so far; the attempts' own HTTP time adds to it).
    """

    attempt: int
    min_delay: float
    max_delay: float
    min_elapsed: float
    max_elapsed: float


def _check_schedule(base: float, cap: float) -> None:
    if not (base > 0 and cap > 0):
        raise ValueError(f"retry base and cap must be positive, not {base!r} and {cap!r}")


def retry_bounds(retries: int, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> tuple[float, float]:
    """``(floor, ceiling)`` of the wait before retry number ``retries + 1``.

    ``ceiling = min(cap, base * 2**retries)`` and ``floor = ceiling / 2`` (equal jitter).
    Raises ValueError unless ``base`` and ``cap`` are positive.
    """
    _check_schedule(base, cap)
    exponent = min(max(0, retries), 64)  # 2**64 * base is far past any cap; no float overflow
    ceiling = min(cap, base * (2.0**exponent))
    return ceiling / 2.0, ceiling


def retry_delay(
    retries: int, base: float = RETRY_BASE, cap: float = RETRY_CAP, rng: random.Random | None = None
) -> float:
    """The wait before retry number ``retries + 1``: uniform between its :func:`retry_bounds`.

    ``rng`` draws the jitter (the module's shared generator by default; pass a seeded
    :class:`random.Random` for repeatable draws).
    """
    low, high = retry_bounds(retries, base, cap)
    return (rng or random).uniform(low, high)


def retry_schedule(max_attempts: int, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> list[RetryStep]:
    """One :class:`RetryStep` per retry of a delivery that makes ``max_attempts`` attempts."""
    steps: list[RetryStep] = []
    min_elapsed = max_elapsed = 0.0
    for retries in range(max(0, max_attempts - 1)):
        low, high = retry_bounds(retries, base, cap)
        min_elapsed += low
        max_elapsed += high
        steps.append(RetryStep(retries + 2, low, high, min_elapsed, max_elapsed))
    return steps


def attempts_for_window(window: float = RETRY_WINDOW, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> int:
    """The fewest attempts whose minimum waits add up to at least ``window`` seconds.

    With the defaults: 11 (the floors add up to 905 s). Raises ValueError unless ``base``
    and ``cap`` are positive.
    """
    _check_schedule(base, cap)
    attempts, elapsed = 1, 0.0
    while elapsed < window:
        elapsed += retry_bounds(attempts - 1, base, cap)[0]
        attempts += 1
    return attempts


class WebhookDeliveryError(Exception):
    """A delivery attempt failed (no connection, timeout or a non-2xx answer); worth retrying."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: webhook URLs often carry a secret token in their path."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def _short(value: object, limit: int = _MAX_ERROR_IN_TEXT) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: object, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}g}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _text_for(payload: Mapping[str, Any]) -> str:
    """A one-line, Slack-compatible summary of the event."""
    event = payload["event"]
    job = payload.get("job_id") or "?"
    attempts = payload.get("attempts")
    error = _short(payload.get("error") or "unknown error")
    cid = payload.get("correlation_id")
    suffix = f" (correlation id {cid})" if cid else ""
    if event == "job.failed":
        tries = f" after {attempts} attempts" if attempts is not None else ""
        return f":x: tts-batch job {job} failed{tries} and was dead-lettered: {error}{suffix}"
    if event == "job.retry_exhausted":
        tries = f"all {attempts} attempts" if attempts is not None else "all its attempts"
        return f":warning: tts-batch job {job} used {tries}: {error}{suffix}"
    if event in ALERT_EVENTS:
        resolved = payload.get("status") == "resolved"
        icon = ":white_check_mark:" if resolved else ":rotating_light:"
        state = "resolved" if resolved else "firing"
        if event == "alert.error_rate":
            value = payload.get("value")
            rate = f"{float(value) * 100:.1f}%" if isinstance(value, (int, float)) else str(value)
            limit = payload.get("threshold")
            limit_text = f"{float(limit) * 100:.1f}%" if isinstance(limit, (int, float)) else str(limit)
            window = payload.get("window_seconds")
            return (
                f"{icon} tts-batch error rate {rate} over the last {window} s "
                f"(threshold {limit_text}) [{state}]"
            )
        if event == "alert.latency_p95":
            return (
                f"{icon} tts-batch p95 of {payload.get('metric', 'latency')} is "
                f"{_number(payload.get('value_ms'))} ms (threshold {_number(payload.get('threshold_ms'))} ms) "
                f"[{state}]"
            )
        return (
            f"{icon} tts-batch queue {payload.get('queue', '?')} holds {payload.get('value')} messages "
            f"(threshold {payload.get('threshold')}) [{state}]"
        )
    if event == "webhook.test":
        return ":wave: tts-batch webhook test"
    return f"tts-batch {event}"


def build_payload(
    event: str,
    job_id: str | None = None,
    error: str | None = None,
    attempts: int | None = None,
    correlation_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON payload of one event, with a fresh unique ``id`` and the ``time`` now (UTC).

    ``extra`` adds event fields (e.g. ``queue``, ``value``, ``threshold``, ``status``).
    Raises ValueError for an unknown event or an extra field that shadows a core one.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; known: {sorted(EVENTS)}")
    clashes = sorted(set(extra) & set(_CORE_FIELDS))
    if clashes:
        raise ValueError(f"extra fields {clashes} would overwrite core payload fields")
    now = dt.datetime.now(dt.UTC)
    payload: dict[str, Any] = {
        "event": event,
        "id": uuid.uuid4().hex,
        "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "job_id": job_id,
        "error": error,
        "attempts": attempts,
        "correlation_id": correlation_id,
        **extra,
    }
    payload["text"] = _text_for(payload)
    return payload


def encode(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes posted (and signed): compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    """Hex HMAC-SHA256 of ``body`` keyed with ``secret`` (sent as ``sha256=<hex>``)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str, header_value: str | None) -> bool:
    """Whether an ``X-TTS-Signature`` header value matches ``body`` (constant-time compare)."""
    if not header_value or not header_value.startswith("sha256="):
        return False
    return hmac.compare_digest(header_value[len("sha256=") :], sign(body, secret))


def request_headers(payload: Mapping[str, Any], body: bytes, secret: str) -> dict[str, str]:
    """The HTTP headers for posting ``body`` (the encoded ``payload``)."""
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: str(payload.get("event", "")),
        DELIVERY_HEADER: str(payload.get("id", "")),
    }
    if secret:
        headers[SIGNATURE_HEADER] = "sha256=" + sign(body, secret)
    return headers


def deliver(url: str, payload: Mapping[str, Any], secret: str, timeout: float) -> int:
    """POST ``payload`` to ``url`` once and return the HTTP status (2xx).

    Redirects are not followed. Raises :class:`WebhookDeliveryError` on a connection error,
    a timeout (``timeout`` seconds to connect and again to answer) or a non-2xx status, and
    ValueError for a URL that is not http(s).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in {"http", "https"}:
        raise ValueError(f"webhook URL must be http or https, not {redact_url(url)}")
    body = encode(payload)
    headers = request_headers(payload, body, secret)
    shown = redact_url(url)
    started = time.perf_counter()
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True)
    except requests.RequestException as exc:
        raise WebhookDeliveryError(f"webhook {payload.get('event')} to {shown} failed: {type(exc).__name__}") from exc
    try:
        status = response.status_code
    finally:
        response.close()
    elapsed_ms = (time.perf_counter() - started) * 1000
    if not 200 <= status < 300:
        raise WebhookDeliveryError(f"webhook {payload.get('event')} to {shown} answered HTTP {status}", status=status)
    logger.info(
        "webhook %s delivered to %s: HTTP %d in %.0f ms",
        payload.get("event"), shown, status, elapsed_ms,
        extra={"delivery_id": payload.get("id"), "webhook_status": status, "elapsed_ms": round(elapsed_ms, 1)},
    )
    return status

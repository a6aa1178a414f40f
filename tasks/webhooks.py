"""Webhook alerts as Celery tasks: delivery with retries, and periodic threshold checks.

* :func:`notify` builds an event's payload once and queues one ``tts.deliver_webhook`` task
  per URL in ``TTS_WEBHOOK_URLS`` on the ``webhooks`` queue, so a slow or dead receiver never
  holds up synthesis. It never raises into its caller.
* ``tts.deliver_webhook`` posts the payload, signed; on a failure it retries with capped
  exponential backoff and equal jitter (each delay drawn from ``[c/2, c]``,
  ``c = min(cap, base * 2**n)``, see :func:`monitoring.webhooks.retry_bounds`) for
  ``TTS_WEBHOOK_MAX_ATTEMPTS`` attempts, and never fewer than the floors of the delays need
  to add up to :data:`monitoring.webhooks.RETRY_WINDOW` (15 minutes): an alert survives a
  receiver that is down for 15 minutes whatever the jitter draws. Every retry carries the
  same ``X-TTS-Delivery`` id. Without ``TTS_WEBHOOK_SECRET`` nothing is sent (settings
  refuse URLs without a secret; the task checks again).
* ``tts.evaluate_alerts`` (scheduled by Celery beat every ``TTS_ALERT_INTERVAL`` seconds)
  runs :func:`monitoring.alerts.evaluate_thresholds` and notifies what started or stopped
  firing.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Task

from monitoring.alerts import evaluate_thresholds
from monitoring.correlation import bind, current
from monitoring.queues import broker_queue_lengths, discover_queues
from monitoring.webhooks import (
    DELIVERIES_METRIC,
    RETRY_BASE,
    RETRY_CAP,
    RETRY_WINDOW,
    WebhookDeliveryError,
    attempts_for_window,
    build_payload,
    deliver,
    redact_url,
    retry_delay,
)
from settings import Settings, get_settings

from .celery_app import QUEUES, WEBHOOK_QUEUE, celery_app
from .runtime import get_runtime

__all__ = [
    "backoff_cap",
    "backoff_seconds",
    "deliver_webhook",
    "delivery_attempts",
    "enqueue_payload",
    "evaluate_alerts",
    "notify",
]

log = logging.getLogger(__name__)

#: First retry waits between half of this and this (seconds); each later one twice as long ...
BACKOFF_BASE = RETRY_BASE
#: ... but never more than this (and never more than half the broker visibility timeout,
#: or Redis would hand the waiting message to a second worker).
BACKOFF_CAP = RETRY_CAP


def backoff_seconds(retries: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Delay before retry number ``retries + 1``: equal jitter, between half and all of
    ``min(cap, base * 2**retries)`` (:func:`monitoring.webhooks.retry_delay`)."""
    return retry_delay(retries, base, cap)


def backoff_cap(settings: Settings) -> float:
    """The delay ceiling in force: :data:`BACKOFF_CAP`, or half the visibility timeout if less."""
    return max(1.0, min(BACKOFF_CAP, settings.visibility_timeout / 2))


def delivery_attempts(settings: Settings) -> int:
    """Attempts per delivery: ``TTS_WEBHOOK_MAX_ATTEMPTS``, raised to what the floors of the
    delays need to cover :data:`monitoring.webhooks.RETRY_WINDOW` with the ceiling in force."""
    needed = attempts_for_window(RETRY_WINDOW, BACKOFF_BASE, backoff_cap(settings))
    return max(settings.webhook_max_attempts, needed)


def _count(event: str, outcome: str) -> None:
    try:
        get_runtime().metrics.count(DELIVERIES_METRIC, 1.0, event=event, outcome=outcome)
    except Exception as exc:  # noqa: BLE001 - metrics never break delivery
        log.debug("webhook metric not recorded: %s", exc)


@celery_app.task(
    bind=True,
    name="tts.deliver_webhook",
    queue=WEBHOOK_QUEUE,
    acks_late=True,
    ignore_result=True,
    max_retries=delivery_attempts(get_settings()) - 1,
)
def deliver_webhook(self: Task, url: str, payload: dict[str, Any]) -> int | None:
    """POST ``payload`` to ``url``, signed; retry with backoff on failure. Returns the HTTP status.

    Gives up (returns None) at once for a URL that is not http(s) or when no signing secret
    is set: a worker never sends an unsigned delivery.
    """
    settings = get_settings()
    event = str(payload.get("event", "?"))
    attempt = self.request.retries + 1
    max_retries = delivery_attempts(settings) - 1
    with bind(correlation_id=payload.get("correlation_id") or None, job_id=payload.get("job_id") or None):
        if not settings.webhook_secret.strip():
            log.error("webhook %s (delivery %s) to %s not sent: TTS_WEBHOOK_SECRET is empty and deliveries "
                      "are always signed", event, payload.get("id"), redact_url(url))
            _count(event, "failed")
            return None
        try:
            status = deliver(url, payload, settings.webhook_secret, settings.webhook_timeout)
        except ValueError as exc:
            log.error("webhook %s not delivered: %s", event, exc)
            _count(event, "failed")
            return None
        except WebhookDeliveryError as exc:
            if self.request.retries >= max_retries:
                log.error(
                    "webhook %s (delivery %s) to %s given up after %d attempts: %s",
                    event, payload.get("id"), redact_url(url), attempt, exc,
                )
                _count(event, "failed")
                raise
            delay = backoff_seconds(self.request.retries, cap=backoff_cap(settings))
            log.warning(
                "webhook %s (delivery %s) attempt %d failed: %s; retrying in %.1f s",
                event, payload.get("id"), attempt, exc, delay,
            )
            _count(event, "retried")
            raise self.retry(exc=exc, countdown=delay, max_retries=max_retries) from exc
        _count(event, "delivered")
        return status


def enqueue_payload(payload: dict[str, Any]) -> int:
    """Queue one delivery of ``payload`` per configured URL; returns how many were queued.

    Never raises: a failure to queue is logged.
    """
    urls = get_settings().webhook_urls
    queued = 0
    for url in urls:
        try:
            deliver_webhook.apply_async(args=[url, payload], queue=WEBHOOK_QUEUE)
            queued += 1
        except Exception as exc:  # noqa: BLE001 - alerting must never break the caller
            log.error("webhook %s to %s could not be queued: %s", payload.get("event"), redact_url(url), exc)
    return queued


def notify(event: str, **fields: Any) -> int:
    """Send ``event`` to every URL in ``TTS_WEBHOOK_URLS`` (nothing when there are none).

    ``fields`` are the payload's job fields (``job_id``, ``error``, ``attempts``,
    ``correlation_id``) and any extra ones; the bound correlation id is used when none is
    given. Returns how many deliveries were queued. Never raises: failures are logged.
    """
    try:
        if not get_settings().webhook_urls:
            return 0
        if not fields.get("correlation_id"):
            fields["correlation_id"] = current()["correlation_id"]
        payload = build_payload(event, **fields)
    except Exception as exc:  # noqa: BLE001 - alerting must never break the caller
        log.error("webhook %s not sent: %s", event, exc)
        return 0
    return enqueue_payload(payload)


@celery_app.task(name="tts.evaluate_alerts", queue=WEBHOOK_QUEUE, ignore_result=True)
def evaluate_alerts() -> int:
    """Check the alert thresholds once and queue webhooks for alerts that changed state."""
    rt = get_runtime()
    queues = list(QUEUES)
    try:
        if not rt.settings.broker_is_amqp:  # kombu's binding tables exist on a Redis broker only
            queues += discover_queues(rt.redis)
        lengths = broker_queue_lengths(rt.settings, rt.redis, queues)
        payloads = evaluate_thresholds(rt.metrics, lengths, rt.settings)
    except Exception as exc:  # noqa: BLE001 - the next run tries again
        log.warning("alert evaluation failed: %s", exc)
        return 0
    for payload in payloads:
        enqueue_payload(payload)
    return len(payloads)

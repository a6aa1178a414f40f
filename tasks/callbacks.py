"""Per-job and per-batch callbacks: a signed POST to the tenant's ``callback_url`` when work finishes.

As Polly's SNS topic does for its tasks: a job submitted with ``callback_url`` gets one
POST when it reaches its final status (``job.succeeded``, ``job.failed``,
``job.cancelled``), and a batch submitted with one gets one POST when its last item
finishes (``batch.finished``, with the batch's status and counts). docs/callbacks.md
is the user's page.

Choices, and why:

* **Exactly once per final state.** The job lifecycle runs its finished-hooks once per
  final transition (``JobStore.transition`` is the lock: a final status is never
  overwritten, a redelivered message finds the job finished and does nothing), and a
  batch finishes at the one ``HSETNX`` of its ``finished_at`` (``tasks.batches``). On top
  of that, the delivery id is derived from the record and its final state (a UUID5 of
  kind, id, status and ``finished_at``), and queueing first compare-and-sets the record's
  ``callback`` state to that id: a hook that ran twice for one final state queues
  nothing the second time. A job replayed from the dead-letter queue that finishes again
  is a new final state, so it gets a new callback with a new id.
* **At most once across a crash.** The callback is queued just after the transition, not
  inside it: a process killed between the two loses that one callback (its state then
  shows ``pending`` with no attempt). Closing that needs an outbox swept by the reconciler.
* **Never fails a job or a submit.** Everything that runs in the lifecycle's hooks
  catches every error, logs it and records it in the callback state; the job's own
  status is already final by then.
* **Signed like the operator webhooks** (``monitoring.webhooks``: the same
  ``X-TTS-Signature``, ``X-TTS-Event`` and ``X-TTS-Delivery`` headers), with the
  submitting key's callback secret (made with the key, shown once by
  ``tts-batch keys create``), or ``TTS_WEBHOOK_SECRET`` for the operator's bootstrap keys
  and open mode. With no secret a ``callback_url`` is refused at submit (400
  ``callbacks_unavailable``); a key revoked before delivery gets nothing sent. The secret
  is looked up when sending, never written into the broker message.
* **Guarded** (``tasks.outbound``): at submit the URL's shape and any literal address are
  checked, but DNS is not resolved (what a name resolves to at submit says nothing about
  what it resolves to at delivery, and a submit must not wait on a tenant's DNS); at
  delivery the name is resolved, every answer checked, and the connection made to the
  checked address. A refused address is given up at once, with status ``refused``.
* **Retried like the operator webhooks**: the same ``webhooks`` queue, the same
  equal-jitter schedule and number of attempts (``tasks.webhooks.delivery_attempts``:
  at least 15 minutes of receiver outage), the same delivery id on every attempt. A
  timeout, a connection error, a 5xx, a 4xx and a 3xx (never followed) are retried.
* **Visible to the user**: the job's (or batch's) record holds ``callback``: the URL with
  its query redacted, the event, the delivery id, ``status`` (``pending``, ``delivered``,
  ``failed``, ``refused``), ``attempts``, ``last_error``, ``next_attempt_at`` and
  ``updated_at``, shown by ``GET /v1/jobs/{id}`` and ``GET /v1/batches/{id}``.
* **No job text in a payload**, nor an error message (an engine message may quote the
  text): ids, statuses, codes, counts, times and links.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from monitoring.correlation import bind
from monitoring.webhooks import encode, request_headers
from settings import Settings, get_settings

from . import keys, lifecycle, outbound
from .celery_app import WEBHOOK_QUEUE, celery_app
from .exceptions import CallbackDeliveryFailed, CallbackRefused, CallbacksUnavailable, JobNotFound
from .job import Job, iso, now
from .redis_values import text_or_none
from .runtime import Runtime, get_runtime
from .status import JobStatus
from .tenants import OPEN_PRINCIPAL, KeyStore
from .webhooks import backoff_cap, backoff_seconds, delivery_attempts

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_EVENT",
    "CALLBACK_TASK",
    "JOB_EVENTS",
    "STATE_FIELD",
    "CallbackState",
    "batch_payload",
    "check_callback",
    "check_callback_url",
    "check_signing_secret",
    "deliver_callback",
    "delivery_id",
    "job_payload",
    "on_jobs_finished",
    "queue_batch_callback",
    "queue_job_callback",
    "send",
    "signing_secret",
]

#: The delivery task (on the ``webhooks`` queue; the name matches no ``tts.*batch*`` route).
CALLBACK_TASK = "tts.deliver_callback"
#: The field of a job or batch record that holds its callback's delivery state (JSON).
STATE_FIELD = "callback"
#: The event of each final job status.
JOB_EVENTS: dict[JobStatus, str] = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed",
                                    JobStatus.CANCELLED: "job.cancelled"}
BATCH_EVENT = "batch.finished"
USER_AGENT = "tts-batch-callback/1"
#: Namespace of the delivery ids (UUID5): one id per record and final state.
_DELIVERY_NAMESPACE = uuid.UUID("6f1c1f2e-5d0a-4c4b-9a57-2f3c8c1d7b10")


# --- submit time ------------------------------------------------------------------------------
def check_callback_url(url: str | None, settings: Settings) -> str | None:
    """``url`` when a callback may be sent there as far as can be told at submit; None stays None.

    Checks the shape (http or https, at most 2,048 characters, a host, no user name or
    password) and, when the host is a literal IP address, that it is public or inside
    ``TTS_CALLBACK_ALLOWED_NETWORKS``. DNS is not resolved here: a name is checked at
    delivery, against what it resolves to then. Raises CallbackRefused (a 400 naming
    ``callback_url``).
    """
    if url is None:
        return None
    target = outbound.parse_url(url)
    literal = outbound.literal_address(target.host)
    if literal is not None:
        outbound.check_address(literal, url, outbound.allowed_networks(settings.callback_allowed_networks))
    return url


def _operator_key(key_id: str | None) -> bool:
    """True for open mode (no key id, or ``open``) and the bootstrap keys of ``TTS_API_KEYS``."""
    return key_id is None or key_id == OPEN_PRINCIPAL.key_id or key_id.startswith("bootstrap-")


def signing_secret(rt: Runtime, key_id: str | None) -> str | None:
    """The secret that signs callbacks of work submitted with ``key_id``, or None when there is none.

    A managed key's own callback secret (None once the key is revoked); for bootstrap
    keys and open mode ``TTS_WEBHOOK_SECRET`` (None when it is empty).
    """
    if _operator_key(key_id):
        secret = rt.settings.webhook_secret
        return secret if secret.strip() else None
    return KeyStore(rt.redis, rt.settings.api_keys).callback_secret(key_id) or None


def check_signing_secret(rt: Runtime, url: str | None, key_id: str | None) -> None:
    """CallbacksUnavailable (400) when ``url`` is given and nothing could sign its callbacks."""
    if url is None or signing_secret(rt, key_id) is not None:
        return
    if _operator_key(key_id):
        raise CallbacksUnavailable(
            "callbacks are signed, and this server has no secret for callbacks of open mode or of the "
            "operator's keys (TTS_WEBHOOK_SECRET is not set): submit without 'callback_url', or with a key "
            "made by `tts-batch keys create`, which has its own callback secret")
    raise CallbacksUnavailable(f"API key {key_id} has no callback secret to sign callbacks with: "
                               "submit without 'callback_url', or with a new key")


def check_callback(rt: Runtime, url: str | None, key_id: str | None) -> None:
    """Everything a submit checks about a ``callback_url``: :func:`check_callback_url`, then
    :func:`check_signing_secret` for the submitting key."""
    check_callback_url(url, rt.settings)
    check_signing_secret(rt, url, key_id)


# --- payloads ---------------------------------------------------------------------------------
def delivery_id(kind: str, resource_id: str, status: str, finished_at: object) -> str:
    """The delivery id (``X-TTS-Delivery``) of one final state of a job or batch: the same however
    often it is computed, a new one for a new final state."""
    return uuid.uuid5(_DELIVERY_NAMESPACE, f"{kind}:{resource_id}:{status}:{finished_at}").hex


def job_payload(job: Job, status: JobStatus, delivery: str) -> dict[str, Any]:
    """The body of a job's callback: ids, status, tenant, error code, times and links; never its text."""
    links = {"self": f"/v1/jobs/{job.id}"}
    if status is JobStatus.SUCCEEDED:
        links["audio"] = f"/v1/jobs/{job.id}/audio"
    error = ({"code": job.error_code or "synthesis_failed", "type": job.error_type}
             if status is JobStatus.FAILED else None)
    body: dict[str, Any] = {
        "id": job.id, "status": status.value, "tenant": job.tenant, "name": job.name,
        "batch_id": job.batch_id, "batch_index": job.batch_index, "voice": job.voice, "format": job.format,
        "characters": job.characters, "attempts": job.attempts, "cache_hit": job.cache_hit,
        "created_at": iso(job.created_at), "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "duration_seconds": job.duration if status is JobStatus.SUCCEEDED else None,
        "error": error, "links": links,
    }
    return {"event": JOB_EVENTS[status], "id": delivery, "time": iso(now()), "correlation_id": job.correlation_id,
            "job": body}


def batch_payload(summary: Mapping[str, Any], delivery: str) -> dict[str, Any]:
    """The body of a batch's callback: ``summary`` (id, status, tenant, counts, times) and links."""
    batch_id = str(summary["id"])
    links = {"self": f"/v1/batches/{batch_id}", "items": f"/v1/batches/{batch_id}/items",
             "result": f"/v1/batches/{batch_id}/result"}
    return {"event": BATCH_EVENT, "id": delivery, "time": iso(now()),
            "correlation_id": summary.get("correlation_id"), "batch": {**summary, "links": links}}


# --- the delivery state in the record --------------------------------------------------------------
class CallbackState:
    """The ``callback`` field of one job or batch record, for one delivery (its id).

    Every write is a compare-and-set under WATCH, and none creates a record: a record
    that expired stays gone (a partial job hash would break every read of it).
    """

    def __init__(self, client: redis.Redis, key: str, delivery: str) -> None:
        self.redis = client
        self.key = key
        self.delivery = delivery

    def _write(self, decide: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> bool:
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    present, raw = pipe.hmget(self.key, ["id", STATE_FIELD])
                    new = decide(_load(raw)) if present is not None else None
                    if new is None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(self.key, STATE_FIELD, json.dumps({**new, "updated_at": iso(now())}))
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def begin(self, url: str, event: str) -> bool:
        """Record the delivery as ``pending``; False (nothing written) when the record already
        names this delivery, or is gone."""

        def decide(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is not None and current.get("delivery_id") == self.delivery:
                return None
            return {"url": outbound.redact_query(url), "event": event, "delivery_id": self.delivery,
                    "status": "pending", "attempts": 0, "last_error": None}

        return self._write(decide)

    def update(self, **fields: Any) -> bool:
        """Change the recorded state while it is still this delivery's (a replay's newer one is left alone)."""

        def decide(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or current.get("delivery_id") != self.delivery:
                return None
            return {**current, **fields}

        return self._write(decide)

    def get(self) -> dict[str, Any] | None:
        """The recorded state, or None."""
        return _load(self.redis.hget(self.key, STATE_FIELD))


def _load(raw: Any) -> dict[str, Any] | None:
    value = text_or_none(raw)
    if not value:
        return None
    try:
        loaded = json.loads(value)
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


# --- queueing ---------------------------------------------------------------------------------
@lifecycle.on_finished
def on_jobs_finished(rt: Runtime, jobs: Sequence[Job]) -> None:
    """The lifecycle's hook: queue the callback of each job that has a ``callback_url``."""
    for job in jobs:
        if job.callback_url and job.status in JOB_EVENTS:
            queue_job_callback(rt, job)


def queue_job_callback(rt: Runtime, job: Job) -> bool:
    """Queue the callback of ``job``, which just reached its final status; True when queued.

    The payload is built from the stored record (fresh), with the status the job just
    reached. Never raises: a failure is logged and, where possible, recorded.
    """
    try:
        try:
            record = rt.jobs.get(job.id)
        except JobNotFound:
            return False
        url = record.callback_url or job.callback_url
        if not url:
            return False
        delivery = delivery_id("job", job.id, job.status.value, record.finished_at)
        subject = {"kind": "job", "id": job.id, "key_id": record.key_id}
        return _queue(rt, keys.job(job.id), subject, url, job_payload(record, job.status, delivery))
    except Exception as exc:  # noqa: BLE001 - a callback never fails the job it is about
        log.warning("callback of job %s not queued: %s: %s", job.id, type(exc).__name__, exc)
        return False


def queue_batch_callback(rt: Runtime, batch_id: str, url: str, key_id: str | None,
                         summary: Mapping[str, Any]) -> bool:
    """Queue the callback of a batch that just finished; True when queued. Never raises.

    ``summary``: the batch's id, status, tenant, counts and times, as the payload shows them.
    """
    try:
        delivery = delivery_id("batch", batch_id, str(summary.get("status")), summary.get("finished_at"))
        subject = {"kind": "batch", "id": batch_id, "key_id": key_id}
        return _queue(rt, keys.batch(batch_id), subject, url, batch_payload(summary, delivery))
    except Exception as exc:  # noqa: BLE001 - a callback never fails the batch's last item
        log.warning("callback of batch %s not queued: %s: %s", batch_id, type(exc).__name__, exc)
        return False


def _queue(rt: Runtime, key: str, subject: dict[str, Any], url: str, payload: dict[str, Any]) -> bool:
    state = CallbackState(rt.redis, key, payload["id"])
    if not state.begin(url, payload["event"]):
        log.info("callback %s of %s %s not queued again (already queued, or the record is gone)",
                 payload["event"], subject["kind"], subject["id"])
        return False
    correlation_id = payload.get("correlation_id")
    try:
        rt.celery.send_task(CALLBACK_TASK, args=[subject, url, payload], queue=WEBHOOK_QUEUE, task_id=payload["id"],
                            headers={"correlation_id": correlation_id} if correlation_id else None)
    except Exception as exc:  # noqa: BLE001 - recorded and logged; the job's own status is final already
        state.update(status="failed", last_error=f"the callback could not be queued: {type(exc).__name__}")
        log.error("callback %s of %s %s could not be queued: %s", payload["event"], subject["kind"], subject["id"],
                  exc)
        return False
    log.info("callback %s of %s %s queued for %s (delivery %s)", payload["event"], subject["kind"], subject["id"],
             outbound.redact_query(url), payload["id"])
    return True


# --- delivery ---------------------------------------------------------------------------------
def send(url: str, payload: Mapping[str, Any], secret: str, settings: Settings,
         resolver: outbound.Resolver = outbound.system_resolver,
         ca_certs: str | None = None) -> outbound.OutboundResponse:
    """POST ``payload`` to ``url`` once, signed with ``secret``, through the SSRF guard.

    Returns the 2xx answer; CallbackRefused for a refused URL or address; CallbackDeliveryFailed
    for no answer, a non-2xx answer and a redirect (which is not followed).
    """
    body = encode(payload)
    headers = request_headers(payload, body, secret)
    headers["User-Agent"] = USER_AGENT
    response = outbound.post(url, body, headers, allowed=outbound.allowed_networks(settings.callback_allowed_networks),
                             timeout=settings.callback_timeout,
                             max_response_bytes=settings.callback_max_response_bytes, resolver=resolver,
                             ca_certs=ca_certs)
    shown = outbound.redact_query(url)
    if 300 <= response.status < 400:
        raise CallbackDeliveryFailed(f"{shown} answered HTTP {response.status}, a redirect; callbacks follow none "
                                     "(they go to the URL given, nowhere else)", status=response.status)
    if not 200 <= response.status < 300:
        raise CallbackDeliveryFailed(f"{shown} answered HTTP {response.status}", status=response.status)
    return response


@celery_app.task(
    bind=True,
    name=CALLBACK_TASK,
    queue=WEBHOOK_QUEUE,
    acks_late=True,
    ignore_result=True,
    max_retries=delivery_attempts(get_settings()) - 1,
)
def deliver_callback(self: Task, subject: dict[str, Any], url: str, payload: dict[str, Any]) -> str:
    """POST one callback, signed; retry on the operator webhooks' schedule. Returns the outcome:
    ``delivered``, ``refused`` (the guard said no: not retried), ``failed`` (no secret, or
    every attempt failed); raises Celery's ``Retry`` between attempts.
    """
    rt = get_runtime()
    settings = rt.settings
    retries = self.request.retries
    attempt = retries + 1
    max_retries = delivery_attempts(settings) - 1
    kind, resource_id = str(subject.get("kind")), str(subject.get("id"))
    key = keys.job(resource_id) if kind == "job" else keys.batch(resource_id)
    state = CallbackState(rt.redis, key, str(payload.get("id")))
    event = payload.get("event")
    with bind(correlation_id=payload.get("correlation_id") or None, job_id=resource_id if kind == "job" else None):
        secret = signing_secret(rt, subject.get("key_id"))
        if secret is None:
            error = "nothing to sign it with (the key that submitted it was revoked, or TTS_WEBHOOK_SECRET is unset)"
            _record(state, status="failed", attempts=attempt, last_error=error, next_attempt_at=None)
            log.warning("callback %s of %s %s not sent: %s", event, kind, resource_id, error)
            return "failed"
        try:
            response = send(url, payload, secret, settings)
        except CallbackRefused as exc:
            _record(state, status="refused", attempts=attempt, last_error=str(exc), next_attempt_at=None)
            log.warning("callback %s of %s %s refused by the SSRF guard: %s", event, kind, resource_id, exc)
            return "refused"
        except (CallbackDeliveryFailed, SoftTimeLimitExceeded) as exc:
            error = str(exc) if isinstance(exc, CallbackDeliveryFailed) else "the attempt outlasted its time limit"
            if retries >= max_retries:
                _record(state, status="failed", attempts=attempt, last_error=error, next_attempt_at=None)
                log.warning("callback %s of %s %s given up after %d attempts: %s", event, kind, resource_id, attempt,
                            error)
                return "failed"
            delay = backoff_seconds(retries, cap=backoff_cap(settings))
            _record(state, status="pending", attempts=attempt, last_error=error, next_attempt_at=iso(now() + delay))
            log.info("callback %s of %s %s attempt %d failed: %s; retrying in %.1f s", event, kind, resource_id,
                     attempt, error, delay)
            raise self.retry(exc=exc, countdown=delay, max_retries=max_retries) from exc
        _record(state, status="delivered", attempts=attempt, last_error=None, next_attempt_at=None)
        log.info("callback %s of %s %s delivered to %s: HTTP %d in %.0f ms", event, kind, resource_id,
                 outbound.redact_query(url), response.status, response.elapsed * 1000)
        return "delivered"


def _record(state: CallbackState, **fields: Any) -> None:
    """Update the delivery state; a Redis error is logged, never raised (the delivery outcome stands)."""
    try:
        state.update(**fields)
    except redis.RedisError as exc:
        log.warning("callback state of %s not recorded: %s", state.key, exc)

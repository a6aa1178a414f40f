"""Per-job and per-batch callbacks: a signed POST to the tenant's ``callback_url`` when work finishes.

As Polly's SNS topic does for its tasks: a job submitted with ``callback_url`` gets one
POST when it reaches its final status (``job.succeeded``, ``job.failed``,
``job.cancelled``), and a batch submitted with one gets one POST when its last item
finishes (``batch.finished``, with the batch's status and counts). docs/callbacks.md
is the user's page.

Choices, and why:

* **Queued exactly once per final state, crash or not: an outbox.** A job's final
  transition (``JobStore.transition``, also ``JobStore.create`` for a cache hit) adds the
  job id to ``tts:callbacks:outbox`` in its own MULTI, and a batch adds ``batch:<id>`` in
  the transaction that sets its ``finished_at`` (``tasks.batches``): the final state and
  the debt commit together. A finished-hook then queues the delivery task and only after
  the publish succeeded takes the member out (:meth:`CallbackState.settle`, which also
  records ``queued_at``, in one transaction). A process killed anywhere in between (a
  worker child after the transition, an API process after a cache hit or a cancel) leaves
  the member behind, and :func:`sweep_outbox`, run by every reconciler sweep
  (``TTS_RECONCILE_INTERVAL``, one worker at a time under its lock), queues every member
  older than a lease period (``TTS_LEASE_SECONDS``: by then a live process has long queued
  it). A publish that fails leaves the member too, with the error in the state. The member
  leaves only while the record still shows the final state it was queued for (same
  ``finished_at``), so a replayed job that finished again keeps its new debt.
* **At least once on the wire, with a stable id.** The delivery id is derived from the
  record and its final state (a UUID5 of kind, id, status and ``finished_at``) and is the
  Celery task id, so a callback queued twice (the sweep racing a hook that was merely
  slow, or a crash after the publish and before the member left) carries the same
  ``X-TTS-Delivery`` both times, and the receiver drops the repeat. Queueing
  compare-and-sets the record's ``callback`` state to that id first, and the state
  counts as queued once it has ``queued_at`` or any attempt: such a delivery is never
  queued again (a hook that ran twice queues nothing the second time). A job replayed
  from the dead-letter queue that finishes again is a new final state, so it gets a new
  callback with a new id; a batch gets one callback ever (its ``finished_at`` is set once).
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
* **Counted**: ``tts_callback_deliveries_total{event,outcome}`` counts each attempt's
  outcome (``delivered``, ``retried``, ``failed``, ``refused``), as
  ``tts_webhook_deliveries_total`` does for the operator webhooks.
* **No job text in a payload**, nor an error message (an engine message may quote the
  text): ids, statuses, codes, counts, times and links.
"""
from __future__ import annotations

import enum
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from monitoring.correlation import bind
from monitoring.recorder import CALLBACK_DELIVERIES
from monitoring.webhooks import encode, request_headers
from settings import Settings, get_settings

from . import keys, lifecycle, outbound
from .celery_app import WEBHOOK_QUEUE, celery_app
from .exceptions import CallbackDeliveryFailed, CallbackRefused, CallbacksUnavailable, JobNotFound
from .job import Job, iso, now
from .redis_values import members, text, text_or_none
from .runtime import Runtime, get_runtime
from .status import JobStatus
from .tenants import OPEN_PRINCIPAL, KeyStore
from .webhooks import backoff_cap, backoff_seconds, delivery_attempts

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_EVENT",
    "CALLBACK_TASK",
    "JOB_EVENTS",
    "OUTBOX_SWEEP_LIMIT",
    "STATE_FIELD",
    "CallbackState",
    "Outcome",
    "batch_payload",
    "check_callback",
    "check_callback_url",
    "check_signing_secret",
    "deliver_callback",
    "delivery_id",
    "job_payload",
    "on_jobs_finished",
    "outbox_kind",
    "outbox_member",
    "queue_batch_callback",
    "queue_job_callback",
    "send",
    "signing_secret",
    "sweep_outbox",
    "was_queued",
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
#: Outbox members one sweep looks at, at most (oldest first).
OUTBOX_SWEEP_LIMIT = 500


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
def was_queued(state: Mapping[str, Any]) -> bool:
    """True when the delivery ``state`` describes was queued: settled (``queued_at``), or its task already ran."""
    return bool(state.get("queued_at")) or int(state.get("attempts") or 0) > 0 or state.get("status") != "pending"


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

    def begin(self, url: str, event: str, once: bool = False) -> bool:
        """Claim the delivery before it is queued; True when it is to be queued now.

        A record that names no delivery yet, or an older one, gets this one as ``pending``
        with no attempt. A record that already names this one is queued again only if it
        never was (:func:`was_queued`: its first claimant died before the publish, or the
        publish failed), and is left as it is. False: already queued, or the record is
        gone. ``once``: the record gets one callback ever (a batch), so a queued delivery
        of any id ends it.
        """
        again = False

        def decide(current: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal again
            if current is not None and (once or current.get("delivery_id") == self.delivery):
                if was_queued(current):
                    return None
                if current.get("delivery_id") == self.delivery:
                    again = True
                    return None
            return {"url": outbound.redact_query(url), "event": event, "delivery_id": self.delivery,
                    "status": "pending", "attempts": 0, "last_error": None}

        return self._write(decide) or again

    def update(self, **fields: Any) -> bool:
        """Change the recorded state while it is still this delivery's (a replay's newer one is left alone)."""

        def decide(current: dict[str, Any] | None) -> dict[str, Any] | None:
            if current is None or current.get("delivery_id") != self.delivery:
                return None
            return {**current, **fields}

        return self._write(decide)

    def settle(self, member: str, finished_at: float | None = None) -> None:
        """The delivery is queued (or needs no queueing): record ``queued_at`` and take ``member`` out of
        the outbox, in one transaction.

        ``finished_at``: the final state the delivery is about; when the record shows another
        (a replayed job that finished again), the member is that newer state's debt and
        stays. None: a record that finishes once (a batch). A record that is gone owes nothing.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    present, raw, done_at = pipe.hmget(self.key, ["id", STATE_FIELD, "finished_at"])
                    done = float(text(done_at)) if done_at is not None else None
                    if present is not None and finished_at is not None and done != finished_at:
                        pipe.unwatch()
                        return
                    current = _load(raw) if present is not None else None
                    pipe.multi()
                    if current is not None and current.get("delivery_id") == self.delivery \
                            and not current.get("queued_at"):
                        stamp = iso(now())
                        pipe.hset(self.key, STATE_FIELD, json.dumps({**current, "queued_at": stamp,
                                                                     "updated_at": stamp}))
                    pipe.zrem(keys.CALLBACK_OUTBOX, member)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

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
class Outcome(enum.Enum):
    """What one attempt to queue a callback did."""

    #: The delivery task was published (and the outbox member taken out).
    QUEUED = "queued"
    #: Nothing to queue: already queued, no callback owed, or the record is gone (the member is out).
    SETTLED = "settled"
    #: The job is unfinished again (replayed): the member waits for the final state it reaches next.
    WAITING = "waiting"
    #: The member stays in the outbox: the publish failed, or the record could not be read.
    LEFT = "left"


#: Re-queues an outbox member of some kind other than a job, given its id: the Outcome, or
#: None when its record is gone or owes no callback (the member is then dropped).
Requeue = Callable[[Runtime, str], Outcome | None]
_requeuers: dict[str, Requeue] = {}


def outbox_kind(kind: str) -> Callable[[Requeue], Requeue]:
    """Register how :func:`sweep_outbox` re-queues members ``<kind>:<id>`` (a decorator).

    The module that owns those records registers it (``tasks.batches`` for ``batch``),
    as the lifecycle's hooks are registered: this module may not import it back.
    """
    def register(requeue: Requeue) -> Requeue:
        _requeuers[kind] = requeue
        return requeue
    return register


def outbox_member(kind: str, resource_id: str) -> str:
    """The outbox member of a record's callback: a job's id, ``<kind>:<id>`` for anything else."""
    return resource_id if kind == "job" else f"{kind}:{resource_id}"


@lifecycle.on_finished
def on_jobs_finished(rt: Runtime, jobs: Sequence[Job]) -> None:
    """The lifecycle's hook: queue the callback of each job that has a ``callback_url``."""
    for job in jobs:
        if job.callback_url and job.status in JOB_EVENTS:
            queue_job_callback(rt, job)


def queue_job_callback(rt: Runtime, job: Job) -> Outcome:
    """Queue the callback of ``job``, which reached its final status. Never raises.

    The payload is built from the stored record (fresh), which must still show a final
    status: a job replayed meanwhile owes the callback of the state it reaches next.
    A failure is logged and, where possible, recorded in the state.
    """
    return _queue_job(rt, job.id)


def _queue_job(rt: Runtime, job_id: str) -> Outcome:
    member = outbox_member("job", job_id)
    try:
        try:
            record = rt.jobs.get(job_id)
        except JobNotFound:
            rt.redis.zrem(keys.CALLBACK_OUTBOX, member)  # expired: nothing is owed any more
            return Outcome.SETTLED
        if record.status not in JOB_EVENTS:
            return Outcome.WAITING
        url = record.callback_url
        if not url:
            rt.redis.zrem(keys.CALLBACK_OUTBOX, member)
            return Outcome.SETTLED
        delivery = delivery_id("job", job_id, record.status.value, record.finished_at)
        subject = {"kind": "job", "id": job_id, "key_id": record.key_id}
        return _queue(rt, keys.job(job_id), subject, url, job_payload(record, record.status, delivery),
                      finished_at=record.finished_at)
    except Exception as exc:  # noqa: BLE001 - a callback never fails the job it is about
        log.warning("callback of job %s not queued: %s: %s", job_id, type(exc).__name__, exc)
        return Outcome.LEFT


def queue_batch_callback(rt: Runtime, batch_id: str, url: str, key_id: str | None,
                         summary: Mapping[str, Any]) -> Outcome:
    """Queue the callback of a batch that finished. Never raises.

    ``summary``: the batch's id, status, tenant, counts and times, as the payload shows them.
    """
    try:
        delivery = delivery_id("batch", batch_id, str(summary.get("status")), summary.get("finished_at"))
        subject = {"kind": "batch", "id": batch_id, "key_id": key_id}
        return _queue(rt, keys.batch(batch_id), subject, url, batch_payload(summary, delivery), once=True)
    except Exception as exc:  # noqa: BLE001 - a callback never fails the batch's last item
        log.warning("callback of batch %s not queued: %s: %s", batch_id, type(exc).__name__, exc)
        return Outcome.LEFT


def _queue(rt: Runtime, key: str, subject: dict[str, Any], url: str, payload: dict[str, Any], *,
           finished_at: float | None = None, once: bool = False) -> Outcome:
    """Claim, publish, settle: the member leaves the outbox only after the publish succeeded."""
    member = outbox_member(str(subject["kind"]), str(subject["id"]))
    state = CallbackState(rt.redis, key, payload["id"])
    if not state.begin(url, payload["event"], once=once):
        state.settle(member, finished_at)
        log.info("callback %s of %s %s not queued again (already queued, or the record is gone)",
                 payload["event"], subject["kind"], subject["id"])
        return Outcome.SETTLED
    correlation_id = payload.get("correlation_id")
    try:
        rt.celery.send_task(CALLBACK_TASK, args=[subject, url, payload], queue=WEBHOOK_QUEUE, task_id=payload["id"],
                            headers={"correlation_id": correlation_id} if correlation_id else None)
    except Exception as exc:  # noqa: BLE001 - left in the outbox; the job's own status is final already
        _record(state, last_error=f"the callback could not be queued yet ({type(exc).__name__}); "
                                  "the reconciler queues it again")
        log.error("callback %s of %s %s could not be queued (left in the outbox): %s", payload["event"],
                  subject["kind"], subject["id"], exc)
        return Outcome.LEFT
    state.settle(member, finished_at)
    log.info("callback %s of %s %s queued for %s (delivery %s)", payload["event"], subject["kind"], subject["id"],
             outbound.redact_query(url), payload["id"])
    return Outcome.QUEUED


# --- the sweep --------------------------------------------------------------------------------
def sweep_outbox(rt: Runtime, grace: float | None = None, limit: int = OUTBOX_SWEEP_LIMIT) -> int:
    """Queue the callbacks whose member has waited in the outbox longer than ``grace`` seconds
    (a lease period by default); returns how many this sweep queued.

    Run from every reconciler sweep (``tasks.reconciler``, one worker at a time). A member
    that young may belong to a hook queueing it right now, and is left to it; an older one
    was left by a process that died, or by a publish that failed. The oldest ``limit``
    members are looked at; the sweep stops at the first that stays (the broker is probably
    down: the next sweep tries again), so it never holds the reconciler for long. A member
    whose job is unfinished again (replayed) moves to the back, for its next final state.
    """
    wait = float(rt.settings.lease_seconds) if grace is None else grace
    due = members(rt.redis.zrangebyscore(keys.CALLBACK_OUTBOX, "-inf", now() - wait, start=0, num=limit))
    queued = 0
    for member in due:
        kind, sep, resource_id = member.partition(":")
        outcome: Outcome | None
        if not sep:
            outcome = _queue_job(rt, member)
        elif kind in _requeuers:
            outcome = _requeuers[kind](rt, resource_id)
        else:
            log.warning("callback outbox: nothing in this process queues %r (no requeuer for %r)", member, kind)
            outcome = Outcome.WAITING
        if outcome is None:
            rt.redis.zrem(keys.CALLBACK_OUTBOX, member)
        elif outcome is Outcome.QUEUED:
            queued += 1
        elif outcome is Outcome.WAITING:
            rt.redis.zadd(keys.CALLBACK_OUTBOX, {member: now()}, xx=True)  # to the back; XX: never re-adds one
        elif outcome is Outcome.LEFT:
            break
    if queued:
        log.warning("callback outbox: queued %d callback(s) that their process never queued", queued)
    return queued


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
            _count(rt, event, "failed")
            log.warning("callback %s of %s %s not sent: %s", event, kind, resource_id, error)
            return "failed"
        try:
            response = send(url, payload, secret, settings)
        except CallbackRefused as exc:
            _record(state, status="refused", attempts=attempt, last_error=str(exc), next_attempt_at=None)
            _count(rt, event, "refused")
            log.warning("callback %s of %s %s refused by the SSRF guard: %s", event, kind, resource_id, exc)
            return "refused"
        except (CallbackDeliveryFailed, SoftTimeLimitExceeded) as exc:
            error = str(exc) if isinstance(exc, CallbackDeliveryFailed) else "the attempt outlasted its time limit"
            if retries >= max_retries:
                _record(state, status="failed", attempts=attempt, last_error=error, next_attempt_at=None)
                _count(rt, event, "failed")
                log.warning("callback %s of %s %s given up after %d attempts: %s", event, kind, resource_id, attempt,
                            error)
                return "failed"
            delay = backoff_seconds(retries, cap=backoff_cap(settings))
            _record(state, status="pending", attempts=attempt, last_error=error, next_attempt_at=iso(now() + delay))
            _count(rt, event, "retried")
            log.info("callback %s of %s %s attempt %d failed: %s; retrying in %.1f s", event, kind, resource_id,
                     attempt, error, delay)
            raise self.retry(exc=exc, countdown=delay, max_retries=max_retries) from exc
        _record(state, status="delivered", attempts=attempt, last_error=None, next_attempt_at=None)
        _count(rt, event, "delivered")
        log.info("callback %s of %s %s delivered to %s: HTTP %d in %.0f ms", event, kind, resource_id,
                 outbound.redact_query(url), response.status, response.elapsed * 1000)
        return "delivered"


def _count(rt: Runtime, event: Any, outcome: str) -> None:
    """One attempt's outcome in ``tts_callback_deliveries_total`` (never raises: metrics never break delivery)."""
    try:
        rt.metrics.count(CALLBACK_DELIVERIES, 1.0, event=str(event), outcome=outcome)
    except Exception as exc:  # noqa: BLE001 - a metric is not worth a failed delivery
        log.debug("callback metric not recorded: %s", exc)


def _record(state: CallbackState, **fields: Any) -> None:
    """Update the delivery state; a Redis error is logged, never raised (the delivery outcome stands)."""
    try:
        state.update(**fields)
    except redis.RedisError as exc:
        log.warning("callback state of %s not recorded: %s", state.key, exc)

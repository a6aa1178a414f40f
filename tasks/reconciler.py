"""The reconciler: finds unfinished jobs that nothing will finish, and sends them again.

A 2xx means the job reaches a final state exactly once, whatever dies in between. The
broker alone does not give that: the message of a job whose worker main process or
host died waits in kombu's ``unacked`` hash for the whole visibility timeout (an hour);
a submit whose API died between the record and the message leaves a record with no
message; a retry whose publish failed leaves nothing to run. Every sweep (each
``TTS_RECONCILE_INTERVAL`` seconds, by one worker at a time under a Redis lock, so it is
safe to run on every host) walks the index of unfinished jobs (``tts:jobs:active``)
and applies three rules:

1. **running, lease expired**: the attempt's worker died (its lease is renewed every
   third of ``TTS_LEASE_SECONDS`` while it lives). The lost attempt goes into the job's
   history as ``worker_lost`` and the job is sent again. Recovery is bounded by the
   lease, not the visibility timeout.
2. **queued for a retry that is overdue** (``next_retry_at`` passed by more than a
   lease period): the delayed message was held by a worker that died, or never sent.
3. **queued with no message**: older than a lease period, and its delivery is in
   neither synthesis queue (``synthesis`` and ``bulk``: both, not only the job's own, so
   a message sent before a change of the routing rule is found too) nor kombu's recent
   deliveries, on two sweeps in a row (so a message being handed to a worker at that
   instant is not mistaken for a lost one).

"Sent again" is :func:`tasks.lifecycle.send_again`: one guarded transition gives the job a
new delivery id and only then is the message published, so an older message that turns
up later (restored by kombu after the visibility timeout) is recognised as stale and
dropped. Attempts are counted at delivery, so a job that keeps losing its worker is
dead-lettered as ``worker_lost`` once it has used them up.

Each sweep also empties the callback outbox (:func:`tasks.callbacks.sweep_outbox`): a
callback whose final state committed but whose process died before queueing it is queued
from here, a lease period after it was owed, so no process of its own is needed. Likewise
a batch item whose final state committed but whose count in its batch did not
(:func:`tasks.batches.sweep_uncounted`): without it the batch would stay running for good.

The same worker also sweeps the result store (:func:`sweep_results_if_due`): objects whose
expiry passed are deleted (``ResultStore.sweep``), at most every
``TTS_RESULT_STORE_SWEEP_INTERVAL`` seconds whatever the reconcile interval, remembered in
Redis (``tts:results:swept``, set with NX for that long) so that the workers taking the lock
in turn do not each sweep again. Two sweeps that overlap anyway (one outlasting the interval)
are harmless: each claims the refs it deletes (``tasks.result_store``). A store that cannot be
reached is logged and tried again at the next interval; the job sweep is not held up by it.

A fanned-out job's parts are not covered by rule 1 (their recovery is the part task's
own redelivery); rule 3 needs the Redis broker (it reads kombu's lists), and is skipped
for any other broker.

With RabbitMQ as the broker (``TTS_BROKER_URL=amqp://``) rule 3 is off: AMQP cannot list a
queue's messages without taking them, so "is this job's message still in the broker?" has
no answer. What rule 3 covers on Redis is covered there by the broker itself or not needed:
a message held by a worker that died comes back as soon as RabbitMQ sees its connection
close (no visibility timeout to wait for), and with publisher confirms the API answers 2xx
only once RabbitMQ has the message. The one window left is an API process dying between
the job record and the confirmed publish: the client got no 2xx, so no promise is broken,
and the record stays ``queued`` without a message (the operator sees it in
``/v1/jobs?status=queued``; a replay sends it). Rules 1 and 2 do not read the broker and
work as on Redis: a lost worker's job is sent again when its lease expires, whether or not
RabbitMQ redelivers the old message (which is then stale and dropped).
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from monitoring.queues import UNACKED_KEY, priority_queue_names

from . import batches, callbacks, keys, lifecycle
from .celery_app import SYNTHESIS_QUEUES
from .exceptions import ResultStoreUnavailable
from .job import now
from .redis_values import HashMapping, members, text, text_or_none
from .runtime import Runtime
from .status import JobStatus

log = logging.getLogger(__name__)

__all__ = ["SweepReport", "start_reconciler", "sweep", "sweep_if_due", "sweep_results_if_due"]

#: Job ids read per pipeline.
WINDOW = 500
#: kombu's sorted set of unacknowledged delivery tags by delivery time (``unacked_index_key``).
UNACKED_INDEX_KEY = "unacked_index"
_FIELDS = ("status", "task_id", "queued_at", "next_retry_at", "extra", "attempts", "started_at", "worker")


@dataclass
class SweepReport:
    """What one sweep found and did."""

    scanned: int = 0
    lost: list[str] = field(default_factory=list)
    overdue: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    forgotten: int = 0

    @property
    def sent_again(self) -> int:
        """Jobs sent again by this sweep."""
        return len(self.lost) + len(self.overdue) + len(self.unsent)


def _reads_kombu_redis(rt: Runtime) -> bool:
    """True when the broker is the Redis whose lists rule 3 reads."""
    return rt.settings.celery_broker_url.startswith(("redis://", "rediss://", "unix://"))


def _broker_task_ids(rt: Runtime, grace: float) -> set[str]:
    """Task ids waiting in a synthesis queue (``synthesis``, ``bulk``) or delivered to a worker within ``grace`` s."""
    client = rt.redis
    ids: set[str] = set()
    payloads: list[bytes | str] = []
    for queue in SYNTHESIS_QUEUES:
        for name in priority_queue_names(queue):
            payloads.extend(client.lrange(name, 0, -1))
    recent = members(client.zrangebyscore(UNACKED_INDEX_KEY, now() - grace, "+inf"))
    if recent:
        for raw in client.hmget(UNACKED_KEY, recent):
            if raw is not None:
                try:
                    payloads.append(json.dumps(json.loads(raw)[0]))
                except (ValueError, TypeError, IndexError):
                    continue
    for raw in payloads:
        try:
            task_id = json.loads(raw).get("headers", {}).get("id")
        except (ValueError, AttributeError):
            continue
        if isinstance(task_id, str):
            ids.add(task_id)
    return ids


def _active_ids(rt: Runtime) -> Iterable[list[str]]:
    start = 0
    while True:
        ids = members(rt.redis.zrange(keys.ACTIVE_JOBS, start, start + WINDOW - 1))
        if not ids:
            return
        yield ids
        if len(ids) < WINDOW:
            return
        start += WINDOW


def sweep(rt: Runtime) -> SweepReport:
    """One pass over the unfinished jobs (see the module docstring); returns what it did."""
    report = SweepReport()
    grace = float(rt.settings.lease_seconds)
    t = now()
    readable_broker = _reads_kombu_redis(rt)
    broker_ids: set[str] | None = None  # read once, when the first candidate for rule 3 turns up
    suspects = {text(k): text(v) for k, v in rt.redis.hgetall(keys.RECONCILE_SUSPECTS).items()}
    still_suspect: HashMapping = {}
    for ids in _active_ids(rt):
        pipe = rt.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(keys.job(job_id), list(_FIELDS))
            pipe.exists(keys.lease(job_id))
        replies = pipe.execute()
        for n, job_id in enumerate(ids):
            report.scanned += 1
            values = dict(zip(_FIELDS, (text_or_none(v) for v in replies[2 * n]), strict=True))
            has_lease = bool(replies[2 * n + 1])
            status = JobStatus(values["status"]) if values["status"] else None
            if status is None or status.finished:  # expired, or finished by a path that left it indexed
                rt.redis.zrem(keys.ACTIVE_JOBS, job_id)
                report.forgotten += 1
                continue
            task_id = values["task_id"]
            if status is JobStatus.RUNNING:
                if has_lease or '"fanout"' in (values["extra"] or ""):
                    continue
                lost = {"attempt": int(values["attempts"] or 0), "outcome": "worker_lost", "worker": values["worker"],
                        "at": t, "error": "the attempt's lease expired: its worker stopped answering"}
                if lifecycle.send_again(rt, job_id, {JobStatus.RUNNING}, task_id, "its worker was lost", history=lost):
                    report.lost.append(job_id)
                continue
            retry_at = float(values["next_retry_at"]) if values["next_retry_at"] else None
            if retry_at is not None:
                if retry_at + grace < t and lifecycle.send_again(rt, job_id, {JobStatus.QUEUED}, task_id,
                                                                 "its retry is overdue"):
                    report.overdue.append(job_id)
                continue
            queued_at = float(values["queued_at"] or 0)
            if not readable_broker or queued_at + grace >= t or not task_id:
                continue
            if broker_ids is None:
                broker_ids = _broker_task_ids(rt, grace)
            if task_id in broker_ids:
                continue
            if suspects.get(job_id) == task_id:
                if lifecycle.send_again(rt, job_id, {JobStatus.QUEUED}, task_id, "its message was missing"):
                    report.unsent.append(job_id)
            else:
                still_suspect[job_id] = task_id
    pipe = rt.redis.pipeline(transaction=True)
    pipe.delete(keys.RECONCILE_SUSPECTS)
    if still_suspect:
        pipe.hset(keys.RECONCILE_SUSPECTS, mapping=still_suspect)
    pipe.execute()
    callbacks.sweep_outbox(rt)
    batches.sweep_uncounted(rt)
    sweep_results_if_due(rt)
    if report.sent_again:
        log.warning("reconciler: sent %d job(s) again (%d lost workers, %d overdue retries, %d missing messages)",
                    report.sent_again, len(report.lost), len(report.overdue), len(report.unsent),
                    extra={"lost": report.lost[:20], "overdue": report.overdue[:20], "unsent": report.unsent[:20]})
    return report


def sweep_results_if_due(rt: Runtime) -> int | None:
    """Delete the result store's expired objects unless that was done within ``TTS_RESULT_STORE_SWEEP_INTERVAL``
    seconds; how many it deleted, or None when it was not due (or the store could not be reached)."""
    interval = max(1, rt.settings.result_store_sweep_interval)
    if not rt.redis.set(keys.RESULTS_SWEPT, lifecycle.HOSTNAME, nx=True, ex=interval):
        return None
    try:
        return rt.result_store.sweep()
    except ResultStoreUnavailable as exc:
        log.warning("result store sweep failed (tried again in %d s): %s", interval, exc)
        return None


def sweep_if_due(rt: Runtime, holder: str) -> SweepReport | None:
    """Sweep unless another worker holds this interval's lock; None when it was not this one's turn."""
    interval = max(1, rt.settings.reconcile_interval)
    if not rt.redis.set(keys.RECONCILE_LOCK, holder, nx=True, px=int(interval * 1000 * 0.9)):
        return None
    return sweep(rt)


def start_reconciler(rt: Runtime, holder: str = lifecycle.HOSTNAME) -> threading.Event:
    """Run :func:`sweep_if_due` every ``TTS_RECONCILE_INTERVAL`` seconds in a daemon thread; returns its stop event."""
    stopped = threading.Event()
    interval = max(1, rt.settings.reconcile_interval)

    def loop() -> None:
        while not stopped.wait(interval):
            try:
                sweep_if_due(rt, holder)
            except lifecycle.BROKER_ERRORS as exc:  # Redis away: the next sweep tries again
                log.warning("reconciler sweep failed: %s", exc)
            except Exception:  # the reconciler must outlive any one bad record
                log.exception("reconciler sweep failed")

    threading.Thread(target=loop, name="tts-reconciler", daemon=True).start()
    return stopped

"""RabbitMQ's dead letters into the project's one failure path.

On RabbitMQ the work queues are quorum queues with a delivery limit (``tasks.celery_app``):
a message returned more often than that (workers keep dying under it, or keep giving it
back) is dead-lettered by RabbitMQ into the ``tts.dead-letter`` queue. Nothing would ever
look at it there, and its job would stay ``queued`` or ``running`` for good, breaking the
promise of a 2xx. So every worker consumes that queue with :class:`DeadLetterConsumer`.

A dead-lettered message counts as one lost attempt of its job (``worker_lost`` in its
history, the attempt counter incremented, as :func:`tasks.lifecycle.begin_attempt` counts
a delivery). While attempts remain, the job is sent again as a new message
(:func:`tasks.lifecycle.send_again`, with the retry backoff), which gets a fresh delivery
budget; after the last, the job is failed through :func:`tasks.lifecycle.dead_letter`, the
same function the poison-job and last-attempt paths use: one failed status, one
dead-letter record, one alert, whichever path gets there first (the status transition is
the lock). Why not fail at once: the returns the limit catches include a worker's Redis
errors (``tasks.synthesize`` gives the message back while Redis is away), so a Redis
outage of a few seconds can burn a message's whole budget; it must cost a job one attempt,
not the job. A job whose lease is live is being worked on by a newer delivery of the same
message and is left alone (sending it again would make that attempt's result stale).
A fanned-out job's part has no message of its own to resend here: its job is failed.

Why a consumer bootstep and not a task on that queue: a dead-lettered message is still a
``tts.synthesize`` (or ``tts.synthesize_part``) message; a Celery consumer of its queue
would run the synthesis once more instead of failing it. The bootstep reads the message
itself (task name, task id and job id from Celery's protocol 2 headers and body), runs in
the worker's main process (no pool slot, nothing to prefetch) and acknowledges the message
only after the job's failure is committed in Redis, so a worker dying meanwhile leaves
the message for the next one. A message of a job that finished meanwhile, or a stale
delivery (the job was sent again under a newer task id), is acknowledged and dropped.
A message of any other task (webhook delivery, batch bookkeeping) is logged and dropped:
those have their own retry and outbox paths.

While Redis is unreachable the message is given back after a pause of
:data:`REDIS_RETRY_PAUSE` (the dead-letter queue has no delivery limit), so no dead
letter is lost and the consumer does not spin.

The consumer's start also checks RabbitMQ's ``consumer_timeout`` where it can be read:
AMQP does not tell it, so only when the broker is on this host and ``rabbitmqctl`` answers
(:func:`server_consumer_timeout`). A server value at or below the hard time limit stops
the worker with the ``rabbitmq.conf`` line to change (RabbitMQ would otherwise close the
channel of every long job and redeliver it while it runs); a value that cannot be read
leaves the settings' check (``TTS_BROKER_CONSUMER_TIMEOUT``) as the only one, and says so.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from celery import bootsteps
from kombu.message import Message
from kombu.messaging import Consumer

from settings import Settings, get_settings

from . import keys, lifecycle
from .celery_app import celery_app, dead_letter_queue
from .job import now
from .publish import SYNTHESIZE_PART_TASK, SYNTHESIZE_TASK
from .runtime import Runtime, get_runtime

log = logging.getLogger(__name__)

__all__ = ["DeadLetterConsumer", "check_consumer_timeout", "handle_dead_letter", "server_consumer_timeout"]

#: Seconds before a dead letter is given back while Redis cannot be reached.
REDIS_RETRY_PAUSE = 1.0
#: The error type and code a job failed by the delivery limit gets.
ERROR_TYPE = "DeliveryLimitExceeded"
ERROR_CODE = "worker_lost"


def server_consumer_timeout(broker_url: str, timeout: float = 15.0) -> int | None:
    """RabbitMQ's ``consumer_timeout`` in seconds, read with ``rabbitmqctl`` when the broker is on
    this host; None when it cannot be read (another host, no ``rabbitmqctl``, not allowed) or is off."""
    host = urlsplit(broker_url).hostname or "localhost"
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    ctl = shutil.which("rabbitmqctl") or ("/usr/sbin/rabbitmqctl" if shutil.which("/usr/sbin/rabbitmqctl") else None)
    if not local or ctl is None:
        return None
    try:
        out = subprocess.run([ctl, "-q", "eval", "application:get_env(rabbit, consumer_timeout)."], capture_output=True,
                             text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\{ok,\s*(\d+)\}", out.stdout)
    return int(match.group(1)) // 1000 if out.returncode == 0 and match else None


def check_consumer_timeout(settings: Settings) -> int | None:
    """Compare the server's ``consumer_timeout`` (when readable) with the hard time limit; returns it.

    :raises RuntimeError: the server's timeout is at or below ``TTS_TASK_TIME_LIMIT``.
    """
    seconds = server_consumer_timeout(settings.celery_broker_url)
    if seconds is None:
        log.info("RabbitMQ's consumer_timeout cannot be read from here; assuming TTS_BROKER_CONSUMER_TIMEOUT=%d s, "
                 "above the hard time limit of %d s", settings.broker_consumer_timeout, settings.task_time_limit)
        return None
    if seconds <= settings.task_time_limit:
        raise RuntimeError(
            f"RabbitMQ's consumer_timeout is {seconds} s, not above TTS_TASK_TIME_LIMIT ({settings.task_time_limit} s): "
            f"it would close the channel of every job running longer and redeliver it. Set "
            f"'consumer_timeout = {(settings.task_time_limit * 2) * 1000}' in /etc/rabbitmq/rabbitmq.conf "
            "(milliseconds) and restart RabbitMQ")
    log.info("RabbitMQ's consumer_timeout is %d s, above the hard time limit of %d s", seconds, settings.task_time_limit)
    return seconds


def _death(headers: Mapping[str, Any]) -> tuple[str, int]:
    """Why RabbitMQ dead-lettered the message, and how often it was delivered (``x-death``, ``x-delivery-count``)."""
    deaths = headers.get("x-death") or []
    reason = str(deaths[0].get("reason", "unknown")) if deaths and isinstance(deaths[0], Mapping) else "unknown"
    try:
        deliveries = int(headers.get("x-delivery-count") or 0)
    except (TypeError, ValueError):
        deliveries = 0
    return reason, deliveries


def handle_dead_letter(rt: Runtime, headers: Mapping[str, Any], body: Any) -> str:
    """Fail the job of one dead-lettered message; returns what was done (for logs and tests).

    ``headers``: the message's AMQP headers (Celery's ``task`` and ``id``, RabbitMQ's ``x-death``);
    ``body``: its decoded body, ``[args, kwargs, embed]``. Raises Redis errors (the caller gives
    the message back).
    """
    task = str(headers.get("task") or "")
    task_id = str(headers.get("id") or "")
    args = body[0] if isinstance(body, (list, tuple)) and body and isinstance(body[0], (list, tuple)) else []
    reason, deliveries = _death(headers)
    if task not in (SYNTHESIZE_TASK, SYNTHESIZE_PART_TASK) or not args:
        log.error("RabbitMQ dead-lettered a %s message (%s, %s, after %d returns); dropped", task or "non-task",
                  task_id, reason, deliveries)
        return "dropped"
    job_id = str(args[0])
    job = rt.jobs.get_unfinished(job_id)
    if job is None:
        log.info("dead letter %s of job %s: the job already finished; dropped", task_id, job_id)
        return "finished"
    if task == SYNTHESIZE_TASK and job.task_id and task_id != job.task_id:
        log.info("dead letter %s of job %s is stale (the job was sent again as %s); dropped", task_id, job_id,
                 job.task_id)
        return "stale"
    if rt.redis.exists(keys.lease(job_id)):
        log.info("dead letter %s of job %s: a live attempt holds the job; dropped", task_id, job_id)
        return "running"
    subject = f"part {int(args[1]) + 1}: " if task == SYNTHESIZE_PART_TASK and len(args) > 1 else ""
    message = (f"{subject}RabbitMQ dead-lettered its message ({reason}) after {deliveries} returns: "
               f"its workers kept being lost")
    if task == SYNTHESIZE_TASK:
        number = rt.jobs.incr_attempts(job_id)
        rt.jobs.add_history(job_id, {"attempt": number, "outcome": "worker_lost", "at": now(), "error": message})
        if number < job.max_attempts:
            delay = rt.retry_policy.delay_seconds(number)
            if lifecycle.send_again(rt, job_id, set(lifecycle.UNFINISHED), job.task_id,
                                    "its message passed RabbitMQ's delivery limit", delay):
                return "sent_again"
            return "moved_on"
        job.attempts = number
    lifecycle.dead_letter(rt, job, ERROR_TYPE, message, code=ERROR_CODE)
    return "dead_lettered"


class DeadLetterConsumer(bootsteps.ConsumerStep):  # type: ignore[misc]  # celery is untyped
    """Consumes ``tts.dead-letter`` in the worker's main process (RabbitMQ brokers only)."""

    _timeout_checked = False

    def include_if(self, parent: Any) -> bool:
        """Only on a RabbitMQ broker (a Redis broker has no delivery limit to dead-letter by)."""
        return get_settings().broker_is_amqp

    def get_consumers(self, channel: Any) -> list[Consumer]:
        """One consumer of the dead-letter queue (declared here: exchange, queue and binding)."""
        settings = get_settings()
        log.info("RabbitMQ broker: quorum queues with delivery limit %d", settings.delivery_limit)
        if not self._timeout_checked:  # once per worker, not on every reconnection
            check_consumer_timeout(settings)
            self._timeout_checked = True
        consumer = Consumer(channel, queues=[dead_letter_queue()], callbacks=[self.on_message],  # type: ignore[no-untyped-call]
                            accept=["json"], prefetch_count=1)
        return [consumer]

    def on_message(self, body: Any, message: Message) -> None:
        """Fail the message's job, then acknowledge it; give it back if Redis is away."""
        try:
            handle_dead_letter(get_runtime(), message.headers or {}, body)
        except lifecycle.BROKER_ERRORS as exc:
            log.warning("dead letter not handled yet, Redis failed (%s); given back in %.0f s", exc,
                        REDIS_RETRY_PAUSE)
            time.sleep(REDIS_RETRY_PAUSE)  # back-pressure, not synchronisation: Redis is away
            message.requeue()  # type: ignore[no-untyped-call]
            return
        except Exception:  # a malformed message must not stop the consumer; it stays in the log
            log.exception("dead letter %s could not be handled; dropped", (message.headers or {}).get("id"))
        message.ack()  # type: ignore[no-untyped-call]


celery_app.steps["consumer"].add(DeadLetterConsumer)

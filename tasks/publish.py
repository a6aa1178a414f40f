"""Sending tasks to the broker: the one place that publishes synthesis work.

Every task message carries only ids (a job id, or a job id and a part number); the
worker reads everything else from the job record. The correlation id travels in a
message header so a worker's log lines about a job carry the request's id.

Which queue: :func:`queue_for` is the one rule. A single job's synthesize task goes to
``synthesis``; a batch item's and every fan-out part to ``bulk``. Workers consume both
round-robin (``tasks.celery_app``), so a single job never waits behind a big batch's
thousands of messages. The rule reads only the job record (its ``batch_id``), so every
later send of the same job (a retry, a dead-letter replay, the reconciler's send again)
lands on the same queue as its first one.

Two ways to publish:

* :func:`enqueue`: one synthesize task for one job (a submit, a replay, a retry that
  the worker's main process schedules after a hard time limit), on the job's queue.
* :func:`send_tasks`: many tasks in pipelined round trips (a 10,000-input batch, the
  parts of a fanned-out job), with kombu's ``Producer.batch`` where it exists. Work that
  comes in such numbers is bulk work, so ``bulk`` is its default queue.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from .celery_app import BULK_QUEUE, SYNTHESIS_QUEUE
from .job import Job
from .runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["PART_QUEUE", "PIPELINE_CHUNK", "SYNTHESIZE_PART_TASK", "SYNTHESIZE_TASK", "enqueue", "queue_for",
           "send_tasks"]

#: Task names (the Celery registry's keys; routes in ``celery_app`` use them too).
SYNTHESIZE_TASK = "tts.synthesize"
SYNTHESIZE_PART_TASK = "tts.synthesize_part"
#: Messages per pipelined publish.
PIPELINE_CHUNK = 1000
#: The queue of every ``tts.synthesize_part`` message, whoever submitted the job: one long
#: text fans out into tens of parts, which must not crowd out other callers' single jobs.
PART_QUEUE = BULK_QUEUE


def _headers(correlation_id: str | None) -> dict[str, str] | None:
    return {"correlation_id": correlation_id} if correlation_id else None


def queue_for(job: Job) -> str:
    """The queue of ``job``'s synthesize task: ``bulk`` for a batch item, ``synthesis`` for a single job."""
    return BULK_QUEUE if job.batch_id else SYNTHESIS_QUEUE


def enqueue(rt: Runtime, job: Job, countdown: float | None = None, task_id: str | None = None) -> str:
    """Send a job to its queue (:func:`queue_for`); returns the Celery task id."""
    result = rt.celery.send_task(SYNTHESIZE_TASK, args=[job.id], queue=queue_for(job), countdown=countdown,
                                 headers=_headers(job.correlation_id), task_id=task_id)
    return str(result.id)


def send_tasks(rt: Runtime, name: str, calls: Iterable[tuple[list[Any], float | None]],
               correlation_id: str | None = None, task_ids: Iterable[str] | None = None,
               queue: str = BULK_QUEUE) -> None:
    """Publish many tasks to ``queue`` in pipelined round trips (falls back to one by one on older kombu).

    ``calls``: (args, countdown) per task; ``task_ids``: the ids to use, in the same order;
    ``queue``: ``bulk`` unless told (a batch's items, whose :func:`queue_for` is ``bulk``, and :data:`PART_QUEUE`).
    """
    app = rt.celery
    headers = _headers(correlation_id)
    ids = iter(task_ids) if task_ids is not None else None
    # kombu only batches when Redis would not retry a half-sent pipeline; our broker
    # options ask for retry_on_timeout, so this connection turns it off.
    with app.connection_for_write(transport_options={"retry_on_timeout": False}) as conn:
        producer = app.amqp.Producer(conn)
        batch = getattr(producer, "batch", None)
        with (batch(max_size=PIPELINE_CHUNK) if batch is not None else contextlib.nullcontext()):
            declare: list[Any] | None = None  # the first message declares the queue, as a lone send does
            for args, countdown in calls:
                app.send_task(name, args=args, queue=queue, countdown=countdown, headers=headers,
                              task_id=next(ids) if ids is not None else None, producer=producer, declare=declare)
                declare = []  # declared: kombu's per-message maybe_declare was a tenth of a 10,000-item submit

"""Helpers the unit tests share: kombu's in-memory broker read back, test tones, and a fanned-out job."""
from __future__ import annotations

from typing import Any

import numpy as np
from celery import Celery
from kombu import Queue

from engine.audio import AudioEncoder
from tasks import keys
from tasks.celery_app import SYNTHESIS_QUEUE, SYNTHESIS_QUEUES
from tasks.fanout import PartPlan
from tasks.job import Job, now
from tasks.runtime import Runtime
from tasks.status import JobStatus

__all__ = ["drain", "encoded_mp3", "fanned_out_job", "memory_app", "tone"]


def memory_app(name: str = "test-job-service") -> Celery:
    """A Celery app on kombu's in-memory broker with both synthesis queues, emptied.

    The memory broker is process-wide: whatever an earlier test left in ``synthesis`` or
    ``bulk`` is taken off here, so every app starts on empty queues.
    """
    app = Celery(name, broker="memory://")
    app.conf.update(task_queues=[Queue(queue) for queue in SYNTHESIS_QUEUES], task_default_queue=SYNTHESIS_QUEUE,
                    task_serializer="json", accept_content=["json"])
    for queue in SYNTHESIS_QUEUES:
        drain(app, queue)
    return app


def drain(app: Celery, queue: str = SYNTHESIS_QUEUE) -> list[dict[str, Any]]:
    """Every message waiting in ``queue`` (taken off it), as the fields a worker would read."""
    out = []
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue(queue)
        try:
            while True:
                try:
                    message = q.get(block=False)
                except q.Empty:
                    break
                message.ack()
                args, kwargs, _ = message.payload
                out.append({"id": message.headers["id"], "task": message.headers["task"], "args": args,
                            "kwargs": kwargs, "correlation_id": message.headers.get("correlation_id"),
                            "eta": message.headers.get("eta"),
                            "routing_key": message.delivery_info.get("routing_key")})
        finally:
            q.close()
    return out


def tone(seconds: float, rate: int, freq: float = 330.0) -> np.ndarray:
    """A sine tone of ``seconds`` at ``rate``."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encoded_mp3(seconds: float, rate: int, freq: float = 330.0) -> tuple[bytes, int]:
    """A tone encoded as MP3 by the real encoder: (bytes, samples written)."""
    with AudioEncoder("mp3", rate) as encoder:
        encoder.write(tone(seconds, rate, freq))
    return encoder.finish(), encoder.samples_written


def fanned_out_job(rt: Runtime, job_id: str = "long", batch_id: str | None = None) -> tuple[Job, PartPlan]:
    """A running long job, stored, with a three-part plan whose first part is done."""
    job = Job(id=job_id, text="x" * 3000, voice="heart", status=JobStatus.RUNNING, created_at=now(),
              started_at=now(), attempts=1, max_attempts=3, batch_id=batch_id, batch_index=0 if batch_id else None)
    rt.jobs.create(job)
    plan = PartPlan(job_id=job.id, groups=[["One."], ["Two."], ["Three."]], format="mp3", rate=24000,
                    voice_rate=24000)
    rt.redis.hset(keys.job_parts(job.id), mapping=plan.to_redis())
    rt.redis.hset(keys.job_parts(job.id), "ref:0", rt.result_store.put(b"audio of part one", now() + 60))
    rt.redis.sadd(keys.job_parts_done(job.id), 0)
    return job, plan

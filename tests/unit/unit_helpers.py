"""Helpers the unit tests share: kombu's in-memory broker read back, and test tones."""
from __future__ import annotations

from typing import Any

import numpy as np
from celery import Celery
from kombu import Queue

from engine.audio import AudioEncoder
from tasks.celery_app import SYNTHESIS_QUEUE, SYNTHESIS_QUEUES

__all__ = ["drain", "encoded_mp3", "memory_app", "tone"]


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

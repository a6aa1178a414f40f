"""Batch bookkeeping shared by the synthesize task: per-status counts of a batch's items.

A batch (``tts:batch:{id}``) counts its items as they finish, so reading its status
costs one HGETALL however many inputs it has.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import keys
from .job import now

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)


def on_item_finished(rt: Runtime, job_id: str) -> None:
    """Count a finished job in its batch (no-op for a job outside any batch)."""
    try:
        job = rt.jobs.get(job_id)
    except Exception:  # noqa: BLE001 - an expired job has no batch to update
        return
    if not job.batch_id or not job.status.finished:
        return
    key = keys.batch(job.batch_id)
    # SADD makes counting idempotent: a redelivered task cannot count an item twice.
    if not rt.redis.sadd(keys.batch_done(job.batch_id), job.id):
        return
    rt.redis.expire(keys.batch_done(job.batch_id), rt.settings.result_ttl)
    pipe = rt.redis.pipeline(transaction=True)
    pipe.hincrby(key, f"count_{job.status.value}", 1)
    pipe.hincrby(key, "finished", 1)
    pipe.hget(key, "total")
    _, finished, total = pipe.execute()
    if total is not None and int(finished) >= int(total):
        rt.redis.hsetnx(key, "finished_at", str(now()))
        log.info("batch %s finished", job.batch_id)

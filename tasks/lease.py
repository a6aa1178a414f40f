"""Leases: a running attempt's claim on its job, renewed while it runs.

The broker alone cannot tell a slow job from a dead worker: with late acknowledgement,
the message of a job whose worker (or host) died waits in kombu's ``unacked`` hash for
the whole visibility timeout (an hour) before anyone sees it again. A lease bounds that:

* an attempt takes ``tts:lease:{job}`` with ``SET NX EX`` before it marks the job
  running; the value names the delivery (task id), host and process;
* a thread renews it every third of ``TTS_LEASE_SECONDS`` while the attempt runs, also
  through one long ONNX call (onnxruntime releases the GIL);
* the attempt deletes it when the job leaves ``running``; a renewal or delete only
  touches a lease that still holds this attempt's value (compare-and-set in Lua);
* a lease that expires means its holder died: the reconciler
  (:mod:`tasks.reconciler`) sends the job again.

A second delivery of the same message (kombu restores unacknowledged messages after
the visibility timeout) finds the lease taken and is dropped, so no attempt runs
twice. A holder on this host whose process no longer exists (a child SIGKILLed, its
message requeued by ``task_reject_on_worker_lost``) is taken over at once instead of
waiting for the lease to expire.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from . import keys
from .redis_values import text_or_none

log = logging.getLogger(__name__)

__all__ = ["HOSTNAME", "Lease", "LeaseHolder", "holder"]

HOSTNAME = socket.gethostname()

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_TAKE_OVER = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease: the delivery (task id), host and process id."""

    task_id: str
    host: str
    pid: int

    @classmethod
    def parse(cls, value: str) -> LeaseHolder:
        """From a lease value ``task_id|host|pid`` (an unreadable value names nobody alive)."""
        task_id, _, rest = value.partition("|")
        host, _, pid = rest.rpartition("|")
        return cls(task_id=task_id, host=host, pid=int(pid) if pid.isdigit() else 0)

    def value(self) -> str:
        """The lease value."""
        return f"{self.task_id}|{self.host}|{self.pid}"

    def is_dead_here(self) -> bool:
        """True when the holder was a process of this host that no longer exists."""
        if self.host != HOSTNAME or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def holder(client: redis.Redis, job_id: str) -> LeaseHolder | None:
    """The current holder of a job's lease, or None when nobody holds it."""
    value = text_or_none(client.get(keys.lease(job_id)))
    return LeaseHolder.parse(value) if value is not None else None


class Lease:
    """One attempt's lease on a job (``ttl`` seconds, renewed every ``ttl / 3``)."""

    def __init__(self, client: redis.Redis, job_id: str, task_id: str, ttl: float) -> None:
        self.redis = client
        self.job_id = job_id
        self.key = keys.lease(job_id)
        self.holder = LeaseHolder(task_id=task_id, host=HOSTNAME, pid=os.getpid())
        self.ttl_ms = max(1, int(ttl * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take_over = client.register_script(_TAKE_OVER)
        #: The dead holder this lease was taken over from, if any (its attempt was lost).
        self.took_over: LeaseHolder | None = None

    def acquire(self) -> bool:
        """Take the lease; False when a live attempt holds it (this delivery is a duplicate)."""
        if self.redis.set(self.key, self.holder.value(), nx=True, px=self.ttl_ms):
            return True
        current = holder(self.redis, self.job_id)
        if current is None:  # expired between SET NX and GET
            return bool(self.redis.set(self.key, self.holder.value(), nx=True, px=self.ttl_ms))
        if current.is_dead_here():
            taken = self._take_over(keys=[self.key], args=[current.value(), self.holder.value(), self.ttl_ms])
            if taken:
                log.info("job %s: took over the lease of dead process %d", self.job_id, current.pid)
                self.took_over = current
            return bool(taken)
        return False

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer this attempt's."""
        return bool(self._renew(keys=[self.key], args=[self.holder.value(), self.ttl_ms]))

    def release(self) -> None:
        """Give the lease up (only if it is still this attempt's). Never raises: it expires anyway."""
        try:
            self._release(keys=[self.key], args=[self.holder.value()])
        except redis.RedisError as exc:
            log.warning("job %s: could not release its lease (it expires by itself): %s", self.job_id, exc)

    @contextlib.contextmanager
    def kept_alive(self) -> Iterator[Lease]:
        """Renew the lease from a background thread until the block ends."""
        stop = threading.Event()
        interval = self.ttl_ms / 3000.0

        def renew_until_stopped() -> None:
            while not stop.wait(interval):
                try:
                    if not self.renew():
                        log.warning("job %s: its lease was lost (expired or taken over)", self.job_id)
                        return
                except redis.RedisError as exc:  # Redis away: keep trying; the lease may still hold
                    log.warning("job %s: could not renew its lease: %s", self.job_id, exc)

        thread = threading.Thread(target=renew_until_stopped, name=f"tts-lease-{self.job_id[:8]}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=interval + 1.0)

"""Idempotency-Key claims, for jobs and batches alike.

A client that sends ``Idempotency-Key: K`` with a submit and retries it (after a
timeout, a 5xx, a dropped connection) must get the same job or batch back, never a
second one. A claim is one ``SET NX`` of ``tts:idem:{K}`` (``tts:idem:batch:{K}`` for
batches) holding the resource id and a fingerprint of the request body, kept for
``TTS_RESULT_TTL``:

* the first submit wins the claim and creates the resource;
* a retry with the same body finds the claim and gets the earlier resource;
* the same key with a different body is refused (:class:`IdempotencyConflict`);
* a submit that fails before anything was accepted releases its claim, so the
  client's retry with the same key is served at once instead of pointing at nothing;
* a claim whose resource was never stored (the API process died between the claim
  and the record) is taken over by the next submit with that key and body, once it is
  older than any submit takes; a younger one answers 409 ``idempotency_key_in_use`` (a
  retry that overtook its own first attempt), so no key ever makes two jobs.

Keys are per tenant (:func:`tenant_key`): the same key sent by two tenants names two
claims, so one tenant can never be handed another's job by guessing its key.
"""
from __future__ import annotations

import json
import logging
import time
from enum import Enum

import redis

from . import keys
from .exceptions import IdempotencyConflict
from .tenants import DEFAULT_TENANT

log = logging.getLogger(__name__)

__all__ = ["IdempotencyKeys", "ResourceKind", "tenant_key"]


def tenant_key(tenant: str, key: str) -> str:
    """The claim name of a tenant's Idempotency-Key (the default tenant's keys keep their old name)."""
    return key if tenant == DEFAULT_TENANT else f"{tenant}:{key}"


class ResourceKind(str, Enum):
    """What an Idempotency-Key stands for."""

    JOB = "job"
    BATCH = "batch"


class IdempotencyKeys:
    """Claims of Idempotency-Keys in Redis; ``ttl``: seconds a claim is kept."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.redis = client
        self.ttl = ttl

    @staticmethod
    def _redis_key(kind: ResourceKind, key: str) -> str:
        return keys.idempotency(key if kind is ResourceKind.JOB else f"batch:{key}")

    @staticmethod
    def _id_field(kind: ResourceKind) -> str:
        return f"{kind.value}_id"

    def claim(self, kind: ResourceKind, key: str, resource_id: str, fingerprint: str) -> str | None:
        """Claim ``key`` for a new resource; returns None when claimed, else the id that already holds it.

        Raises :class:`IdempotencyConflict` when the key was used for a different request.
        """
        name, field = self._redis_key(kind, key), self._id_field(kind)
        value = json.dumps({field: resource_id, "fingerprint": fingerprint, "claimed_at": time.time()})
        while True:
            if self.redis.set(name, value, nx=True, ex=self.ttl):
                return None
            raw = self.redis.get(name)
            if raw is None:  # the claim expired between SET NX and GET: claim it again
                continue
            stored = json.loads(raw)
            if stored.get("fingerprint") != fingerprint:
                raise IdempotencyConflict(key, str(stored.get(field, "?")), kind=kind.value)
            return str(stored[field])

    def holder(self, kind: ResourceKind, key: str) -> str | None:
        """The id the claim of ``key`` names, or None when nothing claims it."""
        raw = self.redis.get(self._redis_key(kind, key))
        return str(json.loads(raw)[self._id_field(kind)]) if raw is not None else None

    def take_over(self, kind: ResourceKind, key: str, stale_id: str, resource_id: str, fingerprint: str,
                  older_than: float) -> bool:
        """Point a claim whose resource was never stored (a submit that died after claiming) at a new one.

        Compare-and-set: only a claim that still names ``stale_id`` and was made more than
        ``older_than`` seconds ago moves (a younger one may belong to a submit still
        storing its resource). False when it did not move: the caller claims again, or
        tells the client to retry.
        """
        name, field = self._redis_key(kind, key), self._id_field(kind)
        value = json.dumps({field: resource_id, "fingerprint": fingerprint, "claimed_at": time.time()})
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(name)
                raw = pipe.get(name)
                stored = json.loads(raw) if raw is not None else {}
                if stored.get(field) != stale_id or float(stored.get("claimed_at", 0)) > time.time() - older_than:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.set(name, value, ex=self.ttl)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def release(self, kind: ResourceKind, key: str, resource_id: str) -> None:
        """Give up a claim made for ``resource_id`` (nothing was accepted); another holder's claim is kept."""
        name, field = self._redis_key(kind, key), self._id_field(kind)
        try:
            raw = self.redis.get(name)
            if raw is not None and json.loads(raw).get(field) == resource_id:
                self.redis.delete(name)
        except redis.RedisError as exc:  # Redis is probably down: the claim expires with its TTL
            log.warning("could not release Idempotency-Key %r: %s", key, exc)

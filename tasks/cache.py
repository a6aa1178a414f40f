"""The audio cache: content-addressed, size-bounded, with a TTL.

The key hashes everything that changes the audio: the normalised text, the voice,
speed, format, output sample rate, seed and the model's version. The cache bounds its
own size (``TTS_CACHE_MAX_BYTES``; least recently used entries go first) because the
broker's Redis must never evict keys; it may also live on its own Redis
(``TTS_CACHE_URL``).

An entry is small: the bytes live in the result store (:mod:`tasks.result_store`), and
the hash ``tts:audio:{key}`` holds their ``ref``, ``size``, ``meta`` and ``expires``, the
time until which the store is known to keep the object. A job served from a hit names the
same object (stored once), so a hit must leave the object alive for the job's whole life:
:meth:`AudioCache.get` extends it (``ResultStore.retain``) to ``hold`` seconds from now
(``max(TTS_CACHE_TTL, TTS_RESULT_TTL)``), plus a tenth of ``hold`` of headroom, and only
when ``expires`` says it would end sooner, so most hits cost no call to the store. A hit
whose object is gone counts as a miss and drops the entry. Eviction and DELETE drop entries
only: the object expires by the store's own index, and may still be a job's audio.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, NamedTuple

import redis

from . import keys
from .redis_values import scored_members, text
from .result_store import ResultStore

log = logging.getLogger(__name__)

__all__ = ["AudioCache", "CachedAudio", "cache_key"]

#: Bump when the engine changes audio in a way the model version does not capture.
ENGINE_AUDIO_VERSION = "1"
#: A retain extends an object by ``hold`` and this fraction of it again, so a hot entry calls
#: the store about once per ``hold / 10`` seconds instead of on every hit.
RETAIN_HEADROOM = 0.1


class CachedAudio(NamedTuple):
    """A cache hit: the result store's ref of the audio, its size, its metadata, and the time
    until which the store keeps the object (at least ``hold`` seconds after the hit)."""

    ref: str
    size: int
    meta: dict[str, Any]
    expires_at: float


def cache_key(normalized_text: str, options: dict[str, Any], output_rate: int, model_version: str) -> str:
    """The sha256 over everything that shapes the audio."""
    material = {
        "text": normalized_text,
        "voice": options["voice"],
        "speed": round(float(options["speed"]), 4),
        "format": options["format"],
        "sample_rate": int(output_rate),
        "seed": options.get("seed"),
        "model": model_version,
        "engine": ENGINE_AUDIO_VERSION,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class AudioCache:
    """Encoded audio by content key: small entries in Redis, the bytes in ``results``.

    ``hold``: seconds the audio of a hit must live on (a job made from it names the same
    object); at least ``ttl``, the default.
    """

    def __init__(self, client: redis.Redis, results: ResultStore, ttl: int, max_entry_bytes: int, max_bytes: int,
                 hold: int | None = None) -> None:
        self.redis = client
        self.results = results
        self.ttl = ttl
        self.max_entry_bytes = max_entry_bytes
        self.max_bytes = max_bytes
        self.hold = max(ttl, hold or 0)

    def get(self, key: str) -> CachedAudio | None:
        """The entry's ref, size and metadata, refreshing its place in the eviction order; None on a miss.

        The object is kept ``hold`` seconds from now (a store call only when the entry's
        ``expires`` falls short of that); an entry whose object is gone is dropped: a miss.
        """
        # One round trip: the read and the refresh together. ``ZADD XX`` only moves an entry
        # already indexed and EXPIRE of a missing key does nothing, so a miss changes nothing.
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.audio(key))
        pipe.zadd(keys.AUDIO_INDEX, {key: time.time()}, xx=True)
        pipe.expire(keys.audio(key), self.ttl)
        entry = pipe.execute()[0]
        if not entry:
            return None
        if b"ref" not in entry:  # an entry of the old layout (bytes in Redis), or a partial one: drop it
            self.delete(key)
            return None
        ref = text(entry[b"ref"])
        expires_at = float(entry.get(b"expires") or 0)
        if expires_at < time.time() + self.hold:
            expires_at = self.keep_until()
            if not self.results.retain(ref, expires_at):
                log.info("cache entry %s names audio %s that the result store no longer has; dropped", key, ref)
                self.delete(key)
                return None
            self.redis.hset(keys.audio(key), "expires", repr(expires_at))
        return CachedAudio(ref, int(entry.get(b"size") or 0), json.loads(entry.get(b"meta") or b"{}"), expires_at)

    def keep_until(self) -> float:
        """Until when an object is kept when the cache extends it: ``hold`` from now, plus headroom."""
        return time.time() + self.hold * (1 + RETAIN_HEADROOM)

    def put(self, key: str, data: bytes, meta: dict[str, Any] | None = None, *, ref: str | None = None,
            expires_at: float | None = None) -> bool:
        """Cache audio (and a little metadata: duration, rate) unless it is larger than the entry
        limit; evict least recently used entries past the size bound.

        The bytes go to the result store for ``hold`` seconds, unless ``ref`` says they are
        there already (a job's audio just stored): then the object's life is only extended,
        and not even that when ``expires_at`` (until when the caller stored it) covers ``hold``
        (pass :meth:`keep_until`).
        """
        size = len(data)
        if size > self.max_entry_bytes:
            log.debug("not caching %s: %d bytes is over the %d-byte entry limit", key, size, self.max_entry_bytes)
            return False
        if ref is None or expires_at is None or expires_at < time.time() + self.hold:
            expires_at = self.keep_until()
            if ref is None or not self.results.retain(ref, expires_at):
                ref = self.results.put(data, expires_at)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.audio(key))  # no field of an older layout survives
        pipe.hset(keys.audio(key), mapping={"ref": ref, "size": size, "meta": json.dumps(meta or {}),
                                            "expires": repr(expires_at)})
        pipe.expire(keys.audio(key), self.ttl)
        pipe.zadd(keys.AUDIO_INDEX, {key: time.time()})
        pipe.hget(keys.AUDIO_SIZES, key)
        pipe.hset(keys.AUDIO_SIZES, key, size)
        results = pipe.execute()
        previous = int(results[4] or 0)
        total = int(self.redis.incrby(keys.AUDIO_BYTES, size - previous))
        if total > self.max_bytes:
            self._evict(total)
        return True

    def _evict(self, total: int) -> None:
        while total > self.max_bytes:
            popped = self.redis.zpopmin(keys.AUDIO_INDEX, 1)
            if not popped:
                self.redis.set(keys.AUDIO_BYTES, 0)
                return
            key = scored_members(popped)[0][0]
            pipe = self.redis.pipeline(transaction=True)
            pipe.hget(keys.AUDIO_SIZES, key)
            pipe.hdel(keys.AUDIO_SIZES, key)
            pipe.delete(keys.audio(key))
            size = int(pipe.execute()[0] or 0)
            total = int(self.redis.decrby(keys.AUDIO_BYTES, size))
            log.debug("evicted cache entry %s (%d bytes)", key, size)

    def delete(self, key: str) -> None:
        """Drop one entry."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(keys.AUDIO_SIZES, key)
        pipe.hdel(keys.AUDIO_SIZES, key)
        pipe.zrem(keys.AUDIO_INDEX, key)
        pipe.delete(keys.audio(key))
        size = int(pipe.execute()[0] or 0)
        if size:
            self.redis.decrby(keys.AUDIO_BYTES, size)

    def stats(self) -> dict[str, int]:
        """Entries and bytes held (entries that expired by TTL count until evicted)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.AUDIO_INDEX)
        pipe.get(keys.AUDIO_BYTES)
        entries, size = pipe.execute()
        return {"entries": int(entries or 0), "bytes": int(size or 0), "max_bytes": self.max_bytes}

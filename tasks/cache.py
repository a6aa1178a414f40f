"""The audio cache: content-addressed, size-bounded, with a TTL.

The key hashes everything that changes the audio: the normalised text, the voice,
speed, format, output sample rate, seed and the model's version. The cache bounds its
own size (``TTS_CACHE_MAX_BYTES``; least recently used entries go first) because the
broker's Redis must never evict keys; it may also live on its own Redis
(``TTS_CACHE_URL``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import redis

from . import keys
from .redis_values import as_bytes, scored_members

log = logging.getLogger(__name__)

__all__ = ["AudioCache", "cache_key"]

#: Bump when the engine changes audio in a way the model version does not capture.
ENGINE_AUDIO_VERSION = "1"


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
    """Encoded audio by content key."""

    def __init__(self, client: redis.Redis, ttl: int, max_entry_bytes: int, max_bytes: int) -> None:
        self.redis = client
        self.ttl = ttl
        self.max_entry_bytes = max_entry_bytes
        self.max_bytes = max_bytes

    def get(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """(audio, metadata) of an entry, refreshing its place in the eviction order; None on a miss."""
        # One round trip: the read and the refresh together. ``ZADD XX`` only moves an entry
        # already indexed and EXPIRE of a missing key does nothing, so a miss changes nothing.
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.audio(key))
        pipe.zadd(keys.AUDIO_INDEX, {key: time.time()}, xx=True)
        pipe.expire(keys.audio(key), self.ttl)
        entry = pipe.execute()[0]
        if not entry or b"audio" not in entry:
            return None
        return as_bytes(entry[b"audio"]), json.loads(entry.get(b"meta") or b"{}")

    def put(self, key: str, data: bytes, meta: dict[str, Any] | None = None) -> bool:
        """Store audio (and a little metadata: duration, rate) unless it is larger than the entry
        limit; evict least recently used entries past the size bound."""
        if len(data) > self.max_entry_bytes:
            log.debug("not caching %s: %d bytes is over the %d-byte entry limit", key, len(data), self.max_entry_bytes)
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.audio(key), mapping={"audio": data, "meta": json.dumps(meta or {})})
        pipe.expire(keys.audio(key), self.ttl)
        pipe.zadd(keys.AUDIO_INDEX, {key: time.time()})
        pipe.hget(keys.AUDIO_SIZES, key)
        pipe.hset(keys.AUDIO_SIZES, key, len(data))
        results = pipe.execute()
        previous = int(results[3] or 0)
        total = int(self.redis.incrby(keys.AUDIO_BYTES, len(data) - previous))
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

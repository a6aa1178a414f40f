"""What redis-py takes and returns, with types: the HSET mapping, and decoders for replies.

redis-py types a reply as ``bytes | str`` (``str`` only for a client made with
``decode_responses=True``; ours are not, so replies are bytes). These helpers turn a
reply into the type the caller works with, without a cast, and do nothing else: a
``bytes`` reply decodes exactly as ``value.decode()`` did.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.typing import EncodableT, FieldT

__all__ = ["MAX_INDEX", "HashMapping", "as_bytes", "decode_hash", "members", "scored_members", "text", "text_or_none"]

#: What ``hset(mapping=...)`` takes. ``Mapping`` is invariant in its key type, so a
#: ``dict[str, str]`` is not a ``Mapping[FieldT, EncodableT]``: build hash fields as this.
HashMapping = dict[FieldT, EncodableT]

#: The largest index, offset or count Redis takes (a signed 64-bit integer): ``start + n``
#: past it is "value is not an integer or out of range".
MAX_INDEX = 2**63 - 1


def text(value: bytes | str) -> str:
    """A reply as text (UTF-8)."""
    return value.decode() if isinstance(value, bytes) else value


def text_or_none(value: bytes | str | None) -> str | None:
    """A reply that may be missing (HGET, HMGET, GET), as text or None."""
    return None if value is None else text(value)


def as_bytes(value: bytes | str) -> bytes:
    """A binary reply (stored audio) as bytes."""
    return value.encode() if isinstance(value, str) else value


def decode_hash(data: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """An HGETALL reply with its fields and values as text."""
    return {text(k): text(v) for k, v in data.items()}


def members(rows: Iterable[object]) -> list[str]:
    """A sorted-set reply without scores (ZRANGE, ZREVRANGE, ZPOPMIN's members) as text."""
    out: list[str] = []
    for member in rows:
        if not isinstance(member, (bytes, str)):
            raise TypeError(f"not a sorted-set member: {member!r} (asked with scores?)")
        out.append(text(member))
    return out


def scored_members(rows: Iterable[Any]) -> list[tuple[str, float]]:
    """A ``withscores=True`` sorted-set reply (ZRANGE and kin) as (member, score) pairs.

    redis-py gives tuples under RESP2 and lists under RESP3; either becomes a tuple here.
    """
    pairs: list[tuple[str, float]] = []
    for member, score in rows:
        pairs.append((text(member), float(score)))
    return pairs

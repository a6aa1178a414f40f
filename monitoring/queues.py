"""Read-only views of the Celery broker and the tts-batch stores in Redis.

Kombu's Redis transport keeps each Celery queue as a list, split into priority sub-lists:
``queue`` (priority 0) and ``queue\\x06\\x163``, ``queue\\x06\\x166``, ``queue\\x06\\x169``.
A queue's length is the sum of their ``LLEN``. Messages a worker has taken but not yet
acknowledged (prefetched or running, with ``acks_late``) are not in those lists: kombu
keeps them in the ``unacked`` hash, so they are reported apart.

With RabbitMQ as the broker (``TTS_BROKER_URL=amqp://``) none of those lists exist:
:func:`broker_queue_lengths` then asks RabbitMQ (a passive ``queue_declare`` per queue gives
its ready messages), and :func:`broker_reserved_count` answers None, since AMQP does not
tell how many messages are delivered but unacknowledged; callers report that as unknown.

The tts-batch key names come from ``tasks.keys``, the one table of Redis keys: the only
module of ``tasks`` that monitoring imports (plain names, no Celery, no connection).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence

import redis
from kombu.connection import Connection

from settings import Settings
from tasks import keys

__all__ = [
    "AUDIO_BYTES_KEY",
    "AUDIO_INDEX_KEY",
    "DLQ_INDEX_KEY",
    "KOMBU_SEPARATOR",
    "PRIORITY_STEPS",
    "UNACKED_KEY",
    "amqp_queue_lengths",
    "broker_queue_lengths",
    "broker_reserved_count",
    "cache_stats",
    "dead_letter_count",
    "discover_queues",
    "priority_queue_names",
    "queue_lengths",
    "reserved_count",
]

logger = logging.getLogger(__name__)

#: Separator kombu's Redis transport puts between a queue name and its priority step.
KOMBU_SEPARATOR = "\x06\x16"
#: Kombu's default priority steps (``PRIORITY_STEPS`` in ``kombu.transport.redis``).
PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)
#: Kombu's hash of delivered-but-unacknowledged messages (transport option ``unacked_key``).
UNACKED_KEY = "unacked"
#: Kombu's binding tables: one set per exchange, members ``routing_key SEP pattern SEP queue``.
BINDING_KEY_PATTERN = "_kombu.binding.*"

#: The dead-letter index and the audio cache's accounting (``tasks.keys``).
DLQ_INDEX_KEY = keys.DLQ_INDEX
AUDIO_INDEX_KEY = keys.AUDIO_INDEX
AUDIO_BYTES_KEY = keys.AUDIO_BYTES

#: Exchanges and queues Celery creates for itself (events, remote control): not work queues.
_INTERNAL_MARKERS = ("celeryev", "pidbox")
#: At most this many queues are discovered, so a misbehaving client cannot blow up labels.
MAX_DISCOVERED_QUEUES = 50


def priority_queue_names(queue: str, steps: Sequence[int] = PRIORITY_STEPS) -> list[str]:
    """The Redis list names kombu uses for ``queue``, one per priority step."""
    return [f"{queue}{KOMBU_SEPARATOR}{step}" if step else queue for step in steps]


def queue_lengths(
    client: redis.Redis, queues: Iterable[str], steps: Sequence[int] = PRIORITY_STEPS
) -> dict[str, int]:
    """Messages waiting in each queue (``LLEN`` summed over its priority sub-queues).

    One round trip for all queues. Raises :class:`redis.RedisError` when Redis is unreachable.
    """
    names = list(dict.fromkeys(queues))
    if not names:
        return {}
    pipe = client.pipeline(transaction=False)
    for queue in names:
        for key in priority_queue_names(queue, steps):
            pipe.llen(key)
    sizes = pipe.execute()
    width = len(steps)
    return {
        queue: int(sum(int(s or 0) for s in sizes[i * width : (i + 1) * width]))
        for i, queue in enumerate(names)
    }


def reserved_count(client: redis.Redis, unacked_key: str = UNACKED_KEY) -> int:
    """Messages delivered to workers and not yet acknowledged (``HLEN`` of kombu's hash)."""
    return int(client.hlen(unacked_key))


def dead_letter_count(client: redis.Redis) -> int:
    """Dead-lettered jobs waiting for an operator (``ZCARD tts:dlq``)."""
    return int(client.zcard(DLQ_INDEX_KEY))


def cache_stats(client: redis.Redis) -> dict[str, int]:
    """The audio cache's ``entries`` and ``bytes``, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(AUDIO_INDEX_KEY)
    pipe.get(AUDIO_BYTES_KEY)
    entries, size = pipe.execute()
    try:
        size_bytes = max(0, int(float(size or 0)))
    except (TypeError, ValueError):
        size_bytes = 0
    return {"entries": int(entries or 0), "bytes": size_bytes}


def _is_internal(name: str) -> bool:
    return any(marker in name for marker in _INTERNAL_MARKERS)


def discover_queues(client: redis.Redis, limit: int = MAX_DISCOVERED_QUEUES) -> list[str]:
    """Work queues declared on this broker, read from kombu's binding tables.

    Celery's own event and remote-control queues are left out. Sorted, at most ``limit``.
    Raises :class:`redis.RedisError` when Redis is unreachable.
    """
    found: set[str] = set()
    for key in client.scan_iter(match=BINDING_KEY_PATTERN, count=100):
        key_text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        exchange = key_text[len("_kombu.binding.") :]
        if _is_internal(exchange):
            continue
        for member in client.smembers(key):
            text = member.decode("utf-8", "replace") if isinstance(member, bytes) else str(member)
            queue = text.split(KOMBU_SEPARATOR)[-1]
            if queue and not _is_internal(queue):
                found.add(queue)
        if len(found) >= limit:
            logger.warning("more than %d queues declared on the broker; reporting the first %d", limit, limit)
            break
    return sorted(found)[:limit]


# --- whichever broker the settings name ------------------------------------------------------


def amqp_queue_lengths(broker_url: str, queues: Iterable[str], timeout: float = 2.0) -> dict[str, int]:
    """Messages ready in each queue of a RabbitMQ broker: a passive ``queue_declare`` per queue.

    A passive declare creates nothing; a queue that does not exist yet counts 0. Messages
    delivered but not acknowledged are not in the count (AMQP does not tell them; RabbitMQ's
    management API would). Raises kombu/amqp connection errors when RabbitMQ is unreachable.
    """
    names = list(dict.fromkeys(queues))
    lengths: dict[str, int] = {}
    with Connection(broker_url, connect_timeout=timeout) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1)
        for name in names:
            channel = conn.channel()
            try:
                lengths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except conn.channel_errors:  # NOT_FOUND: declared by nobody yet, so nothing waits in it
                lengths[name] = 0
            finally:
                with contextlib.suppress(*conn.channel_errors, *conn.connection_errors):  # closed by a NOT_FOUND
                    channel.close()
    return lengths


def broker_queue_lengths(settings: Settings, client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting per queue on the configured broker: kombu's Redis lists, or RabbitMQ's queues."""
    if settings.broker_is_amqp:
        return amqp_queue_lengths(settings.celery_broker_url, queues)
    return queue_lengths(client, queues)


def broker_reserved_count(settings: Settings, client: redis.Redis) -> int | None:
    """Messages delivered but unacknowledged on the Redis broker; None on RabbitMQ (AMQP cannot tell)."""
    if settings.broker_is_amqp:
        return None
    return reserved_count(client)

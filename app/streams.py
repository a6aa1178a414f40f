"""Caps on responses that hold a server thread for long: streams cannot stop the API.

gunicorn's gthread worker serves each request on one of a fixed number of threads (the
Procfile: 2 processes x 8), and a streamed response keeps its thread until the stream ends.
Left alone, a handful of clients holding ``/api/metrics/stream`` open would leave no thread
for submits and health checks. So every API process keeps a few *slots* per kind of stream:

* ``metrics``: ``/api/metrics/stream``, at most ``TTS_STREAM_MAX_CLIENTS`` at once, each
  ending after ``TTS_STREAM_MAX_SECONDS`` (the client reconnects);
* ``batch_zip``: ``/v1/batches/<id>/result``, the streamed zip, at most
  ``TTS_BATCH_STREAM_MAX_CLIENTS`` at once;
* ``speech``: ``POST /v1/audio/speech`` with ``stream_format: "sse"``, at most
  ``TTS_SPEECH_STREAM_MAX_CLIENTS`` at once.

A request that finds no free slot is answered at once with 429 ``too_many_streams`` and
``Retry-After``; nothing waits for a slot. A slot is given back when its stream ends, when
the client goes away (the server's next write fails and it closes the response), or when the
response is closed before it was ever sent. The kinds have separate slots, so clients of the
open metrics stream cannot take the downloads' slots.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app

from settings import Settings

from .errors import error_response

log = logging.getLogger(__name__)

__all__ = ["Slot", "StreamLimits", "StreamSlots", "held_response", "install_stream_limits",
           "stream_limits", "too_many_streams"]

#: ``app.extensions`` key of the process's :class:`StreamLimits`.
EXTENSION = "tts_streams"
#: ``Retry-After`` (seconds) of the 429 for one metrics stream too many ...
METRICS_RETRY_AFTER = 10
#: ... and for one batch zip too many (downloads end sooner than streams).
BATCH_ZIP_RETRY_AFTER = 5
#: ... and for one streamed speech answer too many.
SPEECH_RETRY_AFTER = 5


class Slot:
    """One taken place of a :class:`StreamSlots`; :meth:`release` gives it back (once, from any thread)."""

    def __init__(self, owner: StreamSlots) -> None:
        self._owner = owner
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        """Give the place back; calling it again does nothing."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._owner._give_back()


class StreamSlots:
    """At most ``limit`` holders at once in this process: a bounded semaphore, never waited on.

    ``retry_after`` is the number of seconds the 429 for one holder too many tells clients to wait.
    """

    def __init__(self, name: str, limit: int, retry_after: int) -> None:
        if limit < 1:
            raise ValueError(f"{name}: a stream limit must be at least 1, got {limit}")
        self.name = name
        self.limit = limit
        self.retry_after = retry_after
        self._semaphore = threading.BoundedSemaphore(limit)
        self._count_lock = threading.Lock()
        self._in_use = 0

    def try_acquire(self) -> Slot | None:
        """A slot, or None at once when all ``limit`` are taken."""
        if not self._semaphore.acquire(blocking=False):
            return None
        with self._count_lock:
            self._in_use += 1
        return Slot(self)

    def _give_back(self) -> None:
        with self._count_lock:
            self._in_use -= 1
        self._semaphore.release()

    @property
    def in_use(self) -> int:
        """Slots taken now."""
        with self._count_lock:
            return self._in_use


@dataclass(frozen=True)
class StreamLimits:
    """The slots of one API process, one :class:`StreamSlots` per kind of stream."""

    metrics: StreamSlots
    batch_zip: StreamSlots
    speech: StreamSlots

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamLimits:
        """The limits ``settings`` ask for."""
        return cls(metrics=StreamSlots("metrics stream", settings.stream_max_clients, METRICS_RETRY_AFTER),
                   batch_zip=StreamSlots("batch zip", settings.batch_stream_max_clients, BATCH_ZIP_RETRY_AFTER),
                   speech=StreamSlots("speech stream", settings.speech_stream_max_clients, SPEECH_RETRY_AFTER))


def install_stream_limits(app: Flask, settings: Settings) -> None:
    """Give ``app`` (one per API process) its stream slots."""
    app.extensions[EXTENSION] = StreamLimits.from_settings(settings)


def stream_limits() -> StreamLimits:
    """The current app's stream slots."""
    limits: StreamLimits = current_app.extensions[EXTENSION]
    return limits


def too_many_streams(slots: StreamSlots) -> Any:
    """The 429 for a request that found every slot of ``slots`` taken."""
    retry_after = slots.retry_after
    log.warning("refusing a %s: all %d slots of this API process are in use", slots.name, slots.limit)
    return error_response(
        429, "too_many_streams",
        f"this API process already serves {slots.limit} {slots.name}s at once, its limit; "
        f"try again in {retry_after} s", headers={"Retry-After": str(retry_after)})


def held_response(slot: Slot, chunks: Iterable[Any], **response_args: Any) -> Response:
    """A :class:`flask.Response` streaming ``chunks`` that gives ``slot`` back when it is done.

    Done means: the chunks ran out, the server stopped sending them (the client went away,
    or the server is stopping) or the response was closed without being sent. The WSGI
    server closes every response it got, which reaches both the generator's ``finally``
    and ``call_on_close``; :meth:`Slot.release` makes the second one a no-op.
    """

    def guarded() -> Iterator[Any]:
        try:
            yield from chunks
        finally:
            slot.release()

    try:
        response = Response(guarded(), **response_args)
    except BaseException:
        slot.release()
        raise
    response.call_on_close(slot.release)
    return response

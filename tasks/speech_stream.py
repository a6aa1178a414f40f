"""Streamed speech: a worker publishes each finished sentence's audio for the API to relay.

A job submitted by ``POST /v1/audio/speech`` with ``stream_format: "sse"`` carries
``extra["speech_stream"]``. While such a job runs (never in the API: the job goes through
the queue like any other), :class:`SpeechPublisher` encodes each sentence as it comes out of
the engine with :class:`engine.streaming.DeltaEncoder` and adds the new bytes to the Redis
stream ``tts:job:{id}:speech`` (``tasks.keys.job_speech``); the API reads that stream with a
blocking XREAD and sends each entry on as a ``speech.audio.delta`` event. The stored,
non-streamed audio is made and stored exactly as for every other job.

Each entry carries the attempt that wrote it: a retried job writes its sentences again under
a new attempt number, and the reader decides what to relay (``app.openai_compat``). The
last entry of an attempt is ``kind=end``, written before the job's success is, so a reader
that sees the job succeeded has every entry already. The stream lives
``TTS_SPEECH_TIMEOUT`` + 60 s after its last entry (the TTL is renewed by every entry), long
enough for the reader, short enough not to keep a second copy of the audio around.
A fanned-out long text writes nothing here: its parts run on other workers, and the API
sends the stitched audio when the job has succeeded.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis

from engine.streaming import DeltaEncoder
from engine.synthesis import AudioChunk

from . import keys
from .job import Job
from .redis_values import as_bytes
from .runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["STREAM_FLAG", "SpeechPublisher", "StreamEntry", "open_publisher", "read_entries", "stream_ttl"]

#: The ``Job.extra`` field that asks the worker to publish the job's audio as it is made.
STREAM_FLAG = "speech_stream"
#: Seconds the stream outlives its last entry beyond ``TTS_SPEECH_TIMEOUT``.
STREAM_GRACE_SECONDS = 60


def stream_ttl(speech_timeout: float) -> int:
    """The TTL (seconds) of a speech stream, renewed by every entry."""
    return int(speech_timeout) + STREAM_GRACE_SECONDS


@dataclass(frozen=True)
class StreamEntry:
    """One entry of a speech stream: a delta of audio, or the end of an attempt."""

    id: str
    attempt: int
    kind: str
    seq: int
    audio: bytes


class SpeechPublisher:
    """Publishes one attempt's audio deltas; :meth:`finish` writes the tail and the end marker."""

    def __init__(self, redis: Redis, job_id: str, attempt: int, ttl: int, encoder: DeltaEncoder) -> None:
        self.redis = redis
        self.key = keys.job_speech(job_id)
        self.attempt = attempt
        self.ttl = ttl
        self.encoder = encoder
        self._seq = -1
        self._bytes = 0

    def _add(self, kind: str, seq: int, data: bytes) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.key, {"attempt": self.attempt, "kind": kind, "seq": seq, "audio": data})
        pipe.expire(self.key, self.ttl)
        pipe.execute()

    def write(self, piece: AudioChunk) -> None:
        """Encode one sentence and publish what the encoder has ready (nothing when it holds it back)."""
        self._seq = piece.index
        data = self.encoder.write(piece.samples)
        if data:
            self._bytes += len(data)
            self._add("delta", piece.index, data)

    def finish(self) -> None:
        """Publish the encoder's last bytes, then the end of this attempt."""
        data = self.encoder.finish()
        if data:
            self._bytes += len(data)
            self._add("delta", self._seq + 1, data)
        self._add("end", self._seq + 1, b"")
        log.info("speech stream %s: attempt %d published %d bytes", self.key, self.attempt, self._bytes)

    def close(self) -> None:
        """Abort (the attempt failed): stop the encoder; the reader learns the outcome from the job."""
        self.encoder.close()


def open_publisher(rt: Runtime, job: Job) -> SpeechPublisher | None:
    """A publisher for ``job``'s current attempt when its request asked for a stream, else None."""
    if not job.extra.get(STREAM_FLAG):
        return None
    options = job.options()
    info = options.validate(rt.catalog)
    encoder = DeltaEncoder(options.format, options.output_rate(info), input_rate=info.sample_rate)
    return SpeechPublisher(rt.redis, job.id, job.attempts, stream_ttl(rt.settings.speech_timeout), encoder)


def _field(fields: Mapping[Any, Any], name: str) -> bytes:
    value = fields.get(name.encode(), fields.get(name))
    return b"" if value is None else as_bytes(value)


def read_entries(redis: Redis, job_id: str, after: str, block_ms: int | None) -> list[StreamEntry]:
    """Entries of ``job_id``'s speech stream after entry id ``after`` (``"0-0"``: from the start).

    With ``block_ms``, waits up to that long for the first one (XREAD BLOCK); an empty list when
    none came (or the stream does not exist yet).
    """
    reply: list[tuple[Any, list[tuple[Any, Mapping[Any, Any]]]]] = redis.xread(  # type: ignore[assignment]
        {keys.job_speech(job_id): after}, block=block_ms)
    out: list[StreamEntry] = []
    for _name, entries in reply or []:
        for entry_id, fields in entries:
            out.append(StreamEntry(
                id=as_bytes(entry_id).decode(), attempt=int(_field(fields, "attempt") or 0),
                kind=_field(fields, "kind").decode(), seq=int(_field(fields, "seq") or 0),
                audio=_field(fields, "audio")))
    return out

"""The one synthesis pipeline every caller uses (HTTP via tasks, Celery tasks, the CLI).

    text --normalize--> chunks --backend--> AudioChunk per sentence --AudioEncoder--> bytes

:func:`stream` is the generator API; :func:`synthesize` drains it into an encoded
file. Long documents can be split with :func:`prepare` and the groups synthesized
separately with :func:`stream_chunks`, then joined by the caller.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import audio
from .exceptions import EmptyTextError, OptionError
from .pace import residual_tempo
from .stretch import MAX_SPEED, MIN_SPEED, MODEL_MAX_SPEED, MODEL_MIN_SPEED, split_speed, time_stretch
from .text import check_readable, chunk_text, normalize
from .voices import VoiceCatalog, VoiceInfo

log = logging.getLogger(__name__)

__all__ = ["MAX_SPEED", "MIN_SPEED", "MODEL_MAX_SPEED", "MODEL_MIN_SPEED", "AudioChunk", "SynthesisOptions",
           "SynthesisResult", "prepare", "stream", "stream_chunks", "synthesize"]

#: MIN_SPEED..MAX_SPEED (0.25 to 4.0) is what a request may ask for; the voices speak
#: MODEL_MIN_SPEED..MODEL_MAX_SPEED (0.5 to 2.0) themselves, and engine.stretch does the rest
#: (beyond that range, and the residual engine.pace finds inside it).


@dataclass(frozen=True)
class SynthesisOptions:
    """What shapes the audio. Validated by :meth:`validate` against a catalog."""

    voice: str = "heart"
    speed: float = 1.0
    format: str = "wav"
    sample_rate: int | None = None
    seed: int | None = None
    markdown: bool = False

    def validate(self, catalog: VoiceCatalog) -> VoiceInfo:
        """Check every option; returns the voice's info. Raises an :class:`EngineError` subclass."""
        info = catalog.info(self.voice)
        if isinstance(self.speed, bool) or not isinstance(self.speed, (int, float)) or not math.isfinite(self.speed):
            raise OptionError(f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}, got {self.speed!r}")
        if not MIN_SPEED <= float(self.speed) <= MAX_SPEED:
            raise OptionError(f"speed {self.speed} is out of range: use {MIN_SPEED} to {MAX_SPEED}")
        audio.validate_format(self.format)
        if self.sample_rate is not None:
            audio.validate_sample_rate(self.sample_rate)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise OptionError(f"seed must be a non-negative integer, got {self.seed!r}")
        return info

    def output_rate(self, info: VoiceInfo) -> int:
        """The sample rate of the output file."""
        return int(self.sample_rate or info.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for task payloads and cache keys)."""
        return asdict(self)


@dataclass
class AudioChunk:
    """Audio for one chunk (about a sentence) of text, at the voice's native rate."""

    index: int
    text: str
    samples: np.ndarray
    sample_rate: int

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return len(self.samples) / self.sample_rate


@dataclass
class SynthesisResult:
    """An encoded audio file and what it took to make it."""

    audio: bytes
    format: str
    media_type: str
    sample_rate: int
    duration: float
    characters: int
    chunks: int
    voice: str
    synthesis_seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio made per second of work (higher is faster)."""
        return self.duration / self.synthesis_seconds if self.synthesis_seconds > 0 else 0.0


def prepare(text: str, options: SynthesisOptions, catalog: VoiceCatalog) -> list[str]:
    """Normalise and chunk ``text`` for the options' voice.

    Raises :class:`EmptyTextError`, or :class:`UnreadableTextError` when the voice cannot
    read some of it (see :func:`engine.text.check_readable`).
    """
    if not isinstance(text, str):
        raise OptionError("text must be a string")
    info = options.validate(catalog)
    normalized = normalize(text, markdown=options.markdown)
    check_readable(text, info.id, info.family, markdown=options.markdown, normalized=normalized)
    backend = catalog.backend(options.voice)
    chunks = chunk_text(normalized, backend.max_chunk_chars)
    if not chunks:
        raise EmptyTextError()
    return chunks


def stream_chunks(chunks: Iterable[str], options: SynthesisOptions, catalog: VoiceCatalog,
                  seed_offset: int = 0) -> Iterator[AudioChunk]:
    """Synthesize already-prepared chunks, yielding one :class:`AudioChunk` per chunk."""
    backend = catalog.backend(options.voice)
    seed = None if options.seed is None else options.seed + seed_offset
    rng = np.random.default_rng(seed)
    model_speed, stretch = split_speed(float(options.speed))
    for index, chunk in enumerate(chunks):
        samples, speed_one = backend.render(chunk, model_speed, rng)
        # Beyond the voice's own range the stretch does the speed; inside it, it closes what the
        # model's duration rounding leaves short of the speed (engine.pace): one stretch either way.
        tempo = stretch if model_speed == 1.0 else residual_tempo(samples.size, speed_one, model_speed)
        if tempo != 1.0:
            samples = time_stretch(samples, backend.sample_rate, tempo)
        yield AudioChunk(index=index, text=chunk, samples=samples.astype(np.float32, copy=False),
                         sample_rate=backend.sample_rate)


def stream(text: str, options: SynthesisOptions, catalog: VoiceCatalog) -> Iterator[AudioChunk]:
    """Text to audio, one :class:`AudioChunk` per sentence, each as soon as it is ready."""
    return stream_chunks(prepare(text, options, catalog), options, catalog)


def synthesize(text: str, options: SynthesisOptions, catalog: VoiceCatalog,
               on_chunk: Callable[[AudioChunk], None] | None = None) -> SynthesisResult:
    """Text to an encoded audio file in ``options.format``.

    ``on_chunk`` is called after each sentence is synthesized; an exception it raises
    (a cancellation, say) stops the work and releases the encoder.
    """
    started = time.perf_counter()
    info = options.validate(catalog)
    chunks = prepare(text, options, catalog)
    fmt = audio.validate_format(options.format)
    model_seconds = 0.0
    with audio.AudioEncoder(options.format, options.output_rate(info), input_rate=info.sample_rate) as encoder:
        tick = time.perf_counter()
        for piece in stream_chunks(chunks, options, catalog):
            model_seconds += time.perf_counter() - tick
            encoder.write(piece.samples)
            if on_chunk is not None:
                on_chunk(piece)
            tick = time.perf_counter()
        if encoder.duration_seconds <= 0:
            # A voice can read every letter and still say nothing (a Kokoro voice's G2P gives no
            # phonemes for "¿" or "ȾȺ"): a file of no samples is not audio (no decoder opens it).
            raise EmptyTextError(f"voice {info.id} made no sound for this text: nothing in it is something "
                                 "this voice can say")
        data = encoder.finish()
    total = time.perf_counter() - started
    result = SynthesisResult(
        audio=data,
        format=options.format,
        media_type=fmt.media_type,
        sample_rate=encoder.sample_rate,
        duration=encoder.duration_seconds,
        characters=sum(len(c) for c in chunks),
        chunks=len(chunks),
        voice=info.id,
        synthesis_seconds=total,
        timings={"model_seconds": model_seconds, "encode_seconds": max(0.0, total - model_seconds)},
    )
    log.debug("synthesized %d chars with %s in %.2fs (%.1fx real time)", result.characters, info.id, total,
              result.real_time_factor)
    return result

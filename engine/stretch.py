"""Pitch-preserving time stretch: speech faster or slower than a voice can speak by itself.

The voices take a speed of :data:`MODEL_MIN_SPEED` to :data:`MODEL_MAX_SPEED` (0.5 to 2.0)
and speak it themselves; OpenAI's speech API, and so this service, accepts
:data:`MIN_SPEED` to :data:`MAX_SPEED` (0.25 to 4.0). :func:`split_speed` says which part
of a requested speed the model renders and which part :func:`time_stretch` adds.

The stretch is ffmpeg's ``atempo`` filter (WSOLA: the tempo changes, the pitch does not),
run by the ffmpeg binary bundled with ``imageio-ffmpeg`` that already encodes mp3, opus and
aac. One ``atempo`` stage takes a factor of 0.5 to 2.0 (newer ffmpeg allows 0.5 to 100 but
recommends chaining, which keeps each stage's window sensible), so larger factors are a
chain of stages whose product is the factor.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from .audio import run_ffmpeg, to_pcm16
from .exceptions import OptionError

log = logging.getLogger(__name__)

__all__ = ["MAX_SPEED", "MIN_SPEED", "MODEL_MAX_SPEED", "MODEL_MIN_SPEED", "atempo_chain", "split_speed",
           "time_stretch"]

#: The speeds a request may ask for (OpenAI's range), for every front end of the service.
MIN_SPEED = 0.25
MAX_SPEED = 4.0
#: The speeds the voices speak by themselves.
MODEL_MIN_SPEED = 0.5
MODEL_MAX_SPEED = 2.0
#: The range of one ``atempo`` stage.
_ATEMPO_MIN = 0.5
_ATEMPO_MAX = 2.0
_STRETCH_TIMEOUT = 120.0


def split_speed(speed: float) -> tuple[float, float]:
    """(speed the model speaks at, tempo factor the stretch adds) for a requested ``speed``.

    Inside the voices' own range the model does it all (factor 1.0). Beyond it the model
    speaks at its own pace (1.0) and the whole speed is a time stretch: the voices do not
    follow their speed setting exactly (measured in docs/openai.md), so stretching from a
    model speed at the edge of its range would miss the requested ratio by the model's error
    times the stretch, while a stretch from speed 1 is exact.
    """
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise OptionError(f"speed {speed} is out of range: use {MIN_SPEED} to {MAX_SPEED}")
    if MODEL_MIN_SPEED <= speed <= MODEL_MAX_SPEED:
        return speed, 1.0
    return 1.0, speed


def atempo_chain(factor: float) -> str:
    """The ffmpeg filter graph for a tempo ``factor``: ``atempo`` stages, each within 0.5..2.0."""
    if not math.isfinite(factor) or factor <= 0:
        raise OptionError(f"a tempo factor must be a positive number, got {factor!r}")
    stages: list[float] = []
    rest = factor
    while rest > _ATEMPO_MAX:
        stages.append(_ATEMPO_MAX)
        rest /= _ATEMPO_MAX
    while rest < _ATEMPO_MIN:
        stages.append(_ATEMPO_MIN)
        rest /= _ATEMPO_MIN
    stages.append(rest)
    return ",".join(f"atempo={s:.6f}" for s in stages)


#: Silence put after the input so that atempo's last windows carry it, not the speech.
STRETCH_TAIL_SECONDS = 0.25


def time_stretch(samples: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """``samples`` (float32 mono) played ``factor`` times as fast, pitch unchanged.

    The result has exactly ``round(len(samples) / factor)`` samples at the same ``sample_rate``.
    atempo works in windows and holds the last ones back, so a short input (a word, under
    about 50 ms) came out empty or too long: the input gets :data:`STRETCH_TAIL_SECONDS` of
    silence after it, and the output is cut (or padded with silence) to the exact length.
    A factor of 1 returns the input as it is. Raises :class:`EncodingError` when ffmpeg fails.
    """
    x = np.asarray(samples, dtype=np.float32)
    if factor == 1.0 or x.size == 0:
        return x
    want = max(1, round(x.size / factor))
    x = np.concatenate([x, np.zeros(int(STRETCH_TAIL_SECONDS * sample_rate), dtype=np.float32)])
    graph = atempo_chain(factor)
    pcm = to_pcm16(np.clip(np.nan_to_num(x), -1.0, 1.0))
    stretched = run_ffmpeg(["-f", "s16le", "-ar", str(int(sample_rate)), "-ac", "1", "-i", "pipe:0",
                            "-filter:a", graph, "-f", "f32le", "-ac", "1", "pipe:1"], pcm, "time stretch",
                           _STRETCH_TIMEOUT)
    out = np.frombuffer(stretched, "<f4").astype(np.float32)[:want]
    if out.size < want:
        out = np.concatenate([out, np.zeros(want - out.size, dtype=np.float32)])
    log.debug("stretched %d samples by %.3f (%s): %d samples", samples.size, factor, graph, out.size)
    return out

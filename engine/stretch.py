"""Pitch-preserving time stretch: speech faster or slower than a voice can speak by itself.

The voices take a speed of :data:`MODEL_MIN_SPEED` to :data:`MODEL_MAX_SPEED` (0.5 to 2.0)
and speak it themselves; OpenAI's speech API, and so this service, accepts
:data:`MIN_SPEED` to :data:`MAX_SPEED` (0.25 to 4.0). :func:`split_speed` says which part
of a requested speed the model renders and which part :func:`time_stretch` adds.

The stretch is ffmpeg's ``atempo`` filter (WSOLA: the tempo changes, the pitch does not),
run in this process by ffmpeg's libavfilter through PyAV, the library that already encodes
aac and opus (until then each stretched sentence started the bundled ffmpeg binary, whose
output this matches sample for sample). One ``atempo`` stage takes a factor of 0.5 to 2.0
(newer ffmpeg allows 0.5 to 100 but recommends chaining, which keeps each stage's window
sensible), so larger factors are a chain of stages whose product is the factor.
"""
from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np

from .audio import to_pcm16
from .exceptions import EncodingError, OptionError

log = logging.getLogger(__name__)

__all__ = ["MAX_SPEED", "MIN_SPEED", "MODEL_MAX_SPEED", "MODEL_MIN_SPEED", "atempo_chain", "atempo_stages",
           "split_speed", "time_stretch"]

#: The speeds a request may ask for (OpenAI's range), for every front end of the service.
MIN_SPEED = 0.25
MAX_SPEED = 4.0
#: The speeds the voices speak by themselves.
MODEL_MIN_SPEED = 0.5
MODEL_MAX_SPEED = 2.0
#: The range of one ``atempo`` stage.
_ATEMPO_MIN = 0.5
_ATEMPO_MAX = 2.0


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


def atempo_stages(factor: float) -> list[float]:
    """The ``atempo`` factors for a tempo ``factor``: stages each within 0.5..2.0 whose product is ``factor``."""
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
    return stages


def atempo_chain(factor: float) -> str:
    """The ffmpeg filter graph for a tempo ``factor``, as ffmpeg's ``-filter:a`` spells it."""
    return ",".join(f"atempo={s:.6f}" for s in atempo_stages(factor))


#: Silence put after the input so that atempo's last windows carry it, not the speech.
STRETCH_TAIL_SECONDS = 0.25


def time_stretch(samples: np.ndarray, sample_rate: int, factor: float) -> np.ndarray:
    """``samples`` (float32 mono) played ``factor`` times as fast, pitch unchanged.

    The result has exactly ``round(len(samples) / factor)`` samples at the same ``sample_rate``.
    atempo works in windows and holds the last ones back, so a short input (a word, under
    about 50 ms) came out empty or too long: the input gets :data:`STRETCH_TAIL_SECONDS` of
    silence after it, and the output is cut (or padded with silence) to the exact length.
    A factor of 1 returns the input as it is. Raises :class:`EncodingError` when the filter fails.
    """
    x = np.asarray(samples, dtype=np.float32)
    if factor == 1.0 or x.size == 0:
        return x
    want = max(1, round(x.size / factor))
    x = np.concatenate([x, np.zeros(int(STRETCH_TAIL_SECONDS * sample_rate), dtype=np.float32)])
    stages = atempo_stages(factor)
    out = _atempo(np.frombuffer(to_pcm16(x), "<i2"), int(sample_rate), stages)[:want]
    if out.size < want:
        out = np.concatenate([out, np.zeros(want - out.size, dtype=np.float32)])
    log.debug("stretched %d samples by %.3f (%d atempo stages): %d samples", samples.size, factor, len(stages),
              out.size)
    return out


def _atempo(pcm: np.ndarray, rate: int, stages: list[float]) -> np.ndarray:
    """``pcm`` (int16 mono) through a chain of ``atempo`` filters; float32 out, scaled as ffmpeg's f32le."""
    import av  # imported here: ffmpeg's libraries cost about 18 MB of memory, only a stretch needs them here

    try:
        graph = av.filter.Graph()
        nodes = [graph.add_abuffer(format="s16", sample_rate=rate, layout="mono", time_base=Fraction(1, rate))]
        nodes += [graph.add("atempo", f"{stage:.6f}") for stage in stages]
        nodes.append(graph.add("abuffersink"))
        graph.link_nodes(*nodes).configure()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        graph.push(frame)
        graph.push(None)
        planes = []
        while True:
            try:
                out = graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            planes.append(out.to_ndarray())
    except (av.FFmpegError, ValueError) as exc:
        raise EncodingError(f"time stretch failed: {exc}") from exc
    if not planes:
        return np.zeros(0, np.float32)
    stretched: np.ndarray = np.concatenate(planes, axis=1)[0].astype(np.float32) / 32768.0  # s16 to float as ffmpeg does
    return stretched

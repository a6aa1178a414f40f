"""Why a voice's own speed is not the speed asked for, and the residual tempo that makes it so.

A voice renders a speed by dividing each token's predicted duration by it, then making the
result a whole number of frames. That rounding does not scale with the speed, and it is
the whole of the shortfall (measured with ``/tmp`` probes on the models' own duration
tensors; the edge silence of a sentence scales with the speed like the rest of it):

* **Piper (VITS, ``joe``)** takes ``ceil(w * length_scale)`` frames of 256 samples per token,
  and a Piper sentence has two tokens per phoneme (a pad between every two), a third of
  them shorter than one frame. Whatever the speed, the ceiling adds about half a frame per
  token, and a pad stays one frame: about a quarter of a sentence's length at speed 1 does
  not scale. At speed 2 a sentence came out 1.57 times as short, at 0.5 1.77 times as long.
* **hibari (``heart``)** predicts durations that are whole units of 600 samples (25 ms at
  24 kHz, distilled from Kokoro's integer durations), divides them by the speed, rounds
  and keeps at least one unit per token. Below speed 1 that is nearly exact; above it the
  one- and two-unit tokens (three quarters of them) cannot get shorter, or not by the
  ratio asked: 1.87 at speed 2, and 1.16 at 1.25 but 1.50 at 1.4.
* **Kokoro-82M (the ``jf_*``/``jm_*`` voices)** rounds a continuous duration: within 2-3% at
  0.5 and 2.0, no correction.

The length a sentence would have at speed 1 is not known without synthesizing it twice,
but the rounding is: for ``n`` tokens of a family whose rounding adds ``e(s)`` units per
token on average at speed ``s`` (relative to what it adds at speed 1), a run of ``L`` units
at speed ``s`` would be ``s * L - n * e(s)`` units at speed 1 (:func:`speed_one_length`).
:func:`rounding_excess` computes ``e(s)`` from the family's rounding rule and its measured
share of tokens of each duration (the model's own duration tensor, read once over
tests/data; the shares live with the backends). The sentence then gets a pitch-preserving
time stretch (:func:`engine.stretch.time_stretch`, ffmpeg's ``atempo``) by
:func:`residual_tempo`, the factor between what the model made and the speed-1 length
divided by the speed: at 2.0 about 1.07 for ``heart`` and 1.25 for ``joe``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

__all__ = ["MIN_CORRECTION", "Rounding", "residual_tempo", "rounding_excess", "speed_one_length"]

#: How a family makes whole units of a token's duration divided by the speed.
Rounding = Literal["ceil", "round"]

#: A residual tempo closer to 1 than this is left alone (not worth an ffmpeg run).
MIN_CORRECTION = 0.01


def _ceil(value: float) -> float:
    return float(math.ceil(value - 1e-9))


def _round(value: float) -> float:
    """``max(1, round(value))``, a tie counted as half of each side (the durations are only nearly whole)."""
    low = math.floor(value)
    frac = value - low
    rounded = low + 0.5 if abs(frac - 0.5) < 1e-9 else float(low + (frac > 0.5))
    return max(1.0, rounded)


_RULES: dict[str, Callable[[float], float]] = {"ceil": _ceil, "round": _round}


def rounding_excess(speed: float, shares: Mapping[float, float], rule: Rounding) -> float:
    """Units per token the rounding adds at ``speed`` (in speed-1 units), less what it adds at speed 1.

    ``shares`` maps a token's duration at speed 1 (in units, before rounding) to the share of
    tokens that have it; ``rule`` is how the model makes whole units of ``duration / speed``:
    ``"ceil"`` (Piper) or ``"round"`` to at least one unit (hibari).
    """
    to_whole = _RULES[rule]
    total = sum(shares.values())
    if total <= 0:
        return 0.0
    return sum(share * (speed * to_whole(d / speed) - to_whole(d)) for d, share in shares.items()) / total


def speed_one_length(length: float, tokens: int, speed: float, excess: float) -> float:
    """The length (in the unit of ``length``) a run of ``tokens`` tokens made at ``speed`` would have at speed 1.

    ``excess``: the family's rounding excess per token at this speed, in the same unit.
    Never less than the run's own length times ``min(speed, 1)`` halved: an estimate is not
    allowed to turn a run into nothing.
    """
    estimate = speed * length - tokens * excess
    return max(estimate, 0.5 * length * min(speed, 1.0))


def residual_tempo(length: float, speed_one: float, speed: float) -> float:
    """Tempo factor that turns ``length`` (made at ``speed``) into ``speed_one / speed``; 1.0 within :data:`MIN_CORRECTION`."""
    if length <= 0 or speed_one <= 0:
        return 1.0
    factor = speed * length / speed_one
    return 1.0 if abs(factor - 1.0) < MIN_CORRECTION else factor

"""engine.stretch: the speed split and ffmpeg's atempo chain, on a synthetic signal (no voice)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from engine.exceptions import OptionError
from engine.stretch import MAX_SPEED, MIN_SPEED, atempo_chain, atempo_stages, split_speed, time_stretch

RATE = 24000


def tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / RATE)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("speed", "expected"), [
    (1.0, (1.0, 1.0)), (0.5, (0.5, 1.0)), (2.0, (2.0, 1.0)), (1.3, (1.3, 1.0)),
    (0.25, (1.0, 0.25)), (0.4, (1.0, 0.4)), (3.0, (1.0, 3.0)), (4.0, (1.0, 4.0)),
])
def test_split_speed(speed: float, expected: tuple[float, float]) -> None:
    assert split_speed(speed) == expected


@pytest.mark.parametrize("speed", [0.2, 4.01, 0.0, -1.0])
def test_split_speed_refuses_out_of_range(speed: float) -> None:
    with pytest.raises(OptionError):
        split_speed(speed)


def test_atempo_chain_stages_stay_in_range() -> None:
    for factor in (0.25, 0.3, 0.5, 1.7, 2.0, 3.0, 4.0):
        stages = [float(s.split("=")[1]) for s in atempo_chain(factor).split(",")]
        assert all(0.5 <= s <= 2.0 for s in stages), (factor, stages)
        assert np.prod(stages) == pytest.approx(factor, rel=1e-5)
    assert atempo_chain(4.0).count("atempo") == 2
    assert atempo_chain(0.25).count("atempo") == 2


@pytest.mark.parametrize("factor", [MIN_SPEED, 0.5, 2.0, 3.0, MAX_SPEED])
def test_time_stretch_changes_duration_not_pitch(factor: float) -> None:
    x = tone(4.0)
    y = time_stretch(x, RATE, factor)
    assert y.dtype == np.float32
    assert len(x) / len(y) == pytest.approx(factor, rel=0.02)
    assert dominant_frequency(y) == pytest.approx(220.0, abs=3.0)


def test_time_stretch_of_one_or_nothing_is_the_input() -> None:
    x = tone(0.5)
    assert time_stretch(x, RATE, 1.0) is x
    assert time_stretch(np.zeros(0, np.float32), RATE, 2.0).size == 0


@pytest.mark.parametrize("samples", [1, 10, 100, 500, 1000, 2400])
@pytest.mark.parametrize("factor", [0.25, 0.5, 3.0, 4.0])
def test_a_short_input_keeps_its_sound_and_gets_the_exact_length(samples, factor):
    """Found by schemathesis: atempo dropped inputs under about 50 ms (an empty mp3 that no decoder opens)."""
    rate = 24000
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(samples) / rate)).astype(np.float32)
    out = time_stretch(tone, rate, factor)
    assert out.size == max(1, round(samples / factor))
    if samples >= 100:
        assert float(np.sqrt(np.mean(out ** 2))) > 0.05  # the tone is there, not silence


def test_the_stretch_runs_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """atempo through ffmpeg's libavfilter in-process: a stretched sentence starts no ffmpeg."""

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    out = time_stretch(tone(1.0), RATE, 1.5)
    assert len(out) == round(RATE / 1.5) and dominant_frequency(out) == pytest.approx(220, abs=5)


def test_atempo_stages_multiply_to_the_factor() -> None:
    for factor in (0.25, 0.3, 0.5, 1.7, 2.0, 3.9, 4.0):
        stages = atempo_stages(factor)
        assert all(0.5 <= s <= 2.0 for s in stages) and np.prod(stages) == pytest.approx(factor)
        assert atempo_chain(factor) == ",".join(f"atempo={s:.6f}" for s in stages)

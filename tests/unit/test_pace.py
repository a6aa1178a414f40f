"""engine.pace: the residual tempo that makes a voice's duration rounding follow the speed."""
from __future__ import annotations

import math

import pytest

from engine.pace import MIN_CORRECTION, residual_tempo, rounding_excess, speed_one_length


def test_whole_durations_rounded_to_at_least_one_unit() -> None:
    # one-unit tokens stay one unit at speed 2: in speed-1 units that is one unit too many each
    assert rounding_excess(2.0, {1: 1.0}, "round") == pytest.approx(1.0)
    # two units at speed 2 are exactly one
    assert rounding_excess(2.0, {2: 1.0}, "round") == pytest.approx(0.0)
    # three units at 2.0 is a tie (1.5): half become one unit, half two
    assert rounding_excess(2.0, {3: 1.0}, "round") == pytest.approx(0.0)
    # below speed 1 whole units scale exactly at 0.5
    assert rounding_excess(0.5, {1: 0.5, 2: 0.3, 3: 0.2}, "round") == pytest.approx(0.0)


def test_ceil_of_durations() -> None:
    # 0.4 frames: one frame at speed 1 and at speed 2, which in speed-1 units is two
    assert rounding_excess(2.0, {0.4: 1.0}, "ceil") == pytest.approx(1.0)
    # 1.5 frames: two at speed 1, one at speed 2 (= two in speed-1 units)
    assert rounding_excess(2.0, {1.5: 1.0}, "ceil") == pytest.approx(0.0)
    assert rounding_excess(1.0, {0.4: 0.5, 1.5: 0.5}, "ceil") == 0.0
    assert rounding_excess(2.0, {}, "ceil") == 0.0


def test_speed_one_length_takes_off_what_the_rounding_added() -> None:
    # 10 one-unit tokens at speed 2 make 10 units; at speed 1 they were 10 units, not 20
    excess = rounding_excess(2.0, {1: 1.0}, "round")
    assert speed_one_length(10, 10, 2.0, excess) == pytest.approx(10.0)
    # a proportional family: speed times the length
    assert speed_one_length(300, 7, 2.0, 0.0) == 600
    # an estimate never makes a run into nothing
    assert speed_one_length(100, 1000, 2.0, 5.0) == pytest.approx(50.0)


def test_residual_tempo() -> None:
    # made 10 units at speed 2 of what is 10 at speed 1: it should be 5, a tempo of 2
    assert residual_tempo(10, 10, 2.0) == pytest.approx(2.0)
    # slower than asked at 0.5: 18 units of a 10-unit run should be 20, a tempo below 1
    assert residual_tempo(18, 10, 0.5) == pytest.approx(0.9)
    # close enough is left alone, and nothing to go on is no stretch
    assert residual_tempo(100, 200 * (1 + MIN_CORRECTION / 2), 2.0) == 1.0
    assert residual_tempo(0, 10, 2.0) == 1.0
    assert residual_tempo(10, 0, 2.0) == 1.0


def test_measured_shares_give_the_measured_shortfall() -> None:
    from engine.backends import HIBARI_DURATION_SHARES, PIPER_DURATION_SHARES

    assert math.isclose(sum(HIBARI_DURATION_SHARES.values()), 1.0, abs_tol=0.01)
    assert math.isclose(sum(PIPER_DURATION_SHARES.values()), 1.0, abs_tol=0.01)
    # Piper at 2.0: 0.59 frames per token does not scale (measured on the model's durations: 0.594)
    assert rounding_excess(2.0, PIPER_DURATION_SHARES, "ceil") == pytest.approx(0.59, abs=0.01)
    # hibari is exact at 0.5 and not at 2.0
    assert rounding_excess(0.5, HIBARI_DURATION_SHARES, "round") == pytest.approx(0.0)
    assert rounding_excess(2.0, HIBARI_DURATION_SHARES, "round") > 0.2

"""One speed range, 0.25 to 4.0, for POST /v1/jobs: the voice's own speed inside 0.5..2.0, a time stretch beyond.

Measured ratio = duration at speed 1 / duration at speed s, which should be s.
"""
from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration

TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith slipped "
        "quickly through the glass doors of Victory Mansions.")
#: Allowed relative error of the ratio: 5% where the time stretch does it (and at 0.5, where the voice
#: tracks it); at 2.0 the voice's own speed falls short (heart: ratio 1.82 to 1.89, measured).
TOLERANCE = {0.25: 0.05, 0.5: 0.05, 2.0: 0.10, 4.0: 0.05}


def duration(stack: Any, speed: float, text: str) -> float:
    r = stack.client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": "wav", "speed": speed})
    assert r.status_code in (200, 202), r.get_json()
    done = stack.wait_for(r.get_json()["id"])
    assert done["status"] == "succeeded", done
    return float(done["audio"]["duration_seconds"])


def test_speed_ratio_across_the_range(stack: Any) -> None:
    text = f"{TEXT} Take {uuid.uuid4().hex[:6]}."
    base = duration(stack, 1.0, text)
    ratios = {s: base / duration(stack, s, text) for s in TOLERANCE}
    print("speed ratios:", {s: round(r, 3) for s, r in ratios.items()})
    for speed, ratio in ratios.items():
        assert abs(ratio / speed - 1) <= TOLERANCE[speed], (speed, ratio, ratios)


@pytest.mark.parametrize("speed", [0.2, 4.5])
def test_speed_outside_the_range_is_a_400(stack: Any, speed: float) -> None:
    r = stack.client.post("/v1/jobs", json={"text": "Too far.", "voice": "heart", "speed": speed})
    assert r.status_code == 400, r.get_json()
    assert "speed" in r.get_json()["error"]["message"]

"""One speed range, 0.25 to 4.0, for POST /v1/jobs: the voice's own speed inside 0.5..2.0, a time stretch beyond.

Measured ratio = duration at speed 1 / duration at speed s, which should be s, within 5%, for each voice
family (hibari, Piper, Kokoro-82M).
"""
from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration

TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith slipped "
        "quickly through the glass doors of Victory Mansions.")
JAPANESE = "今日はとても良い天気です。私は公園を散歩しました。"
#: Allowed relative error of the ratio at every measured speed: the model renders 0.5 and 2.0 (with the
#: residual stretch of engine.pace), the time stretch alone 0.25 and 4.0.
TOLERANCE = 0.05


def duration(stack: Any, voice: str, speed: float, text: str) -> float:
    r = stack.client.post("/v1/jobs", json={"text": text, "voice": voice, "format": "wav", "speed": speed})
    assert r.status_code in (200, 202), r.get_json()
    done = stack.wait_for(r.get_json()["id"])
    assert done["status"] == "succeeded", done
    return float(done["audio"]["duration_seconds"])


def assert_ratios(stack: Any, voice: str, text: str, speeds: tuple[float, ...]) -> None:
    text = f"{text} {uuid.uuid4().hex[:6]}." if voice != "jf_alpha" else f"{text}{uuid.uuid4().int % 1000}。"
    base = duration(stack, voice, 1.0, text)
    ratios = {s: base / duration(stack, voice, s, text) for s in speeds}
    print(f"{voice} speed ratios:", {s: round(r, 3) for s, r in ratios.items()})
    for speed, ratio in ratios.items():
        assert abs(ratio / speed - 1) <= TOLERANCE, (voice, speed, ratio, ratios)


def test_speed_ratio_across_the_range(stack: Any) -> None:
    assert_ratios(stack, "heart", f"{TEXT} Take", (0.25, 0.5, 2.0, 4.0))


def test_piper_speed_ratio_in_the_voices_range(stack: Any) -> None:
    assert_ratios(stack, "joe", f"{TEXT} Take", (0.5, 2.0))


def test_kokoro_japanese_speed_ratio_in_the_voices_range(stack: Any, japanese_g2p: None) -> None:
    assert_ratios(stack, "jf_alpha", JAPANESE, (0.5, 2.0))


@pytest.mark.parametrize("speed", [0.2, 4.5])
def test_speed_outside_the_range_is_a_400(stack: Any, speed: float) -> None:
    r = stack.client.post("/v1/jobs", json={"text": "Too far.", "voice": "heart", "speed": speed})
    assert r.status_code == 400, r.get_json()
    assert "speed" in r.get_json()["error"]["message"]

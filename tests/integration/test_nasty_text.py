"""Hostile text through the real worker and every voice family: each job ends, none hangs,
and a text that cannot be spoken fails with a clear error instead of crashing a worker."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

NASTY = [
    "a" * 2500,                                   # one enormous word, over the fan-out threshold
    "!!! ??? ... ,,, ;;; ---",                     # punctuation only
    "Zero\u200bwidth\u200d joiners\ufeff and soft\u00adhyphens.",
    "Combining: e\u0301 a\u0308 n\u0303, and Z\u0335\u0321a\u0336l\u0337g\u0334o\u0338 text.",
    "Right to left: \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 then English.",
    "Mixed scripts: \u3053\u3093\u306b\u3061\u306f and \u4f60\u597d and \u043f\u0440\u0438\u0432\u0435\u0442.",
    "Control\x00chars\x07and\x1b[31mANSI\x1b[0m codes.",
    "Numbers 1e308 -0 3.14159265358979323846 1,000,000,000,000 0x1F 10^100.",
    "<script>alert('x')</script> {\"json\": true} $(rm -rf /) `backticks`",
    "\U0001f600" * 50 + " finally words.",
    "Line\n\n\n\nbreaks\r\n\r\nand\ttabs\t\teverywhere.",
]


@pytest.mark.parametrize("voice", ["heart", "joe", "jm_kumo"])
def test_hostile_texts_end_cleanly(stack, voice):
    client = stack.client
    ids = []
    for text in NASTY:
        r = client.post("/v1/jobs", json={"text": text, "voice": voice, "format": "wav", "cache": False})
        if r.status_code == 400:  # refused up front: that is a clear answer too
            assert r.get_json()["error"]["code"] in ("empty_text", "invalid_request", "unreadable_text")
            continue
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    assert ids
    for job_id in ids:
        done = stack.wait_for(job_id, timeout=300)
        if done["status"] == "failed":
            assert done["error"]["message"], done
        else:
            assert done["status"] == "succeeded", done
            assert client.get(f"/v1/jobs/{job_id}/audio").status_code == 200
    # The worker is still alive and well after all that.
    assert all(w.proc.poll() is None for w in stack.workers)

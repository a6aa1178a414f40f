"""Text a voice's G2P cannot read, through the real API, queue, worker and voices.

Each text is either folded into something the voice reads (202, then succeeded with audio)
or refused at submit (400 ``unreadable_text`` naming the character): never accepted and
then failed. In production "The 1¹ thing." style texts were accepted for heart and then
dead-lettered by hibari's G2P (ValueError from int("¹")).
"""
from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")]

TEXTS = [
    "The 1\u00b9 thing.",
    "See the note [\u00b9] and \u00b9x, and \u2474 \u2488 \u24f5 \u2776 \u2780.",
    "x\u00b2 plus 10\u2076, H\u2082O and \u00bd cup, 1\u00bd cups.",
    "Chapter \u216b: \U0001d401\U0001d428\U0001d425\U0001d41d \uff21\uff22\uff23 \uff11\uff12\uff13 \ufb01ne.",
    "Digits \u0663\u0664, \u0967\u0968 and \u1369, \U00011052.",
    "Stray \u0301marks, \u202econtrols\u202c, \ue000private and \U0010ffff unassigned.",
    "Hello \u4f60\u597d world.",
    "\uc548\ub155\ud558\uc138\uc694, friend.",
    "Lone \ud800 surrogate.",
]
# Must be accepted: folding makes them readable for every voice.
FOLDED = TEXTS[:6]
# (voice, text index) -> the character the 400 must name, with its U+ code and offset.
REFUSED = {
    ("heart", 6): "'\u4f60' (U+4F60) at offset 6",
    ("heart", 7): "'\uc548' (U+C548) at offset 0",
    ("jm_kumo", 7): "'\uc548' (U+C548) at offset 0",
    # Neither speakable nor storable (it was a 500: Redis cannot encode it).
    **{(voice, 8): "'\\ud800' (U+D800) at offset 5" for voice in ("heart", "joe", "jm_kumo")},
}


def post(client: Any, text: str, voice: str) -> Any:
    # A fresh sentence each run, so no earlier run's cached audio answers instead of a worker.
    return client.post("/v1/jobs", json={"text": f"{text} Run {uuid.uuid4().hex[:6]}.", "voice": voice,
                                         "format": "wav", "cache": False})


@pytest.mark.usefixtures("japanese_g2p")
@pytest.mark.parametrize("voice", ["heart", "joe", "jm_kumo"])
def test_unreadable_text_is_folded_or_refused_never_dead_lettered(stack: Any, voice: str) -> None:
    client = stack.client
    accepted = []
    for index, text in enumerate(TEXTS):
        r = post(client, text, voice)
        body = r.get_json()
        if (voice, index) in REFUSED:
            assert r.status_code == 400, (text, body)
            assert body["error"]["code"] == "unreadable_text"
            assert f"voice {voice} cannot read" in body["error"]["message"]
            assert REFUSED[(voice, index)] in body["error"]["message"], body
            continue
        assert r.status_code == 202, (voice, text, body)
        accepted.append((text, body["id"]))
    assert {text for text, _ in accepted} >= set(FOLDED)
    for text, job_id in accepted:
        done = stack.wait_for(job_id, timeout=300)
        assert done["status"] == "succeeded", (voice, text, done)
        assert done["audio"]["duration_seconds"] > 0.5, (voice, text, done)
        assert client.get(f"/v1/jobs/{job_id}/audio").status_code == 200


def test_a_batch_refuses_the_unreadable_input_alone(stack: Any) -> None:
    r = stack.client.post("/v1/batches", json={"inputs": [
        {"text": f"Footnote\u00b9 first. {uuid.uuid4().hex[:6]}."},
        {"text": "\u4f60\u597d\u4e16\u754c"},
    ], "defaults": {"voice": "heart", "format": "wav"}})
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert [(x["index"], x["error"]["code"]) for x in body["rejected"]] == [(1, "unreadable_text")]
    assert "'\u4f60' (U+4F60) at offset 0" in body["rejected"][0]["error"]["message"]

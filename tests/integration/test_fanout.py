"""Long documents: one job fanned out over both worker processes and encoded once, in order."""
from __future__ import annotations

import os
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

import engine
from engine.audio import AudioEncoder, decode

if TYPE_CHECKING:
    from conftest import Corpus

pytestmark = pytest.mark.integration


def chapter(corpus: Corpus, chars: int) -> str:
    """The first ``chars`` or so characters of the corpus chapter, cut after a paragraph, tagged unique."""
    text = corpus.text("long/chapter.txt")
    cut = text.find("\n\n", chars)
    return text[: cut if cut > 0 else chars] + f"\n\nThis copy is number {uuid.uuid4().hex[:6]}."


def expected_seconds(stack: Any, text: str, voice: str = "heart") -> float:
    """How long the same text lasts when synthesized whole, in this process."""
    catalog = stack.app.extensions["tts"]["runtime"].catalog
    return engine.synthesize(text, engine.SynthesisOptions(voice=voice, format="pcm"), catalog).duration


def part_keys(stack: Any, job_id: str, wait: float = 10.0) -> list[bytes]:
    """The job's leftover part keys, after giving the stitcher ``wait`` seconds to delete them."""
    deadline = time.monotonic() + wait
    while True:
        found = list(stack.redis.scan_iter(f"tts:job:{job_id}:part*"))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_long_text_uses_both_workers_and_is_stitched_in_order(stack, corpus):
    client = stack.client
    text = chapter(corpus, 6000)
    assert len(text) > stack.settings.chunk_fanout_chars * 2
    r = client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": "mp3"})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    done = stack.wait_for(job_id, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["characters"] == len(text)

    history = done["history"]
    fanned = [h for h in history if h.get("outcome") == "fanned_out"]
    parts = [h for h in history if h.get("outcome") == "part_succeeded"]
    assert len(fanned) == 1
    total = fanned[0]["parts"]
    assert total >= 5  # about fanout_part_chars (1,000) each
    assert sorted(h["part"] for h in parts) == list(range(total))
    assert len({h["pid"] for h in parts}) == 2, "the parts should run on both worker processes"
    assert any(h["lead"] for h in parts) and not all(h["lead"] for h in parts)
    assert history[-1]["outcome"] == "succeeded"

    audio = client.get(f"/v1/jobs/{job_id}/audio")
    assert audio.status_code == 200 and audio.mimetype == "audio/mpeg"
    assert len(audio.data) == done["audio"]["bytes"]
    samples, rate = decode(audio.data, "mp3")
    assert rate == 24000
    seconds = len(samples) / rate
    assert abs(seconds - done["audio"]["duration_seconds"]) < 0.01  # the rewritten MP3 header tells the truth
    whole = expected_seconds(stack, text)
    assert abs(seconds - whole) < 0.02 * whole, (seconds, whole)
    assert seconds > 300
    assert float((samples**2).mean() ** 0.5) > 0.01
    assert part_keys(stack, job_id) == []

    # The stitched audio went into the cache like any job's.
    again = client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": "mp3"})
    assert again.status_code == 200 and again.get_json()["cache_hit"] is True


def test_wav_parts_are_joined_sample_exact(stack, corpus):
    client = stack.client
    text = chapter(corpus, 3000)
    r = client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": "wav", "cache": False})
    job_id = r.get_json()["id"]
    done = stack.wait_for(job_id, timeout=120)
    assert done["status"] == "succeeded", done
    parts = [h for h in done["history"] if h.get("outcome") == "part_succeeded"]
    assert len(parts) >= 3
    samples, rate = decode(client.get(f"/v1/jobs/{job_id}/audio").data, "wav")
    assert rate == 24000
    assert abs(len(samples) / rate - sum(p["audio_seconds"] for p in parts)) < 0.01
    assert abs(len(samples) / rate - done["audio"]["duration_seconds"]) < 0.001
    whole = expected_seconds(stack, text)
    assert abs(len(samples) / rate - whole) < 0.03 * whole, (len(samples) / rate, whole)


def test_parts_are_retried_on_their_own(make_stack, corpus):
    stack = make_stack(TTS_FAULT_INJECTION="transient:1", TTS_RETRY_JITTER="0", TTS_BASE_DELAY_MS="50")
    text = chapter(corpus, 2500)
    job_id = stack.client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": "mp3"}).get_json()["id"]
    done = stack.wait_for(job_id, timeout=120)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2  # the whole job's first attempt failed before it fanned out
    history = done["history"]
    total = next(h["parts"] for h in history if h.get("outcome") == "fanned_out")
    failed = [h for h in history if h.get("outcome") == "part_failed"]
    succeeded = [h for h in history if h.get("outcome") == "part_succeeded"]
    helped = [h for h in succeeded if not h["lead"]]
    assert sorted(h["part"] for h in succeeded) == list(range(total))
    # The leader's parts belong to the job's second attempt; every part a helper took failed once on its own
    # and was retried on its own, while the job stayed running.
    assert all(h["attempt"] == 2 for h in succeeded if h["lead"])
    assert helped, "the other worker process should have helped"
    assert sorted(h["part"] for h in failed) == sorted(h["part"] for h in helped)
    assert all(h["attempt"] == 1 and "retry_in" in h for h in failed)
    assert all(h["attempt"] == 2 for h in helped)
    assert part_keys(stack, job_id) == []


def test_fanned_out_mp3_and_aac_have_no_silence_added_at_part_boundaries(stack, corpus):
    """One encode of every part's samples: the file is as long as one encode of that many samples, within 5 ms."""
    client = stack.client
    text = chapter(corpus, 4500)
    ids = {fmt: client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": fmt, "cache": False,
                                              "sample_rate": 24000}).get_json()["id"]
           for fmt in ("mp3", "aac")}
    for fmt, job_id in ids.items():
        done = stack.wait_for(job_id, timeout=180)
        assert done["status"] == "succeeded", (fmt, done)
        parts = {h["part"]: h["samples"] for h in done["history"] if h.get("outcome") == "part_succeeded"}
        total = next(h["parts"] for h in done["history"] if h.get("outcome") == "fanned_out")
        assert sorted(parts) == list(range(total)) and total >= 4, (fmt, parts)
        expected = sum(parts.values())
        assert abs(done["audio"]["duration_seconds"] - expected / 24000) <= 0.001, (fmt, done["audio"], expected)
        samples, rate = decode(client.get(f"/v1/jobs/{job_id}/audio").data, fmt)
        assert rate == 24000
        # What one encode of that many samples decodes to (the encoder's own delay and padding, once).
        reference = AudioEncoder(fmt, rate)
        reference.write(np.zeros(expected, np.float32))
        one_encode = len(decode(reference.finish(), fmt)[0])
        added = len(samples) - one_encode
        assert abs(added) <= 0.005 * rate, (fmt, added, total - 1)  # not even 5 ms over all the boundaries
        assert float((samples**2).mean() ** 0.5) > 0.01, fmt


def test_a_leader_killed_mid_way_is_finished_by_its_redelivery(make_stack, corpus):
    """SIGKILL the synthesize task leading a fanned-out job once a helper stored a part: the job's message is
    delivered again, and the new delivery keeps the stored parts, takes over the dead leader's and finishes."""
    stack = make_stack()
    client = stack.client
    text = chapter(corpus, 6000)
    job_id = client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": "mp3",
                                           "cache": False}).get_json()["id"]

    def helped_and_leader() -> tuple[int, list[dict[str, Any]]] | None:
        history = client.get(f"/v1/jobs/{job_id}").get_json()["history"]
        fanned = [h for h in history if h.get("outcome") == "fanned_out"]
        helped = [h for h in history if h.get("outcome") == "part_succeeded" and not h["lead"]]
        return (fanned[0]["pid"], helped) if fanned and helped else None

    leader_pid, helped = stack.wait_until(helped_and_leader, timeout=120, what="a part stored by a helper")
    os.kill(leader_pid, signal.SIGKILL)
    done = stack.wait_for(job_id, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    history = done["history"]
    fanned = [h for h in history if h.get("outcome") == "fanned_out"]
    assert len(fanned) == 2 and fanned[0]["pid"] == leader_pid != fanned[1]["pid"]
    parts = [h for h in history if h.get("outcome") == "part_succeeded"]
    total = next(h["parts"] for h in history if h.get("outcome") == "fanned_out")
    assert {h["part"] for h in parts} == set(range(total))
    stored = {h["part"] for h in helped}
    for part in stored:  # a part a helper stored before the kill is not made again
        assert len([h for h in parts if h["part"] == part]) == 1, part
    samples, rate = decode(client.get(f"/v1/jobs/{job_id}/audio").data, "mp3")
    assert abs(len(samples) / rate - done["audio"]["duration_seconds"]) < 0.01
    assert part_keys(stack, job_id) == []


def test_cancelling_a_fanned_out_job_stops_its_parts(stack, corpus):
    client = stack.client
    text = chapter(corpus, 6000)
    job_id = client.post("/v1/jobs", json={"text": text, "voice": "joe", "format": "wav",
                                           "cache": False}).get_json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        history = client.get(f"/v1/jobs/{job_id}").get_json()["history"]
        if any(h.get("outcome") == "fanned_out" for h in history):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the job never fanned out")
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    # Parts still queued drop out as they are picked up; the running ones stop within 8 sentences.
    stack.wait_for(job_id)
    assert part_keys(stack, job_id, wait=60) == []
    # No part task is left to write a part key again: every part message ran and was acknowledged.
    stack.wait_idle(timeout=60)
    assert part_keys(stack, job_id, wait=0) == []
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    # The worker is free again: a short job goes through.
    short = client.post("/v1/jobs", json={"text": f"Next please {uuid.uuid4().hex[:6]}.", "voice": "heart"})
    assert stack.wait_for(short.get_json()["id"], timeout=120)["status"] == "succeeded"


def test_every_format_is_stitched(stack, corpus):
    """Every format is encoded once from the parts' PCM, in order."""
    client = stack.client
    text = chapter(corpus, 2200)
    ids = {fmt: client.post("/v1/jobs", json={"text": text, "voice": "heart", "format": fmt, "cache": False,
                                              "sample_rate": 24000}).get_json()["id"]
           for fmt in ("aac", "pcm", "flac", "opus")}
    for fmt, job_id in ids.items():
        done = stack.wait_for(job_id, timeout=120)
        assert done["status"] == "succeeded", (fmt, done)
        assert any(h.get("outcome") == "fanned_out" for h in done["history"]), fmt
        samples, rate = decode(client.get(f"/v1/jobs/{job_id}/audio").data, fmt, pcm_rate=24000)
        seconds = len(samples) / rate
        # aac's one encode adds its 1024 samples of priming (and pads the last frame) once; the others are exact
        assert abs(seconds - done["audio"]["duration_seconds"]) < 0.1, (fmt, seconds, done["audio"])
        assert seconds > 60 and float((samples**2).mean() ** 0.5) > 0.01, fmt

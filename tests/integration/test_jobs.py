"""The job pipeline end to end: REST -> Redis -> real Celery worker -> real voices -> audio."""
from __future__ import annotations

import io
import uuid

import pytest
import soundfile as sf

from engine.audio import decode

pytestmark = pytest.mark.integration


def unique(text: str) -> str:
    """Text no earlier test has cached."""
    return f"{text} Reference {uuid.uuid4().hex[:6]}."


def submit(client, **body):
    return client.post("/v1/jobs", json=body)


@pytest.mark.both_brokers
def test_submit_poll_download_decode(stack):
    client = stack.client
    r = submit(client, text=unique("The quick brown fox jumps over the lazy dog."), voice="heart", format="mp3")
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["status"] == "queued"
    assert body["links"]["self"] == f"/v1/jobs/{body['id']}"
    assert r.headers["Location"] == body["links"]["self"]
    assert r.headers["X-Request-ID"]

    done = stack.wait_for(body["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert done["started_at"] and done["finished_at"] and done["queued_at"]
    assert done["audio"]["duration_seconds"] > 1.0
    assert done["history"][0]["outcome"] == "succeeded"

    audio = client.get(f"/v1/jobs/{body['id']}/audio")
    assert audio.status_code == 200
    assert audio.mimetype == "audio/mpeg"
    assert "attachment" in audio.headers["Content-Disposition"]
    assert audio.headers["ETag"]
    samples, rate = decode(audio.data, "mp3")
    assert rate == 24000
    assert abs(len(samples) / rate - done["audio"]["duration_seconds"]) < 0.1
    assert float((samples**2).mean() ** 0.5) > 0.01

    # A conditional GET with the ETag answers 304 without the bytes.
    again = client.get(f"/v1/jobs/{body['id']}/audio", headers={"If-None-Match": audio.headers["ETag"]})
    assert again.status_code == 304


def test_every_voice_family_through_the_queue(stack):
    client = stack.client
    ids = {}
    for voice, fmt in (("joe", "wav"), ("jf_alpha", "flac"), ("heart", "opus")):
        r = submit(client, text=unique("Queues keep work safe."), voice=voice, format=fmt)
        assert r.status_code == 202, r.get_json()
        ids[voice] = (r.get_json()["id"], fmt)
    for voice, (job_id, fmt) in ids.items():
        done = stack.wait_for(job_id)
        assert done["status"] == "succeeded", (voice, done)
        data = client.get(f"/v1/jobs/{job_id}/audio").data
        samples, rate = decode(data, fmt)
        assert len(samples) / rate > 0.5, voice


def test_cache_hit_runs_no_task(stack):
    client = stack.client
    text = unique("Caching makes repeated requests free.")
    first = submit(client, text=text, voice="heart", format="wav")
    assert first.status_code == 202
    stack.wait_for(first.get_json()["id"])

    second = submit(client, text=text, voice="heart", format="wav")
    assert second.status_code == 200
    body = second.get_json()
    assert body["status"] == "succeeded"
    assert body["cache_hit"] is True
    assert body["attempts"] == 0  # no worker touched it
    job = stack.app.extensions["tts"]["runtime"].jobs.get(body["id"])
    assert job.task_id is None
    a = client.get(f"/v1/jobs/{first.get_json()['id']}/audio").data
    b = client.get(f"/v1/jobs/{body['id']}/audio").data
    assert a == b
    info = sf.info(io.BytesIO(b))
    assert info.samplerate == 24000

    # The cache can be bypassed per request.
    third = submit(client, text=text, voice="heart", format="wav", cache=False)
    assert third.status_code == 202
    assert third.get_json()["cache_hit"] is False


def test_idempotency_key(stack):
    client = stack.client
    key = uuid.uuid4().hex
    body = {"text": unique("Only once, please."), "voice": "heart"}
    a = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    b = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
    assert a.status_code == 202
    assert b.status_code == 200
    assert b.headers["Idempotent-Replayed"] == "true"
    assert a.get_json()["id"] == b.get_json()["id"]
    c = client.post("/v1/jobs", json={**body, "text": "Something else."}, headers={"Idempotency-Key": key})
    assert c.status_code == 422
    assert c.get_json()["error"]["code"] == "idempotency_key_reused"


@pytest.mark.both_brokers
def test_cancel_a_queued_job_and_delete_a_finished_one(stack):
    client = stack.client
    # Fill both worker processes with long jobs so the next one is still queued when cancelled
    # (under TTS_CHUNK_FANOUT_CHARS, so each stays one task on one process).
    chapter = "This sentence is here to keep the worker busy for a while. " * 30
    assert len(chapter) < stack.settings.chunk_fanout_chars
    blockers = [submit(client, text=unique(chapter), voice="joe", format="wav", cache=False).get_json()["id"]
                for _ in range(2)]
    victim = submit(client, text=unique("Cancel me before I run."), voice="heart", cache=False).get_json()["id"]
    r = client.post(f"/v1/jobs/{victim}/cancel")
    assert r.status_code == 200
    assert r.get_json()["status"] == "cancelled"
    for job_id in blockers:
        client.post(f"/v1/jobs/{job_id}/cancel")
    final = stack.wait_for(victim)
    assert final["status"] == "cancelled"
    assert final["attempts"] == 0

    done_id = submit(client, text=unique("Delete me."), voice="heart", cache=False).get_json()["id"]
    assert stack.wait_for(done_id)["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{done_id}/audio").status_code == 200
    # Cancelling a finished job changes nothing; deleting it makes it 404 everywhere.
    assert client.post(f"/v1/jobs/{done_id}/cancel").get_json()["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{done_id}/audio").status_code == 200
    r = client.delete(f"/v1/jobs/{done_id}")
    assert r.status_code == 200 and r.get_json() == {"id": done_id, "object": "job", "deleted": True}
    for path in (f"/v1/jobs/{done_id}", f"/v1/jobs/{done_id}/audio"):
        assert client.get(path).get_json()["error"]["code"] == "job_not_found", path
    assert client.delete(f"/v1/jobs/{done_id}").status_code == 404
    assert client.post(f"/v1/jobs/{done_id}/cancel").status_code == 404
    assert done_id not in [j["id"] for j in client.get("/v1/jobs?limit=1000").get_json()["jobs"]]
    # The record no longer names its audio (the object itself expires by the result store's index).
    assert not stack.redis.hexists(f"tts:job:{done_id}", "audio_ref")


def test_list_jobs_with_status_and_cursor(stack):
    client = stack.client
    ids = [submit(client, text=unique(f"Listing number {i}."), voice="heart").get_json()["id"] for i in range(3)]
    for job_id in ids:
        stack.wait_for(job_id)
    page = client.get("/v1/jobs?limit=2").get_json()
    assert len(page["jobs"]) == 2
    assert page["next_cursor"]
    rest = client.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}").get_json()
    seen = [j["id"] for j in page["jobs"]] + [j["id"] for j in rest["jobs"]]
    assert len(seen) == len(set(seen))
    assert ids[-1] == page["jobs"][0]["id"]  # newest first
    succeeded = client.get("/v1/jobs?status=succeeded&limit=1000").get_json()["jobs"]
    assert {j["id"] for j in succeeded} >= set(ids)
    assert client.get("/v1/jobs?status=bogus").status_code == 400
    assert client.get("/v1/jobs?limit=0").status_code == 400


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"voice": "heart"}, 400, "invalid_request"),
        ({"text": "", "voice": "heart"}, 400, "empty_text"),
        ({"text": "   \n ", "voice": "heart"}, 400, "empty_text"),
        ({"text": "\U0001f600\U0001f680", "voice": "heart"}, 400, "empty_text"),
        ({"text": "hi", "voice": "nobody"}, 400, "unknown_voice"),
        ({"text": "hi", "voice": "heart", "format": "mp4"}, 400, "invalid_request"),
        ({"text": "hi", "voice": "heart", "speed": 4.5}, 400, "invalid_request"),
        ({"text": "hi", "voice": "heart", "speed": "fast"}, 400, "invalid_request"),
        ({"text": "hi", "voice": "heart", "sample_rate": 1000}, 400, "invalid_request"),
        ({"text": "hi", "voice": "heart", "seed": -1}, 400, "invalid_request"),
        ({"text": "hi", "voice": "heart", "cache": "yes"}, 400, "invalid_request"),
        ({"text": "hi", "voice": "heart", "colour": "blue"}, 400, "invalid_request"),
        ({"text": 5, "voice": "heart"}, 400, "invalid_request"),
        (["not", "an", "object"], 400, "invalid_request"),
    ],
)
def test_bad_input_gets_a_clear_4xx(stack, body, status, code):
    r = stack.client.post("/v1/jobs", json=body)
    assert r.status_code == status, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == code
    assert error["message"]


def test_unknown_voice_names_the_valid_ones(stack):
    error = stack.client.post("/v1/jobs", json={"text": "hi", "voice": "nobody"}).get_json()["error"]
    assert "heart" in error["message"] and "joe" in error["message"]
    assert "jf_alpha" in error["valid_voices"]


def test_text_too_long_is_413(stack):
    limit = stack.settings.max_text_chars
    r = stack.client.post("/v1/jobs", json={"text": "a" * (limit + 1), "voice": "heart"})
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "text_too_long"


def test_not_json_and_malformed_json(stack):
    client = stack.client
    r = client.post("/v1/jobs", data="text=hello", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    assert r.get_json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/v1/jobs", data="{not json", content_type="application/json")
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/jobs", data="", content_type="application/json")
    assert r.status_code == 400


def test_unknown_job_and_unfinished_audio(stack):
    client = stack.client
    r = client.get("/v1/jobs/doesnotexist")
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "job_not_found"
    assert client.get("/v1/jobs/doesnotexist/audio").status_code == 404
    assert client.delete("/v1/jobs/doesnotexist").status_code == 404
    assert client.post("/v1/jobs/doesnotexist/cancel").status_code == 404
    long_text = unique("A long text keeps the job busy. " * 40)
    job_id = submit(client, text=long_text, voice="joe", cache=False).get_json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/audio")
    assert r.status_code == 409
    assert r.get_json()["error"]["code"] == "job_not_finished"
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert client.get("/no/such/route").status_code == 404
    r = client.put("/v1/jobs")
    assert r.status_code == 405
    assert r.get_json()["error"]["code"]


def test_voices_endpoint(stack):
    voices = stack.client.get("/v1/voices").get_json()["voices"]
    ids = {v["id"] for v in voices}
    assert {"heart", "joe", "jf_alpha", "jm_kumo"} <= ids
    assert all(v["sample_rate"] in (22050, 24000) for v in voices)
    blend = stack.client.get("/v1/voices/jf_alpha*0.7+jm_kumo*0.3")
    assert blend.status_code == 200
    unknown = stack.client.get("/v1/voices/nobody")
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "voice_not_found"
    assert "heart" in unknown.get_json()["error"]["valid_voices"]

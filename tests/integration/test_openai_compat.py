"""The OpenAI-compatible endpoints, driven by the official ``openai`` package against a running server.

Each test serves ``stack.app`` with a real WSGI server (werkzeug, threaded) on a free port
and talks to it over HTTP, exactly as OpenWebUI or a script using ``openai`` would.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI

from engine.audio import decode

pytestmark = pytest.mark.integration


def unique(text: str) -> str:
    """Text no earlier test has cached."""
    return f"{text} Reference {uuid.uuid4().hex[:6]}."


def client_for(base: str, api_key: str = "unused") -> OpenAI:
    """An OpenAI client for our server; no retries, so each call is exactly one request."""
    return OpenAI(base_url=f"{base}/v1", api_key=api_key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def base_url(redis_broker_stack: Any) -> Iterator[str]:
    """The shared stack's app, served over HTTP for the whole module (the session's Redis-broker stack:
    the per-test ``stack`` fixture cannot serve a module-scoped one)."""
    with redis_broker_stack.serve() as url:
        yield url


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_speech_create_every_format(base_url: str, fmt: str) -> None:
    client = client_for(base_url)
    audio = client.audio.speech.create(model="tts-1", voice="alloy", response_format=fmt,
                                       input=unique("The quick brown fox jumps over the lazy dog."))
    headers = audio.response.headers
    expected_type = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                     "wav": "audio/wav", "pcm": "audio/pcm"}[fmt]
    assert headers["content-type"].startswith(expected_type)
    assert headers["x-job-id"]
    data = audio.content
    samples, rate = decode(data, fmt, pcm_rate=24000 if fmt == "pcm" else None)
    seconds = len(samples) / rate
    # alloy maps to heart (24 kHz); pcm is always 24 kHz s16le, as OpenAI documents.
    assert rate in (24000, 48000)
    assert abs(seconds - float(headers["x-audio-duration"])) < 0.15, (fmt, seconds, headers)
    assert 1.0 < seconds < 10.0
    assert float((samples**2).mean() ** 0.5) > 0.01


def test_streaming_response_with_local_voice(base_url: str) -> None:
    client = client_for(base_url)
    with client.audio.speech.with_streaming_response.create(
            model="kokoro", voice="joe", input=unique("Streaming responses read the body in pieces."),
            response_format="wav", speed=1.25) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("audio/wav")
        data = b"".join(response.iter_bytes(chunk_size=4096))
    samples, rate = decode(data, "wav")
    assert rate == 22050  # joe's own rate: no resampling unless pcm
    assert len(samples) / rate > 1.0


def test_repeat_request_is_a_cache_hit(base_url: str) -> None:
    client = client_for(base_url)
    text = unique("Caching makes the second request free.")
    first = client.audio.speech.create(model="tts-1-hd", voice="nova", input=text, response_format="flac")
    second = client.audio.speech.create(model="gpt-4o-mini-tts", voice="nova", input=text, response_format="flac",
                                        instructions="Speak cheerfully.")
    assert first.response.headers["x-cache"] == "MISS"
    assert second.response.headers["x-cache"] == "HIT"
    assert second.content == first.content
    # nova and heart are the same local voice, so a request for heart is a hit too.
    third = client.audio.speech.create(model="tts-1", voice="heart", input=text, response_format="flac")
    assert third.response.headers["x-cache"] == "HIT"


def test_markdown_input_is_not_read_aloud(base_url: str, stack: Any) -> None:
    client = client_for(base_url)
    words = unique("Bold words and a link")
    plain = client.audio.speech.create(model="tts-1", voice="alloy", input=words, response_format="wav")
    marked = client.audio.speech.create(model="tts-1", voice="alloy", response_format="wav",
                                        input=f"**{words[:4]}**{words[4:-1]} [here](https://example.org/x).")
    # The markup is stripped, so the Markdown version is only a little longer (the word "here").
    assert len(marked.content) < len(plain.content) * 1.5


@pytest.mark.parametrize("speed, needle", [(4.5, "less than or equal to 4"), (0.1, "greater than or equal to 0.25")])
def test_speed_out_of_range_is_a_bad_request(base_url: str, speed: float, needle: str) -> None:
    client = client_for(base_url)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Too fast.", speed=speed)
    assert info.value.status_code == 400
    assert needle in info.value.message
    assert (info.value.body["code"], info.value.body["param"]) == ("invalid_request", "speed")


def test_unknown_voice_is_a_bad_request(base_url: str) -> None:
    client = client_for(base_url)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Who is speaking?")
    body = info.value.body
    assert body["code"] == "unknown_voice"
    assert "alloy" in body["message"] and "heart" in body["message"]


def test_bad_format_and_empty_input(base_url: str) -> None:
    r = requests.post(f"{base_url}/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi.",
                                                           "response_format": "ogg"}, timeout=30)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "response_format" and "'ogg'" in error["message"]
    assert all(f"'{fmt}'" in error["message"] for fmt in ("mp3", "opus", "aac", "flac", "wav", "pcm"))
    r = requests.post(f"{base_url}/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "  "},
                      timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "empty_input"


def test_default_format_is_mp3(base_url: str) -> None:
    r = requests.post(f"{base_url}/v1/audio/speech", timeout=60,
                      json={"model": "tts-1", "voice": "coral", "input": unique("No format given.")},
                      headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "audio/mpeg"
    samples, rate = decode(r.content, "mp3")
    assert len(samples) / rate > 0.5


def test_models_and_voices(base_url: str) -> None:
    client = client_for(base_url)
    ids = [m.id for m in client.models.list()]
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    model = client.models.retrieve("tts-1")
    assert model.object == "model" and model.owned_by == "tts-batch"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")

    voices = requests.get(f"{base_url}/v1/audio/voices", timeout=30).json()
    by_id = {v["id"]: v for v in voices["voices"]}
    for name in ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse"):
        assert by_id[name]["type"] == "openai" and by_id[name]["available"], name
    assert by_id["alloy"]["local_voice"] == "heart"
    assert by_id["heart"]["type"] == "local" and by_id["joe"]["type"] == "local"
    assert all("name" in v for v in voices["voices"])  # OpenWebUI lists id -> name
    models = requests.get(f"{base_url}/v1/audio/models", timeout=30).json()
    assert {"id": "tts-1", "name": "tts-1"} in models["models"]


def test_timeout_answers_504_with_the_job_to_poll(make_stack: Any) -> None:
    stack = make_stack(TTS_SPEECH_TIMEOUT="0.2")
    text = unique(" ".join(["A long passage keeps the worker busy for a good while, sentence after sentence."] * 30))
    with stack.serve() as base:
        client = client_for(base)
        with pytest.raises(openai.InternalServerError) as info:
            client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="mp3")
    assert info.value.status_code == 504
    body = info.value.body
    assert body["code"] == "speech_timeout"
    job_id = body["job_id"]
    assert body["poll"] == f"/v1/jobs/{job_id}"
    assert info.value.response.headers["Retry-After"]
    done = stack.wait_for(job_id, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["audio"]["duration_seconds"] > 30


def test_failed_synthesis_is_a_502_with_the_job_error(make_stack: Any) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="permanent")
    with stack.serve() as base:
        client = client_for(base)
        with pytest.raises(openai.InternalServerError) as info:
            client.audio.speech.create(model="tts-1", voice="alloy", input=unique("This will fail."))
    assert info.value.status_code == 502
    assert "injected permanent fault" in info.value.body["message"]
    assert info.value.body["job_id"]


def test_api_keys_guard_every_v1_route(make_stack: Any) -> None:
    stack = make_stack(start=False, TTS_API_KEYS="first-key,second-key")
    with stack.serve() as base:
        with pytest.raises(openai.AuthenticationError) as info:
            client_for(base, api_key="wrong").audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
        assert info.value.status_code == 401
        r = requests.post(f"{base}/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", "input": "Hi."},
                          timeout=30)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        # The right key gets past the check (and then meets the speed check: no worker needed).
        with pytest.raises(openai.BadRequestError):
            client_for(base, api_key="second-key").audio.speech.create(model="tts-1", voice="alloy", input="Hi.",
                                                                       speed=5.0)
        # Every /v1/ route is behind the keys, and so are the operator views; only the probes are open.
        with pytest.raises(openai.AuthenticationError):
            client_for(base, api_key="wrong").models.list()
        assert client_for(base, api_key="first-key").models.list().data
        assert requests.get(f"{base}/v1/jobs", timeout=30).status_code == 401
        assert requests.get(f"{base}/v1/jobs", headers={"X-API-Key": "first-key"}, timeout=30).status_code == 200
        assert requests.get(f"{base}/v1/jobs", headers={"Authorization": "Bearer second-key"},
                            timeout=30).status_code == 200
        assert requests.get(f"{base}/v1/jobs", headers={"Authorization": "Basic first-key"},
                            timeout=30).status_code == 401
        assert requests.get(f"{base}/metrics/json", timeout=30).status_code == 401
        assert requests.get(f"{base}/metrics/json", headers={"X-API-Key": "first-key"}, timeout=30).status_code == 200
        assert requests.get(f"{base}/health/live", timeout=30).status_code == 200

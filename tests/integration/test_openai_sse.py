"""``POST /v1/audio/speech`` as OpenAI's spec has it: SSE streaming, every voice name, the whole speed range.

The official ``openai`` package drives a real WSGI server over HTTP (``stack.serve()``) in
front of the real worker and voices; the SSE body is parsed with the package's own decoder.
"""
from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from openai import OpenAI
from openai._streaming import SSEDecoder

from engine.audio import _ffmpeg_exe, decode
from settings import DEFAULT_OPENAI_VOICES

pytestmark = pytest.mark.integration

#: Every built-in voice name of OpenAI's spec (openai 3.57, ``speech_create_params.Voice``).
OPENAI_VOICE_NAMES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
                      "verse", "marin", "cedar")


def unique(text: str) -> str:
    """Text no earlier test has cached."""
    return f"{text} Reference {uuid.uuid4().hex[:6]}."


def client_for(base: str) -> OpenAI:
    return OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def base_url(redis_broker_stack: Any) -> Iterator[str]:
    """The session's Redis-broker stack served over HTTP for the whole module."""
    with redis_broker_stack.serve() as url:
        yield url


def sse_events(client: OpenAI, **params: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The events of one streamed speech request, decoded by the openai package's SSE decoder."""
    with client.audio.speech.with_streaming_response.create(stream_format="sse", **params) as response:
        assert response.status_code == 200
        headers = dict(response.headers)
        events = [sse.json() for sse in SSEDecoder().iter_bytes(response.iter_bytes())]
    return events, headers


def joined_audio(events: list[dict[str, Any]]) -> bytes:
    assert events, "no events"
    assert all(e["type"] == "speech.audio.delta" for e in events[:-1]), [e["type"] for e in events]
    return b"".join(base64.b64decode(e["audio"]) for e in events[:-1])


THREE_SENTENCES = ("The first sentence arrives before the others are made. A second one follows it. "
                   "And the third one ends the stream.")


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_sse_deltas_add_up_to_the_non_streamed_audio(base_url: str, fmt: str) -> None:
    client = client_for(base_url)
    text = unique(THREE_SENTENCES)
    events, headers = sse_events(client, model="gpt-4o-mini-tts", voice="alloy", input=text, response_format=fmt)
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-cache"] == "MISS"
    assert len(events) >= 4  # one delta per sentence (at least), then done
    done = events[-1]
    assert done == {"type": "speech.audio.done",
                    "usage": {"input_tokens": len(text), "output_tokens": 0, "total_tokens": len(text)}}
    streamed, rate = decode(joined_audio(events), fmt, pcm_rate=24000)
    # The same request again, not streamed: the job's stored file (now a cache hit).
    whole = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format=fmt)
    assert whole.response.headers["x-cache"] == "HIT"
    reference, ref_rate = decode(whole.content, fmt, pcm_rate=24000)
    assert rate == ref_rate == 24000
    assert len(streamed) == len(reference)
    assert float(np.sqrt((streamed**2).mean())) > 0.01


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_sse_compressed_deltas_play_as_one_file(base_url: str, fmt: str, tmp_path: Any) -> None:
    client = client_for(base_url)
    text = unique(THREE_SENTENCES)
    events, _ = sse_events(client, model="tts-1", voice="onyx", input=text, response_format=fmt)
    assert events[-1]["type"] == "speech.audio.done"
    data = joined_audio(events)
    whole = client.audio.speech.create(model="tts-1", voice="onyx", input=text, response_format=fmt)
    expected = float(whole.response.headers["x-audio-duration"])
    if fmt == "flac":  # a streamed FLAC has no total length in its header, which libsndfile cannot read
        out = subprocess.run([_ffmpeg_exe(), "-v", "error", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "pipe:1"],
                             input=data, capture_output=True, check=True).stdout
        seconds = len(out) / 4 / 22050
    else:
        samples, rate = decode(data, fmt)
        seconds = len(samples) / rate
    # mp3 and aac streams carry no gapless info: the encoder delay and padding (tens of ms) stay in.
    assert abs(seconds - expected) < 0.15, (fmt, seconds, expected)


def test_sse_cache_hit_sends_the_stored_file(base_url: str) -> None:
    client = client_for(base_url)
    text = unique("Cached audio streams at once.")
    whole = client.audio.speech.create(model="tts-1", voice="nova", input=text, response_format="mp3")
    events, headers = sse_events(client, model="tts-1", voice="nova", input=text, response_format="mp3")
    assert headers["x-cache"] == "HIT"
    assert joined_audio(events) == whole.content
    assert events[-1]["type"] == "speech.audio.done"


def test_sse_local_voice_id_object_and_speed(base_url: str) -> None:
    client = client_for(base_url)
    events, _ = sse_events(client, model="tts-1", voice={"id": "heart"}, input=unique("Quick now."),
                           response_format="pcm", speed=3.0)
    samples, _ = decode(joined_audio(events), "pcm", pcm_rate=24000)
    assert len(samples) > 2400


def test_sse_failed_job_ends_with_an_error_event(make_stack: Any) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="permanent", TTS_MAX_ATTEMPTS="1")
    with stack.serve() as base:
        events, _ = sse_events(client_for(base), model="tts-1", voice="alloy", input=unique("This fails."),
                               response_format="pcm")
    assert events[-1]["type"] == "error", events
    error = events[-1]["error"]
    assert "injected permanent fault" in error["message"]
    assert error["job_id"] and error["audio"].endswith("/audio")


def test_sse_retried_job_streams_once(make_stack: Any) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="transient:1", TTS_RETRY_JITTER="false")
    with stack.serve() as base:
        client = client_for(base)
        text = unique(THREE_SENTENCES)
        events, headers = sse_events(client, model="tts-1", voice="alloy", input=text, response_format="pcm")
        whole = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="pcm")
    assert events[-1]["type"] == "speech.audio.done"
    assert len(joined_audio(events)) == len(whole.content)
    job = stack.client.get(f"/v1/jobs/{headers['x-job-id']}").get_json()
    assert job["attempts"] == 2, job


def test_sse_streams_count_against_their_own_limit(make_stack: Any) -> None:
    stack = make_stack(TTS_SPEECH_STREAM_MAX_CLIENTS="1")
    with stack.serve() as base:
        body = {"model": "tts-1", "voice": "alloy", "input": unique(THREE_SENTENCES * 3),
                "response_format": "pcm", "stream_format": "sse"}
        with requests.post(f"{base}/v1/audio/speech", json=body, stream=True, timeout=60) as first:
            assert first.status_code == 200
            second = requests.post(f"{base}/v1/audio/speech", json={**body, "input": unique("Second.")}, timeout=30)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "too_many_streams"
            assert b"speech.audio.done" in b"".join(first.iter_content(65536))
        third = requests.post(f"{base}/v1/audio/speech", json={**body, "input": unique("Third.")}, timeout=60)
        assert third.status_code == 200


def test_every_openai_voice_name_answers_with_audio(base_url: str) -> None:
    assert set(OPENAI_VOICE_NAMES) <= set(DEFAULT_OPENAI_VOICES)
    client = client_for(base_url)
    for name in OPENAI_VOICE_NAMES:
        audio = client.audio.speech.create(model="tts-1", voice=name, input=unique(f"This is {name}."),
                                           response_format="wav", instructions="Speak calmly.")
        samples, rate = decode(audio.content, "wav")
        assert audio.response.headers["content-type"] == "audio/wav", name
        assert len(samples) / rate > 0.5, name

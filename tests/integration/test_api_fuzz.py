"""Garbage in, clear 4xx out: random bodies, headers and paths never produce a 500.

Runs against a real Redis with no worker (accepted jobs just stay queued).
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
voices = st.sampled_from(["heart", "joe", "jf_alpha", "jf_alpha*0.7+jm_kumo*0.3", "a+b", "*", "+", "heart*0",
                          "jf_alpha*-1+jm_kumo", "alloy", "", " ", "x" * 300])
formats = st.sampled_from(["mp3", "wav", "opus", "flac", "aac", "pcm", "MP3", "ogg", "", "mp4"])


def job_bodies() -> st.SearchStrategy[Any]:
    fields = {
        "text": st.one_of(st.text(max_size=200), values),
        "voice": st.one_of(voices, values),
        "format": st.one_of(formats, values),
        "speed": st.one_of(st.floats(allow_nan=True, allow_infinity=True), values),
        "sample_rate": st.one_of(st.integers(-100, 200_000), values),
        "seed": st.one_of(st.integers(-5, 2**70), values),
        "cache": values,
        "markdown": values,
        "name": values,
    }
    return st.one_of(values, st.fixed_dictionaries({}, optional=fields))


def check(response: Any) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        error = response.get_json()["error"]
        assert isinstance(error["code"], str) and error["code"]
        assert isinstance(error["message"], str) and error["message"]


@pytest.fixture(scope="module")
def client(redis_dbs: Any, tmp_path_factory: pytest.TempPathFactory, model_cache: Any) -> Any:
    from app import create_app
    from settings import load_settings

    url = redis_dbs.acquire()  # a database of its own for the module, released (flushed) at the end
    settings_ = load_settings({"REDIS_URL": url, "TTS_DATA_DIR": str(tmp_path_factory.mktemp("fuzz")),
                               "TTS_MODEL_CACHE_DIR": str(model_cache), "TTS_SPEECH_TIMEOUT": "0.05"})
    try:
        yield create_app(settings_).test_client()
    finally:
        redis_dbs.release(url)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=job_bodies(), key=st.one_of(st.none(), st.text(max_size=300)))
def test_jobs_never_500(client: Any, body: Any, key: str | None) -> None:
    headers = {"Idempotency-Key": key} if key is not None and "\n" not in key and "\r" not in key else {}
    check(client.post("/v1/jobs", data=json.dumps(body), content_type="application/json", headers=headers))


@FUZZ
@given(body=st.one_of(values, st.fixed_dictionaries({}, optional={
    "inputs": st.one_of(values, st.lists(st.one_of(values, job_bodies()), max_size=5)),
    "defaults": st.one_of(values, job_bodies()),
    "concatenate": values,
    "gap_ms": st.one_of(st.integers(-10, 10**9), values),
})))
def test_batches_never_500(client: Any, body: Any) -> None:
    check(client.post("/v1/batches", data=json.dumps(body), content_type="application/json"))


@FUZZ
@given(body=st.one_of(values, st.fixed_dictionaries({}, optional={
    "model": values,
    "input": st.one_of(st.text(max_size=100), values),
    "voice": st.one_of(voices, values),
    "response_format": st.one_of(formats, values),
    "speed": st.one_of(st.floats(allow_nan=True, allow_infinity=True), values),
    "instructions": values,
})))
def test_speech_never_500(client: Any, body: Any) -> None:
    check(client.post("/v1/audio/speech", data=json.dumps(body), content_type="application/json"))


@FUZZ
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"]))
def test_raw_bodies_never_500(client: Any, raw: bytes, content_type: str) -> None:
    for path in ("/v1/jobs", "/v1/batches", "/v1/audio/speech"):
        check(client.post(path, data=raw, content_type=content_type))


@FUZZ
@given(segment=st.text(min_size=1, max_size=80).filter(lambda s: "/" not in s and "?" not in s and "#" not in s),
       query=st.dictionaries(st.sampled_from(["status", "limit", "cursor", "offset", "hours", "interval",
                                              "max_events", "concatenate"]), st.text(max_size=12), max_size=3))
def test_paths_and_queries_never_500(client: Any, segment: str, query: dict[str, str]) -> None:
    for path in (f"/v1/jobs/{segment}", f"/v1/jobs/{segment}/audio", f"/v1/batches/{segment}",
                 f"/v1/batches/{segment}/items", f"/v1/batches/{segment}/result", f"/v1/dlq/{segment}",
                 f"/v1/voices/{segment}", "/v1/jobs", "/v1/batches", "/v1/dlq", "/api/metrics/history"):
        check(client.get(path, query_string=query))
    check(client.delete(f"/v1/jobs/{segment}"))
    check(client.post(f"/v1/dlq/{segment}/replay"))

"""Jobs, the cache, downloads and batches on the result store, with real workers, for both stores.

Every test runs twice, on the folder store (``file``) and on S3 (``s3``: moto's server mode as a
subprocess, ``s3_bucket`` in tests/conftest.py), through real Celery workers and real voices:

* a job's audio lands in the store and not in Redis: no key of the stack's database holds
  more than 2 KB, and the record names the object by ``audio_ref``;
* ``GET /v1/jobs/{id}/audio`` streams the store's bytes: whole, ``Range`` (first bytes, a
  suffix, an open end), 416 in the API's error shape, ``ETag`` = the ref's first 32 digits and
  304 for ``If-None-Match``; an object gone from the store is a 410;
* a cache hit (``/v1/jobs`` and ``/v1/audio/speech``) names the same object, stored once;
  DELETE hides the audio at once while another job naming the same bytes keeps it;
* ``TTS_RESULT_STORE_REDIRECT=1`` (S3 only) answers 302 to a presigned URL that serves the bytes;
* a batch's zip is read from the store.
"""
from __future__ import annotations

import io
import json
import uuid
import zipfile
from typing import Any

import pytest
import requests

from tasks.result_store import open_result_store
from tasks.runtime import make_redis

pytestmark = pytest.mark.integration

#: The issue's bound on what a job may keep in Redis.
MAX_KEY_BYTES = 2048
#: A long text is itself in its record, its fan-out plan and the queued part messages (a few KB
#: each); a part's audio would be hundreds of KB (250 characters, about 15 s of 16-bit PCM).
LONG_TEXT_KEY_BYTES = 16 * 1024


@pytest.fixture(params=["file", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_env(store_kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings of a stack on this test's store (a fresh bucket for S3)."""
    if store_kind == "s3":
        return dict(request.getfixturevalue("s3_bucket").env)
    return {}


def unique(text: str) -> str:
    """A text no earlier test cached."""
    return f"{text} ({uuid.uuid4().hex[:8]})"


def submit(client: Any, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"voice": "heart", **body})
    assert r.status_code in (200, 202), r.get_json()
    return r.get_json()


def store_of(stack: Any) -> Any:
    """The stack's result store, as the API and the workers open it."""
    return open_result_store(stack.settings, make_redis(stack.redis_url))


def audio_ref(stack: Any, job_id: str) -> str:
    ref = stack.redis.hget(f"tts:job:{job_id}", "audio_ref")
    assert ref is not None, f"job {job_id} names no audio"
    return ref.decode()


def objects_in(stack: Any, store_kind: str, bucket: Any) -> set[str]:
    """The object names the store holds (the folder store's files, the bucket's keys)."""
    if store_kind == "s3":
        return {name.rsplit("/", 1)[-1] for name in bucket.keys()}  # noqa: SIM118 (a method, not a dict)
    root = stack.tmp / "results"
    return {p.name for p in root.glob("??/*") if p.is_file()}


def big_keys(stack: Any, limit: int = MAX_KEY_BYTES) -> dict[str, int]:
    """Every key of the stack's database with its MEMORY USAGE above ``limit``."""
    client = stack.redis
    out = {}
    for key in client.scan_iter(count=1000):
        size = client.memory_usage(key, samples=0) or 0
        if size > limit:
            out[key.decode()] = size
    return out


def test_audio_lives_in_the_store_and_downloads_stream_from_it(make_stack, store_kind, store_env):
    stack = make_stack(**store_env)
    client = stack.client
    store = store_of(stack)
    jobs = [submit(client, text=unique("Audio in the store, records in Redis."),
                   format=fmt, cache=False)["id"] for fmt in ("wav", "mp3", "flac")]
    for job_id in jobs:
        assert stack.wait_for(job_id)["status"] == "succeeded"

    # Redis holds records only: a nine-second wav used to sit in one key of ~400 KB.
    assert big_keys(stack) == {}
    assert not list(stack.redis.scan_iter("tts:job:*:audio"))

    wav = jobs[0]
    ref = audio_ref(stack, wav)
    data = store.read(ref)
    assert data is not None and len(data) > 10_000 and data[:4] == b"RIFF"
    whole = client.get(f"/v1/jobs/{wav}/audio")
    assert whole.status_code == 200 and whole.data == data
    assert whole.headers["ETag"] == f'"{ref[:32]}"'
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert whole.headers["Content-Length"] == str(len(data))
    assert whole.mimetype == "audio/wav"
    assert whole.headers["Content-Disposition"].startswith("attachment")
    assert whole.headers["Cache-Control"] == "private, max-age=3600"
    assert client.get(f"/v1/jobs/{wav}").get_json()["audio"]["bytes"] == len(data)

    first = client.get(f"/v1/jobs/{wav}/audio", headers={"Range": "bytes=0-99"})
    assert first.status_code == 206 and first.data == data[:100]
    assert first.headers["Content-Range"] == f"bytes 0-99/{len(data)}"
    assert first.headers["Content-Length"] == "100"
    suffix = client.get(f"/v1/jobs/{wav}/audio", headers={"Range": "bytes=-100"})
    assert suffix.status_code == 206 and suffix.data == data[-100:]
    assert suffix.headers["Content-Range"] == f"bytes {len(data) - 100}-{len(data) - 1}/{len(data)}"
    middle = client.get(f"/v1/jobs/{wav}/audio", headers={"Range": "bytes=1000-"})
    assert middle.status_code == 206 and middle.data == data[1000:]
    # If-Range with another ETag: the whole file.
    stale = client.get(f"/v1/jobs/{wav}/audio", headers={"Range": "bytes=0-99", "If-Range": '"0000"'})
    assert stale.status_code == 200 and stale.data == data

    beyond = client.get(f"/v1/jobs/{wav}/audio", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416
    assert beyond.get_json()["error"]["code"] == "range_not_satisfiable"
    assert beyond.headers["Content-Range"] == f"bytes */{len(data)}"

    again = client.get(f"/v1/jobs/{wav}/audio", headers={"If-None-Match": whole.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""

    for job_id in jobs[1:]:
        body = client.get(f"/v1/jobs/{job_id}/audio")
        assert body.status_code == 200 and body.data == store.read(audio_ref(stack, job_id))

    # An object gone from the store (swept, a bucket emptied) is a 410, never a 500.
    gone = jobs[2]
    if store_kind == "s3":
        store.client.delete_object(Bucket=store.bucket, Key=store.key(audio_ref(stack, gone)))
    else:
        store.path(audio_ref(stack, gone)).unlink()
    r = client.get(f"/v1/jobs/{gone}/audio")
    assert r.status_code == 410 and r.get_json()["error"]["code"] == "audio_gone"

    health = client.get("/health/detailed").get_json()["components"]["results"]
    assert health["status"] == "healthy" and health["reachable"] is True
    assert health["url"] == store.url and "testing" not in health["url"]


def test_a_cache_hit_names_the_same_object_and_delete_hides_it(make_stack, store_kind, store_env, request):
    stack = make_stack(**store_env)
    client = stack.client
    bucket = request.getfixturevalue("s3_bucket") if store_kind == "s3" else None
    text = unique("Cached once, named twice.")
    first = submit(client, text=text, format="mp3")["id"]
    assert stack.wait_for(first)["status"] == "succeeded"
    ref = audio_ref(stack, first)
    entry_key = "tts:audio:" + stack.redis.hget(f"tts:job:{first}", "cache_key").decode()
    # The worker caches the audio right after the transition that made the job succeed.
    entry = stack.wait_until(lambda: stack.redis.hgetall(entry_key), what="the cache entry")
    assert entry[b"ref"].decode() == ref and b"audio" not in entry
    assert stack.redis.memory_usage(entry_key) < 512

    hit = client.post("/v1/jobs", json={"voice": "heart", "text": text, "format": "mp3"})
    assert hit.status_code == 200 and hit.get_json()["cache_hit"] is True
    second = hit.get_json()["id"]
    assert audio_ref(stack, second) == ref
    speech = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "heart", "input": text})
    assert speech.status_code == 200 and speech.headers["X-Cache"] == "HIT"
    stored = client.get(f"/v1/jobs/{first}/audio").data
    assert speech.data == stored == client.get(f"/v1/jobs/{second}/audio").data
    assert audio_ref(stack, speech.headers["X-Job-Id"]) == ref
    assert objects_in(stack, store_kind, bucket) == {ref}  # three jobs, one object

    # DELETE: the job is gone from the API at once; the other jobs naming the bytes keep them.
    assert client.delete(f"/v1/jobs/{first}").status_code == 200
    assert client.get(f"/v1/jobs/{first}/audio").status_code == 404
    assert not stack.redis.hexists(f"tts:job:{first}", "audio_ref")
    r = client.get(f"/v1/jobs/{second}/audio")
    assert r.status_code == 200 and r.data == stored

    # An OpenAI answer of a fresh text reads the stored bytes as well.
    fresh = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "heart", "response_format": "wav",
                                                  "input": unique("Say it once."), "stream_format": "audio"})
    assert fresh.status_code == 200 and fresh.headers["X-Cache"] == "MISS"
    assert fresh.data == store_of(stack).read(audio_ref(stack, fresh.headers["X-Job-Id"]))
    assert big_keys(stack) == {}


def test_a_batch_zip_reads_every_item_from_the_store(make_stack, store_kind, store_env):
    stack = make_stack(**store_env)
    client = stack.client
    inputs = [{"text": unique(f"Batch item number {n}."), "name": f"item-{n}"} for n in range(3)]
    r = client.post("/v1/batches", json={"inputs": inputs, "defaults": {"voice": "heart", "format": "wav"}})
    assert r.status_code == 202, r.get_json()
    batch_id = r.get_json()["id"]
    stack.wait_until(lambda: client.get(f"/v1/batches/{batch_id}").get_json().get("finished_at"), timeout=180,
                     what="the batch to finish")
    zipped = client.get(f"/v1/batches/{batch_id}/result")
    assert zipped.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(zipped.data))
    manifest = json.loads(archive.read("manifest.json"))
    store = store_of(stack)
    assert [item["status"] for item in manifest["items"]] == ["succeeded"] * 3
    for item in manifest["items"]:
        assert archive.read(item["file"]) == store.read(audio_ref(stack, item["job_id"]))
    assert big_keys(stack) == {}


def test_redirect_mode_answers_302_to_a_presigned_url(make_stack, s3_bucket):
    stack = make_stack(**s3_bucket.env, TTS_RESULT_STORE_REDIRECT="1", TTS_RESULT_STORE_PRESIGN_SECONDS="120")
    client = stack.client
    job_id = submit(client, text=unique("Fetched from the bucket itself."), format="mp3", cache=False,
                    name="chapter one")["id"]
    assert stack.wait_for(job_id)["status"] == "succeeded"
    data = store_of(stack).read(audio_ref(stack, job_id))
    r = client.get(f"/v1/jobs/{job_id}/audio")
    assert r.status_code == 302
    assert r.headers["Cache-Control"] == "no-store"
    location = r.headers["Location"]
    assert location.startswith(s3_bucket.endpoint) and "X-Amz-Signature" in location
    fetched = requests.get(location, timeout=10)
    assert fetched.status_code == 200 and fetched.content == data
    assert fetched.headers["Content-Type"] == "audio/mpeg"
    assert 'filename="chapter one.mp3"' in fetched.headers["Content-Disposition"]
    ranged = requests.get(location, headers={"Range": "bytes=0-9"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == data[:10]
    # The same checks as a download: another tenant's or an unknown job is a 404, not a URL.
    assert client.get(f"/v1/jobs/{uuid.uuid4().hex}/audio").status_code == 404


def test_a_fanned_out_job_keeps_its_parts_in_the_store(make_stack, store_kind, store_env, corpus, request):
    stack = make_stack(TTS_CHUNK_FANOUT_CHARS="600", TTS_FANOUT_PART_CHARS="250", **store_env)
    client = stack.client
    bucket = request.getfixturevalue("s3_bucket") if store_kind == "s3" else None
    text = corpus.text("long/chapter.txt")[:1500] + f" Copy {uuid.uuid4().hex[:6]}."
    job_id = submit(client, text=text, format="wav", cache=False)["id"]
    refs: set[str] = set()
    largest: dict[str, int] = {}

    def finished() -> bool:
        # While it runs: the helpers' parts are named in the plan and no key holds audio.
        plan = {k.decode(): v.decode() for k, v in stack.redis.hgetall(f"tts:job:{job_id}:parts").items()}
        refs.update(v for k, v in plan.items() if k.startswith("ref:"))
        largest.update(big_keys(stack, LONG_TEXT_KEY_BYTES))
        return client.get(f"/v1/jobs/{job_id}").get_json()["status"] in ("succeeded", "failed")

    stack.wait_until(finished, timeout=240, what="the fanned-out job to finish", interval=0.2)
    body = client.get(f"/v1/jobs/{job_id}").get_json()
    assert body["status"] == "succeeded", body
    assert sum(1 for h in body["history"] if h.get("outcome") == "part_succeeded") >= 3
    assert largest == {}
    assert not stack.redis.exists(f"tts:job:{job_id}:parts")  # the plan is cleaned up, the objects expire
    final = audio_ref(stack, job_id)
    assert client.get(f"/v1/jobs/{job_id}/audio").data == store_of(stack).read(final)
    stored = objects_in(stack, store_kind, bucket)
    assert refs, "no helper stored a part (both worker children should have taken some)"
    assert final in stored and refs <= stored  # every part a helper made went through the store

"""Limits answer 429 with the usual signals, refuse without storing anything, and recover.

Real HTTP against a real stack: a key's request rate (the ``limits`` library on Redis),
its tenant's unfinished jobs, its characters per day, the global ``TTS_MAX_QUEUED`` and
the Redis memory high-water mark (on an embedded Redis of the test's own with a small
``maxmemory``).
"""
from __future__ import annotations

import uuid
from typing import Any

import redis
import requests
from conftest import wait_until

from tasks import keys
from tasks.runtime import Runtime
from tasks.tenants import KeyStore

TIMEOUT = 30


def unique(text: str) -> str:
    return f"{text} Reference {uuid.uuid4().hex[:8]}."


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def job_body(text: str = "A short line.") -> dict[str, Any]:
    return {"text": unique(text), "voice": "joe", "format": "wav", "cache": False}


def stored_jobs(client: redis.Redis) -> int:
    return int(client.zcard(keys.JOBS_INDEX))


def test_a_key_over_its_rate_gets_429_with_headers_and_recovers(make_stack: Any) -> None:
    stack = make_stack(start=False)
    _, key = KeyStore(Runtime(stack.settings).redis).create("alpha", rate="5/s")
    with stack.serve() as base:
        answers = [requests.get(f"{base}/v1/jobs", headers=bearer(key), timeout=TIMEOUT) for _ in range(12)]
        statuses = [r.status_code for r in answers]
        assert statuses[:5] == [200] * 5, statuses
        assert 429 in statuses[5:], statuses
        first_ok, refused = answers[0], next(r for r in answers if r.status_code == 429)
        assert first_ok.headers["RateLimit-Limit"] == "5"
        assert int(first_ok.headers["RateLimit-Remaining"]) == 4
        assert refused.headers["RateLimit-Limit"] == "5" and refused.headers["RateLimit-Remaining"] == "0"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2 and int(refused.headers["RateLimit-Reset"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and "5 requests per second" in error["message"]
        # another key of another tenant is not slowed by it
        _, other = KeyStore(Runtime(stack.settings).redis).create("beta")
        assert requests.get(f"{base}/v1/jobs", headers=bearer(other), timeout=TIMEOUT).status_code == 200
        # and the limited key works again once the window has moved on
        recovered = wait_until(lambda: (r := requests.get(f"{base}/v1/jobs", headers=bearer(key), timeout=TIMEOUT))
                               .status_code == 200 and r, 10, "the rate window to free a request", interval=0.25)
        assert int(recovered.headers["RateLimit-Remaining"]) >= 0


def test_max_queued_counts_the_tenants_unfinished_jobs(make_stack: Any) -> None:
    stack = make_stack(start=False)  # no worker yet: jobs stay queued
    store = KeyStore(Runtime(stack.settings).redis)
    _, key = store.create("alpha", max_queued=3)
    _, other = store.create("beta")
    with stack.serve() as base:
        ids = []
        for _ in range(3):
            r = requests.post(f"{base}/v1/jobs", json=job_body(), headers=bearer(key), timeout=TIMEOUT)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        before = stored_jobs(stack.redis)
        refused = requests.post(f"{base}/v1/jobs", json=job_body(), headers=bearer(key), timeout=TIMEOUT)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "quota_exceeded"
        assert refused.headers["RateLimit-Limit"] == "3" and refused.headers["RateLimit-Remaining"] == "0"
        assert int(refused.headers["Retry-After"]) >= 1
        batch = requests.post(f"{base}/v1/batches", json={"inputs": [job_body(), job_body()]}, headers=bearer(key),
                              timeout=TIMEOUT)
        assert batch.status_code == 429 and batch.json()["error"]["code"] == "quota_exceeded"
        assert stored_jobs(stack.redis) == before  # refused means nothing stored
        # another tenant's queue is its own
        assert requests.post(f"{base}/v1/jobs", json=job_body(), headers=bearer(other),
                             timeout=TIMEOUT).status_code == 202
        # once the work drains, the key may submit again
        stack.start_worker()
        for job_id in ids:
            wait_until(lambda j=job_id: requests.get(f"{base}/v1/jobs/{j}", headers=bearer(key), timeout=TIMEOUT)
                       .json()["status"] == "succeeded", 120, f"job {job_id}")
        again = requests.post(f"{base}/v1/jobs", json=job_body(), headers=bearer(key), timeout=TIMEOUT)
        assert again.status_code == 202, again.text


def test_characters_per_day_are_charged_for_accepted_work_only(make_stack: Any) -> None:
    stack = make_stack(start=False)
    _, key = KeyStore(Runtime(stack.settings).redis).create("alpha", chars_per_day=100)
    with stack.serve() as base:
        text = "Sixty characters of speech, give or take a few words here."
        first = requests.post(f"{base}/v1/jobs", json={"text": text, "voice": "joe", "cache": False},
                              headers=bearer(key), timeout=TIMEOUT)
        assert first.status_code == 202, first.text
        refused = requests.post(f"{base}/v1/jobs", json={"text": text, "voice": "joe", "cache": False},
                                headers=bearer(key), timeout=TIMEOUT)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "character_quota_exceeded"
        assert refused.headers["RateLimit-Limit"] == "100"
        assert int(refused.headers["RateLimit-Remaining"]) == 100 - len(text)
        assert int(refused.headers["Retry-After"]) > 3600  # the window is a day
        # a request the quota still fits goes through; a rejected one (bad voice) is not charged
        bad = requests.post(f"{base}/v1/jobs", json={"text": "Short.", "voice": "nobody"}, headers=bearer(key),
                            timeout=TIMEOUT)
        assert bad.status_code == 400
        small = requests.post(f"{base}/v1/jobs", json={"text": "Short one.", "voice": "joe", "cache": False},
                              headers=bearer(key), timeout=TIMEOUT)
        assert small.status_code == 202, small.text


def test_the_global_queue_bound_answers_429_before_anything_is_stored(make_stack: Any) -> None:
    stack = make_stack(start=False, TTS_MAX_QUEUED="4")
    with stack.serve() as base:  # open mode: the bound is for everyone
        for _ in range(4):
            assert requests.post(f"{base}/v1/jobs", json=job_body(), timeout=TIMEOUT).status_code == 202
        refused = requests.post(f"{base}/v1/jobs", json=job_body(), timeout=TIMEOUT)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full" and "TTS_MAX_QUEUED" in refused.json()["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        batch = requests.post(f"{base}/v1/batches", json={"inputs": [job_body()]}, timeout=TIMEOUT)
        assert batch.status_code == 429
        assert stored_jobs(stack.redis) == 4


def test_submits_stop_at_the_redis_memory_high_water_mark(make_stack: Any, start_redis: Any) -> None:
    small_redis = start_redis(appendonly=False, maxmemory="64mb")
    stack = make_stack(start=False, server=small_redis, TTS_REDIS_MEMORY_HIGH_WATER="0.5")
    client = stack.redis
    assert int(client.info("memory")["maxmemory"]) == 64 * 1024 * 1024
    with stack.serve() as base:
        assert requests.post(f"{base}/v1/jobs", json=job_body(), timeout=TIMEOUT).status_code == 202
        filler = b"\0" * (1024 * 1024)
        for n in range(40):  # 40 MiB of something else: over half of maxmemory
            client.set(f"filler:{n}", filler)
        # (a tuple: a 429 Response is falsy)
        (refused,) = wait_until(lambda: (r := requests.post(f"{base}/v1/jobs", json=job_body(), timeout=TIMEOUT))
                                .status_code == 429 and (r,), 10, "the memory sample to notice", interval=0.25)
        assert refused.json()["error"]["code"] == "queue_full" and "full" in refused.json()["error"]["message"]
        client.delete(*[f"filler:{n}" for n in range(40)])
        wait_until(lambda: requests.post(f"{base}/v1/jobs", json=job_body(), timeout=TIMEOUT).status_code == 202,
                   10, "submits admitted again", interval=0.25)

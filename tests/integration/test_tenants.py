"""Two real tenants over real HTTP: every cross-tenant action is refused, and looks like a missing id.

One stack (real Redis database, a real worker with the ONNX voices) and two managed keys,
``alpha`` and ``beta``, made with the key store the CLI uses, plus an admin key. Alpha makes
a job, a batch and a dead letter; beta tries everything on them.
"""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from conftest import ROOT, wait_until

from tasks.runtime import Runtime
from tasks.tenants import KeyStore, Scope

TIMEOUT = 30


def unique(text: str) -> str:
    return f"{text} Reference {uuid.uuid4().hex[:8]}."


@dataclass
class Client:
    """A requests session holding one key."""

    base: str
    key: str | None

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return requests.request(method, self.base + path, headers=headers, timeout=TIMEOUT, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("DELETE", path, **kwargs)

    def wait_job(self, job_id: str) -> dict[str, Any]:
        return wait_until(lambda: (body := self.get(f"/v1/jobs/{job_id}").json())["status"]
                          in {"succeeded", "failed", "cancelled"} and body, 120, f"job {job_id} finished")


@dataclass
class Tenants:
    alpha: Client
    beta: Client
    admin: Client
    anonymous: Client
    store: KeyStore
    stack: Any


@pytest.fixture
def tenants(make_stack: Any) -> Iterator[Tenants]:
    stack = make_stack()
    store = KeyStore(Runtime(stack.settings).redis)
    _, alpha = store.create("alpha")
    _, beta = store.create("beta")
    _, admin = store.create("ops", frozenset({Scope.ADMIN}))
    with stack.serve() as base:
        yield Tenants(Client(base, alpha), Client(base, beta), Client(base, admin), Client(base, None), store, stack)


def refused_as_missing(r: requests.Response, code: str) -> None:
    assert r.status_code == 404, (r.status_code, r.text)
    assert r.json()["error"]["code"] == code


def test_another_tenants_job_is_a_missing_job(tenants: Tenants) -> None:
    alpha, beta = tenants.alpha, tenants.beta
    text = unique("Alpha's private memo.")
    job = alpha.post("/v1/jobs", json={"text": text, "voice": "joe", "format": "wav"}).json()
    assert alpha.wait_job(job["id"])["status"] == "succeeded"
    job_id = job["id"]
    missing = uuid.uuid4().hex

    # beta sees exactly what it sees for an id that never existed
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/audio"):
        refused_as_missing(beta.get(path), "job_not_found")
        assert beta.get(path).json()["error"]["message"].replace(job_id, "X") == \
            beta.get(path.replace(job_id, missing)).json()["error"]["message"].replace(missing, "X")
    refused_as_missing(beta.delete(f"/v1/jobs/{job_id}"), "job_not_found")
    refused_as_missing(beta.post(f"/v1/jobs/{job_id}/cancel"), "job_not_found")
    assert job_id not in [j["id"] for j in beta.get("/v1/jobs").json()["jobs"]]

    # and alpha still has everything: the refused delete deleted nothing
    assert [j["id"] for j in alpha.get("/v1/jobs").json()["jobs"]] == [job_id]
    audio = alpha.get(f"/v1/jobs/{job_id}/audio")
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"


def test_the_shared_cache_never_hands_over_another_tenants_job(tenants: Tenants) -> None:
    alpha, beta = tenants.alpha, tenants.beta
    body = {"text": unique("Same words for both tenants."), "voice": "joe", "format": "wav"}
    first = alpha.post("/v1/jobs", json=body, headers={"Idempotency-Key": "report-1"}).json()
    assert alpha.wait_job(first["id"])["status"] == "succeeded"

    # the same text and the same Idempotency-Key from beta: a new job of beta's, served from the cache
    second = beta.post("/v1/jobs", json=body, headers={"Idempotency-Key": "report-1"})
    assert second.status_code == 200, second.text
    assert second.json()["id"] != first["id"] and second.json()["cache_hit"] is True
    assert beta.get(f"/v1/jobs/{second.json()['id']}/audio").content == alpha.get(
        f"/v1/jobs/{first['id']}/audio").content
    # alpha's own retry with its key still gets alpha's job
    again = alpha.post("/v1/jobs", json=body, headers={"Idempotency-Key": "report-1"})
    assert again.json()["id"] == first["id"]
    refused_as_missing(alpha.get(f"/v1/jobs/{second.json()['id']}"), "job_not_found")


def test_another_tenants_batch_is_a_missing_batch(tenants: Tenants) -> None:
    alpha, beta = tenants.alpha, tenants.beta
    batch = alpha.post("/v1/batches", json={"inputs": [{"text": unique("One.")}, {"text": unique("Two.")}],
                                           "defaults": {"voice": "joe", "format": "wav"}}).json()
    batch_id = batch["id"]
    wait_until(lambda: alpha.get(f"/v1/batches/{batch_id}").json()["status"] == "succeeded", 120, "batch done")
    for path in ("", "/items", "/result", "/audio"):
        refused_as_missing(beta.get(f"/v1/batches/{batch_id}{path}"), "batch_not_found")
    refused_as_missing(beta.delete(f"/v1/batches/{batch_id}"), "batch_not_found")
    refused_as_missing(beta.post(f"/v1/batches/{batch_id}/cancel"), "batch_not_found")
    assert beta.get("/v1/batches").json()["batches"] == []
    # the items are alpha's jobs: beta cannot reach them one by one either
    items = alpha.get(f"/v1/batches/{batch_id}/items").json()["items"]
    for item in items:
        refused_as_missing(beta.get(f"/v1/jobs/{item['id']}/audio"), "job_not_found")
    assert [b["id"] for b in alpha.get("/v1/batches").json()["batches"]] == [batch_id]
    assert alpha.get(f"/v1/batches/{batch_id}/result").status_code == 200


def test_tenant_keys_cannot_touch_the_dead_letter_queue_or_operator_views(make_stack: Any) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="permanent")
    store = KeyStore(Runtime(stack.settings).redis)
    _, alpha_key = store.create("alpha")
    _, beta_key = store.create("beta")
    _, admin_key = store.create("ops", frozenset({Scope.ADMIN}))
    with stack.serve() as base:
        alpha, beta, admin, nobody = (Client(base, k) for k in (alpha_key, beta_key, admin_key, None))
        secret = unique("Alpha's confidential failing text.")
        job = alpha.post("/v1/jobs", json={"text": secret, "voice": "joe"}).json()
        assert alpha.wait_job(job["id"])["status"] == "failed"

        dlq_actions = [("GET", "/v1/dlq"), ("GET", f"/v1/dlq/{job['id']}"), ("POST", f"/v1/dlq/{job['id']}/replay"),
                       ("POST", "/v1/dlq/replay"), ("DELETE", f"/v1/dlq/{job['id']}"), ("DELETE", "/v1/dlq")]
        operator_views = ["/dashboard", "/metrics", "/metrics/json", "/metrics/prometheus", "/api/status/summary",
                          "/api/metrics/history", "/health", "/health/components", "/health/detailed"]
        for method, path in dlq_actions + [("GET", p) for p in operator_views]:
            for tenant in (alpha, beta):
                r = tenant.call(method, path)
                assert r.status_code == 403, (method, path, r.status_code)
                assert r.json()["error"]["code"] == "insufficient_scope"
            r = nobody.call(method, path)
            assert r.status_code == 401 and "WWW-Authenticate" in r.headers, (method, path)
        # nothing was replayed or purged by those attempts
        listing = admin.get("/v1/dlq").json()
        assert listing["total"] == 1 and listing["items"][0]["tenant"] == "alpha"
        # the operator views answer the admin and never show the job's text
        for path in operator_views:
            r = admin.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            assert secret not in r.text and "confidential" not in r.text, path
        assert "confidential" not in json.dumps(listing)  # the listing has lengths, not texts
        assert admin.get(f"/v1/dlq/{job['id']}").json()["request"]["text"] == secret  # one record, for an admin
        # the probes stay open
        assert nobody.get("/health/live").status_code == 200
        assert nobody.get("/health/ready").status_code in (200, 503)


def test_scopes_revocation_and_the_dashboard_login(tenants: Tenants) -> None:
    store, base = tenants.store, tenants.alpha.base
    _, reader_key = store.create("alpha", frozenset({Scope.READ}))
    reader = Client(base, reader_key)
    assert reader.get("/v1/jobs").status_code == 200
    r = reader.post("/v1/jobs", json={"text": unique("Not allowed."), "voice": "joe"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert reader.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "alloy"}).status_code == 403

    record, doomed = store.create("alpha")
    assert Client(base, doomed).get("/v1/jobs").status_code == 200
    store.revoke(record.id)
    r = Client(base, doomed).get("/v1/jobs")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert Client(base, "tts_" + "0" * 12 + "_" + "x" * 43).get("/v1/jobs").status_code == 401

    # a browser gets the Basic prompt, and the admin key as the password opens the page
    page = requests.get(base + "/dashboard", timeout=TIMEOUT)
    assert page.status_code == 401 and page.headers["WWW-Authenticate"].startswith("Basic")
    login = base64.b64encode(f"ops:{tenants.admin.key}".encode()).decode()
    page = requests.get(base + "/dashboard", headers={"Authorization": f"Basic {login}"}, timeout=TIMEOUT)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert requests.get(base + "/dashboard/static/dashboard.js", timeout=TIMEOUT).status_code == 200


def test_keys_cli_creates_lists_and_revokes(make_stack: Any) -> None:
    stack = make_stack(start=False)
    env = {**stack.env}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "keys", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    made = cli("create", "--tenant", "gamma", "--scopes", "read", "--rate", "5/s", "--max-queued", "7",
               "--chars-per-day", "1000")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("tts_")
    assert key not in stack.redis.keys("*").__repr__()  # only its hash is stored
    listed = json.loads(cli("list", "--json").stdout)
    (entry,) = listed
    assert entry["tenant"] == "gamma" and entry["scopes"] == ["read"] and entry["rate"] == "5/second"
    assert entry["max_queued"] == 7 and entry["chars_per_day"] == 1000 and entry["revoked_at"] is None
    assert key not in json.dumps(listed)
    with stack.serve() as base:
        assert Client(base, key).get("/v1/jobs").status_code == 200
        assert Client(base, None).get("/v1/jobs").status_code == 401  # a key exists: the API is closed
        assert cli("revoke", entry["id"]).returncode == 0
        assert Client(base, key).get("/v1/jobs").status_code == 401
        # the last key revoked leaves the API closed, not open
        assert Client(base, None).get("/v1/jobs").status_code == 401
    assert json.loads(cli("list", "--json").stdout)[0]["revoked_at"] is not None
    bad = cli("create", "--tenant", "Bad Name")
    assert bad.returncode == 2 and "not a valid name" in bad.stderr
    bad = cli("create", "--tenant", "ok", "--scopes", "read,root")
    assert bad.returncode == 2 and "root" in bad.stderr
    bad = cli("create", "--tenant", "ok", "--rate", "fast")
    assert bad.returncode == 2 and "rate" in bad.stderr


def test_with_redis_down_a_closed_api_stays_closed_and_answers_fast(make_stack: Any, own_redis: Any) -> None:
    stack = make_stack(start=False, server=own_redis, TTS_API_KEYS="bootstrap-admin-key")
    _, key = KeyStore(Runtime(stack.settings).redis).create("alpha")
    with stack.serve() as base:
        tenant, boot, nobody = Client(base, key), Client(base, "bootstrap-admin-key"), Client(base, None)
        assert tenant.get("/v1/jobs").status_code == 200
        own_redis.kill()
        r = tenant.get("/v1/jobs")
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
        # later lookups do not wait for Redis again: it failed a moment ago
        started = time.monotonic()
        assert tenant.get("/v1/jobs").status_code == 503
        assert time.monotonic() - started < 1.0
        assert nobody.get("/v1/jobs").status_code in (401, 503)  # never open because Redis is down
        health = boot.get("/health")  # the bootstrap key needs no Redis: the health view explains the outage
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        own_redis.restart()
        wait_until(lambda: tenant.get("/v1/jobs").status_code == 200, 30, "the key to work again", interval=0.5)


def test_admins_manage_keys_over_http_and_tenants_cannot(tenants: Tenants) -> None:
    admin, alpha, nobody = tenants.admin, tenants.alpha, tenants.anonymous
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/0123456789ab")):
        r = alpha.call(method, path, json={"tenant": "alpha", "scopes": ["admin"]})
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", (method, path)
        assert nobody.call(method, path, json={"tenant": "x"}).status_code == 401
    made = admin.post("/v1/keys", json={"tenant": "delta", "scopes": ["read"], "rate": "3/s", "max_queued": 9})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["tenant"] == "delta" and body["scopes"] == ["read"] and body["rate"] == "3/second"
    assert body["key"].startswith("tts_") and body["callback_secret"]
    delta = Client(admin.base, body["key"])
    assert delta.get("/v1/jobs").json()["jobs"] == []
    listed = admin.get("/v1/keys").json()["keys"]
    assert body["id"] in [k["id"] for k in listed] and body["key"] not in json.dumps(listed)
    assert admin.delete(f"/v1/keys/{body['id']}").json()["revoked_at"] is not None
    assert delta.get("/v1/jobs").status_code == 401
    refused_as_missing(admin.delete("/v1/keys/not-an-id"), "key_not_found")
    for bad in ({"tenant": "Bad"}, {"tenant": "ok", "scopes": ["root"]}, {"tenant": "ok", "rate": "fast"},
                {"tenant": "ok", "max_queued": 0}, {"tenant": "ok", "extra": 1}, {"scopes": ["read"]}):
        r = admin.post("/v1/keys", json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (bad, r.text)


def test_an_open_api_does_not_let_anyone_make_the_first_key(make_stack: Any) -> None:
    stack = make_stack(start=False)
    with stack.serve() as base:
        r = requests.post(f"{base}/v1/keys", json={"tenant": "mine", "scopes": ["admin"]}, timeout=TIMEOUT)
        assert r.status_code == 403 and r.json()["error"]["code"] == "keys_not_configured"
        assert requests.get(f"{base}/v1/jobs", timeout=TIMEOUT).status_code == 200  # still open

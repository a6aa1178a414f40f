"""Keys, scopes and rates as pure logic (fakeredis for the key store; the HTTP side is in
tests/integration/test_tenants.py and test_limits.py)."""
from __future__ import annotations

import base64

import fakeredis
import pytest

from app.auth import presented_key, required_scope
from tasks.exceptions import InvalidRequest, KeyNotFound
from tasks.tenants import DEFAULT_TENANT, KeyStore, Scope, check_tenant_name, parse_rate, parse_scopes


@pytest.mark.parametrize(("raw", "expected"), [
    ("10/s", "10/second"), ("10/second", "10/second"), ("600/minute", "600/minute"), ("5 per second", "5/second"),
    ("100/h", "100/hour"), ("1000/day", "1000/day"), ("3/10 s", "3/10 second"),
])
def test_rates_are_written_the_way_the_limiter_reads_them(raw: str, expected: str) -> None:
    assert parse_rate(raw) == expected


@pytest.mark.parametrize("raw", ["fast", "0/s", "10", "10/fortnight", "-1/s", "/s"])
def test_bad_rates_name_the_parameter(raw: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_rate(raw)
    assert info.value.param == "rate"


def test_scopes_parse_and_refuse_unknown_ones() -> None:
    assert parse_scopes("submit, read") == {Scope.SUBMIT, Scope.READ}
    assert parse_scopes(["ADMIN"]) == {Scope.ADMIN}
    for bad in ("", "read,root", " , "):
        with pytest.raises(InvalidRequest):
            parse_scopes(bad)


@pytest.mark.parametrize("name", ["alpha", "team-7", "a.b_c", "x" * 63])
def test_tenant_names(name: str) -> None:
    assert check_tenant_name(name) == name


@pytest.mark.parametrize("name", ["", "Alpha", "has space", "-lead", "x" * 64, "a:b", "é"])
def test_bad_tenant_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        check_tenant_name(name)


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/v1/jobs", Scope.READ), ("GET", "/v1/jobs/abc/audio", Scope.READ), ("POST", "/v1/jobs", Scope.SUBMIT),
    ("DELETE", "/v1/jobs/abc", Scope.SUBMIT), ("GET", "/v1/batches/abc/result", Scope.READ),
    ("POST", "/v1/batches", Scope.SUBMIT), ("POST", "/v1/audio/speech", Scope.SUBMIT),
    ("GET", "/v1/audio/voices", Scope.READ), ("GET", "/v1/models", Scope.READ), ("GET", "/v1/voices", Scope.READ),
    ("GET", "/v1/dlq", Scope.ADMIN), ("POST", "/v1/dlq/replay", Scope.ADMIN), ("GET", "/dashboard", Scope.ADMIN),
    ("GET", "/metrics", Scope.ADMIN), ("GET", "/metrics/prometheus", Scope.ADMIN),
    ("GET", "/api/metrics/stream", Scope.ADMIN), ("GET", "/health", Scope.ADMIN),
    ("GET", "/health/detailed", Scope.ADMIN), ("GET", "/something/new", Scope.ADMIN),
    ("GET", "/health/live", None), ("GET", "/health/ready", None), ("GET", "/dashboard/static/dashboard.js", None),
])
def test_every_route_needs_a_scope_and_unknown_ones_need_admin(method: str, path: str, scope: Scope | None) -> None:
    assert required_scope(path, method) == scope


def test_a_key_comes_as_bearer_x_api_key_or_a_basic_password() -> None:
    assert presented_key({"Authorization": "Bearer k1"}) == "k1"
    assert presented_key({"X-API-Key": " k2 "}) == "k2"
    basic = base64.b64encode(b"anyone:k3").decode()
    assert presented_key({"Authorization": f"Basic {basic}"}) == "k3"
    assert presented_key({"Authorization": "Basic not-base64!"}) is None
    assert presented_key({"Authorization": "Basic " + base64.b64encode(b"user-only:").decode()}) is None
    assert presented_key({}) is None


def test_the_key_store_keeps_hashes_and_revokes_at_once() -> None:
    client = fakeredis.FakeRedis()
    store = KeyStore(client)
    assert store.authenticate(None) == (False, None)  # nothing made: open
    record, key = store.create("alpha", frozenset({Scope.READ}), rate="2/s", max_queued=5, chars_per_day=10)
    assert key.startswith(f"tts_{record.id}_") and len(key) == 4 + 12 + 1 + 43
    dump = b"".join(client.dump(name) or b"" for name in client.keys("*"))
    assert key.encode() not in dump and record.callback_secret
    configured, principal = store.authenticate(key)
    assert configured and principal is not None
    assert (principal.tenant, principal.key_id, principal.rate, principal.max_queued, principal.chars_per_day) == \
        ("alpha", record.id, "2/second", 5, 10)
    assert principal.allows(Scope.READ) and not principal.allows(Scope.SUBMIT)
    assert store.authenticate("tts_" + "0" * 12 + "_" + "a" * 43) == (True, None)
    assert store.authenticate("not-a-key") == (True, None)
    assert [r.public()["tenant"] for r in store.list()] == ["alpha"]
    assert "digest" not in store.list()[0].public() and "callback_secret" not in store.list()[0].public()
    store.revoke(record.id)
    assert store.authenticate(key) == (True, None)
    assert store.list()[0].revoked_at is not None
    assert store.callback_secret(record.id) is None
    with pytest.raises(KeyNotFound):
        store.revoke("000000000000")


def test_bootstrap_keys_are_admins_of_the_default_tenant_without_redis() -> None:
    store = KeyStore(fakeredis.FakeRedis(), bootstrap=("boot-one", "boot-two"))
    configured, principal = store.authenticate("boot-two")
    assert configured and principal is not None
    assert principal.tenant == DEFAULT_TENANT and principal.key_id == "bootstrap-1" and principal.is_admin
    assert store.authenticate("boot-three") == (True, None)
    assert store.authenticate(None) == (True, None)


def test_an_admin_key_holds_every_scope() -> None:
    store = KeyStore(fakeredis.FakeRedis())
    _, key = store.create("ops", frozenset({Scope.ADMIN}))
    principal = store.authenticate(key)[1]
    assert principal is not None and all(principal.allows(scope) for scope in Scope)
    with pytest.raises(InvalidRequest):
        store.create("ops", max_queued=0)

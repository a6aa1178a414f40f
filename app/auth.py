"""Who is calling, and what they may do: API keys as principals (``tasks.tenants``).

Every request is matched to a :class:`~tasks.tenants.Principal` before its view runs:

* the key comes as ``Authorization: Bearer <key>``, ``X-API-Key: <key>`` or, for a
  browser opening the dashboard, HTTP Basic with the key as the password;
* with no key configured (no ``TTS_API_KEYS``, no managed key live) every caller is the
  open principal: the ``default`` tenant with every scope, as before keys existed;
* each route needs one scope (:func:`required_scope`): ``read`` for lookups, ``submit``
  for creating and cancelling, ``admin`` for the dead-letter queue, key management and
  every operator view (dashboard, ``/metrics*``, ``/api/*``, ``/health`` beyond the
  probes). Only the liveness/readiness probes and static files stay open: a load balancer
  and a browser loading the page's script need no key, and they show nothing of anyone's jobs;
* a missing or unknown key is a 401 (with ``WWW-Authenticate``), a key without the scope a 403;
* with Redis unreachable, a managed key cannot be checked (503), but an API last seen open,
  or not yet seen at all, stays open, so the health views explain the outage instead of a
  bare 503: every job, batch and managed key lives in Redis, so while it is down those views
  are all there is to read. An API last seen closed stays closed; ``TTS_API_KEYS`` closes it
  even then (bootstrap keys are checked without Redis). After a failed lookup the next
  :data:`REDIS_RETRY_SECONDS` decide from what was last seen without asking Redis, so a hung
  Redis costs one socket timeout, not one per request.

A key with a rate (``--rate``) is limited here, before the view: 429 with ``Retry-After``
and the ``RateLimit-*`` headers (``app.ratelimit``).
"""
from __future__ import annotations

import base64
import binascii
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from flask import Flask, current_app, g, request

from tasks.tenants import OPEN_PRINCIPAL, KeyStore, Principal, Scope

from .errors import error_response
from .ratelimit import RequestLimiter

log = logging.getLogger(__name__)

__all__ = ["current_principal", "install_auth", "required_scope"]

#: Seconds after a failed key lookup during which requests are decided without asking Redis.
REDIS_RETRY_SECONDS = 5.0

#: Paths anyone may call, keys or not: the probes a load balancer uses, static files and the
#: page for people (``/app``, which asks for a key itself when the API answers 401).
OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/health/voices", "/app", "/openapi.json", "/docs"})
OPEN_PREFIXES = ("/static/", "/dashboard/static/", "/app/static/", "/docs/")
#: Prefixes that need ``admin`` whatever the method.
ADMIN_PREFIXES = ("/v1/dlq", "/v1/keys", "/dashboard", "/metrics", "/api/", "/health")
#: Prefixes where GET needs ``read`` and any other method ``submit``.
TENANT_PREFIXES = ("/v1/jobs", "/v1/batches", "/v1/audio/", "/v1/voices", "/v1/models")


def required_scope(path: str, method: str) -> Scope | None:
    """The scope a request needs (None: open to anyone). Unknown paths need ``admin``."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path.startswith(TENANT_PREFIXES) and not path.startswith(ADMIN_PREFIXES):
        if path == "/v1/audio/speech" or method not in {"GET", "HEAD", "OPTIONS"}:
            return Scope.SUBMIT
        return Scope.READ
    return Scope.ADMIN


def presented_key(headers: Any) -> str | None:
    """The key a request carries: Bearer, ``X-API-Key`` or the password of HTTP Basic."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2].strip()
        return password or None
    return headers.get("X-API-Key", "").strip() or None


def current_principal() -> Principal:
    """The principal of the request being served (the open one outside a request)."""
    return g.get("principal", OPEN_PRINCIPAL)


def key_store() -> KeyStore:
    """This app's key store."""
    return current_app.extensions["tts"]["keys"]


def install_auth(app: Flask) -> None:
    """Authenticate every request, check its scope and its key's rate."""
    runtime = app.extensions["tts"]["runtime"]
    store = KeyStore(runtime.redis, bootstrap=app.extensions["tts"]["settings"].api_keys)
    limiter = RequestLimiter(runtime)
    app.extensions["tts"]["keys"] = store
    app.extensions["tts"]["limiter"] = limiter
    configured_at_start = _say_whether_open(store)
    state = _LookupState(configured=bool(configured_at_start),
                         redis_failed_at=time.monotonic() if configured_at_start is None else 0.0)

    @app.before_request
    def _authenticate() -> Any:
        scope = required_scope(request.path, request.method)
        if scope is None:
            return None
        token = presented_key(request.headers)
        configured, principal = _look_up(store, state, token)
        if not configured:
            g.principal = OPEN_PRINCIPAL
            return None
        if principal is None:
            return _unauthorized(bool(token))
        g.principal = principal
        if not principal.allows(scope):
            return error_response(403, "insufficient_scope",
                                  f"this key may not {_what(scope)}: it needs the {scope.value!r} scope "
                                  f"(it has {', '.join(sorted(s.value for s in principal.scopes))})")
        return limiter.check(principal)

    @app.after_request
    def _rate_headers(response: Any) -> Any:
        return limiter.add_headers(response)


def _look_up(store: KeyStore, state: _LookupState, token: str | None) -> tuple[bool, Principal | None]:
    """(keys configured, the principal of ``token``), deciding from ``state`` while Redis is failing."""
    bootstrap = store.match_bootstrap(token)
    if bootstrap is not None:
        return True, bootstrap
    if time.monotonic() - state.redis_failed_at < REDIS_RETRY_SECONDS:
        if state.configured:
            raise redis.exceptions.ConnectionError("Redis did not answer the last API key lookup")
        return False, None
    try:
        configured, principal = store.authenticate(token)
    except redis.exceptions.RedisError:
        state.redis_failed_at = time.monotonic()
        if state.configured:
            raise  # the error handler answers 503: a key cannot be checked without Redis
        return False, None
    state.redis_failed_at = 0.0
    state.configured = configured
    return configured, principal


@dataclass
class _LookupState:
    """What the last key lookup said, and when Redis last failed one (monotonic seconds)."""

    configured: bool
    redis_failed_at: float = 0.0


def _what(scope: Scope) -> str:
    return {Scope.READ: "read jobs", Scope.SUBMIT: "submit or cancel work",
            Scope.ADMIN: "use operator views, the dead-letter queue or key management"}[scope]


def _unauthorized(had_token: bool) -> Any:
    message = ("the API key is not valid (unknown or revoked)" if had_token else
               "an API key is required: send 'Authorization: Bearer <key>' (or X-API-Key: <key>)")
    # A browser that opens the dashboard gets the Basic prompt; API clients read the Bearer challenge.
    challenge = 'Basic realm="tts-batch"' if request.path.startswith("/dashboard") else 'Bearer realm="tts-batch"'
    return error_response(401, "invalid_api_key", message, headers={"WWW-Authenticate": challenge})


def _say_whether_open(store: KeyStore) -> bool | None:
    """Log whether the API is open; returns whether keys are configured (None when Redis cannot say)."""
    if store.bootstrap:
        log.info("API keys required: %d bootstrap key(s) in TTS_API_KEYS", len(store.bootstrap))
        return True
    try:
        made, live = store.made_count(), store.live_count()
    except Exception as exc:  # noqa: BLE001 - Redis down at start: said later, per request
        log.warning("could not count API keys at start (%s); they are checked per request", exc)
        return None
    if made:
        log.info("API keys required: %d managed key(s), %d of them live", made, live)
    else:
        log.warning("no API key configured: the API is OPEN to anyone who can reach it "
                    "(create one with 'tts-batch keys create --tenant NAME --scopes admin')")
    return bool(made)

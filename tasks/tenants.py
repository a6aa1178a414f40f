"""Tenants, API keys and what each key may do.

A key is a principal: it belongs to one tenant, holds scopes and may carry limits.

* **Scopes.** ``read`` (poll, list, download, voices), ``submit`` (create and cancel jobs
  and batches, the OpenAI speech call) and ``admin`` (the dead-letter queue, key
  management and the operator views; an admin key may also read and submit).
* **Tenants.** Every job, batch and dead-letter record carries its tenant, and every API
  read and write is filtered by the caller's. Another tenant's id looks exactly like an
  id that does not exist (404), so ids do not leak.
* **Storage.** Only the SHA-256 of a key is kept (``tts:apikey:{sha256}``), so a copy of
  Redis does not hand out working keys. Keys are long random strings, not passwords, so
  a plain hash is enough: there is nothing to guess. The listing (``tts:apikeys``) keeps
  each key's id, tenant, scopes, limits and times, never the key.
* **Bootstrap.** ``TTS_API_KEYS`` are admin keys of the ``default`` tenant, checked
  without Redis, so an operator can always get in. With no key at all (none configured,
  none ever created) the API is open and every caller is the ``default`` tenant's admin, as
  before keys existed; the API says so in its log at start. Once a key has been created the
  API stays closed, even after every key is revoked.

A key looks like ``tts_<id>_<secret>``: the id is what ``tts-batch keys list`` shows and
``revoke`` takes, the secret is 43 URL-safe characters from :func:`secrets.token_urlsafe`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import limits
import redis

from . import keys
from .exceptions import InvalidRequest, KeyNotFound
from .redis_values import text_or_none

__all__ = [
    "DEFAULT_SCOPES",
    "DEFAULT_TENANT",
    "OPEN_PRINCIPAL",
    "RATE_PATTERN",
    "TENANT_PATTERN",
    "ApiKey",
    "KeyStore",
    "Principal",
    "Scope",
    "bootstrap_principal",
    "check_tenant_name",
    "parse_rate",
    "parse_scopes",
]

#: The tenant of open mode, of bootstrap keys and of records written before tenants existed.
DEFAULT_TENANT = "default"

#: What a tenant name may look like (it appears in logs, metrics labels and key listings).
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")

KEY_PREFIX = "tts_"
_KEY_PATTERN = re.compile(r"tts_([0-9a-f]{12})_[A-Za-z0-9_-]{43}")

#: A rate as the HTTP API takes it (the CLI's :func:`parse_rate` also reads ``5 per second``).
RATE_PATTERN = r"^[1-9][0-9]{0,8}/(s|sec|second|m|min|minute|h|hour|d|day)$"

_UNITS = {"s": "second", "sec": "second", "second": "second", "m": "minute", "min": "minute",
          "minute": "minute", "h": "hour", "hour": "hour", "d": "day", "day": "day"}


class Scope(str, Enum):
    """What a key may do."""

    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"


#: Scopes a new key gets when ``--scopes`` is not given.
DEFAULT_SCOPES = frozenset({Scope.SUBMIT, Scope.READ})


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, the key's id, its scopes and its limits."""

    tenant: str
    key_id: str
    scopes: frozenset[Scope]
    #: Requests per window, as the ``limits`` library writes it (``"10/second"``); None: unlimited.
    rate: str | None = None
    #: Unfinished jobs the key's tenant may have at once when this key submits; None: unlimited.
    max_queued: int | None = None
    #: Characters this key may submit per UTC day; None: unlimited.
    chars_per_day: int | None = None
    #: True for the caller of an API with no key configured.
    open_mode: bool = False

    def allows(self, scope: Scope) -> bool:
        """True when the key holds ``scope`` (``admin`` holds every scope)."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    @property
    def is_admin(self) -> bool:
        """True for an admin key (and in open mode)."""
        return Scope.ADMIN in self.scopes


#: Every caller of an API that has no key configured.
OPEN_PRINCIPAL = Principal(tenant=DEFAULT_TENANT, key_id="open", scopes=frozenset(Scope), open_mode=True)


def bootstrap_principal(index: int) -> Principal:
    """The principal of the ``index``-th key of ``TTS_API_KEYS``: an admin of the default tenant."""
    return Principal(tenant=DEFAULT_TENANT, key_id=f"bootstrap-{index}", scopes=frozenset(Scope))


def check_tenant_name(name: str) -> str:
    """``name`` when it is a valid tenant name (lower-case letters, digits, ``_.-``; 1 to 63)."""
    if not TENANT_PATTERN.fullmatch(name):
        raise InvalidRequest(f"tenant {name!r} is not a valid name: use 1 to 63 lower-case letters, digits, "
                             "'_', '.' or '-', starting with a letter or digit", param="tenant")
    return name


def parse_scopes(raw: str | Iterable[str]) -> frozenset[Scope]:
    """Scopes from ``"submit,read"`` (or a list): InvalidRequest naming any unknown one."""
    names = [part.strip().lower() for part in (raw.split(",") if isinstance(raw, str) else raw)]
    names = [name for name in names if name]
    if not names:
        raise InvalidRequest("give at least one scope: read, submit or admin", param="scopes")
    valid = {scope.value for scope in Scope}
    unknown = sorted(set(names) - valid)
    if unknown:
        raise InvalidRequest(f"unknown scope(s) {', '.join(unknown)}; valid: read, submit, admin", param="scopes")
    return frozenset(Scope(name) for name in names)


def parse_rate(raw: str) -> str:
    """A rate such as ``10/s``, ``600/minute`` or ``5 per second`` in the ``limits`` library's form."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:/|per)\s*(\d*)\s*([a-z]+)\s*", raw.lower())
    unit = _UNITS.get(match.group(3)) if match else None
    if match is None or unit is None or int(match.group(1)) < 1:
        raise InvalidRequest(f"rate {raw!r} is not valid: write it as N/s, N/minute, N/hour or N/day "
                             "(N at least 1)", param="rate")
    multiple = match.group(2)
    rate = f"{int(match.group(1))}/{multiple + ' ' if multiple else ''}{unit}"
    limits.parse(rate)  # the limiter must read it back
    return rate


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class ApiKey:
    """A managed key as stored (never the key itself)."""

    id: str
    tenant: str
    scopes: list[str]
    created_at: float
    digest: str
    rate: str | None = None
    max_queued: int | None = None
    chars_per_day: int | None = None
    revoked_at: float | None = None
    #: Signs this key's job callbacks (``X-TTS-Signature``); shown once, with the key.
    callback_secret: str = field(default="", repr=False)

    def principal(self) -> Principal:
        """The principal a request holding this key acts as."""
        return Principal(tenant=self.tenant, key_id=self.id, scopes=frozenset(Scope(s) for s in self.scopes),
                         rate=self.rate, max_queued=self.max_queued, chars_per_day=self.chars_per_day)

    def public(self) -> dict[str, Any]:
        """The key as ``keys list`` shows it: no key, no hash, no secret."""
        return {"id": self.id, "tenant": self.tenant, "scopes": sorted(self.scopes), "rate": self.rate,
                "max_queued": self.max_queued, "chars_per_day": self.chars_per_day,
                "created_at": self.created_at, "revoked_at": self.revoked_at}

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ApiKey:
        """Read a stored key."""
        return cls(**json.loads(raw))


class KeyStore:
    """Managed API keys in Redis, plus the bootstrap keys of ``TTS_API_KEYS``."""

    def __init__(self, client: redis.Redis, bootstrap: tuple[str, ...] = ()) -> None:
        self.redis = client
        self.bootstrap = bootstrap

    def create(self, tenant: str, scopes: frozenset[Scope] = DEFAULT_SCOPES, rate: str | None = None,
               max_queued: int | None = None, chars_per_day: int | None = None) -> tuple[ApiKey, str]:
        """Make a key; returns (its record, the key). The key is not stored and cannot be shown again."""
        check_tenant_name(tenant)
        for name, value in (("max_queued", max_queued), ("chars_per_day", chars_per_day)):
            if value is not None and value < 1:
                raise InvalidRequest(f"{name} must be at least 1, got {value}", param=name)
        key_id = secrets.token_hex(6)
        plain = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(id=key_id, tenant=tenant, scopes=sorted(s.value for s in scopes), created_at=time.time(),
                        digest=_digest(plain), rate=parse_rate(rate) if rate else None, max_queued=max_queued,
                        chars_per_day=chars_per_day, callback_secret=secrets.token_urlsafe(32))
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.api_key(record.digest), record.to_json())
        pipe.hset(keys.API_KEYS, key_id, record.to_json())
        pipe.sadd(keys.API_KEYS_LIVE, key_id)
        pipe.execute()
        return record, plain

    def list(self) -> list[ApiKey]:
        """Every managed key, revoked ones included, oldest first."""
        records = [ApiKey.from_json(raw) for raw in self.redis.hvals(keys.API_KEYS)]
        return sorted(records, key=lambda record: record.created_at)

    def get(self, key_id: str) -> ApiKey:
        """One key's record, or KeyNotFound."""
        raw = self.redis.hget(keys.API_KEYS, key_id)
        if raw is None:
            raise KeyNotFound(key_id)
        return ApiKey.from_json(raw)

    def revoke(self, key_id: str) -> ApiKey:
        """Stop a key working at once; its record stays listed with ``revoked_at``."""
        record = self.get(key_id)
        if record.revoked_at is None:
            record.revoked_at = time.time()
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.api_key(record.digest))
        pipe.hset(keys.API_KEYS, key_id, record.to_json())
        pipe.srem(keys.API_KEYS_LIVE, key_id)
        pipe.execute()
        return record

    def callback_secret(self, key_id: str | None) -> str | None:
        """The secret that signs callbacks of jobs submitted with ``key_id`` (None: not a live managed key)."""
        if not key_id:
            return None
        try:
            record = self.get(key_id)
        except KeyNotFound:
            return None
        return record.callback_secret if record.revoked_at is None else None

    def match_bootstrap(self, token: str | None) -> Principal | None:
        """The bootstrap principal ``token`` is (constant-time against every key), without Redis."""
        found: Principal | None = None
        if token:
            for index, key in enumerate(self.bootstrap):
                if hmac.compare_digest(token.encode("utf-8", "surrogatepass"), key.encode()) and found is None:
                    found = bootstrap_principal(index)
        return found

    def authenticate(self, token: str | None) -> tuple[bool, Principal | None]:
        """(keys are configured, the principal ``token`` stands for or None).

        One round trip: the key's record and whether any managed key was ever made (revoking
        the last key leaves the API closed, never open). Bootstrap keys are compared in
        constant time against every configured key.
        """
        bootstrap = self.match_bootstrap(token)
        if bootstrap is not None:
            return True, bootstrap
        candidate = token if token and _KEY_PATTERN.fullmatch(token) else None
        if self.bootstrap and candidate is None:
            return True, None
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(keys.API_KEYS)
        if candidate is not None:
            pipe.get(keys.api_key(_digest(candidate)))
        replies = pipe.execute()
        configured = bool(self.bootstrap) or int(replies[0]) > 0
        raw = text_or_none(replies[1]) if candidate is not None else None
        if raw is None:
            return configured, None
        return True, ApiKey.from_json(raw).principal()

    def live_count(self) -> int:
        """How many managed keys work now."""
        return int(self.redis.scard(keys.API_KEYS_LIVE))

    def made_count(self) -> int:
        """How many managed keys were ever made (revoked ones too): any closes the API."""
        return int(self.redis.hlen(keys.API_KEYS))


def key_id_of(token: str) -> str | None:
    """The id part of a managed key (for logs), or None."""
    match = _KEY_PATTERN.fullmatch(token)
    return match.group(1) if match else None


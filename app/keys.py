"""``/v1/keys``: key management over HTTP for admin keys, the same operations as ``tts-batch keys``.

``POST`` makes a key and answers it once (201, with its callback secret); ``GET`` lists every
key without the keys themselves; ``DELETE /v1/keys/{id}`` revokes one at once. Every route
needs the ``admin`` scope (``app.auth``), and a real key: an open API (no key yet) refuses
them with 403, since the first caller to make a key would lock everyone else out. The first
key is made with the CLI, on the Redis side.
"""
from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request

from tasks.exceptions import InvalidRequest, KeyNotFound
from tasks.tenants import DEFAULT_SCOPES, parse_scopes

from .auth import current_principal, key_store
from .errors import ApiError
from .requests import json_body

bp = Blueprint("keys", __name__, url_prefix="/v1/keys")


@bp.before_request
def _needs_a_real_key() -> None:
    if current_principal().open_mode:
        raise ApiError(403, "keys_not_configured",
                       "no API key exists yet: make the first one with 'tts-batch keys create --tenant NAME "
                       "--scopes admin' on the Redis side, then manage keys here with it")

_FIELDS = {"tenant", "scopes", "rate", "max_queued", "chars_per_day"}
#: What a key id looks like (``tasks.tenants``: 12 hex characters).
_KEY_ID = re.compile(r"[0-9a-f]{12}")


def _optional_count(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**53:
        raise InvalidRequest(f"'{name}' must be a whole number from 1 to 2**53, got {value!r}", param=name)
    return value


@bp.post("")
def create_key() -> Any:
    """Make a key: 201 with the key (shown this once) and its callback secret."""
    body = json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object with 'tenant'")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}")
    tenant, scopes, rate = body.get("tenant"), body.get("scopes"), body.get("rate")
    if not isinstance(tenant, str):
        raise InvalidRequest("'tenant' is required: a lower-case name", param="tenant")
    if scopes is not None and (not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes)):
        raise InvalidRequest("'scopes' must be a list such as [\"submit\", \"read\"]", param="scopes")
    if rate is not None and not isinstance(rate, str):
        raise InvalidRequest("'rate' must be a string such as \"10/s\"", param="rate")
    record, key = key_store().create(tenant, parse_scopes(scopes) if scopes is not None else DEFAULT_SCOPES,
                                     rate=rate, max_queued=_optional_count(body, "max_queued"),
                                     chars_per_day=_optional_count(body, "chars_per_day"))
    response = jsonify({**record.public(), "key": key, "callback_secret": record.callback_secret})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("")
def list_keys() -> Any:
    """Every key (revoked ones too), oldest first, without the keys."""
    return jsonify({"keys": [record.public() for record in key_store().list()]})


@bp.delete("/<key_id>")
def revoke_key(key_id: str) -> Any:
    """Revoke a key: it stops working with the next request."""
    if not _KEY_ID.fullmatch(key_id):
        raise KeyNotFound(key_id)
    return jsonify(key_store().revoke(key_id).public())

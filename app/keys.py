"""``/v1/keys``: key management over HTTP for admin keys, the same operations as ``tts-batch keys``.

``POST`` makes a key and answers it once (201, with its callback secret); ``GET`` lists every
key without the keys themselves; ``DELETE /v1/keys/{id}`` revokes one at once. Every route
needs the ``admin`` scope (``app.auth``), and a real key: an open API (no key yet) refuses
them with 403, since the first caller to make a key would lock everyone else out. The first
key is made with the CLI, on the Redis side.
"""
from __future__ import annotations

from typing import Any

from flask import jsonify
from flask_openapi3 import APIBlueprint, Tag

from tasks.tenants import DEFAULT_SCOPES, parse_scopes

from .auth import current_principal, key_store
from .contract import SECURITY, answer, error_responses, link
from .errors import ApiError
from .schemas import AnyBody, KeyPath, KeyRequest

bp = APIBlueprint("keys", __name__, url_prefix="/v1/keys", abp_security=SECURITY,
                  abp_tags=[Tag(name="keys", description="API keys of tenants (admin)")])

_ERRORS = (401, 403, 429, 503)


@bp.before_request
def _needs_a_real_key() -> None:
    if current_principal().open_mode:
        raise ApiError(403, "keys_not_configured",
                       "no API key exists yet: make the first one with 'tts-batch keys create --tenant NAME "
                       "--scopes admin' on the Redis side, then manage keys here with it")


@bp.post("", operation_id="create_key", summary="Make an API key",
         responses={201: answer(AnyBody, "the key (shown this once) and its callback secret",
                                links={"RevokeKey": link("revoke_key", "revoke it", key_id="$response.body#/id")}),
                    **error_responses(400, 415, *_ERRORS)})
def create_key(body: KeyRequest) -> Any:
    """Make a key: 201 with the key (shown this once) and its callback secret."""
    scopes = parse_scopes(body.scopes) if body.scopes is not None else DEFAULT_SCOPES
    record, key = key_store().create(body.tenant, scopes, rate=body.rate, max_queued=body.max_queued,
                                     chars_per_day=body.chars_per_day)
    response = jsonify({**record.public(), "key": key, "callback_secret": record.callback_secret})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("", operation_id="list_keys", summary="List API keys",
        responses={200: answer(AnyBody, "{keys: [...]}, without the keys themselves"), **error_responses(*_ERRORS)})
def list_keys() -> Any:
    """Every key (revoked ones too), oldest first, without the keys."""
    return jsonify({"keys": [record.public() for record in key_store().list()]})


@bp.delete("/<key_id>", operation_id="revoke_key", summary="Revoke an API key",
           responses={200: answer(AnyBody, "the revoked key"), **error_responses(404, *_ERRORS)})
def revoke_key(path: KeyPath) -> Any:
    """Revoke a key: it stops working with the next request."""
    return jsonify(key_store().revoke(path.key_id).public())

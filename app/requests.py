"""Reading request bodies and query strings, with errors that say what was wrong."""
from __future__ import annotations

import json
from typing import Any

from flask import Request, Response, jsonify

from .errors import ApiError

MAX_LIMIT = 1000


def json_body(request: Request) -> Any:
    """The parsed JSON body: 415 when it is not JSON, 400 when it is malformed."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       f"send the request body as JSON (Content-Type: application/json), not {request.mimetype or 'nothing'}")
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from exc


def int_arg(request: Request, name: str, default: int | None, low: int = 0, high: int | None = None) -> int | None:
    """An integer query parameter within [low, high]."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_parameter", f"query parameter {name!r} must be an integer, got {raw!r}") from exc
    if value < low or (high is not None and value > high):
        raise ApiError(400, "invalid_parameter",
                       f"query parameter {name!r} must be between {low} and {high if high is not None else 'any'}")
    return value


IDEMPOTENCY_HEADER = "Idempotency-Key"


def idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key`` (None without one); 400 when it is blank or too long."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and (not key.strip() or len(key) > 255):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 characters")
    return key


def accepted_response(body: Any, location: str, created: bool, finished: bool) -> Response:
    """202 for new work still to do; 200 when it finished at once or an Idempotency-Key replayed it."""
    response = jsonify(body)
    response.status_code = 202 if created and not finished else 200
    response.headers["Location"] = location
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response

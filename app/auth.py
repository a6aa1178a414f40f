"""API keys: with ``TTS_API_KEYS`` set, every ``/v1/`` call needs ``Authorization: Bearer <key>``
(or ``X-API-Key: <key>``).

Health, metrics and the dashboard stay open (operators put them behind their own network
rules); without ``TTS_API_KEYS`` nothing is checked.
"""
from __future__ import annotations

import hmac
from typing import Any

from flask import Flask, current_app, request

from .errors import error_response

PROTECTED_PREFIX = "/v1/"


def _valid(token: str, keys: tuple[str, ...]) -> bool:
    # Compare against every key so the time taken does not tell which prefix matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token.encode(), key.encode())
    return matched


def install_api_keys(app: Flask) -> None:
    """Refuse ``/v1/`` requests without a valid key when keys are configured."""

    @app.before_request
    def _require_key() -> Any:
        keys = current_app.extensions["tts"]["settings"].api_keys
        if not keys or not request.path.startswith(PROTECTED_PREFIX):
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        token = token or request.headers.get("X-API-Key", "").strip()
        if token and _valid(token, keys):
            return None
        message = ("the API key is not valid" if token else
                   "an API key is required: send 'Authorization: Bearer <key>' with one of the keys in TTS_API_KEYS")
        return error_response(401, "invalid_api_key", message,
                              headers={"WWW-Authenticate": 'Bearer realm="tts-batch"'})

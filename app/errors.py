"""Every error leaves the API as ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status.

Redis unreachable is a 503 with ``Retry-After``; anything unexpected is logged with its
traceback and answered with a generic 500 (which a test treats as a bug).
"""
from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import redis.exceptions
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from engine.exceptions import EngineError, UnknownVoiceError
from tasks.exceptions import (
    AudioGone,
    BatchAudioTooLong,
    BatchHasNoAudio,
    BatchNotFound,
    CallbackRefused,
    CallbacksUnavailable,
    DeadLetterNotFound,
    IdempotencyConflict,
    IdempotencyKeyInUse,
    InvalidBatch,
    InvalidRequest,
    JobNotFinished,
    JobNotFound,
    KeyNotFound,
    ModelNotFound,
    PipelineError,
    QueueFull,
    QuotaExceeded,
    ResultMissing,
    ResultStoreUnavailable,
    TextTooLong,
    TooManyInputs,
    VoiceNotFound,
)

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2

#: The HTTP status of each domain error. An error class not listed takes the status of
#: its nearest listed base class (a new PipelineError is a 400 until it is given one).
ERROR_STATUS: dict[type[Exception], int] = {
    PipelineError: 400,
    InvalidRequest: 400,
    InvalidBatch: 400,
    CallbackRefused: 400,
    CallbacksUnavailable: 400,
    JobNotFound: 404,
    BatchNotFound: 404,
    DeadLetterNotFound: 404,
    JobNotFinished: 409,
    BatchHasNoAudio: 409,
    AudioGone: 410,
    ResultMissing: 410,
    # The result store (audio) does not answer: as for Redis, a 503 to retry.
    ResultStoreUnavailable: 503,
    TextTooLong: 413,
    TooManyInputs: 413,
    BatchAudioTooLong: 413,
    IdempotencyConflict: 422,
    IdempotencyKeyInUse: 409,
    KeyNotFound: 404,
    VoiceNotFound: 404,
    ModelNotFound: 404,
    QuotaExceeded: 429,
    QueueFull: 429,
    # A request the engine refuses (unknown voice, bad option, nothing to speak), and
    # whatever else it raises while serving a request.
    EngineError: 400,
}


def status_for(exc: BaseException) -> int:
    """The HTTP status for a domain error, from :data:`ERROR_STATUS` (500 for anything else)."""
    for cls in type(exc).__mro__:
        status = ERROR_STATUS.get(cls)
        if status is not None:
            return status
    return 500


class ApiError(Exception):
    """An error with an HTTP status, a machine code and a message for people."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **details: Any) -> Any:
    """A JSON error body with ``status``."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update({k: v for k, v in details.items() if v is not None})
    response = jsonify({"error": body})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Map every exception to the JSON error shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        return error_response(exc.status, exc.code, exc.message, **exc.details)

    @app.errorhandler(PipelineError)
    def _pipeline_error(exc: PipelineError) -> Any:
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, ResultStoreUnavailable):
            retry_after = RETRY_AFTER_SECONDS
        headers = {"Retry-After": str(retry_after)} if retry_after else {}
        if isinstance(exc, QuotaExceeded):  # a quota is a limit too: the same headers as the request rate
            headers |= {"RateLimit-Limit": str(exc.limit), "RateLimit-Remaining": str(exc.remaining),
                        "RateLimit-Reset": str(exc.reset)}
        return error_response(status_for(exc), exc.code, str(exc), param=getattr(exc, "param", None),
                              headers=headers or None)

    @app.errorhandler(EngineError)
    def _engine_error(exc: EngineError) -> Any:
        details: dict[str, Any] = {"valid_voices": exc.valid} if isinstance(exc, UnknownVoiceError) else {}
        return error_response(status_for(exc), exc.code, str(exc), **details)

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(kombu.exceptions.OperationalError)
    def _redis_down(exc: Exception) -> Any:
        log.warning("Redis unavailable: %s", exc)
        return error_response(503, "service_unavailable",
                              "the job store is unreachable; nothing was accepted, try again shortly",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.errorhandler(redis.exceptions.OutOfMemoryError)
    def _redis_full(exc: Exception) -> Any:
        log.error("Redis is full (maxmemory reached): %s", exc)
        return error_response(503, "store_full",
                              "the job store is full; nothing was accepted, try again later",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS * 15)})

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Any:
        limit = request.max_content_length
        said = f" of {limit} bytes ({limit / 2**20:g} MiB)" if limit is not None else ""
        return error_response(413, "request_too_large",
                              f"the request body is larger than the limit{said}; nothing was accepted: "
                              "send less per request (split a batch into several)")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        headers = {}
        if exc.code == 405 and exc.valid_methods if hasattr(exc, "valid_methods") else False:
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return error_response(exc.code or 500, code, exc.description or exc.name, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.error("unhandled error: %s", exc, exc_info=exc)
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")

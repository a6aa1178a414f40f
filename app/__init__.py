"""The Flask API: ``create_app()`` builds it, blueprints hold the routes.

No synthesis runs in a request thread: the API validates, consults the cache and
queues jobs for the Celery workers.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, g, request
from flask_openapi3 import APIBlueprint

from monitoring.correlation import REQUEST_ID_HEADER, bind, valid_request_id
from settings import Settings, get_settings
from tasks.runtime import Runtime
from tasks.service import JobService

from . import api_docs, batches, dashboard, dlq, health, jobs, keys, metrics, openai_compat, people, voices
from .auth import install_auth
from .contract import ServiceApi
from .errors import register_error_handlers
from .security import install_security_headers
from .streams import install_stream_limits

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for ``settings`` (the process settings by default)."""
    settings = settings or get_settings()
    app = ServiceApi(__name__)
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.config["MAX_CONTENT_LENGTH"] = max(16 * 1024 * 1024, settings.max_text_chars * 8)
    runtime = Runtime(settings)
    app.extensions["tts"] = {
        "settings": settings,
        "runtime": runtime,
        "service": JobService(runtime),
        "started": time.time(),
    }
    _install_correlation(app)
    register_error_handlers(app)
    install_auth(app)
    app.check_json_bodies()
    install_security_headers(app)
    install_stream_limits(app, settings)
    for module in (jobs, batches, voices, dlq, keys, health, openai_compat, metrics, dashboard, people, api_docs):
        if isinstance(module.bp, APIBlueprint):
            app.register_api(module.bp)
        else:
            app.register_blueprint(module.bp)
    return app


def _install_correlation(app: Flask) -> None:
    """Take ``X-Request-ID`` (or make one), bind it to every log line, and echo it back."""

    @app.before_request
    def _bind_request_id() -> None:
        g.correlation_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER))
        g.correlation = bind(correlation_id=g.correlation_id)
        g.correlation.__enter__()
        g.request_started = time.perf_counter()

    @app.after_request
    def _echo_request_id(response: Any) -> Any:
        if "correlation_id" in g:
            response.headers[REQUEST_ID_HEADER] = g.correlation_id
        return response

    @app.teardown_request
    def _unbind(_: BaseException | None) -> None:
        ctx = g.pop("correlation", None)
        if ctx is not None:
            ctx.__exit__(None, None, None)

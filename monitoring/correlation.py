"""Correlation ids: one request's whole story, across the API and the workers.

The API takes ``X-Request-ID`` from the client (or makes one), binds it for the request and
passes it to Celery in the task headers; the worker binds it again around the task. While
bound, :class:`CorrelationFilter` stamps ``correlation_id``, ``job_id`` and ``voice`` on every
log record, so every line about a job carries them.

Context variables follow threads and asyncio tasks correctly: a value bound in one request
thread is invisible to the others.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Iterator

__all__ = [
    "CONTEXT_FIELDS",
    "MAX_REQUEST_ID_LENGTH",
    "REQUEST_ID_HEADER",
    "CorrelationFilter",
    "bind",
    "current",
    "new_correlation_id",
    "valid_request_id",
]

#: The HTTP header a client may send (and always gets back) with the request's id.
REQUEST_ID_HEADER = "X-Request-ID"
#: Longest accepted client-supplied request id.
MAX_REQUEST_ID_LENGTH = 128
#: Fields stamped on log records.
CONTEXT_FIELDS: tuple[str, ...] = ("correlation_id", "job_id", "voice")

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tts_correlation_id", default=None
)
_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tts_job_id", default=None)
_voice: contextvars.ContextVar[str | None] = contextvars.ContextVar("tts_voice", default=None)
_VARS: dict[str, contextvars.ContextVar[str | None]] = {
    "correlation_id": _correlation_id,
    "job_id": _job_id,
    "voice": _voice,
}


def new_correlation_id() -> str:
    """A fresh, random correlation id (32 hex digits)."""
    return uuid.uuid4().hex


def valid_request_id(value: object) -> str:
    """``value`` when it is a usable request id, else a new one.

    Usable: a string of printable ASCII (space to ``~``), not blank, at most
    :data:`MAX_REQUEST_ID_LENGTH` characters after trimming surrounding spaces.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return new_correlation_id()
    if not isinstance(value, str):
        return new_correlation_id()
    text = value.strip()
    if not text or len(text) > MAX_REQUEST_ID_LENGTH:
        return new_correlation_id()
    if any(not (" " <= ch <= "~") for ch in text):
        return new_correlation_id()
    return text


def current() -> dict[str, str | None]:
    """The bound ``correlation_id``, ``job_id`` and ``voice`` (None where unbound)."""
    return {name: var.get() for name, var in _VARS.items()}


@contextlib.contextmanager
def bind(
    correlation_id: str | None = None, job_id: str | None = None, voice: str | None = None
) -> Iterator[dict[str, str | None]]:
    """Bind the given values for the ``with`` block (None leaves a value as it is).

    Yields :func:`current` inside the block; the previous values come back on exit.
    """
    tokens = []
    for name, value in (("correlation_id", correlation_id), ("job_id", job_id), ("voice", voice)):
        if value is not None:
            tokens.append((_VARS[name], _VARS[name].set(str(value))))
    try:
        yield current()
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class CorrelationFilter(logging.Filter):
    """Stamps the bound correlation fields on each record (values passed with ``extra=`` win).

    Attach it to handlers (not loggers) so records from every logger get it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; never drops a record."""
        for name, var in _VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True

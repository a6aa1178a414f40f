"""Logging for every tts-batch entry point: JSON lines (or plain text), level, file, rotation.

Call :func:`configure_logging` once in each entry point (API, worker, exporter, scripts).
Each line is one JSON object::

    {"timestamp": "2025-01-01T12:00:00.123456+00:00", "level": "INFO", "logger": "tasks.synthesis",
     "message": "job done", "component": "worker", "correlation_id": "...", "job_id": "...",
     "voice": "heart", "synthesis_ms": 812}

``correlation_id``, ``job_id`` and ``voice`` come from :mod:`monitoring.correlation` (null when
unbound); anything passed with ``extra=`` (timings, sizes) is added as its own key.

Settings: ``TTS_LOG_LEVEL`` (INFO), ``TTS_LOG_JSON`` (true; false gives plain text),
``TTS_LOG_FILE`` (also write there, rotated at ``TTS_LOG_MAX_BYTES`` keeping
``TTS_LOG_BACKUP_COUNT`` files). Rotation is per process: give each process (API, worker,
exporter) its own file; prefork worker children share their parent's handler.
"""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

from monitoring.correlation import CONTEXT_FIELDS, CorrelationFilter
from settings import Settings

__all__ = ["JSON_FIELDS", "PlainFormatter", "configure_logging", "json_formatter"]

#: Keys every JSON line starts with, in order.
JSON_FIELDS: tuple[str, ...] = (
    "timestamp", "level", "logger", "message", "component", *CONTEXT_FIELDS,
)
_MARK = "_tts_logging_handler"


class _ComponentFilter(logging.Filter):
    """Stamps the process's component (``api``, ``worker``, ...) on each record."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "component", None) is None:
            record.component = self.component
        return True


class PlainFormatter(logging.Formatter):
    """Human-readable lines: ``time LEVEL logger [component cid=.. job=..] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(component)s%(context_text)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Format with the bound correlation fields that are set."""
        parts = []
        for name, short in (("correlation_id", "cid"), ("job_id", "job"), ("voice", "voice")):
            value = getattr(record, name, None)
            if value:
                parts.append(f" {short}={value}")
        record.__dict__["context_text"] = "".join(parts)  # our format's own field; LogRecord declares none such
        if getattr(record, "component", None) is None:
            record.component = "-"
        try:
            return super().format(record)
        finally:
            del record.__dict__["context_text"]


def json_formatter() -> JsonFormatter:
    """The JSON formatter: the :data:`JSON_FIELDS` first, then any ``extra=`` fields."""
    return JsonFormatter(
        ["levelname", "name", "message", "component", *CONTEXT_FIELDS],
        rename_fields={"levelname": "level", "name": "logger"},
        defaults={"timestamp": None},  # reserves the first position; filled by timestamp=True
        timestamp=True,
    )


def _level(name: str) -> tuple[int, bool]:
    value = logging.getLevelName(str(name).strip().upper())
    if isinstance(value, int):
        return value, True
    return logging.INFO, False


def configure_logging(settings: Settings, component: str, stream: TextIO | None = None) -> logging.Logger:
    """Set up the root logger for one process and return it.

    Replaces handlers installed by an earlier call (so it is safe to call again, e.g. in a
    forked child) and leaves other handlers alone. Logs to ``stream`` (stderr by default)
    and, when ``settings.log_file`` is set, to that file with rotation.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _MARK, False):
            root.removeHandler(handler)
            handler.close()

    level, level_ok = _level(settings.log_level)
    formatter: logging.Formatter = json_formatter() if settings.log_json else PlainFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream if stream is not None else sys.stderr)]
    file_error: OSError | None = None
    if settings.log_file:
        try:
            path = Path(settings.log_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(
                logging.handlers.RotatingFileHandler(
                    path,
                    maxBytes=max(0, settings.log_max_bytes),
                    backupCount=max(0, settings.log_backup_count),
                    encoding="utf-8",
                )
            )
        except OSError as exc:
            file_error = exc
    for handler in handlers:
        setattr(handler, _MARK, True)
        handler.setFormatter(formatter)
        handler.addFilter(_ComponentFilter(component))
        handler.addFilter(CorrelationFilter())
        root.addHandler(handler)
    root.setLevel(level)

    log = logging.getLogger(__name__)
    if not level_ok:
        log.warning("TTS_LOG_LEVEL=%r is not a log level; using INFO", settings.log_level)
    if file_error is not None:
        log.warning("cannot write log file %s (%s); logging to stderr only", settings.log_file, file_error)
    return root

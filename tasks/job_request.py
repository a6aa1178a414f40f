"""A synthesis request as the API, batches and the OpenAI endpoint receive it, checked once.

:func:`parse_job_request` checks a JSON body's fields and types (values such as the
voice or the speed range are checked against the engine by ``JobService.prepare``),
so every front end refuses the same bad input with the same message naming the field.
"""
from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import engine
from engine.exceptions import EmptyTextError

from .exceptions import InvalidRequest, TextTooLong

__all__ = ["JOB_FIELDS", "MAX_NAME_CHARS", "JobRequest", "check_name", "parse_job_request"]

#: The fields a job request may have.
JOB_FIELDS = {"text", "voice", "format", "speed", "sample_rate", "seed", "cache", "markdown", "name", "callback_url"}

#: The longest ``name`` a request may give (the file name made from it is shorter still).
MAX_NAME_CHARS = 200

#: Unicode categories a ``name`` may not contain, and what to call them in the message.
_NAME_FORBIDDEN = {"Cc": "a control character", "Cs": "a lone surrogate", "Zl": "a line separator",
                   "Zp": "a paragraph separator"}


@dataclass
class JobRequest:
    """A validated synthesis request."""

    text: str
    voice: str
    format: str = "mp3"
    speed: float = 1.0
    sample_rate: int | None = None
    seed: int | None = None
    cache: bool = True
    markdown: bool = False
    name: str | None = None
    #: Where to POST a signed notice when the job finishes (checked by ``tasks.callbacks``).
    callback_url: str | None = None

    def options(self) -> engine.SynthesisOptions:
        """The engine options of this request."""
        return engine.SynthesisOptions(voice=self.voice, speed=self.speed, format=self.format,
                                       sample_rate=self.sample_rate, seed=self.seed, markdown=self.markdown)

    def fingerprint(self) -> str:
        """A hash of the request, to tell an idempotent retry from a different request."""
        body = json.dumps([self.text, self.voice, self.format, self.speed, self.sample_rate, self.seed,
                           self.cache, self.markdown, self.name, self.callback_url], ensure_ascii=False)
        return hashlib.sha256(body.encode()).hexdigest()


def _number(body: Mapping[str, Any], name: str, default: float | None, integer: bool = False) -> Any:
    value = body.get(name, default)
    if value is None:
        return None
    kind = "whole number" if integer else "number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"'{name}' must be a {kind}, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        raise InvalidRequest(f"'{name}' must be a {kind}, got an integer too large to use") from None
    if not finite:
        raise InvalidRequest(f"'{name}' must be a {kind}, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequest(f"'{name}' must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def check_name(name: object) -> str:
    """``name`` when it can name a download: a string of one line, at most :data:`MAX_NAME_CHARS` characters.

    A control character (CR, LF, tab, NUL ...), a line or paragraph separator or a lone
    surrogate is refused (InvalidRequest with ``param`` ``name``): it cannot go into a
    ``Content-Disposition`` header, and a surrogate cannot even be stored.
    """
    if not isinstance(name, str):
        raise InvalidRequest("'name' must be a string", param="name")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(f"'name' has {len(name)} characters; the limit is {MAX_NAME_CHARS} characters",
                             param="name")
    for offset, ch in enumerate(name):
        what = _NAME_FORBIDDEN.get(unicodedata.category(ch))
        if what is not None:
            raise InvalidRequest(f"'name' cannot contain {what}: {ch!r} (U+{ord(ch):04X}) at offset {offset}; "
                                 "a name is one line of text (it names the downloaded file)", param="name")
    return name


def parse_job_request(body: Any, defaults: Mapping[str, Any] | None = None,
                      max_chars: int | None = None) -> JobRequest:
    """Check a JSON request body's fields and types (values are checked against the engine later)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    merged = {**(defaults or {}), **{k: v for k, v in body.items() if v is not None}}
    unknown = sorted(set(body) - JOB_FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(JOB_FIELDS))}")
    text = merged.get("text")
    if text is None:
        raise InvalidRequest("'text' is required")
    if not isinstance(text, str):
        raise InvalidRequest("'text' must be a string")
    if not text.strip():
        raise EmptyTextError("'text' is empty")
    if max_chars is not None and len(text) > max_chars:
        raise TextTooLong(len(text), max_chars)
    voice = merged.get("voice")
    if not isinstance(voice, str) or not voice.strip():
        raise InvalidRequest("'voice' must be a non-empty string")
    fmt = merged.get("format", "mp3")
    if not isinstance(fmt, str):
        raise InvalidRequest("'format' must be a string")
    for flag in ("cache", "markdown"):
        if flag in merged and not isinstance(merged[flag], bool):
            raise InvalidRequest(f"'{flag}' must be true or false")
    name = merged.get("name")
    if name is not None:
        check_name(name)
    callback_url = merged.get("callback_url")
    if callback_url is not None and not isinstance(callback_url, str):
        raise InvalidRequest("'callback_url' must be a string (an https:// or http:// URL)", param="callback_url")
    return JobRequest(
        text=text,
        voice=voice.strip(),
        format=fmt.strip().lower(),
        speed=_number(merged, "speed", 1.0),
        sample_rate=_number(merged, "sample_rate", None, integer=True),
        seed=_number(merged, "seed", None, integer=True),
        cache=merged.get("cache", True),
        markdown=merged.get("markdown", False),
        name=name,
        callback_url=callback_url,
    )

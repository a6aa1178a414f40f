"""A synthesis request as the API, batches and the OpenAI endpoint receive it: typed models, checked once.

These pydantic models are the contract of a job: the API validates request bodies with
them (through flask-openapi3) and publishes their JSON Schema in ``/openapi.json``, so
what the spec says and what the server accepts cannot differ. They check shapes, types
and fixed ranges. What depends on the running service (the voice catalog, the text
limit ``TTS_MAX_TEXT_CHARS``, whether anything is left to speak) is checked by
``JobService.prepare``, so every front end refuses the same bad input with the same
message naming the field.

A value of ``null`` means "not given" (the default applies), as before these models.
"""
from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

import engine
from engine.synthesis import MAX_SPEED, MIN_SPEED

from .exceptions import InvalidRequest

__all__ = [
    "FORMAT_NAMES",
    "JOB_FIELDS",
    "MAX_NAME_CHARS",
    "MAX_URL_CHARS",
    "MAX_VOICE_CHARS",
    "AudioFormatName",
    "CallbackUrl",
    "JobInput",
    "JobRequest",
    "SpeechOptions",
    "check_name",
]

#: The longest ``name`` a request may give (the file name made from it is shorter still).
MAX_NAME_CHARS = 200
#: The longest voice id or blend (``a*0.7+b*0.3``) a request may name.
MAX_VOICE_CHARS = 200
#: The longest ``callback_url``.
MAX_URL_CHARS = 2048
#: The highest seed (the engine's random generators take 64-bit seeds).
MAX_SEED = 2**63 - 1

#: The audio formats a job may ask for (``engine.audio.FORMATS``; a unit test keeps the two equal).
AudioFormatName = Literal["wav", "mp3", "opus", "flac", "aac", "pcm"]
FORMAT_NAMES: tuple[str, ...] = get_args(AudioFormatName)

#: Unicode categories a ``name`` may not contain, and what to call them in the message.
_NAME_FORBIDDEN = {"Cc": "a control character", "Cs": "a lone surrogate", "Zl": "a line separator",
                   "Zp": "a paragraph separator"}

Speed = Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED, allow_inf_nan=False, strict=True,
                               description=f"speaking rate, {MIN_SPEED} to {MAX_SPEED} (1 is the voice's own)")]
SampleRate = Annotated[StrictInt, Field(ge=8000, le=48000, description="output sample rate in Hz (default: the voice's)")]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED, description="seed for voices that sample (same seed, same audio)")]
VoiceId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_VOICE_CHARS, pattern=r"\S",
                                     description="a voice id (GET /v1/voices) or a Kokoro blend such as 'a+b'")]
Name = Annotated[StrictStr, Field(description=f"names the downloaded file: one line of text, at most "
                                              f"{MAX_NAME_CHARS} characters (checked with the voice and text: "
                                              f"in a batch such an input alone is rejected)")]
CallbackUrl = Annotated[StrictStr, Field(min_length=1, max_length=MAX_URL_CHARS,
                                         description="an https:// (or allowed http://) URL that gets a signed POST "
                                                     "when the work finishes (docs/callbacks.md)")]


def check_name(name: str) -> str:
    """``name`` when it can name a download: one line, at most :data:`MAX_NAME_CHARS` characters.

    A control character (CR, LF, tab, NUL ...), a line or paragraph separator or a lone
    surrogate cannot go into a ``Content-Disposition`` header (a surrogate cannot even be
    stored): InvalidRequest with ``param`` ``name`` says which, and where. ``JobService.prepare``
    checks it, so in a batch such an input alone is rejected.
    """
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(f"'name' has {len(name)} characters; the limit is {MAX_NAME_CHARS} characters",
                             param="name")
    for offset, ch in enumerate(name):
        what = _NAME_FORBIDDEN.get(unicodedata.category(ch))
        if what is not None:
            raise InvalidRequest(f"'name' cannot contain {what}: {ch!r} (U+{ord(ch):04X}) at offset {offset}; "
                                 "a name is one line of text (it names the downloaded file)", param="name")
    return name


class SpeechOptions(BaseModel):
    """How a text is spoken: a batch's ``defaults``, and every field of a job but its text, name and callback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: VoiceId | None = None
    format: AudioFormatName | None = Field(None, description="the audio format (default: TTS_DEFAULT_FORMAT)")
    speed: Speed | None = None
    sample_rate: SampleRate | None = None
    seed: Seed | None = None
    cache: StrictBool | None = Field(None, description="false: synthesize even when the same audio is cached")
    markdown: StrictBool | None = Field(None, description="true: the text is Markdown; markup is not read aloud")

    @field_validator("voice")
    @classmethod
    def _stripped_voice(cls, value: str | None) -> str | None:
        return None if value is None else value.strip()

    def given(self) -> dict[str, Any]:
        """The fields set to a value (null and absent fields left out)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class JobInput(SpeechOptions):
    """A synthesis request as sent: a text and how to speak it (``POST /v1/jobs``, one input of a batch).

    Fields left out take the batch's defaults, then the service's (:meth:`resolve`).
    """

    text: StrictStr = Field(description="the text to speak, at most TTS_MAX_TEXT_CHARS characters; a blank one "
                                        "(or Markdown with nothing to speak) is refused as empty_text, in a "
                                        "batch that input alone")
    name: Name | None = None
    callback_url: CallbackUrl | None = None

    def resolve(self, *defaults: SpeechOptions | Mapping[str, Any]) -> JobRequest:
        """The request with its left-out fields filled from ``defaults`` (the first given wins after its own)."""
        merged: dict[str, Any] = {}
        for layer in reversed(defaults):
            merged.update(layer.given() if isinstance(layer, SpeechOptions) else
                          {k: v for k, v in layer.items() if v is not None})
        merged.update(self.given())
        return JobRequest(
            text=self.text, voice=str(merged.get("voice") or "").strip(), format=merged.get("format") or "mp3",
            speed=float(merged.get("speed", 1.0)), sample_rate=merged.get("sample_rate"), seed=merged.get("seed"),
            cache=merged.get("cache", True), markdown=merged.get("markdown", False), name=merged.get("name"),
            callback_url=merged.get("callback_url"))


@dataclass
class JobRequest:
    """A synthesis request with every default applied: what a job is built from."""

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


#: The fields a job request may have.
JOB_FIELDS = frozenset(JobInput.model_fields)

"""OpenAI-compatible speech: ``POST /v1/audio/speech``, ``GET /v1/models``, ``GET /v1/audio/voices``.

A drop-in for clients that speak OpenAI's speech call (the ``openai`` packages, OpenWebUI
and many tools): point their base URL at ``http://HOST:8354/v1``. The request goes
through the same cache and queue as ``POST /v1/jobs`` (no synthesis in the request
thread); the handler waits for the job, up to ``TTS_SPEECH_TIMEOUT`` seconds, and answers
with the audio bytes. Past the timeout it answers 504 with the job id to poll.

With ``stream_format: "sse"`` the answer is ``text/event-stream`` instead: the worker
publishes each sentence's audio as it is made (``tasks.speech_stream``) and this handler
relays it as ``speech.audio.delta`` events, then ``speech.audio.done`` with ``usage``
(see :func:`_sse_events` for retries, failures, cache hits and fanned-out long texts).

Errors keep this API's shape, ``{"error": {"code", "message", ...}}``; OpenAI clients
read ``error.message`` from it just the same.
"""
from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from flask import Response, current_app, g, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator
from pydantic_core import PydanticCustomError
from redis import Redis

from engine.audio import FORMATS
from engine.exceptions import UnknownVoiceError
from engine.streaming import SENTENCE_ALIGNED
from engine.synthesis import MAX_SPEED, MIN_SPEED
from engine.text import looks_like_markdown
from settings import Settings
from tasks.exceptions import AudioGone, ResultMissing
from tasks.job import Job
from tasks.job_request import JobRequest
from tasks.service import JobService
from tasks.speech_stream import STREAM_FLAG, read_entries
from tasks.status import JobStatus

from .auth import current_principal
from .contract import SECURITY, SSE_EVENT, answer, binary, error_responses
from .errors import ApiError, error_response
from .schemas import AnyBody
from .streams import held_response, stream_limits, too_many_streams

log = logging.getLogger(__name__)

bp = APIBlueprint("openai_compat", __name__, url_prefix="/v1", abp_security=SECURITY,
                  abp_tags=[Tag(name="openai", description="OpenAI-compatible speech and models")])

__all__ = [
    "LOCAL_MODELS",
    "OPENAI_FORMATS",
    "OPENAI_MODELS",
    "SpeechBody",
    "SpeechRequest",
    "bp",
    "parse_speech_request",
    "resolve_voice",
]

#: ``response_format`` values of OpenAI's speech API, in its documented order.
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
#: OpenAI's speech models; accepted and ignored for routing (every request uses the local voices).
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
#: Local model names a client may send instead; any other name is accepted too.
LOCAL_MODELS = ("tts-batch", "kokoro")
#: OpenAI's speed range (the request schema); the engine speaks all of it (beyond 0.5..2.0 by a time stretch).
OPENAI_MIN_SPEED = MIN_SPEED
OPENAI_MAX_SPEED = MAX_SPEED
#: ``stream_format`` values: the audio file itself, or server-sent events carrying it in pieces.
STREAM_FORMATS = ("audio", "sse")
#: Content-Type of each ``response_format`` as OpenAI's API answers it (the jobs API keeps
#: engine.audio.FORMATS: ``audio/ogg`` for opus, ``application/octet-stream`` for pcm).
OPENAI_MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                      "wav": "audio/wav", "pcm": "audio/pcm"}
#: Bytes of stored audio per ``speech.audio.delta`` when a finished file is sent (cache hit, long text).
STORED_DELTA_BYTES = 32 * 1024
#: Milliseconds one XREAD waits for the next delta before the handler looks at the job again.
STREAM_BLOCK_MS = 1000
#: Seconds without an event after which an SSE comment keeps the connection (and its proxies) alive.
KEEPALIVE_SECONDS = 10.0
#: OpenAI's ``pcm`` is 24 kHz, 16-bit signed little-endian mono; every voice is resampled to it.
PCM_SAMPLE_RATE = 24000
#: The longest voice name or id a request may send.
MAX_VOICE_CHARS = 200

VoiceName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_VOICE_CHARS, pattern=r"\S",
                                       description="an OpenAI voice name (alloy, ... marin, cedar) or a local "
                                                   "voice id (GET /v1/audio/voices)")]


class VoiceId(BaseModel):
    """A voice given as an object, as newer OpenAI clients send custom voices."""

    model_config = ConfigDict(extra="forbid")

    id: VoiceName


class SpeechBody(BaseModel):
    """OpenAI's ``audio.speech.create`` request, every field of its published schema."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: StrictStr | None = Field(None, max_length=200, description="tts-1, tts-1-hd, gpt-4o-mini-tts or any "
                                                                      "name: accepted, not used for routing")
    input: StrictStr = Field(description="the text to speak (at most TTS_MAX_TEXT_CHARS characters)",
                             json_schema_extra={"minLength": 1, "pattern": r"\S"})
    voice: VoiceName | VoiceId
    instructions: StrictStr | None = Field(None, description="accepted for OpenAI clients and not used: the "
                                                             "local voices take no style prompt")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | None = Field(
        None, description="default mp3; pcm is 24 kHz 16-bit little-endian mono")
    speed: Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED, allow_inf_nan=False, strict=True)] | None = Field(
        None, description=f"{MIN_SPEED} to {MAX_SPEED}; beyond the voice's own range by a time stretch")
    stream_format: Literal["audio", "sse"] | None = Field(None, description="audio (default): the file; sse: "
                                                                            "speech.audio.delta events")

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise PydanticCustomError("empty_input", "must not be blank: send the text to speak")
        return value

    @property
    def voice_name(self) -> str:
        """The voice as sent, a name or an object's id."""
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class SpeechRequest:
    """A validated ``/v1/audio/speech`` request: the job to run and what the client asked for."""

    def __init__(self, job: JobRequest, model: str | None, requested_voice: str,
                 stream_format: str = "audio", instructions: str | None = None) -> None:
        self.job = job
        self.model = model
        self.requested_voice = requested_voice
        self.stream_format = stream_format
        self.instructions = instructions


def _settings() -> Settings:
    return current_app.extensions["tts"]["settings"]


def _service() -> JobService:
    return current_app.extensions["tts"]["service"]


# --- validation ----------------------------------------------------------------------------
def resolve_voice(voice: str, mapping: Mapping[str, str]) -> str:
    """The local voice id for ``voice``: an OpenAI name through ``mapping``, else ``voice`` itself.

    Names are matched as written (OpenAI's are lower-case), as the document's list says.
    """
    name = voice.strip()
    return mapping.get(name, name)


def parse_speech_request(body: SpeechBody, settings: Settings) -> SpeechRequest:
    """Turn a validated speech request into a job request (the voice is checked by :func:`_check_voice`)."""
    fmt = body.response_format or "mp3"
    requested_voice = body.voice_name
    voice = resolve_voice(requested_voice, settings.openai_voices)
    job = JobRequest(
        text=body.input, voice=voice.strip(), format=fmt, speed=1.0 if body.speed is None else float(body.speed),
        # Chat clients send model replies full of Markdown: strip markup rather than read it aloud.
        markdown=looks_like_markdown(body.input), sample_rate=PCM_SAMPLE_RATE if fmt == "pcm" else None)
    if body.instructions:
        # The local voices take no style prompt: accepted so OpenAI clients work, then not used.
        log.info("speech request: instructions not applied (local voices take no style prompt): %.80s",
                 body.instructions)
    return SpeechRequest(job, body.model, requested_voice, stream_format=body.stream_format or "audio",
                         instructions=body.instructions)


def _check_voice(speech: SpeechRequest, settings: Settings) -> None:
    """400 naming both the OpenAI names and the local voices when the voice is unknown."""
    catalog = current_app.extensions["tts"]["runtime"].catalog
    try:
        catalog.info(speech.job.voice)
    except UnknownVoiceError as exc:
        mapped = "" if speech.job.voice == speech.requested_voice.strip() else f" (mapped to {speech.job.voice!r})"
        raise ApiError(400, "unknown_voice",
                       f"unknown voice {speech.requested_voice!r}{mapped}; use an OpenAI voice name "
                       f"({', '.join(sorted(settings.openai_voices))}) or a local voice id "
                       f"({', '.join(exc.valid)})", param="voice") from exc


def _audio_response(job: Job, data: bytes) -> Response:
    fmt = FORMATS[job.format]
    response = Response(data, mimetype=OPENAI_MEDIA_TYPES.get(job.format, job.media_type or fmt.media_type))
    response.headers["Content-Disposition"] = f'inline; filename="speech.{fmt.extension}"'
    response.headers["X-Job-Id"] = job.id
    response.headers["X-Cache"] = "HIT" if job.cache_hit else "MISS"
    if job.output_sample_rate:
        response.headers["X-Sample-Rate"] = str(job.output_sample_rate)
    if job.duration is not None:
        response.headers["X-Audio-Duration"] = f"{job.duration:.3f}"
    return response


def _poll_details(job_id: str) -> dict[str, str]:
    return {"job_id": job_id, "poll": f"/v1/jobs/{job_id}", "audio": f"/v1/jobs/{job_id}/audio"}


# --- server-sent events ---------------------------------------------------------------------
def _event(payload: Mapping[str, Any]) -> str:
    """One SSE event: a ``data:`` line of JSON (OpenAI's speech events carry their type inside)."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _delta(audio: bytes) -> str:
    return _event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def _done(characters: int) -> str:
    # No tokenizer runs here: input_tokens counts the input's characters and no output tokens exist.
    return _event({"type": "speech.audio.done",
                   "usage": {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}})


def _error(code: str, message: str, job_id: str, **details: Any) -> str:
    """An in-stream error, OpenAI-style (``type: error`` with an ``error`` object); the stream ends after it."""
    log.info("speech stream of job %s ends with %s: %s", job_id, code, message)
    return _event({"type": "error", "error": {"code": code, "message": message, "param": None,
                                              **_poll_details(job_id), **details}})


def _stored_deltas(service: JobService, job_id: str) -> Iterator[str]:
    """A finished job's whole file as deltas (a cache hit, or a fanned-out text stitched elsewhere),
    streamed from the result store a delta at a time."""
    job, ref = service.audio_ref(job_id)
    try:
        chunks = service.rt.result_store.iter_range(ref, chunk=STORED_DELTA_BYTES)
    except ResultMissing:
        raise AudioGone(job.id) from None
    try:
        for chunk in chunks:
            yield _delta(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _final_error(service: JobService, job_id: str, status: JobStatus | None) -> str:
    """The error event for a job that ended without audio (failed, cancelled, disappeared)."""
    if status is None:
        return _error("job_lost", f"job {job_id} disappeared before it finished (expired or deleted)", job_id)
    job = service.get(job_id)
    if status is JobStatus.CANCELLED:
        return _error("job_cancelled", f"job {job_id} was cancelled before its audio was ready", job_id)
    return _error(job.error_code or "synthesis_failed", f"synthesis failed: {job.error or 'unknown error'}", job_id)


def _sse_events(service: JobService, redis: Redis, job: Job, timeout: float) -> Iterator[str]:
    """The events of one streamed speech answer, relayed from the job's speech stream.

    * Cache hit (the job finished at submit) or a fanned-out long text (its parts publish
      nothing): the stored file, in deltas of :data:`STORED_DELTA_BYTES`, once it is there.
    * Otherwise every delta of the attempt being followed, as the worker publishes it. A newer
      attempt (a retry) replaces it when nothing was sent yet; for pcm and wav, whose deltas are
      whole sentences, the newer attempt takes over at the first sentence not sent yet; for the
      compressed formats the stream keeps the first attempt's bytes and, if that attempt never
      ended, says ``stream_interrupted`` (the job's audio stays at ``/v1/jobs/{id}/audio``).
    * ``speech.audio.done`` once the job succeeded and the followed attempt's end was read.
    * An ``error`` event, then the end, when the job failed or was cancelled, or when
      ``timeout`` seconds pass without a new delta (``speech_timeout``; the job keeps running).
    """
    characters = job.characters
    if job.status.finished:
        if job.status is JobStatus.SUCCEEDED:
            yield from _stored_deltas(service, job.id)
            yield _done(characters)
        else:
            yield _final_error(service, job.id, job.status)
        return
    aligned = job.format in SENTENCE_ALIGNED
    followed: int | None = None
    next_seq = 0
    sent = False
    ended = False
    broken = False
    last_id = "0-0"
    idle_deadline = time.monotonic() + timeout
    last_event = time.monotonic()
    while True:
        status = service.rt.jobs.status(job.id)
        final = status is not None and status.finished
        # After a final status every entry is already written: read what is left without blocking.
        for entry in read_entries(redis, job.id, last_id, None if final else STREAM_BLOCK_MS):
            last_id = entry.id
            if followed is None or (entry.attempt > followed and (not sent or aligned)):
                if followed is not None:
                    log.info("speech stream of job %s: attempt %d takes over from attempt %d at sentence %d",
                             job.id, entry.attempt, followed, next_seq)
                followed, ended = entry.attempt, False
            elif entry.attempt != followed:
                broken = broken or entry.attempt > followed
                continue
            if entry.kind == "end":
                ended = True
            elif entry.audio and (not aligned or entry.seq >= next_seq):
                yield _delta(entry.audio)
                sent, next_seq = True, entry.seq + 1
                idle_deadline = last_event = time.monotonic()
                idle_deadline += timeout
        if status is None or (final and status is not JobStatus.SUCCEEDED):
            yield _final_error(service, job.id, status)
            return
        if final:
            if ended:
                yield _done(characters)
            elif not sent:  # a fanned-out text: its audio was made by parts on other workers
                yield from _stored_deltas(service, job.id)
                yield _done(characters)
            else:
                reason = "a retry restarted the audio" if broken else "the stream lost entries"
                yield _error("stream_interrupted", f"the streamed audio of job {job.id} is incomplete ({reason}); "
                                                   f"download the whole file from /v1/jobs/{job.id}/audio", job.id)
            return
        now = time.monotonic()
        if now > idle_deadline:
            yield _error("speech_timeout", f"no audio for {timeout:g} s (job {job.id} is {status.value}); poll "
                                           f"/v1/jobs/{job.id} and download /v1/jobs/{job.id}/audio when it has "
                                           f"succeeded", job.id, job_status=status.value)
            return
        if now - last_event > KEEPALIVE_SECONDS:
            last_event = now
            yield ": keep-alive\n\n"


def _speech_sse(service: JobService, speech_request: SpeechRequest, settings: Settings) -> Any:
    """Queue a streamed speech job and answer with its events; 429 when every speech stream slot is taken."""
    slots = stream_limits().speech
    slot = slots.try_acquire()
    if slot is None:
        return too_many_streams(slots)
    try:
        job, _ = service.submit(speech_request.job, correlation_id=g.get("correlation_id"),
                                owner=current_principal(), extra={STREAM_FLAG: "sse"})
    except BaseException:
        slot.release()
        raise
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Job-Id": job.id,
               "X-Cache": "HIT" if job.cache_hit else "MISS"}
    return held_response(slot, _sse_events(service, service.rt.redis, job, settings.speech_timeout),
                         mimetype="text/event-stream", headers=headers)


# --- routes --------------------------------------------------------------------------------
_SPEECH_HEADERS = {
    "X-Job-Id": {"description": "the job behind the answer", "schema": {"type": "string"}},
    "X-Cache": {"description": "HIT when the audio came from the cache", "schema": {"type": "string"}},
}


@bp.post("/audio/speech", operation_id="create_speech", summary="OpenAI's audio.speech.create",
         responses={200: answer(None, "the audio (stream_format audio), or speech.audio.delta events (sse)",
                                headers=_SPEECH_HEADERS,
                                media={**binary(*dict.fromkeys(OPENAI_MEDIA_TYPES.values())),
                                       "text/event-stream": {"schema": SSE_EVENT}}),
                    **error_responses(400, 401, 403, 409, 413, 415, 429, 502, 503, 504)})
def speech(body: SpeechBody) -> Any:
    """OpenAI's ``audio.speech.create``: queue the text, wait for the job, answer with the audio bytes."""
    settings = _settings()
    speech_request = parse_speech_request(body, settings)
    _check_voice(speech_request, settings)
    service = _service()
    if speech_request.stream_format == "sse":
        return _speech_sse(service, speech_request, settings)
    job, audio = service.submit_for_audio(speech_request.job, correlation_id=g.get("correlation_id"),
                                          owner=current_principal())
    if audio is not None:  # the cache answered: the job is final and this is its audio
        return _audio_response(job, audio)
    if not job.status.finished:
        status = service.wait(job.id, settings.speech_timeout)
        if status is None:
            raise ApiError(502, "job_lost", f"job {job.id} disappeared before it finished (expired or deleted)",
                           job_id=job.id)
        if not status.finished:
            log.info("speech job %s still %s after %.1f s; answering 504", job.id, status.value,
                     settings.speech_timeout)
            return error_response(504, "speech_timeout",
                                  f"the audio was not ready within {settings.speech_timeout:g} s (job {job.id} "
                                  f"is {status.value}); poll /v1/jobs/{job.id} and download "
                                  f"/v1/jobs/{job.id}/audio when it has succeeded", headers={"Retry-After": "5"},
                                  job_status=status.value, **_poll_details(job.id))
        job = service.get(job.id)
    if job.status is JobStatus.FAILED:
        return error_response(502, job.error_code or "synthesis_failed",
                              f"synthesis failed: {job.error or 'unknown error'}", job_id=job.id,
                              poll=f"/v1/jobs/{job.id}")
    if job.status is JobStatus.CANCELLED:
        return error_response(409, "job_cancelled", f"job {job.id} was cancelled before its audio was ready",
                              job_id=job.id, poll=f"/v1/jobs/{job.id}")
    return _audio_response(job, service.audio_of(job))


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "tts-batch"}


def _model_ids() -> tuple[str, ...]:
    return OPENAI_MODELS + LOCAL_MODELS


class ModelPath(BaseModel):
    """A model's name."""

    model_id: str = Field(min_length=1, max_length=200, description="tts-1, tts-1-hd, gpt-4o-mini-tts, ...")


_READ_ERRORS = (401, 403, 429)


@bp.get("/models", operation_id="list_models", summary="OpenAI's model list",
        responses={200: answer(AnyBody, "{object: list, data: [models]}"), **error_responses(*_READ_ERRORS)})
def list_models() -> Any:
    """OpenAI's model list: the speech models this server answers to."""
    created = int(current_app.extensions["tts"]["started"])
    return jsonify({"object": "list", "data": [_model(m, created) for m in _model_ids()]})


@bp.get("/models/<path:model_id>", operation_id="get_model", summary="One model (models.retrieve)",
        responses={200: answer(AnyBody, "the model"), **error_responses(404, *_READ_ERRORS)})
def get_model(path: ModelPath) -> Any:
    """One model (OpenAI's ``models.retrieve``)."""
    if path.model_id not in _model_ids():
        raise ApiError(404, "model_not_found", f"no model {path.model_id!r}; models: {', '.join(_model_ids())}")
    return jsonify(_model(path.model_id, int(current_app.extensions["tts"]["started"])))


@bp.get("/audio/models", operation_id="list_audio_models", summary="Speech models as OpenWebUI reads them",
        responses={200: answer(AnyBody, "{models: [{id, name}]}"), **error_responses(*_READ_ERRORS)})
def audio_models() -> Any:
    """The speech models in the shape OpenWebUI reads (``{"models": [{"id"}]}``)."""
    return jsonify({"models": [{"id": m, "name": m} for m in _model_ids()]})


@bp.get("/audio/voices", operation_id="list_audio_voices", summary="OpenAI voice names and local voices",
        responses={200: answer(AnyBody, "{voices: [...], openai_voices, blends}"), **error_responses(*_READ_ERRORS)})
def audio_voices() -> Any:
    """OpenAI voice names with the local voice each maps to, then every local voice.

    Each entry has ``id`` and ``name`` (what OpenWebUI lists); ``type`` says which kind it is.
    """
    settings = _settings()
    catalog = current_app.extensions["tts"]["runtime"].catalog
    infos = {v.id: v for v in catalog.list()}
    voices: list[dict[str, Any]] = []
    for name, local in sorted(settings.openai_voices.items()):
        info = infos.get(local)
        voices.append({"id": name, "name": f"{name} ({local})", "type": "openai", "local_voice": local,
                       "available": info is not None,
                       "language": info.language if info else None, "gender": info.gender if info else None})
    for info in infos.values():
        voices.append({"id": info.id, "name": info.name, "type": "local", "local_voice": info.id,
                       "available": True, "language": info.language, "gender": info.gender,
                       "family": info.family, "sample_rate": info.sample_rate})
    return jsonify({"voices": voices, "openai_voices": dict(settings.openai_voices),
                    "blends": "Kokoro voices blend as 'a+b' or 'a*0.7+b*0.3'"})

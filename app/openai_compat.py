"""OpenAI-compatible speech: ``POST /v1/audio/speech``, ``GET /v1/models``, ``GET /v1/audio/voices``.

A drop-in for clients that speak OpenAI's speech call (the ``openai`` packages, OpenWebUI
and many tools): point their base URL at ``http://HOST:8354/v1``. The request goes
through the same cache and queue as ``POST /v1/jobs`` (no synthesis in the request
thread); the handler waits for the job, up to ``TTS_SPEECH_TIMEOUT`` seconds, and answers
with the audio bytes. Past the timeout it answers 504 with the job id to poll.

Errors keep this API's shape, ``{"error": {"code", "message", ...}}``; OpenAI clients
read ``error.message`` from it just the same.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request

from engine.audio import FORMATS
from engine.exceptions import UnknownVoiceError
from engine.synthesis import MAX_SPEED, MIN_SPEED
from engine.text import looks_like_markdown
from settings import Settings
from tasks.job import Job
from tasks.job_request import JobRequest, parse_job_request
from tasks.service import JobService
from tasks.status import JobStatus

from .auth import current_principal
from .errors import ApiError, error_response
from .requests import json_body

log = logging.getLogger(__name__)

bp = Blueprint("openai_compat", __name__, url_prefix="/v1")

__all__ = [
    "LOCAL_MODELS",
    "OPENAI_FORMATS",
    "OPENAI_MODELS",
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
#: OpenAI's speed range (the request schema); the engine itself speaks at MIN_SPEED..MAX_SPEED.
OPENAI_MIN_SPEED = 0.25
OPENAI_MAX_SPEED = 4.0
#: OpenAI's ``pcm`` is 24 kHz, 16-bit signed little-endian mono; every voice is resampled to it.
PCM_SAMPLE_RATE = 24000
_SPEECH_FIELDS = {"model", "input", "voice", "response_format", "speed", "instructions", "stream_format"}


class SpeechRequest:
    """A validated ``/v1/audio/speech`` request: the job to run and what the client asked for."""

    def __init__(self, job: JobRequest, model: str | None, requested_voice: str) -> None:
        self.job = job
        self.model = model
        self.requested_voice = requested_voice


def _settings() -> Settings:
    return current_app.extensions["tts"]["settings"]


def _service() -> JobService:
    return current_app.extensions["tts"]["service"]


# --- validation ----------------------------------------------------------------------------
def resolve_voice(voice: str, mapping: Mapping[str, str]) -> str:
    """The local voice id for ``voice``: an OpenAI name through ``mapping``, else ``voice`` itself."""
    name = voice.strip()
    return mapping.get(name.lower(), name)


def _speed(body: Mapping[str, Any]) -> float:
    value = body.get("speed", 1.0)
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, "invalid_speed", f"'speed' must be a number from {OPENAI_MIN_SPEED} to "
                                             f"{OPENAI_MAX_SPEED}, got {value!r}", param="speed")
    speed = float(value)
    if not OPENAI_MIN_SPEED <= speed <= OPENAI_MAX_SPEED:
        raise ApiError(400, "invalid_speed", f"'speed' must be from {OPENAI_MIN_SPEED} to {OPENAI_MAX_SPEED}, "
                                             f"got {value!r}", param="speed")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ApiError(400, "unsupported_speed",
                       f"speed {value!r} is within OpenAI's range ({OPENAI_MIN_SPEED} to {OPENAI_MAX_SPEED}) "
                       f"but this server's voices only speak at {MIN_SPEED} to {MAX_SPEED}; "
                       f"send a speed in that range", param="speed")
    return speed


def _voice_name(body: Mapping[str, Any]) -> str:
    voice = body.get("voice")
    if isinstance(voice, Mapping):  # newer OpenAI clients may send {"id": "..."} for custom voices
        voice = voice.get("id")
    if not isinstance(voice, str) or not voice.strip():
        raise ApiError(400, "invalid_voice", "'voice' is required: an OpenAI voice name (e.g. 'alloy') or a "
                                             "local voice id (see GET /v1/audio/voices)", param="voice")
    return voice


def parse_speech_request(body: Any, settings: Settings) -> SpeechRequest:
    """Check an OpenAI speech request body and turn it into a job request (voice not yet checked)."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object")
    unknown = sorted(set(body) - _SPEECH_FIELDS)
    if unknown:
        raise ApiError(400, "invalid_request", f"unknown field(s): {', '.join(unknown)}; "
                                               f"allowed: {', '.join(sorted(_SPEECH_FIELDS))}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "invalid_request", "'model' must be a string, e.g. 'tts-1'", param="model")
    text = body.get("input")
    if text is None:
        raise ApiError(400, "invalid_request", "'input' is required: the text to speak", param="input")
    if not isinstance(text, str):
        raise ApiError(400, "invalid_request", "'input' must be a string", param="input")
    if not text.strip():
        raise ApiError(400, "empty_input", "'input' is empty: send the text to speak", param="input")
    fmt = body.get("response_format") or "mp3"
    if not isinstance(fmt, str) or fmt.strip().lower() not in OPENAI_FORMATS:
        raise ApiError(400, "invalid_response_format",
                       f"'response_format' must be one of {', '.join(OPENAI_FORMATS)}, got {fmt!r}",
                       param="response_format")
    fmt = fmt.strip().lower()
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ApiError(400, "invalid_request", "'instructions' must be a string", param="instructions")
    stream_format = body.get("stream_format")
    if stream_format not in (None, "audio"):
        raise ApiError(400, "unsupported_stream_format",
                       f"stream_format {stream_format!r} is not supported; use 'audio' (the default)",
                       param="stream_format")
    speed = _speed(body)
    requested_voice = _voice_name(body)
    voice = resolve_voice(requested_voice, settings.openai_voices)
    job = parse_job_request(
        {"text": text, "voice": voice, "format": fmt, "speed": speed,
         # Chat clients send model replies full of Markdown: strip markup rather than read it aloud.
         "markdown": looks_like_markdown(text),
         "sample_rate": PCM_SAMPLE_RATE if fmt == "pcm" else None},
        max_chars=settings.max_text_chars)
    if instructions:
        log.debug("speech request instructions ignored (local voices take none): %.80s", instructions)
    return SpeechRequest(job, model, requested_voice)


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
    response = Response(data, mimetype=job.media_type or fmt.media_type)
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


# --- routes --------------------------------------------------------------------------------
@bp.post("/audio/speech")
def speech() -> Any:
    """OpenAI's ``audio.speech.create``: queue the text, wait for the job, answer with the audio bytes."""
    settings = _settings()
    speech_request = parse_speech_request(json_body(request), settings)
    _check_voice(speech_request, settings)
    service = _service()
    job, _ = service.submit(speech_request.job, correlation_id=g.get("correlation_id"), owner=current_principal())
    status = job.status if job.status.finished else service.wait(job.id, settings.speech_timeout)
    if status is None:
        raise ApiError(502, "job_lost", f"job {job.id} disappeared before it finished (expired or deleted)",
                       job_id=job.id)
    if not status.finished:
        log.info("speech job %s still %s after %.1f s; answering 504", job.id, status.value,
                 settings.speech_timeout)
        return error_response(504, "speech_timeout",
                              f"the audio was not ready within {settings.speech_timeout:g} s (job {job.id} is "
                              f"{status.value}); poll /v1/jobs/{job.id} and download /v1/jobs/{job.id}/audio "
                              f"when it has succeeded", headers={"Retry-After": "5"},
                              job_status=status.value, **_poll_details(job.id))
    job = service.get(job.id)
    if job.status is JobStatus.FAILED:
        return error_response(502, job.error_code or "synthesis_failed",
                              f"synthesis failed: {job.error or 'unknown error'}", job_id=job.id,
                              poll=f"/v1/jobs/{job.id}")
    if job.status is JobStatus.CANCELLED:
        return error_response(409, "job_cancelled", f"job {job.id} was cancelled before its audio was ready",
                              job_id=job.id, poll=f"/v1/jobs/{job.id}")
    job, data = service.audio(job.id)
    return _audio_response(job, data)


def _model(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "tts-batch"}


def _model_ids() -> tuple[str, ...]:
    return OPENAI_MODELS + LOCAL_MODELS


@bp.get("/models")
def list_models() -> Any:
    """OpenAI's model list: the speech models this server answers to."""
    created = int(current_app.extensions["tts"]["started"])
    return jsonify({"object": "list", "data": [_model(m, created) for m in _model_ids()]})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Any:
    """One model (OpenAI's ``models.retrieve``)."""
    if model_id not in _model_ids():
        raise ApiError(404, "model_not_found", f"no model {model_id!r}; models: {', '.join(_model_ids())}")
    return jsonify(_model(model_id, int(current_app.extensions["tts"]["started"])))


@bp.get("/audio/models")
def audio_models() -> Any:
    """The speech models in the shape OpenWebUI reads (``{"models": [{"id"}]}``)."""
    return jsonify({"models": [{"id": m, "name": m} for m in _model_ids()]})


@bp.get("/audio/voices")
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

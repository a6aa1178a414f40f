"""``/v1/voices``: the voices this service can speak with."""
from __future__ import annotations

from typing import Any

from flask import current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag

from engine.exceptions import UnknownVoiceError
from tasks.exceptions import VoiceNotFound

from .contract import SECURITY, answer, error_responses
from .errors import ApiError
from .schemas import AnyBody, VoicePath

bp = APIBlueprint("voices", __name__, url_prefix="/v1/voices", abp_security=SECURITY,
                  abp_tags=[Tag(name="voices", description="what the service can speak with")])


@bp.get("", operation_id="list_voices", summary="List voices",
        responses={200: answer(AnyBody, "{voices: [...], blends}"), **error_responses(401, 403, 429)})
def list_voices() -> Any:
    """Every voice with its language, gender, sample rate, family and licence."""
    catalog = current_app.extensions["tts"]["runtime"].catalog
    return jsonify({"voices": [v.to_dict() for v in catalog.list()],
                    "blends": "Kokoro voices blend as 'a+b' or 'a*0.7+b*0.3'"})


@bp.get("/<voice_id>", operation_id="get_voice", summary="One voice or blend",
        responses={200: answer(AnyBody, "the voice"), **error_responses(400, 401, 403, 404, 429)})
def get_voice(path: VoicePath) -> Any:
    """One voice (or a Kokoro blend): 404 ``voice_not_found`` naming the valid ones; 400 for a bad blend."""
    catalog = current_app.extensions["tts"]["runtime"].catalog
    try:
        info = catalog.info(path.voice_id)
    except UnknownVoiceError as exc:  # in a path it names a resource that is not there
        raise ApiError(404, "voice_not_found", str(VoiceNotFound(path.voice_id)), valid_voices=exc.valid) from exc
    return jsonify(info.to_dict())

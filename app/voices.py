"""``/v1/voices``: the voices this service can speak with."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

bp = Blueprint("voices", __name__, url_prefix="/v1/voices")


@bp.get("")
def list_voices() -> Any:
    """Every voice with its language, gender, sample rate, family and licence."""
    catalog = current_app.extensions["tts"]["runtime"].catalog
    return jsonify({"voices": [v.to_dict() for v in catalog.list()],
                    "blends": "Kokoro voices blend as 'a+b' or 'a*0.7+b*0.3'"})


@bp.get("/<voice_id>")
def get_voice(voice_id: str) -> Any:
    """One voice (or a Kokoro blend)."""
    catalog = current_app.extensions["tts"]["runtime"].catalog
    return jsonify(catalog.info(voice_id).to_dict())

"""tts-batch engine: text in, encoded audio out, with ONNX voices from PyPI wheels.

A plain library: no Redis, Celery or Flask. The public API::

    from engine import VoiceCatalog, SynthesisOptions, synthesize, stream
    catalog = VoiceCatalog()
    result = synthesize("Hello there.", SynthesisOptions(voice="heart", format="mp3"), catalog)
    for chunk in stream(long_text, SynthesisOptions(voice="joe"), catalog): ...
"""
from __future__ import annotations

from .audio import FORMATS
from .exceptions import EngineError
from .synthesis import SynthesisOptions, SynthesisResult, stream, synthesize
from .voices import VoiceCatalog, VoiceInfo

__all__ = [
    "FORMATS",
    "EngineError",
    "SynthesisOptions",
    "SynthesisResult",
    "VoiceCatalog",
    "VoiceInfo",
    "stream",
    "synthesize",
]

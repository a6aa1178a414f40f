"""Errors the engine raises. Each message says what was wrong and what would be right.

``permanent`` tells the job pipeline whether retrying can help: a bad request never
heals, a runtime hiccup in onnxruntime might.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


class EngineError(Exception):
    """Base class of every engine error."""

    #: True when the same request can never succeed (no point retrying).
    permanent: bool = True
    #: A short machine-readable code, used in API error bodies.
    code: str = "engine_error"


class UnknownVoiceError(EngineError):
    """The voice id (or a part of a blend) is not in the catalog."""

    code = "unknown_voice"

    def __init__(self, voice: str, valid: Iterable[str]) -> None:
        self.voice = voice
        self.valid = sorted(valid)
        super().__init__(f"unknown voice {voice!r}; valid voices: {', '.join(self.valid)}")


class EmptyTextError(EngineError):
    """Nothing speakable remains after normalising the text."""

    code = "empty_text"

    def __init__(self, message: str = "text is empty after normalising (nothing to speak)") -> None:
        super().__init__(message)


class OptionError(EngineError):
    """A synthesis option is out of range or not one of the allowed values."""

    code = "invalid_option"


class EncodingError(EngineError):
    """Encoding audio into the requested format failed."""

    code = "encoding_failed"
    permanent = False


class ModelAssetError(EngineError):
    """A model file is missing or its checksum does not match."""

    code = "model_asset"


class SynthesisRuntimeError(EngineError):
    """onnxruntime failed while running a model: may be transient."""

    code = "synthesis_failed"
    permanent = False


class UnreadableTextError(EngineError):
    """The text has characters the voice's G2P cannot read (it would skip them without a sound).

    ``characters``: (offset in the submitted text, character) of the first occurrence of each.
    """

    code = "unreadable_text"

    def __init__(self, voice: str, characters: Sequence[tuple[int, str]], shown: int = 5) -> None:
        self.voice = voice
        self.characters = list(characters)
        listed = ", ".join(f"{ch!r} (U+{ord(ch):04X}) at offset {offset}" for offset, ch in self.characters[:shown])
        more = len(self.characters) - shown
        noun, it = ("a character", "it") if len(self.characters) == 1 else ("characters", "them")
        super().__init__(f"text contains {noun} voice {voice} cannot read: {listed}"
                         + (f" and {more} more" if more > 0 else "")
                         + f"; remove or spell {it} out, or choose a voice that reads {it}")

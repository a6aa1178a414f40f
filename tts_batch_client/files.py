"""Input files: finding them (folders, files, globs) and deciding whether their bytes can be spoken.

Each input is a folder (searched recursively), a file, or a glob (``'notes/**/*.md'``); every
source file keeps the root it was found under, so outputs can mirror the tree. Files that are
empty, whitespace only, not UTF-8 or binary are classified with the reason and never sent.
"""
from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import UsageError

__all__ = [
    "BINARY_CONTROL_RATIO",
    "TEXT_SUFFIXES",
    "Classification",
    "SourceFile",
    "classify",
    "discover",
    "is_within",
    "sha256_bytes",
]

#: Source suffixes taken from folders and globs, and whether they are Markdown.
TEXT_SUFFIXES = {".txt": False, ".md": True, ".markdown": True}
#: A file whose bytes are more than this share of control characters is binary.
BINARY_CONTROL_RATIO = 0.05
#: Bytes that do not occur in text (C0 controls other than tab, newlines, form feed; DEL).
_CONTROL_TABLE = bytes([*range(0x09), *range(0x0E, 0x20), 0x7F])


# --- classification -------------------------------------------------------------------------
@dataclass(frozen=True)
class Classification:
    """What a source file's bytes are: speakable text, or the reason they are not."""

    text: str | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when the file can be sent."""
        return self.reason is None


def classify(data: bytes) -> Classification:
    """Decide whether ``data`` is UTF-8 text worth sending, else say why not.

    Reasons, checked in order: empty; binary (NUL bytes, or more than 5% control bytes);
    not UTF-8 (with the offset of the first bad byte); whitespace only. A UTF-8 byte-order
    mark is dropped.
    """
    if not data:
        return Classification(None, "empty file (0 bytes)")
    if b"\x00" in data:
        return Classification(None, "binary file: contains NUL bytes (UTF-16 text is not supported either; "
                                    "save it as UTF-8)")
    controls = len(data) - len(data.translate(None, _CONTROL_TABLE))
    if controls / len(data) > BINARY_CONTROL_RATIO:
        return Classification(None, f"binary file: {controls} of {len(data)} bytes are control characters")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Classification(None, f"not UTF-8: invalid byte 0x{data[exc.start]:02x} at offset {exc.start} "
                                    f"(perhaps Latin-1 or Windows-1252; convert it, e.g. "
                                    f"iconv -f latin1 -t utf-8)")
    text = text.removeprefix("\ufeff")
    if not text.strip():
        return Classification(None, f"nothing to speak: only whitespace ({len(data)} bytes)")
    return Classification(text)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# --- discovery --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceFile:
    """One input file, the root it was found under and its path relative to that root."""

    path: Path
    root: Path
    relative: PurePosixPath

    @property
    def markdown(self) -> bool:
        """True for Markdown sources (sent with ``markdown: true``)."""
        return TEXT_SUFFIXES.get(self.path.suffix.lower(), False)

    @property
    def supported(self) -> bool:
        """True when the suffix is one this tool converts."""
        return self.path.suffix.lower() in TEXT_SUFFIXES


def is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or below it (both resolved; no filesystem access)."""
    return path == folder or folder in path.parents


def _has_magic(part: str) -> bool:
    return any(ch in part for ch in "*?[")


def _glob_root(pattern: str) -> Path:
    """The fixed leading folders of a glob: ``a/b/**/*.txt`` -> ``a/b``."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk(root: Path, skip: Path | None) -> Iterable[Path]:
    """Files under ``root`` with a supported suffix, sorted, not following symlinked folders."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (skip is not None and is_within((here / d).resolve(), skip)))
        for name in sorted(files):
            path = here / name
            if path.suffix.lower() in TEXT_SUFFIXES and not name.startswith("."):
                yield path


def discover(inputs: Sequence[str], skip: Path | None = None) -> list[SourceFile]:
    """Expand folders (recursively), files and globs into source files; raises UsageError for an input
    that matches nothing. ``skip``: a resolved folder never to read from (the output folder)."""
    found: list[SourceFile] = []
    seen: set[Path] = set()

    def add(path: Path, root: Path) -> None:
        key = path.resolve()
        if key in seen or (skip is not None and is_within(key, skip)):
            return
        seen.add(key)
        relative = PurePosixPath(path.relative_to(root).as_posix())
        found.append(SourceFile(path=path, root=root, relative=relative))

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for file in _walk(path, skip):
                add(file, path)
        elif path.is_file():
            if path.suffix.lower() not in TEXT_SUFFIXES:
                raise UsageError(f"only .txt and .md files are converted, not {raw}")
            add(path, path.parent)
        elif _has_magic(raw):
            root = _glob_root(raw)
            matches = sorted(Path(m) for m in glob.glob(raw, recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in TEXT_SUFFIXES]
            if not files:
                raise UsageError(f"no .txt or .md files match {raw!r}")
            for file in files:
                add(file, root)
        else:
            raise UsageError(f"no such file or folder: {raw}")
    return found

"""Output paths under ``--out``: which file each source becomes, and writing it without escaping ``--out``.

Outputs mirror the input tree with the format as extension (``letters/welcome.txt`` becomes
``OUT/letters/welcome.mp3``). Paths are built from relative parts only and checked after
resolving symlinks; files are written to a temporary file beside them and moved into place.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .files import SourceFile, is_within

__all__ = ["UnsafePathError", "plan_outputs", "safe_output_path", "write_atomic"]


class UnsafePathError(Exception):
    """An output path would land outside ``--out`` (``..``, an absolute path or a symlink)."""


def safe_output_path(out: Path, relative: PurePosixPath | str) -> Path:
    """``out/relative``, refusing anything that could land outside ``out``.

    ``out`` must be resolved. Refused: absolute paths, ``..`` parts, and paths whose
    existing parts (folders or the file itself) are symlinks leading outside ``out``;
    the output file itself may not be a symlink at all.
    """
    rel = PurePosixPath(relative)
    if rel.is_absolute() or not rel.parts or any(p in ("..", "") for p in rel.parts) or rel.parts[0] == "/":
        raise UnsafePathError(f"output path {str(rel)!r} is not a plain relative path")
    candidate = out.joinpath(*rel.parts)
    if candidate.is_symlink():
        raise UnsafePathError(f"output {candidate} is a symlink; refusing to write through it")
    resolved = candidate.resolve(strict=False)
    if not is_within(resolved, out) or resolved == out:
        raise UnsafePathError(f"output {candidate} resolves to {resolved}, outside {out}")
    return candidate


def plan_outputs(sources: Sequence[SourceFile], fmt: str) -> dict[SourceFile, PurePosixPath | str]:
    """The output path (relative to ``--out``) of each source, or an error string for a clash.

    ``notes/a.txt`` -> ``notes/a.mp3``. When two sources of one folder share a stem
    (``a.txt`` and ``a.md``), both keep their suffix: ``a.txt.mp3``, ``a.md.mp3``. Two
    sources with the same relative path under different roots cannot both be written;
    the later is an error.
    """
    by_plain: dict[PurePosixPath, list[SourceFile]] = {}
    for src in sources:
        by_plain.setdefault(src.relative.with_suffix(f".{fmt}"), []).append(src)
    planned: dict[SourceFile, PurePosixPath | str] = {}
    taken: dict[PurePosixPath, SourceFile] = {}
    for plain, group in by_plain.items():
        distinct_names = {s.relative for s in group}
        for src in group:
            out = plain if len(distinct_names) == 1 else src.relative.with_name(f"{src.relative.name}.{fmt}")
            if out in taken:
                planned[src] = (f"same output {out} as {taken[out].path}; convert inputs with the same "
                                f"relative paths into different --out folders")
                continue
            taken[out] = src
            planned[src] = out
    return planned


def write_atomic(out: Path, path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (inside ``out``) via a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_within(path.parent.resolve(), out):
        raise UnsafePathError(f"folder {path.parent} resolves outside {out}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

"""``OUT/manifest.json``: one entry per file, so a rerun skips what is done and retries what failed.

Every entry records source, output, sha256, status, chars, duration, error and job id (and the
options it was converted with). The file is rewritten atomically as files finish, so Ctrl-C
or a kill leaves it consistent.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .outputs import safe_output_path

log = logging.getLogger(__name__)

__all__ = ["MANIFEST_NAME", "MANIFEST_VERSION", "FileResult", "Manifest", "now_iso"]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


def now_iso() -> str:
    """The current UTC time as the manifest writes it: ``2026-11-26T04:16:08Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class FileResult:
    """One file's entry in the manifest."""

    source: str
    output: str
    status: str  # "succeeded" | "failed"
    sha256: str | None = None
    chars: int = 0
    duration: float | None = None
    error: str | None = None
    job_id: str | None = None
    voice: str | None = None
    format: str | None = None
    speed: float | None = None
    markdown: bool = False
    bytes: int | None = None
    seconds: float | None = None
    finished_at: str | None = None
    skipped: bool = field(default=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (without run-only fields)."""
        data = asdict(self)
        data.pop("skipped")
        return data


class Manifest:
    """``OUT/manifest.json``: entries by output path, written atomically (temp file + os.replace)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = safe_output_path(out, MANIFEST_NAME)
        self.entries: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def load(self) -> Manifest:
        """Read an existing manifest; an unreadable one is set aside, not trusted."""
        if not self.path.exists():
            return self
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            files = data["files"]
            self.entries = {str(e["output"]): dict(e) for e in files if isinstance(e, dict) and "output" in e}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("manifest %s is unreadable (%s); starting a new one", self.path, exc)
            self.entries = {}
        return self

    def previous(self, output: str) -> dict[str, Any] | None:
        """The entry of an earlier run for ``output``."""
        return self.entries.get(output)

    def record(self, result: FileResult) -> None:
        """Set one file's entry (written on the next :meth:`save`)."""
        with self.lock:
            self.entries[result.output] = result.to_json()

    def save(self, settings: dict[str, Any]) -> None:
        """Write the manifest atomically: a temp file in ``--out``, fsync, then os.replace."""
        with self.lock:
            body = {"version": MANIFEST_VERSION, "updated_at": now_iso(), **settings,
                    "counts": _counts(self.entries.values()),
                    "files": [self.entries[k] for k in sorted(self.entries)]}
            text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
            fd, tmp = tempfile.mkstemp(dir=self.out, prefix=".manifest.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


def _counts(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.get("status", "?")] = counts.get(entry.get("status", "?"), 0) + 1
    return counts

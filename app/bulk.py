"""Convert folders of ``.txt`` and ``.md`` files to audio through the REST API of a running stack.

Usage::

    python scripts/bulk_convert.py INPUT... --out DIR [--voice V] [--format F] [--speed S]
                                   [--concurrency N] [--api URL] [--timeout SECONDS] [--quiet]
    tts-batch bulk INPUT... --out DIR ...            # the same, from the console script

Each INPUT is a folder (searched recursively), a file, or a glob (``'notes/**/*.md'``).
Outputs mirror the tree under ``--out``, relative to each input's root (the folder itself,
a file's parent, or a glob's fixed leading folders), with the format as extension:
``corpus/letters/welcome.txt`` becomes ``OUT/letters/welcome.mp3``. Markdown files are
sent with ``markdown: true`` so markup is not read aloud.

Work goes through the API (``POST /v1/jobs``, poll ``GET /v1/jobs/{id}`` with backoff,
``GET /v1/jobs/{id}/audio``) with at most ``--concurrency`` files in flight; 503s and
connection errors are retried with backoff. ``OUT/manifest.json`` records every file
(source, output, sha256, status, chars, duration, error, job_id) and is rewritten
atomically as files finish, so Ctrl-C leaves it consistent. A rerun skips files whose
output exists and whose source hash (and voice and speed) match the manifest; failed
files are tried again.

Files that are empty, whitespace only, not UTF-8 or binary are reported with the reason
and never sent. Nothing is written outside ``--out``.

Exit status: 0 when every file was converted or skipped, 1 when any file failed, 2 for a
usage error (no inputs, API unreachable, unknown voice), 130 after Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "FORMATS",
    "MANIFEST_NAME",
    "TEXT_SUFFIXES",
    "ApiClient",
    "BulkConverter",
    "Classification",
    "FileResult",
    "Manifest",
    "SourceFile",
    "UnsafePathError",
    "UsageError",
    "build_parser",
    "classify",
    "discover",
    "main",
    "plan_outputs",
    "safe_output_path",
]

#: Output formats of the API; the output file's extension is the format's name.
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
#: Source suffixes taken from folders and globs, and whether they are Markdown.
TEXT_SUFFIXES = {".txt": False, ".md": True, ".markdown": True}
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
DEFAULT_API = "http://127.0.0.1:8354"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: A file whose bytes are more than this share of control characters is binary.
BINARY_CONTROL_RATIO = 0.05
#: Manifest rewrites while files finish are at most this often (always on the last file and on Ctrl-C).
MANIFEST_MIN_INTERVAL = 0.25
_RETRY_STATUSES = {502, 503, 504}
_HTTP_TIMEOUT = (10.0, 120.0)  # connect, read


class UsageError(Exception):
    """Bad command-line input or an unusable API: reported in one line, exit status 2."""


class UnsafePathError(Exception):
    """An output path would land outside ``--out`` (``..``, an absolute path or a symlink)."""


class Interrupted(Exception):
    """The run is being stopped (Ctrl-C); raised inside workers to abandon their file."""


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


#: Bytes that do not occur in text (C0 controls other than tab, newlines, form feed; DEL).
_CONTROL_TABLE = bytes([*range(0x09), *range(0x0E, 0x20), 0x7F])


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


# --- discovery and output paths ---------------------------------------------------------------
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
                         and not (skip is not None and _is_within((here / d).resolve(), skip)))
        for name in sorted(files):
            path = here / name
            if path.suffix.lower() in TEXT_SUFFIXES and not name.startswith("."):
                yield path


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def discover(inputs: Sequence[str], skip: Path | None = None) -> list[SourceFile]:
    """Expand folders (recursively), files and globs into source files; raises UsageError for an input
    that matches nothing. ``skip``: a resolved folder never to read from (the output folder)."""
    found: list[SourceFile] = []
    seen: set[Path] = set()

    def add(path: Path, root: Path) -> None:
        key = path.resolve()
        if key in seen or (skip is not None and _is_within(key, skip)):
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
    if not _is_within(resolved, out) or resolved == out:
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


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# --- manifest ---------------------------------------------------------------------------------
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
            body = {"version": MANIFEST_VERSION, "updated_at": _now_iso(), **settings,
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


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- the API client ---------------------------------------------------------------------------
class ApiError(Exception):
    """The API refused or failed a request; ``message`` is what to tell the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """The few REST calls bulk conversion needs, over one pooled :class:`requests.Session`.

    503/502/504 answers and connection errors are retried ``retries`` times with
    exponential backoff and jitter.
    """

    def __init__(self, base_url: str, pool_size: int = 8, retries: int = 4, backoff: float = 0.5,
                 stop: threading.Event | None = None, api_key: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.stop = stop or threading.Event()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(pool_size, 2))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "tts-batch-bulk/1"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted()

    def request(self, method: str, path: str, retry: bool = True, **kwargs: Any) -> requests.Response:
        """One API call with retries; raises ApiError when it cannot get an answer."""
        kwargs.setdefault("timeout", _HTTP_TIMEOUT)
        attempts = self.retries + 1 if retry else 1
        last = ""
        for attempt in range(attempts):
            if self.stop.is_set():
                raise Interrupted()
            try:
                response = self.session.request(method, self.base + path, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = (f"cannot reach the API at {self.base} ({exc.__class__.__name__}); is the stack running "
                        f"(make up) and is --api right?")
                log.debug("%s %s failed: %s", method, path, exc)
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                last = f"{method} {path} answered {response.status_code}: {_error_message(response)}"
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit() and attempt + 1 < attempts:
                    self._sleep(min(float(retry_after), 30.0))
                    continue
            if attempt + 1 < attempts:
                delay = self.backoff * (2 ** attempt)
                self._sleep(delay / 2 + random.uniform(0, delay / 2))
        raise ApiError(last)

    def check(self, voice: str) -> None:
        """Fail fast (UsageError) when the API is unreachable or does not know ``voice``."""
        try:
            response = self.request("GET", f"/v1/voices/{quote(voice, safe='')}", retry=False)
        except ApiError as exc:
            raise UsageError(str(exc)) from exc
        if response.status_code in (400, 404):
            raise UsageError(f"voice {voice!r}: {_error_message(response)}")
        if response.status_code >= 400:
            raise UsageError(f"the API at {self.base} answered {response.status_code}: {_error_message(response)}")

    def submit(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """POST /v1/jobs; the idempotency key makes a retried POST safe."""
        response = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": idempotency_key})
        if response.status_code not in (200, 202):
            raise ApiError(f"the API refused the job ({response.status_code}): {_error_message(response)}",
                           response.status_code)
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        response = self.request("GET", f"/v1/jobs/{job_id}")
        if response.status_code != 200:
            raise ApiError(f"job {job_id}: {response.status_code} {_error_message(response)}", response.status_code)
        return response.json()

    def audio(self, job_id: str) -> bytes:
        """GET /v1/jobs/{id}/audio."""
        response = self.request("GET", f"/v1/jobs/{job_id}/audio")
        if response.status_code != 200:
            raise ApiError(f"audio of job {job_id}: {response.status_code} {_error_message(response)}",
                           response.status_code)
        return response.content

    def cancel(self, job_id: str) -> None:
        """DELETE /v1/jobs/{id}, best effort (used when giving up on a job)."""
        try:
            self.session.delete(f"{self.base}/v1/jobs/{job_id}", timeout=(2.0, 5.0))
        except requests.RequestException as exc:
            log.debug("could not cancel job %s: %s", job_id, exc)


def _error_message(response: requests.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("message") or error.get("code") or response.reason)
    except ValueError:
        return (response.text or response.reason or "")[:200]


# --- conversion -------------------------------------------------------------------------------
@dataclass
class Options:
    """What every file is converted with."""

    voice: str
    format: str
    speed: float
    timeout: float


@dataclass
class Summary:
    """Counts for the final line."""

    converted: int = 0
    skipped: int = 0
    failed: int = 0
    audio_seconds: float = 0.0
    interrupted: bool = False

    def line(self, wall: float) -> str:
        """``converted N, skipped M, failed K, X audio minutes, Y s wall time``."""
        text = (f"converted {self.converted}, skipped {self.skipped}, failed {self.failed}, "
                f"{self.audio_seconds / 60:.1f} audio minutes, {wall:.1f} s wall time")
        return text + " (interrupted)" if self.interrupted else text


class BulkConverter:
    """Converts planned source files through the API, keeping the manifest current."""

    def __init__(self, client: ApiClient, out: Path, options: Options, manifest: Manifest) -> None:
        self.client = client
        self.out = out
        self.options = options
        self.manifest = manifest
        self.run_id = uuid.uuid4().hex[:12]
        self.stop = client.stop
        self._last_save = 0.0

    def manifest_settings(self) -> dict[str, Any]:
        """The run-wide fields of the manifest."""
        return {"voice": self.options.voice, "format": self.options.format, "speed": self.options.speed,
                "api": self.client.base}

    def save_manifest(self, force: bool = False) -> None:
        """Rewrite the manifest (throttled unless ``force``)."""
        now = time.monotonic()
        if force or now - self._last_save >= MANIFEST_MIN_INTERVAL:
            self.manifest.save(self.manifest_settings())
            self._last_save = now

    def is_current(self, output_rel: str, output: Path, digest: str) -> bool:
        """True when an earlier run already converted this exact source with these options."""
        prev = self.manifest.previous(output_rel)
        return bool(prev and prev.get("status") == "succeeded" and prev.get("sha256") == digest
                    and prev.get("voice") == self.options.voice and prev.get("speed") == self.options.speed
                    and output.is_file() and not output.is_symlink())

    def result_for(self, src: SourceFile, output_rel: str, status: str, **fields: Any) -> FileResult:
        """A manifest entry for ``src`` with this run's options."""
        return FileResult(source=str(src.path), output=output_rel, status=status, voice=self.options.voice,
                          format=self.options.format, speed=self.options.speed, markdown=src.markdown,
                          finished_at=_now_iso(), **fields)

    def convert(self, src: SourceFile, output_rel: str, text: str, digest: str, index: int) -> FileResult:
        """Send one classified-good file, wait for its job, write its audio.

        A file's own problems become a failed result; only :class:`Interrupted` is raised.
        """
        started = time.monotonic()
        base = {"sha256": digest, "chars": len(text)}
        job_id: str | None = None
        try:
            output = safe_output_path(self.out, output_rel)
            body = {"text": text, "voice": self.options.voice, "format": self.options.format,
                    "speed": self.options.speed, "markdown": src.markdown, "name": output.stem}
            job = self.client.submit(body, idempotency_key=f"bulk-{self.run_id}-{index}")
            job_id = job["id"]
            job = self._wait(job)
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                message = error.get("message") or f"job ended {job['status']}"
                return self.result_for(src, output_rel, "failed", error=f"synthesis {job['status']}: {message}",
                                       job_id=job_id, seconds=round(time.monotonic() - started, 3), **base)
            audio = self.client.audio(job_id)
            if self.stop.is_set():
                raise Interrupted()
            _write_atomic(self.out, output, audio)
            duration = (job.get("audio") or {}).get("duration_seconds")
            return self.result_for(src, output_rel, "succeeded", job_id=job_id, duration=duration,
                                   bytes=len(audio), seconds=round(time.monotonic() - started, 3), **base)
        except Interrupted:
            if job_id:
                self.client.cancel(job_id)
            raise
        except (ApiError, UnsafePathError, OSError, ValueError, KeyError) as exc:
            return self.result_for(src, output_rel, "failed", error=str(exc) or exc.__class__.__name__,
                                   job_id=job_id, seconds=round(time.monotonic() - started, 3), **base)

    def _wait(self, job: dict[str, Any]) -> dict[str, Any]:
        """Poll a job with backoff (0.1 s growing to 2 s) until it finishes or the per-file timeout passes."""
        deadline = time.monotonic() + self.options.timeout
        delay = 0.1
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() >= deadline:
                self.client.cancel(job["id"])
                raise ApiError(f"timed out after {self.options.timeout:g} s waiting for job {job['id']} "
                               f"(still {job['status']}); it was cancelled")
            if self.stop.wait(delay):
                raise Interrupted()
            delay = min(delay * 1.5, 2.0)
            job = self.client.job(job["id"])
        return job

    def process(self, src: SourceFile, output_rel: str, index: int) -> FileResult:
        """Read, classify and (if good and not current) convert one file."""
        try:
            data = src.path.read_bytes()
        except OSError as exc:
            return self.result_for(src, output_rel, "failed", error=f"cannot read: {exc.strerror or exc}")
        digest = sha256_bytes(data)
        try:
            output = safe_output_path(self.out, output_rel)
        except UnsafePathError as exc:
            return self.result_for(src, output_rel, "failed", sha256=digest, error=str(exc))
        if self.is_current(output_rel, output, digest):
            prev = dict(self.manifest.previous(output_rel) or {})
            prev["source"] = str(src.path)
            known = {k: v for k, v in prev.items() if k in FileResult.__dataclass_fields__}
            return FileResult(**{**known, "skipped": True})
        verdict = classify(data)
        if not verdict.ok:
            return self.result_for(src, output_rel, "failed", sha256=digest, error=verdict.reason)
        return self.convert(src, output_rel, verdict.text or "", digest, index)


def _write_atomic(out: Path, path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (inside ``out``) via a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not _is_within(path.parent.resolve(), out):
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


# --- progress ---------------------------------------------------------------------------------
class Progress:
    """A tqdm bar (files done, audio minutes, ETA by characters) or, quiet, one log line per file."""

    def __init__(self, total: int, chars_total: int, quiet: bool) -> None:
        self.quiet = quiet
        self.chars_total = chars_total
        self.chars_done = 0
        self.audio_seconds = 0.0
        self.failed = 0
        self.started = time.monotonic()
        self.bar: Any = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", dynamic_ncols=True, file=sys.stderr,
                            bar_format="{desc}{n_fmt}/{total_fmt} files |{bar}| {elapsed}{postfix}",
                            desc="converting ")
            self._postfix()
            self.bar.refresh()

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        if self.chars_done <= 0 or elapsed <= 0:
            return "?"
        remaining = max(self.chars_total - self.chars_done, 0) * elapsed / self.chars_done
        minutes, seconds = divmod(int(remaining), 60)
        return f"{minutes}:{seconds:02d}"

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"audio {self.audio_seconds / 60:.1f} min, failed {self.failed}, "
                                     f"eta {self._eta()}", refresh=False)

    def done(self, result: FileResult, chars: int) -> None:
        """One file finished (converted, skipped or failed); ``chars``: its size, for the ETA."""
        if result.skipped:  # no work: take it out of the estimate instead of speeding it up
            self.chars_total -= chars
        else:
            self.chars_done += chars
        if result.status == "succeeded" and not result.skipped:
            self.audio_seconds += result.duration or 0.0
        if result.status == "failed":
            self.failed += 1
        line = _describe(result)
        if self.bar is not None:
            if result.status == "failed":
                self.bar.write(line, file=sys.stderr)
            self._postfix()
            self.bar.update(1)  # redraws with the new postfix
        else:
            (log.warning if result.status == "failed" else log.info)("%s", line)

    def tick(self) -> None:
        """Redraw the bar (elapsed time and ETA move on while a long file is in flight)."""
        if self.bar is not None:
            self._postfix()
            self.bar.refresh()

    def close(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()


def _describe(result: FileResult) -> str:
    if result.status == "failed":
        return f"FAILED {result.source}: {result.error}"
    if result.skipped:
        return f"skipped {result.source} (unchanged; {result.output} is current)"
    return (f"converted {result.source} -> {result.output} ({result.chars} chars, "
            f"{(result.duration or 0):.1f} s audio, {result.seconds or 0:.1f} s)")


# --- the run ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Do one bulk conversion for parsed arguments; returns the exit status."""
    started = time.monotonic()
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    out = out.resolve()
    sources = discover(args.inputs, skip=out)
    if not sources:
        raise UsageError("no .txt or .md files found in the inputs")
    options = Options(voice=args.voice, format=args.format, speed=args.speed, timeout=args.timeout)
    stop = threading.Event()
    client = ApiClient(args.api, pool_size=args.concurrency + 2, stop=stop, api_key=args.api_key)
    try:
        client.check(args.voice)
        out.mkdir(parents=True, exist_ok=True)
        try:
            manifest = Manifest(out).load()
        except UnsafePathError as exc:
            raise UsageError(str(exc)) from exc
        converter = BulkConverter(client, out, options, manifest)
        return _run_all(converter, sources, args, started)
    finally:
        client.close()


def _run_all(converter: BulkConverter, sources: list[SourceFile], args: argparse.Namespace, started: float) -> int:
    plan = plan_outputs(sources, args.format)
    sizes = {src: _size(src.path) for src in sources}
    summary = Summary()
    progress = Progress(len(sources), sum(sizes.values()), args.quiet)

    def finish(src: SourceFile, result: FileResult) -> None:
        if result.skipped:
            summary.skipped += 1
        elif result.status == "succeeded":
            summary.converted += 1
            summary.audio_seconds += result.duration or 0.0
        else:
            summary.failed += 1
        converter.manifest.record(result)
        progress.done(result, sizes[src])
        converter.save_manifest()

    executor = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="bulk")
    pending: dict[Future[FileResult], SourceFile] = {}
    try:
        for index, src in enumerate(sources):
            target = plan[src]
            if isinstance(target, str):  # a clash: reported, never sent
                finish(src, converter.result_for(src, str(src.relative), "failed", error=target))
                continue
            pending[executor.submit(converter.process, src, str(target), index)] = src
        while pending:
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            if not done:
                progress.tick()
            for future in done:
                src = pending.pop(future)
                finish(src, _outcome(converter, src, plan[src], future))
    except KeyboardInterrupt:
        summary.interrupted = True
        converter.stop.set()
        for future in pending:
            future.cancel()
        converter.save_manifest(force=True)
        try:
            executor.shutdown(wait=True, cancel_futures=True)  # workers notice the stop within ~0.1 s
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; the manifest is already consistent
            pass
        # Files that finished while we were stopping are still worth recording.
        for future, src in pending.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                finish(src, future.result())
        converter.save_manifest(force=True)
        progress.close()
        print(f"interrupted: {summary.line(time.monotonic() - started)}; the manifest lists every finished file, "
              f"rerun to continue", flush=True)
        return EXIT_INTERRUPTED
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    converter.save_manifest(force=True)
    progress.close()
    print(summary.line(time.monotonic() - started), flush=True)
    return EXIT_FAILED if summary.failed else EXIT_OK


def _outcome(converter: BulkConverter, src: SourceFile, target: PurePosixPath | str,
             future: Future[FileResult]) -> FileResult:
    """A finished future's result; a bug in one file's handling fails that file, not the run."""
    exc = future.exception()
    if exc is None:
        return future.result()
    log.error("unexpected error converting %s", src.path, exc_info=exc)
    return converter.result_for(src, str(target), "failed", error=f"internal error: {exc.__class__.__name__}: {exc}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _default_api() -> str:
    """``http://API_HOST:API_PORT`` from the project settings when importable, else the default."""
    try:
        from settings import get_settings

        settings = get_settings()
    except Exception:  # noqa: BLE001 - run standalone, or settings unusable: fall back
        return DEFAULT_API
    host = settings.api_host if settings.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.api_port}"


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser (``tts-batch bulk`` reuses it)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Convert folders of .txt and .md files to audio through a running tts-batch API.",
        epilog="Exit status: 0 all converted or skipped, 1 some file failed, 2 usage error, 130 interrupted.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="folder (recursive), file, or glob of .txt/.md")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (the tree is mirrored under it)")
    parser.add_argument("--voice", "-v", default="heart", metavar="VOICE", help="voice id (default: heart)")
    parser.add_argument("--format", "-f", default="mp3", choices=FORMATS, metavar="FORMAT",
                        help=f"audio format: {', '.join(FORMATS)} (default: mp3)")
    parser.add_argument("--speed", "-s", type=_positive_float, default=1.0, metavar="S", help="speaking rate (default: 1.0)")
    parser.add_argument("--concurrency", "-c", type=_positive_int, default=4, metavar="N",
                        help="files in flight at once (default: 4)")
    parser.add_argument("--api", default=None, metavar="URL", help=f"API base URL (default: from settings, {DEFAULT_API})")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="sent as 'Authorization: Bearer KEY' (needed when the server sets TTS_API_KEYS)")
    parser.add_argument("--timeout", type=_positive_float, default=1800.0, metavar="SECONDS",
                        help="seconds to wait for one file's job before giving up (default: 1800)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar: one log line per file")
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Command-line entry point; returns the exit status. ``prog``: the name shown in usage messages."""
    args = build_parser(prog).parse_args(argv)
    if args.api is None:
        args.api = _default_api()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return run(args)
    except UsageError as exc:
        print(f"bulk_convert: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the work started
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


if __name__ == "__main__":
    sys.exit(main())

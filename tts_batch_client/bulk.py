"""The bulk conversion run: every source file through the API, at most ``concurrency`` in flight.

Each good file is sent with ``POST /v1/jobs``, its job polled with backoff, and its audio
written under ``--out``; the manifest is rewritten as files finish. A rerun skips files
whose output exists and whose source hash (and voice and speed) match the manifest; failed
files are tried again. Ctrl-C stops the run cleanly: queued files are not started, jobs in
flight are cancelled, the manifest lists every finished file.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import unicodedata
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .api import ApiClient, ApiError
from .errors import Interrupted, UsageError
from .files import SourceFile, classify, discover, sha256_bytes
from .manifest import FileResult, Manifest, now_iso
from .outputs import UnsafePathError, plan_outputs, safe_output_path, write_atomic
from .progress import Progress

log = logging.getLogger(__name__)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "MANIFEST_MIN_INTERVAL",
    "MAX_JOB_NAME",
    "BulkConverter",
    "Options",
    "Summary",
    "job_name",
    "run",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: The longest job ``name`` the server takes (it names the download; the client writes its own path).
MAX_JOB_NAME = 200


def job_name(stem: str) -> str:
    """The ``name`` sent for an output file: its stem as the server takes it, one line of at most
    :data:`MAX_JOB_NAME` characters (control characters and line separators become spaces, bytes
    a file name could not decode as UTF-8 become U+FFFD)."""
    out = []
    for ch in stem[:MAX_JOB_NAME]:
        category = unicodedata.category(ch)
        out.append(" " if category in ("Cc", "Zl", "Zp") else "\ufffd" if category == "Cs" else ch)
    return "".join(out)


#: Manifest rewrites while files finish are at most this often (always on the last file and on Ctrl-C).
MANIFEST_MIN_INTERVAL = 0.25


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
                          finished_at=now_iso(), **fields)

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
                    "speed": self.options.speed, "markdown": src.markdown, "name": job_name(output.stem)}
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
            write_atomic(self.out, output, audio)
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


def run(inputs: Sequence[str], out: str | Path, options: Options, *, api_url: str, api_key: str | None = None,
        concurrency: int = 4, quiet: bool = False) -> int:
    """Do one bulk conversion of ``inputs`` into the folder ``out``; returns the exit status.

    Raises UsageError (nothing sent) for an ``out`` that is not a folder, inputs without
    ``.txt``/``.md`` files, an unreachable API or an unknown voice.
    """
    started = time.monotonic()
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    out = out.resolve()
    sources = discover(inputs, skip=out)
    if not sources:
        raise UsageError("no .txt or .md files found in the inputs")
    stop = threading.Event()
    client = ApiClient(api_url, pool_size=concurrency + 2, stop=stop, api_key=api_key)
    try:
        client.check(options.voice)
        out.mkdir(parents=True, exist_ok=True)
        try:
            manifest = Manifest(out).load()
        except UnsafePathError as exc:
            raise UsageError(str(exc)) from exc
        converter = BulkConverter(client, out, options, manifest)
        return _run_all(converter, sources, concurrency=concurrency, quiet=quiet, started=started)
    finally:
        client.close()


def _run_all(converter: BulkConverter, sources: list[SourceFile], *, concurrency: int, quiet: bool,
             started: float) -> int:
    plan = plan_outputs(sources, converter.options.format)
    sizes = {src: _size(src.path) for src in sources}
    summary = Summary()
    progress = Progress(len(sources), sum(sizes.values()), quiet)

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

    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bulk")
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
        # A second Ctrl-C stops the waiting; the manifest is already consistent.
        with contextlib.suppress(KeyboardInterrupt):
            executor.shutdown(wait=True, cancel_futures=True)  # workers notice the stop within ~0.1 s
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

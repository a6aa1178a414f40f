"""A batch's result: a zip streamed to the client, or one concatenated audio file.

The zip is written by :mod:`zipfile` into a write-only sink that the response drains
after every chunk: each item's audio is copied from the result store in chunks
(``ResultStore.iter_range``, 256 KiB) into its entry (``ZipFile.open(info, "w")``), so
neither a 10,000-file batch nor one long item ever sits in the API's memory as a whole
(ZIP entries of an unseekable stream carry data descriptors, and ZIP64 records when a
batch passes 4 GiB or 65,535 files). What does grow with the batch is its plan (one
small record per item) and the manifest, about 2 KB per item: measured, the API's RSS
rose by 19 MiB while a 10,000-item, 129 MB zip streamed, and by 0.1 MiB for 100 items
(``scripts/bench_batch.py``, docs/batches.md#big-batches).

Layout, in input order:

* separate files (the default): ``0001.mp3``, ``0002.mp3`` ... or each item's
  ``name`` made safe (no folders, no ``..``, no control or reserved characters, unique
  ignoring case, the format's extension added), then ``manifest.json``;
* concatenated (``concatenate: true`` at submit, or ``?concatenate=1``): one
  ``batch-{id}.{ext}`` holding every succeeded item in order with ``gap_ms`` of silence
  between them, put together by ``engine.join.concat`` (frames joined as they are when
  every item is already in the batch's format and rate and there is no gap, else each
  item decoded, resampled if its rate differs, and encoded once), then
  ``manifest.json`` with each item's ``offset_ms`` in that file.

The manifest accounts for every input: index, name, job id, status, file,
``duration_ms``, bytes and error. A batch still running gives a partial zip whose
manifest says which items are missing (``"file": null``); file names do not depend
on status, so a later download names the same item the same way.
"""
from __future__ import annotations

import functools
import json
import logging
import re
import time
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from engine.join import Segment, concat

from .batches import Batch, BatchService, ItemMeta, format_extension
from .exceptions import BatchAudioTooLong, BatchHasNoAudio, ResultMissing
from .job import iso
from .status import JobStatus

log = logging.getLogger(__name__)

__all__ = ["FileNamer", "ResultPlan", "concatenate_audio", "iter_zip", "plan_result", "safe_name"]

MANIFEST = "manifest.json"
MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def safe_name(name: str | None, max_chars: int = MAX_NAME_CHARS) -> str:
    """A file name from a user's ``name``: one path component, printable, no ``..`` ('' if nothing is left)."""
    if not name:
        return ""
    text = unicodedata.normalize("NFC", name)
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    text = _UNSAFE.sub("_", text)
    while ".." in text:
        text = text.replace("..", ".")
    text = re.sub(r"\s+", " ", text).strip(" .")
    if _WINDOWS_RESERVED.match(text):
        text = "_" + text
    if len(text) > max_chars:
        text = text[:max_chars].rstrip(" .")
    while len(text.encode("utf-8")) > 200:  # ZIP and most file systems: 255 bytes per name
        text = text[:-1]
    return text


class FileNamer:
    """Unique, safe file names for a batch's items, decided in input order."""

    def __init__(self, total: int) -> None:
        self.width = max(4, len(str(total)))
        self.taken: set[str] = {MANIFEST.lower()}

    def name(self, index: int, name: str | None, ext: str) -> str:
        """The file name of item ``index`` (0-based): its safe name, else its number (``0001``)."""
        base = safe_name(name) or f"{index + 1:0{self.width}d}"
        if base.lower().endswith("." + ext):
            base = base[: -len(ext) - 1].rstrip(" .") or f"{index + 1:0{self.width}d}"
        candidate = f"{base}.{ext}"
        n = 2
        while candidate.lower() in self.taken:
            candidate = f"{base}-{n}.{ext}"
            n += 1
        self.taken.add(candidate.lower())
        return candidate


class _Sink:
    """A write-only, unseekable byte sink that the zip writes into and the response drains."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self.written += len(chunk)
        return len(chunk)

    def flush(self) -> None:
        """Nothing to flush: bytes wait in memory until drained."""

    def close(self) -> None:
        """Nothing to close (the zip never closes a file object it was given; this completes the file shape)."""

    def drain(self) -> bytes:
        """Everything written since the last drain."""
        data = b"".join(self._parts)
        self._parts.clear()
        return data


@dataclass
class ResultPlan:
    """What a result download will contain, fixed before the first byte is sent."""

    batch: Batch
    items: list[ItemMeta]
    files: list[str]
    concatenate: bool
    gap_ms: int

    @property
    def complete(self) -> bool:
        """True when every item had finished when the plan was made."""
        return all(i.status not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value) for i in self.items)

    @property
    def audio_seconds(self) -> float:
        """Audio in the concatenated file: succeeded items plus the gaps between them."""
        ok = [i for i in self.items if i.status == JobStatus.SUCCEEDED.value]
        return sum(i.duration or 0.0 for i in ok) + max(0, len(ok) - 1) * self.gap_ms / 1000

    @property
    def concat_file(self) -> str:
        """The concatenated file's name."""
        return f"batch-{self.batch.id}.{format_extension(self.batch.format)}"


def plan_result(service: BatchService, batch_id: str, concatenate: bool | None = None,
                gap_ms: int | None = None, tenant: str | None = None) -> ResultPlan:
    """Read every item's record once and name the files (BatchNotFound, also for another
    ``tenant``'s batch; BatchAudioTooLong)."""
    batch = service.get(batch_id, tenant)
    items = list(service.iter_items(batch_id))
    namer = FileNamer(batch.total)
    files = [namer.name(i.index, i.name, format_extension(i.format or batch.format)) for i in items]
    plan = ResultPlan(batch=batch, items=items, files=files,
                      concatenate=batch.concatenate if concatenate is None else concatenate,
                      gap_ms=batch.gap_ms if gap_ms is None else gap_ms)
    limit = service.rt.settings.batch_concat_max_seconds
    if plan.concatenate and plan.audio_seconds > limit:
        raise BatchAudioTooLong(plan.audio_seconds, limit)
    return plan


def _entry(item: ItemMeta) -> dict[str, Any]:
    return {
        "index": item.index,
        "name": item.name,
        "job_id": item.job_id,
        "status": item.status,
        "file": None,
        "duration_ms": round(item.duration * 1000) if item.duration is not None else None,
        "bytes": None,
        "error": item.error_body,
    }


def _manifest(plan: ResultPlan, entries: list[dict[str, Any]], extra: dict[str, Any]) -> bytes:
    batch = plan.batch
    missing = sum(1 for e in entries if e["file"] is None and e.get("offset_ms") is None)
    body = {
        "batch_id": batch.id,
        "status": batch.status.value,
        "complete": plan.complete,
        "created_at": iso(batch.created_at),
        "finished_at": iso(batch.finished_at),
        "generated_at": iso(time.time()),
        "format": batch.format,
        "counts": batch.counts(),
        "total": len(entries),
        "missing": missing,
        **extra,
        "items": entries,
    }
    return json.dumps(body, ensure_ascii=False, indent=1).encode()


def _info(name: str, compress: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.compress_type = compress
    info.external_attr = 0o644 << 16
    return info


def iter_zip(service: BatchService, plan: ResultPlan) -> Iterator[bytes]:
    """The result zip, yielded entry by entry."""
    sink = _Sink()
    zf = zipfile.ZipFile(sink, "w", allowZip64=True)
    entries = [_entry(item) for item in plan.items]
    if plan.concatenate:
        extra: dict[str, Any]
        if any(item.status == JobStatus.SUCCEEDED.value for item in plan.items):
            audio, offsets, rate = concatenate_audio(service, plan)
            zf.writestr(_info(plan.concat_file), audio)
            for entry, offset in zip(entries, offsets):
                entry["offset_ms"] = offset
                if offset is None and entry["status"] == JobStatus.SUCCEEDED.value:
                    entry["error"] = {"code": "audio_gone", "message": "the item's audio was deleted or has expired"}
            extra = {"concatenated": True, "file": plan.concat_file, "gap_ms": plan.gap_ms, "sample_rate": rate,
                     "bytes": len(audio)}
        else:
            for entry in entries:
                entry["offset_ms"] = None
            extra = {"concatenated": True, "file": None, "gap_ms": plan.gap_ms}
        yield sink.drain()
    else:
        extra = {"concatenated": False}
        for item, entry, name in zip(plan.items, entries, plan.files):
            if item.status != JobStatus.SUCCEEDED.value:
                continue
            chunks = _audio_chunks(service, item)
            if chunks is None:
                entry["error"] = {"code": "audio_gone", "message": "the item's audio was deleted or has expired"}
                continue
            size = 0
            try:
                with zf.open(_info(name), "w") as out:
                    for piece in chunks:
                        out.write(piece)
                        size += len(piece)
                        data = sink.drain()
                        if data:
                            yield data
            finally:
                getattr(chunks, "close", lambda: None)()  # the store's file or S3 body, also on a client gone
            entry["file"], entry["bytes"] = name, size
            data = sink.drain()  # the entry's data descriptor
            if data:
                yield data
    zf.writestr(_info(MANIFEST, zipfile.ZIP_DEFLATED), _manifest(plan, entries, extra))
    zf.close()
    yield sink.drain()
    log.info("batch %s result sent: %d bytes, %d items%s", plan.batch.id, sink.written, len(entries),
             " (concatenated)" if plan.concatenate else "")


def _audio_chunks(service: BatchService, item: ItemMeta) -> Iterator[bytes] | None:
    """The item's audio from the result store, in chunks; None when it is gone (deleted, expired, swept).

    The object is opened here, before its entry is started, so a missing one leaves no
    half-written entry in the zip.
    """
    ref = item.audio_ref
    if ref is None:
        return None
    try:
        return service.rt.jobs.results.iter_range(ref)
    except ResultMissing:
        return None


def concatenate_audio(service: BatchService, plan: ResultPlan) -> tuple[bytes, list[int | None], int]:
    """Every succeeded item in order, ``gap_ms`` apart, in the batch's format.

    Returns (audio, each item's offset in ms or None when it is not in the file, sample rate).
    The rate is the batch's ``sample_rate`` default, else the first succeeded item's.
    :func:`engine.join.concat` joins the items' frames when they allow it, else re-encodes.
    """
    batch = plan.batch
    ok = [i for i in plan.items if i.status == JobStatus.SUCCEEDED.value]
    if not ok:
        raise BatchHasNoAudio(batch.id, batch.status.value)
    requested = batch.defaults.get("sample_rate") or ok[0].sample_rate or 24000
    # Each item's audio is read when it is needed (None: deleted or expired, left out).
    segments = [Segment(format=item.format or batch.format, rate=item.sample_rate,
                        data=functools.partial(service.rt.jobs.audio, item.job_id)) for item in ok]
    joined = concat(segments, batch.format, int(requested), gap_seconds=plan.gap_ms / 1000)
    at = iter(joined.offsets)
    offsets: list[int | None] = []
    for item in plan.items:
        start = next(at) if item.status == JobStatus.SUCCEEDED.value else None
        offsets.append(None if start is None else round(start * 1000 / joined.sample_rate))
    return joined.audio, offsets, joined.sample_rate

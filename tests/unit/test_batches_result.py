"""Batch results without Redis or workers: safe file names, the streamed zip writer."""
from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tasks.batch_result import MANIFEST, FileNamer, ResultPlan, _info, _Sink, iter_zip, safe_name
from tasks.batches import Batch, ItemMeta
from tasks.exceptions import ResultMissing


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("chapter one", "chapter one"),
        ("../../etc/passwd", "_._etc_passwd"),
        ("..", ""),
        ("...hidden", "hidden"),
        ("a/b\\c", "a_b_c"),
        ("C:\\temp\\x", "C_temp_x"),
        ('what?*"<>|', "what_"),
        ("tab\there\nnewline", "tab here newline"),
        ("  spaced  out.  ", "spaced out"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("Zoë – café", "Zoë – café"),
        ("", ""),
        (None, ""),
    ],
)
def test_safe_name(name, safe):
    assert safe_name(name) == safe


def test_safe_name_is_one_short_component():
    long = "x" * 500
    assert len(safe_name(long)) == 120
    assert len(safe_name("é" * 150).encode()) <= 200
    for nasty in ("../a", "a/../../b", "/abs/path", "..\\..\\win", "a\x00b"):
        out = safe_name(nasty)
        assert "/" not in out and "\\" not in out and ".." not in out and "\x00" not in out
        assert not out.startswith(".")


def test_file_namer_numbers_names_and_deduplicates():
    namer = FileNamer(total=20)
    assert namer.name(0, None, "mp3") == "0001.mp3"
    assert namer.name(1, "Intro", "mp3") == "Intro.mp3"
    assert namer.name(2, "intro", "mp3") == "intro-2.mp3"  # unique ignoring case
    assert namer.name(3, "intro.mp3", "mp3") == "intro-3.mp3"  # the extension is not doubled
    assert namer.name(4, "song.wav", "mp3") == "song.wav.mp3"
    assert namer.name(5, "..", "wav") == "0006.wav"
    assert namer.name(6, "manifest", "json") == "manifest-2.json"  # never the manifest's name
    assert namer.name(7, "0001", "mp3") == "0001-2.mp3"
    assert FileNamer(total=12_345).name(0, None, "wav") == "00001.wav"


def test_zip_written_to_an_unseekable_sink_is_valid_and_streams():
    sink = _Sink()
    assert not hasattr(sink, "seek") and not hasattr(sink, "tell")
    zf = zipfile.ZipFile(sink, "w", allowZip64=True)  # type: ignore[arg-type]
    chunks = []
    for n in range(3):
        zf.writestr(_info(f"{n:04d}.wav"), bytes([n]) * 100_000)
        chunks.append(sink.drain())
        assert chunks[-1]  # each entry is sent as soon as it is written
    zf.writestr(_info(MANIFEST, zipfile.ZIP_DEFLATED), b'{"items": []}')
    zf.close()
    chunks.append(sink.drain())
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    assert archive.namelist() == ["0000.wav", "0001.wav", "0002.wav", MANIFEST]
    assert archive.read("0002.wav") == b"\x02" * 100_000
    assert archive.getinfo("0001.wav").compress_type == zipfile.ZIP_STORED
    assert sink.written == sum(len(c) for c in chunks)


class _ChunkedStore:
    """A result store's reading side: objects handed out in small chunks, and who closed them."""

    def __init__(self, objects: dict[str, bytes], chunk: int) -> None:
        self.objects, self.chunk, self.closed = objects, chunk, []

    def iter_range(self, ref: str) -> Iterator[bytes]:
        if ref not in self.objects:
            raise ResultMissing(ref)
        data, chunk, closed = self.objects[ref], self.chunk, self.closed

        class Chunks:
            def __init__(self) -> None:
                self.pieces = iter([data[i:i + chunk] for i in range(0, len(data), chunk)])

            def __iter__(self) -> Chunks:
                return self

            def __next__(self) -> bytes:
                return next(self.pieces)

            def close(self) -> None:
                closed.append(ref)

        return Chunks()


def test_each_zip_entry_streams_from_the_store_in_chunks():
    audio = {"a" * 64: bytes(range(256)) * 1000, "b" * 64: b"\x07" * 70_000}
    store = _ChunkedStore(audio, chunk=16_384)
    service = SimpleNamespace(rt=SimpleNamespace(jobs=SimpleNamespace(results=store)))
    items = [ItemMeta(index=0, job_id="j0", status="succeeded", audio_ref="a" * 64, format="mp3"),
             ItemMeta(index=1, job_id="j1", status="succeeded", audio_ref="c" * 64, format="mp3"),  # swept
             ItemMeta(index=2, job_id="j2", status="succeeded", audio_ref="b" * 64, format="mp3"),
             ItemMeta(index=3, job_id="j3", status="failed", error="no", format="mp3")]
    plan = ResultPlan(batch=Batch(id="batch", total=4, created_at=1.0), items=items,
                      files=["0001.mp3", "0002.mp3", "0003.mp3", "0004.mp3"], concatenate=False, gap_ms=0)
    pieces = list(iter_zip(service, plan))  # type: ignore[arg-type]
    assert len(pieces) > 256_000 // 16_384  # sent chunk by chunk, not an entry at a time
    assert max(len(p) for p in pieces[:-1]) <= 16_384 + 200  # a chunk plus at most a header or descriptor
    archive = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert archive.testzip() is None
    assert archive.namelist() == ["0001.mp3", "0003.mp3", MANIFEST]
    assert archive.read("0001.mp3") == audio["a" * 64] and archive.read("0003.mp3") == audio["b" * 64]
    manifest = json.loads(archive.read(MANIFEST))
    assert [(e["file"], e["bytes"]) for e in manifest["items"]] == [("0001.mp3", 256_000), (None, None),
                                                                    ("0003.mp3", 70_000), (None, None)]
    assert manifest["items"][1]["error"]["code"] == "audio_gone"
    assert store.closed == ["a" * 64, "b" * 64]

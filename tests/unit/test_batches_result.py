"""Batch results without Redis or workers: safe file names, the streamed zip writer."""
from __future__ import annotations

import io
import zipfile

import pytest

from tasks.batch_result import MANIFEST, FileNamer, _info, _Sink, safe_name


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

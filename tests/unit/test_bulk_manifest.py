"""The bulk manifest: atomic rewrites, round trips, and a corrupt file set aside."""
from __future__ import annotations

import json
from pathlib import Path

from tts_batch_client.bulk import Summary
from tts_batch_client.manifest import FileResult, Manifest
from tts_batch_client.outputs import write_atomic


def test_manifest_round_trip_and_no_temp_files(tmp_path: Path) -> None:
    out = tmp_path.resolve()
    manifest = Manifest(out)
    manifest.record(FileResult(source="in/a.txt", output="a.mp3", status="succeeded", sha256="ab" * 32, chars=12,
                               duration=1.5, job_id="j1", voice="heart", format="mp3", speed=1.0))
    manifest.record(FileResult(source="in/e.txt", output="e.mp3", status="failed", error="empty file (0 bytes)"))
    manifest.save({"voice": "heart", "format": "mp3", "speed": 1.0, "api": "http://x"})
    data = json.loads((out / "manifest.json").read_text())
    assert data["counts"] == {"succeeded": 1, "failed": 1}
    assert [f["output"] for f in data["files"]] == ["a.mp3", "e.mp3"]
    assert set(data["files"][0]) >= {"source", "output", "sha256", "status", "chars", "duration", "error", "job_id"}
    assert "skipped" not in data["files"][0]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]

    again = Manifest(out).load()
    assert again.previous("a.mp3")["sha256"] == "ab" * 32
    assert again.previous("e.mp3")["error"] == "empty file (0 bytes)"


def test_corrupt_manifest_is_not_trusted(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    manifest = Manifest(tmp_path.resolve()).load()
    assert manifest.entries == {}


def test_write_atomic_leaves_no_partial_files(tmp_path: Path) -> None:
    out = tmp_path.resolve()
    target = out / "a" / "b.mp3"
    write_atomic(out, target, b"ID3 data")
    write_atomic(out, target, b"ID3 newer")
    assert target.read_bytes() == b"ID3 newer"
    assert [p.name for p in target.parent.iterdir()] == ["b.mp3"]


def test_summary_line() -> None:
    summary = Summary(converted=3, skipped=2, failed=1, audio_seconds=90)
    assert summary.line(12.34) == "converted 3, skipped 2, failed 1, 1.5 audio minutes, 12.3 s wall time"

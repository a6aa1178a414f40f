"""``scripts/bulk_convert.py`` as a user runs it: a subprocess talking HTTP to a running API.

The API is ``stack.app`` (real Celery worker, real voices) served by a werkzeug server in a
thread of the test process. Input is a copy of the suite's corpus (``tests/data``, the
``corpus`` fixture), ``long/chapter.txt`` (about 31,000 characters, 20-40 s of worker time)
included.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from engine.audio import decode
from tasks.runtime import Runtime
from tasks.tenants import KeyStore

if TYPE_CHECKING:
    from conftest import Corpus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bulk_convert.py"

#: The corpus files that convert (source -> output), and the edge files with the reason each is refused.
#: Together they are every file of tests/data: the ``corpus_copy`` fixture checks that.
GOOD = {
    "README.md": "README.mp3",
    "letters/reminder.txt": "letters/reminder.mp3",
    "letters/welcome.txt": "letters/welcome.mp3",
    "long/chapter.txt": "long/chapter.mp3",
    "news/briefing.md": "news/briefing.mp3",
    "numbers.txt": "numbers.mp3",
    "unicode.txt": "unicode.mp3",
}
EDGE = {
    "edge/empty.txt": "empty file (0 bytes)",
    "edge/whitespace.txt": "only whitespace",
    "edge/latin1.txt": "not UTF-8: invalid byte 0xe9 at offset 3",
    "edge/binary.txt": "binary file",
}


@pytest.fixture(scope="module")
def api(redis_broker_stack: Any) -> Iterator[str]:
    """The shared stack's API, served over HTTP (the session's Redis-broker stack by name: the per-test
    ``stack`` fixture cannot serve a module-scoped one)."""
    stack = redis_broker_stack
    with stack.serve() as url:
        yield url


@pytest.fixture(scope="module")
def corpus_copy(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the corpus (tests may change it), holding exactly the GOOD and EDGE files."""
    copy = tmp_path_factory.mktemp("bulk") / "corpus"
    shutil.copytree(corpus.root, copy)
    files = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    assert files == set(GOOD) | set(EDGE), "tests/data changed: update GOOD and EDGE in this module"
    return copy


def bulk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the script; returns the finished process (stdout: summary, stderr: per-file lines / bar)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "REDIS_URL"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def summary(proc: subprocess.CompletedProcess[str]) -> str:
    """The final summary line."""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{proc.stderr}"
    return lines[-1]


def manifest(out: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries keyed by source path relative to the corpus copy root."""
    data = json.loads((out / "manifest.json").read_text())
    return {e["source"]: e for e in data["files"]}


def outputs(out: Path) -> set[str]:
    """Every file under ``out`` except the manifest, relative, POSIX style."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_corpus_converts_reports_edge_files_and_resumes(api: str, corpus_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    first = bulk(str(corpus_copy), "--out", str(out), "--api", api, "--concurrency", "4", "--quiet")
    wall = time.monotonic() - started
    print(f"\nfirst run ({wall:.1f} s):\n{first.stderr}\n{first.stdout}")
    assert first.returncode == 1, first.stderr
    assert summary(first).startswith(f"converted {len(GOOD)}, skipped 0, failed {len(EDGE)},"), first.stdout
    assert (len(GOOD), len(EDGE)) == (7, 4)

    # Every edge file is reported with its reason, and none of them was sent.
    for rel, reason in EDGE.items():
        line = next((ln for ln in first.stderr.splitlines() if f"FAILED {corpus_copy / rel}:" in ln), None)
        assert line is not None and reason in line, (rel, first.stderr)

    # The tree is mirrored: exactly one output per good file, nothing for the edge files.
    assert outputs(out) == set(GOOD.values())
    entries = manifest(out)
    assert set(entries) == {str(corpus_copy / rel) for rel in [*GOOD, *EDGE]}
    for rel, output in GOOD.items():
        entry = entries[str(corpus_copy / rel)]
        assert entry["status"] == "succeeded" and entry["output"] == output and entry["error"] is None, entry
        assert entry["job_id"] and entry["chars"] > 0 and entry["sha256"]
        assert entry["markdown"] is rel.endswith(".md")
        samples, rate = decode((out / output).read_bytes(), "mp3")
        assert abs(len(samples) / rate - entry["duration"]) < 0.2, (rel, len(samples) / rate, entry["duration"])
    assert entries[str(corpus_copy / "long/chapter.txt")]["duration"] > 10 * 60  # ~30,000 characters of prose
    for rel, reason in EDGE.items():
        entry = entries[str(corpus_copy / rel)]
        assert entry["status"] == "failed" and reason in entry["error"] and entry["job_id"] is None, entry
    assert not list(out.rglob(".*")), "temporary files left behind"

    # A rerun converts nothing and fails for the same edge files, with the same reasons.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp3")}
    second = bulk(str(corpus_copy), "--out", str(out), "--api", api, "--quiet")
    print(f"second run:\n{second.stdout}")
    assert second.returncode == 1, second.stderr
    assert summary(second).startswith(f"converted 0, skipped {len(GOOD)}, failed {len(EDGE)},"), second.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp3")} == mtimes
    again = manifest(out)
    failed = {src for src, e in again.items() if e["status"] == "failed"}
    assert failed == {str(corpus_copy / rel) for rel in EDGE}
    assert all(again[s]["error"] == entries[s]["error"] for s in failed)

    # A changed source is converted again; the others stay skipped.
    welcome = corpus_copy / "letters" / "welcome.txt"
    welcome.write_text(welcome.read_text() + "\nP.S. See you soon.\n")
    third = bulk(str(corpus_copy), "--out", str(out), "--api", api, "--quiet")
    assert summary(third).startswith(f"converted 1, skipped {len(GOOD) - 1}, failed {len(EDGE)},"), third.stdout
    assert manifest(out)[str(welcome)]["sha256"] != entries[str(welcome)]["sha256"]


def test_progress_bar_and_glob_inputs(api: str, corpus_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "md"
    proc = bulk(f"{corpus_copy}/**/*.md", "--out", str(out), "--api", api, "--format", "wav", "--voice", "joe")
    print(f"\nprogress bar run:\n{proc.stderr}\n{proc.stdout}")
    assert proc.returncode == 0, proc.stderr
    # Relative to the glob's fixed folder: the tree under the corpus is kept.
    assert outputs(out) == {"README.wav", "news/briefing.wav"}
    assert "2/2 files" in proc.stderr and "audio" in proc.stderr and "eta" in proc.stderr, proc.stderr
    assert summary(proc).startswith("converted 2, skipped 0, failed 0,")
    samples, rate = decode((out / "news" / "briefing.wav").read_bytes(), "wav")
    assert rate == 22050 and len(samples) / rate > 5


def test_ctrl_c_leaves_a_consistent_manifest(make_stack: Any, tmp_path: Path) -> None:
    """Ctrl-C while the run is demonstrably mid-way, never racing the run's own end.

    The first ``CACHED`` files were converted once, so their audio is in the cache, and then
    the stack's worker is stopped: the interrupted run finishes those files at submit time
    (real jobs, served from the cache) and then waits on a job that no worker will take. So
    when the manifest shows ``CACHED`` files done, the run cannot have finished, and cannot
    finish, before the SIGINT arrives.
    """
    files, cached = 10, 3
    stack = make_stack()
    src = tmp_path / "src"
    src.mkdir()
    sentence = "Every file in this folder is new, so nothing can come from the cache. "
    names = [f"part{i:02d}.txt" for i in range(files)]
    for i, name in enumerate(names):
        (src / name).write_text(f"Part {i}, {uuid.uuid4().hex}. " + sentence * 12)
    out = tmp_path / "out"
    with stack.serve() as api:
        warm = bulk(*[str(src / name) for name in names[:cached]], "--out", str(tmp_path / "warm"), "--api", api,
                    "--quiet")
        assert warm.returncode == 0 and summary(warm).startswith(f"converted {cached},"), warm.stderr
        stack.stop()  # from here on nothing is synthesized: the files after the cached ones stay queued

        cmd = [sys.executable, str(SCRIPT), str(src), "--out", str(out), "--api", api, "--concurrency", "1",
               "--quiet"]
        log = tmp_path / "bulk.log"  # the per-file lines (stderr), read while the run goes on
        with open(log, "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)

        def converted() -> int:
            return sum(" INFO converted " in line for line in log.read_text().splitlines())

        def mid_way() -> bool:
            """The cached files are reported done and the next file's job waits in the queue."""
            return converted() >= cached and bool(stack.client.get("/v1/jobs?status=queued").get_json()["jobs"])

        try:
            deadline = time.monotonic() + 120
            while not mid_way():
                assert proc.poll() is None, (proc.communicate(), log.read_text())
                assert time.monotonic() < deadline, f"the run never got {cached} files done and one queued"
                time.sleep(0.05)  # poll interval of the wait above
            assert proc.poll() is None and converted() == cached  # no worker: nothing else can finish
            proc.send_signal(signal.SIGINT)
            stdout, _ = proc.communicate(timeout=60)
            stderr = log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, (stdout, stderr)
        assert "interrupted" in stdout
        entries = manifest(out)  # valid JSON, written atomically
        done = {s for s, e in entries.items() if e["status"] == "succeeded"}
        assert done == {str(src / name) for name in names[:cached]}, entries
        for source in done:
            samples, rate = decode((out / entries[source]["output"]).read_bytes(), "mp3")
            assert len(samples) / rate > 1
        assert not list(out.rglob(".*")), "temporary files left behind"

        stack.start_worker()
        rerun = bulk(str(src), "--out", str(out), "--api", api, "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert summary(rerun).startswith(f"converted {files - cached}, skipped {cached}, failed 0,"), rerun.stdout
    assert len(outputs(out)) == files


def test_unreachable_api_and_unknown_voice_are_usage_errors(api: str, corpus_copy: Path, tmp_path: Path) -> None:
    down = bulk(str(corpus_copy / "letters"), "--out", str(tmp_path / "a"), "--api", "http://127.0.0.1:9", "--quiet")
    assert down.returncode == 2 and "cannot reach the API" in down.stderr, down.stderr
    voice = bulk(str(corpus_copy / "letters"), "--out", str(tmp_path / "b"), "--api", api, "--voice", "nobody")
    assert voice.returncode == 2 and "nobody" in voice.stderr, voice.stderr
    missing = bulk(str(tmp_path / "missing"), "--out", str(tmp_path / "c"), "--api", api)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def test_a_rate_limited_key_with_a_small_queue_still_converts_everything(make_stack: Any, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """429s for the key's rate and its queue quota are waited out (Retry-After), not reported as failures."""
    caplog.set_level(logging.INFO, logger="werkzeug")
    stack = make_stack()
    _, key = KeyStore(Runtime(stack.settings).redis).create("bulk-team", rate="4/s", max_queued=2)
    source = tmp_path / "in"
    source.mkdir()
    for n in range(8):
        (source / f"note{n}.txt").write_text(f"Note number {n}. Reference {uuid.uuid4().hex[:8]}.\n", encoding="utf-8")
    out = tmp_path / "out"
    with stack.serve() as base:
        proc = bulk(str(source), "--out", str(out), "--api", base, "--api-key", key, "--voice", "joe",
                    "--format", "wav", "--concurrency", "4", "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outputs(out) == {f"note{n}.wav" for n in range(8)}
    assert all(entry["status"] == "succeeded" for entry in manifest(out).values()), manifest(out)
    throttled = [r.getMessage() for r in caplog.records if r.name == "werkzeug" and '" 429 ' in r.getMessage()]
    assert throttled, "the key's limits were never reached: the test proves nothing"

"""The ``tts-batch`` command line as a user runs it: real processes, real voices, exit codes, files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from engine import audio

if TYPE_CHECKING:
    from conftest import Corpus

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).with_name("tts-batch")


def run_cli(*args: str, tmp_path: Path, stdin: bytes | None = None, script: bool = False,
            timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI (``python -m app.cli`` from the repo, or the installed console script)."""
    cmd = [str(CONSOLE_SCRIPT)] if script else [sys.executable, "-m", "app.cli"]
    env = {**os.environ, "TTS_MODEL_CACHE_DIR": str(tmp_path / "models"), "TTS_DATA_DIR": str(tmp_path / "var")}
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, input=stdin if stdin is not None else b"",
                          capture_output=True, timeout=timeout, check=False)


def assert_user_error(done: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """Exit status 2, one clear line on stderr, no traceback, nothing on stdout."""
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tts-batch say: error: ")
    for needle in needles:
        assert needle in lines[0]
    assert done.stdout == b""
    return lines[0]


def test_voices_json_lists_at_least_seven_voices_with_rates(tmp_path: Path) -> None:
    done = run_cli("voices", "--json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    voices = json.loads(done.stdout)
    assert len(voices) >= 7
    ids = {v["id"] for v in voices}
    assert {"heart", "joe", "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"} <= ids
    for voice in voices:
        assert isinstance(voice["sample_rate"], int) and 8000 <= voice["sample_rate"] <= 48000
        assert voice["family"] in {"hibari", "piper", "kokoro"}
        assert voice["language"] and voice["license"] and voice["gender"]
    assert next(v for v in voices if v["id"] == "joe")["sample_rate"] == 22050


def test_voices_table(tmp_path: Path) -> None:
    done = run_cli("voices", tmp_path=tmp_path)
    assert done.returncode == 0
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["ID", "FAMILY", "LANGUAGE", "GENDER", "RATE", "LICENCE"]
    heart = next(line for line in lines if line.startswith("heart "))
    assert heart.split()[:5] == ["heart", "hibari", "en-US", "female", "24000"]
    assert len(lines) >= 8


def test_console_script_is_installed_and_runs(tmp_path: Path) -> None:
    assert CONSOLE_SCRIPT.exists(), f"{CONSOLE_SCRIPT} missing: reinstall the package (make install)"
    done = run_cli("voices", "--json", tmp_path=tmp_path, script=True)
    assert done.returncode == 0, done.stderr.decode()
    assert len(json.loads(done.stdout)) >= 7


def test_say_writes_an_mp3(tmp_path: Path) -> None:
    out = tmp_path / "x.mp3"
    done = run_cli("say", "Hello", "-v", "heart", "-o", str(out), tmp_path=tmp_path)
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert done.stdout == b""
    samples, rate = audio.decode(out.read_bytes(), "mp3")
    assert rate == 24000
    assert len(samples) / rate > 0.3
    summary = err.strip().splitlines()[-1]
    assert "x real time" in summary and "mp3" in summary and "heart" in summary
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_say_from_stdin_with_format_speed_seed_and_rate(tmp_path: Path) -> None:
    def say(out: Path) -> subprocess.CompletedProcess[bytes]:
        return run_cli("say", "-f", "-", "-v", "heart", "-o", str(out), "--format", "wav", "--speed", "1.5",
                       "--seed", "3", "--sample-rate", "16000", "-q", tmp_path=tmp_path,
                       stdin=b"Read from standard input.\n")

    first = tmp_path / "speech.bin"
    done = say(first)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""  # --quiet
    samples, rate = audio.decode(first.read_bytes(), "wav")
    assert rate == 16000 and len(samples) / rate > 0.5
    second = tmp_path / "again.wav"
    assert say(second).returncode == 0
    assert second.read_bytes() == first.read_bytes()  # same seed, same audio


def test_say_markdown_file_and_stdout(tmp_path: Path) -> None:
    md = tmp_path / "note.md"
    md.write_text("# Title\n\nSome **bold** words and [a link](https://example.org).\n", encoding="utf-8")
    done = run_cli("say", "-f", str(md), "-v", "joe", "-o", "-", "--format", "flac", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    samples, rate = audio.decode(done.stdout, "flac")
    assert rate == 22050 and len(samples) / rate > 1.0


def test_unknown_voice_exits_2_and_lists_voices(tmp_path: Path) -> None:
    done = run_cli("say", "Hello", "-v", "nobody", "-o", str(tmp_path / "x.mp3"), tmp_path=tmp_path)
    assert_user_error(done, "unknown voice 'nobody'", "heart", "joe", "jf_alpha")
    assert not (tmp_path / "x.mp3").exists()


def test_missing_file_exits_2(tmp_path: Path) -> None:
    done = run_cli("say", "-f", str(tmp_path / "absent.txt"), "-o", str(tmp_path / "x.mp3"), tmp_path=tmp_path)
    assert_user_error(done, "cannot read", "absent.txt")


def test_non_utf8_file_exits_2(tmp_path: Path, corpus: Corpus) -> None:
    latin1 = corpus.path("edge/latin1.txt")
    done = run_cli("say", "-f", str(latin1), "-o", str(tmp_path / "x.wav"), tmp_path=tmp_path)
    assert_user_error(done, "not UTF-8")


@pytest.mark.parametrize("args,needle", [
    (("say", "", "-o", "x.wav"), "empty"),
    (("say", "Hi", "--speed", "5", "-o", "x.wav"), "speed"),
    (("say", "Hi", "--speed", "nan", "-o", "x.wav"), "speed"),
    (("say", "Hi", "--format", "ogg", "-o", "x.wav"), "valid formats"),
    (("say", "Hi", "-o", "x.xyz"), "--format"),
    (("say", "Hi", "-o", "no/such/dir/x.wav"), "does not exist"),
    (("say", "Hi", "--sample-rate", "100", "-o", "x.wav"), "sample rate"),
])
def test_bad_requests_exit_2_with_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    args = tuple(str(tmp_path / a) if a.endswith((".wav", ".xyz")) else a for a in args)
    assert_user_error(run_cli(*args, tmp_path=tmp_path), needle)


def test_argument_errors_exit_2(tmp_path: Path) -> None:
    done = run_cli("say", "-o", str(tmp_path / "x.wav"), tmp_path=tmp_path)
    assert done.returncode == 2 and b"Traceback" not in done.stderr
    done = run_cli(tmp_path=tmp_path)
    assert done.returncode == 2 and b"usage" in done.stderr

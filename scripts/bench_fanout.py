"""Benchmark long-document fan-out: one chapter on 1 and on 2 worker processes.

Starts its own embedded Redis and real Celery workers (nothing else needs to run),
submits the chapter as one job with the cache off, and times it from submit to
succeeded. Three set-ups by default:

* ``whole, 1 process``: fan-out off (``TTS_CHUNK_FANOUT_CHARS=0``), the old single task;
* ``fan-out, 1 process`` and ``fan-out, 2 processes``: the same job split into parts.

Usage::

    python scripts/bench_fanout.py [--text FILE] [--voice heart] [--formats mp3,wav] [--runs 1]

Prints a table and the speedup of 2 processes over 1 (the issue's goal: at least 1.6x).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis

from scripts.embedded_redis import EmbeddedRedis
from settings import child_environment, load_settings

#: The chapter of the test suite's own corpus (tests/data/README.md), so a plain clone can benchmark.
DEFAULT_TEXT = ROOT / "tests" / "data" / "long" / "chapter.txt"
READY_TIMEOUT = 120.0


@dataclass
class Setup:
    """One benchmarked configuration."""

    label: str
    concurrency: int
    fanout: bool


@dataclass
class Outcome:
    """One timed run."""

    setup: Setup
    fmt: str
    seconds: float
    audio_seconds: float
    parts: int
    pids: int


def _env(url: str, data_dir: Path, fanout: bool) -> dict[str, str]:
    env = child_environment(inherit_settings=False)
    env.update({"REDIS_URL": url, "TTS_DATA_DIR": str(data_dir), "TTS_MODEL_CACHE_DIR": str(data_dir / "models"),
                "TTS_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    if not fanout:
        env["TTS_CHUNK_FANOUT_CHARS"] = "0"
    return env


def _start_worker(env: dict[str, str], concurrency: int, log_path: Path) -> subprocess.Popen[bytes]:
    hostname = f"bench-{uuid.uuid4().hex[:8]}@localhost"
    cmd = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", "synthesis,bulk,batch,webhooks",
           "-c", str(concurrency), "-n", hostname, "--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    client = redis.Redis.from_url(env["REDIS_URL"])
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log_path}")
            if client.exists(f"tts:metrics:worker:{hostname}"):
                return proc
            time.sleep(0.2)
    finally:
        client.close()
    _stop_worker(proc)
    raise RuntimeError(f"worker not ready after {READY_TIMEOUT}s; see {log_path}")


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _run_job(service, text: str, voice: str, fmt: str, timeout: float = 900.0):  # type: ignore[no-untyped-def]
    from tasks.job_request import JobInput

    job, _ = service.submit(JobInput.model_validate({"text": text, "voice": voice, "format": fmt, "cache": False}).resolve())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(job.id)
        if job.status.finished:
            return job
        time.sleep(0.05)
    raise RuntimeError(f"job {job.id} not finished after {timeout}s")


def bench(text: str, voice: str, formats: Sequence[str], setups: Sequence[Setup], runs: int) -> list[Outcome]:
    """Time every (setup, format) ``runs`` times; returns the best run of each."""
    from tasks.runtime import Runtime
    from tasks.service import JobService

    outcomes: list[Outcome] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    with EmbeddedRedis(port=0, data_dir=tmp / "redis", appendonly=False) as server:
        for n, setup in enumerate(setups, start=1):
            url = server.url_for_db(n)
            env = _env(url, tmp, setup.fanout)
            worker = _start_worker(env, setup.concurrency, tmp / f"worker{n}.log")
            try:
                service = JobService(Runtime(load_settings(env)))
                for _ in range(2 * setup.concurrency):  # warm every process: model, G2P, encoders
                    _run_job(service, f"Warming up, {uuid.uuid4().hex[:4]}.", voice, formats[0])
                for fmt in formats:
                    best: Outcome | None = None
                    for _ in range(runs):
                        job = _run_job(service, text, voice, fmt)
                        if job.status.value != "succeeded":
                            raise RuntimeError(f"{setup.label} {fmt}: job {job.id} {job.status.value}: {job.error}")
                        history = service.rt.jobs.history(job.id)
                        parts = [h for h in history if h.get("outcome") == "part_succeeded"]
                        outcome = Outcome(setup=setup, fmt=fmt, seconds=(job.finished_at or 0) - job.created_at,
                                          audio_seconds=job.duration or 0.0, parts=len(parts),
                                          pids=len({h["pid"] for h in parts}))
                        print(f"  {setup.label:<22} {fmt:<5} {outcome.seconds:7.2f} s  "
                              f"({outcome.parts} parts on {outcome.pids} processes)", flush=True)
                        if best is None or outcome.seconds < best.seconds:
                            best = outcome
                    if best is not None:
                        outcomes.append(best)
            finally:
                _stop_worker(worker)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="the document (default: tests/data/long/chapter.txt)")
    parser.add_argument("--voice", default="heart")
    parser.add_argument("--formats", default="mp3,wav", help="comma-separated formats (default: mp3,wav)")
    parser.add_argument("--runs", type=int, default=1, help="runs per set-up; the best is reported")
    parser.add_argument("--no-whole", action="store_true", help="skip the fan-out-off baseline")
    args = parser.parse_args(argv)
    if not args.text.is_file():
        print(f"no such file: {args.text}", file=sys.stderr)
        return 2
    text = args.text.read_text(encoding="utf-8")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    setups = [Setup("fan-out, 1 process", 1, True), Setup("fan-out, 2 processes", 2, True)]
    if not args.no_whole:
        setups.insert(0, Setup("whole job, 1 process", 1, False))
    print(f"{len(text):,} characters, voice {args.voice}, {os.cpu_count()} cores")
    outcomes = bench(text, args.voice, formats, setups, max(1, args.runs))
    print()
    print("| set-up | format | seconds | audio | parts (processes) | x real time |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    for o in outcomes:
        print(f"| {o.setup.label} | {o.fmt} | {o.seconds:.2f} | {o.audio_seconds / 60:.1f} min | "
              f"{o.parts} ({o.pids}) | {o.audio_seconds / o.seconds:.0f} |")
    print()
    for fmt in formats:
        by = {o.setup.label: o.seconds for o in outcomes if o.fmt == fmt}
        one, two = by.get("fan-out, 1 process"), by.get("fan-out, 2 processes")
        if one and two:
            line = f"{fmt}: speedup 2 processes vs 1 = {one / two:.2f}x"
            whole = by.get("whole job, 1 process")
            if whole:
                line += f"; vs the whole job on 1 process = {whole / two:.2f}x"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark long-document fan-out: one chapter on 1 and on 2 worker processes, against the ceiling.

Starts its own embedded Redis and real Celery workers (nothing else needs to run),
submits the chapter as one job with the cache off, and times it from submit to
succeeded. Three set-ups by default:

* ``whole job, 1 process``: fan-out off (``TTS_CHUNK_FANOUT_CHARS=0``), the un-split job;
* ``fan-out, 1 process`` and ``fan-out, 2 processes``: the same job split into parts.

And the ceiling, in the same run: the same parts synthesized in-process (no queue, no
Redis, no encoding) by a ``multiprocessing`` pool of 1 and of 2 processes. Two vCPUs
may not make two cores' worth of work (shared physical cores, other tenants), and the
API, Redis and the Celery main process share them; a fan-out speedup is only as good
as the ratio the pool reaches. Every timed run also reports how many cores other
processes on the machine kept busy meanwhile (``others``), so a noisy run shows.

For a fanned-out job the table splits the time, from the job's history: how many parts
the leading synthesize task made itself, the seconds before the first part started, the
processes' gaps between their consecutive parts (summed), and the seconds after the
last part (the stitch, or the last encode).

Usage::

    python scripts/bench_fanout.py [--text FILE] [--voice heart] [--formats mp3,wav] [--runs 1]
                                   [--part-chars N] [--no-whole] [--no-ceiling]

Prints a table and the speedups: fan-out on 2 processes over the whole job on 1 (issue
12's target: at least 1.85x) and over fan-out on 1, beside the pool's 2-over-1 ratio.
Hold the benchmark lock: ``flock /tmp/tts-bench.lock python scripts/bench_fanout.py``.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil
import redis

from scripts.bench_stack import add_setting_option
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
    #: Parts the leading synthesize task made itself, and its seconds waiting for the others'.
    led: int = 0
    #: Seconds before the first part, between each process's parts (summed), after the last part.
    before: float = 0.0
    gaps: float = 0.0
    after: float = 0.0
    #: Cores other processes on the machine kept busy during the run (load that is not this benchmark).
    others: float = 0.0


@dataclass
class Ceiling:
    """The same parts in-process: wall seconds on a pool of 1 and of 2 processes."""

    one: float
    two: float
    others_one: float
    others_two: float

    @property
    def ratio(self) -> float:
        """How much faster 2 pool processes are than 1: what these cores can give."""
        return self.one / self.two if self.two > 0 else 0.0


class LoadMeter:
    """CPU seconds the rest of the machine used over an interval (all CPU minus this process tree's)."""

    def __init__(self) -> None:
        self._start_all = 0.0
        self._start_mine = 0.0
        self._start_wall = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def _mine() -> float:
        me = psutil.Process()
        total = 0.0
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def start(self) -> None:
        """Begin an interval."""
        self._start_all, self._start_mine, self._start_wall = self._busy(), self._mine(), time.monotonic()

    def cores(self) -> float:
        """Cores the other processes kept busy on average since :meth:`start`."""
        wall = time.monotonic() - self._start_wall
        others = (self._busy() - self._start_all) - (self._mine() - self._start_mine)
        return max(0.0, others) / wall if wall > 0 else 0.0


# --- the ceiling: the same parts in an in-process pool -----------------------------------------
_POOL: dict[str, Any] = {}


def _pool_init(env: dict[str, str], voice: str) -> None:
    """A pool process: the catalog a worker would build, warmed up on one sentence."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from engine import SynthesisOptions, synthesize
    from tasks.runtime import Runtime

    _POOL["catalog"] = Runtime(load_settings(env)).catalog
    synthesize("Warming up the pool.", SynthesisOptions(voice=voice), _POOL["catalog"])


def _pool_part(args: tuple[list[str], str]) -> int:
    """Synthesize one part's sentences; returns its samples."""
    from engine import SynthesisOptions
    from engine.synthesis import stream_chunks

    group, voice = args
    return sum(piece.samples.size for piece in stream_chunks(group, SynthesisOptions(voice=voice), _POOL["catalog"]))


def ceiling(env: dict[str, str], text: str, voice: str, part_chars: int) -> Ceiling:
    """Time the text's fan-out parts on an in-process pool of 1 and of 2 processes."""
    from engine import SynthesisOptions
    from engine.synthesis import prepare
    from engine.text import group_chunks
    from tasks.runtime import Runtime

    catalog = Runtime(load_settings(env)).catalog
    groups = group_chunks(prepare(text, SynthesisOptions(voice=voice), catalog), part_chars)
    ctx = multiprocessing.get_context("spawn")  # fresh processes, as worker children load afresh
    walls: dict[int, tuple[float, float]] = {}
    meter = LoadMeter()
    for processes in (1, 2):
        with ctx.Pool(processes, initializer=_pool_init, initargs=(env, voice)) as pool:
            pool.map(_pool_part, [(["Warming up again."], voice)] * (2 * processes), chunksize=1)
            meter.start()
            started = time.perf_counter()
            pool.map(_pool_part, [(g, voice) for g in groups], chunksize=1)
            walls[processes] = (time.perf_counter() - started, meter.cores())
        print(f"  in-process pool, {processes} process{'es' if processes > 1 else ''}: "
              f"{walls[processes][0]:6.2f} s  ({len(groups)} parts; others {walls[processes][1]:.2f} cores)",
              flush=True)
    return Ceiling(one=walls[1][0], two=walls[2][0], others_one=walls[1][1], others_two=walls[2][1])


#: ``--setting`` values (TTS_... = value), for the workers and the pool alike.
EXTRA_SETTINGS: dict[str, str] = {}


def _env(url: str, data_dir: Path, fanout: bool, part_chars: int | None = None) -> dict[str, str]:
    env = child_environment(inherit_settings=False)
    env.update(EXTRA_SETTINGS)
    env.update({"REDIS_URL": url, "TTS_DATA_DIR": str(data_dir), "TTS_MODEL_CACHE_DIR": str(data_dir / "models"),
                "TTS_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
    if not fanout:
        env["TTS_CHUNK_FANOUT_CHARS"] = "0"
    if part_chars is not None:
        env["TTS_FANOUT_PART_CHARS"] = str(part_chars)
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


def _timeline(history: Sequence[dict[str, Any]], started_at: float, finished_at: float) -> tuple[float, float, float]:
    """Where a fanned-out job's wall time went besides synthesizing parts, from its history.

    (job start to the first part's start: the plan and the fan-out; the processes' gaps
    between their consecutive parts, summed: dispatch, encoding in order and waiting for
    others' parts; the last part's end to the job's end: the stitch or the last encode).
    """
    parts = [h for h in history if h.get("outcome") == "part_succeeded"]
    if not parts:
        return 0.0, 0.0, 0.0
    gaps = 0.0
    for pid in {h["pid"] for h in parts}:
        mine = sorted((h for h in parts if h["pid"] == pid), key=lambda h: h["started_at"])
        gaps += sum(max(0.0, b["started_at"] - a["finished_at"]) for a, b in itertools.pairwise(mine))
    first = min(h["started_at"] for h in parts)
    last = max(h["finished_at"] for h in parts)
    return max(0.0, first - started_at), gaps, max(0.0, finished_at - last)


def bench(text: str, voice: str, formats: Sequence[str], setups: Sequence[Setup], runs: int,
          part_chars: int | None = None) -> list[Outcome]:
    """Time every (setup, format) ``runs`` times; returns the best run of each."""
    from tasks.runtime import Runtime
    from tasks.service import JobService

    outcomes: list[Outcome] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    with EmbeddedRedis(port=0, data_dir=tmp / "redis", appendonly=False) as server:
        for n, setup in enumerate(setups, start=1):
            url = server.url_for_db(n)
            env = _env(url, tmp, setup.fanout, part_chars)
            worker = _start_worker(env, setup.concurrency, tmp / f"worker{n}.log")
            try:
                service = JobService(Runtime(load_settings(env)))
                for _ in range(2 * setup.concurrency):  # warm every process: model, G2P, encoders
                    _run_job(service, f"Warming up, {uuid.uuid4().hex[:4]}.", voice, formats[0])
                for fmt in formats:
                    best: Outcome | None = None
                    for _ in range(runs):
                        meter = LoadMeter()
                        meter.start()
                        job = _run_job(service, text, voice, fmt)
                        others = meter.cores()
                        if job.status.value != "succeeded":
                            raise RuntimeError(f"{setup.label} {fmt}: job {job.id} {job.status.value}: {job.error}")
                        history = service.rt.jobs.history(job.id)
                        parts = [h for h in history if h.get("outcome") == "part_succeeded"]
                        outcome = Outcome(setup=setup, fmt=fmt, seconds=(job.finished_at or 0) - job.created_at,
                                          audio_seconds=job.duration or 0.0, parts=len(parts),
                                          pids=len({h["pid"] for h in parts}),
                                          led=sum(1 for h in parts if h.get("lead")), others=others)
                        outcome.before, outcome.gaps, outcome.after = _timeline(history, job.started_at or 0.0,
                                                                                job.finished_at or 0.0)
                        print(f"  {setup.label:<22} {fmt:<5} {outcome.seconds:7.2f} s  "
                              f"({outcome.parts} parts on {outcome.pids} processes, {outcome.led} by the leader; "
                              f"others {others:.2f} cores)", flush=True)
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
    parser.add_argument("--no-ceiling", action="store_true", help="skip the in-process pool of 1 and 2 processes")
    add_setting_option(parser, "the workers and the pool")
    parser.add_argument("--part-chars", type=int, default=None,
                        help="TTS_FANOUT_PART_CHARS for the workers and the pool (default: the settings')")
    args = parser.parse_args(argv)
    if not args.text.is_file():
        print(f"no such file: {args.text}", file=sys.stderr)
        return 2
    EXTRA_SETTINGS.update(dict(args.setting))
    text = args.text.read_text(encoding="utf-8")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    setups = [Setup("fan-out, 1 process", 1, True), Setup("fan-out, 2 processes", 2, True)]
    if not args.no_whole:
        setups.insert(0, Setup("whole job, 1 process", 1, False))
    pool_env = {**child_environment(inherit_settings=False), **EXTRA_SETTINGS}
    settings = load_settings(pool_env)
    part_chars = args.part_chars if args.part_chars is not None else settings.fanout_part_chars
    print(f"{len(text):,} characters, voice {args.voice}, {os.cpu_count()} cores, parts of {part_chars} characters, "
          f"{settings.onnx_threads} onnxruntime threads per process")
    limit = None
    if not args.no_ceiling:
        limit = ceiling(pool_env, text, args.voice, part_chars)
    outcomes = bench(text, args.voice, formats, setups, max(1, args.runs), args.part_chars)
    print()
    print("| set-up | format | seconds | audio | parts (processes) | by the leader | before 1st part "
          "| gaps between parts | after last part | x real time | others (cores) |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    if limit is not None:
        print(f"| in-process pool, 1 process | - | {limit.one:.2f} | | | | | | | | {limit.others_one:.2f} |")
        print(f"| in-process pool, 2 processes | - | {limit.two:.2f} | | | | | | | | {limit.others_two:.2f} |")
    for o in outcomes:
        print(f"| {o.setup.label} | {o.fmt} | {o.seconds:.2f} | {o.audio_seconds / 60:.1f} min | "
              f"{o.parts} ({o.pids}) | {o.led} | {o.before:.2f} | {o.gaps:.2f} | {o.after:.2f} | "
              f"{o.audio_seconds / o.seconds:.0f} | {o.others:.2f} |")
    print()
    if limit is not None:
        print(f"ceiling: an in-process pool of 2 processes is {limit.ratio:.2f}x one process on these parts")
    for fmt in formats:
        by = {o.setup.label: o.seconds for o in outcomes if o.fmt == fmt}
        one, two, whole = by.get("fan-out, 1 process"), by.get("fan-out, 2 processes"), by.get("whole job, 1 process")
        parts: list[str] = []
        if whole and two:
            parts.append(f"2 processes vs the whole job on 1 = {whole / two:.2f}x (target 1.85x)")
        if whole and one:
            parts.append(f"fan-out on 1 process vs the whole job = {whole / one:.2f}x (never below 1)")
        if one and two:
            parts.append(f"2 processes vs fan-out on 1 = {one / two:.2f}x")
        if parts:
            print(f"{fmt}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

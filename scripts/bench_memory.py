"""Memory of a worker child: RSS after each voice family first speaks and over N mixed jobs.

Measures, in one run:

* **worker child**: a tts-batch stack started like ``make up`` (``scripts/run_stack.py --only
  web,worker`` on an embedded Redis and free ports, ``--workers`` worker processes; see
  ``scripts/bench_stack.py``). The RSS (and USS, the pages only that process holds) of every
  prefork child is read with psutil: once started (a child says "Ready." in the default
  voice, heart, at start-up), after each family first speaks through ``/v1/audio/speech``
  (heart, joe, jf_alpha: ``--workers`` requests at once, so every child gets one), after every
  bundled voice has spoken, and every ``--jobs``/``--samples`` jobs during ``--jobs`` mixed
  jobs over every bundled voice (one sentence each, unique texts so no cache answers, wav):
  the growth is the largest child's RSS at the end less that after every voice spoke. Each
  child's peak RSS so far (``VmHWM``) is read too: Celery's ``worker_max_memory_per_child``
  compares that peak (billiard reads ``ru_maxrss``), not the RSS of the moment, so
  ``TTS_WORKER_MAX_MEMORY_MB`` must sit above it;
* **baseline**: a plain process (this script again, in a subprocess) holding the same voices:
  ``engine.VoiceCatalog`` built as the worker builds it, and ``engine.synthesize`` of one
  sentence per voice, its RSS (and peak RSS) read after heart, joe, jf_alpha and all voices.

Prints the figures and the ratios worker child (the largest) / plain process at the same
stage: 1.00 means a child costs no more than the voices themselves. Not a timed test.
Usage::

    python scripts/bench_memory.py [--jobs 1000] [--workers 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil
import requests

from scripts.bench_engine import machine
from scripts.bench_stack import BenchStack, add_setting_option
from settings import child_environment, get_settings

log = logging.getLogger(__name__)

#: The voice of each family, in the order they first speak.
FAMILIES = (("heart", "heart"), ("joe", "joe"), ("kokoro", "jf_alpha"))
ENGLISH = "The ferryman repaired the lanterns along the pier before the tide turned."
JAPANESE = "今日はとても良い天気です。私は公園を散歩しました。"
#: The stack's TTS_SPEECH_TIMEOUT, and the client's, in seconds: this run measures memory, not
#: latency, and runs niced beside other work, so a Kokoro sentence may wait long for a core.
SPEECH_TIMEOUT = 600
REQUEST_TIMEOUT = SPEECH_TIMEOUT + 60.0
MIB = 1024 * 1024


def sentence(voice: str, n: int) -> str:
    """One sentence for ``voice`` (Japanese for the Kokoro voices), made unique by ``n``."""
    if voice.startswith(("jf_", "jm_")):
        return f"{JAPANESE}{n}番目です。"
    return f"{ENGLISH} Line {n}."


def peak_rss(pid: int) -> int:
    """The most RSS (bytes) process ``pid`` has had so far (``VmHWM``; 0 where /proc has no such line)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Sample:
    """RSS, USS and peak RSS of each worker child (bytes) at one stage."""

    stage: str
    rss: list[int] = field(default_factory=list)
    uss: list[int] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, stage: str, children: Sequence[psutil.Process]) -> Sample:
        """Read every child's memory now."""
        sample = cls(stage)
        for child in children:
            info = child.memory_full_info()
            sample.rss.append(info.rss)
            sample.uss.append(info.uss)
            sample.peak.append(peak_rss(child.pid))
        log.info("%s: child RSS %s MiB (peak %s)", stage, ", ".join(f"{r / MIB:.0f}" for r in sample.rss),
                 ", ".join(f"{p / MIB:.0f}" for p in sample.peak))
        return sample


# --- the baseline: one plain process ----------------------------------------------------------
def baseline_child() -> int:
    """Run in the subprocess: load and speak each voice; print the RSS after each stage as JSON."""
    from engine import SynthesisOptions, VoiceCatalog, synthesize

    s = get_settings()
    catalog = VoiceCatalog(voices_dir=s.voices_dir or None, kokoro_voices=s.kokoro_voices or None,
                           onnx_threads=s.onnx_threads, model_cache_dir=s.model_cache)
    me = psutil.Process()
    stages: dict[str, int] = {"started": me.memory_info().rss}
    spoken: set[str] = set()
    for family, voice in FAMILIES:
        synthesize(sentence(voice, 0), SynthesisOptions(voice=voice, format="wav"), catalog)
        spoken.add(voice)
        stages[family] = me.memory_info().rss
    for voice in catalog.ids():
        if voice not in spoken:
            synthesize(sentence(voice, 0), SynthesisOptions(voice=voice, format="wav"), catalog)
    stages["all voices"] = me.memory_info().rss
    stages["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    stages["voices"] = len(catalog.ids())
    print(json.dumps(stages))
    return 0


def measure_baseline() -> dict[str, int]:
    """The baseline figures, from a fresh process (this script with ``--baseline-child``)."""
    env = child_environment(inherit_settings=False,
                            TTS_MODEL_CACHE_DIR=str(get_settings().model_cache.resolve()), TTS_LOG_LEVEL="WARNING")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--baseline-child"], cwd=str(ROOT),
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the baseline process failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the worker children -----------------------------------------------------------------------
def speak(session: requests.Session, url: str, voice: str, text: str) -> None:
    """One ``/v1/audio/speech`` request (wav); it must answer 200 audio that the cache did not hold."""
    r = session.post(url + "/v1/audio/speech", timeout=REQUEST_TIMEOUT,
                     json={"model": "tts-1", "input": text, "voice": voice, "response_format": "wav"})
    if r.status_code != 200 or not r.content:
        raise RuntimeError(f"/v1/audio/speech ({voice}) answered {r.status_code}: {r.text[:300]}")
    if r.headers.get("X-Cache") != "MISS":
        raise RuntimeError(f"/v1/audio/speech ({voice}) answered from the cache: {text!r}")


class Client:
    """Unique texts and one HTTP session per thread."""

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.threads = threads
        self.count = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    def _one(self, voice: str) -> None:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        with self._lock:
            self.count += 1
            n = self.count
        speak(self._local.session, self.url, voice, sentence(voice, n))

    def run(self, voices: Sequence[str]) -> None:
        """One request per entry of ``voices``, from ``threads`` threads."""
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            list(pool.map(self._one, voices))


def settle(children: Sequence[psutil.Process], quiet: float = 2.0, timeout: float = 120.0) -> None:
    """Wait until the children have used no CPU for ``quiet`` seconds (their start-up synthesis is done)."""
    def cpu() -> float:
        return sum(sum(c.cpu_times()[:2]) for c in children)

    deadline = time.monotonic() + timeout
    last = cpu()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu()
        if now - last < 0.05:
            return
        last = now
    log.warning("the worker children were still busy after %.0f s", timeout)


def measure_workers(stack: BenchStack, jobs: int, samples: int) -> tuple[list[Sample], list[str]]:
    """Child memory after start-up, after each family first speaks and during ``jobs`` mixed jobs."""
    children = stack.children()
    client = Client(stack.url, stack.concurrency)
    voices = [v["id"] for v in requests.get(stack.url + "/v1/voices", timeout=30).json()["voices"]]
    settle(children)
    out = [Sample.of("started (heart said Ready.)", children)]
    for family, voice in FAMILIES:
        client.run([voice] * stack.concurrency)
        out.append(Sample.of(f"{family} spoke ({voice})", children))
    client.run([voice for voice in voices for _ in range(stack.concurrency)])
    out.append(Sample.of(f"all {len(voices)} voices spoke", children))
    mixed = [voices[i % len(voices)] for i in range(jobs)]
    step = max(1, jobs // max(1, samples))
    for start in range(0, jobs, step):
        client.run(mixed[start:start + step])
        out.append(Sample.of(f"after {min(start + step, jobs)} mixed jobs", children))
    if [c.pid for c in stack.children()] != [c.pid for c in children]:
        raise RuntimeError("a worker child was replaced during the run (max memory per child reached, or "
                           "a crash): its figures would mix two processes")
    return out, voices


# --- reporting --------------------------------------------------------------------------------------
def summarize(samples: list[Sample], baseline: dict[str, int], voices: list[str], meta: dict[str, Any],
              jobs: int) -> dict[str, Any]:
    """The figures as one JSON-able mapping (MiB)."""
    rows = []
    # Which baseline stage a worker stage compares to: the families that have spoken by then.
    compare = {"started": "heart", "heart": "heart", "joe": "joe", "kokoro": "kokoro", "all": "all voices",
               "after": "all voices"}
    for sample in samples:
        key = sample.stage.split()[0]
        base = baseline[compare[key]]
        rows.append({"stage": sample.stage, "rss_mib": [round(r / MIB, 1) for r in sample.rss],
                     "uss_mib": [round(u / MIB, 1) for u in sample.uss],
                     "peak_mib": [round(p / MIB, 1) for p in sample.peak],
                     "max_rss_mib": round(max(sample.rss) / MIB, 1), "baseline_stage": compare[key],
                     "baseline_rss_mib": round(base / MIB, 1), "ratio": round(max(sample.rss) / base, 2)})
    # Growth: from the moment every voice has spoken in every child to the last sample.
    loaded = next(i for i, s in enumerate(samples) if s.stage.startswith("all "))
    growth = (max(samples[-1].rss) - max(samples[loaded].rss)) / MIB
    return {"meta": meta, "jobs": jobs, "voices": voices, "rows": rows,
            "baseline_mib": {k: round(v / MIB, 1) for k, v in baseline.items() if k != "voices"},
            "growth_over_mixed_jobs_mib": round(growth, 1),
            "largest_child_peak_mib": round(max(max(s.peak) for s in samples) / MIB, 1)}


def markdown(summary: dict[str, Any]) -> str:
    """The figures as Markdown tables."""
    m = summary["meta"]["machine"]
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores; load average at the start {m['load_average_1min']}. "
         f"Worker: a stack like `make up` with {summary['meta']['workers']} worker process(es); "
         f"{summary['jobs']} mixed one-sentence jobs (wav, unique texts) over {', '.join(summary['voices'])}. "
         "Baseline: one plain process, engine.VoiceCatalog + engine.synthesize of one sentence per voice."),
        "",
        ("| stage | child RSS MiB (each) | child USS MiB (each) | child peak RSS MiB so far (each) "
         "| plain process RSS MiB (same voices) | ratio largest child / plain |"),
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["rows"]:
        lines.append(f"| {row['stage']} | {' / '.join(f'{r:.0f}' for r in row['rss_mib'])} "
                     f"| {' / '.join(f'{u:.0f}' for u in row['uss_mib'])} "
                     f"| {' / '.join(f'{p:.0f}' for p in row.get('peak_mib', []))} "
                     f"| {row['baseline_rss_mib']:.0f} ({row['baseline_stage']}) | {row['ratio']:.2f} |")
    base = summary["baseline_mib"]
    lines += ["", "Plain process RSS MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in base.items()) + ".",
              (f"Largest child's RSS growth from 'all voices spoke' to the last sample: "
               f"{summary['growth_over_mixed_jobs_mib']:+.1f} MiB."),
              (f"Largest child's peak RSS (what Celery's worker_max_memory_per_child compares): "
               f"{summary.get('largest_child_peak_mib', 0):.0f} MiB.")]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_memory.py",
        description="Measure the RSS of each worker child of a stack started like `make up` after each voice "
        "family first speaks (heart, joe, jf_alpha) and during N mixed jobs (growth), against a plain process "
        "holding the same voices (engine.VoiceCatalog + one synthesize per voice), measured in the same run; "
        "prints RSS figures and the ratios child / plain process.")
    parser.add_argument("--jobs", type=int, default=1000,
                        help="mixed one-sentence jobs over every voice after the families spoke (default 1000; "
                        "e.g. 200 for a quick run)")
    parser.add_argument("--samples", type=int, default=5, help="memory readings during the mixed jobs (default 5)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of the stack (default 2, as `make up` on 2 cores)")
    add_setting_option(parser, "the stack this script starts")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of Markdown")
    parser.add_argument("--keep", action="store_true", help="keep the stack's data under var/bench-memory")
    parser.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.workers < 1:
        parser.error("--jobs and --workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; prints the table (or JSON)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.baseline_child:
        return baseline_child()
    meta = {"machine": machine(), "workers": args.workers}
    log.info("baseline: all voices in one plain process")
    baseline = measure_baseline()
    settings = {"TTS_SPEECH_TIMEOUT": str(SPEECH_TIMEOUT), **dict(args.setting)}
    stack = BenchStack("memory", concurrency=args.workers, **settings)
    try:
        stack.start()
        samples, voices = measure_workers(stack, args.jobs, args.samples)
    finally:
        stack.cleanup(keep=args.keep)
    summary = summarize(samples, baseline, voices, meta, args.jobs)
    print(json.dumps(summary, indent=2) if args.json else markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

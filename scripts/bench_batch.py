"""Big batches: how long a 10,000-item submit takes, what the API answers meanwhile, what Redis keeps, the zip's memory.

Issue 13's targets for ``POST /v1/batches`` (docs/batches.md#big-batches). Everything runs against
stacks this script starts like ``make up`` does (``scripts/run_stack.py``: the embedded Redis and
gunicorn as the Procfile runs it, free ports, data under ``var/bench-batch*``):

1. **submit** (``--only web``: no worker, so the items stay queued and only accepting is measured):
   for each size in ``--sizes`` (default 1,000 and 10,000) a batch of that many unique one-sentence
   texts is POSTed and timed, first alone (``quiet``), then again with ``--probes`` client threads
   sending other requests meanwhile (``--probe-rate`` a second each; 0: back to back): ``GET /v1/jobs/{id}``, ``GET /health/live`` and a small
   ``POST /v1/jobs`` in turn; their latencies during the submit give p50/p99 (and the same probes
   against an idle API, for comparison).
2. **Redis bytes per item**, from the quiet submit: the ``INFO used_memory`` delta over it, and the
   ``MEMORY USAGE`` (``SAMPLES 0``: exact) of every key after it, summed per key family (job records,
   histories, the listing indexes, the batch's structures, the broker's queue) less the same sum
   before; both divided by the batch size. Items are queued, with no audio: this counts records,
   indexes, batch structures and queue messages only.
3. **zip** (``--only web,worker``): ``--seed-items`` distinct short texts are synthesized by the
   stack's workers as one batch, then batches of 100 and ``--zip-items`` items cycling over those
   texts are submitted: each of their items is served from the audio cache at submit, through the
   ordinary code path (``JobService.accept``: every item a job record of its own with its own copy of
   the audio), so no 10,000 syntheses are needed on two cores. Each batch's zip is downloaded while
   ``psutil`` samples the RSS of the gunicorn workers every 20 ms: the peak over the idle RSS,
   100 items against ``--zip-items``.

Not a timed test: figures for docs/batches.md and docs/benchmarks.md. Run it under
``flock /tmp/tts-bench.lock`` on a shared machine. Usage::

    python scripts/bench_batch.py [--sizes 1000,10000] [--probes 3] [--zip-items 10000] [--no-zip]
        [--setting TTS_NAME=VALUE ...] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil
import redis
import requests

from scripts.bench_stack import RUN_STACK, START_TIMEOUT, BenchStack, add_setting_option
from scripts.embedded_redis import parent_death_signal, wait_for_redis
from settings import child_environment, get_settings

log = logging.getLogger("bench_batch")

#: Seconds a submit or a download may take before the benchmark gives up.
REQUEST_TIMEOUT = 600.0
FINAL = {"succeeded", "partially_succeeded", "failed", "cancelled"}


class WebStack(BenchStack):
    """:class:`BenchStack` with ``--only web``: the API and its Redis, no worker (items stay queued)."""

    def start(self) -> WebStack:
        """Launch it; return once Redis answers and the API serves."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        self.env = child_environment(
            inherit_settings=False, TTS_DATA_DIR=str(self.data_dir),
            TTS_MODEL_CACHE_DIR=str(get_settings().model_cache.resolve()),
            TTS_EMBEDDED_REDIS_PORT=str(self.redis_port), TTS_API_PORT=str(self.api_port),
            TTS_LOG_LEVEL="WARNING", **self.extra_env)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(RUN_STACK), "--only", "web"], cwd=str(ROOT),
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=parent_death_signal())
        if not wait_for_redis(self.redis_url, timeout=START_TIMEOUT):
            raise RuntimeError(f"the {self.name} stack's Redis did not answer; see {self.log_path}")
        deadline = time.monotonic() + START_TIMEOUT
        while not self._api_up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} stack's API did not start; see {self.log_path}")
            time.sleep(0.3)
        return self


def gunicorn_workers(stack: BenchStack) -> list[psutil.Process]:
    """The gunicorn worker processes of a stack (gunicorn processes whose parent is gunicorn)."""
    if stack.proc is None:
        return []
    tree = psutil.Process(stack.proc.pid).children(recursive=True)
    guns = []
    for proc in tree:
        try:
            if "gunicorn" in " ".join(proc.cmdline()):
                guns.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    pids = {p.pid for p in guns}
    return [p for p in guns if p.ppid() in pids]


#: Characters of each text (``--chars``); 0: one short sentence.
TEXT_CHARS = 0
FILLER = "The quick brown fox jumps over the lazy dog, and then it runs back home again. "


def texts(n: int, tag: str) -> list[str]:
    """``n`` unique texts: one short sentence each, or :data:`TEXT_CHARS` characters (900: about a minute)."""
    head = [f"Item {i} of batch {tag} is here. " for i in range(n)]
    if not TEXT_CHARS:
        return [h.strip() for h in head]
    body = FILLER * (TEXT_CHARS // len(FILLER) + 1)
    return [(h + body)[:TEXT_CHARS].rstrip() for h in head]


def submit_batch(api: str, inputs: list[str], **extra: Any) -> tuple[float, dict[str, Any]]:
    """POST a batch (``cache`` left on, as a client would); (seconds, answer). Must be 202 or 200."""
    body = {"inputs": [{"text": t} for t in inputs], "defaults": {"voice": "heart", "format": "mp3"}, **extra}
    payload = json.dumps(body)
    started = time.perf_counter()
    r = requests.post(api + "/v1/batches", data=payload, headers={"Content-Type": "application/json"},
                      timeout=REQUEST_TIMEOUT)
    elapsed = time.perf_counter() - started
    if r.status_code not in (200, 202):
        raise RuntimeError(f"batch of {len(inputs)} answered {r.status_code}: {r.text[:300]}")
    return elapsed, r.json()


class Probes:
    """Threads sending other requests in a loop, each timed: GET a job, /health/live, a small POST /v1/jobs."""

    def __init__(self, api: str, job_id: str, threads: int, rate: float = 0.0) -> None:
        self.api, self.job_id, self.threads = api, job_id, threads
        #: Requests per second per thread (0: each thread sends its next request as soon as one returns).
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.stop = threading.Event()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _loop(self, n: int) -> None:
        session = requests.Session()
        kinds = ("get_job", "health", "post_job")
        i = n
        next_at = time.perf_counter()
        while not self.stop.is_set():
            if self.interval:
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.perf_counter()))
            kind = kinds[i % len(kinds)]
            i += 1
            started = time.perf_counter()
            try:
                if kind == "get_job":
                    r = session.get(f"{self.api}/v1/jobs/{self.job_id}", timeout=30)
                elif kind == "health":
                    r = session.get(f"{self.api}/health/live", timeout=30)
                else:
                    r = session.post(f"{self.api}/v1/jobs", timeout=30,
                                     json={"text": f"Probe {uuid.uuid4().hex[:8]}.", "cache": False})
                ok = r.status_code < 300
            except requests.RequestException as exc:
                ok, r = False, None
                self.errors.append(f"{kind}: {exc}")
            elapsed = time.perf_counter() - started
            with self._lock:
                if ok:
                    self.latencies[kind].append(elapsed)
                elif r is not None:
                    self.errors.append(f"{kind}: {r.status_code}")

    def __enter__(self) -> Self:
        self._workers = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._workers:
            t.join(timeout=60)

    def summary(self) -> dict[str, Any]:
        """p50/p99/max in ms over every probe, and per kind."""
        every = [x for v in self.latencies.values() for x in v]
        out: dict[str, Any] = {"all": _quantiles(every), "errors": len(self.errors)}
        for kind, values in sorted(self.latencies.items()):
            out[kind] = _quantiles(values)
        return out


def _quantiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"n": len(values), "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(p99 * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def family(key: str) -> str:
    """The key family a Redis key belongs to (for MEMORY USAGE sums)."""
    if key.startswith("tts:job:"):
        rest = key[len("tts:job:"):]
        return "job record" if ":" not in rest else "job " + rest.split(":", 1)[1]
    if key.startswith("tts:batch:"):
        rest = key[len("tts:batch:"):]
        return "batch record" if ":" not in rest else "batch " + rest.split(":", 1)[1]
    if key.startswith("tts:"):  # a shared structure (indexes, metrics) by its name; per-id keys (cache) as name:*
        return ":".join("*" if len(part) >= 32 and all(c in "0123456789abcdef" for c in part) else part
                        for part in key.split(":"))
    return "broker " + key


def memory_by_family(client: redis.Redis) -> dict[str, int]:
    """MEMORY USAGE (exact) of every key, summed per :func:`family`."""
    sums: dict[str, int] = defaultdict(int)
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for k in batch:
            pipe.memory_usage(k, samples=0)
        for k, used in zip(batch, pipe.execute()):
            sums[family(k)] += int(used or 0)
        batch.clear()

    for raw in client.scan_iter(count=1000):
        batch.append(raw.decode() if isinstance(raw, bytes) else raw)
        if len(batch) >= 1000:
            flush()
    if batch:
        flush()
    return dict(sums)


def _per_item(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    """Each family's growth divided by ``n`` (families that did not change left out)."""
    return {name: round((after.get(name, 0) - before.get(name, 0)) / n, 1) for name in sorted(set(after) | set(before))
            if after.get(name, 0) != before.get(name, 0)}


def used_memory(client: redis.Redis) -> int:
    """INFO used_memory."""
    return int(client.info("memory")["used_memory"])


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_submit(sizes: list[int], probes: int, rate: float, settings: dict[str, str]) -> dict[str, Any]:
    """Part 1 and 2: submit times, probes' latencies and Redis bytes per item, on a web-only stack."""
    out: dict[str, Any] = {}
    stack = WebStack("batch", **settings).start()
    client = redis.Redis.from_url(stack.redis_url)
    try:
        session = requests.Session()
        r = session.post(stack.url + "/v1/jobs", json={"text": "Warm up.", "cache": False}, timeout=30)
        r.raise_for_status()
        job_id = r.json()["id"]
        submit_batch(stack.url, texts(50, "warmup"))  # both gunicorn workers import and warm up
        submit_batch(stack.url, texts(50, "warmup2"))
        with Probes(stack.url, job_id, probes, rate) as idle:
            time.sleep(3.0)
        out["idle_probes"] = idle.summary()
        for size in sizes:
            before, fam_before = used_memory(client), memory_by_family(client)
            load = loadavg()
            quiet, answer = submit_batch(stack.url, texts(size, uuid.uuid4().hex[:8]))
            after, fam_after = used_memory(client), memory_by_family(client)
            families = _per_item(fam_before, fam_after, size)
            with Probes(stack.url, job_id, probes, rate) as during:
                busy, _ = submit_batch(stack.url, texts(size, uuid.uuid4().hex[:8]))
            out[str(size)] = {
                "submit_seconds_quiet": round(quiet, 2), "submit_seconds_with_probes": round(busy, 2),
                "status": answer["status"], "load_before": load, "load_after": loadavg(),
                "used_memory_bytes_per_item": round((after - before) / size, 1),
                "memory_usage_bytes_per_item": round(sum(families.values()), 1),
                "memory_usage_by_family": families, "probes": during.summary(),
            }
            log.info("%d items: %.2f s quiet, %.2f s with probes; %s", size, quiet, busy, out[str(size)])
    finally:
        client.close()
        stack.cleanup()
    return out


def wait_batch(api: str, batch_id: str, timeout: float) -> dict[str, Any]:
    """Poll a batch until it is final."""
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(f"{api}/v1/batches/{batch_id}", timeout=30).json()
        if body["status"] in FINAL:
            return body
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} not final after {timeout} s: {body['counts']}")
        time.sleep(1.0)


def download_rss(stack: BenchStack, batch_id: str) -> dict[str, Any]:
    """Download a batch's zip while sampling the gunicorn workers' RSS; the figures."""
    procs = gunicorn_workers(stack)
    idle = {p.pid: p.memory_info().rss for p in procs}
    peak = dict(idle)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p in procs:
                try:
                    peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    size = 0
    try:
        with requests.get(f"{stack.url}/v1/batches/{batch_id}/result", stream=True, timeout=REQUEST_TIMEOUT) as r:
            r.raise_for_status()
            for chunk in r.iter_content(1 << 16):
                size += len(chunk)
    finally:
        stop.set()
        sampler.join()
    grew = max(peak[pid] - idle[pid] for pid in idle)
    return {"zip_bytes": size, "seconds": round(time.perf_counter() - started, 2),
            "rss_idle_mib": [round(v / 2**20, 1) for v in idle.values()],
            "rss_peak_mib": [round(v / 2**20, 1) for v in peak.values()],
            "rss_growth_mib": round(grew / 2**20, 1), "load": loadavg()}


def bench_zip(seed_items: int, zip_items: int, settings: dict[str, str]) -> dict[str, Any]:
    """Part 3: the zip's RSS for 100 items against ``zip_items``, items served from the cache at submit."""
    out: dict[str, Any] = {"seed_items": seed_items}
    with BenchStack("batch-zip", concurrency=2, **settings) as stack:
        seed = [f"Zip item {i}." for i in range(seed_items)]
        client = redis.Redis.from_url(stack.redis_url)
        fam_before = memory_by_family(client)
        started = time.perf_counter()
        _, answer = submit_batch(stack.url, seed)
        done = wait_batch(stack.url, answer["id"], timeout=1800)
        out["seed_seconds"] = round(time.perf_counter() - started, 1)
        out["seed_counts"] = done["counts"]
        out["seed_memory_usage_by_family"] = _per_item(fam_before, memory_by_family(client), seed_items)
        out["seed_memory_usage_bytes_per_item"] = round(sum(out["seed_memory_usage_by_family"].values()), 1)
        for n in (100, zip_items):
            before, fam_before = used_memory(client), memory_by_family(client)
            seconds, answer = submit_batch(stack.url, [seed[i % seed_items] for i in range(n)])
            body = wait_batch(stack.url, answer["id"], timeout=600)
            families = _per_item(fam_before, memory_by_family(client), n)
            figures = download_rss(stack, answer["id"])
            figures.update(submit_seconds_cached=round(seconds, 2), counts=body["counts"],
                           used_memory_bytes_per_item=round((used_memory(client) - before) / n, 1),
                           memory_usage_bytes_per_item=round(sum(families.values()), 1),
                           memory_usage_by_family=families)
            out[str(n)] = figures
            log.info("zip of %d items: %s", n, figures)
        client.close()
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_batch.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="batch sizes to submit (default 1000,10000)")
    parser.add_argument("--probes", type=int, default=3, help="client threads sending other requests (default 3)")
    parser.add_argument("--probe-rate", type=float, default=20.0,
                        help="requests per second per probe thread (default 20; 0: back to back)")
    parser.add_argument("--seed-items", type=int, default=100, help="distinct texts synthesized for the zip part")
    parser.add_argument("--zip-items", type=int, default=10_000, help="items of the big zip (default 10000)")
    parser.add_argument("--no-zip", action="store_true", help="skip the zip part (no worker needed)")
    parser.add_argument("--chars", type=int, default=0,
                        help="characters per submitted text (default: one short sentence; 900: a minute of speech)")
    parser.add_argument("--no-submit", action="store_true", help="skip the submit part")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_setting_option(parser, "the started stacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the figures."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = dict(args.setting)
    global TEXT_CHARS  # one option, read by texts()
    TEXT_CHARS = args.chars
    result: dict[str, Any] = {"load_start": loadavg()}
    if not args.no_submit:
        result["submit"] = bench_submit([int(s) for s in args.sizes.split(",")], args.probes, args.probe_rate, settings)
    if not args.no_zip:
        result["zip"] = bench_zip(args.seed_items, args.zip_items, settings)
    result["load_end"] = loadavg()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for size, fig in result.get("submit", {}).items():
        if size == "idle_probes":
            print(f"probes against the idle API: {fig['all']}")
            continue
        print(f"batch of {size}: submit {fig['submit_seconds_quiet']} s alone, {fig['submit_seconds_with_probes']} s "
              f"with probes (load {fig['load_before']})")
        print(f"  other requests meanwhile: {fig['probes']['all']} errors {fig['probes']['errors']}")
        print(f"  Redis per item: used_memory {fig['used_memory_bytes_per_item']} B, "
              f"MEMORY USAGE {fig['memory_usage_bytes_per_item']} B: {fig['memory_usage_by_family']}")
    for n, fig in result.get("zip", {}).items():
        if isinstance(fig, dict) and "zip_bytes" in fig:
            print(f"zip of {n} items: {fig['zip_bytes']} bytes in {fig['seconds']} s, API RSS growth "
                  f"{fig['rss_growth_mib']} MiB (idle {fig['rss_idle_mib']}, peak {fig['rss_peak_mib']}, "
                  f"load {fig['load']}); cached submit {fig['submit_seconds_cached']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

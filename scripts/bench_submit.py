"""What ``appendfsync always`` costs the API: submits per second against ``everysec``, in one run.

Starts two real stacks with ``scripts/run_stack.py --only web`` (gunicorn as the Procfile runs
it, plus the embedded Redis; no worker, so nothing but accepting is measured): one with
``TTS_EMBEDDED_REDIS_FSYNC=everysec``, one with ``always``, each on free ports with its Redis
data under ``var/bench-submit/`` (the disk ``make up`` uses, not a tmpfs). After a warm-up,
the rounds alternate between them (the order flips every round, so drift on a busy machine
hits both alike): each round POSTs ``--requests`` jobs to ``/v1/jobs`` from ``--concurrency``
threads, each with a unique text and ``"cache": false`` so that every submit writes a new job
record and a queue message. Every answer must be 202.

Prints submits/s per round and setting, the median per setting, and the ratio always/everysec
(1.00: no cost; 0.85: always accepts 15 % fewer jobs per second). Not a timed test: figures for
``docs/reliability.md``. Usage::

    python scripts/bench_submit.py [--rounds 3] [--requests 300] [--concurrency 8] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis
import requests

from scripts.embedded_redis import find_free_port, wait_for_redis
from settings import child_environment

log = logging.getLogger("bench_submit")

SETTINGS = ("everysec", "always")
RUN_STACK = ROOT / "scripts" / "run_stack.py"
BENCH_DIR = ROOT / "var" / "bench-submit"
#: Seconds a stack may take until its API answers.
START_TIMEOUT = 60.0
WARMUP_REQUESTS = 50


@dataclass
class BenchStack:
    """One ``run_stack.py --only web`` with its fsync setting, ports and output file."""

    fsync: str
    redis_port: int
    api: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    rates: list[float] = field(default_factory=list)

    def start(self) -> None:
        """Launch it and wait until Redis answers and the API accepts a job."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        env = child_environment(
            inherit_settings=False,
            TTS_DATA_DIR=str(self.data_dir),
            TTS_EMBEDDED_REDIS_PORT=str(self.redis_port),
            TTS_EMBEDDED_REDIS_FSYNC=self.fsync,
            TTS_API_PORT=self.api.rsplit(":", 1)[1],
            TTS_LOG_LEVEL="WARNING",
        )
        with open(self.data_dir / "stack.log", "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(RUN_STACK), "--only", "web"], cwd=str(ROOT),
                                         env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"redis://127.0.0.1:{self.redis_port}/0"
        if not wait_for_redis(url, timeout=START_TIMEOUT):
            raise RuntimeError(f"the {self.fsync} stack's Redis did not answer; see {self.data_dir / 'stack.log'}")
        client = redis.Redis.from_url(url)
        try:
            actual = client.config_get("appendfsync")["appendfsync"]
        finally:
            client.close()
        if actual != self.fsync:
            raise RuntimeError(f"the {self.fsync} stack's Redis runs with appendfsync {actual}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if submit(requests.Session(), self.api, "Warming up.") == 202:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.fsync} stack's API did not accept a job; "
                                   f"see {self.data_dir / 'stack.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Ctrl-C it (supervisord stops gunicorn, then Redis) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("the %s stack did not stop in 30 s; killing its process group", self.fsync)
            self.proc.kill()
            self.proc.wait()


def submit(session: requests.Session, api: str, text: str) -> int:
    """POST one job; its HTTP status."""
    r = session.post(api + "/v1/jobs", timeout=30,
                     json={"text": text, "voice": "heart", "format": "mp3", "cache": False})
    return r.status_code


def run_round(api: str, requests_total: int, concurrency: int) -> float:
    """``requests_total`` submits from ``concurrency`` threads; submits per second (all must be 202)."""
    tag = uuid.uuid4().hex
    local = threading.local()

    def one(n: int) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return submit(local.session, api, f"Bench {tag} submit number {n} of this round.")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        # Each thread opens its connection before the clock starts.
        list(pool.map(one, range(concurrency)))
        started = time.perf_counter()
        statuses = list(pool.map(one, range(concurrency, concurrency + requests_total)))
        elapsed = time.perf_counter() - started
    bad = [s for s in statuses if s != 202]
    if bad:
        raise RuntimeError(f"{len(bad)} of {requests_total} submits were not accepted: {sorted(set(bad))}")
    return requests_total / elapsed


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_submit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting (default 3)")
    parser.add_argument("--requests", type=int, default=300, help="submits per round (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--keep", action="store_true", help=f"keep the stacks' data under {BENCH_DIR}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table (or JSON)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    stacks = {
        fsync: BenchStack(fsync, find_free_port(), f"http://127.0.0.1:{find_free_port()}", BENCH_DIR / fsync)
        for fsync in SETTINGS
    }
    try:
        for stack in stacks.values():
            log.info("starting the appendfsync %s stack (API %s)", stack.fsync, stack.api)
            stack.start()
        for stack in stacks.values():
            run_round(stack.api, WARMUP_REQUESTS, args.concurrency)
        for n in range(args.rounds):
            order = SETTINGS if n % 2 == 0 else SETTINGS[::-1]
            for fsync in order:
                rate = run_round(stacks[fsync].api, args.requests, args.concurrency)
                stacks[fsync].rates.append(rate)
                log.info("round %d, appendfsync %s: %.0f submits/s", n + 1, fsync, rate)
    finally:
        for stack in stacks.values():
            stack.stop()
        if not args.keep:
            shutil.rmtree(BENCH_DIR, ignore_errors=True)

    medians = {fsync: statistics.median(stack.rates) for fsync, stack in stacks.items()}
    ratio = medians["always"] / medians["everysec"]
    result: dict[str, Any] = {
        "requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds,
        "submits_per_second": {fsync: [round(r, 1) for r in stack.rates] for fsync, stack in stacks.items()},
        "median": {fsync: round(m, 1) for fsync, m in medians.items()},
        "ratio_always_everysec": round(ratio, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"POST /v1/jobs, {args.requests} per round, concurrency {args.concurrency}, cache off, unique texts")
    print(f"{'appendfsync':<12} " + " ".join(f"{'round ' + str(i + 1):>9}" for i in range(args.rounds))
          + f" {'median':>9}")
    for fsync, stack in stacks.items():
        print(f"{fsync:<12} " + " ".join(f"{r:>9.0f}" for r in stack.rates) + f" {medians[fsync]:>9.0f}")
    print(f"ratio always/everysec: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A benchmark's own tts-batch stack: ``scripts/run_stack.py`` (what ``make up`` runs) on free ports.

Shared by ``scripts/bench_speech.py`` and ``scripts/bench_memory.py``. :class:`BenchStack`
runs ``run_stack.py --only web,worker`` (supervisord, the embedded Redis, gunicorn as the
Procfile runs it and the Celery worker) with its own ``TTS_DATA_DIR`` under ``var/``, a
free Redis port and a free API port, and ``TTS_WORKER_CONCURRENCY`` worker processes. The
Kokoro model is taken from the usual model cache (``var/models`` unless
``TTS_MODEL_CACHE_DIR`` says otherwise), so it is not assembled again for every run.

:meth:`BenchStack.stop` Ctrl-Cs run_stack (supervisord stops the processes, then Redis) and
waits; if that does not end it, the whole process group is killed. If the benchmark itself is
killed, run_stack gets SIGTERM (``parent_death_signal``) and stops the stack the same way. Use it as a context
manager so a failure or a Ctrl-C in the benchmark still stops everything.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil
import requests

from scripts.embedded_redis import find_free_port, parent_death_signal, wait_for_redis
from settings import child_environment, get_settings

__all__ = ["BenchStack", "add_setting_option", "setting_pair", "worker_children"]

log = logging.getLogger(__name__)

RUN_STACK = ROOT / "scripts" / "run_stack.py"
#: Seconds the stack may take until its API answers and its workers have started.
START_TIMEOUT = 120.0
#: Seconds run_stack may take to stop after Ctrl-C before its process group is killed.
STOP_TIMEOUT = 30.0


def setting_pair(text: str) -> tuple[str, str]:
    """One ``--setting TTS_NAME=VALUE`` (an argparse type): (name, value); only ``TTS_*`` names."""
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("TTS_"):
        raise argparse.ArgumentTypeError(f"wants TTS_NAME=VALUE, not {text!r}")
    return name, value


def add_setting_option(parser: argparse.ArgumentParser, applies_to: str) -> None:
    """The benchmarks' ``--setting`` option (repeatable); ``dict(args.setting)`` is the environment it gives."""
    parser.add_argument("--setting", action="append", default=[], type=setting_pair, metavar="TTS_NAME=VALUE",
                        help=f"a setting of {applies_to}, e.g. TTS_ONNX_THREADS=1 (repeatable)")


def worker_children(root_pid: int) -> list[psutil.Process]:
    """The Celery prefork children under ``root_pid``: celery worker processes whose parent is one too."""
    try:
        tree = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []

    def is_worker(proc: psutil.Process) -> bool:
        try:
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False
        return "celery" in " ".join(cmd) and "worker" in cmd

    workers = [p for p in tree if is_worker(p)]
    pids = {p.pid for p in workers}
    return sorted((p for p in workers if p.ppid() in pids), key=lambda p: p.pid)


class BenchStack:
    """``run_stack.py --only web,worker`` with ``concurrency`` worker processes, on free ports."""

    def __init__(self, name: str, concurrency: int = 2, **env: str) -> None:
        self.name = name
        self.concurrency = concurrency
        self.data_dir = ROOT / "var" / f"bench-{name}"
        self.redis_port = find_free_port()
        self.api_port = find_free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.extra_env = env
        #: The stack's environment (its settings), once started.
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """run_stack's console output (every process's log lines)."""
        return self.data_dir / "stack.log"

    def start(self) -> Self:
        """Launch it; return once Redis answers, the API serves and every worker child is up."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)
        env = child_environment(
            inherit_settings=False,
            TTS_DATA_DIR=str(self.data_dir),
            TTS_MODEL_CACHE_DIR=str(get_settings().model_cache.resolve()),
            TTS_EMBEDDED_REDIS_PORT=str(self.redis_port),
            TTS_API_PORT=str(self.api_port),
            TTS_WORKER_CONCURRENCY=str(self.concurrency),
            TTS_LOG_LEVEL="WARNING",
            **self.extra_env,
        )
        self.env = env
        log.info("starting the %s stack: API %s, Redis %s, %d worker process(es); log in %s",
                 self.name, self.url, self.redis_url, self.concurrency, self.log_path)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(RUN_STACK), "--only", "web,worker"], cwd=str(ROOT),
                                         env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True,
                                         preexec_fn=parent_death_signal())  # a killed benchmark stops it too
        deadline = time.monotonic() + START_TIMEOUT
        if not wait_for_redis(self.redis_url, timeout=START_TIMEOUT):
            raise RuntimeError(f"the {self.name} stack's Redis did not answer; see {self.log_path}")
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} stack did not start (API and {self.concurrency} worker "
                                   f"children); see {self.log_path}")
            if self._api_up() and len(worker_children(self.proc.pid)) >= self.concurrency:
                return self
            time.sleep(0.3)

    def _api_up(self) -> bool:
        try:
            return requests.get(self.url + "/v1/voices", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def children(self) -> list[psutil.Process]:
        """The worker's prefork children (the processes that synthesize)."""
        return worker_children(self.proc.pid) if self.proc is not None else []

    def stop(self) -> None:
        """Ctrl-C run_stack and wait; kill its process group if it does not end in time."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("the %s stack did not stop in %.0f s; killing its process group", self.name,
                            STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session (normally nothing)
        proc.wait()

    def cleanup(self, keep: bool = False) -> None:
        """Stop, and remove the data folder unless ``keep``."""
        self.stop()
        if not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

"""``scripts/run_stack.py`` (``make up``) starts Redis first, then the Procfile, and leaves nothing behind.

The real Procfile's processes need the app packages, so these tests drive the launcher with a
temporary Procfile of dummy processes (``sleep``, ``python -c``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from scripts.embedded_redis import EmbeddedRedis, find_free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RUN_STACK = ROOT / "scripts" / "run_stack.py"
SLEEP = "sleep 987654"  # a duration no other process on the machine uses
PINGER = (
    "python -c \"import os, redis; redis.Redis.from_url(os.environ['REDIS_URL']).ping(); "
    "print('ping ok', os.environ['REDIS_URL'])\" && exec " + SLEEP
)


class Stack:
    """A running launcher, its output file and what it was started with."""

    def __init__(self, proc: subprocess.Popen[bytes], output: Path, port: int | None) -> None:
        self.proc = proc
        self.output = output
        self.port = port

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def descendants(self) -> list[psutil.Process]:
        """Live descendants; a short-lived helper that already exited (a zombie not yet reaped,
        such as the wait-for-Redis step before it execs) is not one of them."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        live = []
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.append(child)
            except psutil.NoSuchProcess:
                continue
        return live

    def wait_for(self, needle: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                pytest.fail(f"launcher exited (rc={self.proc.returncode}) before {needle!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {needle!r} within {timeout} s:\n{self.text()}")
            time.sleep(0.05)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("TTS_")}
    env.update(TTS_DATA_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _launch(tmp_path: Path, procfile_text: str, env: dict[str, str], port: int | None) -> Stack:
    procfile = tmp_path / "Procfile"
    procfile.write_text(procfile_text)
    output = tmp_path / "stack.log"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(RUN_STACK), "--procfile", str(procfile)],
            cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal job
        )
    return Stack(proc, output, port)


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """Launchers started by a test; any still alive at the end are killed with their groups."""
    started: list[Stack] = []
    yield started
    for stack in started:
        leftovers = stack.descendants()
        if stack.proc.poll() is None:
            os.killpg(stack.proc.pid, signal.SIGKILL)
            stack.proc.wait()
        for p in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())}")
        except psutil.Error:
            out.append(str(p.pid))
    return out


def _stray(marker: str) -> list[psutil.Process]:
    """Any live process on the machine whose command line mentions ``marker``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _assert_all_gone(stack: Stack, snapshot: list[psutil.Process], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(snapshot) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(snapshot), f"left behind: {_describe(_alive(snapshot))}\n{stack.text()}"
    strays = _stray(SLEEP) + (_stray(f"127.0.0.1:{stack.port}") if stack.port else [])
    assert not strays, f"left behind: {_describe(strays)}\n{stack.text()}"

def _cmdline(process: psutil.Process) -> list[str]:
    """A process's command line, or nothing if it exited since the snapshot."""
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


@pytest.mark.parametrize(
    ("signum", "to_group", "expected_rc"),
    [
        (signal.SIGINT, True, 130),  # Ctrl-C in a terminal: the whole foreground group
        (signal.SIGINT, False, 130),  # only the launcher: it must pass the stop on itself
        (signal.SIGTERM, False, 143),
    ],
    ids=["ctrl-c", "sigint-launcher", "sigterm-launcher"],
)
def test_signal_stops_embedded_redis_and_all_processes(
    tmp_path: Path, stacks: list[Stack], signum: int, to_group: bool, expected_rc: int
) -> None:
    port = find_free_port()
    stack = _launch(tmp_path, f"sleeper: {SLEEP}\npinger: {PINGER}\n",
                    _env(tmp_path, TTS_EMBEDDED_REDIS_PORT=str(port)), port)
    stacks.append(stack)

    url = f"redis://127.0.0.1:{port}/0"
    # The pinger starts only after the embedded Redis answers, and gets REDIS_URL from the launcher.
    stack.wait_for(f"ping ok {url}")
    assert redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    text = stack.text()
    assert f"Redis  {url}" in text and "embedded" in text
    assert "redis started" in text

    snapshot = stack.descendants()
    names = " ".join(" ".join(_cmdline(p)) for p in snapshot)
    assert "redis-server" in names and SLEEP in names, names

    started = time.monotonic()
    if to_group:
        os.killpg(stack.proc.pid, signum)
    else:
        stack.proc.send_signal(signum)
    rc = stack.proc.wait(timeout=10)
    assert time.monotonic() - started < 6, stack.text()
    assert rc == expected_rc, stack.text()
    _assert_all_gone(stack, snapshot)
    assert (tmp_path / "var" / "redis" / "appendonly.aof").exists()
    assert f"redis-server on port {port} stopped" in stack.text()  # graceful, AOF flushed


def test_process_ignoring_sigterm_is_killed(tmp_path: Path, stacks: list[Stack]) -> None:
    port = find_free_port()
    stack = _launch(tmp_path, f"stubborn: trap '' TERM; echo trapped; {SLEEP}\nsleeper: {SLEEP}\n",
                    _env(tmp_path, TTS_EMBEDDED_REDIS_PORT=str(port)), port)
    stacks.append(stack)
    stack.wait_for("trapped")
    snapshot = stack.descendants()
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(timeout=15) == 130, stack.text()  # honcho escalates to SIGKILL after 5 s
    assert "SIGKILL" in stack.text()
    _assert_all_gone(stack, snapshot)


def test_external_redis_url_starts_no_redis(tmp_path: Path, stacks: list[Stack]) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "external") as external:
        url = external.url_for_db(2)
        stack = _launch(tmp_path, f"pinger: {PINGER}\n", _env(tmp_path, REDIS_URL=url), None)
        stacks.append(stack)
        stack.wait_for(f"ping ok {url}")
        assert "redis started" not in stack.text()
        assert "redis-server" not in " ".join(" ".join(_cmdline(p)) for p in stack.descendants())
        snapshot = stack.descendants()
        stack.proc.send_signal(signal.SIGINT)
        assert stack.proc.wait(timeout=10) == 130, stack.text()
        _assert_all_gone(stack, snapshot)
        assert external.is_running(), "the launcher must not stop a Redis it did not start"


def test_taken_port_fails_with_a_clear_message(tmp_path: Path, stacks: list[Stack]) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "other") as other:
        stack = _launch(tmp_path, f"sleeper: {SLEEP}\n",
                        _env(tmp_path, TTS_EMBEDDED_REDIS_PORT=str(other.port)), other.port)
        stacks.append(stack)
        assert stack.proc.wait(timeout=10) == 2
        text = stack.text()
        assert f"port {other.port}" in text and "taken" in text
        assert f"REDIS_URL=redis://127.0.0.1:{other.port}/0" in text  # a Redis answers: say how to use it
        assert "TTS_EMBEDDED_REDIS_PORT" in text
        assert not _stray(SLEEP)

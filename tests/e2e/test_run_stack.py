"""``scripts/run_stack.py`` (``make up``) starts Redis first, then the Procfile, heals, and leaves nothing behind.

Most tests drive the launcher with a temporary Procfile of dummy processes (``sleep``,
``python -c``); the healing tests run the project's own Procfile (web and worker, with the
real voices) and kill its embedded redis-server or its worker under it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest
import redis
import requests

from monitoring.workers import WorkerRegistry
from scripts.embedded_redis import EmbeddedRedis, find_free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RUN_STACK = ROOT / "scripts" / "run_stack.py"
#: A duration no other process on the machine uses, not even this test file run by someone else at the same time.
SLEEP = f"sleep {9_000_000 + os.getpid()}"
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


def _launch(tmp_path: Path, procfile_text: str | None, env: dict[str, str], port: int | None,
            args: Sequence[str] = ()) -> Stack:
    """Start run_stack.py with a Procfile of ``procfile_text`` (None: the project's own)."""
    if procfile_text is None:
        procfile = ROOT / "Procfile"
    else:
        procfile = tmp_path / "Procfile"
        procfile.write_text(procfile_text)
    output = tmp_path / "stack.log"
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(RUN_STACK), "--procfile", str(procfile), *args],
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
    assert "spawned: 'redis'" in text  # supervisord's log, on the console with a prefix

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
    assert stack.proc.wait(timeout=15) == 130, stack.text()  # supervisord escalates to SIGKILL after 5 s
    assert "SIGKILL" in stack.text()
    _assert_all_gone(stack, snapshot)


def test_external_redis_url_starts_no_redis(tmp_path: Path, stacks: list[Stack]) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "external") as external:
        url = external.url_for_db(2)
        stack = _launch(tmp_path, f"pinger: {PINGER}\n", _env(tmp_path, REDIS_URL=url), None)
        stacks.append(stack)
        stack.wait_for(f"ping ok {url}")
        assert "spawned: 'redis'" not in stack.text()
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


def _stop(stack: Stack) -> None:
    snapshot = stack.descendants()
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(timeout=15) == 130, stack.text()
    _assert_all_gone(stack, snapshot)


def test_flower_password_is_made_once_kept_private_and_never_printed(tmp_path: Path, stacks: list[Stack]) -> None:
    port = find_free_port()
    # The flower process asks the same helper as the Procfile's flower line where its password is.
    procfile = f"flower: python -m scripts.flower_password --where && exec {SLEEP}\n"
    path = (tmp_path / "var" / "flower-password").resolve()
    assert not path.exists()

    first = _launch(tmp_path, procfile, _env(tmp_path, TTS_EMBEDDED_REDIS_PORT=str(port)), port)
    stacks.append(first)
    first.wait_for(f"| {path}\n")  # the flower process found the file made before it started
    password = path.read_text().strip()
    assert len(password) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    text = first.text()
    assert f"Flower  http://127.0.0.1:5555  (login admin, password in {path})" in text
    assert password not in text and "tts-batch)" not in text
    _stop(first)

    # The next start keeps it.
    second = _launch(tmp_path, procfile, _env(tmp_path, TTS_EMBEDDED_REDIS_PORT=str(port)), port)
    stacks.append(second)
    second.wait_for(f"| {path}\n")
    assert path.read_text().strip() == password and password not in second.text()
    _stop(second)

    # An explicit TTS_FLOWER_PASSWORD wins; the file is left as it is.
    third = _launch(tmp_path, procfile, _env(tmp_path, TTS_EMBEDDED_REDIS_PORT=str(port),
                                             TTS_FLOWER_PASSWORD="chosen-by-the-operator"), port)
    stacks.append(third)
    third.wait_for("| TTS_FLOWER_PASSWORD\n")
    assert "password in TTS_FLOWER_PASSWORD" in third.text() and "chosen-by-the-operator" not in third.text()
    assert path.read_text().strip() == password
    _stop(third)


# --- healing: the real web and worker under supervisord ------------------------------------------

#: Seconds a real stack (embedded Redis, gunicorn, a worker loading its voices) may take to be healthy.
REAL_START_TIMEOUT = 120.0


def _wait(probe: Callable[[], object], timeout: float, what: str, stack: Stack) -> object:
    """Poll ``probe()`` until it returns something true, failing with the stack's output at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if stack.proc.poll() is not None:
            pytest.fail(f"launcher exited (rc={stack.proc.returncode}) waiting for {what}:\n{stack.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s:\n{stack.text()[-20000:]}")
        time.sleep(0.2)


class RealStack:
    """The project's Procfile (web and worker) under a launcher, on free ports."""

    def __init__(self, tmp_path: Path, stacks: list[Stack]) -> None:
        self.redis_port = find_free_port()
        self.api = f"http://127.0.0.1:{find_free_port()}"
        env = _env(tmp_path, TTS_EMBEDDED_REDIS_PORT=str(self.redis_port),
                   TTS_API_PORT=self.api.rsplit(":", 1)[1], TTS_WORKER_CONCURRENCY="1")
        self.stack = _launch(tmp_path, None, env, self.redis_port, args=["--only", "web,worker"])
        stacks.append(self.stack)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.data_dir = tmp_path / "var" / "redis"
        _wait(self._healthy, REAL_START_TIMEOUT, "healthy /health (API, Redis and a worker)", self.stack)

    def _healthy(self) -> bool:
        try:
            return requests.get(self.api + "/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=2)

    def redis_pid(self) -> int | None:
        """The pid of the redis-server answering on the port (from INFO), or None while none answers."""
        client = self.client()
        try:
            return int(client.info("server")["process_id"])
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def workers(self) -> list[dict[str, object]]:
        client = self.client()
        try:
            return WorkerRegistry(client).list()
        except (redis.RedisError, OSError):
            return []
        finally:
            client.close()

    def submit(self, text: str) -> requests.Response | None:
        try:
            return requests.post(self.api + "/v1/jobs", timeout=10,
                                 json={"text": text, "voice": "heart", "format": "wav", "cache": False})
        except requests.RequestException:
            return None

    def run_job(self, text: str, timeout: float = 60.0) -> dict[str, object]:
        """Submit until accepted (202; 503 while Redis is away), then wait for the job to succeed."""
        seen: list[int] = []

        def accepted() -> str | None:
            r = self.submit(text)
            if r is None:
                return None
            seen.append(r.status_code)
            assert r.status_code in {202, 503}, r.text
            return r.json()["id"] if r.status_code == 202 else None

        job_id = _wait(accepted, timeout, "a 202 for a job submit", self.stack)

        def finished() -> dict[str, object] | None:
            job = requests.get(f"{self.api}/v1/jobs/{job_id}", timeout=10).json()
            return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

        job = _wait(finished, timeout, f"job {job_id} finished", self.stack)
        assert isinstance(job, dict) and job["status"] == "succeeded", job
        return job

    def stop(self) -> None:
        """Ctrl-C the launcher; every process is gone, the worker stopped before Redis."""
        snapshot = self.stack.descendants()
        self.stack.proc.send_signal(signal.SIGINT)
        assert self.stack.proc.wait(timeout=30) == 130, self.stack.text()
        _assert_all_gone(self.stack, snapshot)
        text = self.stack.text()
        assert text.index("stopped: worker") < text.index("stopped: redis"), text


def test_killed_redis_server_is_restarted_and_jobs_run_again(tmp_path: Path, stacks: list[Stack]) -> None:
    real = RealStack(tmp_path, stacks)
    real.run_job("Before Redis dies.")
    client = real.client()
    client.set("tts-test:before-kill", "kept")
    old_pid = real.redis_pid()
    assert old_pid is not None
    client.close()

    os.kill(old_pid, signal.SIGKILL)  # the server itself, not its launcher: a crash, no SHUTDOWN

    new_pid = _wait(lambda: (pid := real.redis_pid()) is not None and pid != old_pid and pid,
                    30, "a new redis-server answering PING on the same port", real.stack)
    assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE
    client = real.client()
    assert client.get("tts-test:before-kill") == b"kept"  # the AOF in the same data folder was loaded
    assert client.config_get("dir")["dir"] == str(real.data_dir.resolve())
    client.close()
    assert real.stack.proc.poll() is None  # healed without restarting run_stack
    assert "exited: redis" in real.stack.text()

    job = real.run_job("After Redis came back.")
    assert job["attempts"] == 1
    assert real.redis_pid() == new_pid
    real.stop()


def test_killed_worker_is_restarted(tmp_path: Path, stacks: list[Stack]) -> None:
    real = RealStack(tmp_path, stacks)
    (worker,) = _wait(real.workers, 30, "a worker heartbeat", real.stack)
    old_pid = int(worker["pid"])  # the worker's main process (the heartbeat is sent from it)
    old = psutil.Process(old_pid)
    assert "celery" in " ".join(old.cmdline()) and "supervisord" in " ".join(old.parent().cmdline())
    pool = old.children()

    os.kill(old_pid, signal.SIGKILL)

    def new_worker() -> dict[str, object] | None:
        live = [w for w in real.workers() if int(w["pid"]) not in {0, old_pid} and psutil.pid_exists(int(w["pid"]))]
        return live[0] if live else None

    fresh = _wait(new_worker, REAL_START_TIMEOUT, "a heartbeat from a new worker process", real.stack)
    assert isinstance(fresh, dict)
    assert not _alive(pool), _describe(_alive(pool))  # the old pool went with its main process
    assert real.stack.proc.poll() is None
    assert "exited: worker" in real.stack.text()
    real.run_job("The new worker runs this.")
    real.stop()

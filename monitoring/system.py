"""A psutil snapshot of the machine and this process, for ``/metrics/json`` and the dashboard.

CPU percentages are measured since the previous call in this process (psutil's
non-blocking mode); the first call in a process primes the counters and reports 0.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = ["snapshot"]

logger = logging.getLogger(__name__)

_process: psutil.Process | None = None


def _this_process() -> psutil.Process:
    global _process
    if _process is None or _process.pid != os.getpid():  # re-create after a fork
        _process = psutil.Process()
        _process.cpu_percent(None)
    return _process


def _section(name: str, build: Any) -> dict[str, Any]:
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - a snapshot never raises
        logger.debug("system snapshot: %s unavailable: %s", name, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}


def snapshot(disk_path: str | Path = ".") -> dict[str, Any]:
    """CPU, memory, this process and the disk holding ``disk_path``. Never raises.

    ``{"time", "cpu": {"percent", "count", "load_average"}, "memory": {"total_bytes",
    "available_bytes", "used_bytes", "percent"}, "process": {"pid", "rss_bytes", "cpu_percent",
    "threads", "uptime_seconds"}, "disk": {"path", "total_bytes", "used_bytes", "free_bytes",
    "percent"}}``; a section that cannot be read holds ``{"error": ...}`` instead.
    """

    def cpu() -> dict[str, Any]:
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except (OSError, AttributeError):
            load = None
        return {
            "percent": psutil.cpu_percent(interval=None),
            "count": psutil.cpu_count() or 1,
            "load_average": load,
        }

    def memory() -> dict[str, Any]:
        mem = psutil.virtual_memory()
        return {
            "total_bytes": mem.total,
            "available_bytes": mem.available,
            "used_bytes": mem.total - mem.available,
            "percent": mem.percent,
        }

    def process() -> dict[str, Any]:
        proc = _this_process()
        with proc.oneshot():
            return {
                "pid": proc.pid,
                "rss_bytes": proc.memory_info().rss,
                "cpu_percent": proc.cpu_percent(None),
                "threads": proc.num_threads(),
                "uptime_seconds": round(max(0.0, time.time() - proc.create_time()), 1),
            }

    def disk() -> dict[str, Any]:
        target = Path(disk_path).resolve()
        while not target.exists() and target != target.parent:
            target = target.parent
        usage = psutil.disk_usage(str(target))
        return {
            "path": str(target),
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
            "percent": usage.percent,
        }

    return {
        "time": time.time(),
        "cpu": _section("cpu", cpu),
        "memory": _section("memory", memory),
        "process": _section("process", process),
        "disk": _section("disk", disk),
    }


# Prime the system-wide CPU counter so the first snapshot has a baseline.
_section("cpu", lambda: {"percent": psutil.cpu_percent(interval=None)})

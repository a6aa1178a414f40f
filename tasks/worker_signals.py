"""Worker life-cycle hooks: logging, per-child state, heartbeats, and failures that
the task itself never sees.

``task_failure`` fires in the worker's main process for a hard time limit (the child
was killed), which the task's own code cannot handle;
:func:`tasks.lifecycle.retry_after_time_limit` retries or dead-letters the job (or the
part of a fanned-out job) from here. A child killed outright (SIGKILL, OOM) is
requeued by ``task_reject_on_worker_lost`` and the next delivery counts the lost attempt.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from billiard.exceptions import WorkerLostError
from celery import signals
from celery.exceptions import TimeLimitExceeded
from celery.worker import state

import engine
from monitoring.logs import configure_logging
from monitoring.workers import WorkerRegistry
from settings import get_settings

from . import lifecycle
from .publish import SYNTHESIZE_PART_TASK, SYNTHESIZE_TASK
from .reconciler import start_reconciler
from .runtime import get_runtime, reset_runtime

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0
_heartbeat_stop = threading.Event()
_reconciler_stop: list[threading.Event] = []

_Receiver = TypeVar("_Receiver", bound=Callable[..., None])


def _receiver(signal: Any) -> Callable[[_Receiver], _Receiver]:
    """``@signal.connect``, typed: Celery's decorator has no annotations, so it would make the receiver Any.

    ``Signal.connect(fn)`` registers ``fn`` (weakly, as the decorator does) and returns it unchanged.
    """
    def connect(receiver: _Receiver) -> _Receiver:
        signal.connect(receiver)
        return receiver
    return connect


@_receiver(signals.setup_logging)
def _setup_logging(**_: Any) -> None:
    configure_logging(get_settings(), component="worker")


@_receiver(signals.worker_process_init)
def _child_init(**_: Any) -> None:
    # Fresh Redis connections and models in each prefork child.
    rt = reset_runtime()
    try:
        # A short synthesis loads the model and the G2P lexicons before the first job arrives.
        engine.synthesize("Ready.", engine.SynthesisOptions(voice=rt.settings.default_voice, format="pcm"),
                          rt.catalog)
    except Exception as exc:  # noqa: BLE001 - a bad default voice must not stop the worker
        log.warning("could not preload voice %s: %s", rt.settings.default_voice, exc)


_hostname: dict[str, str] = {}


def _queue_of(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or "unknown")


@_receiver(signals.task_success)
def _count_success(sender: Any = None, **_: Any) -> None:
    get_runtime().metrics.task_succeeded(getattr(sender, "name", "?"), _queue_of(getattr(sender, "request", None)))


@_receiver(signals.task_retry)
def _count_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    get_runtime().metrics.task_retried(getattr(sender, "name", "?"), _queue_of(request))


@_receiver(signals.task_failure)
def _count_failure(sender: Any = None, **_: Any) -> None:
    get_runtime().metrics.task_failed(getattr(sender, "name", "?"), _queue_of(getattr(sender, "request", None)))


@_receiver(signals.worker_ready)
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    hostname = getattr(sender, "hostname", None) or "worker"
    _hostname["name"] = hostname
    concurrency = get_settings().concurrency

    def beat() -> None:
        registry = WorkerRegistry(get_runtime().redis)
        while not _heartbeat_stop.is_set():
            try:
                registry.heartbeat(hostname, busy=len(state.active_requests), concurrency=concurrency)
            except Exception as exc:  # noqa: BLE001 - monitoring must never take the worker down
                log.debug("heartbeat failed: %s", exc)
            _heartbeat_stop.wait(HEARTBEAT_SECONDS)

    threading.Thread(target=beat, name="tts-heartbeat", daemon=True).start()
    # Every worker's main process sweeps for lost jobs; a Redis lock lets one sweep per interval.
    _reconciler_stop.append(start_reconciler(get_runtime(), holder=hostname))


@_receiver(signals.worker_shutdown)
def _stop_heartbeat(**_: Any) -> None:
    _heartbeat_stop.set()
    for stop in _reconciler_stop:
        stop.set()
    if "name" in _hostname:
        try:
            WorkerRegistry(get_runtime().redis).remove(_hostname["name"])
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.debug("could not remove heartbeat: %s", exc)


@_receiver(signals.task_failure)
def _task_failure(sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any) -> None:
    """A synthesize or part task whose child was killed (time limit, lost worker): the lifecycle sends it again."""
    name = getattr(sender, "name", None)
    if not args:
        return
    if name == SYNTHESIZE_TASK and isinstance(exception, (TimeLimitExceeded, WorkerLostError)):
        lifecycle.retry_after_time_limit(get_runtime(), str(args[0]), exception)
    elif name == SYNTHESIZE_PART_TASK and isinstance(exception, TimeLimitExceeded) and len(args) >= 2:
        lifecycle.retry_after_time_limit(get_runtime(), str(args[0]), exception, part=int(args[1]))

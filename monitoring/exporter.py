"""The standalone Prometheus exporter: ``python -m monitoring.exporter`` (Procfile ``exporter``).

Serves ``/metrics`` on ``TTS_EXPORTER_HOST:TTS_EXPORTER_PORT`` (127.0.0.1:9808 by default),
read from Redis on each scrape by :mod:`monitoring.prometheus`. ``REDIS_URL`` names the Redis;
when it is empty the embedded Redis of ``make up`` is assumed
(``redis://127.0.0.1:{TTS_EMBEDDED_REDIS_PORT}/0``).

Redis calls time out after two seconds and are not retried, so a scrape never hangs: with
Redis down it still answers, with ``tts_redis_up 0``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from wsgiref.simple_server import WSGIRequestHandler, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from redis.backoff import NoBackoff
from redis.retry import Retry

from monitoring import system
from monitoring.history import MetricsHistory, take_sample
from monitoring.logs import configure_logging
from monitoring.prometheus import build_registry
from monitoring.queues import broker_queue_lengths, discover_queues
from monitoring.recorder import MetricsRecorder
from settings import Settings, get_settings

__all__ = ["connect", "default_queues", "main", "make_app", "redacted_url", "serve", "start_sampler"]

logger = logging.getLogger(__name__)

#: Seconds any one Redis call of a scrape may take.
REDIS_TIMEOUT = 2.0
#: Queues reported even when nothing has declared them yet (besides ``TTS_QUEUE``, single
#: jobs): ``bulk`` (batch items and fan-out parts) and ``webhooks``. Plain names, as
#: ``monitoring`` imports no Celery app; ``tests/unit/test_monitoring_queues.py`` checks
#: them against ``tasks.celery_app.QUEUES``.
EXTRA_QUEUES: tuple[str, ...] = ("bulk", "webhooks")

StartResponse = Callable[..., Any]


def redacted_url(url: str) -> str:
    """``url`` without its user name and password, for logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def connect(url: str, timeout: float = REDIS_TIMEOUT) -> redis.Redis:
    """A Redis client whose every call gives up after ``timeout`` seconds, without retries."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def default_queues(settings: Settings, extra: Iterable[str] = ()) -> list[str]:
    """The queues always reported: ``TTS_QUEUE``, the bulk and webhook queues and any ``extra``."""
    return list(dict.fromkeys([settings.queue, *EXTRA_QUEUES, *extra]))


def make_app(registry: CollectorRegistry) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app: ``/metrics`` (the registry), ``/healthz`` and an index page at ``/``."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/") or "/"
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/":
            body = b'<html><body><h1>tts-batch exporter</h1><a href="/metrics">/metrics</a></body></html>\n'
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return app


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log instead of stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):  # format only a line that is logged, as before
            logger.debug("exporter %s %s", self.address_string(), format % args)


def serve(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """Start serving ``registry`` on ``host:port`` in a daemon thread (port 0: pick a free one)."""
    server = make_server(
        host, port, make_app(registry), server_class=ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="exporter-http", daemon=True)
    thread.start()
    return server, thread


def _parse_args(argv: Sequence[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring.exporter", description="Prometheus exporter for tts-batch."
    )
    parser.add_argument("--host", default=settings.exporter_host, help="address to bind")
    parser.add_argument("--port", type=int, default=settings.exporter_port, help="port to bind")
    parser.add_argument("--redis-url", default=settings.effective_redis_url, help="Redis to read")
    parser.add_argument(
        "--queue", action="append", default=[], help="a queue to report even before it exists"
    )
    parser.add_argument(
        "--no-discover", action="store_true", help="report only the given queues, not all declared"
    )
    parser.add_argument(
        "--no-history", action="store_true", help="do not store dashboard history samples"
    )
    return parser.parse_args(argv)


def start_sampler(
    client: redis.Redis, settings: Settings, queues: Sequence[str], discover: bool, stop: threading.Event
) -> threading.Thread:
    """A daemon thread storing a history sample every ``TTS_METRICS_SAMPLE_INTERVAL`` seconds
    (one per interval across all exporters), until ``stop`` is set."""
    history = MetricsHistory(client, max_samples=settings.metrics_history_max)
    recorder = MetricsRecorder(client)
    interval = max(1, settings.metrics_sample_interval)

    def build() -> dict[str, Any]:
        names = list(queues) + (discover_queues(client) if discover and not settings.broker_is_amqp else [])
        return take_sample(recorder, broker_queue_lengths(settings, client, names), system.snapshot(settings.data_dir))

    def loop() -> None:
        while not stop.is_set():
            history.record_if_due(build, interval)
            stop.wait(interval - (time.time() % interval) + 0.05)

    thread = threading.Thread(target=loop, name="exporter-history", daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter until SIGTERM or SIGINT."""
    settings = get_settings()
    configure_logging(settings, "exporter")
    args = _parse_args(argv, settings)
    client = connect(args.redis_url)
    cache_client = connect(settings.cache_url) if settings.cache_url else None
    queues = default_queues(settings, args.queue)
    registry = build_registry(client, queues, cache_client=cache_client, discover=not args.no_discover,
                              settings=settings)
    try:
        server, thread = serve(registry, args.host, args.port)
    except OSError as exc:
        logger.error("exporter cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    stop = threading.Event()
    if not args.no_history:
        start_sampler(client, settings, queues, not args.no_discover, stop)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("exporter stopping on signal %d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    logger.info(
        "exporter serving http://%s:%d/metrics from %s",
        args.host, server.server_port, redacted_url(args.redis_url),
    )
    while not stop.wait(1.0):
        if not thread.is_alive():
            logger.error("exporter HTTP thread died")
            return 1
    server.shutdown()
    server.server_close()
    client.close()
    if cache_client is not None:
        cache_client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

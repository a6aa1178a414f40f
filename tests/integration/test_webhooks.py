"""Webhook delivery against a real HTTP receiver started by the test, and the Celery tasks
(run eagerly here; a real worker runs them in the pipeline tests)."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from monitoring.recorder import MetricsRecorder
from monitoring.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    RETRY_WINDOW,
    SIGNATURE_HEADER,
    WebhookDeliveryError,
    build_payload,
    deliver,
    retry_schedule,
)
from scripts.embedded_redis import find_free_port
from settings import get_settings, reset_settings

pytestmark = pytest.mark.integration

SECRET = "webhook-test-secret"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server: answers the next status in ``statuses`` (then ``default``)."""

    statuses: list[int] = field(default_factory=list)
    default: int = 200
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def next_status(self) -> int:
        return self.statuses.pop(0) if self.statuses else self.default


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


def _serve(state: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            state.requests.append(Received(self.path, dict(self.headers.items()), body))
            if state.delay:
                time.sleep(state.delay)  # the thing under test: a slow receiver
            status = state.next_status()
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/hooks/secret-token"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def signature_ok(request: Received, secret: str = SECRET) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(request.headers.get(SIGNATURE_HEADER, ""), expected)


# --- monitoring.webhooks.deliver -----------------------------------------------------------


def test_deliver_posts_signed_json(receiver: Receiver) -> None:
    payload = build_payload("job.failed", job_id="job-1", error="SynthesisError: bad", attempts=3,
                            correlation_id="req-1")
    assert deliver(receiver.url, payload, SECRET, timeout=5) == 200
    (request,) = receiver.requests
    assert request.path == "/hooks/secret-token"
    assert request.json == payload
    assert request.headers["Content-Type"].startswith("application/json")
    assert request.headers[EVENT_HEADER] == "job.failed"
    assert request.headers[DELIVERY_HEADER] == payload["id"]
    assert signature_ok(request)
    assert not signature_ok(request, "wrong-secret")


def test_deliver_without_secret_sends_no_signature(receiver: Receiver) -> None:
    deliver(receiver.url, build_payload("webhook.test"), "", timeout=5)
    (request,) = receiver.requests
    assert SIGNATURE_HEADER not in request.headers


def test_500_then_200(receiver: Receiver) -> None:
    receiver.statuses = [500]
    payload = build_payload("job.failed", job_id="job-2")
    with pytest.raises(WebhookDeliveryError) as info:
        deliver(receiver.url, payload, SECRET, timeout=5)
    assert info.value.status == 500
    assert "secret-token" not in str(info.value)  # URLs are redacted in errors
    assert deliver(receiver.url, payload, SECRET, timeout=5) == 200
    first, second = receiver.requests
    assert first.body == second.body
    assert first.headers[DELIVERY_HEADER] == second.headers[DELIVERY_HEADER] == payload["id"]
    assert signature_ok(second)


@pytest.mark.parametrize("status", [302, 404, 410, 503])
def test_non_2xx_is_an_error(receiver: Receiver, status: int) -> None:
    receiver.default = status
    with pytest.raises(WebhookDeliveryError) as info:
        deliver(receiver.url, build_payload("webhook.test"), SECRET, timeout=5)
    assert info.value.status == status
    assert len(receiver.requests) == 1  # a redirect is not followed


def test_down_receiver() -> None:
    url = f"http://127.0.0.1:{find_free_port()}/hook"
    started = time.monotonic()
    with pytest.raises(WebhookDeliveryError) as info:
        deliver(url, build_payload("job.failed", job_id="job-3"), SECRET, timeout=2)
    assert info.value.status is None
    assert time.monotonic() - started < 3


def test_slow_receiver_times_out(receiver: Receiver) -> None:
    receiver.delay = 3.0
    started = time.monotonic()
    with pytest.raises(WebhookDeliveryError):
        deliver(receiver.url, build_payload("webhook.test"), SECRET, timeout=0.5)
    assert time.monotonic() - started < 2.5


# --- tasks.webhooks --------------------------------------------------------------------------


@pytest.fixture
def task_env(redis_url: str, receiver: Receiver) -> Iterator[redis.Redis]:
    """Settings pointing at the test Redis and the receiver; Celery in eager mode.

    Eager exceptions are not propagated: with propagation on, Celery raises the ``Retry``
    of an eager task instead of running the retry.
    """
    from tasks.celery_app import celery_app
    from tasks.runtime import reset_runtime

    original = get_settings()
    reset_settings(original.replace(redis_url=redis_url, webhook_urls=(receiver.url,), webhook_secret=SECRET,
                                    webhook_timeout=2.0, alert_queue_length=2))
    reset_runtime()
    eager = (celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates)
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = False
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = eager
        reset_settings(original)
        reset_runtime()


def test_backoff_has_a_floor_and_the_task_covers_the_retry_window() -> None:
    from tasks.webhooks import (
        BACKOFF_BASE,
        BACKOFF_CAP,
        backoff_cap,
        backoff_seconds,
        deliver_webhook,
        delivery_attempts,
    )

    for retries in range(12):
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**retries)
        delays = [backoff_seconds(retries) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)  # equal jitter: never near zero
        assert max(delays) > ceiling * 0.75  # spread over the band, not a fixed delay
    settings = get_settings()
    assert settings.visibility_timeout > BACKOFF_CAP
    # The task as the worker registers it: its attempts' floors outlast 15 minutes of outage.
    attempts = deliver_webhook.max_retries + 1
    assert attempts == delivery_attempts(settings)
    assert retry_schedule(attempts, cap=backoff_cap(settings))[-1].min_elapsed >= RETRY_WINDOW


def test_deliver_webhook_task_retries_until_the_receiver_recovers(task_env: redis.Redis, receiver: Receiver) -> None:
    from tasks.webhooks import deliver_webhook

    receiver.statuses = [500, 503]
    payload = build_payload("job.failed", job_id="job-4", attempts=3)
    result = deliver_webhook.apply(args=[receiver.url, payload])
    assert result.get() == 200
    assert len(receiver.requests) == 3
    assert {r.headers[DELIVERY_HEADER] for r in receiver.requests} == {payload["id"]}
    assert all(signature_ok(r) for r in receiver.requests)
    rec = MetricsRecorder(task_env)
    assert rec.counter_total("tts_webhook_deliveries_total", outcome="retried") == 2
    assert rec.counter_total("tts_webhook_deliveries_total", outcome="delivered", event="job.failed") == 1


def test_deliver_webhook_task_gives_up_after_max_attempts(task_env: redis.Redis, receiver: Receiver) -> None:
    from tasks.webhooks import deliver_webhook

    receiver.default = 500
    result = deliver_webhook.apply(args=[receiver.url, build_payload("job.failed", job_id="job-5")])
    assert result.state == "FAILURE"
    assert isinstance(result.result, WebhookDeliveryError) and result.result.status == 500
    from tasks.webhooks import delivery_attempts

    assert len(receiver.requests) == delivery_attempts(get_settings()) == deliver_webhook.max_retries + 1
    assert len(receiver.requests) >= get_settings().webhook_max_attempts
    rec = MetricsRecorder(task_env)
    assert rec.counter_total("tts_webhook_deliveries_total", outcome="failed") == 1


def test_a_worker_never_sends_an_unsigned_delivery(task_env: redis.Redis, receiver: Receiver) -> None:
    from tasks.webhooks import deliver_webhook

    # Settings built in code skip load_settings' check; the task checks again.
    reset_settings(get_settings().replace(webhook_secret=""))
    result = deliver_webhook.apply(args=[receiver.url, build_payload("job.failed", job_id="job-unsigned")])
    assert result.get() is None
    assert receiver.requests == []
    assert MetricsRecorder(task_env).counter_total("tts_webhook_deliveries_total", outcome="failed") == 1


def test_a_worker_with_webhook_urls_and_no_secret_refuses_to_start(redis_url: str, receiver: Receiver,
                                                                   tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_") and k != "REDIS_URL"}
    env.update({"REDIS_URL": redis_url, "TTS_DATA_DIR": str(tmp_path), "TTS_WEBHOOK_URLS": receiver.url,
                "PYTHONPATH": str(ROOT)})
    started = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", "webhooks", "-c", "1",
         "--without-gossip", "--without-mingle"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    assert "SettingsError" in output and "TTS_WEBHOOK_URLS" in output and "TTS_WEBHOOK_SECRET" in output, output
    assert receiver.requests == []
    client = redis.Redis.from_url(redis_url)
    try:
        assert not client.keys("tts:metrics:worker:*")  # it never came up
    finally:
        client.close()


def test_notify_sends_one_payload_to_every_url(task_env: redis.Redis, receiver: Receiver,
                                               second_receiver: Receiver) -> None:
    from monitoring.correlation import bind
    from tasks.webhooks import notify

    reset_settings(get_settings().replace(webhook_urls=(receiver.url, second_receiver.url)))
    with bind(correlation_id="req-42"):
        queued = notify("job.failed", job_id="job-6", error="SynthesisError: nope", attempts=3, voice="heart")
    assert queued == 2
    (a,), (b,) = receiver.requests, second_receiver.requests
    assert a.body == b.body
    payload = a.json
    assert (payload["event"], payload["job_id"], payload["attempts"]) == ("job.failed", "job-6", 3)
    assert payload["correlation_id"] == "req-42"
    assert payload["voice"] == "heart"
    assert "job-6" in payload["text"]
    assert signature_ok(a) and signature_ok(b)


def test_notify_without_urls_or_with_bad_input_never_raises(task_env: redis.Redis, receiver: Receiver) -> None:
    from tasks.webhooks import notify

    assert notify("job.exploded", job_id="x") == 0  # unknown event: logged, not raised
    reset_settings(get_settings().replace(webhook_urls=()))
    assert notify("job.failed", job_id="job-7") == 0
    assert receiver.requests == []


def test_evaluate_alerts_task_notifies_once(task_env: redis.Redis, receiver: Receiver) -> None:
    from tasks.webhooks import evaluate_alerts

    task_env.rpush("synthesis", b"1", b"2", b"3")
    assert evaluate_alerts.apply().get() == 1
    (request,) = receiver.requests
    payload = request.json
    assert (payload["event"], payload["queue"], payload["value"], payload["status"]) == (
        "alert.queue_length", "synthesis", 3, "firing"
    )
    assert signature_ok(request)
    assert evaluate_alerts.apply().get() == 0  # still firing: not repeated
    task_env.delete("synthesis")
    assert evaluate_alerts.apply().get() == 1
    assert receiver.requests[-1].json["status"] == "resolved"


# --- the whole pipeline: a real worker dead-letters a job and delivers the alert -----------


def test_permanent_failure_sends_exactly_one_signed_job_failed(make_stack, receiver: Receiver) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="permanent", TTS_WEBHOOK_URLS=receiver.url, TTS_WEBHOOK_SECRET=SECRET)
    r = stack.client.post("/v1/jobs", json={"text": "This one fails for good.", "voice": "heart"},
                          headers={"X-Request-ID": "req-hook-1"})
    job_id = r.get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "failed"
    stack.wait_until(lambda: len(receiver.requests) >= 1, 30, "the job.failed alert")
    # Nothing else can arrive once no task is queued, running or waiting for a retry.
    stack.wait_idle()
    failed = [req for req in receiver.requests if req.headers.get(EVENT_HEADER) == "job.failed"]
    assert len(failed) == 1, [req.headers.get(EVENT_HEADER) for req in receiver.requests]
    hook = failed[0]
    assert signature_ok(hook)
    body = hook.json
    assert body["event"] == "job.failed"
    assert body["job_id"] == job_id
    assert body["correlation_id"] == "req-hook-1"
    assert "injected permanent fault" in body["error"]
    assert body["attempts"] == 1
    assert body["text"]  # Slack-compatible
    assert stack.client.get("/v1/dlq").get_json()["total"] == 1


def test_alert_survives_a_receiver_that_is_down_for_a_while(make_stack, receiver: Receiver) -> None:
    receiver.statuses = [503, 503]
    stack = make_stack(TTS_FAULT_INJECTION="permanent", TTS_WEBHOOK_URLS=receiver.url, TTS_WEBHOOK_SECRET=SECRET)
    job_id = stack.client.post("/v1/jobs", json={"text": "Fails while the receiver is down.",
                                                 "voice": "heart"}).get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "failed"
    # Two 503s, then the default 200 on the third try.
    stack.wait_until(lambda: len(receiver.requests) >= 3, 90, "three deliveries of the alert")
    stack.wait_idle()  # the third answer was a 200: no retry is left that could send a fourth
    deliveries = {req.headers.get(DELIVERY_HEADER) for req in receiver.requests}
    assert len(receiver.requests) == 3
    assert len(deliveries) == 1  # the same delivery id on every retry


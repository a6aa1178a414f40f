"""Per-job and per-batch callbacks on a real stack (real Redis, real Celery workers) against real
HTTP receivers the test starts on 127.0.0.1, and the SSRF guard's connection against a local TLS server.

The stacks that deliver to 127.0.0.1 allow exactly that address (``TTS_CALLBACK_ALLOWED_NETWORKS``);
the others show that without it nothing reaches a loopback receiver.
"""
from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Hit, Receiver, missing, serve_receiver

from monitoring.recorder import CALLBACK_DELIVERIES, MetricsRecorder
from scripts.embedded_redis import find_free_port
from settings import Settings
from tasks import outbound
from tasks.callbacks import send
from tasks.exceptions import CallbackDeliveryFailed

pytestmark = pytest.mark.integration

SECRET = "callback-test-secret"
ALLOW_LOOPBACK = {"TTS_CALLBACK_ALLOWED_NETWORKS": "127.0.0.1/32", "TTS_WEBHOOK_SECRET": SECRET}


@pytest.fixture
def elsewhere() -> Iterator[Receiver]:
    """A second receiver: where a redirect points."""
    yield from serve_receiver(Receiver())


def signed(hit: Hit, secret: str = SECRET) -> bool:
    """The documented signature check, with this module's secret unless told otherwise."""
    return hit.signed_with(secret)


def text() -> str:
    """A sentence of its own, so no earlier job's cached audio answers it."""
    return f"Callback check number {uuid.uuid4().int % 100000}, read aloud."


def callback_of(stack: Any, job_id: str) -> dict[str, Any]:
    return stack.client.get(f"/v1/jobs/{job_id}").get_json().get("callback") or {}


def deliveries(stack: Any, outcome: str) -> float:
    """``tts_callback_deliveries_total`` of one outcome, as the workers recorded it."""
    return MetricsRecorder(stack.redis).counter_total(CALLBACK_DELIVERIES, outcome=outcome)


def wait_callback(stack: Any, job_id: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
    return stack.wait_until(lambda: (c := callback_of(stack, job_id)).get("status") == status and c,
                            timeout, f"job {job_id}'s callback {status}")


# --- a stack that may reach 127.0.0.1 -------------------------------------------------------------
def test_a_succeeded_job_gets_exactly_one_signed_callback(make_stack, receiver: Receiver) -> None:
    stack = make_stack(**ALLOW_LOOPBACK)
    spoken = text()
    r = stack.client.post("/v1/jobs", json={"text": spoken, "voice": "heart",
                                            "callback_url": receiver.url("/hook?token=abc")},
                          headers={"X-Request-ID": "req-callback-1"})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    assert r.get_json()["callback"] == {"url": receiver.url("/hook?…"), "status": "pending", "attempts": 0,
                                        "last_error": None}
    assert stack.wait_for(job_id)["status"] == "succeeded"
    state = wait_callback(stack, job_id, "delivered")
    stack.wait_idle()  # nothing queued or waiting for a retry: no second POST can come
    (hit,) = receiver.posts()
    assert signed(hit) and not signed(hit, "another-secret")
    assert hit.path == "/hook?token=abc"
    assert hit.headers["X-TTS-Event"] == "job.succeeded"
    assert hit.headers["X-TTS-Delivery"] == state["delivery_id"] == hit.json["id"]
    assert hit.headers["Host"] == f"127.0.0.1:{receiver.port}"
    body = hit.json
    assert body["event"] == "job.succeeded" and body["correlation_id"] == "req-callback-1"
    assert body["job"]["id"] == job_id and body["job"]["status"] == "succeeded"
    assert body["job"]["tenant"] == "default"
    assert body["job"]["links"] == {"self": f"/v1/jobs/{job_id}", "audio": f"/v1/jobs/{job_id}/audio"}
    assert spoken.encode() not in hit.body and b"Callback check" not in hit.body  # never the text
    assert state["attempts"] == 1 and state["last_error"] is None and state["event"] == "job.succeeded"
    assert deliveries(stack, "delivered") == 1 and deliveries(stack, "retried") == 0


def test_a_job_that_fails_for_good_gets_exactly_one_callback(make_stack, receiver: Receiver) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="permanent", **ALLOW_LOOPBACK)
    job_id = stack.client.post("/v1/jobs", json={"text": text(), "voice": "heart",
                                                 "callback_url": receiver.url()}).get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "failed"
    wait_callback(stack, job_id, "delivered")
    stack.wait_idle()
    (hit,) = receiver.posts()
    assert signed(hit)
    assert hit.json["event"] == "job.failed"
    shown = stack.client.get(f"/v1/jobs/{job_id}").get_json()
    assert shown["status"] == "failed" and shown["callback"]["status"] == "delivered"
    assert hit.json["job"]["error"] == {"code": shown["error"]["code"], "type": "EngineError"}
    assert "injected" not in hit.body.decode()  # codes only, no message


def test_a_batch_gets_one_callback_when_it_finishes(make_stack, receiver: Receiver) -> None:
    stack = make_stack(**ALLOW_LOOPBACK)
    r = stack.client.post("/v1/batches", json={"inputs": [{"text": text()}, {"text": text()}, {"text": ""}],
                                               "defaults": {"voice": "heart"},
                                               "callback_url": receiver.url("/batch")})
    assert r.status_code == 202, r.get_json()
    batch_id = r.get_json()["id"]
    hits = stack.wait_until(lambda: receiver.posts("/batch"), 120, "the batch callback")
    stack.wait_idle()
    assert len(receiver.posts()) == 1  # the batch's, and none for its items (they gave no callback_url)
    (hit,) = hits
    assert signed(hit)
    body = hit.json
    assert body["event"] == "batch.finished" and hit.headers["X-TTS-Event"] == "batch.finished"
    assert body["batch"]["id"] == batch_id and body["batch"]["status"] == "partially_succeeded"
    assert body["batch"]["counts"] == {"total": 3, "queued": 0, "running": 0, "succeeded": 2, "failed": 1,
                                       "cancelled": 0}
    assert body["batch"]["links"]["result"] == f"/v1/batches/{batch_id}/result"

    def state() -> dict[str, Any]:
        return stack.client.get(f"/v1/batches/{batch_id}").get_json()["callback"]

    shown = stack.wait_until(lambda: (c := state())["status"] == "delivered" and c, 30, "the batch's callback state")
    assert shown["url"] == receiver.url("/batch") and shown["delivery_id"] == body["id"] and shown["attempts"] == 1


def test_a_redirect_is_not_followed_and_the_delivery_is_retried(make_stack, receiver: Receiver,
                                                                elsewhere: Receiver) -> None:
    receiver.location = elsewhere.url("/stolen")
    stack = make_stack(**ALLOW_LOOPBACK)
    job_id = stack.client.post("/v1/jobs", json={"text": text(), "voice": "heart",
                                                 "callback_url": receiver.url("/redirect")}).get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "succeeded"
    # the first retry waits 5 to 10 s (the operator webhooks' schedule)
    state = stack.wait_until(lambda: (c := callback_of(stack, job_id)).get("attempts", 0) >= 2 and c, 60,
                             "a second attempt")
    assert state["status"] == "pending" and state["next_attempt_at"]
    assert "HTTP 302" in state["last_error"] and "redirect" in state["last_error"]
    assert len(receiver.posts("/redirect")) >= 2
    assert {hit.headers["X-TTS-Delivery"] for hit in receiver.posts()} == {state["delivery_id"]}
    assert elsewhere.hits == []  # never followed
    assert deliveries(stack, "retried") >= 1 and deliveries(stack, "delivered") == 0
    assert stack.client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "succeeded"


def test_a_huge_answer_is_read_only_up_to_the_cap(make_stack, receiver: Receiver) -> None:
    stack = make_stack(TTS_CALLBACK_MAX_RESPONSE_BYTES="65536", **ALLOW_LOOPBACK)
    job_id = stack.client.post("/v1/jobs", json={"text": text(), "voice": "heart",
                                                 "callback_url": receiver.url("/huge")}).get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "succeeded"
    state = wait_callback(stack, job_id, "delivered")
    assert state["attempts"] == 1
    assert receiver.huge_done.wait(30)  # the worker hung up: the receiver's write failed
    # what it managed to send before that is the cap plus the sockets' buffers, not 2 GiB
    assert receiver.huge_sent < 64 * 1024**2, receiver.huge_sent


# --- a worker that may not reach 127.0.0.1 ------------------------------------------------------
def test_loopback_is_refused_at_submit_and_at_delivery_without_the_allow_list(make_stack,
                                                                              receiver: Receiver) -> None:
    # The API allows 127.0.0.1 (as if the allow list changed since), the worker does not.
    stack = make_stack(start=False, **ALLOW_LOOPBACK)
    stack.start_worker(TTS_CALLBACK_ALLOWED_NETWORKS="")
    for url in ("http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                "gopher://127.0.0.1:6379/", "http://user:pw@example.com/"):
        r = stack.client.post("/v1/jobs", json={"text": text(), "voice": "heart", "callback_url": url})
        assert r.status_code == 400, (url, r.get_json())
        error = r.get_json()["error"]
        assert error["param"] == "callback_url" and error["code"] == "callback_url_refused", error
    r = stack.client.post("/v1/batches", json={"inputs": [{"text": text()}], "callback_url": "http://10.0.0.1/"})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "callback_url"

    jobs = {}
    for name, url in (("literal", receiver.url()), ("name", receiver.url(host="localhost"))):
        r = stack.client.post("/v1/jobs", json={"text": text(), "voice": "heart", "callback_url": url})
        assert r.status_code == 202, r.get_json()  # a name is not resolved at submit
        jobs[name] = r.get_json()["id"]
    for name, job_id in jobs.items():
        assert stack.wait_for(job_id)["status"] == "succeeded"
        state = wait_callback(stack, job_id, "refused")
        assert state["attempts"] == 1 and "loopback" in state["last_error"], (name, state)
    assert "localhost resolves to 127.0.0.1" in callback_of(stack, jobs["name"])["last_error"]
    stack.wait_idle()  # a refusal is not retried
    assert receiver.hits == []


def test_without_the_allow_list_or_a_secret_a_submit_says_why(make_stack, receiver: Receiver) -> None:
    no_allow_list = make_stack(start=False, TTS_WEBHOOK_SECRET=SECRET)
    r = no_allow_list.client.post("/v1/jobs", json={"text": text(), "voice": "heart",
                                                    "callback_url": receiver.url()})
    assert r.status_code == 400 and r.get_json()["error"]["param"] == "callback_url"
    assert "127.0.0.1 is loopback" in r.get_json()["error"]["message"]
    assert no_allow_list.client.post("/v1/jobs", json={"text": text(), "voice": "heart",
                                                       "callback_url": receiver.url(host="localhost")}
                                     ).status_code == 202

    no_secret = make_stack(start=False, TTS_CALLBACK_ALLOWED_NETWORKS="127.0.0.1/32")
    for path, body in (("/v1/jobs", {"text": text(), "voice": "heart"}),
                       ("/v1/batches", {"inputs": [{"text": text()}]})):
        r = no_secret.client.post(path, json={**body, "callback_url": receiver.url()})
        assert r.status_code == 400, r.get_json()
        error = r.get_json()["error"]
        assert (error["code"], error["param"]) == ("callbacks_unavailable", "callback_url")
        assert "TTS_WEBHOOK_SECRET" in error["message"]
    assert no_secret.client.post("/v1/jobs", json={"text": text(), "voice": "heart"}).status_code == 202
    assert receiver.hits == []


# --- the guard's own connection, against local servers ---------------------------------------------
def settings_allowing_loopback(**changes: Any) -> Settings:
    return Settings(callback_allowed_networks=("127.0.0.1/32",), callback_timeout=3.0, **changes)


def test_send_returns_a_redirect_unfollowed_and_reads_a_capped_body(receiver: Receiver,
                                                                    elsewhere: Receiver) -> None:
    receiver.location = elsewhere.url("/stolen")
    with pytest.raises(CallbackDeliveryFailed) as info:
        send(receiver.url("/redirect"), {"event": "job.succeeded", "id": "d1"}, SECRET, settings_allowing_loopback())
    assert info.value.status == 302 and elsewhere.hits == []
    answer = outbound.post(receiver.url("/huge"), b"{}", {}, allowed=outbound.allowed_networks(["127.0.0.1/32"]),
                           max_response_bytes=100_000)
    assert answer.status == 200 and len(answer.body) == 100_000 and answer.truncated
    assert receiver.huge_done.wait(30) and receiver.huge_sent < 64 * 1024**2


@dataclass
class TlsServer:
    port: int
    sni: list[str | None]
    hosts: list[str]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[TlsServer, Path]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for ``callback.test``; yields it and the cert."""
    if shutil.which("openssl") is None:
        missing("openssl is not installed (Debian package `openssl`)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=callback.test", "-addext", "subjectAltName=DNS:callback.test", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    state = TlsServer(port=0, sni=[], hosts=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.hosts.append(self.headers.get("Host", ""))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: state.sni.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, cert
    finally:
        server.shutdown()
        server.server_close()


def test_tls_goes_to_the_checked_address_with_the_name_for_sni_host_and_certificate(tls_server) -> None:
    server, cert = tls_server
    answers = iter([["127.0.0.1"], ["10.66.0.1"], ["10.66.0.1"]])  # a rebinding DNS: a new answer each time
    looked_up: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return next(answers)

    allowed = outbound.allowed_networks(["127.0.0.1/32"])
    answer = outbound.post(f"https://callback.test:{server.port}/hook", b"{}", {}, allowed=allowed,
                           resolver=rebinding, ca_certs=str(cert), timeout=5)
    # Resolved once, checked, and the socket went to that address (10.66.0.1 would not answer at all)
    assert answer.status == 204 and answer.address == "127.0.0.1"
    assert looked_up == ["callback.test"]
    assert server.sni == ["callback.test"] and server.hosts == [f"callback.test:{server.port}"]
    # The next lookup answers a private address: refused, nothing sent
    with pytest.raises(outbound.CallbackRefused):
        outbound.post(f"https://callback.test:{server.port}/hook", b"{}", {}, allowed=allowed, resolver=rebinding,
                      ca_certs=str(cert))
    assert len(server.hosts) == 1


def test_tls_refuses_a_certificate_for_another_name(tls_server) -> None:
    server, cert = tls_server
    with pytest.raises(CallbackDeliveryFailed) as info:
        outbound.post(f"https://other.test:{server.port}/hook", b"{}", {},
                      allowed=outbound.allowed_networks(["127.0.0.1/32"]),
                      resolver=lambda host, port: ["127.0.0.1"], ca_certs=str(cert), timeout=5)
    assert "SSL" in str(info.value) or "certificate" in str(info.value).lower()
    assert server.hosts == []


def test_a_receiver_that_is_down_is_a_failure_to_retry() -> None:
    url = f"http://127.0.0.1:{find_free_port()}/hook"
    with pytest.raises(CallbackDeliveryFailed):
        send(url, {"event": "job.succeeded", "id": "d2"}, SECRET, settings_allowing_loopback())

"""Live streams cannot stop the API.

``/api/metrics/stream`` (server-sent events) holds a server thread for as long as it runs.
gunicorn's gthread workers have a fixed number of threads (the Procfile: 2 processes x 8),
so every API process lets at most ``TTS_STREAM_MAX_CLIENTS`` streams run at once and answers
the next ones 429 ``too_many_streams`` with ``Retry-After``; a stream ends after
``TTS_STREAM_MAX_SECONDS`` (the client reconnects after the ``retry:`` the stream sent),
and its slot comes back when it ends or its client goes away. The streamed batch zip
(``/v1/batches/<id>/result``) has its own, smaller cap (``TTS_BATCH_STREAM_MAX_CLIENTS``).

The main test runs the Procfile's own gunicorn command line against 64 stream clients and
checks that submits and liveness probes still answer within a second.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Concurrent stream clients of the main test: four times the Procfile's 2 x 8 threads.
CLIENTS = 64
#: Requests of each kind timed while the streams are open; the worst one counts.
PROBES = 10
#: The functional bound on each of them (not a benchmark: an API that answers at all is far below it).
ANSWER_WITHIN = 1.0
#: Seconds one timed request may take before it counts as hung.
PROBE_TIMEOUT = 5.0
#: Seconds a stream client reads at most, whatever happens (it stops sooner when told).
CLIENT_LIFETIME = 60.0
STREAM_PATH = "/api/metrics/stream?interval=0.5"


@dataclass
class StreamClient:
    """One ``EventSource``-like client in a thread: opens the stream, reads until told to stop."""

    url: str
    stop: threading.Event
    status: int | None = None
    retry_after: str | None = None
    error_body: dict[str, Any] | None = None
    events: int = 0
    failure: str | None = None
    answered: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> StreamClient:
        self.thread = threading.Thread(target=self._run, name="stream-client", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + CLIENT_LIFETIME
        try:
            with requests.get(self.url, stream=True, timeout=(10, 10)) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    self.retry_after = r.headers.get("Retry-After")
                    self.error_body = r.json()
                    return
                for line in r.iter_lines():
                    if line.startswith(b"data: "):
                        self.events += 1
                        self.answered.set()
                    if self.stop.is_set() or time.monotonic() > deadline:
                        return  # leaving the with-block closes the connection
        except requests.RequestException as exc:
            self.failure = repr(exc)
        finally:
            self.answered.set()
            self.finished.set()

    @property
    def streaming(self) -> bool:
        """Got a 200 and is still reading it."""
        return self.status == 200 and not self.finished.is_set()


def timed(call: Callable[[], requests.Response], expected: int) -> float:
    """Seconds ``call`` took to answer ``expected``; a timeout or an error counts as ``PROBE_TIMEOUT``."""
    started = time.perf_counter()
    try:
        r = call()
    except requests.RequestException:
        return PROBE_TIMEOUT
    elapsed = time.perf_counter() - started
    assert r.status_code == expected, (r.status_code, r.text)
    return elapsed


def open_stream(url: str) -> requests.Response:
    """An open stream whose first message arrived, or the refusal."""
    r = requests.get(url, stream=True, timeout=(5, 10))
    if r.status_code == 200:
        lines = r.iter_lines()
        while not next(lines).startswith(b"data: "):
            pass
    return r


def assert_refused(r: requests.Response) -> None:
    """The answer to one stream too many."""
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["error"]["code"] == "too_many_streams", body
    assert body["error"]["message"]


def test_64_stream_clients_leave_submits_and_health_answering(make_stack: Any, api_process: Any) -> None:
    stack = make_stack(start=False)  # submits only queue: no worker needed
    api = api_process(stack.env)
    processes = int(api.command[api.command.index("--workers") + 1])
    per_process = stack.settings.stream_max_clients
    threads = int(api.command[api.command.index("--threads") + 1])
    assert per_process < threads, "the stream cap must leave threads for everything else"

    stop = threading.Event()
    clients = [StreamClient(api.base + STREAM_PATH, stop).start() for _ in range(CLIENTS)]
    try:
        # Every client has its answer: the first message of a stream, or a refusal.
        for client in clients:
            assert client.answered.wait(30), "a stream client got no answer within 30 s"
        assert not [c.failure for c in clients if c.failure], [c.failure for c in clients if c.failure]
        accepted = [c for c in clients if c.status == 200]
        refused = [c for c in clients if c.status != 200]
        # At most the cap per process; at least one process is full (64 clients, 2 processes).
        assert per_process <= len(accepted) <= per_process * processes, len(accepted)
        assert len(refused) == CLIENTS - len(accepted)
        for client in refused:
            assert client.status == 429
            assert client.retry_after is not None and int(client.retry_after) >= 1
            assert client.error_body is not None and client.error_body["error"]["code"] == "too_many_streams"

        submit = [timed(lambda n=n: requests.post(
            api.base + "/v1/jobs", timeout=PROBE_TIMEOUT,
            json={"text": f"Submitted beside {CLIENTS} streams, number {n} {uuid.uuid4().hex[:6]}.",
                  "voice": "heart", "format": "wav"}), 202) for n in range(PROBES)]
        live = [timed(lambda: requests.get(api.base + "/health/live", timeout=PROBE_TIMEOUT), 200)
                for _ in range(PROBES)]
        print(f"with {len(accepted)} streams open and {len(refused)} refused: worst POST /v1/jobs "
              f"{max(submit):.3f} s, worst GET /health/live {max(live):.3f} s")
        assert max(submit) < ANSWER_WITHIN, submit
        assert max(live) < ANSWER_WITHIN, live
        # The accepted streams were open the whole time, and still are.
        assert all(c.streaming for c in accepted), [(c.status, c.events) for c in accepted]
    finally:
        stop.set()
        for client in clients:
            assert client.finished.wait(15), "a stream client did not stop"

    # Every slot came back: as many streams as before are accepted again (retrying the refusals
    # of a process whose slots are taken, until the other one takes the connection).
    held: list[requests.Response] = []

    def one_more() -> bool:
        r = open_stream(api.base + STREAM_PATH)
        if r.status_code == 200:
            held.append(r)
        else:
            assert_refused(r)
            r.close()
        return len(held) >= len(accepted)

    try:
        wait_until(one_more, 30, f"{len(accepted)} streams accepted again after the clients closed theirs")
    finally:
        for r in held:
            r.close()


def test_stream_ends_after_max_seconds_and_a_closed_client_frees_its_slot(make_stack: Any) -> None:
    stack = make_stack(start=False, TTS_STREAM_MAX_CLIENTS="1", TTS_STREAM_MAX_SECONDS="2")
    with stack.serve() as base:
        url = base + STREAM_PATH
        started = time.monotonic()
        first = requests.get(url, stream=True, timeout=(5, 10))
        assert first.status_code == 200 and first.headers["Content-Type"].startswith("text/event-stream")
        lines = first.iter_lines()
        assert next(lines).startswith(b"retry: ")  # the client reconnects after this many ms
        assert_refused(requests.get(url, timeout=5))  # the one slot is taken

        rest = list(lines)  # the server ends the stream after TTS_STREAM_MAX_SECONDS
        elapsed = time.monotonic() - started
        first.close()
        assert 1.0 <= elapsed < 6, elapsed
        assert sum(1 for line in rest if line.startswith(b"data: ")) >= 2

        # It ended: the slot is free again. This time the client goes away mid-stream.
        second = open_stream(url)
        assert second.status_code == 200
        second.close()

        def accepted_again() -> bool:
            r = requests.get(url, stream=True, timeout=(5, 10))
            with r:
                return r.status_code == 200

        wait_until(accepted_again, 10, "a stream accepted after its client closed the last one")


def test_max_events_beyond_max_seconds_is_held_to_max_seconds(make_stack: Any) -> None:
    """The document cannot say a bound that depends on ``interval``: asking for more events than
    TTS_STREAM_MAX_SECONDS holds gets that many (before the contract: a 400)."""
    stack = make_stack(start=False, TTS_STREAM_MAX_SECONDS="1")
    r = stack.client.get("/api/metrics/stream?interval=0.5&max_events=50")
    assert r.status_code == 200
    events = [line for line in r.get_data(as_text=True).splitlines() if line.startswith("data: ")]
    assert len(events) == 2


def test_batch_zip_stream_has_its_own_cap(make_stack: Any) -> None:
    stack = make_stack(start=False, TTS_BATCH_STREAM_MAX_CLIENTS="1")
    r = stack.client.post("/v1/batches", json={"inputs": [{"text": "One zip at a time."}],
                                              "defaults": {"voice": "heart"}})
    assert r.status_code == 202, r.get_json()
    batch_id = r.get_json()["id"]
    slots = stack.app.extensions["tts_streams"]

    held = slots.batch_zip.try_acquire()  # the one slot, taken the way a download takes it
    assert held is not None
    try:
        refused = stack.client.get(f"/v1/batches/{batch_id}/result")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"]
        assert refused.get_json()["error"]["code"] == "too_many_streams"
        # Metrics streams have their own slots: a busy download does not refuse them, nor they it.
        stream = stack.client.get("/api/metrics/stream?interval=0.5&max_events=1")
        assert stream.status_code == 200
        stream.get_data()
    finally:
        held.release()
    assert slots.batch_zip.in_use == 0

    r = stack.client.get(f"/v1/batches/{batch_id}/result")
    assert r.status_code == 200 and r.mimetype == "application/zip"
    assert slots.batch_zip.in_use == 1  # held while the zip streams ...
    data = r.get_data()
    r.close()
    assert data[:2] == b"PK"
    assert slots.batch_zip.in_use == 0  # ... and given back when it ends

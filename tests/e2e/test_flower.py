"""Flower as the Procfile runs it (basic auth, persistent state) against a real worker: its REST
API answers 401 without credentials, lists the worker, the queue lengths read from the Redis
broker, and the tasks it saw through Celery events."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from scripts.embedded_redis import find_free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("user", "pass")
JOBS = 3


def unique(text: str) -> str:
    return f"{text} Flower {uuid.uuid4().hex[:6]}."


def wait_until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout}s")
        time.sleep(0.3)


def queue_lengths(base: str) -> dict[str, int]:
    r = requests.get(base + "/api/queues/length", auth=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return {q["name"]: q["messages"] for q in r.json()["active_queues"]}


def test_flower_rest_api_with_basic_auth(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack(start=False)  # jobs wait in the queue until the worker starts
    ids = []
    for n in range(JOBS):
        r = stack.client.post("/v1/jobs", json={"text": unique(f"Flower watches job {n}."), "voice": "heart"})
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])

    port = find_free_port()
    db = tmp_path / "flower.db"
    log = tmp_path / "flower.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks.worker", "flower", f"--port={port}", "--address=127.0.0.1",
             f"--basic-auth={AUTH[0]}:{AUTH[1]}", f"--broker={stack.redis_url}", "--persistent=True", f"--db={db}"],
            cwd=ROOT, env=stack.env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                return requests.get(base + "/healthcheck", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 60, "Flower answering")

        # Basic auth is on: no credentials, or wrong ones, give 401.
        assert requests.get(base + "/api/workers", timeout=10).status_code == 401
        assert requests.get(base + "/api/queues/length", timeout=10).status_code == 401
        assert requests.get(base + "/api/workers", auth=("user", "wrong"), timeout=10).status_code == 401

        # Queue lengths come from the Redis broker (LLEN over kombu's priority lists).
        assert queue_lengths(base)["synthesis"] == JOBS

        worker = stack.start_worker()

        def worker_listed() -> dict[str, Any] | None:
            r = requests.get(base + "/api/workers", params={"refresh": 1}, auth=AUTH, timeout=15)
            assert r.status_code == 200, r.text
            return r.json().get(worker.hostname)

        info = wait_until(worker_listed, 60, f"worker {worker.hostname} in /api/workers")
        assert {q["name"] for q in info["active_queues"]} == {"synthesis", "batch", "webhooks"}
        assert info["stats"]["pool"]["max-concurrency"] == 2

        for job_id in ids:
            assert stack.wait_for(job_id)["status"] == "succeeded"
        assert queue_lengths(base) == {"batch": 0, "synthesis": 0, "webhooks": 0}

        # Flower saw the tasks through Celery events.
        def tasks_done() -> bool:
            r = requests.get(base + "/api/tasks", params={"taskname": "tts.synthesize"}, auth=AUTH, timeout=10)
            assert r.status_code == 200, r.text
            states = [t.get("state") for t in r.json().values()]
            return states.count("SUCCESS") >= JOBS

        wait_until(tasks_done, 30, "the synthesis tasks as SUCCESS in /api/tasks")

        # Persistent state: on a clean stop Flower writes its database.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) is not None
        assert list(tmp_path.glob("flower.db*")), log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

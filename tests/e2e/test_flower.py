"""Flower as the Procfile runs it (basic auth, persistent state) against a real worker: it
listens on 127.0.0.1 only, its password is the one made on first start and kept in
``TTS_DATA_DIR/flower-password`` (never on a command line), its REST API answers 401 without
credentials, lists the worker, the queue lengths read from the Redis broker, and the tasks it
saw through Celery events."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from conftest import wait_until

from scripts.embedded_redis import find_free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
USER = "admin"
JOBS = 3


def unique(text: str) -> str:
    return f"{text} Flower {uuid.uuid4().hex[:6]}."


def procfile_flower_line() -> str:
    """The Procfile's ``flower`` command, as ``make up`` runs it (in ``/bin/sh``)."""
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("flower:"))
    return line.partition(":")[2].strip()


def queue_lengths(base: str, auth: tuple[str, str]) -> dict[str, int]:
    r = requests.get(base + "/api/queues/length", auth=auth, timeout=10)
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
    # The Procfile's line in a folder of its own: its relative --db=var/flower.db lands there.
    (tmp_path / "var").mkdir()
    db = tmp_path / "var" / "flower.db"
    log = tmp_path / "flower.log"
    env = {**stack.env, "TTS_FLOWER_PORT": str(port)}
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))  # as make up does
    password_file = Path(stack.env["TTS_DATA_DIR"]) / "flower-password"
    assert not password_file.exists()
    with open(log, "wb") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", procfile_flower_line()], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                return requests.get(base + "/healthcheck", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 60, "Flower answering")

        # The password was made on first start, is the owner's only, and is on no command line.
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        password = password_file.read_text().strip()
        assert len(password) >= 24
        auth = (USER, password)
        flower = psutil.Process(proc.pid)  # the shell exec'd celery
        assert "flower" in flower.cmdline()
        assert not [line for line in _command_lines() if password in line]
        # It listens on the loopback only (TTS_FLOWER_HOST's default).
        listening = {c.laddr.ip for c in flower.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, listening

        # Basic auth is on: no credentials, or wrong ones, give 401.
        assert requests.get(base + "/api/workers", timeout=10).status_code == 401
        assert requests.get(base + "/api/queues/length", timeout=10).status_code == 401
        assert requests.get(base + "/api/workers", auth=(USER, "wrong"), timeout=10).status_code == 401
        assert requests.get(base + "/api/workers", auth=(USER, "tts-batch"), timeout=10).status_code == 401

        # Queue lengths come from the Redis broker (LLEN over kombu's priority lists).
        assert queue_lengths(base, auth)["synthesis"] == JOBS

        worker = stack.start_worker()

        def worker_listed() -> dict[str, Any] | None:
            r = requests.get(base + "/api/workers", params={"refresh": 1}, auth=auth, timeout=15)
            assert r.status_code == 200, r.text
            return r.json().get(worker.hostname)

        info = wait_until(worker_listed, 60, f"worker {worker.hostname} in /api/workers")
        assert {q["name"] for q in info["active_queues"]} == {"synthesis", "bulk", "batch", "webhooks"}
        assert info["stats"]["pool"]["max-concurrency"] == 2

        for job_id in ids:
            assert stack.wait_for(job_id)["status"] == "succeeded"
        assert queue_lengths(base, auth) == {"batch": 0, "bulk": 0, "synthesis": 0, "webhooks": 0}

        # Flower saw the tasks through Celery events.
        def tasks_done() -> bool:
            r = requests.get(base + "/api/tasks", params={"taskname": "tts.synthesize"}, auth=auth, timeout=10)
            assert r.status_code == 200, r.text
            states = [t.get("state") for t in r.json().values()]
            return states.count("SUCCESS") >= JOBS

        wait_until(tasks_done, 30, "the synthesis tasks as SUCCESS in /api/tasks")

        # Persistent state: on a clean stop Flower writes its database.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) is not None
        assert list(db.parent.glob("flower.db*")), log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _command_lines() -> list[str]:
    """The command line of every process on the machine that is still there to read."""
    lines = []
    for process in psutil.process_iter():
        try:
            lines.append(" ".join(process.cmdline()))
        except psutil.Error:
            continue
    return lines

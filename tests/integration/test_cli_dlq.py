"""``tts-batch dlq`` against a real Redis holding real dead-letter records."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run_cli(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", "dlq", *args], env=stack.env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_dlq_commands(make_stack):
    stack = make_stack(TTS_FAULT_INJECTION="permanent")
    ids = [stack.client.post("/v1/jobs", json={"text": f"Broken job number {i}.", "voice": "heart"}).get_json()["id"]
           for i in range(3)]
    for job_id in ids:
        assert stack.wait_for(job_id)["status"] == "failed"

    listed = run_cli(stack, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {r["job_id"] for r in json.loads(listed.stdout)} == set(ids)

    shown = run_cli(stack, "show", ids[0])
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["error_type"] == "EngineError"

    missing = run_cli(stack, "show", "nope")
    assert missing.returncode == 2
    assert "no dead-letter record for job 'nope'" in missing.stderr

    assert run_cli(stack, "delete", ids[0]).returncode == 0
    replayed = run_cli(stack, "replay", ids[1])
    assert replayed.returncode == 0 and ids[1] in replayed.stdout
    # Still broken, so it comes back to the queue after its fresh attempt.
    assert stack.wait_for(ids[1], statuses=("failed",))["status"] == "failed"
    stack.wait_until(lambda: stack.client.get("/v1/dlq").get_json()["total"] == 2, 10,
                     "the replayed job back in the dead-letter queue beside the other")
    purged = run_cli(stack, "purge")
    assert purged.returncode == 0
    assert "purged 2 record(s)" in purged.stdout
    assert stack.client.get("/v1/dlq").get_json()["total"] == 0


def test_dlq_without_redis_says_so():
    env = {"REDIS_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "app.cli", "dlq", "list"], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr

"""One request's whole story from its id: the X-Request-ID reaches every worker log line
about the job, as JSON."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_request_id_follows_the_job_into_worker_logs(make_stack):
    stack = make_stack()
    request_id = "trace-me-7f3a"
    r = stack.client.post("/v1/jobs", json={"text": "Follow this request.", "voice": "heart"},
                          headers={"X-Request-ID": request_id})
    assert r.headers["X-Request-ID"] == request_id
    job_id = r.get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "succeeded"

    def job_lines() -> list[dict]:
        lines = []
        for raw in stack.workers[0].log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # Celery's banner is plain text
            if isinstance(record, dict) and record.get("job_id") == job_id:
                lines.append(record)
        return lines

    def with_finish_line() -> list[dict]:
        lines = job_lines()
        return lines if any("succeeded" in r["message"] for r in lines) else []

    # The job record says succeeded a moment before the worker writes its line about it.
    lines = stack.wait_until(with_finish_line, timeout=10, what="the worker's log line about the job's success")
    assert len(lines) >= 2, "expected the start and finish lines of the job"
    for record in lines:
        assert record["correlation_id"] == request_id
        assert record["voice"] == "heart"
        assert {"timestamp", "level", "logger", "message"} <= set(record)
    finished = [r for r in lines if "succeeded" in r["message"]]
    assert finished and finished[0]["synthesis_seconds"] > 0

    # A request without the header gets a fresh id, echoed back.
    other = stack.client.get("/v1/voices")
    assert len(other.headers["X-Request-ID"]) >= 16

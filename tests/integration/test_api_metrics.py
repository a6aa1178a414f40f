"""Metrics over HTTP with a real worker: the API's ``/metrics/prometheus`` and the standalone
exporter agree and follow the jobs run; ``promtool`` accepts both; the JSON digest, the
status summary, the history and the Server-Sent Events stream."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from scripts.embedded_redis import find_free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def unique(text: str) -> str:
    return f"{text} Metrics {uuid.uuid4().hex[:6]}."


# --- helpers -----------------------------------------------------------------------------


def parse(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of an exposition as (sample name, labels, value)."""
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def total(text: str, metric: str, /, **labels: str) -> float:
    """The sum of the samples called ``metric`` whose labels include ``labels``."""
    return sum(value for sample, found, value in parse(text)
               if sample == metric and all(found.get(k) == v for k, v in labels.items()))


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(found.items())): value for sample, found, value in parse(text) if sample == name}


class Exporter:
    """``python -m monitoring.exporter`` as a subprocess on a free port."""

    def __init__(self, redis_url: str, env: dict[str, str], log: Path) -> None:
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitoring.exporter", "--port", str(self.port), "--redis-url", redis_url],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.url, timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"exporter did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.1)

    def scrape(self) -> str:
        response = requests.get(self.url, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[[Any], Exporter]]:
    started: list[Exporter] = []

    def start(stack: Any) -> Exporter:
        exporter = Exporter(stack.redis_url, stack.env, tmp_path / f"exporter{len(started)}.log")
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


def api_scrape(stack: Any) -> str:
    r = stack.client.get("/metrics/prometheus")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return r.get_data(as_text=True)


def wait_until(probe: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.2)


#: Series compared between the API and the exporter once the jobs are done.
THROUGHPUT = ("tts_jobs_submitted_total", "tts_jobs_succeeded_total", "celery_task_succeeded_total",
              "tts_synthesis_seconds_count", "tts_job_duration_seconds_count", "tts_queue_wait_seconds_count")


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_api_and_exporter_follow_the_jobs_run(make_stack: Any, start_exporter: Any) -> None:
    jobs = 3
    stack = make_stack(start=False)  # no worker yet: the jobs stay in the queue
    exporter = start_exporter(stack)
    for text in (api_scrape(stack), exporter.scrape()):
        assert total(text, "tts_redis_up") == 1
        assert total(text, "celery_queue_length", queue="synthesis") == 0
        assert total(text, "tts_jobs_submitted_total") == 0
        assert total(text, "tts_workers_online") == 0

    ids = []
    for n in range(jobs):
        r = stack.client.post("/v1/jobs", json={"text": unique(f"Job number {n} waits its turn."), "voice": "heart"})
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    for text in (api_scrape(stack), exporter.scrape()):
        assert total(text, "celery_queue_length", queue="synthesis") == jobs
        assert total(text, "tts_jobs_submitted_total", voice="heart", queue="synthesis") == jobs
        assert total(text, "tts_jobs_succeeded_total") == 0
        assert total(text, "tts_cache_misses_total") == jobs

    worker = stack.start_worker()
    for job_id in ids:
        assert stack.wait_for(job_id)["status"] == "succeeded"
    # The task_success signal lands just after the job record says succeeded.
    wait_until(lambda: total(exporter.scrape(), "celery_task_succeeded_total", name="tts.synthesize") >= jobs,
               what="celery_task_succeeded_total")
    api_text, exporter_text = api_scrape(stack), exporter.scrape()
    for text in (api_text, exporter_text):
        assert total(text, "celery_queue_length", queue="synthesis") == 0
        assert total(text, "tts_jobs_submitted_total") == jobs
        assert total(text, "tts_jobs_succeeded_total", voice="heart", queue="synthesis") == jobs
        assert total(text, "celery_task_succeeded_total", name="tts.synthesize", queue="synthesis") == jobs
        assert total(text, "tts_synthesis_seconds_count", voice="heart") == jobs
        assert total(text, "tts_synthesis_seconds_bucket", voice="heart", le="+Inf") == jobs
        assert total(text, "tts_synthesis_seconds_sum", voice="heart") > 0
        assert total(text, "tts_job_duration_seconds_count") == jobs
        assert total(text, "tts_queue_wait_seconds_count") == jobs
        assert total(text, "tts_jobs_failed_total") == 0
        assert total(text, "celery_worker_up", hostname=worker.hostname) == 1
        assert total(text, "tts_workers_online") == 1
        assert total(text, "tts_characters_synthesized_total", voice="heart") > 0
        assert total(text, "tts_audio_seconds_synthesized_total", voice="heart") > 0
        assert total(text, "tts_engine_realtime_factor", voice="heart") > 0
    for name in THROUGHPUT:
        assert series(api_text, name) == series(exporter_text, name), name


def test_prometheus_openmetrics_on_request(stack: Any) -> None:
    r = stack.client.get("/metrics/prometheus", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.get_data(as_text=True).rstrip().endswith("# EOF")


def test_promtool_accepts_both_expositions(stack: Any, start_exporter: Any, promtool: str) -> None:
    job = stack.client.post("/v1/jobs", json={"text": unique("Lint me."), "voice": "heart"}).get_json()
    assert stack.wait_for(job["id"])["status"] == "succeeded"
    exporter = start_exporter(stack)
    for source, text in (("api", api_scrape(stack)), ("exporter", exporter.scrape())):
        assert total(text, "tts_synthesis_seconds_count") >= 1  # histograms are in what is checked
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, f"{source}: {result.stdout}{result.stderr}"


# --- JSON -------------------------------------------------------------------------------------


def test_metrics_json_moves_with_jobs_and_cache_hits(make_stack: Any) -> None:
    stack = make_stack()  # its own database: no other test's jobs in the counts
    client = stack.client
    before = client.get("/metrics/json").get_json()
    text = unique("Say it twice.")
    first = client.post("/v1/jobs", json={"text": text, "voice": "heart"}).get_json()
    other = client.post("/v1/jobs", json={"text": unique("And once more."), "voice": "heart"}).get_json()
    for job in (first, other):
        assert stack.wait_for(job["id"])["status"] == "succeeded"
    again = client.post("/v1/jobs", json={"text": text, "voice": "heart"})
    assert again.status_code == 200 and again.get_json()["status"] == "succeeded"  # from the cache

    r = client.get("/metrics/json")
    assert r.status_code == 200
    after = r.get_json()
    assert after["jobs"]["submitted"] == before["jobs"]["submitted"] + 3
    assert after["jobs"]["succeeded"] == before["jobs"]["succeeded"] + 3
    assert after["jobs"]["served_from_cache"] == before["jobs"]["served_from_cache"] + 1
    assert after["cache"]["hits"] == before["cache"]["hits"] + 1
    assert after["cache"]["misses"] == before["cache"]["misses"] + 2
    assert 0 < after["cache"]["hit_rate"] < 1
    assert after["cache"]["entries"] >= 2 and after["cache"]["bytes"] > 0
    synthesis = after["latency_seconds"]["synthesis"]
    assert synthesis["count"] == before["latency_seconds"]["synthesis"]["count"] + 2
    assert 0 < synthesis["p50"] <= synthesis["p95"] <= synthesis["p99"]
    assert after["latency_seconds"]["job_duration"]["p95"] > 0
    assert set(after["queues"]["lengths"]) == {"synthesis", "bulk", "batch", "webhooks"}
    assert after["queues"]["total"] == sum(after["queues"]["lengths"].values())
    assert after["workers"]["online"] >= 1 and stack.workers[0].hostname in after["workers"]["hostnames"]
    assert set(after["throughput"]) >= {"window_seconds", "succeeded_per_second", "submitted_per_second",
                                        "characters_synthesized_total", "audio_seconds_synthesized_total"}
    assert after["throughput"]["characters_synthesized_total"] > before["throughput"]["characters_synthesized_total"]
    assert after["realtime_factor"]["heart"] > 0
    system = after["system"]
    assert system["cpu"]["count"] >= 1 and 0 <= system["cpu"]["percent"] <= 100
    assert 0 < system["memory"]["percent"] <= 100 and system["process"]["rss_bytes"] > 0
    assert after["recent_failures"] == [] and after["queues"]["dead_letter"] == 0
    plain = client.get("/metrics").get_json()
    assert set(plain) == set(after)


def test_status_summary(stack: Any) -> None:
    r = stack.client.get("/api/status/summary")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "healthy"
    assert set(body["components"]) == {"redis", "broker", "workers"}
    assert body["workers"]["online"] >= 1
    assert body["queue_length"] == sum(body["queues"].values())
    assert set(body["jobs"]) >= {"submitted", "succeeded", "failed", "error_rate"}
    assert "synthesis" in body["latency_p95_seconds"]


def test_recent_failures_come_from_the_dead_letter_queue(make_stack: Any) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="permanent")
    job = stack.client.post("/v1/jobs", json={"text": unique("Doomed."), "voice": "joe"},
                            headers={"X-Request-ID": "metrics-fail-1"}).get_json()
    assert stack.wait_for(job["id"])["status"] == "failed"
    body = stack.client.get("/metrics/json").get_json()
    assert body["queues"]["dead_letter"] == 1
    assert body["jobs"]["failed"] == 1 and body["jobs"]["error_rate"] == 1.0
    (failure,) = body["recent_failures"]
    assert failure["job_id"] == job["id"]
    assert failure["voice"] == "joe"
    assert failure["correlation_id"] == "metrics-fail-1"
    assert failure["error"] and failure["error_type"]
    assert failure["attempts"] >= 1
    text = api_scrape(stack)
    assert total(text, "tts_dead_letter_queue_length") == 1
    assert total(text, "tts_jobs_dead_lettered_total", voice="joe") == 1


# --- history ----------------------------------------------------------------------------------


@pytest.mark.parametrize("hours", ["0", "169", "-1", "abc", "1.5", "24h"])
def test_history_rejects_bad_hours(stack: Any, hours: str) -> None:
    r = stack.client.get(f"/api/metrics/history?hours={hours}")
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "invalid_parameter"
    assert "hours" in error["message"]


def test_history_samples_are_stored_capped_and_rated(make_stack: Any) -> None:
    stack = make_stack(start=False, TTS_METRICS_SAMPLE_INTERVAL="1", TTS_METRICS_HISTORY_MAX="3")
    client = stack.client
    assert client.get("/api/metrics/history").get_json()["count"] == 0
    deadline = time.monotonic() + 20
    count = 0
    while count < 3 and time.monotonic() < deadline:
        assert client.get("/metrics/json").status_code == 200  # stores a sample when one is due
        count = client.get("/api/metrics/history?hours=1").get_json()["count"]
        time.sleep(0.3)
    client.post("/v1/jobs", json={"text": unique("Queued for history."), "voice": "heart"})

    def sampled_after_the_job() -> dict[str, Any] | None:
        """The history once a sample taken after the submit is stored (one is due every second)."""
        assert client.get("/metrics/json").status_code == 200  # stores a sample when one is due
        history = client.get("/api/metrics/history?hours=168").get_json()
        return history if history["samples"] and history["samples"][-1]["submitted"] == 1 else None

    body = stack.wait_until(sampled_after_the_job, timeout=20, what="a history sample with the job", interval=0.2)
    assert body["hours"] == 168 and body["max_samples"] == 3 and body["interval_seconds"] == 1
    samples = body["samples"]
    assert len(samples) == body["count"] == 3  # capped
    assert [s["ts"] for s in samples] == sorted(s["ts"] for s in samples)
    assert samples[-1]["queue_length"] == 1 and samples[-1]["submitted"] == 1
    assert samples[0]["submitted_per_second"] is None  # the oldest has nothing to compare with
    assert samples[-1]["submitted_per_second"] is not None and samples[-1]["submitted_per_second"] >= 0
    assert "cpu_percent" in samples[-1] and "synthesis_p95" in samples[-1]
    assert stack.redis.zcard("tts:metrics:history") == 3


# --- Server-Sent Events ---------------------------------------------------------------------


def read_events(raw: str) -> list[dict[str, Any]]:
    events = []
    for block in raw.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def test_stream_sends_summaries_then_ends(stack: Any) -> None:
    started = time.monotonic()
    r = stack.client.get("/api/metrics/stream?interval=0.5&max_events=2")
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-store"
    raw = r.get_data(as_text=True)  # the stream ends by itself after max_events
    elapsed = time.monotonic() - started
    assert raw.startswith("retry: ")
    events = read_events(raw)
    assert [e["id"] for e in events] == ["0", "1"]
    for event in events:
        assert "event" not in event  # plain messages: EventSource.onmessage gets them
        assert set(event["data"]) >= {"jobs", "throughput", "latency_seconds", "cache", "queues", "system"}
    assert events[1]["data"]["timestamp"] - events[0]["data"]["timestamp"] >= 0.45
    assert 0.45 <= elapsed < 10


@pytest.mark.parametrize("query", ["interval=0.1", "interval=61", "interval=x", "max_events=0",
                                   "max_events=many", "interval=nan", "interval=", "colour=blue"])
def test_stream_rejects_bad_parameters(stack: Any, query: str) -> None:
    r = stack.client.get(f"/api/metrics/stream?{query}")
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "invalid_parameter"


def test_stream_over_real_http_reads_two_events(stack: Any, tmp_path: Path) -> None:
    """Through gunicorn (gthread, as in the Procfile), read two events as a browser would."""
    port = find_free_port()
    env = {**stack.env, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "gunicorn.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "1", "--threads", "4",
             "--no-control-socket", "--bind", f"127.0.0.1:{port}", "app.wsgi:app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(base + "/api/status/summary"), timeout=60, what="gunicorn")
        with requests.get(base + "/api/metrics/stream?interval=0.5", stream=True, timeout=10) as response:
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            data = []
            for line in response.iter_lines(decode_unicode=True):
                if line and line.startswith("data: "):
                    data.append(json.loads(line[len("data: "):]))
                if len(data) == 2:
                    break
        assert data[1]["timestamp"] > data[0]["timestamp"]
        assert data[0]["workers"]["online"] >= 1
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code in (200, 503)
    except requests.RequestException:
        return False


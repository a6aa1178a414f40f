"""Threshold alerts on fakeredis: windows from counter deltas, de-duplication, resolution."""
from __future__ import annotations

import fakeredis
import pytest

from monitoring.alerts import evaluate_thresholds
from monitoring.recorder import MetricsRecorder
from settings import Settings

T0 = 1_700_000_000.0
SETTINGS = Settings(alert_error_rate=0.05, alert_response_time_p95_ms=1000.0, alert_queue_length=1000,
                    alert_window=300, alert_min_jobs=5, alert_interval=60)


@pytest.fixture
def recorder() -> MetricsRecorder:
    return MetricsRecorder(fakeredis.FakeRedis())


def run(recorder: MetricsRecorder, at: float, queues: dict[str, int] | None = None,
        settings: Settings = SETTINGS) -> list[dict]:
    return evaluate_thresholds(recorder, queues or {}, settings, now=at)


def finish(recorder: MetricsRecorder, ok: int = 0, failed: int = 0, seconds: float = 0.2) -> None:
    for _ in range(ok):
        recorder.job_succeeded("heart", "synthesis", seconds, seconds, 10, 1.0)
    for _ in range(failed):
        recorder.job_failed("heart", "synthesis")


def test_error_rate_fires_once_then_resolves(recorder: MetricsRecorder) -> None:
    assert run(recorder, T0) == []  # first run: only a baseline
    finish(recorder, ok=5, failed=5)
    (alert,) = run(recorder, T0 + 60)
    assert alert["event"] == "alert.error_rate"
    assert alert["status"] == "firing"
    assert alert["value"] == pytest.approx(0.5)
    assert alert["threshold"] == 0.05
    assert alert["window_seconds"] == 300
    assert "50.0%" in alert["text"]
    # Still inside the window with the same failures: no repeat.
    assert run(recorder, T0 + 120) == []
    finish(recorder, ok=100)
    (resolved,) = run(recorder, T0 + 180)  # 5 failed of 110 in the window: 4.5 %
    assert resolved["event"] == "alert.error_rate"
    assert resolved["status"] == "resolved"
    assert resolved["value"] == pytest.approx(5 / 110, abs=1e-4)
    assert run(recorder, T0 + 240) == []


def test_error_rate_resolution_is_reported(recorder: MetricsRecorder) -> None:
    run(recorder, T0)
    finish(recorder, ok=1, failed=9)
    assert [a["status"] for a in run(recorder, T0 + 60)] == ["firing"]
    # Much later: the window holds only healthy jobs.
    run(recorder, T0 + 400)
    finish(recorder, ok=50)
    (resolved,) = run(recorder, T0 + 460)
    assert resolved["event"] == "alert.error_rate"
    assert resolved["status"] == "resolved"
    assert resolved["value"] == 0.0
    # And it can fire again afterwards.
    finish(recorder, failed=20)
    assert [a["status"] for a in run(recorder, T0 + 520)] == ["firing"]


def test_too_few_jobs_do_not_alert(recorder: MetricsRecorder) -> None:
    run(recorder, T0)
    finish(recorder, failed=2)
    assert run(recorder, T0 + 60) == []


def test_cache_hits_count_as_successes(recorder: MetricsRecorder) -> None:
    run(recorder, T0)
    for _ in range(99):
        recorder.job_submitted("heart", "synthesis", cache_hit=True)
    finish(recorder, failed=1)
    assert run(recorder, T0 + 60) == []  # 1 %


def test_latency_p95_alerts_per_metric(recorder: MetricsRecorder) -> None:
    run(recorder, T0)
    for _ in range(20):
        recorder.observe("tts_job_duration_seconds", 4.0, queue="synthesis")
        recorder.observe("tts_synthesis_seconds", 0.1, voice="heart")
    (alert,) = run(recorder, T0 + 60)
    assert alert["event"] == "alert.latency_p95"
    assert alert["metric"] == "tts_job_duration_seconds"
    assert alert["status"] == "firing"
    assert alert["value_ms"] > 1000.0
    assert alert["threshold_ms"] == 1000.0
    assert alert["observations"] == 20
    assert run(recorder, T0 + 120) == []  # still firing, not repeated


def test_old_slow_jobs_outside_the_window_do_not_alert(recorder: MetricsRecorder) -> None:
    for _ in range(20):
        recorder.observe("tts_synthesis_seconds", 30.0, voice="heart")
    run(recorder, T0)  # the slow ones are in the baseline
    for _ in range(20):
        recorder.observe("tts_synthesis_seconds", 0.05, voice="heart")
    assert run(recorder, T0 + 60) == []


def test_queue_length_fires_and_resolves_per_queue(recorder: MetricsRecorder) -> None:
    (alert,) = run(recorder, T0, {"synthesis": 1001, "webhooks": 0})
    assert (alert["event"], alert["queue"], alert["value"], alert["threshold"], alert["status"]) == (
        "alert.queue_length", "synthesis", 1001, 1000, "firing"
    )
    assert run(recorder, T0 + 60, {"synthesis": 5000, "webhooks": 0}) == []
    (resolved,) = run(recorder, T0 + 120, {"synthesis": 3, "webhooks": 0})
    assert (resolved["queue"], resolved["status"]) == ("synthesis", "resolved")
    assert run(recorder, T0 + 180, {"synthesis": 1000}) == []  # at the threshold is fine


def test_a_held_lock_skips_the_evaluation(recorder: MetricsRecorder) -> None:
    recorder.redis.set("tts:metrics:alerts:lock", "someone-else", ex=30)
    assert run(recorder, T0, {"synthesis": 10_000}) == []
    recorder.redis.delete("tts:metrics:alerts:lock")
    assert len(run(recorder, T0, {"synthesis": 10_000})) == 1
    assert recorder.redis.get("tts:metrics:alerts:lock") is None  # released after use


def test_samples_are_trimmed_to_the_window(recorder: MetricsRecorder) -> None:
    for i in range(30):
        run(recorder, T0 + i * 60)
    # Kept: samples from the last two windows (600 s) only.
    assert recorder.redis.zcard("tts:metrics:alerts:samples") <= 11

"""MetricsRecorder math on fakeredis: label bounding, counter sums, buckets and percentiles."""
from __future__ import annotations

import math

import fakeredis
import pytest

from monitoring.recorder import (
    HISTOGRAM_BUCKETS,
    MetricsRecorder,
    merge_series,
    quantile,
    queue_label,
    summarize,
    voice_label,
)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def recorder(server: fakeredis.FakeServer) -> MetricsRecorder:
    return MetricsRecorder(fakeredis.FakeRedis(server=server))


def series(recorder: MetricsRecorder, name: str) -> dict[tuple, float]:
    return {tuple(sorted(i["labels"].items())): i["value"] for i in recorder.counters().get(name, [])}


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("heart", "heart"),
        ("jf_alpha", "jf_alpha"),
        ("jf_alpha*0.7+jm_kumo*0.3", "blend"),
        ("af_heart+bf_emma", "blend"),
        ("jf_alpha*1.0", "blend"),
        ("", "unknown"),
        (None, "unknown"),
        ("../../etc/passwd", "other"),
        ("x" * 65, "other"),
        ("voice with spaces", "other"),
        ("en_US-joe-medium", "en_US-joe-medium"),
    ],
)
def test_voice_label_is_bounded(raw: object, label: str) -> None:
    assert voice_label(raw) == label


def test_queue_label_is_bounded() -> None:
    assert queue_label("synthesis") == "synthesis"
    assert queue_label("") == "unknown"
    assert queue_label("bad queue\n") == "other"


def test_blends_share_one_label(recorder: MetricsRecorder) -> None:
    for blend in ("jf_alpha*0.7+jm_kumo*0.3", "jf_alpha*0.5+jm_kumo*0.5", "a+b", "c*2"):
        recorder.job_submitted(blend, "synthesis", cache_hit=False)
    recorder.job_submitted("heart", "synthesis", cache_hit=False)
    assert series(recorder, "tts_jobs_submitted_total") == {
        (("queue", "synthesis"), ("voice", "blend")): 4.0,
        (("queue", "synthesis"), ("voice", "heart")): 1.0,
    }


def test_counter_sums_and_filters(recorder: MetricsRecorder) -> None:
    recorder.job_submitted("heart", "synthesis", cache_hit=False)
    recorder.job_submitted("heart", "synthesis", cache_hit=True)
    recorder.job_submitted("joe", "batch", cache_hit=False)
    recorder.job_failed("joe", "batch")
    recorder.job_retried("joe", "batch")
    recorder.job_retried("joe", "batch")
    recorder.job_dead_lettered("joe", "batch")
    recorder.job_cancelled("heart", "synthesis")
    recorder.cache_lookup(True)
    recorder.cache_lookup(False)
    recorder.cache_lookup(False)

    assert recorder.counter_total("tts_jobs_submitted_total") == 3.0
    assert recorder.counter_total("tts_jobs_submitted_total", voice="heart") == 2.0
    assert recorder.counter_total("tts_jobs_submitted_total", queue="batch") == 1.0
    # A cache hit finishes the job at submit time.
    assert recorder.counter_total("tts_jobs_succeeded_total") == 1.0
    assert recorder.counter_total("tts_jobs_served_from_cache_total", voice="heart") == 1.0
    assert recorder.counter_total("tts_jobs_retried_total") == 2.0
    assert recorder.counter_total("tts_jobs_failed_total", voice="joe") == 1.0
    assert recorder.counter_total("tts_jobs_dead_lettered_total") == 1.0
    assert recorder.counter_total("tts_jobs_cancelled_total") == 1.0
    assert recorder.counter_total("tts_cache_hits_total") == 1.0
    assert recorder.counter_total("tts_cache_misses_total") == 2.0
    assert recorder.counter_by("tts_jobs_submitted_total", "voice") == {"heart": 2.0, "joe": 1.0}
    assert recorder.counter_total("never_written_total") == 0.0


def test_job_succeeded_feeds_counters_and_histograms(recorder: MetricsRecorder) -> None:
    recorder.job_started("heart", "synthesis", wait_seconds=0.2)
    recorder.job_succeeded("heart", "synthesis", synthesis_seconds=0.5, total_seconds=1.5,
                           characters=120, audio_seconds=8.0)
    recorder.job_succeeded("heart", "synthesis", synthesis_seconds=1.5, total_seconds=2.0,
                           characters=80, audio_seconds=12.0)
    assert recorder.counter_total("tts_characters_synthesized_total", voice="heart") == 200.0
    assert recorder.counter_total("tts_audio_seconds_synthesized_total") == 20.0
    hist = recorder.histograms()
    (synth,) = hist["tts_synthesis_seconds"]
    assert synth["labels"] == {"voice": "heart"}
    assert synth["count"] == 2 and synth["sum"] == pytest.approx(2.0)
    assert synth["buckets"][-1] == (math.inf, 2.0)
    cumulative = dict(synth["buckets"])
    assert cumulative[0.25] == 0 and cumulative[0.5] == 1 and cumulative[1.0] == 1 and cumulative[2.5] == 2
    (wait,) = hist["tts_queue_wait_seconds"]
    assert wait["labels"] == {"queue": "synthesis"} and wait["count"] == 1
    # 20 s of audio in 2 s of synthesis.
    assert recorder.realtime_factors() == {"heart": pytest.approx(10.0)}


def test_buckets_are_inclusive_upper_bounds(recorder: MetricsRecorder) -> None:
    bounds = HISTOGRAM_BUCKETS["tts_synthesis_seconds"]
    recorder.observe("tts_synthesis_seconds", bounds[3], voice="heart")  # exactly on a bound
    recorder.observe("tts_synthesis_seconds", bounds[-1] * 10, voice="heart")  # above every bound
    recorder.observe("tts_synthesis_seconds", -1.0, voice="heart")  # clamped to 0
    (item,) = recorder.histograms()["tts_synthesis_seconds"]
    cumulative = dict(item["buckets"])
    assert cumulative[bounds[0]] == 1  # the clamped one
    assert cumulative[bounds[2]] == 1
    assert cumulative[bounds[3]] == 2
    assert cumulative[bounds[-1]] == 2
    assert cumulative[math.inf] == 3


def test_unknown_histogram_uses_default_buckets(recorder: MetricsRecorder) -> None:
    recorder.observe("custom_seconds", 0.3, kind="x")
    (item,) = recorder.histograms()["custom_seconds"]
    assert item["labels"] == {"kind": "x"}
    assert [b for b, _ in item["buckets"]][:3] == [0.005, 0.01, 0.025]


def test_quantile_interpolates_like_histogram_quantile() -> None:
    # 10 observations in (0, 1], 10 in (1, 2]: the median sits on 1, p75 halfway into (1, 2].
    buckets = [(1.0, 10.0), (2.0, 20.0), (math.inf, 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(1.0)
    assert quantile(0.75, buckets) == pytest.approx(1.5)
    assert quantile(0.25, buckets) == pytest.approx(0.5)
    assert quantile(1.0, buckets) == pytest.approx(2.0)
    # A rank in +Inf answers the highest finite bound.
    assert quantile(0.99, [(1.0, 1.0), (2.0, 1.0), (math.inf, 10.0)]) == 2.0
    assert quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.5, []) is None


def test_percentiles_from_recorded_values(recorder: MetricsRecorder) -> None:
    # 100 jobs: 90 take 0.2 s, 10 take 4 s.
    for _ in range(90):
        recorder.observe("tts_job_duration_seconds", 0.2, queue="synthesis")
    for _ in range(10):
        recorder.observe("tts_job_duration_seconds", 4.0, queue="synthesis")
    summary = recorder.histogram_summary("tts_job_duration_seconds")
    assert summary["count"] == 100
    assert summary["mean"] == pytest.approx((90 * 0.2 + 10 * 4.0) / 100)
    assert 0.1 < summary["p50"] <= 0.25  # inside the (0.1, 0.25] bucket
    assert 2.5 < summary["p95"] <= 5.0  # inside the (2.5, 5] bucket
    assert summary["p50"] <= summary["p95"] <= summary["p99"]
    assert recorder.histogram_summary("tts_job_duration_seconds", queue="other")["p95"] is None


def test_merge_series_adds_label_sets() -> None:
    a = {"buckets": [(1.0, 1.0), (math.inf, 2.0)], "sum": 3.0, "count": 2.0}
    b = {"buckets": [(1.0, 0.0), (5.0, 3.0), (math.inf, 3.0)], "sum": 9.0, "count": 3.0}
    merged = merge_series([a, b])
    assert merged == {"buckets": [(1.0, 1.0), (5.0, 4.0), (math.inf, 5.0)], "sum": 12.0, "count": 5.0}
    assert summarize(merge_series([]))["p50"] is None


def test_generic_counters_with_labels(recorder: MetricsRecorder) -> None:
    recorder.count("tts_things_total", 2.5, kind="a")
    recorder.count("tts_things_total", kind="a")
    recorder.count("tts_things_total", kind="b")
    assert series(recorder, "tts_things_total") == {(("kind", "a"),): 3.5, (("kind", "b"),): 1.0}


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.count("bad name"),
        lambda r: r.count("ok_total", -1.0),
        lambda r: r.count("ok_total", float("nan")),
        lambda r: r.count("ok_total", 1.0, **{"bad-label": "x"}),
        lambda r: r.observe("ok_seconds", float("nan")),
        lambda r: r.observe("ok_seconds", 1.0, le="1"),
        lambda r: r.observe("ok_seconds", "not a number"),
    ],
)
def test_bad_input_is_dropped_not_raised(recorder: MetricsRecorder, call) -> None:
    call(recorder)
    assert recorder.counters() == {}
    assert recorder.histograms() == {}


def test_writers_never_raise_when_redis_is_down(server: fakeredis.FakeServer, recorder: MetricsRecorder) -> None:
    server.connected = False
    recorder.job_submitted("heart", "synthesis", cache_hit=False)
    recorder.job_started("heart", "synthesis", 0.1)
    recorder.job_succeeded("heart", "synthesis", 0.1, 0.2, 10, 1.0)
    recorder.job_retried("heart", "synthesis")
    recorder.job_failed("heart", "synthesis")
    recorder.job_dead_lettered("heart", "synthesis")
    recorder.job_cancelled("heart", "synthesis")
    recorder.cache_lookup(True)
    recorder.task_succeeded("tts.synthesize", "synthesis")
    recorder.task_failed("tts.synthesize", "synthesis")
    recorder.task_retried("tts.synthesize", "synthesis")
    server.connected = True
    assert recorder.counters() == {}


def test_summary_is_json_ready(recorder: MetricsRecorder) -> None:
    import json

    recorder.job_submitted("heart", "synthesis", cache_hit=False)
    recorder.job_succeeded("heart", "synthesis", 0.5, 1.0, 10, 5.0)
    recorder.job_submitted("heart", "synthesis", cache_hit=False)
    recorder.job_failed("heart", "synthesis")
    recorder.cache_lookup(True)
    recorder.cache_lookup(False)
    summary = recorder.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["jobs"]["submitted"] == 2
    assert summary["jobs"]["error_rate"] == pytest.approx(0.5)
    assert summary["cache"]["hit_rate"] == pytest.approx(0.5)
    assert summary["realtime_factor"] == {"heart": pytest.approx(10.0)}
    assert summary["latency_seconds"]["synthesis"]["count"] == 1


def test_task_counters_take_a_name_label(recorder: MetricsRecorder) -> None:
    recorder.task_succeeded("tts.synthesize", "synthesis")
    recorder.task_succeeded("tts.synthesize", "synthesis")
    recorder.task_failed("tts.deliver_webhook", "webhooks")
    recorder.task_retried("tts.deliver_webhook", "webhooks")
    assert series(recorder, "celery_task_succeeded_total") == {
        (("name", "tts.synthesize"), ("queue", "synthesis")): 2.0
    }
    assert recorder.counter_total("celery_task_failed_total", name="tts.deliver_webhook") == 1.0
    assert recorder.counter_total("celery_task_retried_total", queue="webhooks") == 1.0


def test_one_bad_timing_does_not_drop_the_rest(recorder: MetricsRecorder) -> None:
    recorder.job_succeeded("heart", "synthesis", synthesis_seconds=float("nan"), total_seconds=1.0,
                           characters=10, audio_seconds=float("inf"))
    assert recorder.counter_total("tts_jobs_succeeded_total") == 1
    assert recorder.counter_total("tts_characters_synthesized_total") == 10
    assert recorder.counter_total("tts_audio_seconds_synthesized_total") == 0
    hist = recorder.histograms()
    assert "tts_synthesis_seconds" not in hist
    assert hist["tts_job_duration_seconds"][0]["count"] == 1

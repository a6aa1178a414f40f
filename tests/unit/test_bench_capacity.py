"""scripts/bench_capacity.py's pure parts: key families, the MONITOR split by subsystem, the job texts.

The capacity model in docs/scaling.md is built on these: a key family that swallowed ids into
many families, or a command counted under the wrong subsystem, would move its figures silently.
"""
from __future__ import annotations

from scripts.bench_capacity import MINUTE_CHARS, family, job_texts, subsystem
from settings import get_settings

JOB = "0123456789abcdef0123456789abcdef"
REF = "ab" * 32


def test_families_replace_ids_and_numbers() -> None:
    assert family(f"tts:job:{JOB}") == "tts:job:{id}"
    assert family(f"tts:job:{JOB}:history") == "tts:job:{id}:history"
    assert family(f"tts:job:{JOB}:part:12") == "tts:job:{id}:part:{n}"
    assert family(f"tts:audio:{REF}") == "tts:audio:{id}"
    assert family("tts:results:expiry") == "tts:results:expiry"  # shared keys keep their name


def test_commands_go_to_their_subsystem() -> None:
    assert subsystem("MULTI", "") == subsystem("EXEC", "") == "transactions (MULTI/EXEC/WATCH)"
    assert subsystem("HINCRBY", "tts:metrics:counters").startswith("metrics")
    assert subsystem("PUBLISH", "/0.celeryev/task.multi").startswith("Celery events")
    assert subsystem("LPUSH", "synthesis").startswith("broker")
    assert subsystem("HSET", "unacked").startswith("broker")
    assert subsystem("ZADD", "tts:results:expiry") == "result store index"
    assert subsystem("HSET", f"tts:job:{JOB}").startswith("job records")
    assert subsystem("PUBLISH", f"tts:job:{JOB}:finished").startswith("job records")
    assert subsystem("PING", "") == "other (ping)"


def test_job_texts_are_unique_and_minute_jobs_stay_one_task() -> None:
    sentences = job_texts("sentence", 20, "t")
    minutes = job_texts("minute", 5, "t")
    assert len(set(sentences)) == 20 and len(set(minutes)) == 5
    assert all(len(t) < 400 for t in sentences)
    # about a minute of speech, and below the fan-out threshold, so a minute job is one task
    assert all(MINUTE_CHARS <= len(t) < get_settings().chunk_fanout_chars for t in minutes)

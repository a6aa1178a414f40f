"""The job record leaves default-valued fields out of its hash, and reads every earlier record."""
from __future__ import annotations

from tasks.batches import _ITEM_FIELDS, ItemMeta
from tasks.job import COMPACT_DEFAULTS, COMPACT_FIELDS, Job
from tasks.status import JobStatus


def _queued_item() -> Job:
    return Job(id="a" * 32, text="Item 1 of the batch.", voice="heart", characters=20, created_at=1764617000.5,
               queued_at=1764617000.5, task_id="b" * 32, batch_id="c" * 32, batch_index=7, cache_key="d" * 64)


def test_defaults_are_left_out_and_restored() -> None:
    job = _queued_item()
    record = job.to_redis()
    assert not {"format", "speed", "markdown", "cache", "attempts", "max_attempts", "cache_hit", "replays",
                "tenant", "extra"} & set(record)
    assert record["status"] == "queued" and record["queued_at"] == "1764617000.5"
    assert Job.from_redis(dict(record)) == job
    full = job.to_redis(defaults=True)
    assert set(COMPACT_FIELDS) <= set(full)
    assert sum(len(k) + len(v) for k, v in full.items()) - sum(len(k) + len(v) for k, v in record.items()) > 80


def test_values_other_than_the_default_are_written() -> None:
    job = _queued_item()
    job.format, job.speed, job.attempts, job.tenant, job.cache = "wav", 1.25, 2, "acme", False
    job.extra = {"fanout": {"parts": 3}}
    record = job.to_redis()
    assert (record["format"], record["speed"], record["attempts"], record["tenant"], record["cache"]) == \
        ("wav", "1.25", "2", "acme", "0")
    assert Job.from_redis(dict(record)) == job


def test_a_record_of_the_previous_version_still_loads() -> None:
    """Rolling upgrade: records written with every non-None field (the old to_redis) read the same."""
    job = _queued_item()
    job.status = JobStatus.SUCCEEDED
    job.attempts, job.duration, job.audio_bytes = 1, 1.5, 12_000
    old = job.to_redis(defaults=True)
    assert Job.from_redis(dict(old)) == job == Job.from_redis(dict(job.to_redis()))


def test_batch_item_listing_reads_left_out_fields_as_defaults() -> None:
    record = _queued_item().to_redis()
    values = [record[name].encode() if name in record else None for name in _ITEM_FIELDS]
    item = ItemMeta.from_fields(7, "a" * 32, values)
    assert (item.format, item.attempts, item.cache_hit, item.status) == (COMPACT_DEFAULTS["format"], 0, False,
                                                                          "queued")

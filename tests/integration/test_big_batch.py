"""A 10,000-item batch through the Procfile's API on a real Redis (issue 13): accepted, every item stored
and queued exactly once, at most 2,048 bytes of Redis per item, and the API answering meanwhile.

No worker runs, so every item stays queued: what is measured is what accepting leaves in Redis. The
timing targets (under 5 s to accept, p99 under 200 ms for other requests) are benchmark figures
(``scripts/bench_batch.py``, docs/batches.md#big-batches), not assertions here.
"""
from __future__ import annotations

import base64
import json
import threading
from collections import defaultdict
from typing import Any

import redis
import requests

from tasks import keys
from tasks.celery_app import BULK_QUEUE

ITEMS = 10_000
#: Redis bytes one item may add at most, all-in except its broker message (issue 13).
MAX_BYTES_PER_ITEM = 2048


def _memory_by_family(client: redis.Redis) -> dict[str, int]:
    """MEMORY USAGE (exact) of every key of the database, summed per family: the broker's queues and
    bindings (``broker``) apart from the service's own records, indexes and batch structures (``tts``)."""
    sums: dict[str, int] = defaultdict(int)
    names = [k.decode() for k in client.scan_iter(count=1000)]
    for start in range(0, len(names), 1000):
        chunk = names[start:start + 1000]
        pipe = client.pipeline(transaction=False)
        for name in chunk:
            pipe.memory_usage(name, samples=0)
        for name, used in zip(chunk, pipe.execute()):
            sums["tts" if name.startswith(keys.PREFIX) else "broker"] += int(used or 0)
    return dict(sums)


def test_a_10000_item_batch_is_accepted_stored_and_queued_once_within_2_kb_per_item(make_stack, api_process):
    stack = make_stack(start=False)  # no worker: the items stay queued
    api = api_process(stack.env)
    client = stack.redis
    single = requests.post(api.url + "/v1/jobs", json={"text": "A single job.", "cache": False}, timeout=30)
    assert single.status_code == 202, single.text
    single_id = single.json()["id"]
    before = _memory_by_family(client)

    body = {"inputs": [{"text": f"Item number {i} of the big batch."} for i in range(ITEMS)],
            "defaults": {"voice": "heart", "format": "mp3"}}
    answer: dict[str, Any] = {}

    def submit() -> None:
        answer["response"] = requests.post(api.url + "/v1/batches", json=body, timeout=300)

    submitting = threading.Thread(target=submit)
    submitting.start()
    during: list[tuple[str, int]] = []  # (what, status) of calls answered while the submit was in flight
    while submitting.is_alive():
        for what, url in (("job", f"/v1/jobs/{single_id}"), ("batches", "/v1/batches?limit=5"),
                          ("live", "/health/live")):
            r = requests.get(api.url + url, timeout=60)
            if submitting.is_alive():
                during.append((what, r.status_code))
    submitting.join()

    response = answer["response"]
    assert response.status_code == 202, response.text[:500]
    batch = response.json()
    assert batch["counts"]["total"] == ITEMS and batch["counts"]["queued"] == ITEMS
    assert batch["rejected"] == []
    assert during, "no other request was answered while the batch was being accepted"
    assert all(status == 200 for _, status in during), during

    # Every item is stored once, in input order, as a queued job of this batch.
    item_ids = [i.decode() for i in client.lrange(keys.batch_items(batch["id"]), 0, -1)]
    assert len(item_ids) == ITEMS == len(set(item_ids))
    pipe = client.pipeline(transaction=False)
    for job_id in item_ids:
        pipe.hmget(keys.job(job_id), ["status", "batch_id", "batch_index", "task_id"])
    records = pipe.execute()
    assert [(s, b, int(n)) for s, b, n, _ in records] == [(b"queued", batch["id"].encode(), n) for n in range(ITEMS)]
    task_ids = {t.decode() for *_, t in records}
    assert len(task_ids) == ITEMS

    # ... and queued once: one message per item on the bulk queue, naming the record's task id and job.
    messages = [json.loads(m) for m in client.lrange(BULK_QUEUE, 0, -1)]
    assert len(messages) == ITEMS
    sent = {m["headers"]["id"]: json.loads(base64.b64decode(m["body"]))[0][0] for m in messages}
    assert set(sent) == task_ids
    assert sorted(sent.values()) == sorted(item_ids)

    # Redis keeps at most 2 KB per item: records, indexes and the batch's structures (no audio yet).
    after = _memory_by_family(client)
    per_item = (after["tts"] - before["tts"]) / ITEMS
    broker_per_item = (after.get("broker", 0) - before.get("broker", 0)) / ITEMS
    print(f"Redis per item: {per_item:.0f} B of records, indexes and batch structures, "
          f"{broker_per_item:.0f} B of broker message")
    assert per_item < MAX_BYTES_PER_ITEM, per_item
    # The batch reads back, and its items page through, while all of it is queued.
    assert requests.get(f"{api.url}/v1/batches/{batch['id']}", timeout=30).json()["counts"]["queued"] == ITEMS
    page = requests.get(f"{api.url}/v1/batches/{batch['id']}/items?limit=3&cursor=9997", timeout=30).json()
    assert [i["index"] for i in page["items"]] == [9997, 9998, 9999] and page["next_cursor"] is None

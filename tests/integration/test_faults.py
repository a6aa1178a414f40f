"""Faults the pipeline must survive: transient errors, permanent errors, dead workers, dead Redis.

The fault switch (``TTS_FAULT_INJECTION``) is a worker setting, unreachable from the API.
"""
from __future__ import annotations

import time
import uuid

import pytest

from monitoring.queues import UNACKED_KEY, queue_lengths
from tasks.celery_app import WEBHOOK_QUEUE

pytestmark = pytest.mark.integration


#: What Celery's consumer logs when its broker connection drops.
BROKER_LOST = "Connection to broker lost"


def unique(text: str) -> str:
    return f"{text} Tag {uuid.uuid4().hex[:6]}."


@pytest.mark.both_brokers
def test_transient_faults_retry_with_growing_backoff_then_succeed(make_stack, broker):
    # RabbitMQ delays in whole seconds (rounded up: tasks.celery_app), so there the base is 1 s.
    base = 0.3 if broker == "redis" else 1.0
    stack = make_stack(TTS_FAULT_INJECTION="transient:2", TTS_RETRY_JITTER="false",
                       TTS_BASE_DELAY_MS=str(int(base * 1000)), TTS_MAX_ATTEMPTS="3")
    job_id = stack.client.post("/v1/jobs", json={"text": unique("Try, try again."), "voice": "heart"}).get_json()["id"]
    done = stack.wait_for(job_id)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 3
    history = done["history"]
    assert [h["outcome"] for h in history] == ["failed", "failed", "succeeded"]
    assert all("injected transient fault" in h["error"] for h in history[:2])
    # Without jitter the delays are exactly base * 2**(n-1): 0.3 s, then 0.6 s (1 s, then 2 s).
    assert [h["retry_in"] for h in history[:2]] == [base, 2 * base]
    gap1 = history[1]["started_at"] - history[0]["finished_at"]
    gap2 = history[2]["started_at"] - history[1]["finished_at"]
    assert gap1 >= base - 0.02
    assert gap2 >= 2 * base - 0.02
    assert gap2 < 2 * base + 5  # the delayed message itself came back, not the reconciler's overdue sweep
    assert gap2 > gap1
    assert stack.client.get(f"/v1/jobs/{job_id}/audio").status_code == 200
    assert stack.client.get("/v1/dlq").get_json()["total"] == 0


def test_transient_faults_exhausted_go_to_the_dlq(make_stack):
    stack = make_stack(TTS_FAULT_INJECTION="transient:5", TTS_MAX_ATTEMPTS="2", TTS_BASE_DELAY_MS="50")
    job_id = stack.client.post("/v1/jobs", json={"text": unique("Never works."), "voice": "heart"}).get_json()["id"]
    done = stack.wait_for(job_id)
    assert done["status"] == "failed"
    assert done["attempts"] == 2
    assert done["error"]["code"] == "retry_exhausted"
    dlq = stack.client.get("/v1/dlq").get_json()
    assert dlq["total"] == 1
    assert dlq["items"][0]["error_type"] == "SynthesisRuntimeError"


@pytest.mark.both_brokers
def test_permanent_fault_dead_letters_once_and_replay_succeeds(make_stack):
    stack = make_stack(TTS_FAULT_INJECTION="permanent")
    client = stack.client
    text = unique("This request will be dead-lettered.")
    r = client.post("/v1/jobs", json={"text": text, "voice": "heart"}, headers={"X-Request-ID": "req-perm-1"})
    job_id = r.get_json()["id"]
    done = stack.wait_for(job_id)
    assert done["status"] == "failed"
    assert done["attempts"] == 1  # permanent: no retry
    dlq = client.get("/v1/dlq").get_json()
    assert dlq["total"] == 1
    record = dlq["items"][0]
    assert record["job_id"] == job_id
    assert record["request"]["characters"] == len(text) and "text" not in record["request"]  # the list: lengths
    assert client.get(f"/v1/dlq/{job_id}").get_json()["request"]["text"] == text  # one record: in full
    assert record["error_type"] == "EngineError"
    assert "injected permanent fault" in record["error"]
    assert "Traceback" in record["traceback"]
    assert record["attempts"] == 1
    assert record["correlation_id"] == "req-perm-1"
    assert record["worker"]
    assert record["failed_at"]
    assert client.get(f"/v1/dlq/{job_id}").status_code == 200

    # The fault is fixed: a worker without it takes over, and the replay succeeds.
    # The job record says failed while the dead-lettering task is still finishing: its message
    # is acknowledged only after the task returns (acks_late). Stopping the worker before that
    # puts the message back in the queue, and the next worker would run that stale delivery
    # next to the replay's own (attempts == 2). So the first series must be over, acked.
    stack.wait_idle()
    stack.stop()
    assert stack.broker_idle(), "the first attempt's message came back to the queue"
    stack.workers.clear()
    stack.start_worker(TTS_FAULT_INJECTION="")
    r = client.post(f"/v1/dlq/{job_id}/replay")
    assert r.status_code == 202
    replayed = stack.wait_for(job_id)
    assert replayed["status"] == "succeeded", replayed
    assert replayed["attempts"] == 1  # a fresh attempt series
    assert client.get("/v1/dlq").get_json()["total"] == 0
    assert client.post(f"/v1/dlq/{job_id}/replay").status_code == 404


def test_dlq_delete_and_purge(make_stack):
    stack = make_stack(TTS_FAULT_INJECTION="permanent")
    client = stack.client
    ids = [client.post("/v1/jobs", json={"text": unique(f"Doomed {i}."), "voice": "heart"}).get_json()["id"]
           for i in range(3)]
    for job_id in ids:
        assert stack.wait_for(job_id)["status"] == "failed"
    assert client.get("/v1/dlq").get_json()["total"] == 3
    assert client.delete(f"/v1/dlq/{ids[0]}").status_code == 200
    assert client.delete(f"/v1/dlq/{ids[0]}").status_code == 404
    assert client.delete("/v1/dlq").get_json() == {"purged": 2}
    assert client.get("/v1/dlq").get_json()["total"] == 0


@pytest.mark.both_brokers
def test_worker_killed_mid_task_still_finishes_the_job(make_stack):
    # Short visibility timeout so the dead worker's unacknowledged message comes back quickly.
    stack = make_stack(TTS_VISIBILITY_TIMEOUT="20", TTS_TASK_TIME_LIMIT="18", TTS_TASK_SOFT_TIME_LIMIT="15",
                       TTS_MAX_DELAY_MS="2000")
    client = stack.client
    text = unique("A worker may die at any moment, and the job must survive it. " * 12)
    job_id = client.post("/v1/jobs", json={"text": text, "voice": "joe", "format": "wav"}).get_json()["id"]
    stack.wait_for(job_id, statuses=("running",), timeout=60)
    stack.workers[0].kill()  # SIGKILL to the main process and its children
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "running"
    stack.start_worker()
    done = stack.wait_for(job_id, timeout=120)
    assert done["status"] == "succeeded", (done, stack.workers[1].log_tail())
    assert done["attempts"] == 2
    assert client.get(f"/v1/jobs/{job_id}/audio").status_code == 200


@pytest.mark.both_brokers
def test_poison_job_that_kills_its_worker_is_dead_lettered(make_stack):
    stack = make_stack(TTS_FAULT_INJECTION="crash", TTS_MAX_ATTEMPTS="2")
    client = stack.client
    job_id = client.post("/v1/jobs", json={"text": unique("I crash the worker."), "voice": "heart"}).get_json()["id"]
    done = stack.wait_for(job_id, timeout=120)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_lost"
    records = client.get("/v1/dlq").get_json()["items"]
    assert [r["job_id"] for r in records] == [job_id]
    assert records[0]["error_type"] == "WorkerLostError"
    # The worker survived its children's deaths and still works.
    assert stack.workers[0].proc.poll() is None


def test_redis_down_gives_quick_503_then_recovers(make_stack, own_redis):
    server = own_redis
    client = make_stack(start=False, server=server).client
    body = {"text": "Are you there?", "voice": "heart"}
    accepted = client.post("/v1/jobs", json=body)
    assert accepted.status_code == 202
    job_id = accepted.get_json()["id"]

    server.kill()
    for request in (lambda: client.post("/v1/jobs", json=body),
                    lambda: client.get(f"/v1/jobs/{job_id}"),
                    lambda: client.get("/v1/jobs")):
        started = time.monotonic()
        r = request()
        elapsed = time.monotonic() - started
        assert r.status_code == 503, r.get_data(as_text=True)
        assert r.headers["Retry-After"]
        assert r.get_json()["error"]["code"] == "service_unavailable"
        assert elapsed < 2.5, f"took {elapsed:.2f}s"
    health = client.get("/health")
    assert health.status_code == 503

    server.restart()
    # The job accepted before the outage survived it (append-only file).
    assert client.get(f"/v1/jobs/{job_id}").get_json()["status"] == "queued"
    again = client.post("/v1/jobs", json={**body, "text": "Back again?"})
    assert again.status_code == 202
    assert client.get("/health").status_code in (200, 503)  # no worker here; Redis itself is back


def test_redis_restart_loses_no_accepted_job_and_workers_reconnect(make_stack, own_redis):
    server = own_redis  # this test's own, so killing it disturbs nobody else
    stack = make_stack(start=False, server=server)
    client = stack.client
    queued = [client.post("/v1/jobs", json={"text": unique(f"Accepted before the crash {i}."),
                                            "voice": "heart"}).get_json()["id"] for i in range(3)]
    server.kill()  # SIGKILL: no shutdown save, only the append-only file survives
    server.restart()
    stack.start_worker()
    for job_id in queued:
        assert stack.wait_for(job_id)["status"] == "succeeded"

    # Redis goes away under a running worker, comes back, and the worker carries on.
    worker = stack.workers[0]
    lost_before = worker.log_path.read_text(errors="replace").count(BROKER_LOST)
    server.kill()
    stack.wait_until(lambda: worker.log_path.read_text(errors="replace").count(BROKER_LOST) > lost_before,
                     timeout=30, what="the worker noticing that Redis went away")
    server.restart()
    after = client.post("/v1/jobs", json={"text": unique("After the restart."), "voice": "heart"})
    assert after.status_code == 202
    assert stack.wait_for(after.get_json()["id"], timeout=120)["status"] == "succeeded"
    assert stack.workers[0].proc.poll() is None


#: A stack whose workers may deliver callbacks to the test's receiver on 127.0.0.1, with a short
#: lease: an outbox entry older than a lease period is the reconciler's to queue.
CALLBACK_SECRET = "fault-callback-secret"
CALLBACKS = {"TTS_CALLBACK_ALLOWED_NETWORKS": "127.0.0.1/32", "TTS_WEBHOOK_SECRET": CALLBACK_SECRET,
             "TTS_LEASE_SECONDS": "5"}


def callbacks_settled(stack) -> bool:
    """No ``tts.deliver_callback`` message waits in the webhooks queue or is delivered but unacknowledged."""
    client = stack.redis
    try:
        in_flight = [raw for raw in client.hvals(UNACKED_KEY) if b"tts.deliver_callback" in raw]
        return not in_flight and not queue_lengths(client, [WEBHOOK_QUEUE])[WEBHOOK_QUEUE]
    finally:
        client.close()


@pytest.mark.parametrize("recovery", ["a fresh worker", "the surviving main process"])
def test_a_child_killed_between_the_final_transition_and_the_callback_still_delivers_it(make_stack, receiver,
                                                                                        recovery):
    stack = make_stack(start=False, **CALLBACKS)
    fresh = recovery == "a fresh worker"
    # crash_before_callback: the child SIGKILLs itself right after the job's final transition
    # committed, before any finished-hook could queue the callback. With a fresh worker to
    # come, this one never sweeps (an hour between sweeps), so nothing can cover for it.
    doomed = stack.start_worker(TTS_FAULT_INJECTION="crash_before_callback",
                                TTS_RECONCILE_INTERVAL="3600" if fresh else "1")
    r = stack.client.post("/v1/jobs", json={"text": unique("Call me when it is done."), "voice": "heart",
                                            "callback_url": receiver.url("/hook?token=t")})
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "succeeded"
    stack.wait_until(lambda: f"after job {job_id} finished, before its hooks" in doomed.log_tail(400), 30,
                     "the child killing itself after the final transition")
    if fresh:
        # The requeued message finds the job finished and does nothing: the callback is only owed
        stack.wait_idle()
        assert stack.redis.zscore("tts:callbacks:outbox", job_id) is not None
        assert stack.client.get(f"/v1/jobs/{job_id}").get_json()["callback"] == {
            "url": receiver.url("/hook?…"), "status": "pending", "attempts": 0, "last_error": None}
        assert receiver.posts() == []
        doomed.kill()  # and the rest of that worker with it
        stack.start_worker(TTS_RECONCILE_INTERVAL="1")
    state = stack.wait_until(lambda: (c := stack.client.get(f"/v1/jobs/{job_id}").get_json()["callback"])
                             .get("status") == "delivered" and c, 90, "the callback delivered")
    # No callback delivery queued or waiting for a retry: no further POST can come. (Not the whole
    # broker: the killed worker's last synthesize message may sit unacknowledged until the
    # visibility timeout, and it only finds the job finished.)
    stack.wait_until(lambda: callbacks_settled(stack), 60, "no callback delivery queued or in flight")
    hits = receiver.posts()
    assert hits, "delivered, yet the receiver got nothing"
    assert {hit.headers["X-TTS-Delivery"] for hit in hits} == {state["delivery_id"]}  # one id, however many POSTs
    assert all(hit.signed_with(CALLBACK_SECRET) and hit.path == "/hook?token=t" for hit in hits)
    assert {(hit.json["event"], hit.json["job"]["id"], hit.json["job"]["status"]) for hit in hits} == {
        ("job.succeeded", job_id, "succeeded")}
    assert state["attempts"] >= 1 and state["queued_at"] and state["last_error"] is None
    assert stack.redis.zscore("tts:callbacks:outbox", job_id) is None
    logs = "\n".join(worker.log_tail(400) for worker in stack.workers)
    assert "callback outbox: queued 1 callback(s) that their process never queued" in logs
    done = stack.client.get(f"/v1/jobs/{job_id}").get_json()
    assert [entry["outcome"] for entry in done["history"]].count("succeeded") == 1  # the job itself finished once


def test_a_batch_item_finished_by_a_killed_child_is_still_counted_and_the_batch_finishes(make_stack):
    stack = make_stack(start=False)
    # The child dies right after each item's final transition, before the hook that counts the
    # item in its batch; this worker never sweeps, so nothing covers for it.
    doomed = stack.start_worker(TTS_FAULT_INJECTION="crash_before_callback", TTS_RECONCILE_INTERVAL="3600")
    r = stack.client.post("/v1/batches", json={"inputs": [{"text": unique("First item.")},
                                                          {"text": unique("Second item.")}],
                                               "defaults": {"voice": "joe", "format": "wav", "cache": False}})
    assert r.status_code == 202, r.get_json()
    batch_id = r.get_json()["id"]
    items = [i["id"] for i in stack.client.get(f"/v1/batches/{batch_id}/items").get_json()["items"]]
    for job_id in items:
        assert stack.wait_for(job_id)["status"] == "succeeded"
    stack.wait_until(lambda: all(f"after job {j} finished, before its hooks" in doomed.log_tail(400) for j in items),
                     60, "the child killing itself after each item's final transition")
    stack.wait_idle()
    batch = stack.client.get(f"/v1/batches/{batch_id}").get_json()
    assert batch["status"] == "running" and batch["counts"]["succeeded"] == 0  # both counts were lost with the child
    assert {m.decode() for m in stack.redis.zrange("tts:batches:uncounted", 0, -1)} == set(items)
    doomed.kill()
    stack.start_worker(TTS_RECONCILE_INTERVAL="1", TTS_LEASE_SECONDS="3")
    done = stack.wait_until(lambda: (b := stack.client.get(f"/v1/batches/{batch_id}").get_json())["status"]
                            == "succeeded" and b, 60, "the batch counted and finished")
    assert done["counts"]["succeeded"] == 2 and done["percent_done"] == 100.0 and done["finished_at"]
    assert stack.redis.zcard("tts:batches:uncounted") == 0
    logs = "\n".join(worker.log_tail(400) for worker in stack.workers)
    assert logs.count("finished but never counted") == 2

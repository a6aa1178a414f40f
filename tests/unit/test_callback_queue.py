"""Per-job and per-batch callbacks on fakeredis and kombu's in-memory broker: secrets, payloads,
the delivery state in the record, queueing exactly once per final state, and the outbox that
keeps a callback owed across a process that dies before queueing it."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import kombu.exceptions
import pytest
from unit_helpers import drain, memory_app

from monitoring.recorder import CALLBACK_DELIVERIES
from settings import Settings
from tasks import batches, callbacks, keys, lifecycle
from tasks.batches import Batch, on_items_finished
from tasks.callbacks import (
    CALLBACK_TASK,
    CallbackState,
    Outcome,
    check_callback_url,
    check_signing_secret,
    deliver_callback,
    job_payload,
    on_jobs_finished,
    queue_batch_callback,
    queue_job_callback,
    signing_secret,
    sweep_outbox,
)
from tasks.celery_app import WEBHOOK_QUEUE, celery_app
from tasks.exceptions import CallbackRefused, CallbacksUnavailable
from tasks.job import Job, now
from tasks.runtime import Runtime, reset_runtime
from tasks.status import JobStatus
from tasks.tenants import KeyStore

TEXT = "The quarterly numbers nobody may read."
URL = "https://hooks.example.com/tts?token=s3cret"


def runtime(**settings: Any) -> Runtime:
    rt = Runtime(Settings(redis_url="redis://fake/0", **settings))
    rt.redis = fakeredis.FakeRedis()  # the cached property, set before first use
    rt.celery = memory_app("test-callbacks")
    drain(rt.celery, WEBHOOK_QUEUE)
    return rt


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime_ = runtime(webhook_secret="operator-secret")
    app = runtime_.celery
    yield runtime_
    drain(app, WEBHOOK_QUEUE)


def stored_job(rt: Runtime, status: JobStatus = JobStatus.SUCCEEDED, outbox: bool = False, **fields: Any) -> Job:
    """A job record; ``outbox``: stored with its outbox member, as a final transition leaves it."""
    created = now()
    fields.setdefault("callback_url", URL)
    fields.setdefault("finished_at", created + 1.5)
    job = Job(id=fields.pop("id", f"job{len(rt.redis.keys('tts:job:*'))}"), text=TEXT, voice="heart", status=status,
              created_at=created, queued_at=created, started_at=created, attempts=1, correlation_id="req-7",
              duration=2.5, **fields)
    rt.jobs.create(job, outbox=job.id if outbox else None)
    return job


def queued(rt: Runtime) -> list[dict[str, Any]]:
    return [m for m in drain(rt.celery, WEBHOOK_QUEUE) if m["task"] == CALLBACK_TASK]


def outbox(rt: Runtime) -> list[str]:
    """The outbox's members, oldest first."""
    return [m.decode() for m in rt.redis.zrange(keys.CALLBACK_OUTBOX, 0, -1)]


# --- secrets ------------------------------------------------------------------------------------
def test_operator_keys_and_open_mode_sign_with_the_webhook_secret(rt: Runtime) -> None:
    for key_id in (None, "open", "bootstrap-0", "bootstrap-3"):
        assert signing_secret(rt, key_id) == "operator-secret"
        check_signing_secret(rt, URL, key_id)


def test_without_a_webhook_secret_an_operator_key_cannot_ask_for_callbacks() -> None:
    rt = runtime(webhook_secret="  ")
    assert signing_secret(rt, None) is None
    with pytest.raises(CallbacksUnavailable) as info:
        check_signing_secret(rt, URL, "bootstrap-0")
    assert info.value.code == "callbacks_unavailable" and info.value.param == "callback_url"
    check_signing_secret(rt, None, "bootstrap-0")  # no callback_url: nothing to sign


def test_a_managed_key_signs_with_its_own_secret_until_it_is_revoked() -> None:
    rt = runtime(webhook_secret="")
    store = KeyStore(rt.redis)
    record, _ = store.create("acme")
    assert signing_secret(rt, record.id) == record.callback_secret != ""
    check_signing_secret(rt, URL, record.id)  # no TTS_WEBHOOK_SECRET needed
    store.revoke(record.id)
    assert signing_secret(rt, record.id) is None
    assert signing_secret(rt, "0123456789ab") is None  # unknown key


# --- the submit-time check ---------------------------------------------------------------------
def test_submit_time_check_refuses_literal_addresses_but_resolves_no_name() -> None:
    settings = Settings()
    for url in ("http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/"):
        with pytest.raises(CallbackRefused) as info:
            check_callback_url(url, settings)
        assert info.value.param == "callback_url"
    # a name is checked at delivery, against what it resolves to then
    assert check_callback_url("http://localhost:8080/hook", settings) == "http://localhost:8080/hook"
    assert check_callback_url("https://no-such-host.invalid/hook", settings) == "https://no-such-host.invalid/hook"
    assert check_callback_url(None, settings) is None
    allowing = Settings(callback_allowed_networks=("127.0.0.1/32",))
    assert check_callback_url("http://127.0.0.1:8080/", allowing) == "http://127.0.0.1:8080/"



# --- payloads -----------------------------------------------------------------------------------
def test_a_job_payload_never_carries_the_text_or_the_error_message(rt: Runtime) -> None:
    job = stored_job(rt, JobStatus.FAILED, error=f"could not speak {TEXT!r}", error_code="synthesis_failed",
                     error_type="SynthesisError", tenant="acme", batch_id="b1", batch_index=4)
    payload = job_payload(job, JobStatus.FAILED, "d1")
    encoded = json.dumps(payload)
    assert "quarterly" not in encoded
    assert payload["event"] == "job.failed" and payload["id"] == "d1" and payload["correlation_id"] == "req-7"
    body = payload["job"]
    assert (body["id"], body["status"], body["tenant"], body["batch_id"], body["batch_index"]) == (
        job.id, "failed", "acme", "b1", 4)
    assert body["error"] == {"code": "synthesis_failed", "type": "SynthesisError"}
    assert body["links"] == {"self": f"/v1/jobs/{job.id}"}
    assert body["finished_at"].endswith("Z") and body["duration_seconds"] is None


def test_a_succeeded_job_payload_links_its_audio(rt: Runtime) -> None:
    body = job_payload(stored_job(rt), JobStatus.SUCCEEDED, "d2")["job"]
    assert body["links"]["audio"] == f"/v1/jobs/{body['id']}/audio"
    assert body["error"] is None and body["duration_seconds"] == 2.5


# --- queueing once --------------------------------------------------------------------------------
def test_a_finished_job_queues_one_callback_and_records_it_pending(rt: Runtime) -> None:
    job = stored_job(rt)
    lifecycle.finished(rt, [job])  # the hook is registered with the lifecycle
    (message,) = queued(rt)
    subject, url, payload = message["args"]
    assert subject == {"kind": "job", "id": job.id, "key_id": None}
    assert url == URL
    assert payload["event"] == "job.succeeded" and message["id"] == payload["id"]
    assert message["routing_key"] == WEBHOOK_QUEUE
    shown = rt.jobs.get(job.id).public()["callback"]
    assert shown["status"] == "pending" and shown["attempts"] == 0 and shown["delivery_id"] == payload["id"]
    assert shown["url"] == "https://hooks.example.com/tts?…"  # the token is not shown


def test_the_same_final_state_is_never_queued_twice(rt: Runtime) -> None:
    job = stored_job(rt)
    assert queue_job_callback(rt, job) is Outcome.QUEUED
    assert queue_job_callback(rt, job) is Outcome.SETTLED
    on_jobs_finished(rt, [job])
    assert len(queued(rt)) == 1


def test_a_new_final_state_after_a_replay_is_a_new_callback(rt: Runtime) -> None:
    job = stored_job(rt, JobStatus.FAILED, error_code="synthesis_failed")
    assert queue_job_callback(rt, job) is Outcome.QUEUED
    rt.jobs.update(job.id, status=JobStatus.SUCCEEDED, finished_at=now() + 60)
    job.status = JobStatus.SUCCEEDED
    assert queue_job_callback(rt, job) is Outcome.QUEUED
    first, second = queued(rt)
    assert first["args"][2]["event"] == "job.failed" and second["args"][2]["event"] == "job.succeeded"
    assert first["id"] != second["id"]


def test_jobs_without_a_callback_url_or_unfinished_queue_nothing(rt: Runtime) -> None:
    plain = stored_job(rt, callback_url=None)
    running = stored_job(rt, JobStatus.RUNNING)
    on_jobs_finished(rt, [plain, running])
    assert queued(rt) == []


def test_an_expired_record_is_neither_queued_nor_recreated(rt: Runtime) -> None:
    ghost = Job(id="gone", text=TEXT, voice="heart", status=JobStatus.SUCCEEDED, callback_url=URL)
    assert queue_job_callback(rt, ghost) is Outcome.SETTLED
    assert not rt.redis.exists(keys.job("gone"))
    assert CallbackState(rt.redis, keys.job("gone"), "d").update(status="delivered") is False
    assert not rt.redis.exists(keys.job("gone"))


class BrokenBroker:
    """A Celery app whose broker is down (only what queueing calls)."""

    def send_task(self, *args: Any, **kwargs: Any) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to the broker")


def test_a_broker_failure_is_recorded_never_raised_and_left_in_the_outbox(rt: Runtime) -> None:
    job = stored_job(rt, outbox=True)
    app, rt.celery = rt.celery, BrokenBroker()
    assert queue_job_callback(rt, job) is Outcome.LEFT
    state = rt.jobs.get(job.id).callback
    assert state is not None and state["status"] == "pending" and state["attempts"] == 0
    assert "could not be queued" in state["last_error"] and "queued_at" not in state
    assert outbox(rt) == [job.id]  # still owed
    rt.celery = app  # the broker is back: the sweep queues it, with the id claimed before
    assert sweep_outbox(rt, grace=0) == 1
    (message,) = queued(rt)
    assert message["id"] == state["delivery_id"] and outbox(rt) == []


def test_the_state_only_changes_for_its_own_delivery(rt: Runtime) -> None:
    job = stored_job(rt)
    key = keys.job(job.id)
    assert CallbackState(rt.redis, key, "old").begin(URL, "job.failed")
    assert CallbackState(rt.redis, key, "new").begin(URL, "job.succeeded")
    assert CallbackState(rt.redis, key, "old").update(status="failed") is False  # a replay's newer one stays
    assert CallbackState(rt.redis, key, "new").update(status="delivered", attempts=1)
    assert rt.jobs.get(job.id).callback["status"] == "delivered"


def test_a_batch_callback_is_queued_once_when_its_last_item_finishes(rt: Runtime) -> None:
    batch_id = "batch1"
    items = [stored_job(rt, JobStatus.QUEUED, callback_url=None, batch_id=batch_id, batch_index=i) for i in range(2)]
    rt.redis.hset(keys.batch(batch_id), mapping={"id": batch_id, "total": 2, "created_at": now(), "finished": 0,
                                                 "callback_url": URL, "tenant": "acme"})
    for n, job in enumerate(items):
        rt.jobs.update(job.id, status=JobStatus.SUCCEEDED)
        job.status, job.duration = JobStatus.SUCCEEDED, 1.0
        on_items_finished(rt, [job])
        on_items_finished(rt, [job])  # a redelivered finish counts once
        messages = queued(rt)
        assert len(messages) == (1 if n == 1 else 0)
    (subject, url, payload) = messages[0]["args"]
    assert subject == {"kind": "batch", "id": batch_id, "key_id": None} and url == URL
    assert payload["event"] == "batch.finished"
    assert payload["batch"]["status"] == "succeeded" and payload["batch"]["counts"]["succeeded"] == 2
    assert payload["batch"]["tenant"] == "acme"
    assert queue_batch_callback(rt, batch_id, URL, None, payload["batch"] | {"links": None}) is Outcome.SETTLED
    data = rt.redis.hgetall(keys.batch(batch_id))
    shown = Batch.from_redis(batch_id, data).public()["callback"]
    assert shown["status"] == "pending" and shown["delivery_id"] == payload["id"]


# --- the delivery task, for what needs no network -----------------------------------------------
@pytest.fixture
def eager(rt: Runtime) -> Iterator[Runtime]:
    """The delivery task run eagerly against ``rt`` (its process runtime)."""
    process = reset_runtime(rt.settings)
    process.redis = rt.redis
    saved = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = True, False
    try:
        yield rt
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = saved
        reset_runtime()


def test_a_refused_address_is_given_up_at_once(eager: Runtime) -> None:
    job = stored_job(eager)
    assert queue_job_callback(eager, job)
    (message,) = queued(eager)
    subject, _, payload = message["args"]
    result = deliver_callback.apply(args=[subject, "http://169.254.169.254/latest/meta-data/", payload])
    assert result.get() == "refused"
    state = eager.jobs.get(job.id).callback
    assert state["status"] == "refused" and state["attempts"] == 1 and "link-local" in state["last_error"]
    assert eager.jobs.get(job.id).status is JobStatus.SUCCEEDED


def test_nothing_is_sent_without_a_secret(eager: Runtime) -> None:
    job = stored_job(eager, key_id="0123456789ab")  # a managed key that no longer exists
    assert queue_job_callback(eager, job)
    (message,) = queued(eager)
    subject, url, payload = message["args"]
    assert deliver_callback.apply(args=[subject, url, payload]).get() == "failed"
    assert "nothing to sign it with" in eager.jobs.get(job.id).callback["last_error"]


def test_the_task_lands_on_the_webhooks_queue() -> None:
    assert deliver_callback.name == CALLBACK_TASK and deliver_callback.queue == WEBHOOK_QUEUE
    # queued with an explicit queue (test above); no route of celery_app sends it elsewhere by name
    assert celery_app.amqp.router.route({"queue": WEBHOOK_QUEUE}, CALLBACK_TASK)["queue"].name == WEBHOOK_QUEUE
    assert callbacks.deliver_callback.max_retries + 1 == callbacks.delivery_attempts(Settings())


def test_each_attempt_is_counted_by_outcome(eager: Runtime) -> None:
    job = stored_job(eager)
    assert queue_job_callback(eager, job) is Outcome.QUEUED
    (message,) = queued(eager)
    subject, _, payload = message["args"]
    deliver_callback.apply(args=[subject, "http://169.254.169.254/", payload])
    assert eager.metrics.counter_total(CALLBACK_DELIVERIES, outcome="refused", event="job.succeeded") == 1
    assert eager.metrics.counter_total(CALLBACK_DELIVERIES, outcome="delivered") == 0


# --- the outbox: a callback stays owed until its delivery task is queued --------------------------
@pytest.fixture
def no_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifecycle's finished-hooks never run: a process killed right after a final transition."""
    monkeypatch.setattr(lifecycle, "_finished_hooks", [])


def test_the_final_transition_puts_the_callback_in_the_outbox_in_its_own_transaction(rt: Runtime,
                                                                                    no_hooks: None) -> None:
    job = stored_job(rt, JobStatus.RUNNING, finished_at=None)
    plain = stored_job(rt, JobStatus.RUNNING, finished_at=None, callback_url=None)
    assert lifecycle.cancel_jobs(rt, [job, plain]) == [job, plain]
    assert outbox(rt) == [job.id]  # and nothing for the job that asked for no callback
    assert queued(rt) == [] and rt.jobs.get(job.id).callback is None  # the hook never ran
    assert sweep_outbox(rt, grace=60) == 0 and outbox(rt) == [job.id]  # too young: a live hook may be at it
    assert sweep_outbox(rt, grace=0) == 1
    (message,) = queued(rt)
    record = rt.jobs.get(job.id)
    assert message["args"][2]["event"] == "job.cancelled"
    assert message["id"] == callbacks.delivery_id("job", job.id, "cancelled", record.finished_at)  # the hook's id
    assert record.callback is not None and record.callback["queued_at"] and record.callback["status"] == "pending"
    assert outbox(rt) == []
    assert sweep_outbox(rt, grace=0) == 0 and queued(rt) == []


def test_a_hook_that_queues_takes_the_member_out(rt: Runtime) -> None:
    job = stored_job(rt, JobStatus.RUNNING, finished_at=None)
    lifecycle.cancel_jobs(rt, [job])
    assert len(queued(rt)) == 1 and outbox(rt) == []
    assert rt.jobs.get(job.id).callback["queued_at"]


def test_a_crash_after_the_publish_queues_it_again_with_the_same_id(rt: Runtime) -> None:
    job = stored_job(rt, outbox=True)
    state = CallbackState(rt.redis, keys.job(job.id), callbacks.delivery_id("job", job.id, "succeeded",
                                                                             job.finished_at))
    assert state.begin(URL, "job.succeeded")  # claimed, published, and the process died before settling
    assert sweep_outbox(rt, grace=0) == 1  # never marked queued: sent again, under the id receivers dedup by
    (message,) = queued(rt)
    assert message["id"] == state.delivery and outbox(rt) == []


def test_a_delivery_whose_task_already_ran_is_not_queued_again(rt: Runtime) -> None:
    job = stored_job(rt, outbox=True)
    delivery = callbacks.delivery_id("job", job.id, "succeeded", job.finished_at)
    state = CallbackState(rt.redis, keys.job(job.id), delivery)
    assert state.begin(URL, "job.succeeded")
    assert state.update(status="delivered", attempts=1)  # the task ran before the member was settled
    assert sweep_outbox(rt, grace=0) == 0
    assert queued(rt) == [] and outbox(rt) == []
    assert rt.jobs.get(job.id).callback["status"] == "delivered"


def test_an_expired_record_leaves_the_outbox_without_a_callback(rt: Runtime) -> None:
    rt.redis.zadd(keys.CALLBACK_OUTBOX, {"gone": now() - 120, "batch:gone": now() - 120})
    assert sweep_outbox(rt, grace=0) == 0
    assert queued(rt) == [] and outbox(rt) == []
    assert not rt.redis.exists(keys.job("gone"), keys.batch("gone"))


def test_a_replayed_job_keeps_its_member_for_its_next_final_state(rt: Runtime) -> None:
    job = stored_job(rt, JobStatus.QUEUED, finished_at=None)  # failed, crashed before its hook, then replayed
    rt.redis.zadd(keys.CALLBACK_OUTBOX, {job.id: now() - 120})
    before = now()
    assert sweep_outbox(rt, grace=10) == 0
    assert queued(rt) == [] and outbox(rt) == [job.id]  # not dropped ...
    assert rt.redis.zscore(keys.CALLBACK_OUTBOX, job.id) >= before  # ... but moved to the back
    assert sweep_outbox(rt, grace=10) == 0  # and not looked at again for a while
    finished_at = now()
    assert rt.jobs.transition(job.id, {JobStatus.QUEUED}, outbox=job.id, status=JobStatus.SUCCEEDED,
                              finished_at=finished_at)
    assert sweep_outbox(rt, grace=0) == 1
    (message,) = queued(rt)
    assert message["id"] == callbacks.delivery_id("job", job.id, "succeeded", finished_at)


def test_settling_an_older_final_state_leaves_the_newer_ones_member(rt: Runtime) -> None:
    job = stored_job(rt, JobStatus.FAILED, outbox=True)
    old = CallbackState(rt.redis, keys.job(job.id), callbacks.delivery_id("job", job.id, "failed", job.finished_at))
    assert old.begin(URL, "job.failed")
    # replayed and finished again before the first hook settled: the member is the new state's debt now
    rt.jobs.update(job.id, status=JobStatus.SUCCEEDED, finished_at=job.finished_at + 60)
    old.settle(job.id, job.finished_at)
    assert outbox(rt) == [job.id]
    assert sweep_outbox(rt, grace=0) == 1
    assert queued(rt)[0]["args"][2]["event"] == "job.succeeded" and outbox(rt) == []


def test_the_sweep_stops_at_the_first_callback_it_cannot_queue(rt: Runtime) -> None:
    jobs = [stored_job(rt, outbox=True) for _ in range(3)]
    app, rt.celery = rt.celery, BrokenBroker()
    assert sweep_outbox(rt, grace=0) == 0
    assert outbox(rt) == [job.id for job in jobs]
    claimed = [rt.jobs.get(job.id).callback for job in jobs]
    assert claimed[0] is not None and all(state is None for state in claimed[1:])  # one try, not three
    rt.celery = app
    assert sweep_outbox(rt, grace=0) == 3 and outbox(rt) == []
    assert len({message["id"] for message in queued(rt)}) == 3


def test_a_batch_finishes_and_owes_its_callback_in_one_transaction(rt: Runtime,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    batch_id = "batch2"
    (item,) = [stored_job(rt, JobStatus.QUEUED, callback_url=None, batch_id=batch_id, batch_index=0)]
    rt.redis.hset(keys.batch(batch_id), mapping={"id": batch_id, "total": 1, "created_at": now(), "finished": 0,
                                                 "callback_url": URL})
    # the process dies right after the transaction that set finished_at: the batch's own hook never queues
    monkeypatch.setattr(batches, "_batch_finished", lambda rt, batch_id: None)
    rt.jobs.update(item.id, status=JobStatus.SUCCEEDED)
    item.status, item.duration = JobStatus.SUCCEEDED, 1.0
    on_items_finished(rt, [item])
    assert rt.redis.hget(keys.batch(batch_id), "finished_at") is not None
    assert outbox(rt) == [f"batch:{batch_id}"] and queued(rt) == []
    assert sweep_outbox(rt, grace=0) == 1  # through the requeuer tasks.batches registered
    (message,) = queued(rt)
    assert message["args"][0] == {"kind": "batch", "id": batch_id, "key_id": None}
    assert message["args"][2]["batch"]["status"] == "succeeded" and outbox(rt) == []
    on_items_finished(rt, [item])  # a redelivered finish: the batch does not finish (nor owe) twice
    assert outbox(rt) == [] and sweep_outbox(rt, grace=0) == 0


def test_a_batch_without_a_callback_owes_nothing(rt: Runtime) -> None:
    batch_id = "batch3"
    item = stored_job(rt, JobStatus.QUEUED, callback_url=None, batch_id=batch_id, batch_index=0)
    rt.redis.hset(keys.batch(batch_id), mapping={"id": batch_id, "total": 1, "created_at": now(), "finished": 0})
    item.status = JobStatus.SUCCEEDED
    on_items_finished(rt, [item])
    assert rt.redis.hget(keys.batch(batch_id), "finished_at") is not None and outbox(rt) == []

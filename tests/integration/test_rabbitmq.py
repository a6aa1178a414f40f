"""RabbitMQ as the broker: what only it has (quorum queues, the delivery limit into our DLQ,
publisher confirms, the consumer timeout), against the local RabbitMQ, each stack in a vhost.

The shared pipeline, fault and chaos tests run on RabbitMQ too (``@pytest.mark.both_brokers``
in test_jobs.py, test_faults.py and test_chaos.py); this file holds what has no Redis twin.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid

import pytest
from kombu import Connection

from monitoring.prometheus import render
from monitoring.queues import broker_queue_lengths
from settings import SettingsError, load_settings
from tasks.celery_app import DEAD_LETTER_QUEUE, QUEUES, SYNTHESIS_QUEUE, celery_config
from tests.conftest import RABBITMQCTL, _rabbitmqctl, _vhost_of, require_rabbitmq

pytestmark = pytest.mark.integration


def unique(text: str) -> str:
    return f"{text} Rabbit {uuid.uuid4().hex[:6]}."


def _queues(stack) -> dict[str, tuple[str, str]]:
    """name -> (type, arguments) of the queues of the stack's vhost."""
    out = _rabbitmqctl("list_queues", "-p", _vhost_of(stack.settings.celery_broker_url), "name", "type", "arguments",
                       "--no-table-headers")
    queues = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            queues[parts[0]] = (parts[1], parts[2])
    return queues


def test_work_queues_are_quorum_with_a_delivery_limit_into_the_dead_letter_queue(make_stack):
    stack = make_stack(broker="amqp", TTS_MAX_ATTEMPTS="4")
    job_id = stack.client.post("/v1/jobs", json={"text": unique("Quorum."), "voice": "heart"}).get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "succeeded"
    queues = _queues(stack)
    for name in QUEUES:
        kind, arguments = queues[name]
        assert kind == "quorum", (name, kind)
        assert re.search(r"x-delivery-limit.{0,8}?14\b", arguments), arguments  # 4 attempts + 10 returns
        assert "tts.dead-letter" in arguments and "at-least-once" in arguments
    assert queues[DEAD_LETTER_QUEUE][0] == "quorum"
    # Celery's native delayed delivery (countdowns of retries) made its delay queues.
    assert any(name.startswith("celery_delayed_") for name in queues)
    # Publisher confirms: a publish returns once RabbitMQ has the message.
    assert celery_config(stack.settings)["broker_transport_options"]["confirm_publish"] is True


def _return_past_the_limit(stack, times: int = 2) -> None:
    """Take the job's message and give it back ``times`` times, as a consumer that dies before the
    attempt counter would (here one that returns it): with a limit of 1, RabbitMQ dead-letters it."""
    with Connection(stack.settings.celery_broker_url) as conn:
        (synthesis,) = [q for q in celery_config(stack.settings)["task_queues"] if q.name == SYNTHESIS_QUEUE]
        queue = conn.SimpleQueue(synthesis, no_ack=False)
        for _ in range(times):
            message = queue.get(timeout=10)
            assert message.headers["task"] == "tts.synthesize"
            message.requeue()
        queue.close()


def test_a_message_past_the_delivery_limit_costs_one_attempt_and_is_sent_again(make_stack):
    """The dead-lettered message counts as a lost attempt; with attempts left the job gets a new
    message and succeeds (a Redis outage that burns a message's returns costs an attempt, not the job)."""
    stack = make_stack(broker="amqp", TTS_BROKER_DELIVERY_LIMIT="1", TTS_MAX_ATTEMPTS="3", TTS_BASE_DELAY_MS="10")
    stack.workers[0].stop()  # it declared the queues and the dead-letter exchange; now nobody consumes
    job_id = stack.client.post("/v1/jobs", json={"text": unique("Returned, then sent again."),
                                                 "voice": "heart"}).get_json()["id"]
    _return_past_the_limit(stack)
    stack.start_worker()
    done = stack.wait_for(job_id, timeout=60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert [h["outcome"] for h in done["history"]] == ["worker_lost", "succeeded"]
    assert "delivery_limit" in done["history"][0]["error"]
    assert stack.client.get("/v1/dlq").get_json()["total"] == 0


def test_a_message_past_the_delivery_limit_on_the_last_attempt_reaches_our_dead_letter_queue(make_stack):
    """With no attempt left the worker fails the job through the one failure path: failed,
    worker_lost, one DLQ record."""
    stack = make_stack(broker="amqp", TTS_BROKER_DELIVERY_LIMIT="1", TTS_MAX_ATTEMPTS="1")
    stack.workers[0].stop()
    job_id = stack.client.post("/v1/jobs", json={"text": unique("Returned again and again."),
                                                 "voice": "heart"}).get_json()["id"]
    _return_past_the_limit(stack)
    stack.start_worker()
    done = stack.wait_for(job_id, timeout=60)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "worker_lost"
    records = stack.client.get("/v1/dlq").get_json()["items"]
    assert [r["job_id"] for r in records] == [job_id]
    assert records[0]["error_type"] == "DeliveryLimitExceeded"
    assert "delivery_limit" in records[0]["error"]
    stack.wait_idle(30)  # the dead letter was acknowledged: nothing left in any queue


def test_queue_lengths_come_from_rabbitmq(make_stack):
    stack = make_stack(broker="amqp", start=False)
    assert broker_queue_lengths(stack.settings, stack.redis, QUEUES) == dict.fromkeys(QUEUES, 0)
    worker = stack.start_worker()
    worker.stop()
    for n in range(3):
        stack.client.post("/v1/jobs", json={"text": unique(f"Waiting {n}."), "voice": "heart"})
    assert broker_queue_lengths(stack.settings, stack.redis, QUEUES)[SYNTHESIS_QUEUE] == 3
    # The Prometheus exposition (API and exporter) and /metrics/json say the same, and no wrong reserved 0.
    body, _ = render(stack.redis, QUEUES, settings=stack.settings)
    text = body.decode()
    assert 'celery_queue_length{queue="synthesis"} 3.0' in text
    assert "celery_task_reserved" not in text
    queues = stack.client.get("/metrics/json").get_json()["queues"]
    assert queues["lengths"][SYNTHESIS_QUEUE] == 3 and queues["reserved"] is None


def test_consumer_timeout_must_exceed_the_hard_time_limit() -> None:
    amqp = {"TTS_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/x"}
    with pytest.raises(SettingsError, match="consumer_timeout"):
        load_settings({**amqp, "TTS_BROKER_CONSUMER_TIMEOUT": "600"})  # hard limit 660 s
    assert load_settings(amqp).broker_consumer_timeout == 1800
    # On Redis the RabbitMQ setting is irrelevant.
    assert load_settings({"TTS_BROKER_CONSUMER_TIMEOUT": "10"}).celery_broker_url.startswith("redis://")
    with pytest.raises(SettingsError, match="TTS_BROKER_URL"):
        load_settings({"TTS_BROKER_URL": "sqs://queue"})


def test_a_broker_on_another_redis_is_refused() -> None:
    """Queue lengths and the reconciler's message scan read the job store's Redis: a second Redis
    as the broker would look empty to both, so the settings refuse it; the job store's own is fine."""
    with pytest.raises(SettingsError, match="other than the job store"):
        load_settings({"REDIS_URL": "redis://records:6379/0", "TTS_BROKER_URL": "redis://queues:6379/0"})
    same = load_settings({"REDIS_URL": "redis://records:6379/0", "TTS_BROKER_URL": "redis://records:6379/0"})
    assert same.celery_broker_url == "redis://records:6379/0" and not same.broker_is_amqp


def test_the_local_rabbitmq_consumer_timeout_is_above_the_hard_time_limit() -> None:
    """What TTS_BROKER_CONSUMER_TIMEOUT assumes, checked on the server CI runs."""
    require_rabbitmq()
    out = _rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).")
    match = re.search(r"(\d+)", out)
    assert match, f"{RABBITMQCTL} eval gave {out!r}"
    assert int(match.group(1)) / 1000 > load_settings({}).task_time_limit


def test_make_up_with_rabbitmq_still_starts_the_redis_of_the_job_store(tmp_path) -> None:
    from scripts.run_stack import build_plan

    settings = load_settings({"TTS_BROKER_URL": "amqp://tts:s3cret@127.0.0.1:5672/tts", "TTS_EMBEDDED_REDIS_PORT": "0",
                              "TTS_DATA_DIR": str(tmp_path)})
    plan = build_plan(settings, only="web,worker")
    assert "redis" in plan.processes and plan.embedded_redis
    assert plan.env["REDIS_URL"] == plan.redis_url
    urls = dict(plan.urls)
    assert urls["Broker"].startswith("amqp://tts:***@127.0.0.1:5672/tts")
    assert all("s3cret" not in url for url in urls.values())


def test_a_worker_refuses_to_start_when_the_servers_consumer_timeout_is_below_the_hard_limit(make_stack):
    """TTS_BROKER_CONSUMER_TIMEOUT claims 3000 s, the local server has its default 1800 s, and the
    hard limit is 2000 s: the worker reads the server's value and stops, naming the rabbitmq.conf line."""
    stack = make_stack(broker="amqp", start=False, TTS_TASK_SOFT_TIME_LIMIT="1900", TTS_TASK_TIME_LIMIT="2000",
                       TTS_BROKER_CONSUMER_TIMEOUT="3000")
    log_path = stack.tmp / "refusing-worker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", "synthesis",
                                 "-c", "1", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
                                env=stack.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert proc.returncode != 0, text[-3000:]
    assert "consumer_timeout is 1800 s" in text and "consumer_timeout = 4000000" in text, text[-3000:]

"""The Celery application, configured from settings.

Reliability settings and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only
  after the task ran; a killed child's task goes back to the queue instead of being
  lost. The synthesize task counts deliveries in the job record and dead-letters a
  job that keeps killing its worker, so a poison job cannot loop forever.
* ``worker_prefetch_multiplier = 1``: a worker holds one message per process.
* ``visibility_timeout`` longer than the hard time limit and than any retry delay:
  otherwise Redis would hand a still-running (or ETA-waiting) task to another worker.
* soft and hard time limits, ``worker_max_memory_per_child``, task events on (Flower
  and the exporter read them), JSON only.

Fair share between big batches and single jobs (docs/architecture.md, "Scheduling and
fair share"): synthesis work is split over two queues that every worker consumes,
``synthesis`` (a single job's task: REST, the OpenAI speech call, the CLI) and ``bulk``
(batch items and every fan-out part); ``tasks.publish.queue_for`` is the one rule. kombu's
Redis transport serves a worker's queues round-robin (``queue_order_strategy``, pinned
here rather than left to kombu's default): after each delivery the queue it came from
goes to the end of the BRPOP order. With one prefetched message per pool process, a single
job waits for a process to come free (plus at most one bulk delivery per worker), never
for the whole batch. A message keeps its queue when it comes back (a retry, kombu's
restore of an unacknowledged message), and the reconciler looks for a queued job's
message in both queues.

RabbitMQ (``TTS_BROKER_URL=amqp://...``; the job store, leases and cache stay in Redis):

* every work queue is a **quorum queue** (replicated, durable, ``x-queue-type: quorum``)
  bound to one topic exchange, ``tts``. Topic, because Celery's native delayed delivery
  (below) binds a queue's exchange to its delay exchanges and cannot with a direct one;
* **delivery limit** (``x-delivery-limit``): ``TTS_MAX_ATTEMPTS`` + 10 returns by default
  (``settings.delivery_limit``). ``tasks.lifecycle.begin_attempt`` already dead-letters a
  job at ``max_attempts`` + 1 counted deliveries; the 10 beyond are returns that never
  reached the counter (a worker connection lost with prefetched messages, a Redis error
  that gives the message back). A message returned more often than that is dead-lettered
  by RabbitMQ (``x-dead-letter-strategy: at-least-once``, so it cannot be lost on the way)
  into the ``tts.dead-letter`` exchange and quorum queue, which ``tasks.dead_letters``
  (a consumer bootstep in every worker) empties: one lost attempt of the job, sent again
  while attempts remain, else failed through the one failure path,
  ``tasks.lifecycle.dead_letter``;
* **publisher confirms** (``confirm_publish``): a publish returns only once RabbitMQ has
  the message (a quorum queue confirms after a majority wrote it), so a 2xx of the API
  means the broker holds the job's message;
* **consumer timeout**: RabbitMQ 3.10 has no per-queue timeout; the server-wide
  ``consumer_timeout`` (default 30 minutes) must exceed the hard time limit, which the
  settings check against ``TTS_BROKER_CONSUMER_TIMEOUT`` (docs/operations.md has the
  ``rabbitmq.conf`` line); a worker also reads the server's own value where it can (a
  broker on its host, ``rabbitmqctl``: ``tasks.dead_letters``) and refuses to start when
  it is too low;
* **retries with a countdown**: quorum queues turn off global QoS, so a worker could not
  hold ETA messages past its prefetch; Celery (5.5+) then publishes a countdown through its
  native delayed delivery (``celery_delayed_0..27`` quorum queues with TTLs, one per bit of
  the delay in whole seconds). The delay waits in RabbitMQ, not in a worker. Celery refuses
  a countdown below one second there (kombu's ``calculate_routing_key`` raises, so the
  retry's publish would fail and only the reconciler's overdue sweep would send the job, a
  lease period later), so :class:`TtsCelery` rounds every countdown *up* to whole seconds
  on RabbitMQ: a retry never waits less than its backoff asked (0.3 s waits 1 s, 2.7 s 3 s);
* **fair share**: a worker has one consumer per queue, each with the prefetch window
  (per-consumer QoS), so a single job on ``synthesis`` reaches the worker at once however
  full ``bulk`` is, and waits for a free process behind at most the bulk messages
  already prefetched: the same bound as Redis' round-robin.
"""
from __future__ import annotations

import math
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from settings import Settings, get_settings

#: Single jobs (REST ``/v1/jobs``, ``/v1/audio/speech``, the CLI).
SYNTHESIS_QUEUE = "synthesis"
#: Batch items and fan-out parts: work that comes in thousands at once.
BULK_QUEUE = "bulk"
BATCH_QUEUE = "batch"
WEBHOOK_QUEUE = "webhooks"
#: The queues that carry synthesize and part tasks (the reconciler looks in both).
SYNTHESIS_QUEUES = (SYNTHESIS_QUEUE, BULK_QUEUE)
#: Every queue a worker consumes (``-Q``), and that monitoring reports.
QUEUES = (SYNTHESIS_QUEUE, BULK_QUEUE, BATCH_QUEUE, WEBHOOK_QUEUE)
#: How a worker picks between its queues: kombu rotates the queue it just took a message
#: from to the end of the list ("round_robin", kombu's default, stated so it cannot change
#: under us). "priority" or "sorted" would let a full ``bulk`` starve ``synthesis``.
QUEUE_ORDER_STRATEGY = "round_robin"
#: RabbitMQ: the topic exchange of the work queues (each bound with its own name as routing key).
AMQP_EXCHANGE = "tts"
#: RabbitMQ: where the work queues dead-letter a message past its delivery limit (fanout), and
#: the quorum queue bound to it that ``tasks.dead_letters`` consumes.
DEAD_LETTER_EXCHANGE = "tts.dead-letter"
DEAD_LETTER_QUEUE = "tts.dead-letter"


def work_queues(settings: Settings) -> list[Queue]:
    """The work queues: plain ones on Redis; quorum queues with a delivery limit on RabbitMQ."""
    if not settings.broker_is_amqp:
        return [Queue(name) for name in QUEUES]
    exchange = Exchange(AMQP_EXCHANGE, type="topic", durable=True)  # type: ignore[no-untyped-call]
    arguments = {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        # at-least-once: the message leaves the queue only once the dead-letter queue confirmed it.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # at-least-once requires it
    }
    return [Queue(name, exchange, routing_key=name, durable=True, queue_arguments=arguments) for name in QUEUES]


def dead_letter_queue() -> Queue:
    """RabbitMQ: the queue of messages past their delivery limit (``tasks.dead_letters`` consumes it)."""
    exchange = Exchange(DEAD_LETTER_EXCHANGE, type="fanout", durable=True)  # type: ignore[no-untyped-call]
    return Queue(DEAD_LETTER_QUEUE, exchange, routing_key="#", durable=True, queue_arguments={"x-queue-type": "quorum"})


def _amqp_config(settings: Settings) -> dict[str, Any]:
    """What changes on RabbitMQ: confirms, the topic exchange, and no Redis transport options."""
    return {
        "broker_transport_options": {"confirm_publish": True},
        "task_default_exchange": AMQP_EXCHANGE,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": SYNTHESIS_QUEUE,
        "worker_detect_quorum_queues": True,
        "broker_native_delayed_delivery_queue_type": "quorum",
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for these settings."""
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval,
        "unacked_restore_throttle": settings.unacked_restore_throttle,
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
        "retry_on_timeout": True,
        "health_check_interval": 15,
        "queue_order_strategy": QUEUE_ORDER_STRATEGY,
    }
    config: dict[str, Any] = {
        "broker_url": settings.celery_broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.concurrency,
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024,  # Celery counts KiB; 0: no limit
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_default_queue": SYNTHESIS_QUEUE,
        "task_queues": work_queues(settings),
        "task_routes": {
            "tts.synthesize": {"queue": SYNTHESIS_QUEUE},
            "tts.synthesize_part": {"queue": BULK_QUEUE},
            "tts.deliver_webhook": {"queue": WEBHOOK_QUEUE},
            "tts.evaluate_alerts": {"queue": WEBHOOK_QUEUE},
            "tts.*batch*": {"queue": BATCH_QUEUE},
        },
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.25,
                                      "interval_max": 0.5},
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "beat_schedule": {
            "evaluate-alerts": {"task": "tts.evaluate_alerts", "schedule": float(settings.alert_interval),
                                "options": {"expires": float(settings.alert_interval)}},
        },
    }
    if settings.broker_is_amqp:
        config.update(_amqp_config(settings))
    return config


class TtsCelery(Celery):  # type: ignore[misc]  # celery is untyped
    """Celery, with countdowns in whole seconds (rounded up) when the broker is RabbitMQ.

    Every publish with a countdown goes through :meth:`send_task` (``apply_async`` and
    ``Task.retry`` too), so this is the one place that makes it fit native delayed delivery.
    """

    whole_second_countdowns = False

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, countdown: float | None = None,
                  eta: Any = None, **options: Any) -> Any:
        """Celery's ``send_task``, with ``countdown`` rounded up to a whole second on RabbitMQ."""
        if countdown and self.whole_second_countdowns:
            countdown = float(math.ceil(countdown))
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` with every task module registered."""
    settings = settings or get_settings()
    app = TtsCelery("tts_batch")
    app.whole_second_countdowns = settings.broker_is_amqp
    app.conf.update(celery_config(settings))
    # tasks.batches holds no task, but registers the lifecycle hooks that count batch items.
    # tasks.dead_letters: the RabbitMQ dead-letter consumer (a bootstep that stays out on Redis).
    app.conf.include = ["tasks.synthesize", "tasks.fanout", "tasks.webhooks", "tasks.worker_signals",
                        "tasks.batches", "tasks.dead_letters"]
    return app


celery_app = create_celery()

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
"""
from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

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
    return {
        "broker_url": settings.broker_url,
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
        "task_queues": [Queue(name) for name in QUEUES],
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


def create_celery(settings: Settings | None = None) -> Celery:
    """A Celery app for ``settings`` with every task module registered."""
    settings = settings or get_settings()
    app = Celery("tts_batch")
    app.conf.update(celery_config(settings))
    # tasks.batches holds no task, but registers the lifecycle hooks that count batch items.
    app.conf.include = ["tasks.synthesize", "tasks.fanout", "tasks.webhooks", "tasks.worker_signals",
                        "tasks.batches"]
    return app


celery_app = create_celery()

"""Every Redis key tts-batch uses, in one place. One prefix, ``tts:``.

==============================  ======================================================
key                             what
==============================  ======================================================
``tts:job:{id}``                hash: the job record (TTL ``TTS_RESULT_TTL``); its audio is in the result store
                                (``tasks.result_store``), named by the record's ``audio_ref``, not in Redis
``tts:job:{id}:history``        list of JSON: one entry per attempt (same TTL)
``tts:jobs``                    sorted set: job ids by creation time (ms), for listing
``tts:audio:{sha256}``          hash: a cache entry (TTL ``TTS_CACHE_TTL``): the result store ref of the audio, its
                                size, metadata and how long the store keeps it (``tasks.cache``)
``tts:audio:index``             sorted set: cache keys by last use, for size-bounded eviction
``tts:audio:sizes``             hash: cache key -> bytes
``tts:audio:bytes``             integer: bytes held by the cache
``tts:idem:{key}``              string: Idempotency-Key -> job id (TTL ``TTS_RESULT_TTL``)
``tts:dlq``                     sorted set: dead-lettered job ids by time
``tts:dlq:{id}``                hash: the dead-letter record
``tts:batch:{id}``              hash: the batch record
``tts:batch:{id}:items``        list: job ids in input order
``tts:batch:{id}:done``         hash: item job id -> the status it was counted as finished with
``tts:batch:{id}:running``      set: item job ids started and not yet finished
``tts:job:{id}:parts``          hash: a fanned-out job's plan (part texts, rate, attempts per part, and ``ref:{n}``:
                                the result store ref of part n's audio, 16-bit PCM at the output rate)
``tts:job:{id}:parts:done``     set: part numbers whose audio is stored
``tts:job:{id}:parts:ready``    list: part numbers as they are stored, for the stitching task's blocking wait
``tts:job:{id}:speech``         stream: a streamed speech job's encoded audio deltas, tagged by attempt, for the
                                API to relay as SSE (TTL ``TTS_SPEECH_TIMEOUT`` + 60 s, renewed by every entry)
``tts:job:{id}:finished``       pub/sub channel: the job's final status, published in the transaction that sets it,
                                so a waiting API request answers at once (``JobService.wait``)
``tts:batches``                 sorted set: batch ids by creation time
``tts:lease:{id}``              string: the running attempt's lease (task id, host, pid), renewed while it runs
``tts:jobs:active``             sorted set: unfinished job ids by creation time, for the reconciler
``tts:reconcile:lock``          string: held by the worker sweeping this interval
``tts:reconcile:suspects``      hash: queued job id -> task id seen without a message at the last sweep
``tts:apikey:{sha256}``         string: a managed API key's record (JSON), found by the key's hash
``tts:apikeys``                 hash: key id -> the key's record (JSON; revoked keys stay listed)
``tts:apikeys:live``            set: ids of keys that work now
``tts:tenant:{t}:jobs``         sorted set: the tenant's job ids by creation time, for its listing
``tts:tenant:{t}:batches``      sorted set: the tenant's batch ids by creation time
``tts:tenant:{t}:active``       sorted set: the tenant's unfinished job ids (its ``max_queued`` quota)
``tts:callbacks:outbox``        sorted set: callbacks owed but not queued yet (a job id, or ``batch:{id}``) by
                                the time their final state committed; swept by the reconciler
``tts:limits:*``                the rate limiter's windows (the ``limits`` library's own keys)
``tts:batches:uncounted``       sorted set: finished batch items not yet counted in their batch, by time (swept)
``tts:metrics:*``               counters, histograms and history samples (monitoring/)
``tts:results:expiry``          sorted set: result store ref (SHA-256 of the bytes) -> when it expires; a negative
                                score is a sweeper's claim (``tasks.result_store``)
``tts:results:swept``           string: set for ``TTS_RESULT_STORE_SWEEP_INTERVAL`` s by the reconciler's last sweep
                                of the result store
==============================  ======================================================
"""
from __future__ import annotations

PREFIX = "tts:"
JOBS_INDEX = PREFIX + "jobs"
AUDIO_INDEX = PREFIX + "audio:index"
AUDIO_SIZES = PREFIX + "audio:sizes"
AUDIO_BYTES = PREFIX + "audio:bytes"
DLQ_INDEX = PREFIX + "dlq"
BATCHES_INDEX = PREFIX + "batches"
METRICS_PREFIX = PREFIX + "metrics:"
ACTIVE_JOBS = PREFIX + "jobs:active"
RECONCILE_LOCK = PREFIX + "reconcile:lock"
RECONCILE_SUSPECTS = PREFIX + "reconcile:suspects"
BATCH_UNCOUNTED = PREFIX + "batches:uncounted"
API_KEYS = PREFIX + "apikeys"
API_KEYS_LIVE = PREFIX + "apikeys:live"
#: Callbacks owed (a job id, or ``batch:{id}``) whose delivery task is not queued yet (``tasks.callbacks``).
CALLBACK_OUTBOX = PREFIX + "callbacks:outbox"
#: The result store's expiry index: ref -> expires_at (``tasks.result_store.ExpiryIndex``).
RESULTS_EXPIRY = PREFIX + "results:expiry"
#: Held for ``TTS_RESULT_STORE_SWEEP_INTERVAL`` s after the reconciler swept the result store.
RESULTS_SWEPT = PREFIX + "results:swept"
#: Prefix of the rate limiter's keys (``limits`` adds its own ``LIMITS:`` part after it).
LIMITS_PREFIX = PREFIX + "limits"


def job(job_id: str) -> str:
    """The job record hash."""
    return f"{PREFIX}job:{job_id}"


def legacy_job_audio(job_id: str) -> str:
    """Where versions before the result store kept a job's audio (read once, to move it: ``JobStore``)."""
    return f"{PREFIX}job:{job_id}:audio"


def job_history(job_id: str) -> str:
    """The job's attempt history."""
    return f"{PREFIX}job:{job_id}:history"


def audio(cache_key: str) -> str:
    """A cached audio entry."""
    return f"{PREFIX}audio:{cache_key}"


def idempotency(key: str) -> str:
    """An Idempotency-Key mapping."""
    return f"{PREFIX}idem:{key}"


def dead_letter(job_id: str) -> str:
    """A dead-letter record."""
    return f"{PREFIX}dlq:{job_id}"


def batch(batch_id: str) -> str:
    """A batch record."""
    return f"{PREFIX}batch:{batch_id}"


def batch_items(batch_id: str) -> str:
    """A batch's job ids in input order."""
    return f"{PREFIX}batch:{batch_id}:items"


def batch_done(batch_id: str) -> str:
    """A batch's items already counted as finished, each with the status it was counted with."""
    return f"{PREFIX}batch:{batch_id}:done"


def batch_running(batch_id: str) -> str:
    """The set of a batch's items that started and have not finished."""
    return f"{PREFIX}batch:{batch_id}:running"


def job_parts(job_id: str) -> str:
    """A fanned-out job's plan: part texts, output rate, attempts per part."""
    return f"{PREFIX}job:{job_id}:parts"


def job_parts_done(job_id: str) -> str:
    """The set of a fanned-out job's part numbers whose audio is stored."""
    return f"{PREFIX}job:{job_id}:parts:done"


def job_parts_ready(job_id: str) -> str:
    """The list a fanned-out job's parts are announced on as they are stored (the stitcher BLPOPs it)."""
    return f"{PREFIX}job:{job_id}:parts:ready"


def job_speech(job_id: str) -> str:
    """The Redis stream of a streamed speech job's audio deltas (``tasks.speech_stream``)."""
    return f"{PREFIX}job:{job_id}:speech"


def job_finished(job_id: str) -> str:
    """The pub/sub channel on which a job's final status is published (``JobStore.transition``)."""
    return f"{PREFIX}job:{job_id}:finished"


def lease(job_id: str) -> str:
    """The lease of a job's running attempt."""
    return f"{PREFIX}lease:{job_id}"


def api_key(digest: str) -> str:
    """A managed API key's record, by the SHA-256 of the key."""
    return f"{PREFIX}apikey:{digest}"


def tenant_jobs(tenant: str) -> str:
    """A tenant's job ids by creation time."""
    return f"{PREFIX}tenant:{tenant}:jobs"


def tenant_batches(tenant: str) -> str:
    """A tenant's batch ids by creation time."""
    return f"{PREFIX}tenant:{tenant}:batches"


def tenant_active(tenant: str) -> str:
    """A tenant's unfinished job ids."""
    return f"{PREFIX}tenant:{tenant}:active"

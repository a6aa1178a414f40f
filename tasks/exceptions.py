"""Errors of the job pipeline. Messages name the id they are about.

Each has a machine-readable ``code``; how an error is reported is up to the caller.
"""
from __future__ import annotations


class PipelineError(Exception):
    """Base class."""

    code = "pipeline_error"


class JobNotFound(PipelineError):
    """No job with that id (never existed, or expired)."""

    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} (unknown or expired)")


class JobNotFinished(PipelineError):
    """The job's audio is asked for before it succeeded."""

    code = "job_not_finished"

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id!r} is {status}; audio is available once it has succeeded")


class AudioGone(PipelineError):
    """The job succeeded but its audio was deleted or expired."""

    code = "audio_gone"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"the audio of job {job_id!r} was deleted or has expired")


class ResultMissing(PipelineError):
    """An object of the result store (``tasks.result_store``) is gone: expired, swept or never written."""

    code = "result_missing"

    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"result {ref!r} is not in the result store (expired or deleted)")


class ResultStoreUnavailable(PipelineError):
    """The result store cannot be reached or written (a folder that is gone or full, an S3 endpoint
    that does not answer, refuses the credentials or lacks the bucket). Transient for a job's attempt."""

    code = "result_store_unavailable"


class DeadLetterNotFound(PipelineError):
    """No dead-letter record for that job."""

    code = "dead_letter_not_found"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no dead-letter record for job {job_id!r}")


class IdempotencyConflict(PipelineError):
    """An Idempotency-Key was reused with a different request body."""

    code = "idempotency_key_reused"

    def __init__(self, key: str, job_id: str, kind: str = "job") -> None:
        self.key = key
        self.job_id = job_id
        super().__init__(f"Idempotency-Key {key!r} was already used for {kind} {job_id!r} with a different request")


class IdempotencyKeyInUse(PipelineError):
    """An Idempotency-Key is claimed by a submit that has not stored its job or batch yet."""

    code = "idempotency_key_in_use"
    #: Seconds a client should wait before retrying.
    retry_after = 1

    def __init__(self, key: str, kind: str = "job") -> None:
        self.key = key
        super().__init__(f"Idempotency-Key {key!r} is being used by a {kind} submit still in progress; "
                         "retry in a moment with the same key")


class TextTooLong(PipelineError):
    """Text longer than TTS_MAX_TEXT_CHARS."""

    code = "text_too_long"

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"text has {length} characters; the limit is {limit}")


class VoiceNotFound(PipelineError):
    """No voice by that id (a path that names a voice)."""

    code = "voice_not_found"

    def __init__(self, voice_id: str) -> None:
        self.voice_id = voice_id
        super().__init__(f"no voice {voice_id!r}: see GET /v1/voices")


class ModelNotFound(PipelineError):
    """No speech model by that name (OpenAI's models.retrieve)."""

    code = "model_not_found"

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        super().__init__(f"no model {model_id!r}: see GET /v1/models")


class InvalidRequest(PipelineError):
    """A request field is missing or of the wrong type; ``param`` names the field when one is to blame."""

    code = "invalid_request"

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class BatchNotFound(PipelineError):
    """No batch with that id (never existed, or expired)."""

    code = "batch_not_found"

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        super().__init__(f"no batch {batch_id!r} (unknown or expired)")


class TooManyInputs(PipelineError):
    """A batch with more inputs than TTS_MAX_BATCH_INPUTS."""

    code = "too_many_inputs"

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(f"the batch has {count} inputs; the limit is {limit} (TTS_MAX_BATCH_INPUTS)")


class InvalidBatch(PipelineError):
    """Every input of a batch was rejected; ``errors`` says why, per input."""

    code = "invalid_batch"

    def __init__(self, message: str, errors: list[dict[str, object]]) -> None:
        self.errors = errors
        super().__init__(message)


class BatchAudioTooLong(PipelineError):
    """The concatenated audio of a batch would be longer than TTS_BATCH_CONCAT_MAX_SECONDS."""

    code = "batch_audio_too_long"

    def __init__(self, seconds: float, limit: int) -> None:
        super().__init__(f"the concatenated audio would be {seconds:.0f} s long; the limit is {limit} s "
                         "(TTS_BATCH_CONCAT_MAX_SECONDS); download the separate files instead")


class BatchHasNoAudio(PipelineError):
    """A batch's concatenated audio is asked for before any item succeeded."""

    code = "batch_has_no_audio"

    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(f"batch {batch_id!r} is {status} and has no succeeded item yet")


class KeyNotFound(PipelineError):
    """No managed API key with that id."""

    code = "key_not_found"

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(f"no API key {key_id!r}")


class QuotaExceeded(PipelineError):
    """A key's quota (unfinished jobs, characters per day) would be exceeded: nothing was accepted.

    ``retry_after``: seconds until the quota is likely to allow the request; ``limit``,
    ``remaining`` and ``reset``: what the RateLimit headers report.
    """

    code = "quota_exceeded"

    def __init__(self, message: str, retry_after: int, limit: int, remaining: int, reset: int,
                 code: str | None = None) -> None:
        if code:
            self.code = code
        self.retry_after = max(1, retry_after)
        self.limit = limit
        self.remaining = max(0, remaining)
        self.reset = max(0, reset)
        super().__init__(message)


class QueueFull(PipelineError):
    """The service holds as many unfinished jobs as it admits (``TTS_MAX_QUEUED``) or Redis is nearly full."""

    code = "queue_full"
    retry_after = 5


class CallbackRefused(InvalidRequest):
    """A ``callback_url`` the SSRF guard (``tasks.outbound``) refuses: its shape, or an address that is not public.

    At submit a 400 naming ``callback_url``; at delivery the callback is given up at once
    (status ``refused``), since asking again would get the same answer. ``reason`` names the rule.
    """

    code = "callback_url_refused"

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message, param="callback_url")
        self.reason = reason


class CallbacksUnavailable(InvalidRequest):
    """A ``callback_url`` was given, but there is no secret to sign its callbacks with.

    Callbacks are always signed: with the submitting key's callback secret, or for the
    operator's keys and open mode with ``TTS_WEBHOOK_SECRET``, which is not set.
    """

    code = "callbacks_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="callback_url")


class CallbackDeliveryFailed(Exception):
    """One attempt to deliver a callback failed (no DNS answer, no connection, a timeout, a non-2xx
    answer, a redirect); a later attempt may succeed, so it is retried.

    Not a PipelineError: it never reaches the API, only the delivery task sees it.
    ``status`` is the HTTP status when the receiver answered.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

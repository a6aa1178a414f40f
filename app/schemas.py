"""The API's models for paths, query strings, headers, the key request and answers (the bodies of jobs
and batches live in ``tasks``).

Request models refuse what they do not know (``extra="forbid"``); answer models describe
what the server sends and allow fields added later (``extra="allow"``), so a client written
against this document keeps working when an answer grows. A query model's name ends in
``Query`` and a path model's in ``Path``: ``app.contract`` answers their refusals as
``invalid_parameter`` and as the 404 of an unknown id.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic.json_schema import SkipJsonSchema

from tasks.batches import MAX_GAP_MS
from tasks.exceptions import (
    BatchNotFound,
    DeadLetterNotFound,
    JobNotFound,
    KeyNotFound,
    ModelNotFound,
    PipelineError,
    VoiceNotFound,
)
from tasks.redis_values import MAX_INDEX
from tasks.tenants import RATE_PATTERN, TENANT_PATTERN

__all__ = [
    "MAX_LIMIT",
    "BatchAudioQuery",
    "BatchBody",
    "BatchItemsQuery",
    "BatchListBody",
    "BatchPath",
    "BatchResultQuery",
    "DeadLetterListQuery",
    "DeadLetterPath",
    "DeletedBody",
    "ErrorBody",
    "IdempotencyHeader",
    "ItemStatusName",
    "JobBody",
    "JobListBody",
    "JobListQuery",
    "JobPath",
    "JobStatusName",
    "KeyPath",
    "KeyRequest",
    "ListQuery",
    "QueryModel",
    "VoicePath",
    "omit_default",
    "path_not_found",
]

#: The most items one page of a list holds.
MAX_LIMIT = 1000
#: What a job or batch id looks like: a uuid4 in hex (``tasks.job.new_job_id``, ``BatchService``).
ID_PATTERN = r"^[0-9a-f]{32}$"
#: What a key id looks like (``tasks.tenants``: 12 hex characters).
KEY_ID_PATTERN = r"^[0-9a-f]{12}$"

#: ``tasks.status.JobStatus`` (a unit test keeps them equal); an item may also have expired.
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ItemStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
Cursor = Annotated[int, Field(ge=0, le=MAX_INDEX, description="where the previous page's next_cursor said "
                                                                     "to continue")]


def omit_default(schema: dict[str, Any]) -> None:
    """Leave ``default: null`` out of a field's schema: a parameter that may be left out, never null."""
    schema.pop("default", None)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class QueryModel(BaseModel):
    """A query string: unknown parameters refused (an empty value is a value: ``?cursor=`` is refused)."""

    model_config = ConfigDict(extra="forbid")


# --- errors ---------------------------------------------------------------------------------------
class ErrorDetail(_Answer):
    """What went wrong: a code for programs, a message for people, the field at fault."""

    code: str = Field(description="a stable machine-readable code, e.g. job_not_found")
    message: str = Field(description="what went wrong and what to do, for people")
    param: str | None = Field(None, description="the request field or parameter at fault, e.g. inputs[3].speed")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message", "param", ...}}``."""

    error: ErrorDetail


# --- paths ----------------------------------------------------------------------------------------
class JobPath(BaseModel):
    """A job's id."""

    job_id: str = Field(pattern=ID_PATTERN, description="the job's id (32 hex characters)")


class BatchPath(BaseModel):
    """A batch's id."""

    batch_id: str = Field(pattern=ID_PATTERN, description="the batch's id (32 hex characters)")


class DeadLetterPath(BaseModel):
    """A dead-lettered job's id."""

    job_id: str = Field(pattern=ID_PATTERN, description="the dead-lettered job's id")


class KeyPath(BaseModel):
    """An API key's id (not the key)."""

    key_id: str = Field(pattern=KEY_ID_PATTERN, description="the key's id (12 hex characters)")


class VoicePath(BaseModel):
    """A voice id or a Kokoro blend."""

    voice_id: str = Field(min_length=1, max_length=200, description="a voice id, or a blend such as 'a+b'")


#: What a path of the wrong shape is: the unknown resource it names (path parameter, error).
_NOT_FOUND: dict[str, tuple[str, Callable[[str], PipelineError]]] = {
    "JobPath": ("job_id", JobNotFound),
    "BatchPath": ("batch_id", BatchNotFound),
    "DeadLetterPath": ("job_id", DeadLetterNotFound),
    "KeyPath": ("key_id", KeyNotFound),
    "VoicePath": ("voice_id", VoiceNotFound),
    "ModelPath": ("model_id", ModelNotFound),
}


def path_not_found(model_name: str, view_args: Mapping[str, Any]) -> PipelineError | None:
    """The 404 error for a refusal of the path model ``model_name`` (None: not a path model).

    A path of the wrong shape names nothing, and is answered as an unknown one is (the same
    message), so ``<id>:audio`` never reaches a Redis key.
    """
    entry = _NOT_FOUND.get(model_name)
    if entry is None:
        return None
    param, error = entry
    return error(str(view_args.get(param, "")))


# --- headers --------------------------------------------------------------------------------------
class IdempotencyHeader(BaseModel):
    """``Idempotency-Key``: the same key and body give back the same job or batch (24 hours)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    idempotency_key: str | SkipJsonSchema[None] = Field(
        None, alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"\S", json_schema_extra=omit_default,
        description="any string of 1 to 255 characters, e.g. a UUID")


# --- query strings --------------------------------------------------------------------------------
class ListQuery(QueryModel):
    """One page of a list."""

    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 50
    cursor: Cursor | SkipJsonSchema[None] = Field(None, json_schema_extra=omit_default)


class JobListQuery(ListQuery):
    """Jobs newest first, optionally of one status."""

    status: JobStatusName | SkipJsonSchema[None] = Field(None, json_schema_extra=omit_default)


class BatchItemsQuery(QueryModel):
    """A batch's items in input order."""

    status: ItemStatusName | SkipJsonSchema[None] = Field(None, json_schema_extra=omit_default)
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 100
    cursor: Cursor = 0


class BatchAudioQuery(QueryModel):
    """The silence between items of a concatenated file."""

    gap_ms: Annotated[int, Field(ge=0, le=MAX_GAP_MS)] | SkipJsonSchema[None] = Field(
        None, json_schema_extra=omit_default, description="milliseconds of silence between items")


class BatchResultQuery(BatchAudioQuery):
    """How the zip is laid out."""

    concatenate: Literal["1", "0", "true", "false"] | SkipJsonSchema[None] = Field(
        None, json_schema_extra=omit_default, description="1: one concatenated file instead of one per item; "
                                                          "0: one per item")


class DeadLetterListQuery(QueryModel):
    """One page of dead-letter records."""

    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 100
    offset: Annotated[int, Field(ge=0, le=MAX_INDEX)] = 0


# --- request bodies -------------------------------------------------------------------------------
class KeyRequest(BaseModel):
    """A new API key for a tenant."""

    model_config = ConfigDict(extra="forbid")

    tenant: StrictStr = Field(pattern=f"^{TENANT_PATTERN.pattern}$", description="1 to 63 lower-case letters, digits, "
                                                                         "'_', '.' or '-'")
    scopes: list[Literal["read", "submit", "admin"]] | None = Field(None, min_length=1,
                                                                    description="default: read and submit")
    rate: StrictStr | None = Field(None, pattern=RATE_PATTERN, description="requests per period, e.g. '10/s' or "
                                                                           "'600/minute'")
    max_queued: Annotated[StrictInt, Field(ge=1, le=2**53)] | None = None
    chars_per_day: Annotated[StrictInt, Field(ge=1, le=2**53)] | None = None


# --- answers --------------------------------------------------------------------------------------
class JobAudio(_Answer):
    """The audio of a succeeded job."""

    duration_seconds: float | None
    bytes: int | None
    media_type: str | None
    sample_rate: int | None


class JobError(_Answer):
    """Why a job failed."""

    code: str
    message: str


class JobBody(_Answer):
    """A job: its status, attempts, times, audio facts, error and links (never its text)."""

    id: str
    status: JobStatusName
    voice: str
    format: str
    speed: float
    characters: int
    attempts: int
    max_attempts: int
    cache_hit: bool
    created_at: str | None
    finished_at: str | None
    audio: JobAudio | None
    error: JobError | None
    links: dict[str, str]


class JobListBody(_Answer):
    """One page of jobs."""

    jobs: list[JobBody]
    next_cursor: str | None


class BatchBody(_Answer):
    """A batch: status, counts, percent done, characters, duration and links."""

    id: str
    object: Literal["batch"]
    status: str
    counts: dict[str, int]
    percent_done: float
    characters: int
    format: str
    links: dict[str, str]


class BatchListBody(_Answer):
    """One page of batches."""

    batches: list[BatchBody]
    next_cursor: str | None


class BatchItem(_Answer):
    """One item of a batch."""

    id: str
    index: int
    status: ItemStatusName
    error: dict[str, Any] | None


class BatchItemsBody(_Answer):
    """One page of a batch's items."""

    batch_id: str
    items: list[BatchItem]
    next_cursor: str | None


class DeletedBody(_Answer):
    """What a delete answers: the id, its kind, and that it is gone."""

    id: str
    object: Literal["job", "batch"]
    deleted: Literal[True]


class AnyBody(_Answer):
    """A JSON object (operators' views whose fields are documented in docs/operations.md)."""


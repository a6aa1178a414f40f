"""``/v1/jobs``: submit, poll, download, cancel and list synthesis jobs.

A download streams the audio from the result store (``tasks.result_store``), never holding
the file in memory: the folder store's file goes out through ``send_file`` (ranges,
conditional requests), the S3 store's object through ranged GETs in chunks. Both answer
``Range`` requests (206 with ``Content-Range``; 416 in the API's error shape when nothing
of the range exists) and ``If-None-Match`` (304); the ETag is the first 32 hex digits of the
object's ref, the SHA-256 of the bytes, so nothing is hashed per request. With
``TTS_RESULT_STORE_REDIRECT=1`` and an S3 store the answer is a 302 to a presigned URL of
the object instead, valid ``TTS_RESULT_STORE_PRESIGN_SECONDS``, issued after the same
key and tenant checks (the bytes then never pass through the API).
"""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, jsonify, redirect, request, send_file, url_for
from flask_openapi3 import APIBlueprint, Tag
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from engine import FORMATS
from tasks.exceptions import AudioGone, ResultMissing
from tasks.job import Job
from tasks.job_request import JobInput
from tasks.result_store import ResultStore
from tasks.service import JobService

from .auth import current_principal
from .contract import SECURITY, answer, binary, error_responses, link
from .errors import error_response
from .requests import accepted_response, attachment
from .schemas import DeletedBody, IdempotencyHeader, JobBody, JobListBody, JobListQuery, JobPath

bp = APIBlueprint("jobs", __name__, url_prefix="/v1/jobs", abp_tags=[Tag(name="jobs", description="single jobs")],
                  abp_security=SECURITY)

#: Where an accepted job can be followed (the spec's links drive schemathesis's stateful tests too).
JOB_LINKS = {
    "GetJob": link("get_job", "poll the job", job_id="$response.body#/id"),
    "GetJobAudio": link("get_job_audio", "download its audio", job_id="$response.body#/id"),
    "CancelJob": link("cancel_job", "cancel it", job_id="$response.body#/id"),
    "DeleteJob": link("delete_job", "delete it", job_id="$response.body#/id"),
}
#: The media type of every format a job's audio can have.
AUDIO_MEDIA_TYPES = tuple(dict.fromkeys(fmt.media_type for fmt in FORMATS.values()))
_SUBMITTED_HEADERS = {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}
#: Bytes per read when a download streams an object that is not a local file (S3).
STREAM_CHUNK = 256 * 1024
_AUDIO_HEADERS = {
    "ETag": {"description": "the first 32 hex digits of the audio's SHA-256", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "bytes: Range requests are answered", "schema": {"type": "string"}},
}
_PARTIAL_HEADERS = {
    **_AUDIO_HEADERS,
    "Content-Range": {"description": "which bytes of the file this is", "schema": {"type": "string"}},
}
_REDIRECT_HEADERS = {"Location": {"description": "a presigned URL of the audio in the S3 result store, valid "
                                                 "TTS_RESULT_STORE_PRESIGN_SECONDS", "schema": {"type": "string"}}}


def service() -> JobService:
    """The job service of this app."""
    return current_app.extensions["tts"]["service"]


def tenant() -> str:
    """The caller's tenant: every read and write of a job is filtered by it."""
    return current_principal().tenant


def job_links(job: Job) -> dict[str, str]:
    """Where to poll, download and cancel a job."""
    return {
        "self": url_for("jobs.get_job", job_id=job.id),
        "audio": url_for("jobs.get_audio", job_id=job.id),
    }


def job_body(job: Job, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON the API returns for a job."""
    body = job.public(history)
    body["links"] = job_links(job)
    return body


@bp.post("", operation_id="submit_job", summary="Submit a synthesis job",
         responses={
             202: answer(JobBody, "queued; poll links.self", links=JOB_LINKS, headers=_SUBMITTED_HEADERS),
             200: answer(JobBody, "served from the cache at once, or an Idempotency-Key replay (Idempotent-Replayed)",
                         links=JOB_LINKS, headers=_SUBMITTED_HEADERS),
             **error_responses(400, 401, 403, 409, 413, 415, 422, 429, 503)})
def submit(body: JobInput, header: IdempotencyHeader) -> Any:
    """Accept a synthesis job: 202 queued, or 200 when served from the cache at once.

    Send ``Idempotency-Key`` to make a retry safe: the same key and body give back the same job.
    """
    settings = current_app.extensions["tts"]["settings"]
    job_request = body.resolve({"voice": settings.default_voice, "format": settings.default_format})
    job, created = service().submit(job_request, correlation_id=g.get("correlation_id"),
                                    idempotency_key=header.idempotency_key, owner=current_principal())
    return accepted_response(job_body(job), url_for("jobs.get_job", job_id=job.id), created, job.status.finished)


@bp.get("", operation_id="list_jobs", summary="List jobs",
        responses={200: answer(JobListBody, "jobs newest first"), **error_responses(400, 401, 403, 429, 503)})
def list_jobs(query: JobListQuery) -> Any:
    """Jobs newest first: ``?status=&limit=&cursor=`` (the tenant's own)."""
    jobs, next_cursor = service().list(status=query.status, limit=query.limit, cursor=query.cursor, tenant=tenant())
    return jsonify({"jobs": [job_body(j) for j in jobs],
                    "next_cursor": str(next_cursor) if next_cursor is not None else None})


@bp.get("/<job_id>", operation_id="get_job", summary="A job's status",
        responses={200: answer(JobBody, "the job"), **error_responses(401, 403, 404, 429, 503)})
def get_job(path: JobPath) -> Any:
    """A job's status, attempts, times, audio facts and error."""
    svc = service()
    job = svc.get(path.job_id, tenant())
    return jsonify(job_body(job, history=svc.rt.jobs.history(path.job_id)))


@bp.get("/<job_id>/audio", operation_id="get_job_audio", summary="A job's audio",
        responses={200: answer(None, "the audio file", media=binary(*AUDIO_MEDIA_TYPES), headers=_AUDIO_HEADERS),
                   206: answer(None, "the bytes the Range asked for", media=binary(*AUDIO_MEDIA_TYPES),
                               headers=_PARTIAL_HEADERS),
                   302: answer(None, "TTS_RESULT_STORE_REDIRECT with an S3 store: the audio is at Location",
                               headers=_REDIRECT_HEADERS),
                   304: {"description": "not modified (If-None-Match)"},
                   **error_responses(401, 403, 404, 409, 410, 416, 429, 503)})
def get_audio(path: JobPath) -> Any:
    """The audio of a succeeded job (409 while unfinished, 410 once expired or deleted).

    ``Range: bytes=...`` gets 206 with those bytes (one range); a presigned redirect (302)
    when the server is set up for one.
    """
    svc = service()
    job, ref = svc.audio_ref(path.job_id, tenant())
    etag = ref[:32]
    if request.if_none_match.contains(etag):
        return Response(status=304, headers={"ETag": f'"{etag}"'})
    fmt = FORMATS[job.format]
    media_type = job.media_type or fmt.media_type
    disposition = attachment(job.name, fmt.extension, default=job.id)
    store = svc.rt.result_store
    settings = current_app.extensions["tts"]["settings"]
    if settings.result_store_redirect:
        url = store.presigned_url(ref, filename=f"{job.id}.{fmt.extension}", media_type=media_type,
                                  expires_in=settings.result_store_presign_seconds, disposition=disposition)
        if url is not None:
            moved = redirect(url, code=302)
            moved.headers["Cache-Control"] = "no-store"
            return moved
    try:
        response = _stored_file(store, job, ref, media_type, etag)
    except RequestedRangeNotSatisfiable as exc:
        return error_response(416, "range_not_satisfiable",
                              f"the Range asks for bytes this file does not have (it has {exc.length} bytes)",
                              headers={"Content-Range": f"bytes */{exc.length}"})
    response.headers["Content-Disposition"] = disposition
    response.headers["Cache-Control"] = "private, max-age=3600"
    response.headers.pop("Expires", None)
    return response


def _stored_file(store: ResultStore, job: Job, ref: str, media_type: str, etag: str) -> Response:
    """The object ``ref`` as a (possibly partial) answer: AudioGone when the store no longer has it;
    RequestedRangeNotSatisfiable for a Range outside it."""
    local = store.local_path(ref)
    if local is not None:
        try:
            return send_file(local, mimetype=media_type, conditional=True, etag=etag)
        except FileNotFoundError:  # swept between the two calls
            raise AudioGone(job.id) from None
    size = store.size(ref)
    if size is None:
        raise AudioGone(job.id)
    span = _wanted_span(size, etag)
    start, stop = span or (0, size)
    try:
        chunks = store.iter_range(ref, start, stop, chunk=STREAM_CHUNK)
    except ResultMissing:
        raise AudioGone(job.id) from None
    response = Response(chunks, status=206 if span else 200, mimetype=media_type)
    response.content_length = stop - start
    if span:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response.accept_ranges = "bytes"
    response.set_etag(etag)
    return response


def _wanted_span(size: int, etag: str) -> tuple[int, int] | None:
    """The [start, stop) a Range header asks for, as werkzeug's ``send_file`` reads it: None for the
    whole file (no Range, an If-Range that does not match, an empty file); RequestedRangeNotSatisfiable
    for a range outside the file, several ranges or a malformed header."""
    if "Range" not in request.headers or not size:
        return None
    if_range = request.if_range
    if (if_range.etag is not None or if_range.date is not None) and if_range.etag != etag:
        return None
    wanted = request.range
    span = wanted.range_for_length(size) if wanted is not None else None
    if span is None:
        raise RequestedRangeNotSatisfiable(length=size)
    return span


@bp.post("/<job_id>/cancel", operation_id="cancel_job", summary="Cancel a job",
         responses={200: answer(JobBody, "the job after cancelling (a finished job as it was)"),
                    **error_responses(401, 403, 404, 429, 503)})
def cancel(path: JobPath) -> Any:
    """Cancel a queued job or revoke a running one; a finished job keeps its status and audio."""
    return jsonify(job_body(service().cancel(path.job_id, tenant())))


@bp.delete("/<job_id>", operation_id="delete_job", summary="Delete a job",
           responses={200: answer(DeletedBody, "deleted: it is 404 from now on"),
                      **error_responses(401, 403, 404, 429, 503)})
def delete(path: JobPath) -> Any:
    """Delete a job: cancel it if unfinished and drop its audio; every read of it is 404 from then on."""
    job = service().delete(path.job_id, tenant())
    return jsonify({"id": job.id, "object": "job", "deleted": True})

"""``/v1/jobs``: submit, poll, download, cancel and list synthesis jobs."""
from __future__ import annotations

import hashlib
from typing import Any

from flask import Response, current_app, g, jsonify, request, url_for
from flask_openapi3 import APIBlueprint, Tag

from engine import FORMATS
from tasks.job import Job
from tasks.job_request import JobInput
from tasks.service import JobService

from .auth import current_principal
from .contract import SECURITY, answer, binary, error_responses, link
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
        responses={200: answer(None, "the audio file", media=binary(*AUDIO_MEDIA_TYPES)),
                   304: {"description": "not modified (If-None-Match)"},
                   **error_responses(401, 403, 404, 409, 410, 429, 503)})
def get_audio(path: JobPath) -> Any:
    """The audio bytes of a succeeded job (409 while unfinished, 410 once expired or deleted)."""
    job, data = service().audio(path.job_id, tenant())
    etag = hashlib.sha256(data).hexdigest()[:32]
    if request.if_none_match.contains(etag):
        return Response(status=304, headers={"ETag": f'"{etag}"'})
    fmt = FORMATS[job.format]
    response = Response(data, mimetype=job.media_type or fmt.media_type)
    response.headers["Content-Disposition"] = attachment(job.name, fmt.extension, default=job.id)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


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

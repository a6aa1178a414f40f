"""``/v1/jobs``: submit, poll, download, cancel and list synthesis jobs."""
from __future__ import annotations

import hashlib
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from engine import FORMATS
from tasks.exceptions import JobNotFound
from tasks.job import Job
from tasks.job_request import parse_job_request
from tasks.service import JobService
from tasks.status import JobStatus

from .auth import current_principal
from .errors import ApiError
from .requests import MAX_LIMIT, accepted_response, attachment, checked_id, idempotency_key, int_arg, json_body

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


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


@bp.post("")
def submit() -> Any:
    """Accept a synthesis job: 202 queued, or 200 when served from the cache at once."""
    settings = current_app.extensions["tts"]["settings"]
    job_request = parse_job_request(json_body(request), defaults={"voice": settings.default_voice,
                                                                  "format": settings.default_format},
                                    max_chars=settings.max_text_chars)
    job, created = service().submit(job_request, correlation_id=g.get("correlation_id"),
                                    idempotency_key=idempotency_key(request), owner=current_principal())
    return accepted_response(job_body(job), url_for("jobs.get_job", job_id=job.id), created, job.status.finished)


@bp.get("")
def list_jobs() -> Any:
    """Jobs newest first: ``?status=&limit=&cursor=``."""
    status = request.args.get("status") or None
    if status is not None and status not in {s.value for s in JobStatus}:
        raise ApiError(400, "invalid_parameter",
                       f"status must be one of {', '.join(s.value for s in JobStatus)}, got {status!r}")
    limit = int_arg(request, "limit", 50, low=1, high=MAX_LIMIT)
    cursor = int_arg(request, "cursor", None, low=0)
    jobs, next_cursor = service().list(status=status, limit=limit or 50, cursor=cursor, tenant=tenant())
    return jsonify({"jobs": [job_body(j) for j in jobs],
                    "next_cursor": str(next_cursor) if next_cursor is not None else None})


@bp.get("/<job_id>")
def get_job(job_id: str) -> Any:
    """A job's status, attempts, times, audio facts and error."""
    job_id = checked_id(job_id, JobNotFound)
    svc = service()
    job = svc.get(job_id, tenant())
    return jsonify(job_body(job, history=svc.rt.jobs.history(job_id)))


@bp.get("/<job_id>/audio")
def get_audio(job_id: str) -> Any:
    """The audio bytes of a succeeded job (409 while unfinished)."""
    job, data = service().audio(checked_id(job_id, JobNotFound), tenant())
    etag = hashlib.sha256(data).hexdigest()[:32]
    if request.if_none_match.contains(etag):
        return Response(status=304, headers={"ETag": f'"{etag}"'})
    fmt = FORMATS[job.format]
    response = Response(data, mimetype=job.media_type or fmt.media_type)
    response.headers["Content-Disposition"] = attachment(job.name, fmt.extension, default=job.id)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.delete("/<job_id>")
def cancel(job_id: str) -> Any:
    """Cancel a queued job, revoke a running one, or delete a finished one's audio."""
    job = service().cancel(checked_id(job_id, JobNotFound), tenant())
    return jsonify(job_body(job))

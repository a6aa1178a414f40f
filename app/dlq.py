"""``/v1/dlq``: the dead-letter queue for operators: list, inspect, replay, purge (admin keys)."""
from __future__ import annotations

from typing import Any

from flask import current_app, jsonify
from flask_openapi3 import APIBlueprint, Tag
from werkzeug.routing import BaseConverter

from .contract import SECURITY, answer, error_responses
from .jobs import JOB_LINKS, job_body, service
from .schemas import AnyBody, DeadLetterListQuery, DeadLetterPath, JobBody

bp = APIBlueprint("dlq", __name__, url_prefix="/v1/dlq", abp_security=SECURITY,
                  abp_tags=[Tag(name="dead letters", description="jobs that failed for good (admin)")])

_ERRORS = (401, 403, 429, 503)


class DeadLetterIdConverter(BaseConverter):
    """A dead-letter id in a path: any one segment but ``replay``, which is ``POST /v1/dlq/replay``.

    Without it ``GET /v1/dlq/replay`` would be an unknown record's 404 and ``OPTIONS`` would
    advertise GET and DELETE there; with it the route is POST only (405 with ``Allow: POST``).
    """

    regex = r"(?!replay(?![^/]))[^/]+"


@bp.record_once
def _register_converter(state: Any) -> None:
    state.app.url_map.converters.setdefault("dead_letter_id", DeadLetterIdConverter)


def _dlq() -> Any:
    return current_app.extensions["tts"]["runtime"].dlq


@bp.get("", operation_id="list_dead_letters", summary="List dead-letter records",
        responses={200: answer(AnyBody, "{total, items}: records newest first"), **error_responses(400, *_ERRORS)})
def list_dead_letters(query: DeadLetterListQuery) -> Any:
    """Dead-letter records, newest first (``?limit=&offset=``)."""
    dlq = _dlq()
    return jsonify({"total": len(dlq), "items": dlq.list(limit=query.limit, offset=query.offset)})


@bp.get("/<dead_letter_id:job_id>", operation_id="get_dead_letter", summary="One dead-letter record",
        responses={200: answer(AnyBody, "the record with its traceback"), **error_responses(404, *_ERRORS)})
def get_dead_letter(path: DeadLetterPath) -> Any:
    """One record with its traceback."""
    return jsonify(_dlq().get(path.job_id))


@bp.post("/<dead_letter_id:job_id>/replay", operation_id="replay_dead_letter", summary="Replay a dead-lettered job",
         responses={202: answer(JobBody, "queued again, with a fresh attempt series", links=JOB_LINKS),
                    **error_responses(404, *_ERRORS)})
def replay(path: DeadLetterPath) -> Any:
    """Start a fresh attempt series for a dead-lettered job."""
    response = jsonify(job_body(service().replay(path.job_id)))
    response.status_code = 202
    return response


@bp.post("/replay", operation_id="replay_dead_letters", summary="Replay every dead-lettered job",
         responses={202: answer(AnyBody, "{replayed: [job ids]}"), **error_responses(*_ERRORS)})
def replay_all() -> Any:
    """Replay every dead-lettered job."""
    svc = service()
    replayed = [svc.replay(job_id).id for job_id in _dlq().ids()]
    response = jsonify({"replayed": replayed})
    response.status_code = 202
    return response


@bp.delete("/<dead_letter_id:job_id>", operation_id="delete_dead_letter", summary="Drop a dead-letter record",
           responses={200: answer(AnyBody, "{deleted: job id}"), **error_responses(404, *_ERRORS)})
def delete(path: DeadLetterPath) -> Any:
    """Drop one record (the job itself stays failed)."""
    _dlq().remove(path.job_id)
    return jsonify({"deleted": path.job_id})


@bp.delete("", operation_id="purge_dead_letters", summary="Drop every dead-letter record",
           responses={200: answer(AnyBody, "{purged: count}"), **error_responses(*_ERRORS)})
def purge() -> Any:
    """Drop every record."""
    return jsonify({"purged": _dlq().purge()})

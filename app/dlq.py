"""``/v1/dlq``: the dead-letter queue for operators: list, inspect, replay, purge."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request

from tasks.exceptions import DeadLetterNotFound

from .jobs import job_body, service
from .requests import MAX_LIMIT, checked_id, int_arg

bp = Blueprint("dlq", __name__, url_prefix="/v1/dlq")


def _dlq() -> Any:
    return current_app.extensions["tts"]["runtime"].dlq


@bp.get("")
def list_dead_letters() -> Any:
    """Dead-letter records, newest first (``?limit=&offset=``)."""
    limit = int_arg(request, "limit", 100, low=1, high=MAX_LIMIT) or 100
    offset = int_arg(request, "offset", 0, low=0) or 0
    dlq = _dlq()
    return jsonify({"total": len(dlq), "items": dlq.list(limit=limit, offset=offset)})


@bp.get("/<job_id>")
def get_dead_letter(job_id: str) -> Any:
    """One record with its traceback."""
    return jsonify(_dlq().get(checked_id(job_id, DeadLetterNotFound)))


@bp.post("/<job_id>/replay")
def replay(job_id: str) -> Any:
    """Start a fresh attempt series for a dead-lettered job."""
    job = service().replay(checked_id(job_id, DeadLetterNotFound))
    response = jsonify(job_body(job))
    response.status_code = 202
    return response


@bp.post("/replay")
def replay_all() -> Any:
    """Replay every dead-lettered job."""
    svc = service()
    replayed = [svc.replay(job_id).id for job_id in _dlq().ids()]
    response = jsonify({"replayed": replayed})
    response.status_code = 202
    return response


@bp.delete("/<job_id>")
def delete(job_id: str) -> Any:
    """Drop one record (the job itself stays failed)."""
    _dlq().remove(checked_id(job_id, DeadLetterNotFound))
    return jsonify({"deleted": job_id})


@bp.delete("")
def purge() -> Any:
    """Drop every record."""
    return jsonify({"purged": _dlq().purge()})

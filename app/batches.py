"""``/v1/batches``: many inputs at once; status, items, a streamed zip of the results, cancel."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from engine import FORMATS
from tasks.batch_result import concatenate_audio, iter_zip, plan_result
from tasks.batches import MAX_GAP_MS, Batch, BatchService, ItemMeta, parse_batch_request
from tasks.exceptions import BatchNotFound, InvalidBatch
from tasks.status import JobStatus

from .auth import current_principal
from .errors import ApiError
from .jobs import tenant
from .requests import MAX_LIMIT, accepted_response, attachment, checked_id, idempotency_key, int_arg, json_body
from .streams import held_response, stream_limits, too_many_streams

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

_STATUSES = [s.value for s in JobStatus] + ["expired"]


def service() -> BatchService:
    """The batch service of this app (made on first use)."""
    ext = current_app.extensions["tts"]
    svc = ext.get("batches")
    if svc is None:
        svc = ext["batches"] = BatchService(ext["runtime"], ext["service"])
    return svc


def batch_links(batch: Batch) -> dict[str, str]:
    """Where to poll, page through items, download and cancel a batch."""
    return {
        "self": url_for("batches.get_batch", batch_id=batch.id),
        "items": url_for("batches.list_items", batch_id=batch.id),
        "result": url_for("batches.get_result", batch_id=batch.id),
        "audio": url_for("batches.get_audio", batch_id=batch.id),
    }


def batch_body(batch: Batch) -> dict[str, Any]:
    """The JSON the API returns for a batch."""
    body = batch.public()
    body["links"] = batch_links(batch)
    return body


def item_body(item: ItemMeta) -> dict[str, Any]:
    """The JSON of one item, with links to its job."""
    body = item.public()
    body["links"] = {"job": url_for("jobs.get_job", job_id=item.job_id),
                     "audio": url_for("jobs.get_audio", job_id=item.job_id)}
    return body


def _flag(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes"}:
        return True
    if lowered in {"0", "false", "no"}:
        return False
    raise ApiError(400, "invalid_parameter", f"query parameter {name!r} must be 1 or 0, got {raw!r}")


@bp.post("")
def submit() -> Any:
    """Accept a batch: 202 with its id, counts and links (200 when every item finished at once)."""
    settings = current_app.extensions["tts"]["settings"]
    batch_request = parse_batch_request(json_body(request), settings.max_batch_inputs, settings.default_voice,
                                        settings.default_format)
    try:
        batch, rejected, created = service().submit(batch_request, correlation_id=g.get("correlation_id"),
                                                    idempotency_key=idempotency_key(request),
                                                    owner=current_principal())
    except InvalidBatch as exc:
        raise ApiError(400, exc.code, str(exc), errors=exc.errors) from exc
    body = batch_body(batch)
    body["rejected"] = [r.public() for r in rejected]
    return accepted_response(body, url_for("batches.get_batch", batch_id=batch.id), created, batch.done)


@bp.get("")
def list_batches() -> Any:
    """Batches newest first: ``?limit=&cursor=``."""
    limit = int_arg(request, "limit", 50, low=1, high=MAX_LIMIT) or 50
    cursor = int_arg(request, "cursor", None, low=0)
    batches, next_cursor = service().list(limit=limit, cursor=cursor, tenant=tenant())
    return jsonify({"batches": [batch_body(b) for b in batches],
                    "next_cursor": str(next_cursor) if next_cursor is not None else None})


@bp.get("/<batch_id>")
def get_batch(batch_id: str) -> Any:
    """A batch's status, counts, percent done, characters, audio duration and times."""
    return jsonify(batch_body(service().get(checked_id(batch_id, BatchNotFound), tenant())))


@bp.get("/<batch_id>/items")
def list_items(batch_id: str) -> Any:
    """Items in input order: ``?status=&cursor=&limit=`` (cursor: the index to continue from)."""
    batch_id = checked_id(batch_id, BatchNotFound)
    status = request.args.get("status") or None
    if status is not None and status not in _STATUSES:
        raise ApiError(400, "invalid_parameter", f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
    limit = int_arg(request, "limit", 100, low=1, high=MAX_LIMIT) or 100
    cursor = int_arg(request, "cursor", 0, low=0) or 0
    items, next_cursor = service().items(batch_id, status=status, cursor=cursor, limit=limit, tenant=tenant())
    return jsonify({"batch_id": batch_id, "items": [item_body(i) for i in items],
                    "next_cursor": str(next_cursor) if next_cursor is not None else None})


@bp.get("/<batch_id>/result")
def get_result(batch_id: str) -> Any:
    """The results as a streamed zip: files in input order plus ``manifest.json``.

    ``?concatenate=1`` (or ``concatenate: true`` at submit) puts one concatenated audio
    file in the zip instead; ``?concatenate=0`` asks for separate files; ``?gap_ms=``
    overrides the batch's gap. Allowed while the batch runs (the manifest says what is missing).
    """
    batch_id = checked_id(batch_id, BatchNotFound)
    svc = service()
    plan = plan_result(svc, batch_id, concatenate=_flag("concatenate"), gap_ms=_gap_arg(), tenant=tenant())
    disposition = attachment(f"batch-{batch_id}", "zip", default=batch_id)
    slots = stream_limits().batch_zip  # the zip streams on a server thread: a few at a time
    slot = slots.try_acquire()
    if slot is None:
        return too_many_streams(slots)
    response = held_response(slot, iter_zip(svc, plan), mimetype="application/zip")
    response.headers["Content-Disposition"] = disposition
    response.headers["X-Batch-Status"] = plan.batch.status.value
    response.headers["X-Batch-Complete"] = "true" if plan.complete else "false"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/<batch_id>/audio")
def get_audio(batch_id: str) -> Any:
    """Every succeeded item concatenated into one file of the batch's format (``?gap_ms=``)."""
    batch_id = checked_id(batch_id, BatchNotFound)
    svc = service()
    plan = plan_result(svc, batch_id, concatenate=True, gap_ms=_gap_arg(), tenant=tenant())
    audio, offsets, _ = concatenate_audio(svc, plan)
    fmt = FORMATS[plan.batch.format]
    response = Response(audio, mimetype=fmt.media_type)
    response.headers["Content-Disposition"] = attachment(plan.concat_file, fmt.extension, default=batch_id)
    response.headers["X-Batch-Status"] = plan.batch.status.value
    response.headers["X-Batch-Complete"] = "true" if plan.complete else "false"
    response.headers["X-Batch-Items-Included"] = str(sum(1 for o in offsets if o is not None))
    response.headers["Cache-Control"] = "no-store"
    return response


def _gap_arg() -> int | None:
    return int_arg(request, "gap_ms", None, low=0, high=MAX_GAP_MS)


@bp.delete("/<batch_id>")
def cancel(batch_id: str) -> Any:
    """Cancel every item that has not finished; finished items keep their audio."""
    return jsonify(batch_body(service().cancel(checked_id(batch_id, BatchNotFound), tenant())))

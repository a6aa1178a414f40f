"""``/v1/batches``: many inputs at once; status, items, a streamed zip of the results, cancel."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, jsonify, url_for
from flask_openapi3 import APIBlueprint, Tag

from engine import FORMATS
from tasks.batch_result import concatenate_audio, iter_zip, plan_result
from tasks.batches import Batch, BatchRequest, BatchService, ItemMeta
from tasks.exceptions import InvalidBatch

from .auth import current_principal
from .contract import SECURITY, answer, binary, error_responses, link
from .errors import ApiError
from .jobs import AUDIO_MEDIA_TYPES, tenant
from .requests import accepted_response, attachment
from .schemas import (
    BatchAudioQuery,
    BatchBody,
    BatchItemsBody,
    BatchItemsQuery,
    BatchListBody,
    BatchPath,
    BatchResultQuery,
    DeletedBody,
    IdempotencyHeader,
    ListQuery,
)
from .streams import held_response, stream_limits, too_many_streams

bp = APIBlueprint("batches", __name__, url_prefix="/v1/batches",
                  abp_tags=[Tag(name="batches", description="many inputs at once")], abp_security=SECURITY)

#: Where an accepted batch can be followed (the spec's links drive schemathesis's stateful tests too).
BATCH_LINKS = {
    "GetBatch": link("get_batch", "poll the batch", batch_id="$response.body#/id"),
    "ListBatchItems": link("list_batch_items", "its items", batch_id="$response.body#/id"),
    "GetBatchResult": link("get_batch_result", "the zip of its results", batch_id="$response.body#/id"),
    "GetBatchAudio": link("get_batch_audio", "its items in one file", batch_id="$response.body#/id"),
    "CancelBatch": link("cancel_batch", "cancel it", batch_id="$response.body#/id"),
    "DeleteBatch": link("delete_batch", "delete it", batch_id="$response.body#/id"),
}
_SUBMITTED_HEADERS = {"Location": {"description": "the batch's URL", "schema": {"type": "string"}}}
_BATCH_HEADERS = {
    "X-Batch-Status": {"description": "the batch's status", "schema": {"type": "string"}},
    "X-Batch-Complete": {"description": "true when every item has finished", "schema": {"type": "string"}},
}


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


@bp.post("", operation_id="submit_batch", summary="Submit a batch",
         responses={
             202: answer(BatchBody, "accepted; inputs refused for their content are listed under 'rejected'",
                         links=BATCH_LINKS, headers=_SUBMITTED_HEADERS),
             200: answer(BatchBody, "every item finished at once (cache), or an Idempotency-Key replay",
                         links=BATCH_LINKS, headers=_SUBMITTED_HEADERS),
             **error_responses(400, 401, 403, 409, 413, 415, 422, 429, 503)})
def submit(body: BatchRequest, header: IdempotencyHeader) -> Any:
    """Accept a batch: 202 with its id, counts and links (200 when every item finished at once)."""
    try:
        batch, rejected, created = service().submit(body, correlation_id=g.get("correlation_id"),
                                                    idempotency_key=header.idempotency_key,
                                                    owner=current_principal())
    except InvalidBatch as exc:
        raise ApiError(400, exc.code, str(exc), errors=exc.errors) from exc
    response_body = batch_body(batch)
    response_body["rejected"] = [r.public() for r in rejected]
    return accepted_response(response_body, url_for("batches.get_batch", batch_id=batch.id), created, batch.done)


@bp.get("", operation_id="list_batches", summary="List batches",
        responses={200: answer(BatchListBody, "batches newest first"), **error_responses(400, 401, 403, 429, 503)})
def list_batches(query: ListQuery) -> Any:
    """Batches newest first: ``?limit=&cursor=`` (the tenant's own)."""
    batches, next_cursor = service().list(limit=query.limit, cursor=query.cursor, tenant=tenant())
    return jsonify({"batches": [batch_body(b) for b in batches],
                    "next_cursor": str(next_cursor) if next_cursor is not None else None})


@bp.get("/<batch_id>", operation_id="get_batch", summary="A batch's status",
        responses={200: answer(BatchBody, "the batch"), **error_responses(401, 403, 404, 429, 503)})
def get_batch(path: BatchPath) -> Any:
    """A batch's status, counts, percent done, characters, audio duration and times."""
    return jsonify(batch_body(service().get(path.batch_id, tenant())))


@bp.get("/<batch_id>/items", operation_id="list_batch_items", summary="A batch's items",
        responses={200: answer(BatchItemsBody, "items in input order"), **error_responses(400, 401, 403, 404, 429, 503)})
def list_items(path: BatchPath, query: BatchItemsQuery) -> Any:
    """Items in input order: ``?status=&cursor=&limit=`` (cursor: the index to continue from)."""
    items, next_cursor = service().items(path.batch_id, status=query.status, cursor=query.cursor, limit=query.limit,
                                         tenant=tenant())
    return jsonify({"batch_id": path.batch_id, "items": [item_body(i) for i in items],
                    "next_cursor": str(next_cursor) if next_cursor is not None else None})


@bp.get("/<batch_id>/result", operation_id="get_batch_result", summary="The results as a zip",
        responses={200: answer(None, "a zip: the files in input order and manifest.json", headers=_BATCH_HEADERS,
                               media=binary("application/zip")),
                   **error_responses(400, 401, 403, 404, 409, 413, 429, 503)})
def get_result(path: BatchPath, query: BatchResultQuery) -> Any:
    """The results as a streamed zip: files in input order plus ``manifest.json``.

    ``?concatenate=1`` (or ``concatenate: true`` at submit) puts one concatenated audio
    file in the zip instead; ``?concatenate=0`` asks for separate files; ``?gap_ms=``
    overrides the batch's gap. Allowed while the batch runs (the manifest says what is missing).
    """
    batch_id = path.batch_id
    svc = service()
    concatenate = None if query.concatenate is None else query.concatenate in ("1", "true")
    plan = plan_result(svc, batch_id, concatenate=concatenate, gap_ms=query.gap_ms, tenant=tenant())
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


@bp.get("/<batch_id>/audio", operation_id="get_batch_audio", summary="The items in one audio file",
        responses={200: answer(None, "every succeeded item, concatenated", headers=_BATCH_HEADERS,
                               media=binary(*AUDIO_MEDIA_TYPES)),
                   **error_responses(400, 401, 403, 404, 409, 413, 429, 503)})
def get_audio(path: BatchPath, query: BatchAudioQuery) -> Any:
    """Every succeeded item concatenated into one file of the batch's format (``?gap_ms=``)."""
    batch_id = path.batch_id
    svc = service()
    plan = plan_result(svc, batch_id, concatenate=True, gap_ms=query.gap_ms, tenant=tenant())
    audio, offsets, _ = concatenate_audio(svc, plan)
    fmt = FORMATS[plan.batch.format]
    response = Response(audio, mimetype=fmt.media_type)
    response.headers["Content-Disposition"] = attachment(plan.concat_file, fmt.extension, default=batch_id)
    response.headers["X-Batch-Status"] = plan.batch.status.value
    response.headers["X-Batch-Complete"] = "true" if plan.complete else "false"
    response.headers["X-Batch-Items-Included"] = str(sum(1 for o in offsets if o is not None))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/<batch_id>/cancel", operation_id="cancel_batch", summary="Cancel a batch",
         responses={200: answer(BatchBody, "the batch after cancelling"), **error_responses(401, 403, 404, 429, 503)})
def cancel(path: BatchPath) -> Any:
    """Cancel every item that has not finished; finished items keep their audio."""
    return jsonify(batch_body(service().cancel(path.batch_id, tenant())))


@bp.delete("/<batch_id>", operation_id="delete_batch", summary="Delete a batch",
           responses={200: answer(DeletedBody, "deleted, with its items: 404 from now on"),
                      **error_responses(401, 403, 404, 429, 503)})
def delete(path: BatchPath) -> Any:
    """Delete a batch: cancel what is unfinished, drop every item's audio; it and its items are 404 from then on."""
    batch = service().delete(path.batch_id, tenant())
    return jsonify({"id": batch.id, "object": "batch", "deleted": True})

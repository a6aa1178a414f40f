"""Reading a JSON body before its model sees it, with errors that say what was wrong (415, 400, 413).

Also the one place a download's ``Content-Disposition`` is built (:func:`attachment`), and the
answer to an accepted submit (:func:`accepted_response`). Query strings, paths and headers are
read by their models (``app.schemas``).
"""
from __future__ import annotations

import json
import logging
import unicodedata
from typing import Any
from urllib.parse import quote

from flask import Request, Response, jsonify
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import quote_header_value

from tasks.batch_result import safe_name

from .errors import ApiError

log = logging.getLogger(__name__)

#: The deepest a JSON body may nest arrays and objects (a job is 1 deep, a batch 3).
MAX_JSON_DEPTH = 64

#: RFC 5987 ``attr-char`` besides letters and digits: what ``filename*`` leaves unencoded
#: (the set werkzeug's ``send_file`` uses).
_ATTR_CHARS = "!#$&+-.^_`|~"


def json_body(request: Request) -> Any:
    """The parsed JSON body: 415 when it is not JSON, 400 when it is malformed or nested too deeply,
    413 when it is larger than ``MAX_CONTENT_LENGTH``."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       f"send the request body as JSON (Content-Type: application/json), not {request.mimetype or 'nothing'}")
    raw = _body(request)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    too_deep = ApiError(400, "invalid_json", f"the request body is nested too deeply: at most {MAX_JSON_DEPTH} "
                                             "levels of arrays and objects are read")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from exc
    # A body with no more brackets than the limit cannot nest deeper (in any encoding json.loads reads).
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and nesting_exceeds(value, MAX_JSON_DEPTH):
        raise too_deep
    return value


def _body(request: Request) -> bytes:
    """The request body, or 413 when it is over ``MAX_CONTENT_LENGTH``.

    A body with a ``Content-Length`` over the limit is refused by werkzeug before it is
    read. A chunked one (no ``Content-Length``) is read through a stream that stops at the
    limit without saying so: a body that fills it is looked past by one byte.
    """
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit \
            and request.environ["wsgi.input"].read(1):
        log.warning("refused a chunked request body over %d bytes", limit)
        raise RequestEntityTooLarge()
    return raw


def nesting_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists and dicts more than ``limit`` deep (walked without recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (list, dict)) else []
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        pending.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False


def attachment(name: str | None, extension: str, default: str) -> str:
    """The ``Content-Disposition`` of a download named ``name`` (``default`` when nothing usable is left).

    ``filename`` is an ASCII fallback: accents folded away (NFKD), other non-ASCII letters
    dropped, and made one safe path component by :func:`tasks.batch_result.safe_name` (no
    folders, ``..``, control characters or quotes). ``filename*`` (RFC 6266, RFC 5987
    ``UTF-8''`` percent-encoding) carries the name with its Unicode, made safe the same way;
    it is left out when it says nothing more. The extension is added unless the name has it.
    """
    folded = unicodedata.normalize("NFKD", name or "").encode("ascii", "ignore").decode("ascii")
    fallback = _with_extension(safe_name(folded) or default, extension)
    real = _with_extension(safe_name(name) or default, extension)
    parts = ["attachment", f"filename={quote_header_value(fallback, allow_token=False)}"]
    if real != fallback:
        parts.append("filename*=UTF-8''" + quote(real, safe=_ATTR_CHARS))
    return "; ".join(parts)


def _with_extension(base: str, extension: str) -> str:
    if base.lower().endswith("." + extension.lower()):
        return base
    return f"{base}.{extension}"


def accepted_response(body: Any, location: str, created: bool, finished: bool) -> Response:
    """202 for new work still to do; 200 when it finished at once or an Idempotency-Key replayed it."""
    response = jsonify(body)
    response.status_code = 202 if created and not finished else 200
    response.headers["Location"] = location
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response

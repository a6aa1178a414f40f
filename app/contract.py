"""The API as a contract: the flask-openapi3 app, how a request that breaks a model is answered, and the
pieces of the OpenAPI 3.1 document every route shares.

Every route declares its path, query and body as pydantic models (``app.schemas``,
``tasks.job_request``) and its answers as ``responses``; flask-openapi3 validates requests
with those models and writes ``/openapi.json`` from them, so the document and the server
cannot disagree. This module keeps the rest of the API's rules in that machinery:

* a body is read by :func:`app.requests.json_body` first, so a body that is not JSON is a
  415, malformed or too deeply nested JSON a 400 and an oversized one a 413, as before;
* a model's refusal is a 400 in this API's error shape, ``{"error": {"code", "message",
  "param", "errors"}}``, not flask-openapi3's default 422 list (:func:`validation_error_response`);
  a path id of the wrong shape is the 404 an unknown id gets (ids are never echoed into keys);
* the document gets the security schemes, the error schema, and no response this API
  never sends (flask-openapi3 adds its 422 model to every operation).
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, get_type_hints

from flask import Request, Response, current_app, request
from flask_openapi3 import Info, OpenAPI
from pydantic import BaseModel, ValidationError

from .errors import error_response
from .requests import json_body
from .schemas import ErrorBody, path_not_found

log = logging.getLogger(__name__)

__all__ = [
    "API_VERSION",
    "SECURITY",
    "SECURITY_SCHEMES",
    "SSE_EVENT",
    "ApiRequest",
    "ServiceApi",
    "answer",
    "binary",
    "error_responses",
    "link",
    "report_with_error",
    "validation_error_response",
]

API_VERSION = "1.0.0"

#: How a caller shows its key (``app.auth``): any one of these.
SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer tts_..."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "basic": {"type": "http", "scheme": "basic", "description": "any user name; the key is the password"},
}
#: The ``security`` of an operation that needs a key once keys exist (an open API takes none).
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}, {"basic": []}, {}]

#: One Server-Sent Event, as a client reads it off a ``text/event-stream`` answer.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
                   "retry": {"type": "integer"}},
}

#: What each error status means here, for the document.
_ERROR_DESCRIPTIONS = {
    400: "the request is malformed or names something that does not exist (error.param says which field)",
    401: "an API key is needed (keys exist) or the key is unknown or revoked",
    403: "the key lacks the scope this route needs",
    404: "no such resource for this tenant",
    409: "the resource is not in a state that allows this",
    410: "the audio has expired or was deleted",
    413: "the body, the text or the batch is larger than the limit",
    415: "the body is not JSON",
    416: "the Range asks for bytes the file does not have (Content-Range gives its length)",
    422: "the Idempotency-Key was used for a different request",
    429: "a rate limit, quota or the queue bound was reached: retry after Retry-After seconds",
    502: "the job failed",
    503: "the job store is unreachable or full: nothing was accepted; retry after Retry-After seconds",
    504: "the job did not finish in time; poll it",
}
_RETRY_HEADERS = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}},
}
_LIMIT_HEADERS = {
    **_RETRY_HEADERS,
    "RateLimit-Limit": {"description": "the limit of this key", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "what is left of it", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "seconds until it resets", "schema": {"type": "integer"}},
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def error_responses(*statuses: int) -> dict[str | int, dict[str, Any]]:
    """OpenAPI responses for ``statuses``, each with the error body (and its headers for 429 and 503)."""
    out: dict[str | int, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": _ERROR_DESCRIPTIONS[status], "content": _ERROR_CONTENT}
        if status == 429:
            entry["headers"] = _LIMIT_HEADERS
        elif status in (503, 504):
            entry["headers"] = _RETRY_HEADERS
        out[str(status)] = entry
    return out


#: Answer models referenced by :func:`answer`, put into the document's components.
_ANSWER_MODELS: dict[str, type[BaseModel]] = {}


def answer(model: type[BaseModel] | None, description: str, *, links: Mapping[str, Any] | None = None,
           headers: Mapping[str, Any] | None = None, media: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI response: JSON of ``model`` (or the ``media`` types given), with links and headers."""
    entry: dict[str, Any] = {"description": description}
    if model is not None:
        _ANSWER_MODELS[model.__name__] = model
        entry["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if media is not None:
        entry["content"] = dict(media)
    if links:
        entry["links"] = dict(links)
    if headers:
        entry["headers"] = dict(headers)
    return entry


def report_with_error(model: type[BaseModel]) -> dict[str, Any]:
    """The content of a report that also carries the error (a health view answering 503)."""
    _ANSWER_MODELS[model.__name__] = model
    return {"application/json": {"schema": {"allOf": [{"$ref": f"#/components/schemas/{model.__name__}"},
                                                      {"$ref": "#/components/schemas/ErrorBody"}]}}}


def binary(*media_types: str) -> dict[str, Any]:
    """The content of a file answer in each of ``media_types``."""
    return {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in media_types}


def link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to ``operation_id`` with ``parameters`` taken from this answer."""
    return {"operationId": operation_id, "parameters": parameters, "description": description}


class ApiRequest(Request):
    """A request whose JSON body was read once, by :func:`app.requests.json_body`, before validation."""

    checked_json: Any = ...

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """The body :meth:`ServiceApi._check_json_body` read, else werkzeug's reading."""
        if self.checked_json is not ...:
            return self.checked_json
        return super().get_json(force=force, silent=silent, cache=cache)


def validation_error_response(exc: ValidationError) -> Response:
    """A model's refusal in this API's shape: 400 naming the first field at fault (404 for a path id)."""
    query = exc.title.endswith("Query")
    not_found = path_not_found(exc.title, request.view_args or {})
    if not_found is not None:
        return error_response(404, not_found.code, str(not_found))
    if exc.title.endswith("Header"):
        return error_response(400, "invalid_idempotency_key",
                              "Idempotency-Key must be 1 to 255 characters, not all blank", param="Idempotency-Key")
    # The null branch of an optional field adds "should be None": its other branch says what is wrong.
    faults = [err for err in exc.errors() if "none" not in err["loc"][1:]] or exc.errors()
    errors: list[dict[str, str]] = []
    for err in faults:
        entry = {"param": _param(err["loc"]), "message": _message(err, query)}
        if all(e["param"] != entry["param"] for e in errors):
            errors.append(entry)
    first = str(exc.errors()[0]["type"])
    code = first if first in _OWN_CODES else "invalid_parameter" if query else "invalid_request"
    message = errors[0]["message"]
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}: see 'errors')"
    return error_response(400, code, message, param=errors[0]["param"] or None, errors=errors)


#: Error types a model raises with a code of their own (``PydanticCustomError``): the code goes out as is.
_OWN_CODES = frozenset({"empty_input"})

#: Parts of an error's location that name a branch of a union, not a field.
_BRANCH_NAMES = frozenset({"none", "str", "int", "float", "bool", "list", "dict"})


def _param(loc: tuple[int | str, ...]) -> str:
    """``('inputs', 3, 'speed')`` as ``inputs[3].speed``, without the branches of a union (``constrained-int``,
    a model's class name): every field name here is lower-case."""
    out = ""
    for part in loc:
        if isinstance(part, str) and (part in _BRANCH_NAMES or part[:1].isupper() or any(c in part for c in "-[]()'")):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


#: What a pydantic error type means, said of the field.
_PHRASES = {
    "extra_forbidden": "is not a field of this request",
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be a list",
    "string_pattern_mismatch": "must not be blank",
}


def _message(err: Mapping[str, Any], query: bool) -> str:
    """One refusal for people: ``'inputs[3].speed' must be a number``."""
    param = _param(err["loc"])
    kind = str(err["type"])
    phrase = _PHRASES.get(kind) or str(err["msg"]).removeprefix("Input ").removeprefix("Value ")
    if not param:
        return "the request body must be a JSON object" if not query else f"the query {phrase}"
    where = "query parameter " if query else ""
    shown = f", got {_shown(err['input'])}" if kind.endswith(("_type", "_parsing", "literal_error")) else ""
    return f"{where}'{param}' {phrase}{shown}"


def _shown(value: Any, most: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


class ServiceApi(OpenAPI):
    """The flask-openapi3 app with this API's error shape, request class and document fixes."""

    request_class = ApiRequest

    def __init__(self, import_name: str, **kwargs: Any) -> None:
        super().__init__(import_name, info=Info(title="tts-batch", version=API_VERSION,
                                                description="A queued, batch text-to-speech service. "
                                                            "See docs/api.md for the guide."),
                         security_schemes=SECURITY_SCHEMES,  # type: ignore[arg-type]
                         validation_error_status=400, validation_error_callback=validation_error_response,
                         doc_ui=False, **kwargs)
        self._body_endpoints: dict[str, bool] = {}

    def _service_limits(self, schemas: dict[str, Any]) -> None:
        """Write what this service's settings and voices allow into the request schemas.

        The models hold what never changes; the voice ids, the text limit and the batch size
        are this deployment's, and a client (or a fuzzer) should know them: a voice outside the
        list is refused (blends such as ``a+b`` are accepted too, beyond the list).
        """
        ext = self.extensions.get("tts")
        if not ext:
            return
        settings = ext["settings"]
        voice_ids = sorted(info.id for info in ext["runtime"].catalog.list())
        for name in ("JobInput", "SpeechOptions"):
            voice = schemas.get(name, {}).get("properties", {}).get("voice", {})
            for branch in voice.get("anyOf", []):
                if branch.get("type") == "string":
                    branch["enum"] = voice_ids
        for name, field in (("JobInput", "text"), ("SpeechBody", "input")):
            text = schemas.get(name, {}).get("properties", {}).get(field)
            if text is not None:
                text["maxLength"] = settings.max_text_chars
        speech_voice = schemas.get("SpeechBody", {}).get("properties", {}).get("voice", {})
        for branch in speech_voice.get("anyOf", []):
            if branch.get("type") == "string":
                branch["enum"] = sorted(set(settings.openai_voices) | set(voice_ids))
        voice_object = schemas.get("VoiceId", {}).get("properties", {}).get("id")
        if voice_object is not None:
            voice_object["enum"] = voice_ids
        inputs = schemas.get("BatchRequest", {}).get("properties", {}).get("inputs")
        if inputs is not None:
            inputs["maxItems"] = settings.max_batch_inputs

    def check_json_bodies(self) -> None:
        """Read every model-validated body with :func:`app.requests.json_body` (install after auth: 401 first)."""
        self.before_request(self._check_json_body)

    def generate_spec_json(self) -> None:
        """flask-openapi3's document, with the error schema and without its validation model."""
        super().generate_spec_json()
        spec = self.spec_json
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for name in ("ValidationErrorModel", "Context"):
            schemas.pop(name, None)
        models: list[type[BaseModel]] = [ErrorBody, *_ANSWER_MODELS.values()]
        for model in models:
            schemas.update(_component_schemas(model))
        self._service_limits(schemas)
        for item in spec.get("paths", {}).values():
            for operation in item.values():
                responses = operation.get("responses", {})
                bad = responses.get("400", {}).get("content", {}).get("application/json", {}).get("schema", {})
                if bad.get("type") == "array":  # flask-openapi3's own: this operation takes no input
                    del responses["400"]

    def _check_json_body(self) -> None:
        """Read a body a route validates with a model: 415, 400 or 413 before the model sees it."""
        endpoint = request.endpoint
        view = current_app.view_functions.get(endpoint or "")
        if view is None or endpoint is None:
            return
        takes_body = self._body_endpoints.get(endpoint)
        if takes_body is None:
            takes_body = self._body_endpoints[endpoint] = _takes_body(view)
        if takes_body:
            request.checked_json = json_body(request)  # type: ignore[attr-defined]


def _takes_body(view: Callable[..., Any]) -> bool:
    try:
        return "body" in get_type_hints(inspect.unwrap(view))
    except (NameError, TypeError):  # a plain Flask view with annotations that do not resolve: no model
        return False


def _component_schemas(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {model.__name__: schema, **defs}

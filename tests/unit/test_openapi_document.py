"""The OpenAPI document (``GET /openapi.json``) against the app's routes and ``docs/api.md``.

The document is built from the routes' models, so it cannot disagree with what the server
accepts; these tests keep it complete (every route of the app is in it, with its methods,
and nothing else is), well-formed (a valid OpenAPI 3.1 document whose operations say how
they fail) and keep ``docs/api.md`` listing exactly the same routes, so that neither the
guide nor the reference can drift from the other. No Redis: ``create_app()`` connects to
nothing until a request needs it, and the document needs nothing.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from flask import Flask
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from app import create_app
from app.schemas import ItemStatusName, JobStatusName
from settings import Settings
from tasks.status import JobStatus

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
#: The HTTP methods an OpenAPI path item may hold operations under.
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
#: Methods Flask adds to every rule by itself: not part of the API's description.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})

#: Rules that are pages or files, not API: neither the document nor docs/api.md lists them.
#: Keep this short; a route that takes or gives data belongs in the document.
NOT_API = frozenset({
    "/static/{filename}",            # the app's static files (scripts and styles of the pages)
    "/dashboard/static/{filename}",  # the dashboard's scripts and styles (GET /dashboard is documented)
    "/docs",                         # Swagger UI: a page on the document
    "/docs/assets/{filename}",       # Swagger UI's files, from the flask-openapi3-swagger wheel
    "/openapi.json",                 # the document itself
    "/app",                          # the page for people (docs/app.md)
    "/app/static/{filename}",        # its scripts and styles
})

#: Operations with a path parameter that do not answer an unknown one with 404, and why.
NO_404: dict[tuple[str, str], str] = {}
ERROR_BODY_REF = "#/components/schemas/ErrorBody"


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: ``/v1/models/<path:model_id>`` is ``/v1/models/{model_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def shape(path: str) -> str:
    """A path with its parameters unnamed, to compare the guide's ``{id}`` with the document's ``{job_id}``."""
    return re.sub(r"\{[^}]*\}", "{}", path)


@pytest.fixture(scope="module")
def app() -> Flask:
    # Port 1: nothing listens there, so a request that did reach Redis would fail at once.
    return create_app(Settings(redis_url="redis://127.0.0.1:1/0"))


@pytest.fixture(scope="module")
def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    doc = response.get_json()
    assert isinstance(doc, dict)
    return doc


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every (METHOD, path, operation) of the document."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method.upper(), path, operation


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for method, path, _ in operations(document)}


def app_routes(app: Flask, *, pages: bool = False) -> set[tuple[str, str]]:
    """Every (METHOD, path) the app answers, as OpenAPI paths; pages and files (NOT_API) only if ``pages``."""
    routes: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        path = openapi_path(rule.rule)
        if pages or path not in NOT_API:
            routes.update((method, path) for method in (rule.methods or set()) - IMPLICIT_METHODS)
    return routes


def listed(routes: set[tuple[str, str]]) -> str:
    return "\n".join(f"  {method} {path}" for method, path in sorted(routes, key=lambda r: (r[1], r[0]))) or "  (none)"


# --- the document itself --------------------------------------------------------------------------
def test_the_document_is_a_valid_openapi_3_1_document(document: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"]), document["openapi"]
    validate(document, cls=OpenAPIV31SpecValidator)  # raises, naming the first fault


def test_the_document_describes_every_route_of_the_app_and_no_other(app: Flask, document: dict[str, Any]) -> None:
    routes, described = app_routes(app), documented_routes(document)
    missing = routes - described
    unknown = described - routes
    assert not missing and not unknown, (
        f"routes of the app missing from /openapi.json (or documented with other methods):\n{listed(missing)}\n"
        f"operations of /openapi.json the app does not answer:\n{listed(unknown)}\n"
        f"(pages and files that are not API go in NOT_API, with a comment)")


def test_every_operation_has_an_id_a_summary_and_a_success(document: dict[str, Any]) -> None:
    faults, ids = [], []
    for method, path, operation in operations(document):
        ids.append(operation.get("operationId"))
        if not operation.get("operationId"):
            faults.append(f"{method} {path}: no operationId")
        if not operation.get("summary"):
            faults.append(f"{method} {path}: no summary")
        if not any(str(status).startswith("2") for status in operation.get("responses", {})):
            faults.append(f"{method} {path}: no 2xx response")
    duplicates = sorted({i for i in ids if i and ids.count(i) > 1})
    assert not faults and not duplicates, "\n".join(faults + [f"operationId used twice: {d}" for d in duplicates])


def test_every_operation_documents_how_it_fails(document: dict[str, Any]) -> None:
    faults = []
    for method, path, operation in operations(document):
        responses = {str(status) for status in operation.get("responses", {})}
        needed = set()
        if operation.get("security"):  # takes a key once keys exist
            needed |= {"401", "403", "429"}
        if "requestBody" in operation:
            needed |= {"400", "415"}
        if "{" in path and (method, path) not in NO_404:
            needed.add("404")
        if needed - responses:
            faults.append(f"{method} {path}: no {', '.join(sorted(needed - responses))} response")
    assert not faults, "\n".join(faults)


def test_every_error_answer_is_the_error_body(document: dict[str, Any]) -> None:
    assert "ErrorBody" in document["components"]["schemas"]
    faults = []
    for method, path, operation in operations(document):
        for status, response in operation.get("responses", {}).items():
            if int(status) < 400:
                continue
            content = response.get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            refs = {schema.get("$ref")} | {part.get("$ref") for part in schema.get("allOf", [])}
            if set(content) != {"application/json"} or ERROR_BODY_REF not in refs:
                faults.append(f"{method} {path} {status}: {content or 'no content'}")
    assert not faults, (f"error responses that are not {ERROR_BODY_REF} (a body that is more than the error, "
                        f"such as a health report with its 'error', can say so with allOf [its schema, ErrorBody]):\n"
                        + "\n".join(faults))


@pytest.mark.parametrize(("path", "targets"), [
    ("/v1/jobs", {"get_job", "get_job_audio", "cancel_job"}),
    ("/v1/batches", {"get_batch", "list_batch_items", "get_batch_result", "get_batch_audio", "cancel_batch"}),
])
def test_a_submit_links_to_what_follows_it(document: dict[str, Any], path: str, targets: set[str]) -> None:
    by_id = {op["operationId"]: (p, op) for _, p, op in operations(document)}
    responses = document["paths"][path]["post"]["responses"]
    for status in ("200", "202"):
        links = responses[status].get("links", {})
        linked = {link["operationId"] for link in links.values()}
        assert targets <= linked, f"POST {path} {status} does not link to {sorted(targets - linked)}"
        for name, link in links.items():
            assert link["operationId"] in by_id, f"POST {path} {status} link {name}: no operation {link['operationId']!r}"
            target_path, target = by_id[link["operationId"]]
            taken = {p["name"] for p in target.get("parameters", []) if p.get("in") == "path"}
            assert set(link.get("parameters", {})) <= taken, (
                f"POST {path} {status} link {name} sets {sorted(link.get('parameters', {}))}; {target_path} takes "
                f"{sorted(taken)}")


# --- docs/api.md ----------------------------------------------------------------------------------
#: A route as docs/api.md writes it: ``GET /v1/jobs/{id}``, maybe with a query (``?status=&limit=``).
_ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)(?:\?[^`]*)?`")


def guide_routes(markdown: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """docs/api.md's routes: (those it documents, in a heading or a table's first cell; every one it names)."""
    documented, named = set(), set()
    for line in markdown.splitlines():
        found = {(method, shape(path)) for method, path in _ROUTE.findall(line)}
        named |= found
        if line.startswith("#"):
            documented |= found
        elif line.startswith("|"):
            first_cell = line.strip("|").split("|")[0]
            documented |= {(method, shape(path)) for method, path in _ROUTE.findall(first_cell)}
    return documented, named


def test_docs_api_md_documents_the_routes_of_the_document_and_no_other(document: dict[str, Any]) -> None:
    reference = {r for r in documented_routes(document) if r[1] not in NOT_API}
    by_shape = {(method, shape(path)): f"{method} {path}" for method, path in reference}
    documented, _ = guide_routes(API_MD.read_text(encoding="utf-8"))
    documented -= {(method, shape(path)) for method in ("GET", "POST", "PUT", "PATCH", "DELETE") for path in NOT_API}
    missing = sorted(by_shape[r] for r in set(by_shape) - documented)
    extra = sorted(f"{method} {path}" for method, path in documented - set(by_shape))
    assert not missing and not extra, (
        "docs/api.md and /openapi.json list different routes (docs/api.md documents a route in a heading or in "
        "the first cell of a table row, as `GET /v1/jobs/{id}`):\n"
        f"in /openapi.json, missing from docs/api.md: {missing or 'none'}\n"
        f"in docs/api.md, missing from /openapi.json: {extra or 'none'}")


def test_every_route_docs_api_md_names_exists(app: Flask) -> None:
    routes = {(method, shape(path)) for method, path in app_routes(app, pages=True)}
    _, named = guide_routes(API_MD.read_text(encoding="utf-8"))
    assert not named - routes, f"docs/api.md names routes the app does not answer: {sorted(named - routes)}"


def test_the_guide_reader_finds_headings_and_table_rows_only() -> None:
    documented, named = guide_routes(
        "### `GET /v1/jobs/{id}`: poll\n"
        "| `GET /v1/dlq?limit=&offset=`, `DELETE /v1/dlq` | see `POST /v1/dlq/replay` |\n"
        "Prose naming `POST /v1/jobs` documents nothing.\n")
    assert documented == {("GET", "/v1/jobs/{}"), ("GET", "/v1/dlq"), ("DELETE", "/v1/dlq")}
    assert named == documented | {("POST", "/v1/dlq/replay"), ("POST", "/v1/jobs")}


def test_the_status_names_of_the_models_are_the_services() -> None:
    """Found by schemathesis: the first JobListQuery allowed 'retrying', which JobStatus lacks (a 500)."""
    assert set(get_args(JobStatusName)) == {s.value for s in JobStatus}
    assert set(get_args(ItemStatusName)) == {s.value for s in JobStatus} | {"expired"}

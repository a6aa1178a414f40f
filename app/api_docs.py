"""The API's document for programs and its page for people: ``GET /openapi.json`` and ``GET /docs``.

``/openapi.json`` is the OpenAPI 3.1 document flask-openapi3 builds from the routes' models
(``app.contract``). ``/docs`` is Swagger UI on it, served from the assets inside the
``flask-openapi3-swagger`` wheel under ``/docs/assets/``: nothing comes from a CDN, so the
page works on a machine with no way out. Both are open like the probes: the document
describes the API, it holds no data. Swagger UI's own script is ``app/static/api-docs.js``
(the page policy allows no inline script); the policy of this page adds ``'unsafe-inline'``
styles only, since Swagger UI sets style attributes as it renders.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import flask_openapi3_swagger
from flask import Blueprint, current_app, jsonify, render_template

from .security import page_policy

__all__ = ["DOCS_POLICY", "bp"]

_ASSETS = Path(flask_openapi3_swagger.__file__).parent / "templates" / "swagger"

bp = Blueprint("api_docs", __name__, static_folder=str(_ASSETS), static_url_path="/docs/assets")

#: The page policy of ``/docs``: the strict one, with inline styles (Swagger UI renders with them).
DOCS_POLICY = page_policy(style_src="'self' 'unsafe-inline'")


@bp.get("/openapi.json")
def openapi_document() -> Any:
    """The OpenAPI 3.1 document of this API."""
    return jsonify(current_app.api_doc)  # type: ignore[attr-defined]


@bp.get("/docs")
def docs_page() -> Any:
    """Swagger UI on ``/openapi.json``, from the wheel's assets."""
    response = current_app.make_response(render_template("api_docs.html"))
    response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response

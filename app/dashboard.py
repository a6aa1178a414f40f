"""``/dashboard``: a live page of queue length, throughput, latency, cache, CPU and memory.

The page is plain HTML with one small vanilla-JavaScript file (``app/static/dashboard.js``)
that draws its own SVG charts: no CDN, no chart library, so it works offline. It seeds its
charts from ``/api/metrics/history`` and then polls ``/metrics/json`` every ``?refresh=``
seconds (default 2, 1..60), keeping the last 15 minutes in the browser.
"""
from __future__ import annotations

from typing import Any

from flask import render_template
from flask_openapi3 import APIBlueprint, Tag
from pydantic import Field

from .contract import SECURITY, answer, error_responses
from .schemas import QueryModel

bp = APIBlueprint("dashboard", __name__, template_folder="templates", static_folder="static",
                  static_url_path="/dashboard/static", abp_security=SECURITY,
                  abp_tags=[Tag(name="pages", description="pages for browsers")])

DEFAULT_REFRESH_SECONDS = 2
MIN_REFRESH_SECONDS, MAX_REFRESH_SECONDS = 1, 60
#: Hours of stored history the page starts from.
HISTORY_HOURS = 1


class DashboardQuery(QueryModel):
    """How often the page updates."""

    refresh: int = Field(DEFAULT_REFRESH_SECONDS, ge=MIN_REFRESH_SECONDS, le=MAX_REFRESH_SECONDS,
                         description="seconds between updates")


@bp.get("/dashboard", operation_id="get_dashboard", summary="The operators' dashboard",
        responses={200: answer(None, "the page", media={"text/html": {"schema": {"type": "string"}}}),
                   **error_responses(400, 401, 403, 429)})
def dashboard(query: DashboardQuery) -> Any:
    """The dashboard page (``?refresh=`` seconds between updates, 1..60)."""
    response = render_template("dashboard.html", refresh=query.refresh, history_hours=HISTORY_HOURS)
    return response, 200, {"Cache-Control": "no-store", "Content-Type": "text/html; charset=utf-8"}

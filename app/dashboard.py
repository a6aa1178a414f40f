"""``/dashboard``: a live page of queue length, throughput, latency, cache, CPU and memory.

The page is plain HTML with one small vanilla-JavaScript file (``app/static/dashboard.js``)
that draws its own SVG charts: no CDN, no chart library, so it works offline. It seeds its
charts from ``/api/metrics/history`` and then polls ``/metrics/json`` every ``?refresh=``
seconds (default 2, 1..60), keeping the last 15 minutes in the browser.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from .errors import ApiError

bp = Blueprint("dashboard", __name__, template_folder="templates", static_folder="static",
               static_url_path="/dashboard/static")

DEFAULT_REFRESH_SECONDS = 2
MIN_REFRESH_SECONDS, MAX_REFRESH_SECONDS = 1, 60
#: Hours of stored history the page starts from.
HISTORY_HOURS = 1


@bp.get("/dashboard")
def dashboard() -> Any:
    """The dashboard page (``?refresh=`` seconds between updates, 1..60)."""
    raw = request.args.get("refresh")
    refresh = DEFAULT_REFRESH_SECONDS
    if raw is not None and raw.strip():
        try:
            refresh = int(raw)
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", f"query parameter 'refresh' must be an integer, got {raw!r}") from exc
        if not MIN_REFRESH_SECONDS <= refresh <= MAX_REFRESH_SECONDS:
            raise ApiError(400, "invalid_parameter",
                           f"query parameter 'refresh' must be between {MIN_REFRESH_SECONDS} and {MAX_REFRESH_SECONDS}")
    response = render_template("dashboard.html", refresh=refresh, history_hours=HISTORY_HOURS)
    return response, 200, {"Cache-Control": "no-store", "Content-Type": "text/html; charset=utf-8"}

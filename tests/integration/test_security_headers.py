"""Security headers: ``nosniff`` on every response; on HTML pages a self-only CSP that forbids
framing, ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``. The dashboard's page
holds nothing the policy would block (no inline script, style or event handler); the headless
Chromium test (tests/e2e/test_dashboard.py) checks that it still draws its charts under it."""
from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: sources}."""
    out: dict[str, list[str]] = {}
    for part in header.split(";"):
        name, *sources = part.split()
        out[name] = sources
    return out


class InlineCode(HTMLParser):
    """Collects what a self-only policy would block: inline scripts, styles and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script":
            self._in_script = True
            src = dict(attrs).get("src")
            if src:
                self.scripts.append(src)
            else:
                self.found.append("a <script> without src")
        if tag == "style":
            self.found.append("a <style> element")
        if "style" in names:
            self.found.append(f"a style attribute on <{tag}>")
        self.found += [f"{name} on <{tag}>" for name in names if name.startswith("on")]
        for name, value in attrs:
            if value and value.strip().lower().startswith("javascript:"):
                self.found.append(f"a javascript: URL in {name} on <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("code inside <script>")


def test_the_dashboard_page_carries_the_policy(make_stack: Any) -> None:
    stack = make_stack(start=False)
    r = stack.client.get("/dashboard")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    csp = policy(r.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]  # the page's fetch() of /metrics/json and the history
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    assert set(csp["img-src"]) == {"'self'", "data:"}  # data: for the empty favicon only
    assert not [s for sources in csp.values() for s in sources if "unsafe" in s or s in ("*", "http:", "https:")]

    parser = InlineCode()
    parser.feed(r.get_data(as_text=True))
    assert parser.found == [], parser.found
    assert parser.scripts == ["/dashboard/static/dashboard.js"]  # same origin: allowed by script-src 'self'


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/health/live", 200),
    ("GET", "/v1/voices", 200),
    ("GET", "/metrics/json", 200),
    ("GET", "/metrics/prometheus", 200),
    ("GET", "/dashboard/static/dashboard.js", 200),
    ("GET", "/dashboard/static/dashboard.css", 200),
    ("GET", "/dashboard?refresh=0", 400),
    ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef", 404),
    ("GET", "/no/such/page", 404),
    ("DELETE", "/health/live", 405),
    ("POST", "/v1/jobs", 415),
])
def test_every_response_is_nosniff(make_stack: Any, method: str, path: str, status: int) -> None:
    stack = make_stack(start=False)
    r = stack.client.open(path, method=method)
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    if r.mimetype == "application/json" and status >= 400:
        assert set(r.get_json()["error"]) >= {"code", "message"}


def test_refusals_before_the_route_are_nosniff_too(make_stack: Any) -> None:
    stack = make_stack(start=False, TTS_API_KEYS="a-key-for-this-test")
    r = stack.client.get("/v1/voices")
    assert r.status_code == 401
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.get_json()["error"]["code"] == "invalid_api_key"

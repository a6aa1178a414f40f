"""The dashboard in a real headless Chromium (Debian ``chromium``, driven by Playwright) against
the API under gunicorn and a real worker: the page loads with no outside request, its charts
and counters update after jobs run, failures show up, and a screenshot is kept.

The page is served with its Content-Security-Policy (app/security.py: no eval, no inline
code), and any violation is a console error that fails the tests. So every ``wait_for_function``
predicate is written as a function (``() => ...``): Playwright evaluates that string once, through
the DevTools protocol, and then calls the function on each poll, whereas a bare expression is
``eval``-ed again on every poll, which the policy refuses.

Set ``UPDATE_DOCS_SCREENSHOT=1`` to also write the screenshot to ``docs/dashboard.png``.
"""
from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from e2e_browser import chromium_page
from playwright.sync_api import Page

#: ``chromium`` first: without it the tests skip (fail under CI) before starting any worker.
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("chromium")]

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ("queue", "throughput", "latency", "cache", "system")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def unique(text: str) -> str:
    return f"{text} Dashboard {uuid.uuid4().hex[:6]}."


@pytest.fixture
def browser_page(chromium: str) -> Iterator[tuple[Page, dict[str, list[str]]]]:
    """A Chromium page, with the URLs it requested and any console or page errors (no Chromium: see ``chromium``)."""
    with chromium_page(chromium, 1400, 1000) as opened:
        yield opened


def counter(page: Page, element_id: str) -> int:
    text = page.inner_text(f"#{element_id}").strip()
    return int(text) if text.isdigit() else -1


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_dashboard_loads_updates_after_jobs_and_screenshots(stack: Any, serve: Any, browser_page: Any,
                                                            tmp_path: Path) -> None:
    page, seen = browser_page
    api = serve(stack)
    loaded = page.goto(api.base + "/dashboard?refresh=1")
    assert loaded is not None and "script-src 'self'" in loaded.headers["content-security-policy"]  # enforced
    assert page.title() == "tts-batch dashboard"
    page.wait_for_function("() => Number(document.body.dataset.updates) >= 1", timeout=30_000)
    for chart in CHARTS:
        assert page.locator(f"svg#chart-{chart}").count() == 1
    assert counter(page, "workers-online") >= 1
    assert page.inner_text("#status") in ("healthy", "degraded")  # degraded: dead letters of other tests
    submitted = counter(page, "jobs-submitted")
    succeeded = counter(page, "jobs-succeeded")
    assert submitted >= 0 and succeeded >= 0
    updates = int(page.get_attribute("body", "data-updates") or 0)

    ids = []
    for n in range(2):
        r = requests.post(api.base + "/v1/jobs", json={"text": unique(f"Chart me, number {n}."), "voice": "heart"},
                          timeout=10)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    for job_id in ids:
        assert stack.wait_for(job_id)["status"] == "succeeded"

    page.wait_for_function(
        f"() => Number(document.getElementById('jobs-succeeded').textContent) >= {succeeded + 2}", timeout=30_000)
    assert counter(page, "jobs-submitted") >= submitted + 2
    assert int(page.get_attribute("body", "data-updates") or 0) > updates
    # The throughput chart drew a point above its zero line (the jobs just done).
    page.wait_for_function("""() => {
        const line = document.querySelector('#chart-throughput polyline[data-series="succeeded"]');
        if (!line) return false;
        const ys = line.getAttribute('points').trim().split(' ').map(p => Number(p.split(',')[1]));
        return Math.min(...ys) < Math.max(...ys);
    }""", timeout=30_000)
    for chart in CHARTS:
        assert int(page.get_attribute(f"svg#chart-{chart}", "data-points") or 0) >= 1, chart
    assert page.locator("#chart-latency polyline, #chart-latency circle").count() >= 1
    latency_legend = page.inner_text("#legend-latency")
    assert "p95" in latency_legend and ("ms" in latency_legend or " s" in latency_legend)
    assert page.inner_text("#legend-system").count("%") == 2

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    width, height = png_size(data)
    assert width >= 1000 and height >= 700, (width, height)
    assert len(data) > 20_000, "a blank page compresses to almost nothing"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        (ROOT / "docs" / "dashboard.png").write_bytes(data)

    # Offline: every request stayed on the API (no CDN, no fonts from elsewhere).
    assert seen["requests"] and all(url.startswith(api.base) for url in seen["requests"]), seen["requests"]
    assert seen["errors"] == []


def test_dashboard_lists_recent_failures(make_stack: Any, serve: Any, browser_page: Any) -> None:
    stack = make_stack(TTS_FAULT_INJECTION="permanent")
    page, seen = browser_page
    api = serve(stack)
    r = requests.post(api.base + "/v1/jobs", json={"text": unique("This one fails."), "voice": "heart"}, timeout=10)
    job_id = r.json()["id"]
    assert stack.wait_for(job_id)["status"] == "failed"
    page.goto(api.base + "/dashboard?refresh=1")
    page.wait_for_function("() => Number(document.body.dataset.updates) >= 1", timeout=30_000)
    rows = page.locator("#failures tr")
    assert rows.count() == 1
    row = rows.first.inner_text()
    assert job_id in row and "heart" in row
    assert counter(page, "dead-letter") == 1
    assert counter(page, "jobs-failed") == 1
    assert page.inner_text("#status") == "degraded"
    assert seen["errors"] == []


def test_dashboard_shows_an_unreachable_api(stack: Any, serve: Any, browser_page: Any) -> None:
    page, _ = browser_page
    api = serve(stack)
    page.goto(api.base + "/dashboard?refresh=1")
    page.wait_for_function("() => Number(document.body.dataset.updates) >= 1", timeout=30_000)
    api.stop()
    page.wait_for_function("() => document.getElementById('status').textContent === 'unreachable'", timeout=30_000)
    assert page.locator("#banner").is_visible()
    assert "Cannot read metrics" in page.inner_text("#banner")


def test_dashboard_rejects_a_bad_refresh(stack: Any) -> None:
    r = stack.client.get("/dashboard?refresh=0")
    assert r.status_code == 400
    assert r.get_json()["error"]["code"] == "invalid_parameter"
    page = stack.client.get("/dashboard")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    js = stack.client.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and b"https://" not in js.get_data()

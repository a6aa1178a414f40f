"""The API's docs page (``/docs``: Swagger UI on ``/openapi.json``) in a real headless Chromium
(Debian ``chromium``, driven by Playwright) against the API under gunicorn.

The issue asks for "a docs page served offline (its assets from a wheel, nothing fetched from
a CDN)": so every request the page makes must go to the API's own origin, and the page must
render its operations under its own Content-Security-Policy (``app/api_docs.py``: no inline
script, no eval, inline styles only) with no console error and no CSP violation. The second
test runs with keys: the page and the document stay open, while "Try it out" on a route that
needs a key shows the server's 401 in the page.

As in ``test_dashboard.py``, every ``wait_for_function`` predicate is a function (``() => ...``),
never a bare expression that the policy would refuse to ``eval`` on each poll.

Set ``UPDATE_DOCS_SCREENSHOT=1`` to also write the screenshot to ``docs/api-docs.png``.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from e2e_browser import chromium_page
from playwright.sync_api import Locator, Page

#: ``chromium`` first: without it the tests skip (fail under CI) before starting any worker.
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("chromium")]

ROOT = Path(__file__).resolve().parents[2]
#: Records every CSP violation the page reports (the event fires even where no console line is written).
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
    window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || '(inline)'}`);
});
"""
#: Fields of ``JobInput`` (tasks/job_request.py) that the expanded POST /v1/jobs must show.
JOB_INPUT_FIELDS = ("text", "voice", "format", "speed", "sample_rate", "seed", "name", "callback_url")


@pytest.fixture
def browser_page(chromium: str) -> Iterator[tuple[Page, dict[str, list[str]]]]:
    """A Chromium page, with the URLs it requested, failed requests and any console or page errors."""
    with chromium_page(chromium, 1280, 1100, init_script=RECORD_CSP_VIOLATIONS) as opened:
        yield opened


def operation(page: Page, method: str, path: str) -> Locator:
    """The ``.opblock`` Swagger UI renders for ``method path``."""
    return page.locator(f'.opblock.opblock-{method}:has(.opblock-summary-path[data-path="{path}"])')


def open_docs(page: Page, base: str) -> None:
    """Load ``/docs`` under its policy and wait until Swagger UI has rendered the operations."""
    loaded = page.goto(base + "/docs")
    assert loaded is not None and loaded.status == 200
    csp = loaded.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp and "connect-src 'self'" in csp
    operation(page, "post", "/v1/jobs").wait_for(timeout=30_000)
    operation(page, "get", "/v1/batches/{batch_id}").wait_for(timeout=30_000)
    assert page.title() == "tts-batch API"


def assert_offline(page: Page, seen: dict[str, list[str]], base: str) -> None:
    """Every request went to the API's own origin (``data:`` URIs are no request to any host)."""
    origin = urlsplit(base)
    others = [url for url in seen["requests"]
              if urlsplit(url).scheme != "data" and urlsplit(url)[:2] != origin[:2]]
    assert others == [], f"requests to another origin: {others}"
    paths = {urlsplit(url).path for url in seen["requests"]}
    assert {"/docs", "/openapi.json", "/docs/assets/css/swagger-ui.css", "/docs/assets/js/swagger-ui-bundle.js",
            "/static/api-docs.js"} <= paths, paths
    assert seen["failed"] == []
    assert page.evaluate("() => window.__cspViolations") == []


def test_docs_page_renders_offline_under_its_policy(stack: Any, serve: Any, browser_page: Any,
                                                    tmp_path: Path) -> None:
    page, seen = browser_page
    api = serve(stack)
    open_docs(page, api.base)
    assert page.locator(".opblock").count() >= 30  # every route of the document, collapsed
    assert "tts-batch" in page.inner_text(".information-container .title")

    shot = tmp_path / "api-docs.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000, "a blank page compresses to almost nothing"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        (ROOT / "docs" / "api-docs.png").write_bytes(shot.read_bytes())

    # Expanding POST /v1/jobs shows its body's model, JobInput, with its fields.
    submit = operation(page, "post", "/v1/jobs")
    submit.locator(".opblock-summary").first.click()
    body = submit.locator(".opblock-section-request-body")
    body.wait_for(timeout=10_000)
    body.locator('button.tablinks[data-name="model"]').click()
    model = body.locator(".model-box")
    model.wait_for(timeout=10_000)
    assert model.locator(".json-schema-2020-12__title").first.inner_text() == "JobInput"
    # OAS 3.1: Swagger UI draws the model with its JSON Schema 2020-12 components, one item per field.
    fields = model.locator('article[data-json-schema-level="0"] > .json-schema-2020-12-body'
                           ' > .json-schema-2020-12-keyword--properties > ul > li.json-schema-2020-12-property')
    fields.first.wait_for(timeout=10_000)
    title = "article > .json-schema-2020-12-head .json-schema-2020-12__title"
    names = [item.locator(title).first.inner_text() for item in fields.all()]
    assert set(JOB_INPUT_FIELDS) <= set(names), names
    required = [item.locator(title).first.inner_text()
                for item in model.locator("li.json-schema-2020-12-property--required").all()]
    assert required == ["text"], required

    assert_offline(page, seen, api.base)
    assert seen["errors"] == []


def test_with_keys_the_docs_are_open_and_try_it_out_shows_401(make_stack: Any, serve: Any,
                                                              browser_page: Any) -> None:
    stack = make_stack(start=False, TTS_API_KEYS="a-key-for-the-docs-test")  # nothing here runs a job
    page, seen = browser_page
    api = serve(stack)
    assert requests.get(api.base + "/v1/jobs", timeout=10).status_code == 401
    document = requests.get(api.base + "/openapi.json", timeout=10)
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")

    open_docs(page, api.base)
    assert page.locator(".auth-wrapper .authorize").count() == 1  # the document declares the key schemes

    # "Try it out" on GET /v1/jobs without authorizing: the server's 401 is shown in the page.
    listing = operation(page, "get", "/v1/jobs")
    listing.locator(".opblock-summary").first.click()
    listing.locator("button.try-out__btn").click()
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/jobs", timeout=10_000) as answer:
        listing.locator("button.execute").click()
    assert answer.value.status == 401
    status = listing.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=10_000)
    assert status.inner_text().strip() == "401"
    assert "invalid_api_key" in listing.locator(".live-responses-table tr.response .response-col_description").first.inner_text()

    assert_offline(page, seen, api.base)
    # The only console error is Chromium's note about the 401 the page asked for.
    assert [e for e in seen["errors"] if "status of 401" not in e] == []

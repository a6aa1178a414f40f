"""What the browser tests share: a headless Chromium page that records what it asked for and what went wrong.

``chromium_page`` opens one page with the flags every test here needs (no sandbox, GPU,
background networking or first-run work) and collects, in ``seen``: every requested URL
(``requests``), every request that failed (``failed``) and every page error or console
error line (``errors``). A test asserts on what it cares about.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from playwright.sync_api import Page, sync_playwright

__all__ = ["CHROMIUM_ARGS", "chromium_page"]

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


@contextmanager
def chromium_page(chromium: str, width: int, height: int, *, extra_args: Sequence[str] = (),
                  accept_downloads: bool = False,
                  init_script: str | None = None) -> Iterator[tuple[Page, dict[str, list[str]]]]:
    """A page of ``width`` x ``height`` in the Chromium at ``chromium``, with what it requested and its errors."""
    seen: dict[str, list[str]] = {"requests": [], "failed": [], "errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            context = browser.new_context(viewport={"width": width, "height": height},
                                          accept_downloads=accept_downloads)
            page = context.new_page()
            if init_script is not None:
                page.add_init_script(init_script)
            page.on("request", lambda request: seen["requests"].append(request.url))
            page.on("requestfailed", lambda request: seen["failed"].append(f"{request.url}: {request.failure}"))
            page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
            page.on("console", lambda msg: seen["errors"].append(msg.text) if msg.type == "error" else None)
            yield page, seen
        finally:
            browser.close()

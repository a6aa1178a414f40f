"""The page for people (``/app``) in a real headless Chromium (Debian ``chromium``, driven by
Playwright) against the API under gunicorn and a real worker with the real voices.

The first test is a person's whole visit: drop three files (two ``.txt``, one ``.md``) and two
that must be refused, pick a voice and hear its preview, submit, watch the items go from
waiting to ready, play one in the page, download one and the zip. The second runs with keys:
the page asks for one, refuses a wrong one with the server's reason, works with the right one
and keeps it for the tab only.

As in ``test_dashboard.py``, the page runs under its Content-Security-Policy and any console
error (a CSP violation included) fails the test, so every ``wait_for_function`` predicate is a
function (``() => ...``), never a bare expression that would be ``eval``-ed on each poll.

Set ``UPDATE_DOCS_SCREENSHOT=1`` to also write the screenshots to ``docs/app-*.png``.
"""
from __future__ import annotations

import base64
import io
import json
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Corpus
from e2e_browser import chromium_page
from playwright.sync_api import Page

from tasks.tenants import KeyStore, Scope

#: ``chromium`` first: without it the tests skip (fail under CI) before starting any worker.
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("chromium")]

ROOT = Path(__file__).resolve().parents[2]
#: No sound card in CI: a fake output device, so audio plays (and its clock runs) anyway.
AUDIO_ARGS = ("--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required")
#: The three files of the visit: (file name in tmp_path, corpus file).
FILES = (("welcome.txt", "letters/welcome.txt"), ("reminder.txt", "letters/reminder.txt"),
         ("briefing.md", "news/briefing.md"))
SUCCEEDED = '#result-items li[data-status="succeeded"]'


@pytest.fixture
def browser_page(chromium: str) -> Iterator[tuple[Page, dict[str, list[str]]]]:
    """A Chromium page that accepts downloads, with the URLs it requested and its console or page errors."""
    with chromium_page(chromium, 1100, 900, extra_args=AUDIO_ARGS, accept_downloads=True) as opened:
        yield opened


def write_files(tmp_path: Path, corpus: Corpus) -> list[Path]:
    """The three files to drop, each with a line of its own so that none comes from the audio cache."""
    tag = uuid.uuid4().hex[:6]
    paths = []
    for name, source in FILES:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(corpus.text(source).rstrip() + f"\n\nThis copy is number {tag}.\n", encoding="utf-8")
        paths.append(path)
    return paths


def drop(page: Page, paths: list[Path]) -> None:
    """Drop ``paths`` on the drop zone, as dragging them from a file manager does."""
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    transfer = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.data), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, {type: f.name.endsWith('.md') ? 'text/markdown' : 'text/plain'}));
        }
        return dt;
    }""", files)
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#drop-zone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def is_audio(data: bytes, fmt: str) -> bool:
    """``data`` starts like a file of ``fmt``: RIFF/WAVE, an MP3 frame sync (or ID3 tag), Ogg, fLaC."""
    if fmt == "wav":
        return data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    if fmt == "mp3":
        return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)
    return data[:4] in (b"OggS", b"fLaC")


def shoot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in ``tmp_path`` (and in docs/ with ``UPDATE_DOCS_SCREENSHOT=1``)."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{name}: a blank page compresses to almost nothing"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        (ROOT / "docs" / name).write_bytes(path.read_bytes())
    return path


def audio_played(selector: str) -> str:
    """A predicate: the audio element has a duration and has played (its clock moved, or it ended)."""
    return f"""() => {{
        const a = document.querySelector({json.dumps(selector)});
        return !!a && a.duration > 0 && (a.currentTime > 0 || a.ended) && !a.error;
    }}"""


def test_a_person_drops_three_files_and_gets_audio(stack: Any, serve: Any, browser_page: Any, corpus: Corpus,
                                                   tmp_path: Path) -> None:
    page, seen = browser_page
    api = serve(stack)
    loaded = page.goto(api.base + "/app")
    assert loaded is not None and loaded.status == 200
    csp = loaded.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "media-src 'self' blob:" in csp
    assert page.title() == "Text to speech"
    page.wait_for_selector('body[data-state="ready"]', timeout=30_000)
    assert page.locator("#voice option").count() >= 2
    # Every field has a label; progress is announced.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => e.labels.length === 0).map(e => e.id)""")
    assert unlabelled == []
    assert page.get_attribute("#progress-text", "aria-live") == "polite"
    shoot(page, tmp_path, "app-start.png")

    paths = write_files(tmp_path, corpus)
    drop(page, paths)
    page.wait_for_function("() => document.querySelectorAll('#items li').length === 3", timeout=10_000)
    assert page.locator("#items li .name").all_inner_texts() == ["welcome", "reminder", "briefing"]
    assert "Markdown file" in page.inner_text('#items li[data-name="briefing"]')
    # Files the page refuses, with the reason, and the three stay listed.
    drop(page, [corpus.path("edge/binary.txt"), corpus.path("edge/empty.txt"), corpus.path("edge/latin1.txt")])
    page.wait_for_function("() => document.querySelectorAll('#file-messages li').length === 3", timeout=10_000)
    refusals = page.inner_text("#file-messages")
    assert "binary.txt was not added: it is not a text file" in refusals
    assert "empty.txt was not added: it is empty" in refusals
    assert "latin1.txt was not added: it is not UTF-8 text" in refusals
    assert page.locator("#items li").count() == 3

    page.select_option("#voice", "joe")
    page.select_option("#format", "mp3")
    page.click("#preview")
    page.wait_for_function(audio_played("#preview-audio"), timeout=60_000)
    shoot(page, tmp_path, "app-files.png")

    # Record every status each row shows, to check that progress was shown live.
    page.evaluate("""() => {
        window.__statuses = [];
        new MutationObserver(ms => ms.forEach(m => window.__statuses.push(m.target.dataset.status)))
            .observe(document.getElementById('result-items'),
                     {attributes: true, subtree: true, attributeFilter: ['data-status']});
    }""")
    page.click("#submit")
    page.wait_for_selector('#result-items li[data-status="queued"], #result-items li[data-status="running"]',
                           timeout=30_000)
    shoot(page, tmp_path, "app-progress.png")
    page.wait_for_function(f"() => document.querySelectorAll('{SUCCEEDED}').length === 3", timeout=180_000)
    page.wait_for_selector('body[data-state="done"]', timeout=10_000)
    statuses = page.evaluate("() => window.__statuses")
    assert {"queued", "running"} & set(statuses) and statuses.count("succeeded") == 3, statuses
    assert "Finished: 3 of 3 ready" in page.inner_text("#progress-text")
    assert page.get_attribute("#progress", "value") == "100"
    batch_id = page.get_attribute("#results", "data-batch-id")
    assert batch_id and page.inner_text("#rejected") == ""
    shoot(page, tmp_path, "app-done.png")

    # Play the first item in the page.
    first = '#result-items li[data-index="0"]'
    page.click(f"{first} button.play")
    page.wait_for_function(audio_played(f"{first} audio"), timeout=30_000)
    assert page.get_attribute(f"{first} audio", "src", timeout=1000).startswith("blob:")

    # Download one item, then the zip.
    with page.expect_download(timeout=30_000) as one:
        page.click('#result-items li[data-index="1"] button.download')
    assert one.value.suggested_filename == "reminder.mp3"
    audio = Path(one.value.path()).read_bytes()
    assert len(audio) > 5_000 and is_audio(audio, "mp3"), audio[:16]

    with page.expect_download(timeout=60_000) as whole:
        page.click("#download-zip")
    assert whole.value.suggested_filename.endswith(".zip")
    archive = zipfile.ZipFile(io.BytesIO(Path(whole.value.path()).read_bytes()))
    names = archive.namelist()
    assert sorted(names) == ["briefing.mp3", "manifest.json", "reminder.mp3", "welcome.mp3"], names
    for name in names:
        assert name == "manifest.json" or is_audio(archive.read(name), "mp3"), name
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["complete"] is True
    assert [item["status"] for item in manifest["items"]] == ["succeeded"] * 3

    # The API agrees: the Markdown item was sent as Markdown, in the chosen voice and format.
    batch = requests.get(f"{api.base}/v1/batches/{batch_id}", timeout=10).json()
    assert batch["defaults"]["voice"] == "joe" and batch["format"] == "mp3"

    # A narrow screen: nothing wider than the phone.
    page.set_viewport_size({"width": 390, "height": 844})
    # Two frames, so that the audio players have laid out their controls for the new width.
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    shoot(page, tmp_path, "app-narrow.png")

    # Offline: every request stayed on the API (no CDN, no outside fonts); blob: URLs are the page's own audio.
    outside = [url for url in seen["requests"] if not url.startswith((api.base, "blob:" + api.base))]
    assert seen["requests"] and outside == [], outside
    assert seen["errors"] == []


def test_with_keys_the_page_asks_for_one_and_refuses_a_wrong_one(make_stack: Any, serve: Any, browser_page: Any,
                                                                  tmp_path: Path) -> None:
    stack = make_stack()
    _, key = KeyStore(stack.redis).create("people", frozenset({Scope.SUBMIT, Scope.READ}))
    page, seen = browser_page
    api = serve(stack)
    assert requests.get(api.base + "/v1/voices", timeout=10).status_code == 401

    loaded = page.goto(api.base + "/app")
    assert loaded is not None and loaded.status == 200  # the page itself needs no key
    page.wait_for_selector('body[data-state="needs-key"]', timeout=30_000)
    assert page.is_visible("#key-panel") and page.get_attribute("#key-input", "type") == "password"
    assert "keys create" in page.inner_text("#key-panel")

    page.fill("#key-input", "tts_000000000000_not-a-real-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_function(
        "() => document.getElementById('key-message').textContent.includes('not accepted')", timeout=30_000)
    assert "not valid" in page.inner_text("#key-message")  # the server's own reason
    assert page.evaluate("() => sessionStorage.getItem('tts-batch.api-key')") is None
    shoot(page, tmp_path, "app-key.png")

    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
    page.wait_for_selector('body[data-state="ready"]', timeout=30_000)
    assert not page.is_visible("#key-panel") and page.is_visible("#key-state")
    assert page.evaluate("() => sessionStorage.getItem('tts-batch.api-key')") == key

    page.fill("#text-input", f"A key opens the door. Number {uuid.uuid4().hex[:6]}.")
    page.fill("#text-name", "with a key")
    page.select_option("#format", "wav")
    page.click("#submit")
    page.wait_for_selector(SUCCEEDED, timeout=120_000)
    with page.expect_download(timeout=30_000) as one:
        page.click(f"{SUCCEEDED} button.download")
    assert one.value.suggested_filename == "with a key.wav"
    assert is_audio(Path(one.value.path()).read_bytes(), "wav")

    page.reload()  # the key is kept for the tab
    page.wait_for_selector('body[data-state="ready"]', timeout=30_000)
    page.click("#forget-key")
    page.reload()
    page.wait_for_selector('body[data-state="needs-key"]', timeout=30_000)

    # The only console errors are Chromium's notes about the 401s the page answered with a prompt.
    assert [e for e in seen["errors"] if "status of 401" not in e] == []


def test_busy_answers_are_retried_and_refused_texts_say_why(make_stack: Any, serve: Any, browser_page: Any) -> None:
    stack = make_stack(start=False)  # nothing here needs a worker: refusals happen at submit
    page, seen = browser_page
    api = serve(stack)
    busy = {"left": 1}

    def voices(route: Any) -> None:
        """The first GET /v1/voices is a 429 with Retry-After: 1, as a rate limit answers."""
        if busy["left"]:
            busy["left"] -= 1
            route.fulfill(status=429, headers={"Retry-After": "1", "Content-Type": "application/json"},
                          body=json.dumps({"error": {"code": "rate_limited", "message": "too many requests"}}))
        else:
            route.continue_()

    page.route("**/v1/voices", voices)
    page.goto(api.base + "/app")
    page.wait_for_selector("#notice.busy", timeout=10_000)
    assert "busy, retrying in 1 s" in page.inner_text("#notice")
    page.wait_for_selector('body[data-state="ready"]', timeout=30_000)
    assert page.is_hidden("#notice") and busy["left"] == 0

    # Every text refused: the batch is a 400 and the page names each text with the server's reason.
    page.fill("#text-input", "你好，世界。")
    page.fill("#text-name", "chinese")
    page.click("#submit")
    page.wait_for_function(
        "() => document.getElementById('file-messages').textContent.includes('Nothing could be read aloud')",
        timeout=30_000)
    reasons = page.inner_text("#file-messages")
    assert "chinese:" in reasons and "U+" in reasons, reasons
    assert page.is_hidden("#results")
    # The refused text stays listed, to be fixed or removed.
    assert page.locator("#items li .name").all_inner_texts() == ["chinese"]
    page.click('#items li[data-name="chinese"] button')
    assert page.locator("#items li").count() == 0 and not page.is_enabled("#submit")

    # One good and one refused: the batch is accepted and the refused one is listed with its reason.
    page.fill("#text-input", "你好，世界。")
    page.fill("#text-name", "chinese again")
    page.click("#add-text")
    page.fill("#text-input", f"This one can be read. Number {uuid.uuid4().hex[:6]}.")
    page.click("#submit")
    page.wait_for_selector('body[data-state="working"]', timeout=30_000)
    page.wait_for_function("() => document.getElementById('rejected').textContent.includes('was refused')",
                           timeout=30_000)
    assert "chinese again was refused" in page.inner_text("#rejected")
    page.wait_for_selector('#result-items li[data-index="0"][data-status="failed"]', timeout=30_000)
    assert "U+" in page.inner_text('#result-items li[data-index="0"] .error')
    page.wait_for_selector('#result-items li[data-index="1"][data-status="queued"]', timeout=30_000)

    assert [e for e in seen["errors"] if "status of 429" not in e and "status of 400" not in e] == []

"""``/app`` over the Flask test client with keys configured: the page and its files need no key,
everything it calls does, and it carries the policy of every page plus ``blob:`` audio."""
from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

from app.people import PEOPLE_CONTENT_SECURITY_POLICY
from app.security import CONTENT_SECURITY_POLICY

BOOTSTRAP_KEY = "tts-test-people-admin-key"


class PageParts(HTMLParser):
    """The scripts, stylesheets and inline code of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self._in_script = True
            if values.get("src"):
                self.scripts.append(values["src"] or "")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "link" and values.get("rel") == "stylesheet":
            self.styles.append(values.get("href") or "")
        self.inline.extend(f"{tag} {name}" for name, _ in attrs if name.startswith("on") or name == "style")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("code inside <script>")


def test_the_page_is_open_with_keys_and_what_it_calls_is_not(make_stack: Any) -> None:
    stack = make_stack(start=False, TTS_API_KEYS=BOOTSTRAP_KEY)
    client = stack.client
    page = client.get("/app")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    parts = PageParts()
    parts.feed(html)
    assert parts.inline == [], parts.inline
    assert parts.scripts == ["/app/static/people.js"] and parts.styles == ["/app/static/people.css"]
    for path in parts.scripts + parts.styles:
        r = client.get(path)
        assert r.status_code == 200, path
        assert b"http://" not in r.get_data() and b"https://" not in r.get_data(), path
    # Every format the API takes is offered, except raw pcm.
    for fmt in ("mp3", "wav", "opus", "flac", "aac"):
        assert f'<option value="{fmt}"' in html
    assert 'value="pcm"' not in html

    for method, path in (("GET", "/v1/voices"), ("POST", "/v1/batches"), ("POST", "/v1/audio/speech"),
                         ("GET", "/dashboard")):
        r = client.open(path, method=method)
        assert r.status_code == 401, (path, r.status_code)
        assert r.get_json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/voices", headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}).status_code == 200


def test_the_page_policy_is_the_strict_one_plus_blob_audio(make_stack: Any) -> None:
    stack = make_stack(start=False)
    page = stack.client.get("/app")
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-store"
    assert page.headers["Content-Security-Policy"] == PEOPLE_CONTENT_SECURITY_POLICY
    assert "media-src 'self' blob:" in PEOPLE_CONTENT_SECURITY_POLICY and "unsafe" not in PEOPLE_CONTENT_SECURITY_POLICY
    dashboard = stack.client.get("/dashboard")
    assert dashboard.status_code == 200
    assert dashboard.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY  # the dashboard's is unchanged

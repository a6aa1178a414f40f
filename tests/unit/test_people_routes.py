"""The page for people (``/app``): open without a key, the API behind it still closed, and its
Content-Security-Policy the strict one of every page plus ``blob:`` audio only."""
from __future__ import annotations

import pytest

from app.auth import required_scope
from app.people import PAGE_FORMATS, PEOPLE_CONTENT_SECURITY_POLICY
from app.security import CONTENT_SECURITY_POLICY
from engine.audio import FORMATS
from tasks.tenants import Scope


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/app", None), ("HEAD", "/app", None),
    ("GET", "/app/static/people.js", None), ("GET", "/app/static/people.css", None),
    # The page is open; what it calls is not.
    ("GET", "/v1/voices", Scope.READ), ("POST", "/v1/audio/speech", Scope.SUBMIT),
    ("POST", "/v1/batches", Scope.SUBMIT), ("GET", "/v1/batches/abc", Scope.READ),
    ("GET", "/v1/batches/abc/items", Scope.READ), ("GET", "/v1/batches/abc/result", Scope.READ),
    ("GET", "/v1/jobs/abc/audio", Scope.READ),
    # Only /app itself and its static folder: look-alikes stay closed.
    ("GET", "/apps", Scope.ADMIN), ("GET", "/app/other", Scope.ADMIN), ("POST", "/application", Scope.ADMIN),
])
def test_the_page_is_open_and_the_api_behind_it_is_not(method: str, path: str, scope: Scope | None) -> None:
    assert required_scope(path, method) == scope


def directives(policy: str) -> dict[str, list[str]]:
    """A Content-Security-Policy as {directive: sources}."""
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed[words[0]] = words[1:]
    return parsed


def test_the_page_policy_adds_only_blob_audio_to_the_policy_of_every_page() -> None:
    base, page = directives(CONTENT_SECURITY_POLICY), directives(PEOPLE_CONTENT_SECURITY_POLICY)
    assert {k: v for k, v in page.items() if k != "media-src"} == base
    assert page["media-src"] == ["'self'", "blob:"]
    assert "media-src" not in base  # the dashboard's policy is unchanged


def test_the_page_offers_every_playable_format_of_the_api() -> None:
    offered = [fmt for fmt, _ in PAGE_FORMATS]
    assert set(offered) == set(FORMATS) - {"pcm"}  # raw samples: no browser plays them
    assert offered[0] == "mp3"

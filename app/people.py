"""``/app``: a page for people who want audio from their text (the operators' page is ``/dashboard``).

Paste text or drop ``.txt`` and ``.md`` files, pick a voice (with a short spoken preview)
and a format, and the page submits one batch, shows each item's progress as it happens,
plays the results in the page and downloads one item or the whole zip.

The page is plain HTML (``templates/people.html``), one stylesheet and one vanilla-JavaScript
file (``static/people.css``, ``static/people.js``): no build step, no library, nothing from
a CDN, system fonts. Its script talks to the public API only (``/v1/voices``,
``/v1/audio/speech``, ``/v1/batches``, ``/v1/jobs/{id}/audio``), with the key a person
types in when the API answers 401 (kept in ``sessionStorage``, sent as ``Authorization:
Bearer``). The page and its static files need no key (``app.auth.required_scope``): they
show nothing of anyone's work.

Content-Security-Policy: the page carries the strict policy of every HTML page
(:data:`app.security.CONTENT_SECURITY_POLICY`) plus ``media-src 'self' blob:``. Audio has to
be fetched with the key (an ``<audio src>`` cannot send an ``Authorization`` header), so it
plays from a ``blob:`` URL, which ``default-src 'self'`` would block. Nothing else is added:
still no inline code, no other origin.
"""
from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, current_app, render_template

from engine.audio import FORMATS

from .security import CONTENT_SECURITY_POLICY

log = logging.getLogger(__name__)

__all__ = ["PAGE_FORMATS", "PEOPLE_CONTENT_SECURITY_POLICY", "bp"]

bp = Blueprint("people", __name__, template_folder="templates", static_folder="static",
               static_url_path="/app/static")

#: The formats the page offers, in order, with the words a person reads: every format of the
#: API that a browser can play (``pcm`` is raw samples with no header, which no player reads).
PAGE_FORMATS: tuple[tuple[str, str], ...] = tuple((fmt, label) for fmt, label in (
    ("mp3", "MP3: small, plays everywhere"),
    ("wav", "WAV: large, best quality"),
    ("opus", "Opus: smallest"),
    ("flac", "FLAC: best quality, smaller than WAV"),
    ("aac", "AAC: small, for Apple devices"),
) if fmt in FORMATS)

#: The page's policy: the policy of every HTML page, plus audio from ``blob:`` URLs.
PEOPLE_CONTENT_SECURITY_POLICY = CONTENT_SECURITY_POLICY + "; media-src 'self' blob:"


@bp.get("/app")
def page() -> Any:
    """The page: paste or drop text, pick a voice and a format, get audio."""
    settings = current_app.extensions["tts"]["settings"]
    offered = [fmt for fmt, _ in PAGE_FORMATS]
    default_format = settings.default_format if settings.default_format in offered else offered[0]
    html = render_template("people.html", formats=PAGE_FORMATS, default_format=default_format,
                           default_voice=settings.default_voice, max_chars=settings.max_text_chars,
                           max_items=settings.max_batch_inputs)
    return html, 200, {"Cache-Control": "no-store", "Content-Type": "text/html; charset=utf-8",
                       "Content-Security-Policy": PEOPLE_CONTENT_SECURITY_POLICY}

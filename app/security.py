"""Security headers: ``nosniff`` on every response; a strict policy on every HTML page.

Every response carries ``X-Content-Type-Options: nosniff``, so a browser never reads a JSON
error, an audio file or a zip as HTML or script. An HTML page (the dashboard, and any page
added later) also carries:

* ``Content-Security-Policy``: everything from this origin only (:data:`CONTENT_SECURITY_POLICY`).
  No inline script or style is allowed: the dashboard's template holds none (its script is
  ``app/static/dashboard.js``, its styles ``dashboard.css``; the script sets colours through
  the CSSOM, which the policy allows). ``img-src`` adds ``data:`` for the empty favicon
  (``<link rel="icon" href="data:,">``) that keeps browsers from asking for ``/favicon.ico``;
* ``frame-ancestors 'none'`` in that policy, and ``X-Frame-Options: DENY`` for browsers
  that predate it: no page can be framed (clickjacking);
* ``Referrer-Policy: no-referrer``: following a link from the dashboard sends no URL.

A response that already sets one of these headers keeps its own value.
"""
from __future__ import annotations

from typing import Any

from flask import Flask

__all__ = ["CONTENT_SECURITY_POLICY", "HTML_HEADERS", "install_security_headers", "page_policy"]

def page_policy(style_src: str = "'self'") -> str:
    """A page's Content-Security-Policy: this origin only, no inline code, no plugins, no framing.

    ``style_src`` widens the styles of one page that needs it (``/docs``: Swagger UI).
    """
    return "; ".join((
        "default-src 'self'",
        "script-src 'self'",
        f"style-src {style_src}",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


#: The policy of every HTML page.
CONTENT_SECURITY_POLICY = page_policy()

#: Headers of every HTML response.
HTML_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

#: Media types that a browser renders as a page (and that could run script).
_PAGE_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml"})


def install_security_headers(app: Flask) -> None:
    """Add the headers to every response of ``app`` (errors included)."""

    @app.after_request
    def _security_headers(response: Any) -> Any:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if response.mimetype in _PAGE_TYPES:
            for name, value in HTML_HEADERS.items():
                response.headers.setdefault(name, value)
        return response

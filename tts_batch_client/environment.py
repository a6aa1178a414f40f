"""The client's environment variables: read here and nowhere else in the package.

The client is a separate product from the server (whose ``settings.py`` reads the server's
``TTS_*`` variables); it takes its defaults from its command-line options first and from
these documented variables second:

``TTS_API_URL``
    Base URL of the API, the default of ``--api`` (e.g. ``http://tts.internal:8354``).
``TTS_API_KEY``
    API key sent as ``Authorization: Bearer KEY``, the default of ``--api-key``.

An empty variable counts as unset.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["API_KEY_VARIABLE", "API_URL_VARIABLE", "ClientEnvironment", "read_environment"]

API_URL_VARIABLE = "TTS_API_URL"
API_KEY_VARIABLE = "TTS_API_KEY"


@dataclass(frozen=True)
class ClientEnvironment:
    """What the environment says about where the API is and how to authenticate to it."""

    api_url: str | None = None
    api_key: str | None = None


def read_environment(environ: Mapping[str, str] | None = None) -> ClientEnvironment:
    """The client's variables from ``environ`` (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    return ClientEnvironment(api_url=env.get(API_URL_VARIABLE) or None,
                             api_key=env.get(API_KEY_VARIABLE) or None)

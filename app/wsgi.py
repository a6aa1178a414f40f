"""WSGI entry point: ``gunicorn app.wsgi:app``."""
from __future__ import annotations

from monitoring.logs import configure_logging
from settings import get_settings

from . import create_app

configure_logging(get_settings(), component="api")
app = create_app()

"""Worker entry point: ``celery -A tasks.worker worker``."""
from tasks.celery_app import celery_app  # noqa: F401

app = celery_app

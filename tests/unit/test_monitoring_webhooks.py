"""Webhook payloads, encoding and signatures (no network: delivery is tested in integration)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

import pytest

from monitoring.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    EVENTS,
    SIGNATURE_HEADER,
    build_payload,
    deliver,
    encode,
    redact_url,
    request_headers,
    sign,
    verify_signature,
)


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

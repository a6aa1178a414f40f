"""``tts_batch_client.files.classify``: which files are sent, and the reason given for the others."""
from __future__ import annotations

import random

import pytest

from tts_batch_client.files import BINARY_CONTROL_RATIO, classify


def test_empty_file() -> None:
    verdict = classify(b"")
    assert not verdict.ok and verdict.text is None
    assert verdict.reason == "empty file (0 bytes)"


@pytest.mark.parametrize("data", [b"   \n\n\t  \n", b"\n", b"\xef\xbb\xbf  \r\n", "\u3000\u00a0 ".encode()])
def test_whitespace_only(data: bytes) -> None:
    verdict = classify(data)
    assert not verdict.ok
    assert "only whitespace" in verdict.reason
    assert f"({len(data)} bytes)" in verdict.reason


def test_latin1_is_not_utf8_with_offset_and_hint() -> None:
    data = "Café crème brûlée, séance à neuf heures.\n".encode("latin-1")
    verdict = classify(data)
    assert not verdict.ok
    assert verdict.reason.startswith("not UTF-8: invalid byte 0xe9 at offset 3")
    assert "iconv" in verdict.reason


def test_nul_bytes_are_binary() -> None:
    verdict = classify(b"PK\x03\x04\x00\x00 zip header")
    assert not verdict.ok and verdict.reason.startswith("binary file: contains NUL bytes")


def test_utf16_text_is_binary_with_a_hint() -> None:
    verdict = classify("Hello there".encode("utf-16"))
    assert not verdict.ok and "UTF-16" in verdict.reason


def test_random_bytes_without_nul_are_binary() -> None:
    rng = random.Random(7)
    data = bytes(rng.choice(range(1, 256)) for _ in range(2048))
    verdict = classify(data)
    assert not verdict.ok
    assert verdict.reason.startswith("binary file:") and "control characters" in verdict.reason


def test_control_ratio_threshold() -> None:
    text = b"a" * 100
    just_under = text[: 100 - int(BINARY_CONTROL_RATIO * 100)] + b"\x01" * int(BINARY_CONTROL_RATIO * 100)
    assert classify(just_under).ok
    over = b"a" * 90 + b"\x1b" * 10
    assert not classify(over).ok


@pytest.mark.parametrize("text", [
    "Dear Sam,\n\nThe meeting moved to Tuesday.\n",
    "“Curly quotes” — Café, naïve, Dvořák, Łódź 🙂👍 €10.\n",
    "# Heading\n\n- a **bold** item\n",
    "Tabs\tand form feeds\f are text.\r\n",
])
def test_good_text(text: str) -> None:
    verdict = classify(text.encode("utf-8"))
    assert verdict.ok and verdict.reason is None
    assert verdict.text == text


def test_byte_order_mark_is_dropped() -> None:
    verdict = classify(b"\xef\xbb\xbfHello.")
    assert verdict.ok and verdict.text == "Hello."

"""The ASCII fast path of engine.text._speakable gives what the per-character loop gives."""
from __future__ import annotations

import random

from engine import text as engine_text


def _slow(text: str) -> str:
    """The general path, forced (a non-ASCII character appended, then taken off again)."""
    return engine_text._speakable(text + "é")[:-1]


def test_every_ascii_character_alone_and_after_each_other():
    for code in range(128):
        ch = chr(code)
        assert engine_text._speakable(ch) == _slow(ch), repr(ch)
        assert engine_text._speakable("a" + ch + "b") == _slow("a" + ch + "b"), repr(ch)


def test_random_ascii_texts_match_the_loop():
    rng = random.Random(13)
    alphabet = [chr(c) for c in range(128)]
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        assert text.isascii() and engine_text._speakable(text) == _slow(text)


def test_a_batch_sentence_is_unchanged_and_controls_become_blanks():
    assert engine_text._speakable("Item 1, of 10: fine!") == "Item 1, of 10: fine!"
    assert engine_text._speakable("a\rb\x00c^d`e\tf\ng") == "a b c d e\tf\ng"

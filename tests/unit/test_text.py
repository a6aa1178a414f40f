"""Unit tests for engine.text: normalising, Markdown stripping, sentences and loss-free chunking."""
from __future__ import annotations

import random
import re
from itertools import pairwise
from typing import TYPE_CHECKING

import pytest

from engine.text import chunk_text, group_chunks, looks_like_markdown, normalize, split_sentences, strip_markdown

if TYPE_CHECKING:
    from conftest import Corpus

_WS = re.compile(r"\s+")


def squash(text: str) -> str:
    """Text with all white space removed (chunking may move or drop blanks, nothing else)."""
    return _WS.sub("", text)


def assert_lossless(normalised: str, chunks: list[str], limit: int) -> None:
    """Chunks keep every non-blank character in order, each sentence maps to consecutive chunks, none too long."""
    assert all(0 < len(c) <= limit for c in chunks), max(map(len, chunks), default=0)
    assert all(c == c.strip() and c for c in chunks)
    assert squash("".join(chunks)) == squash(normalised)
    # Chunks never merge sentences: walking the sentences in order, each is exactly one or more
    # consecutive chunks (whitespace aside), and each sentence under the limit is one whole chunk.
    position = 0
    for sentence in split_sentences(normalised):
        if len(sentence) <= limit:
            assert sentence in chunks
        target, collected = squash(sentence), ""
        while len(collected) < len(target):
            assert position < len(chunks), f"sentence {sentence[:60]!r} not covered by the chunks"
            collected += squash(chunks[position])
            position += 1
        assert collected == target, f"sentence {sentence[:60]!r} is not a run of whole chunks"
    assert position == len(chunks)


# --- normalize -----------------------------------------------------------------------------
def test_curly_quotes_become_straight() -> None:
    out = normalize("\u201cHi,\u201d she said, \u2018it\u2019s \u00abfine\u00bb\u2019")
    assert out == "\"Hi,\" she said, 'it's \"fine\"'"


def test_punctuation_dashes_become_comma_pauses() -> None:
    assert normalize("Wait \u2014 what?") == "Wait, what?"
    assert normalize("one\u2013two") == "one, two"
    assert normalize("non\u2011breaking and minus \u22125") == "non-breaking and minus -5"


def test_dash_between_numbers_is_a_range() -> None:
    assert normalize("pages 10\u201320 and 1990 \u2014 2000") == "pages 10 to 20 and 1990 to 2000"


def test_zero_width_and_control_characters_are_dropped() -> None:
    assert normalize("a\u200bb\u200cc\u200dd\u2060e\ufefff") == "abcdef"
    assert normalize("bell\x07 and\x00 null") == "bell and null"


def test_emoji_and_pictographs_are_removed() -> None:
    out = normalize("Great work \U0001F642\U0001F44D! \u2764 Done \u2705.")
    assert out == "Great work! Done."
    assert not any(ord(ch) > 0x2000 for ch in out)


@pytest.mark.parametrize("text,expected", [
    ("I don't want anything \U0001F642, nor that \U0001F44D.", "I don't want anything, nor that."),
    ("Really \u2728?! Yes \U0001F44D; fine \u2705: ok", "Really?! Yes; fine: ok"),
    ('She said "wow \U0001F642." Then left \u2764 .', 'She said "wow." Then left.'),
    ("Well ... what , exactly ?", "Well... what, exactly?"),
    ("\U0001F642 Hi \U0001F44D\nthere \u2728 !", "Hi\nthere!"),
])
def test_no_space_is_left_before_punctuation(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize("text", ["I like .NET and C#.", "Call 555 .5 later", "The file is .env, not .bashrc."])
def test_a_leading_dot_of_a_word_keeps_its_space(text: str) -> None:
    assert normalize(text) == text


@pytest.mark.parametrize("text,expected", [
    ("It is -5 \u00b0C today.", "It is -5 degrees Celsius today."),
    ("It is -5\u00b0C today.", "It is -5 degrees Celsius today."),
    ("It was 72\u00b0F.", "It was 72 degrees Fahrenheit."),
    ("Turn 90\u00b0 left.", "Turn 90 degrees left."),
    ("A 1\u00b0 change, -1 \u00b0C.", "A 1 degree change, -1 degree Celsius."),
    ("1.5\u00b0 and 11\u00b0 off", "1.5 degrees and 11 degrees off"),
    ("It is 30 \u2103, or 86\u2109.", "It is 30 degrees Celsius, or 86 degrees Fahrenheit."),
    ("5\u00baC outside, 1\u00ba place", "5 degrees Celsius outside, 1\u00ba place"),  # º: degrees only before C/F
    ("N51\u00b030' W", "N51 degrees 30' W"),
    ("the \u00b0 sign", "the degrees sign"),
    ("Colder \u00b0Celsius", "Colder degrees Celsius"),
])
def test_the_degree_sign_is_spoken(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_symbols_the_g2p_reads_are_kept() -> None:
    """hibari's G2P says %, &, + and @ ("percent", "and", "plus", "at") in every position; so does espeak."""
    text = "Sales rose 5% at R&D, C++ and Google+; email bob@example.com or me @ home + 10 % more."
    assert normalize(text) == text


def test_emoji_only_text_normalises_to_nothing() -> None:
    assert normalize("\U0001F642 \U0001F44D\n\n\u2728") == ""


def test_whitespace_collapses_but_paragraphs_stay() -> None:
    text = "  First\t\tline   here.\r\nSecond\u00a0line.\r\n\r\n\r\n\n  Next   paragraph.  "
    assert normalize(text) == "First line here.\nSecond line.\n\nNext paragraph."


def test_ellipsis_and_nfc() -> None:
    assert normalize("Well\u2026 cafe\u0301") == "Well... caf\u00e9"


def test_unicode_corpus_keeps_names_and_words(corpus: Corpus) -> None:
    out = normalize(corpus.text("unicode.txt"))
    for name in ("Caf\u00e9", "na\u00efve", "S\u00e3o Paulo", "Zo\u00eb", "Dvo\u0159\u00e1k", "\u0141\u00f3d\u017a"):
        assert name in out
    assert '"Double quotes"' in out and "'single quotes'" in out
    assert "-3 degrees Celsius" in out  # the minus sign and the degree sign are spoken
    assert "\u2014" not in out and "\u2013" not in out and "\u2026" not in out
    assert "\U0001F642" not in out and "\U0001F44D" not in out


# --- Markdown ---------------------------------------------------------------------------------
def test_markdown_briefing_is_stripped_but_words_kept(corpus: Corpus) -> None:
    raw = corpus.text("news/briefing.md")
    out = normalize(raw, markdown=True)
    assert "#" not in out
    assert "**" not in out
    assert "](" not in out and "https://" not in out
    assert "the council notice" in out  # link text kept
    assert "6 degrees" in out and "thirty minutes" in out  # emphasis text kept
    assert "*" not in out
    assert "Evening bulletin" in out and "Weather" in out
    assert not re.search(r"^\s*([-*>]|\d+\.)\s", out, re.MULTILINE), out  # no bullets or quote marks
    assert '"A town is only as strong as the people who turn up for it."' in out


def test_markdown_headings_and_list_items_become_sentences(corpus: Corpus) -> None:
    sentences = split_sentences(normalize(corpus.text("news/briefing.md"), markdown=True))
    assert sentences[0] == "Evening bulletin."
    assert "Weather." in sentences and "Roads and rail." in sentences
    assert "Strong winds along the coast this evening." in sentences
    assert "The library opens late on Wednesday for the book fair." in sentences


def test_markdown_is_left_alone_unless_asked() -> None:
    assert "**" in normalize("Highs near **17 degrees**.")
    assert normalize("Highs near **17 degrees**.", markdown=True) == "Highs near 17 degrees."


def test_markdown_images_code_tables_and_fences() -> None:
    md = "![a red kite](kite.png) over `the hill`\n\n```python\nprint(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    out = normalize(md, markdown=True)
    assert "a red kite over the hill" in out
    assert "```" not in out and "`" not in out and "|" not in out and "---" not in out
    assert "1, 2." in out


def test_looks_like_markdown(corpus: Corpus) -> None:
    assert looks_like_markdown(corpus.text("news/briefing.md"))
    assert not looks_like_markdown(corpus.text("letters/welcome.txt"))


def test_strip_markdown_keeps_plain_text() -> None:
    assert strip_markdown("Just a sentence.").strip() == "Just a sentence."


# --- sentences ----------------------------------------------------------------------------------
def test_titles_do_not_end_sentences() -> None:
    assert split_sentences("Dr. Smith met Mrs. Jones. They talked.") == ["Dr. Smith met Mrs. Jones.", "They talked."]


def test_address_and_unit_abbreviations_do_not_end_sentences() -> None:
    text = ("Send it to Apt. 12, 5 Elm Ave. Springfield. Then call. Take Sunset Blvd. West to Old Mill Rd. North. "
            "Ft. Worth is 30 mi away; the wall is 6 Ft. 2 in. Done.")
    assert split_sentences(text) == ["Send it to Apt. 12, 5 Elm Ave. Springfield.", "Then call.",
                                     "Take Sunset Blvd. West to Old Mill Rd. North.",
                                     "Ft. Worth is 30 mi away; the wall is 6 Ft. 2 in.", "Done."]


def test_initials_do_not_end_sentences() -> None:
    assert split_sentences("J. K. Rowling wrote it. Then she rested.") == ["J. K. Rowling wrote it.",
                                                                           "Then she rested."]


def test_decimals_and_lowercase_continuations_do_not_split() -> None:
    text = "Pi is 3.14159 and e is 2.718. The meeting is at 10 a.m. on Friday. Done!"
    assert split_sentences(text) == ["Pi is 3.14159 and e is 2.718.", "The meeting is at 10 a.m. on Friday.", "Done!"]


def test_question_exclamation_quotes_and_paragraphs() -> None:
    text = 'Is it? "Yes!" she said. Fine.\n\nNew paragraph without a stop\nand a line'
    assert split_sentences(text) == ["Is it?", '"Yes!" she said.', "Fine.", "New paragraph without a stop",
                                     "and a line"]


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    text = 'He said "Stop." Then he left. (It was late.) Everyone agreed.\' Fine.'
    assert split_sentences(text) == ['He said "Stop."', "Then he left.", "(It was late.)", "Everyone agreed.'",
                                     "Fine."]


def test_numbers_corpus_sentences(corpus: Corpus) -> None:
    sentences = split_sentences(normalize(corpus.text("numbers.txt")))
    assert sentences[0] == "On 14 February 2025 at 6:45 am, 3,812 runners paid $24.50 each, raising $93,394.00 in total."
    assert "Mrs. Patel works at 42 Elm Rd., suite 7, and cycles 8.3 km to the office each day." in sentences
    assert "Doors open at 9 a.m. sharp; the talk by Prof. Lee starts at 10:15 and ends by noon." in sentences
    assert "Build 4.7.2 shipped in Q1 with support for 64-bit CPUs and 8 GB of RAM." in sentences
    assert len(sentences) == 6  # one per line: no title, unit or decimal ended a sentence early


def test_empty_and_blank_text_has_no_sentences() -> None:
    assert split_sentences("") == []
    assert split_sentences("\n\n \n") == []


# --- chunking -------------------------------------------------------------------------------------
_WORDS = ("the", "quick", "Dr.", "Smith", "J.", "K.", "3.14", "e.g.", "a.m.", "Mr.", "ok", "well,", "yes;",
          "no:", "Caf\u00e9", "\u201cquoted\u201d", "\u2014", "10\u201320", "\U0001F642", "etc.", "word", "x",
          "-5\u00b0C", "\u00b0", "1\u00b0.", "\u2103", "Apt.", "Rd.", ",", "5%", "&")


def random_text(rng: random.Random) -> str:
    """Text with sentences, clauses, paragraphs, abbreviations, odd blanks and the odd enormous word."""
    parts: list[str] = []
    for _ in range(rng.randint(0, 60)):
        roll = rng.random()
        if roll < 0.03:
            parts.append("".join(rng.choice("abcdefghij") for _ in range(rng.randint(50, 900))))
        elif roll < 0.10:
            parts.append(rng.choice([".", "!", "?", "...", "\n", "\n\n", "\t", "  ", '."', ".)"]))
        else:
            parts.append(rng.choice(_WORDS))
        if rng.random() < 0.85:
            parts.append(rng.choice([" ", " ", " ", "\n", "  ", "\u00a0"]))
    return "".join(parts)


@pytest.mark.parametrize("limit", [8, 13, 40, 120, 300])
def test_chunk_text_never_loses_text_on_random_inputs(limit: int) -> None:
    rng = random.Random(limit)
    for _ in range(300):
        normalised = normalize(random_text(rng))
        assert_lossless(normalised, chunk_text(normalised, limit), limit)


@pytest.mark.parametrize("limit", [40, 300, 400])
def test_chapter_is_chunked_without_loss(limit: int, corpus: Corpus) -> None:
    normalised = normalize(corpus.text("long/chapter.txt"))
    assert len(normalised) > 29_000
    chunks = chunk_text(normalised, limit)
    assert_lossless(normalised, chunks, limit)
    assert len(chunks) >= len(split_sentences(normalised))


def test_hundred_thousand_characters_chunk_fully(corpus: Corpus) -> None:
    chapter = corpus.text("long/chapter.txt")
    rng = random.Random(7)
    pieces = []
    while sum(map(len, pieces)) < 100_000:
        pieces.append(chapter if rng.random() < 0.5 else random_text(rng))
    text = "\n\n".join(pieces)[:100_000]
    assert len(text) == 100_000
    normalised = normalize(text)
    chunks = chunk_text(normalised, 300)
    assert_lossless(normalised, chunks, 300)
    assert sum(len(squash(c)) for c in chunks) == len(squash(normalised)) > 80_000


def test_long_sentence_splits_at_clauses_first() -> None:
    sentence = ", ".join(f"clause number {i} goes here" for i in range(20)) + "."
    chunks = chunk_text(sentence, 100)
    assert len(chunks) > 1
    assert all(c.endswith((",", ".")) for c in chunks)
    assert_lossless(sentence, chunks, 100)


def test_single_enormous_word_is_cut_hard() -> None:
    word = "x" * 1000
    chunks = chunk_text(word, 300)
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert "".join(chunks) == word


def test_chunk_limit_below_minimum_is_rejected() -> None:
    with pytest.raises(ValueError):
        chunk_text("Some text.", 7)


def test_empty_text_gives_no_chunks() -> None:
    assert chunk_text("", 300) == []
    assert chunk_text(normalize(" \n\U0001F642\n "), 300) == []


# --- grouping ---------------------------------------------------------------------------------------
def test_group_chunks_keeps_order_and_respects_target(corpus: Corpus) -> None:
    normalised = normalize(corpus.text("long/chapter.txt"))
    chunks = chunk_text(normalised, 300)
    groups = group_chunks(chunks, 2000)
    assert [c for g in groups for c in g] == chunks
    assert all(g for g in groups)
    assert all(sum(len(c) + 1 for c in g) - 1 <= 2000 for g in groups)
    assert len(groups) == pytest.approx(len(normalised) / 2000, rel=0.3)
    # Greedy: a group plus the next group's first chunk would exceed the target.
    for group, following in pairwise(groups):
        assert sum(len(c) + 1 for c in group) + len(following[0]) > 2000


def test_group_chunks_oversized_chunk_stands_alone_and_empty_input() -> None:
    assert group_chunks(["a" * 50, "b" * 10, "c" * 10], 20) == [["a" * 50], ["b" * 10], ["c" * 10]]
    assert group_chunks(["ab", "cd", "ef"], 100) == [["ab", "cd", "ef"]]
    assert group_chunks([], 100) == []

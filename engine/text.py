"""Text before it reaches a voice: normalising, sentence splitting and chunking.

The contract that matters: :func:`chunk_text` never drops text. Every non-blank
character of the normalised input lands in exactly one chunk, in order, so a
100,000-character document is spoken whole.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

__all__ = [
    "chunk_text",
    "group_chunks",
    "looks_like_markdown",
    "normalize",
    "split_sentences",
    "strip_markdown",
]

_QUOTES = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
        "\u00ab": '"', "\u00bb": '"', "\u2039": "'", "\u203a": "'",
        "\u00a0": " ", "\u2007": " ", "\u202f": " ", "\u2009": " ", "\u200a": " ",
        "\u2026": "...",
        "\u2010": "-", "\u2011": "-", "\u2212": "-",
    }
)
# Dashes used as punctuation become a comma pause; a dash between digits is a range.
_DASH_RANGE = re.compile(r"(?<=\d)\s*[\u2012\u2013\u2014\u2015]\s*(?=\d)")
_DASH_PUNCT = re.compile(r"\s*[\u2012\u2013\u2014\u2015]+\s*")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
_INLINE_WS = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n\s*\n\s*")
# The degree sign is a symbol (category So) and would be dropped with the emoji, so it
# becomes words first: "-5 °C" -> "-5 degrees Celsius", "1°" -> "1 degree", and the
# one-character ℃ and ℉. "º" (the ordinal indicator, often typed for "°") only before C or F.
# hibari's G2P reads the words exactly as it reads "°C"; espeak (Piper) reads "°C" as
# "degrees C" and the words right. %, &, + and @ stay: every G2P here says them.
_DEGREES = re.compile(
    r"(?:(?<![\w.,])([-+]?\d+(?:[.,]\d+)?))?\s*(?:[°º]\s?([CF])(?![^\W\d_])|([\u2103\u2109])|°)"
)
_SCALES = {"C": "Celsius", "F": "Fahrenheit", "\u2103": "Celsius", "\u2109": "Fahrenheit"}
# A space left before punctuation (by a removed emoji, or typed) is not spoken but
# reads badly: "anything , nor" -> "anything, nor". Only before punctuation that ends a
# word (followed by a blank, a closing quote or bracket, or the end), so ".NET" stays.
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.!?;:]+)(?=[\s\"')\]]|$)")


def _degree_words(m: re.Match[str]) -> str:
    number, scale = m.group(1), m.group(2) or m.group(3)
    unit = "degree" if number is not None and number.lstrip("+-") == "1" else "degrees"
    words = f"{unit} {_SCALES[scale]}" if scale else unit
    if m.end() < len(m.string) and m.string[m.end()].isalnum():  # "51°30'" -> "51 degrees 30'"
        words += " "
    return f"{number} {words}" if number is not None else f" {words}"


def _is_speakable_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    if ch in "\n\t ":
        return True
    if cat.startswith("C"):  # control, format, private use, unassigned
        return False
    return cat not in ("So", "Sk")  # not emoji, pictographs, modifier symbols


def normalize(text: str, markdown: bool = False) -> str:
    """Clean text for speech.

    Unicode is composed (NFC); curly quotes become straight ones; punctuation dashes
    become a comma pause and a dash between numbers becomes "to"; the degree sign
    becomes words ("-5 °C" -> "-5 degrees Celsius"); zero-width and control characters,
    emoji and pictographs are dropped; runs of blanks collapse to one space, a blank
    before punctuation goes ("great 🙂!" -> "great!") and blank-line runs become one
    paragraph break. With ``markdown=True`` Markdown markup is removed first so it is
    not read aloud.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if markdown:
        text = strip_markdown(text)
    text = unicodedata.normalize("NFC", text)
    text = _ZERO_WIDTH.sub("", text)
    text = text.translate(_QUOTES)
    text = _DASH_RANGE.sub(" to ", text)
    text = _DASH_PUNCT.sub(", ", text)
    text = _DEGREES.sub(_degree_words, text)
    text = "".join(ch if _is_speakable_char(ch) else " " for ch in text)
    text = text.replace("\t", " ")
    text = _INLINE_WS.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


# --- Markdown --------------------------------------------------------------------------
_MD_FENCE = re.compile(r"^\s*(```|~~~).*?$", re.MULTILINE)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_REF_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_MD_REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*\S+.*$", re.MULTILINE)
_MD_AUTOLINK = re.compile(r"<(https?://[^>]+)>")
_MD_HTML = re.compile(r"</?[A-Za-z][^>]*>")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_MD_SETEXT = re.compile(r"^\s*(=+|-+)\s*$", re.MULTILINE)
_MD_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$", re.MULTILINE)
_MD_QUOTE = re.compile(r"^\s*>+\s?", re.MULTILINE)
_MD_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(?:\[[ xX]\]\s+)?", re.MULTILINE)
_MD_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1")
_MD_CODE = re.compile(r"`+([^`]*)`+")
_ENDS_WITH_PUNCT = re.compile(r"[.!?:;,]$")


def strip_markdown(text: str) -> str:
    """Remove Markdown markup, keeping the words a reader would say.

    Headings, list items and table rows become sentences of their own (a full stop
    is added where they have none), links keep their text, images their alt text.
    """
    text = _MD_FENCE.sub("", text)
    text = _MD_REF_DEF.sub("", text)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_REF_LINK.sub(r"\1", text)
    text = _MD_AUTOLINK.sub(r"\1", text)
    text = _MD_HTML.sub("", text)
    text = _MD_TABLE_SEP.sub("", text)
    text = _MD_RULE.sub("", text)
    text = _MD_SETEXT.sub("", text)
    lines = []
    for line in text.split("\n"):
        structural = bool(_MD_HEADING.match(line) or _MD_BULLET.match(line) or "|" in line)
        line = _MD_HEADING.sub(r"\1", line)
        line = _MD_QUOTE.sub("", line)
        line = _MD_BULLET.sub("", line)
        if "|" in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            line = ", ".join(c for c in cells if c)
        line = _MD_CODE.sub(r"\1", line)
        for _ in range(2):
            line = _MD_EMPHASIS.sub(r"\2", line)
        line = line.strip()
        if structural and line and not _ENDS_WITH_PUNCT.search(line):
            line += "."
        # Structural lines stand alone as paragraphs so they are spoken as sentences.
        lines.append(f"\n{line}\n" if structural else line)
    return "\n".join(lines)


def looks_like_markdown(text: str) -> bool:
    """A cheap guess whether text is Markdown (headings, lists, links or emphasis)."""
    hits = 0
    hits += bool(_MD_HEADING.search(text))
    hits += bool(_MD_LINK.search(text))
    hits += bool(re.search(r"^\s*[-*+]\s+\S", text, re.MULTILINE))
    hits += bool(re.search(r"\*\*\S.*?\S\*\*", text))
    return hits >= 1


# --- sentences and chunks ---------------------------------------------------------------
# Group 1: closing quotes and brackets, which stay with the sentence they close.
_SENT_END = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=\S)")
_CLAUSE = re.compile(r"(?<=[,;:])\s+")
# Abbreviations whose full stop does not end a sentence. Address and unit ones (apt,
# ave, blvd, rd, ft) are mostly followed by a number or a name ("Apt. 4B", "Ft. Worth");
# the rare sentence that ends with one is joined to the next, which costs a pause, not words.
_TITLES = frozenset(
    ["mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "inc", "ltd", "co", "corp", "no", "vol", "fig", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "e.g", "i.e", "approx", "dept", "est", "gen", "gov", "lt", "col", "sgt", "capt", "rev", "apt", "ave", "blvd", "rd", "ft"]
)


def _ends_sentence(para: str, end: int, next_char: str) -> bool:
    if next_char.islower():
        return False
    if para[end - 1] != ".":
        return True
    word = para[para.rfind(" ", 0, end) + 1 : end - 1].lstrip("(\"'")
    if word.lower() in _TITLES:
        return False
    return not (len(word) == 1 and word.isalpha())  # not initials: "J. K. Rowling"


def split_sentences(text: str) -> list[str]:
    """Split normalised text into sentences; paragraph breaks always end one."""
    out: list[str] = []
    for para in text.split("\n"):
        para = para.strip()
        if not para:
            continue
        cut = 0
        for m in _SENT_END.finditer(para):
            if _ends_sentence(para, m.start(), para[m.end()]):
                out.append(para[cut : m.end(1)].strip())
                cut = m.end()
        out.append(para[cut:].strip())
    return [s for s in out if s]


def _split_long(sentence: str, max_chars: int) -> Iterator[str]:
    """Split one over-long sentence at clauses, then spaces, then hard, keeping every character."""
    if len(sentence) <= max_chars:
        yield sentence
        return
    pieces = _CLAUSE.split(sentence)
    if len(pieces) == 1:
        pieces = sentence.split(" ")
        if len(pieces) == 1:
            for i in range(0, len(sentence), max_chars):
                yield sentence[i : i + max_chars]
            return
    current = ""
    for piece in pieces:
        if len(piece) > max_chars:
            if current:
                yield current
                current = ""
            yield from _split_long(piece, max_chars)
            continue
        candidate = f"{current} {piece}" if current else piece
        if len(candidate) > max_chars:
            yield current
            current = piece
        else:
            current = candidate
    if current:
        yield current


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Sentences of normalised ``text``, each at most ``max_chars`` long.

    A sentence longer than the limit is split at clause punctuation, then between
    words, then (a single enormous "word") every ``max_chars`` characters.
    """
    if max_chars < 8:
        raise ValueError("max_chars must be at least 8")
    chunks: list[str] = []
    for sentence in split_sentences(text):
        chunks.extend(c for c in _split_long(sentence, max_chars) if c.strip())
    return chunks


def group_chunks(chunks: Iterable[str], target_chars: int) -> list[list[str]]:
    """Group consecutive chunks into runs of about ``target_chars`` (for fanning out a long text)."""
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for chunk in chunks:
        if current and size + len(chunk) > target_chars:
            groups.append(current)
            current, size = [], 0
        current.append(chunk)
        size += len(chunk) + 1
    if current:
        groups.append(current)
    return groups

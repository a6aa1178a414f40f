"""Text before it reaches a voice: normalising, sentence splitting and chunking.

The contract that matters: :func:`chunk_text` never drops text. Every non-blank
character of the normalised input lands in exactly one chunk, in order, so a
100,000-character document is spoken whole.

:func:`normalize` also folds what a G2P cannot read into what it can (superscripts,
fractions, full-width and mathematical letters, ligatures, circled digits, digits of
other scripts), and :func:`check_readable` refuses, before any synthesis, a text with
letters a voice's G2P would skip without a sound (Chinese for an English voice, say).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

from .exceptions import UnreadableTextError

__all__ = [
    "check_readable",
    "chunk_text",
    "group_chunks",
    "looks_like_markdown",
    "normalize",
    "split_sentences",
    "strip_markdown",
    "unreadable_characters",
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


# --- compatibility forms ------------------------------------------------------------------
# hibari's G2P (heart, and Kokoro's English) takes a character str.isdigit() calls a digit
# for a number and int() then fails on it: "¹x", "[¹]", "⑴" and every superscript,
# subscript, circled, parenthesised and dingbat digit, and the digits of Ethiopic, Brahmi
# and the like, raised ValueError and dead-lettered the job. Kokoro's Japanese G2P fails on
# any digit but 0-9 (KeyError, or AssertionError). espeak (Piper) reads "𝐀" and "Ａ" as
# "letter 1D400" and "letter FF21". So before any G2P sees the text, such characters
# become the plain ones they stand for.
#
# Superscript digits and signs: "x²" -> "x squared", "cm³" -> "cm cubed" (hibari's own
# reading of ² and ³), "10⁶" -> "10 to the power of 6", "10⁻³" -> "... of minus 3",
# "Na⁺" -> "Na plus", after a digit, a closing bracket or a one- or two-letter word (a
# variable or a unit). Anywhere else, and ¹ always (an exponent of one is never written;
# a footnote mark is), the run is a footnote mark and is read as a number of its own:
# "Smith¹" -> "Smith 1", "[¹]" -> "[1]".
_SUPERSCRIPTS = {
    "\u2070": "0", "\u00b9": "1", "\u00b2": "2", "\u00b3": "3", "\u2074": "4", "\u2075": "5",
    "\u2076": "6", "\u2077": "7", "\u2078": "8", "\u2079": "9", "\u207a": "+", "\u207b": "-",
    "\u2071": "i", "\u207f": "n",
}
_SUPERSCRIPT_TABLE = str.maketrans(_SUPERSCRIPTS)
_SUPERSCRIPT_RUN = re.compile(f"[{re.escape(''.join(_SUPERSCRIPTS))}]+")
_EXPONENT_BASE = re.compile(r"(?:\d|[)\]]|(?<![^\W\d_])[^\W\d_]{1,2})$")
_SIGNS = {"+": "plus", "-": "minus"}
# Kept as they are: the micro sign (the G2Ps say "micro"; NFKC would make it a Greek mu,
# "mu") and the ordinal indicators ª and º (read as ordinals, and º as "degrees" before C/F).
_NO_FOLD = frozenset("\u00b5\u00aa\u00ba")
# Vulgar fractions (½ is "1⁄2" to NFKC, with U+2044 FRACTION SLASH) and typed ones: "½" ->
# "1 half", "1½", "1 ½" and "1 1⁄2" -> "1 and a half", "3⁄4" -> "3 quarters", "5⁄16" ->
# "5 over 16". hibari reads "1⁄2" as "one two", and espeak "1/2" as "one slash two".
_VULGAR_FRACTION = re.compile("[\u00bc-\u00be\u2150-\u215e\u2189]")
_FRACTION = re.compile(r"(?:(?<![\d.,])(\d+) )?(?<![\d.,])(\d+)\u2044(\d+)(?![\d.,]\d)")
_DENOMINATORS = {
    2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters"), 5: ("fifth", "fifths"),
    6: ("sixth", "sixths"), 7: ("seventh", "sevenths"), 8: ("eighth", "eighths"), 9: ("ninth", "ninths"),
    10: ("tenth", "tenths"),
}


def _superscript_words(m: re.Match[str]) -> str:
    text, start, end = m.string, m.start(), m.end()
    plain = m.group().translate(_SUPERSCRIPT_TABLE)
    exponent = plain != "1" and bool(_EXPONENT_BASE.search(text[max(0, start - 3) : start]))
    if exponent and plain in ("2", "3"):
        words = " squared" if plain == "2" else " cubed"
    elif exponent and plain in _SIGNS:
        words = f" {_SIGNS[plain]}"
    elif exponent:
        sign = _SIGNS.get(plain[0])
        words = f" to the power of {sign} {plain[1:]}" if sign else f" to the power of {plain}"
    else:
        words = plain if start == 0 or text[start - 1] in " \n([{\"'" else f" {plain}"
    return f"{words} " if end < len(text) and text[end].isalnum() else words


def _vulgar_fraction(m: re.Match[str]) -> str:
    """"½" -> "1⁄2", and "1½" -> "1 1⁄2" (a whole number and a fraction)."""
    before = " " if m.start() > 0 and m.string[m.start() - 1].isdigit() else ""
    return before + unicodedata.normalize("NFKC", m.group())


def _fraction_words(m: re.Match[str]) -> str:
    whole, num, den = m.group(1), int(m.group(2)), int(m.group(3))
    names = _DENOMINATORS.get(den)
    if names is None:
        part = f"{num} over {den}"
    elif whole is not None:
        part = f"a {names[0]}" if num == 1 else f"{num} {names[1]}"
    else:
        part = f"{num} {names[0] if num == 1 else names[1]}"
    words = f"{whole} and {part}" if whole is not None else part
    text = m.string
    before = " " if m.start() > 0 and text[m.start() - 1].isalnum() else ""
    after = " " if m.end() < len(text) and text[m.end()].isalnum() else ""
    return f"{before}{words}{after}"


def _fold_char(ch: str) -> str:
    """The plain form of one character: NFKC's compatibility folding (full-width and
    mathematical letters, ligatures, Roman numerals, circled and parenthesised digits,
    subscripts, presentation forms), then the value of any digit that is still not 0-9.
    Symbols (So, Sk) are left for :func:`normalize` to speak or drop."""
    if ch < "\u00a0" or ch in _NO_FOLD:
        return ch
    cat = unicodedata.category(ch)
    if cat in ("So", "Sk") or cat[0] == "C":
        return ch
    folded = unicodedata.normalize("NFKC", ch)
    if folded != ch:
        return folded
    if ch.isdigit():  # 0-9 of other scripts, and digits NFKC leaves alone (⓵ ❶ ➀, Ethiopic ፩)
        return str(unicodedata.digit(ch))
    if cat == "No" and "CIRCLED" in unicodedata.name(ch, ""):  # ⓫ ❿ and the like: 11, 10
        value = unicodedata.numeric(ch)
        if value == int(value):
            return str(int(value))
    return ch


def _fold(text: str) -> str:
    """Every character through :func:`_fold_char`; a number symbol (①, ₂, ½) becomes a word of its own."""
    if text.isascii():
        return text
    out = []
    for ch in text:
        folded = _fold_char(ch)
        if folded != ch and unicodedata.category(ch) == "No":
            folded = f" {folded} "  # "H₂O" -> "H 2 O" (hibari reads "H2O" as "H to O"), "①Mix" -> "1 Mix"
        out.append(folded)
    return unicodedata.normalize("NFC", "".join(out))


def _is_speakable_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    if ch in "\n\t ":
        return True
    if cat.startswith("C"):  # control, format, private use, unassigned
        return False
    return cat not in ("So", "Sk")  # not emoji, pictographs, modifier symbols


#: The ASCII characters :func:`_is_speakable_char` refuses (controls but tab and newline, ``^``
#: and backtick), each to a blank: ASCII has no combining marks, so for an ASCII text
#: :func:`_speakable` is this one table, applied by ``str.translate`` in C (the loop below was a
#: quarter of accepting 10,000 one-minute batch items).
_ASCII_UNSPEAKABLE = {code: " " for code in range(128) if not _is_speakable_char(chr(code))}


def _speakable(text: str) -> str:
    """Unspeakable characters (see :func:`_is_speakable_char`) become blanks; a combining
    mark on no letter (after a blank, punctuation or a removed emoji) goes."""
    if text.isascii():
        return text.translate(_ASCII_UNSPEAKABLE)
    out = []
    previous = " "
    for ch in text:
        if not _is_speakable_char(ch):
            ch = " "
        elif unicodedata.category(ch)[0] == "M" and not (previous.isalnum()
                                                        or unicodedata.category(previous)[0] == "M"):
            continue
        out.append(ch)
        previous = ch
    return "".join(out)


def normalize(text: str, markdown: bool = False) -> str:
    """Clean text for speech.

    Unicode is composed (NFC); curly quotes become straight ones; compatibility forms
    fold to the plain characters they stand for (full-width "Ａ１" and mathematical "𝐀"
    letters, ligatures "ﬁ", Roman numerals "Ⅻ", circled "①" and other scripts' digits
    become ASCII); superscripts are read ("x²" -> "x squared", "10⁶" -> "10 to the power
    of 6", a footnote "word¹" -> "word 1") and fractions spoken ("1½" -> "1 and a half");
    punctuation dashes become a comma pause and a dash between numbers becomes "to"; the
    degree sign becomes words ("-5 °C" -> "-5 degrees Celsius"); zero-width, control,
    private-use and unassigned characters, emoji and pictographs and combining marks on
    no letter are dropped; runs of blanks collapse to one space, a blank before
    punctuation goes ("great 🙂!" -> "great!") and blank-line runs become one paragraph
    break. With ``markdown=True`` Markdown markup is removed first so it is not read aloud.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if markdown:
        text = strip_markdown(text)
    text = unicodedata.normalize("NFC", text)
    text = _ZERO_WIDTH.sub("", text)
    text = text.translate(_QUOTES)
    text = _SUPERSCRIPT_RUN.sub(_superscript_words, text)
    text = _VULGAR_FRACTION.sub(_vulgar_fraction, text)
    text = _fold(text)
    text = _FRACTION.sub(_fraction_words, text).replace("\u2044", "/")
    text = _DASH_RANGE.sub(" to ", text)
    text = _DASH_PUNCT.sub(", ", text)
    text = _DEGREES.sub(_degree_words, text)
    text = _speakable(text)
    text = text.replace("\t", " ")
    text = _INLINE_WS.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


# --- what a voice can read --------------------------------------------------------------
# After normalize, every G2P here reads every digit, punctuation mark and symbol it is
# given (or pauses on it). Letters are another matter, and the probe of every code point
# normalize lets through found:
#
# * hibari's English G2P (the hibari voices, and Kokoro's for text without Japanese)
#   reads Latin, Greek and Cyrillic letters and skips the letters of every other script
#   (Chinese, kana, Hangul, Arabic, Hebrew, Indic, Thai, Ethiopic, ...) without a sound:
#   "你好" for heart was a job that succeeded with no audio.
# * Kokoro's Japanese G2P (text with kana or kanji) reads Japanese and Latin.
# * espeak (Piper) reads everything: what it has no rules for it names ("Chinese letter").
#
# So a text with letters its voice would skip is refused before anything is queued.
#: Latin (with IPA and modifier letters), Greek and Cyrillic, and their extension blocks.
_ENGLISH_SCRIPTS = re.compile(
    "[\u0000-\u052f\u1c80-\u1c8f\u1d00-\u1dbf\u1e00-\u1fff\u2c60-\u2c7f\ua640-\ua69f\ua720-\ua7ff\uab30-\uab6f]"
)
#: What :class:`engine.backends.KokoroBackend` sends to the Japanese G2P (its ``_CJK``), and 々〆〇.
_JAPANESE_SCRIPTS = re.compile("[\u3005-\u3007\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")


def _english_cannot_read(ch: str) -> bool:
    if ch.isdigit():
        return not ch.isascii()  # normalize makes every digit 0-9; hibari's int() fails on "¹"
    return unicodedata.category(ch)[0] in "LN" and not _ENGLISH_SCRIPTS.match(ch)


def _kokoro_cannot_read(ch: str) -> bool:
    return _english_cannot_read(ch) and not _JAPANESE_SCRIPTS.match(ch)


#: Voice family -> "its G2P cannot read this (normalised) character". Families not listed read everything.
_CANNOT_READ = {"hibari": _english_cannot_read, "kokoro": _kokoro_cannot_read}
#: Half of a UTF-16 pair, alone (JSON's "\ud800" escape makes one): no voice reads it, and it
#: cannot be stored (UTF-8 has no encoding for it; Redis refused the job with a 500).
_SURROGATE = re.compile("[\ud800-\udfff]")


def unreadable_characters(text: str, family: str, markdown: bool = False,
                          normalized: str | None = None) -> list[tuple[int, str]]:
    """Characters of ``text`` a voice of ``family`` cannot read, even after :func:`normalize`.

    Returns (offset in ``text``, character) for the first occurrence of each, in order;
    empty when the voice reads it all. A lone surrogate is unreadable for every voice.
    Cheap: no model is loaded or run. ``normalized``: ``normalize(text, markdown)``, when
    the caller has it already.
    """
    if text.isascii():
        return []
    found: dict[str, int] = {}
    for m in _SURROGATE.finditer(text):
        found.setdefault(m.group(), m.start())
    cannot_read = _CANNOT_READ.get(family)
    if cannot_read is None:
        return sorted((offset, ch) for ch, offset in found.items())
    if normalized is None:
        normalized = normalize(text, markdown=markdown)
    bad = {ch for ch in set(normalized) if cannot_read(ch)}
    if not bad:
        return sorted((offset, ch) for ch, offset in found.items())
    for offset, ch in enumerate(text):
        if ch not in found and (ch in bad or (not ch.isascii() and not bad.isdisjoint(_fold_char(ch)))):
            found[ch] = offset
    for ch in sorted(bad - {c for raw in found for c in _fold_char(raw)}):
        found.setdefault(ch, normalized.index(ch))  # made by normalize itself: its offset there
    return sorted((offset, ch) for ch, offset in found.items())


def check_readable(text: str, voice: str, family: str, markdown: bool = False,
                   normalized: str | None = None) -> None:
    """Raise :class:`~engine.exceptions.UnreadableTextError` naming every character of
    ``text`` that ``voice`` (of ``family``) cannot read; see :func:`unreadable_characters`."""
    found = unreadable_characters(text, family, markdown=markdown, normalized=normalized)
    if found:
        raise UnreadableTextError(voice, found)


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

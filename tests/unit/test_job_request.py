"""parse_job_request and JobRequest: field types, defaults, limits, number rules, the fingerprint."""
from __future__ import annotations

import math

import pytest

from engine.exceptions import EmptyTextError
from tasks.exceptions import InvalidRequest, TextTooLong
from tasks.job_request import JOB_FIELDS, JobRequest, parse_job_request

BASE = {"text": "Hello there.", "voice": "heart"}


def parse(**fields):
    return parse_job_request({**BASE, **fields})


# --- the body and its fields ------------------------------------------------------------------
@pytest.mark.parametrize("body", [None, [], ["text"], "text", 3, b"{}"])
def test_a_body_that_is_not_an_object_is_refused(body):
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        parse_job_request(body)


def test_minimal_request_gets_the_documented_defaults():
    req = parse_job_request(dict(BASE))
    assert req == JobRequest(text="Hello there.", voice="heart", format="mp3", speed=1.0, sample_rate=None,
                             seed=None, cache=True, markdown=False, name=None)
    assert isinstance(req.speed, float)


def test_every_field_is_carried_over():
    req = parse_job_request({"text": "Hi.", "voice": "joe", "format": "wav", "speed": 1.25, "sample_rate": 16000,
                             "seed": 7, "cache": False, "markdown": True, "name": "intro"})
    assert req == JobRequest(text="Hi.", voice="joe", format="wav", speed=1.25, sample_rate=16000, seed=7,
                             cache=False, markdown=True, name="intro")


def test_unknown_fields_are_named_in_the_error():
    with pytest.raises(InvalidRequest) as info:
        parse(colour="blue", model="x")
    message = str(info.value)
    assert "unknown field(s): colour, model" in message
    for name in JOB_FIELDS:
        assert name in message  # the allowed fields are listed


def test_unknown_fields_in_defaults_are_ignored_not_refused():
    # defaults come from the server (a batch's "defaults" is checked by the batch parser)
    req = parse_job_request(dict(BASE), defaults={"colour": "blue", "format": "wav"})
    assert req.format == "wav"


# --- defaults merging ------------------------------------------------------------------------------
def test_defaults_fill_missing_fields():
    req = parse_job_request({"text": "Hi."}, defaults={"voice": "joe", "format": "ogg", "speed": 0.8, "seed": 3})
    assert (req.voice, req.format, req.speed, req.seed) == ("joe", "ogg", 0.8, 3)


def test_body_values_win_over_defaults():
    req = parse_job_request({"text": "Hi.", "voice": "heart", "format": "wav"},
                            defaults={"voice": "joe", "format": "ogg"})
    assert (req.voice, req.format) == ("heart", "wav")


def test_a_null_body_value_means_use_the_default():
    req = parse_job_request({"text": "Hi.", "voice": None, "speed": None, "format": None},
                            defaults={"voice": "joe", "speed": 1.5, "format": "flac"})
    assert (req.voice, req.speed, req.format) == ("joe", 1.5, "flac")


def test_a_null_body_value_without_a_default_gets_the_built_in_default():
    req = parse(speed=None, format=None, cache=None, markdown=None, seed=None, sample_rate=None, name=None)
    assert (req.speed, req.format, req.cache, req.markdown, req.seed, req.sample_rate, req.name) == (
        1.0, "mp3", True, False, None, None, None)


def test_defaults_are_type_checked_too():
    with pytest.raises(InvalidRequest, match="'speed' must be a number"):
        parse_job_request(dict(BASE), defaults={"speed": "fast"})


def test_defaults_mapping_is_not_modified():
    defaults = {"voice": "joe"}
    parse_job_request({"text": "Hi.", "voice": "heart"}, defaults=defaults)
    assert defaults == {"voice": "joe"}


# --- text -------------------------------------------------------------------------------------
def test_text_is_required():
    with pytest.raises(InvalidRequest, match="'text' is required"):
        parse_job_request({"voice": "heart"})


def test_null_text_counts_as_missing():
    with pytest.raises(InvalidRequest, match="'text' is required"):
        parse_job_request({"text": None, "voice": "heart"})


@pytest.mark.parametrize("text", [3, 1.5, True, ["a"], {"a": 1}])
def test_text_must_be_a_string(text):
    with pytest.raises(InvalidRequest, match="'text' must be a string"):
        parse(text=text)


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u3000"])
def test_empty_or_whitespace_text_is_an_empty_text_error(text):
    with pytest.raises(EmptyTextError) as info:
        parse(text=text)
    assert info.value.code == "empty_text"


def test_text_is_kept_as_sent():
    assert parse(text="  Hi there.  ").text == "  Hi there.  "


def test_max_chars_allows_exactly_the_limit():
    assert parse_job_request({**BASE, "text": "a" * 10}, max_chars=10).text == "a" * 10


def test_text_over_max_chars_is_too_long():
    with pytest.raises(TextTooLong, match="11 characters; the limit is 10") as info:
        parse_job_request({**BASE, "text": "a" * 11}, max_chars=10)
    assert info.value.code == "text_too_long"


def test_max_chars_counts_characters_not_bytes():
    text = "é" * 10  # 20 bytes in UTF-8
    assert parse_job_request({**BASE, "text": text}, max_chars=10).text == text


def test_no_max_chars_means_no_limit():
    assert len(parse(text="a" * 200_000).text) == 200_000


# --- voice, format, name, flags ------------------------------------------------------------------
@pytest.mark.parametrize("voice", [None, "", "   ", 3, ["heart"], True])
def test_voice_must_be_a_non_empty_string(voice):
    body = {"text": "Hi.", "voice": voice}
    with pytest.raises(InvalidRequest, match="'voice' must be a non-empty string"):
        parse_job_request(body)


def test_voice_is_stripped():
    assert parse(voice="  heart \n").voice == "heart"


@pytest.mark.parametrize("fmt", [3, True, ["mp3"], {"f": "mp3"}])
def test_format_must_be_a_string(fmt):
    with pytest.raises(InvalidRequest, match="'format' must be a string"):
        parse(format=fmt)


@pytest.mark.parametrize("fmt, expected", [("MP3", "mp3"), (" Wav ", "wav"), ("OGG", "ogg"), ("flac", "flac")])
def test_format_is_lower_cased_and_stripped(fmt, expected):
    assert parse(format=fmt).format == expected


def test_format_default_is_lower_cased_too():
    assert parse_job_request(dict(BASE), defaults={"format": "WAV"}).format == "wav"


@pytest.mark.parametrize("flag", ["cache", "markdown"])
@pytest.mark.parametrize("value", [1, 0, "true", "false", "yes", 1.0, [], {}])
def test_flags_must_be_booleans(flag, value):
    with pytest.raises(InvalidRequest, match=f"'{flag}' must be true or false"):
        parse(**{flag: value})


@pytest.mark.parametrize("flag", ["cache", "markdown"])
@pytest.mark.parametrize("value", [True, False])
def test_flags_accept_booleans(flag, value):
    assert getattr(parse(**{flag: value}), flag) is value


@pytest.mark.parametrize("name", [3, True, ["n"], {"n": 1}])
def test_name_must_be_a_string(name):
    with pytest.raises(InvalidRequest, match="'name' must be a string"):
        parse(name=name)


def test_name_is_kept():
    assert parse(name="chapter 1").name == "chapter 1"


# --- numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [True, False, "1.0", "fast", [1], {"v": 1}, math.nan, math.inf, -math.inf])
def test_speed_must_be_a_finite_number(value):
    with pytest.raises(InvalidRequest, match="'speed' must be a number"):
        parse(speed=value)


@pytest.mark.parametrize("value, expected", [(1, 1.0), (2, 2.0), (0.75, 0.75), (1.5, 1.5)])
def test_speed_is_a_float(value, expected):
    speed = parse(speed=value).speed
    assert speed == expected and type(speed) is float


def test_speed_range_is_left_to_the_engine():
    # parse_job_request checks types; the engine (JobService.prepare) checks the range
    assert parse(speed=100.0).speed == 100.0


@pytest.mark.parametrize("field", ["sample_rate", "seed"])
@pytest.mark.parametrize("value", [True, False, "16000", [1], {"v": 1}, math.nan, math.inf, -math.inf])
def test_integer_fields_refuse_non_numbers(field, value):
    with pytest.raises(InvalidRequest, match=f"'{field}' must be a whole number"):
        parse(**{field: value})


@pytest.mark.parametrize("field", ["sample_rate", "seed"])
@pytest.mark.parametrize("value", [0.5, 16000.25, -1.5, 1e-9])
def test_integer_fields_refuse_fractions(field, value):
    with pytest.raises(InvalidRequest, match=f"'{field}' must be a whole number, got {value!r}"):
        parse(**{field: value})


@pytest.mark.parametrize("field", ["sample_rate", "seed"])
@pytest.mark.parametrize("value, expected", [(16000, 16000), (16000.0, 16000), (0, 0), (42.0, 42)])
def test_integer_fields_accept_whole_numbers_as_int(field, value, expected):
    got = getattr(parse(**{field: value}), field)
    assert got == expected and type(got) is int


def test_negative_seed_is_left_to_the_engine():
    assert parse(seed=-3).seed == -3


# --- options ----------------------------------------------------------------------------------
def test_options_carry_the_audio_fields():
    req = parse(format="WAV", speed=1.2, sample_rate=16000, seed=9, markdown=True, name="n", cache=False)
    assert req.options().to_dict() == {"voice": "heart", "speed": 1.2, "format": "wav", "sample_rate": 16000,
                                       "seed": 9, "markdown": True}


# --- fingerprint ------------------------------------------------------------------------------
def test_fingerprint_is_equal_for_equal_requests():
    a = parse(format="wav", speed=1.5, seed=3)
    b = parse(format="wav", speed=1.5, seed=3)
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64 and int(a.fingerprint(), 16) >= 0


def test_fingerprint_is_equal_for_bodies_that_parse_the_same():
    a = parse_job_request({"text": "Hi.", "voice": " heart ", "format": "MP3", "speed": 1, "sample_rate": 16000.0})
    b = parse_job_request({"text": "Hi.", "voice": "heart", "format": "mp3", "speed": 1.0, "sample_rate": 16000})
    c = parse_job_request({"text": "Hi."}, defaults={"voice": "heart", "sample_rate": 16000})
    assert a.fingerprint() == b.fingerprint() == c.fingerprint()


@pytest.mark.parametrize("change", [
    {"text": "Hello there!"},
    {"text": "Hello there. "},
    {"voice": "joe"},
    {"format": "wav"},
    {"speed": 1.1},
    {"sample_rate": 16000},
    {"seed": 1},
    {"markdown": True},
    {"cache": False},
])
def test_fingerprint_differs_when_a_field_that_shapes_the_job_differs(change):
    assert parse(**change).fingerprint() != parse().fingerprint()


def test_fingerprint_tells_seed_zero_from_no_seed():
    assert parse(seed=0).fingerprint() != parse().fingerprint()


def test_fingerprint_handles_non_ascii_text():
    assert parse(text="こんにちは。").fingerprint() != parse(text="こんばんは。").fingerprint()


@pytest.mark.parametrize("name", ["speed", "sample_rate", "seed"])
def test_an_integer_too_large_for_a_float_is_a_clear_invalid_request(name):
    with pytest.raises(InvalidRequest, match=f"'{name}' must be a .*too large"):
        parse(**{name: 10 ** 400})


def test_the_name_is_part_of_the_fingerprint():
    """An Idempotency-Key reused with another name is another request, not a retry."""
    assert parse(name="a").fingerprint() != parse(name="b").fingerprint()

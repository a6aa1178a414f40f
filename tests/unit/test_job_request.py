"""JobInput and JobRequest: field types, defaults, fixed ranges, the name rule, the fingerprint."""
from __future__ import annotations

import math
import re

import pytest
from pydantic import ValidationError

from engine import FORMATS
from engine.synthesis import MAX_SPEED, MIN_SPEED
from tasks.exceptions import InvalidRequest
from tasks.job_request import FORMAT_NAMES, JOB_FIELDS, JobInput, JobRequest, SpeechOptions, check_name

BASE = {"text": "Hello there.", "voice": "heart"}


def parse(**fields):
    return JobInput.model_validate({**BASE, **fields}).resolve()


def refused(body) -> list[tuple]:
    """The locations a refusal names, first one first."""
    with pytest.raises(ValidationError) as info:
        JobInput.model_validate(body)
    return [err["loc"] for err in info.value.errors()]


# --- the body and its fields ------------------------------------------------------------------
@pytest.mark.parametrize("body", [None, [], ["text"], "text", 3, b"{}"])
def test_a_body_that_is_not_an_object_is_refused(body):
    assert refused(body) == [()]


def test_the_formats_are_the_engines():
    assert set(FORMAT_NAMES) == set(FORMATS)


def test_minimal_request_gets_the_documented_defaults():
    req = parse()
    assert req == JobRequest(text="Hello there.", voice="heart", format="mp3", speed=1.0, sample_rate=None,
                             seed=None, cache=True, markdown=False, name=None)
    assert isinstance(req.speed, float)


def test_every_field_is_carried_over():
    req = parse(voice="joe", format="wav", speed=1.25, sample_rate=16000, seed=7, cache=False, markdown=True,
                name="intro", callback_url="https://example.com/hook")
    assert req == JobRequest(text="Hello there.", voice="joe", format="wav", speed=1.25, sample_rate=16000, seed=7,
                             cache=False, markdown=True, name="intro", callback_url="https://example.com/hook")


def test_unknown_fields_are_named():
    assert sorted(refused({**BASE, "colour": "blue", "model": "x"})) == [("colour",), ("model",)]
    assert "text" in JOB_FIELDS and "colour" not in JOB_FIELDS


# --- defaults merging ------------------------------------------------------------------------------
def test_defaults_fill_missing_fields():
    req = JobInput(text="Hi.").resolve({"voice": "joe", "format": "opus", "speed": 0.8, "seed": 3})
    assert (req.voice, req.format, req.speed, req.seed) == ("joe", "opus", 0.8, 3)


def test_body_values_win_over_defaults_and_the_first_defaults_over_later_ones():
    job_input = JobInput(text="Hi.", voice="heart")
    batch_defaults = SpeechOptions(voice="joe", format="wav")
    req = job_input.resolve(batch_defaults, {"voice": "x", "format": "flac", "speed": 1.5})
    assert (req.voice, req.format, req.speed) == ("heart", "wav", 1.5)


def test_a_null_body_value_means_use_the_default():
    req = JobInput.model_validate({"text": "Hi.", "voice": None, "speed": None, "format": None}).resolve(
        {"voice": "joe", "speed": 1.5, "format": "flac"})
    assert (req.voice, req.speed, req.format) == ("joe", 1.5, "flac")


def test_a_null_body_value_without_a_default_gets_the_built_in_default():
    req = parse(speed=None, format=None, cache=None, markdown=None, seed=None, sample_rate=None, name=None)
    assert (req.speed, req.format, req.cache, req.markdown, req.seed, req.sample_rate, req.name) == (
        1.0, "mp3", True, False, None, None, None)


def test_defaults_are_type_checked_too():
    with pytest.raises(ValidationError):
        SpeechOptions.model_validate({"speed": "fast"})
    with pytest.raises(ValidationError):  # text and name belong to each input, not to defaults
        SpeechOptions.model_validate({"name": "x"})


def test_defaults_mapping_is_not_modified():
    defaults = {"voice": "joe"}
    JobInput(text="Hi.", voice="heart").resolve(defaults)
    assert defaults == {"voice": "joe"}


# --- text -------------------------------------------------------------------------------------
def test_text_is_required():
    assert refused({"voice": "heart"}) == [("text",)]
    assert refused({"text": None, "voice": "heart"}) == [("text",)]


@pytest.mark.parametrize("text", [3, 1.5, True, ["a"], {"a": 1}])
def test_text_must_be_a_string(text):
    assert refused({**BASE, "text": text}) == [("text",)]


def test_text_is_kept_as_sent():
    """The length limit is the service's (TTS_MAX_TEXT_CHARS): JobService.prepare checks it."""
    assert parse(text="  Hi there.  ").text == "  Hi there.  "
    assert len(parse(text="a" * 200_000).text) == 200_000


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u3000"])
def test_blank_text_is_the_services_to_refuse(text):
    """A blank text is refused for its content (JobService.prepare: empty_text), so in a batch that input alone."""
    assert parse(text=text).text == text


# --- voice, format, name, flags ------------------------------------------------------------------
@pytest.mark.parametrize("voice", ["", "   ", 3, ["heart"], True, "v" * 201])
def test_voice_must_be_a_non_blank_string(voice):
    assert refused({**BASE, "voice": voice}) == [("voice",)]


def test_voice_is_stripped():
    assert parse(voice="  heart \n").voice == "heart"


@pytest.mark.parametrize("fmt", [3, True, ["mp3"], {"f": "mp3"}, "MP3", " wav", "ogg"])
def test_format_must_be_one_of_the_formats_as_written(fmt):
    assert refused({**BASE, "format": fmt}) == [("format",)]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_is_accepted(fmt):
    assert parse(format=fmt).format == fmt


@pytest.mark.parametrize("flag", ["cache", "markdown"])
@pytest.mark.parametrize("value", [1, 0, "true", "false", "yes", 1.0, [], {}])
def test_flags_must_be_booleans(flag, value):
    assert refused({**BASE, flag: value}) == [(flag,)]


@pytest.mark.parametrize("flag", ["cache", "markdown"])
@pytest.mark.parametrize("value", [True, False])
def test_flags_accept_booleans(flag, value):
    assert getattr(parse(**{flag: value}), flag) is value


@pytest.mark.parametrize("name", [3, True, ["n"], {"n": 1}])
def test_name_must_be_a_string(name):
    assert refused({**BASE, "name": name}) == [("name",)]


@pytest.mark.parametrize(("name", "what"), [("n" * 201, "201 characters"), ("two\nlines", "U+000A"),
                                            ("tab\there", "U+0009"), ("\u2028", "line separator")])
def test_name_must_be_one_line_of_text(name, what):
    """Checked by JobService.prepare (with the voice and text), not by the model: a batch rejects that input alone."""
    assert parse(name=name).name == name
    with pytest.raises(InvalidRequest, match=re.escape(what)) as info:
        check_name(name)
    assert info.value.param == "name"


def test_name_is_kept():
    assert parse(name="chapter 1").name == "chapter 1"


# --- numbers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [True, False, "1.0", "fast", [1], {"v": 1}, math.nan, math.inf, -math.inf,
                                   MIN_SPEED - 0.01, MAX_SPEED + 0.01, 10 ** 400])
def test_speed_must_be_a_finite_number_in_range(value):
    assert refused({**BASE, "speed": value}) == [("speed",)]


@pytest.mark.parametrize("value, expected", [(1, 1.0), (MIN_SPEED, MIN_SPEED), (MAX_SPEED, MAX_SPEED), (0.75, 0.75)])
def test_speed_is_a_float(value, expected):
    speed = parse(speed=value).speed
    assert speed == expected and type(speed) is float


@pytest.mark.parametrize("field", ["sample_rate", "seed"])
@pytest.mark.parametrize("value", [True, False, "16000", [1], {"v": 1}, math.nan, math.inf, 16000.0, 0.5, 10 ** 400])
def test_integer_fields_take_integers_only(field, value):
    assert refused({**BASE, field: value}) == [(field,)]


@pytest.mark.parametrize("value", [7999, 48001, -1])
def test_sample_rate_is_in_range(value):
    assert refused({**BASE, "sample_rate": value}) == [("sample_rate",)]


def test_seed_is_not_negative():
    assert refused({**BASE, "seed": -3}) == [("seed",)]
    assert parse(seed=0).seed == 0


# --- options ----------------------------------------------------------------------------------
def test_options_carry_the_audio_fields():
    req = parse(format="wav", speed=1.2, sample_rate=16000, seed=9, markdown=True, name="n", cache=False)
    assert req.options().to_dict() == {"voice": "heart", "speed": 1.2, "format": "wav", "sample_rate": 16000,
                                       "seed": 9, "markdown": True}


# --- fingerprint ------------------------------------------------------------------------------
def test_fingerprint_is_equal_for_equal_requests():
    a = parse(format="wav", speed=1.5, seed=3)
    b = parse(format="wav", speed=1.5, seed=3)
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64 and int(a.fingerprint(), 16) >= 0


def test_fingerprint_is_equal_for_bodies_that_resolve_the_same():
    a = JobInput.model_validate({"text": "Hi.", "voice": " heart ", "format": "mp3", "speed": 1,
                                 "sample_rate": 16000}).resolve()
    b = JobInput.model_validate({"text": "Hi.", "voice": "heart", "speed": 1.0, "sample_rate": 16000}).resolve()
    c = JobInput(text="Hi.").resolve({"voice": "heart", "sample_rate": 16000})
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
    {"name": "a"},
])
def test_fingerprint_differs_when_a_field_that_shapes_the_job_differs(change):
    assert parse(**change).fingerprint() != parse().fingerprint()


def test_fingerprint_tells_seed_zero_from_no_seed():
    assert parse(seed=0).fingerprint() != parse().fingerprint()


def test_fingerprint_handles_non_ascii_text():
    assert parse(text="こんにちは。").fingerprint() != parse(text="こんばんは。").fingerprint()

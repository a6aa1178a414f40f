"""RetryPolicy: which errors are retried, how many attempts, and the backoff with and without jitter."""
from __future__ import annotations

import random

import pytest
import redis.exceptions

from engine.exceptions import (
    EmptyTextError,
    EncodingError,
    EngineError,
    ModelAssetError,
    OptionError,
    SynthesisRuntimeError,
    UnknownVoiceError,
)
from settings import Settings
from tasks.retry import RetryPolicy, is_transient

TRANSIENT = [
    SynthesisRuntimeError("onnxruntime hiccup"),
    EncodingError("encoder crashed"),
    redis.exceptions.ConnectionError("redis went away"),
    redis.exceptions.TimeoutError("redis timed out"),
    redis.exceptions.BusyLoadingError("loading"),  # a redis ConnectionError subclass
    ConnectionError("reset"),
    ConnectionRefusedError("refused"),
    ConnectionResetError("reset by peer"),
    TimeoutError("slow"),
    MemoryError(),
]
PERMANENT = [
    EngineError("generic engine error"),
    OptionError("speed out of range"),
    UnknownVoiceError("nobody", ["heart"]),
    EmptyTextError(),
    ModelAssetError("checksum mismatch"),
    ValueError("a bug"),
    KeyError("missing"),
    RuntimeError("something else"),
    redis.exceptions.ResponseError("WRONGTYPE"),
]


# --- transient vs permanent ------------------------------------------------------------------
@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors(exc):
    assert is_transient(exc)
    assert RetryPolicy().should_retry(1, exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_errors_are_never_retried(exc):
    assert not is_transient(exc)
    assert not RetryPolicy(max_attempts=100).should_retry(1, exc)


def test_an_engine_error_subclass_is_classified_by_its_permanent_flag():
    class Flaky(EngineError):
        permanent = False

    class Broken(SynthesisRuntimeError):
        permanent = True

    assert is_transient(Flaky("x"))
    assert not is_transient(Broken("x"))


# --- attempts ----------------------------------------------------------------------------------
def test_retries_while_attempts_remain():
    policy = RetryPolicy(max_attempts=3)
    exc = SynthesisRuntimeError("x")
    assert [policy.should_retry(n, exc) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_a_single_attempt_policy_never_retries():
    assert not RetryPolicy(max_attempts=1).should_retry(1, TimeoutError())


# --- delays without jitter ----------------------------------------------------------------------
def test_exponential_growth_without_jitter():
    policy = RetryPolicy(base_delay_ms=100, max_delay_ms=100_000, exponential_base=2.0, jitter=False)
    assert [policy.delay_seconds(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])


def test_other_exponential_base():
    policy = RetryPolicy(base_delay_ms=50, max_delay_ms=100_000, exponential_base=3.0, jitter=False)
    assert [policy.delay_seconds(n) for n in (1, 2, 3)] == pytest.approx([0.05, 0.15, 0.45])


def test_delay_is_capped_at_max_delay():
    policy = RetryPolicy(base_delay_ms=100, max_delay_ms=1000, exponential_base=2.0, jitter=False)
    assert [policy.delay_seconds(n) for n in (4, 5, 6, 20)] == pytest.approx([0.8, 1.0, 1.0, 1.0])
    assert policy.cap_ms(5) == 1000.0


def test_attempt_zero_or_below_waits_the_base_delay():
    policy = RetryPolicy(base_delay_ms=100, jitter=False)
    assert policy.delay_seconds(0) == pytest.approx(0.1)
    assert policy.delay_seconds(-3) == pytest.approx(0.1)


def test_without_jitter_the_delay_is_the_same_every_time():
    policy = RetryPolicy(jitter=False)
    assert len({policy.delay_seconds(3) for _ in range(50)}) == 1


# --- full jitter ----------------------------------------------------------------------------------
def test_full_jitter_stays_within_zero_and_the_cap():
    policy = RetryPolicy(base_delay_ms=100, max_delay_ms=1000, exponential_base=2.0, jitter=True)
    rng = random.Random(1234)
    for attempt in range(1, 8):
        cap = policy.cap_ms(attempt) / 1000.0
        samples = [policy.delay_seconds(attempt, rng) for _ in range(2000)]
        assert all(0.0 <= s <= cap for s in samples)
        # full jitter spreads over the whole range, not a band near the cap
        assert min(samples) < 0.05 * cap
        assert max(samples) > 0.95 * cap
        assert sum(samples) / len(samples) == pytest.approx(cap / 2, rel=0.1)


def test_full_jitter_uses_the_given_random_generator():
    policy = RetryPolicy(base_delay_ms=100, max_delay_ms=5000, jitter=True)
    a = [policy.delay_seconds(3, random.Random(7)) for _ in range(3)]
    expected = random.Random(7).uniform(0, 400) / 1000.0
    assert a == [expected] * 3


def test_full_jitter_without_a_generator_uses_the_module_random():
    policy = RetryPolicy(base_delay_ms=100, max_delay_ms=5000, jitter=True)
    state = random.getstate()
    try:
        random.seed(99)
        first = [policy.delay_seconds(2) for _ in range(5)]
        random.seed(99)
        again = [policy.delay_seconds(2) for _ in range(5)]
    finally:
        random.setstate(state)  # leave the module generator as other tests found it
    assert again == first
    assert all(0.0 <= d <= 0.2 for d in first)
    assert len(set(first)) > 1


def test_jitter_respects_the_cap():
    policy = RetryPolicy(base_delay_ms=100, max_delay_ms=300, jitter=True)
    rng = random.Random(5)
    assert max(policy.delay_seconds(10, rng) for _ in range(2000)) <= 0.3


# --- from settings --------------------------------------------------------------------------------
def test_from_settings_reads_every_knob():
    settings = Settings(max_attempts=5, base_delay_ms=250, max_delay_ms=2000, exponential_base=3.0,
                        retry_jitter=False)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(max_attempts=5, base_delay_ms=250,
                                                              max_delay_ms=2000, exponential_base=3.0,
                                                              jitter=False)


def test_from_default_settings_matches_the_documented_defaults():
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy(max_attempts=3, base_delay_ms=100,
                                                                max_delay_ms=5000, exponential_base=2.0,
                                                                jitter=True)


def test_policy_is_immutable():
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 10  # type: ignore[misc]


def test_thousands_of_attempts_wait_the_cap_instead_of_overflowing():
    policy = RetryPolicy(max_attempts=5000, base_delay_ms=100, max_delay_ms=4000, jitter=False)
    assert policy.cap_ms(2000) == 4000.0
    assert policy.delay_seconds(2000) == 4.0

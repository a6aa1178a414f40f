"""engine.join.concat: frame joins where the segments allow them, one re-encode otherwise."""
from __future__ import annotations

import numpy as np
import pytest
from unit_helpers import encoded_mp3, tone

from engine import mp3
from engine.audio import AudioEncoder, decode, encode, to_pcm16
from engine.exceptions import OptionError
from engine.join import Segment, concat


def test_pcm_pieces_are_joined_as_bytes_with_zeros_for_the_gap():
    a, b = to_pcm16(tone(0.2, 16000)), to_pcm16(tone(0.3, 16000, 500.0))
    joined = concat([Segment("pcm", a, rate=16000), Segment("pcm", b, rate=16000)], "pcm", 16000, gap_seconds=0.01)
    assert joined.audio == a + bytes(2 * 160) + b
    assert joined.samples == 3200 + 160 + 4800 and joined.sample_rate == 16000
    assert joined.offsets == [0, 3360]
    assert joined.duration == pytest.approx(0.51)


def test_mp3_segments_at_the_output_rate_are_frame_joined():
    (a, samples_a), (b, _) = encoded_mp3(0.8, 24000), encoded_mp3(0.6, 24000, 440.0)
    joined = concat([Segment("mp3", a, rate=24000), Segment("mp3", b)], "mp3", 24000)
    assert (joined.audio, joined.samples) == mp3.join([a, b])  # not re-encoded
    first, second = mp3.parse(a), mp3.parse(b)
    assert joined.offsets == [0, samples_a + first.padding + second.delay]
    assert len(decode(joined.audio, "mp3")[0]) == joined.samples


def test_a_gap_or_another_rate_makes_mp3_re_encode_exactly():
    (a, samples_a), (b, samples_b) = encoded_mp3(0.8, 24000), encoded_mp3(0.6, 24000, 440.0)
    joined = concat([Segment("mp3", a), Segment("mp3", b)], "mp3", 24000, gap_seconds=0.25)
    assert joined.samples == samples_a + 6000 + samples_b == len(decode(joined.audio, "mp3")[0])
    assert joined.offsets == [0, samples_a + 6000]
    resampled = concat([Segment("mp3", a), Segment("mp3", b)], "mp3", 48000)  # segments are at 24 kHz
    assert resampled.sample_rate == 48000 and resampled.samples == 2 * (samples_a + samples_b)
    assert resampled.offsets == [0, 2 * samples_a]


def test_pcm_parts_encoded_once_match_encoding_the_whole_signal():
    a, b = tone(0.4, 24000), tone(0.5, 24000, 500.0)
    parts = [Segment("pcm", to_pcm16(a), rate=24000), Segment("pcm", to_pcm16(b), rate=24000)]
    joined = concat(parts, "wav", 24000)
    whole = np.frombuffer(to_pcm16(np.concatenate([a, b])), "<i2").astype(np.float32) / 32767.0
    assert joined.audio == encode(whole, 24000, "wav")
    assert joined.samples == a.size + b.size and joined.offsets == [0, a.size]
    opus = concat(parts, "opus", 22050)  # Opus has no 22050 Hz: 24000 Hz it is
    assert opus.sample_rate == 24000 and opus.format == "opus"


def test_missing_segments_are_left_out_and_loaded_lazily():
    calls: list[int] = []

    def load(n: int, data: bytes | None) -> bytes | None:
        calls.append(n)
        return data

    a, b = to_pcm16(tone(0.1, 8000)), to_pcm16(tone(0.2, 8000))
    segments = [Segment("pcm", lambda: load(0, None), rate=8000), Segment("pcm", lambda: load(1, a), rate=8000),
                Segment("pcm", lambda: load(2, None), rate=8000), Segment("pcm", lambda: load(3, b), rate=8000)]
    joined = concat(segments, "flac", 8000, gap_seconds=0.05)
    assert calls == [0, 1, 2, 3]
    assert joined.offsets == [None, 0, None, 800 + 400]  # one gap between the two that are there
    assert joined.samples == 800 + 400 + 1600 == len(decode(joined.audio, "flac")[0])


def test_aac_is_byte_joined_only_when_every_count_is_known():
    with AudioEncoder("aac", 24000) as encoder:
        encoder.write(tone(0.5, 24000))
    data, count = encoder.finish(), encoder.samples_written
    joined = concat([Segment("aac", data, rate=24000, samples=count)] * 2, "aac", 24000)
    assert joined.audio == data + data and joined.samples == 2 * count and joined.offsets == [0, count]
    reencoded = concat([Segment("aac", data, rate=24000)] * 2, "aac", 24000)
    assert reencoded.audio != data + data and reencoded.offsets[0] == 0


def test_bad_requests_are_option_errors():
    piece = Segment("pcm", b"\x00\x00", rate=8000)
    with pytest.raises(OptionError):
        concat([], "wav", 24000)
    with pytest.raises(OptionError):
        concat([piece], "wav", 24000, gap_seconds=-1)
    with pytest.raises(OptionError):
        concat([piece], "ogg", 24000)
    with pytest.raises(OptionError):
        concat([Segment("pcm", b"\x00\x00")], "wav", 24000)  # pcm without a rate cannot be decoded

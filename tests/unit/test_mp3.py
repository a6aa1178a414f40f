"""engine.mp3: frame parsing, the Xing/LAME tag, CRC-16 and gapless joins of encoder output."""
from __future__ import annotations

import logging
import os
import struct

import pytest
from unit_helpers import encoded_mp3

from engine import mp3
from engine.audio import decode
from engine.exceptions import EngineError


def test_crc16_is_crc16_arc_and_continues():
    assert mp3.crc16(b"123456789") == 0xBB3D  # the CRC-16/ARC check value
    assert mp3.crc16(b"") == 0
    assert mp3.crc16(b"6789", mp3.crc16(b"12345")) == 0xBB3D


@pytest.mark.parametrize("length_b", [0, 1, 2, 7, 100, 4097])
def test_crc16_combine_equals_the_crc_of_the_concatenation(length_b):
    a, b = os.urandom(333), os.urandom(length_b)
    assert mp3.crc16_combine(mp3.crc16(a), mp3.crc16(b), len(b)) == mp3.crc16(a + b)


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100])
def test_parse_reads_the_encoders_info_tag(rate):
    data, samples = encoded_mp3(0.7, rate)
    stream = mp3.parse(data)
    assert stream.rate == rate
    assert stream.samples_per_frame == (1152 if rate >= 32000 else 576)
    assert stream.info is not None and stream.tag is not None and stream.tag.lame_at is not None
    assert stream.tag.frames == stream.frames and stream.tag.stream_bytes == len(data)
    assert stream.samples == samples == len(decode(data, "mp3")[0])  # the padding fix makes it exact
    assert stream.delay > 0
    assert len(stream.info) + len(stream.audio) == len(data)
    # Both CRCs check out: of the audio frames, and of the tag itself.
    assert stream.music_crc == mp3.crc16(stream.audio)
    lame = stream.tag.lame_at
    assert struct.unpack_from(">H", stream.info, lame + 34)[0] == mp3.crc16(stream.info[:lame + 34])


def test_frame_header_refuses_what_is_not_layer_iii():
    with pytest.raises(EngineError):
        mp3.frame_header(b"not an mp3 at all")
    with pytest.raises(EngineError):
        mp3.frame_header(b"\xff\xfe\x90\x00")  # layer I
    with pytest.raises(EngineError):
        mp3.parse(b"")


def test_join_of_two_segments_gives_the_exact_gapless_sample_count():
    (a, samples_a), (b, samples_b) = encoded_mp3(0.9, 24000, 220.0), encoded_mp3(1.3, 24000, 440.0)
    first, second = mp3.parse(a), mp3.parse(b)
    audio, samples = mp3.join([a, b])
    # Every frame of both, less the first one's delay and the last one's padding: the inner
    # boundary keeps the first segment's padding and the second one's delay.
    assert samples == (first.frames + second.frames) * 576 - first.delay - second.padding
    assert samples == samples_a + first.padding + second.delay + samples_b
    assert len(decode(audio, "mp3")[0]) == samples
    joined = mp3.parse(audio)
    assert joined.samples == samples and joined.frames == first.frames + second.frames
    assert joined.tag is not None and joined.tag.stream_bytes == len(audio)
    assert joined.music_crc == mp3.crc16(joined.audio)  # combined from the segments' CRCs, not re-read
    assert joined.audio == first.audio + second.audio
    assert mp3.segment_starts([first, second]) == [0, samples_a + first.padding + second.delay]


def test_join_refuses_mixed_rates_and_nothing():
    with pytest.raises(EngineError):
        mp3.join([encoded_mp3(0.3, 24000)[0], encoded_mp3(0.3, 16000)[0]])
    with pytest.raises(EngineError):
        mp3.join([])


def test_set_end_padding_rewrites_padding_and_tag_crc():
    data, samples = encoded_mp3(0.5, 22050)
    stream = mp3.parse(data)
    assert stream.tag is not None and stream.tag.lame_at is not None and stream.info is not None
    shorter = mp3.set_end_padding(data, samples - 100)
    again = mp3.parse(shorter)
    assert again.padding == stream.padding + 100 and again.samples == samples - 100
    assert again.info is not None
    lame = stream.tag.lame_at
    assert struct.unpack_from(">H", again.info, lame + 34)[0] == mp3.crc16(again.info[:lame + 34])
    assert shorter[len(stream.info):] == data[len(stream.info):]  # only the info frame changes


def test_set_end_padding_leaves_other_data_alone(caplog):
    data, samples = encoded_mp3(0.5, 24000)
    stream = mp3.parse(data)
    assert stream.info is not None
    without_tag = stream.audio
    with caplog.at_level(logging.WARNING, logger="engine.mp3"):
        assert mp3.set_end_padding(b"garbage!", 10) == b"garbage!"
        assert mp3.set_end_padding(without_tag, samples) == without_tag
        assert mp3.set_end_padding(data, samples + 10 * 576) == data  # more samples than the frames hold
    assert len(caplog.records) == 3


def test_write_info_tag_refuses_fields_the_tag_lacks():
    data, _ = encoded_mp3(0.3, 24000)
    stream = mp3.parse(data)
    assert stream.info is not None and stream.tag is not None
    no_lame = mp3.InfoTag(header=stream.tag.header, xing_at=stream.tag.xing_at, flags=stream.tag.flags,
                          frames=stream.tag.frames, frames_at=stream.tag.frames_at,
                          stream_bytes=stream.tag.stream_bytes, bytes_at=stream.tag.bytes_at,
                          toc_at=stream.tag.toc_at, lame_at=None)
    with pytest.raises(EngineError):
        mp3.write_info_tag(stream.info, no_lame, padding=10)
    with pytest.raises(EngineError):
        mp3.write_info_tag(stream.info, stream.tag, padding=5000)
    with pytest.raises(EngineError):
        mp3.write_info_tag(stream.info, stream.tag, toc=b"\x00" * 99)
    assert mp3.write_info_tag(stream.info, stream.tag) == stream.info  # nothing asked, nothing changed


def test_with_info_tag_puts_a_gapless_lame_frame_before_bare_frames():
    data, samples = encoded_mp3(1.3, 16000)
    bare = mp3.parse(data).audio  # LAME's frames without the info frame, as lameenc hands them out
    quality = struct.unpack_from(">I", data, 13 + 116)[0]  # after the mono MPEG-2 side information and 116 bytes
    tagged = mp3.with_info_tag(bare, samples, quality=quality)
    assert tagged == data  # what the encoder itself writes
    stream = mp3.parse(tagged)
    assert stream.delay == mp3.LAME_ENCODER_DELAY and stream.samples == samples == len(decode(tagged, "mp3")[0])
    assert stream.tag is not None and stream.tag.frames == stream.frames and stream.tag.stream_bytes == len(tagged)
    assert tagged[13:17] == b"Xing" and tagged[13 + 120:13 + 124] == b"LAME"


def test_with_info_tag_refuses_what_it_cannot_tag():
    data, samples = encoded_mp3(0.5, 24000)
    bare = mp3.parse(data).audio
    with pytest.raises(EngineError):
        mp3.with_info_tag(b"not mp3 frames", 10)
    with pytest.raises(EngineError):
        mp3.with_info_tag(bare, samples + 10 * 576)  # more samples than the frames hold

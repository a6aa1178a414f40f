"""Unit tests for engine.audio: every format round-trips, rates, errors, media types."""
from __future__ import annotations

import subprocess
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from engine import audio, mp3
from engine.exceptions import EncodingError, EngineError, OptionError

RATE = 24000
ALL_FORMATS = list(audio.FORMATS)
LOSSLESS = ("wav", "flac", "pcm")


def tone(seconds: float = 2.0, rate: int = RATE, freq: float = 220.0) -> np.ndarray:
    """A sine with a slow amplitude envelope (peak 0.5), like a voiced sentence."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t)
    return (0.5 * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def check_roundtrip(data: bytes, fmt: str, seconds: float, rate: int) -> np.ndarray:
    decoded, decoded_rate = audio.decode(data, fmt, pcm_rate=rate)
    assert decoded.dtype == np.float32 and decoded.ndim == 1
    assert decoded_rate == rate
    # ADTS cannot signal aac's end padding: decode() keeps up to one 1024-sample frame of it.
    slack = 1024 / rate if fmt == "aac" else 0.0
    assert len(decoded) / decoded_rate == pytest.approx(seconds, abs=0.02 * seconds + slack)
    assert rms(decoded) > 0.1, "decoded audio is (nearly) silent"
    assert np.max(np.abs(decoded)) < 0.99, "decoded audio is clipped"
    assert np.mean(np.abs(decoded) > 0.98) < 0.001
    return decoded


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_encode_decode_roundtrip(fmt: str) -> None:
    signal = tone()
    data = audio.encode(signal, RATE, fmt)
    decoded = check_roundtrip(data, fmt, 2.0, RATE)
    assert dominant_freq(decoded[:RATE], RATE) == pytest.approx(220, abs=3)
    if fmt in LOSSLESS:
        assert len(decoded) == len(signal)
        assert np.max(np.abs(decoded - signal)) < 1e-3


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_streaming_chunks_of_different_lengths_with_resampling(fmt: str) -> None:
    src = 22050
    signal = tone(2.0, src)
    bounds = [0, 1, 3000, 3001, 11025, 20000, 33333, len(signal)]
    with audio.AudioEncoder(fmt, RATE, input_rate=src) as enc:
        for start, end in pairwise(bounds):
            enc.write(signal[start:end])
        enc.write(np.zeros(0, np.float32))
    data = enc.finish()
    assert enc.finish() is data  # idempotent
    assert enc.sample_rate == RATE
    # Each chunk is resampled on its own: ceil(n * 160 / 147) samples per chunk.
    expected = sum(-(-(end - start) * 160 // 147) for start, end in pairwise(bounds))
    assert enc.samples_written == expected
    assert enc.duration_seconds == pytest.approx(2.0, rel=0.01)
    check_roundtrip(data, fmt, 2.0, RATE)
    with pytest.raises(EngineError):
        enc.write(signal[:100])


def test_resample_22050_to_24000_length_and_pitch() -> None:
    signal = tone(2.0, 22050)
    out = audio.resample(signal, 22050, 24000)
    assert out.dtype == np.float32
    assert len(out) == 48000 == pytest.approx(len(signal) * 24000 / 22050, abs=1)
    assert dominant_freq(out, 24000) == pytest.approx(220, abs=2)
    odd = audio.resample(signal[:1001], 22050, 24000)
    assert len(odd) == -(-1001 * 160 // 147)


def test_resample_identity_and_downsample() -> None:
    signal = tone(0.5)
    same = audio.resample(signal, RATE, RATE)
    assert same.dtype == np.float32 and np.array_equal(same, signal)
    assert len(audio.resample(signal, 48000, 16000)) == len(signal) // 3
    assert len(audio.resample(np.zeros(0, np.float32), 22050, 24000)) == 0


@pytest.mark.parametrize("fmt,rate,expected", [
    ("opus", 22050, 24000), ("opus", 44100, 48000), ("opus", 10000, 12000), ("opus", 47999, 48000),
    ("mp3", 10000, 11025), ("mp3", 23000, 24000), ("aac", 30000, 32000), ("aac", 8001, 11025),
])
def test_unsupported_codec_rate_uses_the_nearest_supported_rate_above(fmt: str, rate: int, expected: int) -> None:
    assert audio.effective_rate(fmt, rate) == expected
    enc = audio.AudioEncoder(fmt, rate)
    assert enc.sample_rate == expected
    enc.write(tone(2.0, rate))
    assert enc.duration_seconds == pytest.approx(2.0, rel=0.001)
    check_roundtrip(enc.finish(), fmt, 2.0, expected)


@pytest.mark.parametrize("fmt", ["opus", "mp3", "aac"])
def test_effective_rate_is_the_smallest_supported_rate_not_below_the_request(fmt: str) -> None:
    rates = audio.FORMATS[fmt].rates
    assert rates is not None
    for rate in [*range(audio.MIN_SAMPLE_RATE, audio.MAX_SAMPLE_RATE + 1, 97), *rates, audio.MAX_SAMPLE_RATE]:
        chosen = audio.effective_rate(fmt, rate)
        assert chosen in rates and chosen >= rate
        assert not [r for r in rates if rate <= r < chosen]


@pytest.mark.parametrize("fmt,expected", [("opus", 24000), ("mp3", 22050), ("aac", 22050)])
def test_a_22050_hz_voice_is_resampled_only_where_the_codec_needs_it(fmt: str, expected: int) -> None:
    """joe speaks at 22050 Hz: opus goes up to 24000 Hz (not 48000); mp3 and aac take 22050 as is."""
    signal = tone(2.0, 22050)
    with audio.AudioEncoder(fmt, 22050, input_rate=22050) as enc:
        enc.write(signal)
    assert enc.sample_rate == expected == audio.effective_rate(fmt, 22050)
    decoded = check_roundtrip(enc.finish(), fmt, 2.0, expected)
    assert dominant_freq(decoded[:expected], expected) == pytest.approx(220, abs=3)
    if fmt != "aac":  # aac keeps up to a frame of end padding (see decode())
        assert len(decoded) == enc.samples_written == round(len(signal) * expected / 22050)


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 48000])
def test_opus_native_rates_are_kept(rate: int) -> None:
    assert audio.effective_rate("opus", rate) == rate
    check_roundtrip(audio.encode(tone(1.0, rate), rate, "opus"), "opus", 1.0, rate)


@pytest.mark.parametrize("fmt", ["wav", "flac", "pcm"])
def test_any_rate_allowed_for_lossless(fmt: str) -> None:
    assert audio.effective_rate(fmt, 30000) == 30000


@pytest.mark.parametrize("bad", ["ogg", "m4a", "", None, "WAVE"])
def test_bad_format_raises_option_error_listing_formats(bad: object) -> None:
    with pytest.raises(OptionError) as info:
        audio.validate_format(bad)  # type: ignore[arg-type]
    for name in ALL_FORMATS:
        assert name in str(info.value)
    with pytest.raises(OptionError):
        audio.AudioEncoder(bad, RATE)  # type: ignore[arg-type]


def test_format_lookup_is_case_insensitive() -> None:
    assert audio.validate_format(" MP3 ") is audio.FORMATS["mp3"]


@pytest.mark.parametrize("bad", [7999, 48001, 0, -24000, 96000, 24000.0, "24000", True, None])
def test_bad_sample_rate_raises_option_error_listing_range(bad: object) -> None:
    with pytest.raises(OptionError) as info:
        audio.validate_sample_rate(bad)  # type: ignore[arg-type]
    assert "8000" in str(info.value) and "48000" in str(info.value)
    with pytest.raises(OptionError):
        audio.AudioEncoder("wav", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000, np.int64(16000)])
def test_good_sample_rates(rate: int) -> None:
    assert audio.validate_sample_rate(rate) == int(rate)


def test_bad_bitrate_raises_option_error() -> None:
    with pytest.raises(OptionError, match="8 to 320"):
        audio.AudioEncoder("mp3", RATE, bitrate_kbps=1000)


def test_media_types_and_extensions() -> None:
    expected = {
        "wav": ("audio/wav", "wav"),
        "mp3": ("audio/mpeg", "mp3"),
        "opus": ("audio/ogg", "opus"),
        "flac": ("audio/flac", "flac"),
        "aac": ("audio/aac", "aac"),
        "pcm": ("application/octet-stream", "pcm"),
    }
    assert {k: (f.media_type, f.extension) for k, f in audio.FORMATS.items()} == expected
    assert all(f.name == k for k, f in audio.FORMATS.items())


def test_containers_have_the_right_magic() -> None:
    signal = tone(0.5)
    assert audio.encode(signal, RATE, "wav")[:4] == b"RIFF"
    assert audio.encode(signal, RATE, "flac")[:4] == b"fLaC"
    assert audio.encode(signal, RATE, "opus")[:4] == b"OggS"
    mp3 = audio.encode(signal, RATE, "mp3")
    assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)
    aac = audio.encode(signal, RATE, "aac")
    assert aac[0] == 0xFF and aac[1] & 0xF6 == 0xF0


def test_pcm_is_exactly_two_bytes_per_sample() -> None:
    signal = tone(1.0)
    data = audio.encode(signal, RATE, "pcm")
    assert len(data) == 2 * len(signal) == 2 * RATE
    assert data == audio.to_pcm16(signal)
    assert len(audio.encode(signal, 48000, "pcm", input_rate=RATE)) == 4 * RATE


def test_to_pcm16_clips_and_scales_little_endian() -> None:
    data = audio.to_pcm16(np.array([0.0, 1.0, -1.0, 2.5, -3.0, 0.5, np.nan], np.float32))
    values = np.frombuffer(data, "<i2").tolist()
    assert values == [0, 32767, -32767, 32767, -32767, 16384, 0]
    assert data[2:4] == b"\xff\x7f"


def test_decode_pcm_needs_rate() -> None:
    with pytest.raises(OptionError, match="pcm_rate"):
        audio.decode(b"\x00\x00", "pcm")


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac", "aac"])
def test_decode_garbage_raises_encoding_error(fmt: str) -> None:
    with pytest.raises(EncodingError, match=fmt):
        audio.decode(b"definitely not audio" * 10, fmt)


def test_encoder_rejects_multichannel_but_accepts_column_vector() -> None:
    enc = audio.AudioEncoder("wav", RATE)
    with pytest.raises(EngineError):
        enc.write(np.zeros((100, 2), np.float32))
    enc.write(tone(0.1)[:, None])
    assert enc.samples_written == int(0.1 * RATE)
    enc.close()


def test_out_of_range_and_nan_samples_do_not_wrap() -> None:
    loud = np.concatenate([np.full(RATE // 2, 1.7, np.float32), np.full(RATE // 2, -1.7, np.float32)])
    loud[10] = np.nan
    decoded, _ = audio.decode(audio.encode(loud, RATE, "wav"), "wav")
    assert decoded[100] > 0.99 and decoded[-100] < -0.99  # clipped, not wrapped around
    assert decoded[10] == 0.0


def test_bitrate_changes_size() -> None:
    signal = tone(2.0) + np.random.default_rng(0).normal(0, 0.05, 2 * RATE).astype(np.float32)
    for fmt in ("mp3", "opus", "aac"):
        small = audio.encode(signal, RATE, fmt, bitrate_kbps=32)
        large = audio.encode(signal, RATE, fmt, bitrate_kbps=128)
        assert len(large) > 2 * len(small), fmt
        check_roundtrip(small, fmt, 2.0, RATE)
    mp3 = audio.encode(signal, RATE, "mp3", bitrate_kbps=64)
    assert len(mp3) * 8 / 2.0 / 1000 == pytest.approx(64, rel=0.15)


@pytest.mark.parametrize("fmt", ["aac", "opus", "mp3"])
def test_context_manager_aborts_on_exception_and_releases_the_encoder(fmt: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), audio.AudioEncoder(fmt, RATE) as enc:
        enc.write(tone(0.5))
        raise RuntimeError("boom")
    assert enc._lame is None and enc._container is None and enc._stream is None
    with pytest.raises(EngineError):
        enc.finish()
    with pytest.raises(EngineError):
        enc.write(tone(0.1))


def test_no_format_starts_a_process_to_encode_or_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every format is encoded, and decoded back, in this process: no ffmpeg per request."""

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    for fmt in ALL_FORMATS:
        data = audio.encode(tone(1.0), RATE, fmt, bitrate_kbps=64)
        check_roundtrip(data, fmt, 1.0, RATE)


@pytest.mark.parametrize("fmt", ["aac", "opus", "mp3"])
def test_each_chunk_is_encoded_as_it_is_written(fmt: str) -> None:
    """The work is spread over write() (a streamed job's sentences), not all left to finish().

    What finish() adds is the encoder's flush: a frame or two, or for opus the last Ogg page
    (the muxer holds up to a second of packets).
    """
    with audio.AudioEncoder(fmt, RATE) as enc:
        enc.write(tone(4.0))
        pending = len(enc._mp3) if fmt == "mp3" else enc._buf.tell()
        assert pending > 0.6 * len(audio.encode(tone(4.0), RATE, fmt))
    assert len(enc.finish()) >= pending


class _BrokenLame:
    """A lameenc.Encoder whose LAME fails once audio arrives."""

    def __getattr__(self, name: str) -> object:
        return lambda *args: b""

    def encode(self, pcm: bytes) -> bytes:
        if pcm:
            raise RuntimeError("lame: out of memory")
        return b""


def test_lame_failure_raises_encoding_error_and_releases_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio.lameenc, "Encoder", _BrokenLame)
    enc = audio.AudioEncoder("mp3", RATE)
    with pytest.raises(EncodingError, match="mp3 encoding failed: lame: out of memory"):
        enc.write(tone(0.5))
    assert enc._lame is None
    with pytest.raises(EngineError):
        enc.finish()


def test_libav_failure_raises_encoding_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(audio._LIBAV_CODECS, "aac", audio._LibavCodec("no-such-codec", "adts", 64))
    with pytest.raises(EncodingError, match="aac encoding failed to start: no-such-codec"):
        audio.AudioEncoder("aac", RATE)


def test_opus_is_libopus_in_ogg_with_exact_length() -> None:
    """Ogg Opus from ffmpeg's libopus and Ogg muxer: OpusHead names the input rate; pre-skip and end trim are exact."""
    signal = tone(3.0)
    data = audio.encode(signal, RATE, "opus")
    assert data[:4] == b"OggS" and b"OpusHead" in data[:64]
    assert b"Lavf" in data[:400]  # muxed by ffmpeg's libavformat (its vendor string), not libsndfile
    decoded, rate = audio.decode(data, "opus")
    assert rate == RATE and len(decoded) == len(signal)
    # 48 kbps VBR target by default
    assert len(data) * 8 / 3.0 / 1000 == pytest.approx(48, rel=0.35)


def test_aac_is_adts_with_the_encoders_priming_dropped_on_decode() -> None:
    signal = tone(1.0)
    data = audio.encode(signal, RATE, "aac")
    assert data[0] == 0xFF and data[1] & 0xF6 == 0xF0  # an ADTS frame header first
    decoded, rate = audio.decode(data, "aac")
    assert rate == RATE and len(signal) <= len(decoded) <= len(signal) + 1024
    # the priming is dropped: the decoded tone lines up with the input (no 1024-sample shift)
    corr = np.correlate(decoded[2000:8000], signal[2000 - 64:8000 + 64], mode="valid")
    assert abs(int(np.argmax(corr)) - 64) <= 2


# --- mp3: LAME in this process (lameenc), behind engine.mp3's Xing/LAME frame ----------------------
def lame_tag(data: bytes) -> tuple[bytes, int, int]:
    """(Xing tag id, encoder delay, end padding) of a mono MPEG-2/2.5 layer III file starting with its info frame."""
    tag = 4 + 9  # frame header, then mono MPEG-2 side information
    lame = tag + 120  # Xing id, flags, frames, bytes, 100-byte seek table, quality
    d = data[lame + 21:lame + 24]
    return data[tag:tag + 4], (d[0] << 4) | (d[1] >> 4), ((d[1] & 0x0F) << 8) | d[2]


@pytest.mark.parametrize("seconds", [1.0, 60.0])
def test_mp3_is_lame_with_its_gapless_tag_and_decodes_to_exactly_the_input_length(seconds: float) -> None:
    signal = tone(seconds)
    data = audio.encode(signal, RATE, "mp3")
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0  # a frame first: no ID3v2 tag in front
    tag, delay, padding = lame_tag(data)
    assert tag == b"Xing" and data[13 + 120:13 + 124] == b"LAME"  # VBR info frame with the gapless tag
    assert delay == 576 and padding > 0
    decoded, rate = audio.decode(data, "mp3")  # libsndfile (mpg123) honours the tag
    assert rate == RATE and len(decoded) == len(signal)
    assert dominant_freq(decoded[:RATE], RATE) == pytest.approx(220, abs=3)
    assert rms(decoded) == pytest.approx(rms(signal), rel=0.05)
    # and the decoded samples line up with the input: the delay in the tag is LAME's real one
    corr = np.correlate(decoded[2000:8000], signal[2000 - 64:8000 + 64], mode="valid")
    assert int(np.argmax(corr)) == 64


@pytest.mark.parametrize("kbps", [None, 8, 64, 160])
@pytest.mark.parametrize("rate,seconds", [(22050, 1.7), (11025, 1.1), (12000, 0.05), (8000, 1.0), (16000, 2.5),
                                          (24000, 0.3), (32000, 1.0), (44100, 1.0), (48000, 0.77)])
def test_mp3_length_is_exact_at_every_rate_and_bitrate(rate: int, seconds: float, kbps: int | None) -> None:
    """The tag's padding is what the frames hold beyond LAME's delay and the input, at every rate."""
    signal = tone(seconds, rate)
    decoded, decoded_rate = audio.decode(audio.encode(signal, rate, "mp3", bitrate_kbps=kbps), "mp3")
    assert decoded_rate == rate and len(decoded) == len(signal)


def test_mp3_of_nothing_is_a_valid_stream_of_no_samples() -> None:
    data = audio.encode(np.zeros(0, np.float32), RATE, "mp3")
    stream = mp3.parse(data)
    assert stream.tag is not None and stream.samples == 0


def test_mp3_with_our_tag_is_read_by_ffmpeg_without_complaint(tmp_path: Path) -> None:
    signal = tone(1.7, 22050)
    path = tmp_path / "clip.mp3"
    path.write_bytes(audio.encode(signal, 22050, "mp3"))
    done = subprocess.run([audio._ffmpeg_exe(), "-hide_banner", "-v", "warning", "-i", str(path), "-f", "f32le",
                           "pipe:1"], capture_output=True, check=True)
    assert done.stderr == b""  # the LAME tag's CRCs match
    assert len(done.stdout) // 4 == len(signal)


def test_mp3_default_is_vbr_and_a_bitrate_is_constant() -> None:
    signal = tone(2.0) + np.random.default_rng(0).normal(0, 0.05, 2 * RATE).astype(np.float32)
    vbr = audio.encode(signal, RATE, "mp3")
    assert 35 <= len(vbr) * 8 / 2.0 / 1000 <= 75  # LAME -V1 -q7: about 45-60 kbps on speech
    assert lame_tag(vbr)[0] == b"Xing"
    assert len(audio.encode(tone(2.0), RATE, "mp3")) < len(vbr) / 2  # a plain tone needs far fewer bits
    for kbps in (32, 128):
        cbr = audio.encode(signal, RATE, "mp3", bitrate_kbps=kbps)
        assert lame_tag(cbr)[0] == b"Info"  # LAME's name for the info frame of a CBR stream
        assert len(cbr) * 8 / 2.0 / 1000 == pytest.approx(kbps, rel=0.1)
        stream = mp3.parse(cbr)
        sizes = {mp3.frame_header(stream.audio, at).size for at in stream.frame_offsets}
        # the info frame has the stream's own bitrate where the tag fits in it (not in 96 bytes at 32k)
        assert (len(stream.info or b"") in sizes) == (kbps == 128)


def test_bundled_ffmpeg_is_used() -> None:
    assert "imageio_ffmpeg" in audio._ffmpeg_exe()


def test_silence() -> None:
    quiet = audio.silence(0.25, RATE)
    assert quiet.dtype == np.float32 and len(quiet) == RATE // 4 and not quiet.any()
    assert len(audio.silence(0, RATE)) == 0
    with pytest.raises(OptionError):
        audio.silence(-1, RATE)

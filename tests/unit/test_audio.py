"""Unit tests for engine.audio: every format round-trips, rates, errors, media types."""
from __future__ import annotations

import stat

import numpy as np
import pytest

from engine import audio
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
    assert len(decoded) / decoded_rate == pytest.approx(seconds, rel=0.02)
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
        for start, end in zip(bounds, bounds[1:]):
            enc.write(signal[start:end])
        enc.write(np.zeros(0, np.float32))
    data = enc.finish()
    assert enc.finish() is data  # idempotent
    assert enc.sample_rate == RATE
    # Each chunk is resampled on its own: ceil(n * 160 / 147) samples per chunk.
    expected = sum(-(-(end - start) * 160 // 147) for start, end in zip(bounds, bounds[1:]))
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


@pytest.mark.parametrize("fmt,rate", [("opus", 22050), ("opus", 44100), ("mp3", 10000), ("aac", 30000)])
def test_unsupported_codec_rate_falls_back_to_48000(fmt: str, rate: int) -> None:
    assert audio.effective_rate(fmt, rate) == audio.FALLBACK_RATE == 48000
    enc = audio.AudioEncoder(fmt, rate)
    assert enc.sample_rate == 48000
    enc.write(tone(1.0, rate))
    assert enc.duration_seconds == pytest.approx(1.0, rel=0.001)
    check_roundtrip(enc.finish(), fmt, 1.0, 48000)


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


@pytest.mark.parametrize("fmt", ["aac", "opus"])
def test_context_manager_aborts_on_exception_and_kills_ffmpeg(fmt: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with audio.AudioEncoder(fmt, RATE) as enc:
            enc.write(tone(0.5))
            proc = enc._proc
            raise RuntimeError("boom")
    assert proc is not None and proc.poll() is not None
    with pytest.raises(EngineError):
        enc.finish()


@pytest.mark.parametrize("fmt", ["aac", "opus"])
def test_ffmpeg_failure_raises_encoding_error_with_stderr(fmt: str, tmp_path, monkeypatch) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text(f"#!/bin/sh\necho 'fake ffmpeg: no {fmt} for you' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(audio, "_ffmpeg_exe", lambda: str(fake))
    with pytest.raises(EncodingError) as info:
        audio.encode(tone(2.0), RATE, fmt)
    assert f"{fmt} encoding failed" in str(info.value) and f"no {fmt} for you" in str(info.value)


def test_opus_is_libopus_in_ogg_with_exact_length() -> None:
    """Ogg Opus from the bundled ffmpeg: OpusHead names the input rate; pre-skip and end trim are exact."""
    signal = tone(3.0)
    data = audio.encode(signal, RATE, "opus")
    assert data[:4] == b"OggS" and b"OpusHead" in data[:64]
    assert b"Lavf" in data[:400]  # muxed by ffmpeg (libavformat's vendor string), not libsndfile
    decoded, rate = audio.decode(data, "opus")
    assert rate == RATE and len(decoded) == len(signal)
    # 48 kbps VBR target by default
    assert len(data) * 8 / 3.0 / 1000 == pytest.approx(48, rel=0.35)


def test_bundled_ffmpeg_is_used() -> None:
    assert "imageio_ffmpeg" in audio._ffmpeg_exe()


def test_silence() -> None:
    quiet = audio.silence(0.25, RATE)
    assert quiet.dtype == np.float32 and len(quiet) == RATE // 4 and not quiet.any()
    assert len(audio.silence(0, RATE)) == 0
    with pytest.raises(OptionError):
        audio.silence(-1, RATE)

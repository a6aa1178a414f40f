"""Audio encoding and decoding: float32 mono samples in, container bytes out.

Formats follow OpenAI's speech API (``response_format``): wav, mp3, opus, flac, aac
and pcm. Every format is encoded in this process, chunk by chunk as ``write()`` is
called; no encoder starts a process:

* wav and flac: libsndfile (through ``soundfile``) into an ``io.BytesIO``;
* mp3: LAME through the ``lameenc`` wheel, which hands out bare frames; the Xing/LAME
  info frame in front of them (frame count, seek table, and the encoder delay and
  padding that let decoders such as libsndfile's mpg123, ffmpeg and browsers return
  exactly the samples written) comes from :func:`engine.mp3.with_info_tag`;
* aac (ADTS) and opus (libopus in Ogg): ffmpeg's encoders and muxers in this process
  through PyAV (the ``av`` wheel), into an ``io.BytesIO``;
* pcm: raw s16le.

Until they moved in-process, mp3, aac and opus started the bundled ffmpeg binary for
every encode, about 20-30 ms of process start and some 15 ms of CPU each, which cost more
than synthesizing a short sentence with heart (``scripts/bench_encode.py`` measures both).

Codecs that only support some sample rates (Opus: 8/12/16/24/48 kHz; MP3 and AAC:
the nine MPEG rates from 8 to 48 kHz) are encoded at the nearest supported rate at
or above the one asked for (22050 Hz becomes 24000 Hz for Opus);
:func:`effective_rate` and :attr:`AudioEncoder.sample_rate` tell which.
"""
from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from math import gcd
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import lameenc
import numpy as np
import soundfile as sf

from . import mp3
from .exceptions import EncodingError, EngineError, OptionError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import OutputContainer

__all__ = [
    "FALLBACK_RATE",
    "FORMATS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "AudioEncoder",
    "AudioFormat",
    "decode",
    "effective_rate",
    "encode",
    "resample",
    "silence",
    "to_pcm16",
    "validate_format",
    "validate_sample_rate",
]

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
#: The highest rate every codec encodes: used if none of a codec's rates is at or above
#: the requested one (cannot happen within MIN_SAMPLE_RATE..MAX_SAMPLE_RATE).
FALLBACK_RATE = 48000
_MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025,
               8000, 7350)
_AAC_PRIMING = 1024  # ffmpeg's aac encoder delay; ADTS cannot signal it, decode() drops it


@dataclass(frozen=True)
class AudioFormat:
    """An output format: its API name, HTTP Content-Type and file extension."""

    name: str
    media_type: str
    extension: str
    #: Sample rates the codec encodes natively; None means any rate.
    rates: tuple[int, ...] | None = None


# Content-Types as OpenAI-style clients and browsers expect them: audio/wav (not the
# legacy audio/x-wav), audio/mpeg (RFC 3003), audio/ogg for Ogg Opus (RFC 7845;
# audio/opus is the RTP payload type, RFC 7587), audio/flac, audio/aac (ADTS stream).
# pcm is headerless little-endian s16: audio/L16 (RFC 2586) means big-endian with
# rate parameters, so octet-stream is the honest type.
FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "audio/wav", "wav"),
    "mp3": AudioFormat("mp3", "audio/mpeg", "mp3", _MPEG_RATES),
    "opus": AudioFormat("opus", "audio/ogg", "opus", _OPUS_RATES),
    "flac": AudioFormat("flac", "audio/flac", "flac"),
    "aac": AudioFormat("aac", "audio/aac", "aac", _MPEG_RATES),
    "pcm": AudioFormat("pcm", "application/octet-stream", "pcm"),
}
# libsndfile (format, subtype) for the in-process formats.
_SNDFILE = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
}


@dataclass(frozen=True)
class _LibavCodec:
    """How ffmpeg's libraries (through PyAV, in this process) encode one format."""

    codec: str
    muxer: str
    #: Target bitrate when none is requested.
    default_kbps: int
    #: Codec options (AVOptions), as ffmpeg's command line would pass them.
    options: tuple[tuple[str, str], ...] = ()


# Formats encoded by ffmpeg's libraries through PyAV, at the settings the bundled ffmpeg
# binary used (same encoders, same output).
# opus: "audio" (CELT/hybrid) mode at complexity 3 encodes 60 s of 24 kHz speech in
# about 0.12 s (libsndfile's Ogg Opus: about 2.1 s) with a lower spectral distortion
# than libsndfile's default; complexity 10 or "voip" (SILK) mode is 2-4x slower.
# aac: the "fast" coder takes about 0.15 s for the same minute (the default "twoloop"
# coder about 0.7 s) at the same size and a similar distortion on speech.
_LIBAV_CODECS = {
    "aac": _LibavCodec("aac", "adts", 64, (("aac_coder", "fast"),)),
    "opus": _LibavCodec("libopus", "ogg", 48, (("application", "audio"), ("compression_level", "3"), ("vbr", "on"))),
}

# mp3: LAME (lameenc). By default VBR (LAME's new VBR, "mtrh") at quality 1 with LAME's
# fast algorithm (-q 7: no noise-shaping search). On a minute of heart's speech at 24 kHz:
# 58 kbps with a lower log-spectral distance than the -V4 -q5 that ffmpeg's LAME ran before
# (2.70 against 3.00 dB; 58.0 against 55.7 kbps), at 0.4-0.5x of that path's CPU (ffmpeg's
# process included): about 730x real time, under 20% of heart's synthesis CPU instead of
# 38-50% (scripts/bench_encode.py). -V4 -q7 is as fast but coarser (45 kbps, 3.60 dB);
# -q5/-q6 search the noise shaping and cost 1.6x as much; -V2 -q7 is 52 kbps at 3.07 dB. A
# requested bitrate is constant (CBR) at -q5, the settings ffmpeg's LAME used. No ID3v2 tag
# (it would only name the encoder).
_LAME_VBR_MODE = 4  # lameenc's set_vbr: 4 is vbr_mtrh (LAME's default VBR)
_LAME_VBR_QUALITY = 1
_LAME_VBR_ALGORITHM = 7
_LAME_CBR_ALGORITHM = 5


def validate_format(fmt: str) -> AudioFormat:
    """Return the :class:`AudioFormat` named ``fmt`` (case-insensitive) or raise OptionError."""
    key = fmt.strip().lower() if isinstance(fmt, str) else None
    if key not in FORMATS:
        raise OptionError(f"unknown audio format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return FORMATS[key]


def validate_sample_rate(rate: int) -> int:
    """Return ``rate`` as an int if it is a whole number of Hz in 8000..48000, else OptionError."""
    if (isinstance(rate, (int, np.integer)) and not isinstance(rate, bool)
            and MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        return int(rate)
    raise OptionError(
        f"invalid sample rate {rate!r}; valid: an integer from {MIN_SAMPLE_RATE} to "
        f"{MAX_SAMPLE_RATE} Hz (e.g. 8000, 16000, 22050, 24000, 44100, 48000)"
    )


def effective_rate(fmt: str, rate: int) -> int:
    """Return the rate ``fmt`` is actually encoded at when ``rate`` is requested.

    That is ``rate`` itself when the codec supports it, else the nearest supported rate
    above it, so nothing is lost and no more is resampled than needed (Opus: 22050 ->
    24000, 44100 -> 48000; MP3/AAC: 10000 -> 11025).
    """
    spec, rate = validate_format(fmt), validate_sample_rate(rate)
    if spec.rates is None or rate in spec.rates:
        return rate
    return min((r for r in spec.rates if r >= rate), default=FALLBACK_RATE)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample float32 mono audio from ``src_rate`` to ``dst_rate`` (polyphase filter)."""
    x = np.asarray(samples, dtype=np.float32)
    if src_rate <= 0 or dst_rate <= 0:
        raise OptionError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    if src_rate == dst_rate or x.size == 0:
        return x
    g = gcd(int(src_rate), int(dst_rate))
    from scipy.signal import resample_poly  # imported here: scipy.signal costs ~0.8 s to import

    return np.asarray(resample_poly(x, int(dst_rate) // g, int(src_rate) // g), dtype=np.float32)


def to_pcm16(samples: np.ndarray) -> bytes:
    """Clip to [-1, 1], scale by 32767 and return little-endian int16 bytes."""
    return _scaled_pcm16(_clipped(np.asarray(samples, dtype=np.float32)))


def _clipped(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` clipped to [-1, 1], infinities to the limits and NaN to 0 (libsndfile would wrap)."""
    y: np.ndarray = np.clip(x, -1.0, 1.0)
    y[np.isnan(y)] = 0.0
    return y


def _scaled_pcm16(x: np.ndarray) -> bytes:
    """float32 samples already within [-1, 1] as little-endian int16 bytes."""
    return (x * 32767.0).round().astype("<i2").tobytes()  # round() is np.rint, half to even


def silence(seconds: float, rate: int) -> np.ndarray:
    """Return ``seconds`` of float32 zeros at ``rate`` Hz."""
    if seconds < 0:
        raise OptionError(f"silence length must be >= 0 seconds, got {seconds}")
    return np.zeros(round(seconds * rate), dtype=np.float32)


@lru_cache(maxsize=1)
def _ffmpeg_exe() -> str:
    """The ffmpeg binary shipped inside imageio-ffmpeg (no env override, no PATH lookup).

    Nothing in the engine runs it any more; the tests use it as an independent decoder.
    """
    import imageio_ffmpeg

    found = sorted(Path(imageio_ffmpeg.__file__).parent.joinpath("binaries").glob("ffmpeg*"))
    if not found:
        raise EncodingError("the ffmpeg binary bundled with imageio-ffmpeg is missing")
    return str(found[0])


def _as_mono(chunk: np.ndarray) -> np.ndarray:
    x = np.asarray(chunk, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise EngineError(f"expected mono audio as a 1-D array, got shape {x.shape}")
    return x


class AudioEncoder:
    """Streaming encoder: ``write()`` float32 mono chunks, then ``finish()`` for the bytes.

    Chunks are at ``input_rate`` (default: ``sample_rate``) and are resampled one by
    one to the output rate; pass whole sentences so the chunk edges stay clean. Each
    chunk is encoded as it is written, so ``finish()`` only flushes the encoder.
    As a context manager it finishes on a clean exit and aborts on an exception;
    ``finish()`` may be called again afterwards and returns the same bytes.
    ``bitrate_kbps`` applies to mp3 (constant bitrate; by default VBR, about 58 kbps on
    speech), opus (VBR target, default 48k) and aac (default 64k); wav, flac and pcm
    ignore it. Nothing outlives the encoder: no process, no temporary file.
    """

    def __init__(self, fmt: str, sample_rate: int, input_rate: int | None = None,
                 bitrate_kbps: int | None = None) -> None:
        self.format = validate_format(fmt)
        self.sample_rate = effective_rate(self.format.name, sample_rate)
        if self.sample_rate != sample_rate:
            log.info("%s cannot encode %d Hz; encoding at %d Hz", self.format.name, sample_rate,
                     self.sample_rate)
        self.input_rate = int(sample_rate if input_rate is None else input_rate)
        if self.input_rate <= 0:
            raise OptionError(f"input rate must be a positive number of Hz, got {input_rate}")
        if bitrate_kbps is not None and not 8 <= int(bitrate_kbps) <= 320:
            raise OptionError(f"invalid bitrate {bitrate_kbps} kbps; valid: 8 to 320 kbps")
        self.bitrate_kbps = None if bitrate_kbps is None else int(bitrate_kbps)
        self._samples = 0
        self._result: bytes | None = None
        self._closed = False
        self._buf = io.BytesIO()
        self._sf: sf.SoundFile | None = None
        self._lame: lameenc.Encoder | None = None
        self._mp3 = bytearray()
        self._container: OutputContainer | None = None
        self._stream: AudioStream | None = None
        self._started = time.perf_counter()
        name = self.format.name
        if name in _SNDFILE:
            self._open_sndfile(name)
        elif name == "mp3":
            self._open_lame()
        elif name in _LIBAV_CODECS:
            self._open_libav(_LIBAV_CODECS[name])

    @property
    def samples_written(self) -> int:
        """Number of output samples written so far (at :attr:`sample_rate`)."""
        return self._samples

    @property
    def duration_seconds(self) -> float:
        """Duration of the audio written so far, in seconds."""
        return self._samples / self.sample_rate

    def _open_sndfile(self, name: str) -> None:
        container, subtype = _SNDFILE[name]
        try:
            self._sf = sf.SoundFile(self._buf, "w", samplerate=self.sample_rate, channels=1,
                                    format=container, subtype=subtype)
        except (RuntimeError, ValueError) as exc:
            raise EncodingError(f"{name} encoding failed to start: {exc}") from exc

    def _open_lame(self) -> None:
        enc = lameenc.Encoder()
        try:
            enc.set_channels(1)
            enc.set_in_sample_rate(self.sample_rate)
            enc.set_out_sample_rate(self.sample_rate)  # else LAME may pick a lower rate of its own
            if self.bitrate_kbps is None:
                enc.set_vbr(_LAME_VBR_MODE)
                enc.set_vbr_quality(_LAME_VBR_QUALITY)
                enc.set_quality(_LAME_VBR_ALGORITHM)
            else:
                enc.set_bit_rate(self.bitrate_kbps)
                enc.set_quality(_LAME_CBR_ALGORITHM)
            enc.silence()
            enc.encode(b"")  # LAME checks its settings on the first call: fail here, not mid-stream
        except RuntimeError as exc:
            raise EncodingError(f"mp3 encoding failed to start: {exc}") from exc
        self._lame = enc

    def _open_libav(self, codec: _LibavCodec) -> None:
        import av  # imported here: ffmpeg's libraries cost about 18 MB of memory, only aac and opus need them

        try:
            self._container = av.open(self._buf, "w", format=codec.muxer)
            stream = self._container.add_stream(codec.codec, rate=self.sample_rate, layout="mono",
                                                options=dict(codec.options))
            if not isinstance(stream, av.audio.stream.AudioStream):  # cannot happen: the codecs are audio codecs
                raise EncodingError(f"{codec.codec} is not an audio codec")
            stream.codec_context.bit_rate = (self.bitrate_kbps or codec.default_kbps) * 1000
            self._stream = stream
        except (av.FFmpegError, ValueError) as exc:
            self._release()
            raise EncodingError(f"{self.format.name} encoding failed to start: {exc}") from exc

    def write(self, chunk: np.ndarray) -> None:
        """Encode one chunk of mono float32 samples at ``input_rate``."""
        if self._closed:
            raise EngineError("write() after finish() or close()")
        x = resample(_as_mono(chunk), self.input_rate, self.sample_rate)
        if x.size == 0:
            return
        x = _clipped(x)
        try:
            if self._lame is not None:
                self._mp3 += self._lame.encode(_scaled_pcm16(x))
            elif self._stream is not None:
                self._encode_libav(x)
            elif self._sf is not None:
                self._sf.write(x)
            else:
                self._buf.write(_scaled_pcm16(x))
        except RuntimeError as exc:  # LAME's or libsndfile's
            self.close()
            raise EncodingError(f"{self.format.name} encoding failed: {exc}") from exc
        except EncodingError:
            self.close()
            raise
        self._samples += x.size

    def _encode_libav(self, x: np.ndarray | None) -> None:
        """Encode ``x`` through PyAV and mux what the encoder hands back; None flushes the encoder."""
        import av

        if self._container is None or self._stream is None:  # cannot happen: the callers checked
            raise EngineError(f"{self.format.name} encoder has no stream")
        frame = None
        if x is not None:
            pcm = np.frombuffer(_scaled_pcm16(x), "<i2").reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self._samples  # the Ogg muxer's granule positions (Opus's exact end) come from these
        try:
            self._container.mux(self._stream.encode(frame))
            if frame is None:
                self._container.close()
                self._container = None
        except (av.FFmpegError, ValueError) as exc:
            raise EncodingError(f"{self.format.name} encoding failed: {exc}") from exc

    def finish(self) -> bytes:
        """Flush the encoder and return the complete file (idempotent)."""
        if self._result is not None:
            return self._result
        if self._closed:
            raise EngineError("finish() after close(): the encoder was aborted")
        self._closed = True
        try:
            if self._lame is not None:
                self._mp3 += self._lame.flush()
                data = mp3.with_info_tag(bytes(self._mp3), self._samples, cbr=self.bitrate_kbps is not None,
                                         quality=self._lame_quality())
            elif self._stream is not None:
                self._encode_libav(None)
                data = self._buf.getvalue()
            elif self._sf is not None:
                self._sf.close()
                data = self._buf.getvalue()
            else:
                data = self._buf.getvalue()
        except EncodingError:
            raise
        except (RuntimeError, EngineError) as exc:  # LAME's, libsndfile's, or engine.mp3's on LAME's frames
            raise EncodingError(f"{self.format.name} encoding failed: {exc}") from exc
        finally:
            self._release()
        self._result = data
        log.debug("encoded %.2f s as %s at %d Hz: %d bytes in %.1f ms", self.duration_seconds,
                  self.format.name, self.sample_rate, len(data),
                  (time.perf_counter() - self._started) * 1000)
        return data

    def _lame_quality(self) -> int:
        """The Xing quality field as LAME fills it: 100 - 10 * VBR quality - algorithm quality."""
        if self.bitrate_kbps is None:
            return 100 - 10 * _LAME_VBR_QUALITY - _LAME_VBR_ALGORITHM
        return 100 - 10 * 4 - _LAME_CBR_ALGORITHM  # LAME's VBR quality stays at its default, 4

    def close(self) -> None:
        """Abort: release the encoder without producing output."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._sf is not None and not self._sf.closed:
            try:
                self._sf.close()
            except RuntimeError:
                log.debug("ignoring error while closing an aborted %s encoder", self.format.name)
        self._lame = None
        self._mp3 = bytearray()
        if self._container is not None:
            self._abandon_container()
        self._stream = None

    def _abandon_container(self) -> None:
        import av

        try:
            if self._container is not None:
                self._container.close()
        except (av.FFmpegError, ValueError):
            log.debug("ignoring error while closing an aborted %s encoder", self.format.name)
        self._container = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.close()


def encode(samples: np.ndarray, sample_rate: int, fmt: str, input_rate: int | None = None,
           bitrate_kbps: int | None = None) -> bytes:
    """Encode a whole mono float32 signal into ``fmt`` at ``sample_rate`` (see AudioEncoder)."""
    with AudioEncoder(fmt, sample_rate, input_rate, bitrate_kbps) as enc:
        enc.write(samples)
    return enc.finish()


def decode(data: bytes, fmt: str, pcm_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``data`` in ``fmt`` to (float32 mono samples, sample rate).

    pcm has no header, so its rate must be given as ``pcm_rate``. aac loses the
    1024-sample encoder priming (ADTS cannot signal it) but keeps up to one frame of
    end padding.
    """
    spec = validate_format(fmt)
    if spec.name == "pcm":
        if pcm_rate is None:
            raise OptionError("decoding pcm needs pcm_rate (e.g. 24000): raw pcm has no header")
        if len(data) % 2:
            raise EncodingError(f"pcm decoding failed: {len(data)} bytes is not whole 16-bit samples")
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0, validate_sample_rate(pcm_rate)
    if spec.name == "aac":
        return _decode_aac(data)
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise EncodingError(f"{spec.name} decoding failed: {exc}") from exc
    return (x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)), int(rate)


def _decode_aac(data: bytes) -> tuple[np.ndarray, int]:
    import av

    if len(data) < 7 or data[0] != 0xFF or data[1] & 0xF6 != 0xF0:
        raise EncodingError("aac decoding failed: data does not start with an ADTS header")
    index = (data[2] >> 2) & 0x0F
    if index >= len(_ADTS_RATES):
        raise EncodingError(f"aac decoding failed: bad ADTS sampling index {index}")
    try:
        with av.open(io.BytesIO(data), "r", format="aac") as container:
            planes = [frame.to_ndarray() for frame in container.decode(audio=0)]
    except (OSError, ValueError) as exc:  # av.FFmpegError
        raise EncodingError(f"aac decoding failed: {exc}") from exc
    if not planes:
        return np.zeros(0, np.float32), _ADTS_RATES[index]
    x = np.concatenate(planes, axis=1).mean(axis=0, dtype=np.float32)  # the decoder's planar float, to mono
    return x[_AAC_PRIMING:].astype(np.float32), _ADTS_RATES[index]

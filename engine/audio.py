"""Audio encoding and decoding: float32 mono samples in, container bytes out.

Formats follow OpenAI's speech API (``response_format``): wav, mp3, opus, flac, aac
and pcm. wav and flac are encoded in-process by libsndfile (through ``soundfile``)
into an ``io.BytesIO``; mp3 (LAME), opus (libopus in Ogg) and aac (ADTS) stream
through the ffmpeg binary bundled with ``imageio-ffmpeg`` (never a system ffmpeg);
pcm is raw s16le. libsndfile can write MP3 and Ogg Opus too, but at about 130x and
30x real time it cost about as much as the fastest voice takes to synthesize, on the
Python process's own CPU; ffmpeg's LAME takes half the time and its libopus a tenth.

mp3 is written to a temporary file rather than a pipe: the muxer seeks back at the
end to fill in the Xing/LAME header, whose encoder delay and padding let decoders
(libsndfile's mpg123, ffmpeg, browsers) return exactly the samples written.

Codecs that only support some sample rates (Opus: 8/12/16/24/48 kHz; MP3 and AAC:
the nine MPEG rates from 8 to 48 kHz) are encoded at the nearest supported rate at
or above the one asked for (22050 Hz becomes 24000 Hz for Opus);
:func:`effective_rate` and :attr:`AudioEncoder.sample_rate` tell which.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import numpy as np
import soundfile as sf

from . import mp3
from .exceptions import EncodingError, EngineError, OptionError

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
    "run_ffmpeg",
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
_FFMPEG_TIMEOUT = 300.0


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
class _FfmpegCodec:
    """How the bundled ffmpeg encodes one format.

    Rate control: a requested bitrate is passed as ``-b:a``; without one, the codec's
    ``quality_args`` when it has them (VBR by quality), else ``default_kbps``.
    """

    args: tuple[str, ...]
    muxer: str
    default_kbps: int | None
    quality_args: tuple[str, ...] = ()
    #: The muxer finishes by seeking back to a header (mp3's Xing/LAME frame), so the
    #: output goes to a temporary file instead of a pipe.
    seekable_output: bool = False


# Formats encoded by streaming s16le through the bundled ffmpeg.
# opus: "audio" (CELT/hybrid) mode at complexity 3 encodes 60 s of 24 kHz speech in
# about 0.17 s (libsndfile's Ogg Opus: about 2.1 s) with a lower spectral distortion
# than libsndfile's default; complexity 10 or "voip" (SILK) mode is 2-4x slower.
# aac: the "fast" coder takes about 0.2 s for the same minute (the default "twoloop"
# coder about 0.7 s) at the same size and a similar distortion on speech.
# mp3: LAME VBR quality 4 (-V4), LAME's own default and what libsndfile used: about
# 57 kbps on 24 kHz mono speech (48-64 kbps), about 0.22 s for the same minute in 18
# sentence chunks (libsndfile's LAME: 0.47 s, all of it on the Python process's CPU)
# with the same size and distortion; V5 is 49 kbps with more distortion, and LAME's
# -q (compression_level) changes neither speed nor size below 7. A requested bitrate is
# constant (CBR): ffmpeg's LAME ABR undershoots on speech (64k gives 52 kbps, 128k 76
# kbps) at no better quality than CBR. ffmpeg writes the Xing frame itself, big enough
# for the gapless tag even at 8 kbps. No ID3v2 tag (it would only name the encoder);
# the LAME info tag is labelled "LAME" (ffmpeg writes "Lavc...") so that tools reading
# it by that name accept it (engine.mp3 also reads ffmpeg's own labels).
_FFMPEG_CODECS = {
    "aac": _FfmpegCodec(("-c:a", "aac", "-aac_coder", "fast"), "adts", 64),
    "opus": _FfmpegCodec(("-c:a", "libopus", "-application", "audio", "-compression_level", "3",
                          "-vbr", "on"), "ogg", 48),
    "mp3": _FfmpegCodec(("-c:a", "libmp3lame", "-id3v2_version", "0", "-write_xing", "1",
                         "-metadata:s:a:0", "encoder=LAME"), "mp3", None,
                        quality_args=("-q:a", "4"), seekable_output=True),
}


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
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    return (x * 32767.0).round().astype("<i2").tobytes()  # round() is np.rint, half to even


def silence(seconds: float, rate: int) -> np.ndarray:
    """Return ``seconds`` of float32 zeros at ``rate`` Hz."""
    if seconds < 0:
        raise OptionError(f"silence length must be >= 0 seconds, got {seconds}")
    return np.zeros(round(seconds * rate), dtype=np.float32)


@lru_cache(maxsize=1)
def _ffmpeg_exe() -> str:
    """The ffmpeg binary shipped inside imageio-ffmpeg (no env override, no PATH lookup)."""
    import imageio_ffmpeg

    found = sorted(Path(imageio_ffmpeg.__file__).parent.joinpath("binaries").glob("ffmpeg*"))
    if not found:
        raise EncodingError("the ffmpeg binary bundled with imageio-ffmpeg is missing")
    return str(found[0])


def _stderr_tail(stream: IO[bytes] | bytes | None, limit: int = 800) -> str:
    if stream is None:
        return ""
    if not isinstance(stream, bytes):
        stream.seek(0)
        stream = stream.read()
    return stream.decode("utf-8", "replace").strip()[-limit:]


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
    one to the output rate; pass whole sentences so the chunk edges stay clean.
    As a context manager it finishes on a clean exit and aborts on an exception;
    ``finish()`` may be called again afterwards and returns the same bytes.
    ``bitrate_kbps`` applies to mp3 (constant bitrate; by default VBR quality 4, about
    57 kbps on speech), opus (VBR target, default 48k) and aac (default 64k); wav, flac
    and pcm ignore it. An mp3 encoder holds a temporary file until it is finished or
    closed (or garbage-collected); use it as a context manager.
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
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._out: list[bytes] = []
        self._reader: threading.Thread | None = None
        self._out_path: str | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes], str | None], AudioEncoder] | None = None
        self._started = time.perf_counter()
        name = self.format.name
        if name in _SNDFILE:
            self._open_sndfile(name)
        elif name in _FFMPEG_CODECS:
            self._start_ffmpeg(_FFMPEG_CODECS[name])

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

    def _start_ffmpeg(self, codec: _FfmpegCodec) -> None:
        name = self.format.name
        if self.bitrate_kbps is None and codec.quality_args:
            rate_control: tuple[str, ...] = codec.quality_args
        else:
            rate_control = ("-b:a", f"{self.bitrate_kbps or codec.default_kbps}k")
        if codec.seekable_output:
            # A file of our own (mkstemp: private, unguessable) that ffmpeg overwrites
            # (-y); _release() removes it after finish(), close() or an error.
            try:
                fd, self._out_path = tempfile.mkstemp(prefix=f"tts-batch-{name}-",
                                                      suffix=f".{self.format.extension}")
            except OSError as exc:
                raise EncodingError(f"{name} encoding failed: cannot create a temporary file: {exc}") from exc
            os.close(fd)
            target = ["-y", self._out_path]
        else:
            target = ["pipe:1"]
        cmd = [_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "s16le",
               "-ar", str(self.sample_rate), "-ac", "1", "-i", "pipe:0",
               *codec.args, *rate_control, "-f", codec.muxer, *target]
        try:
            # ffmpeg writes its stderr here for as long as the encoder lives; _release() closes it.
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - kept open on purpose, see above
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stderr=self._stderr,
                stdout=subprocess.DEVNULL if codec.seekable_output else subprocess.PIPE)
        except OSError as exc:
            self._release()
            raise EncodingError(f"{name} encoding failed: cannot start ffmpeg: {exc}") from exc
        # An encoder dropped without finish() or close() must not leave ffmpeg running or
        # its output file behind (also run at interpreter exit).
        self._finalizer = weakref.finalize(self, _abandon_ffmpeg, self._proc, self._out_path)
        if codec.seekable_output:
            return
        stdout, out = self._proc.stdout, self._out
        if stdout is None:  # cannot happen: stdout=PIPE above
            self._release()
            raise EncodingError(f"{name} encoding failed: ffmpeg has no output pipe")
        # Drain stdout concurrently so ffmpeg never blocks on a full pipe while we write.
        self._reader = threading.Thread(
            target=lambda: out.extend(iter(lambda: stdout.read(65536), b"")),
            name=f"{name}-encoder-reader", daemon=True)
        self._reader.start()

    def _ffmpeg_error(self, what: str) -> EncodingError:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # let a dying ffmpeg finish writing its complaint
                self._proc.wait(timeout=10)
        return EncodingError(f"{self.format.name} encoding failed: {what}: {_stderr_tail(self._stderr)}")

    def write(self, chunk: np.ndarray) -> None:
        """Encode one chunk of mono float32 samples at ``input_rate``."""
        if self._closed:
            raise EngineError("write() after finish() or close()")
        x = resample(_as_mono(chunk), self.input_rate, self.sample_rate)
        if x.size == 0:
            return
        x = np.clip(np.nan_to_num(x), -1.0, 1.0)  # libsndfile would wrap, not clip
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.write(to_pcm16(x))
            except OSError as exc:  # ffmpeg died: report why, then clean up
                err = self._ffmpeg_error(f"ffmpeg stopped reading ({exc})")
                self.close()
                raise err from exc
        elif self._sf is not None:
            try:
                self._sf.write(x)
            except RuntimeError as exc:
                self.close()
                raise EncodingError(f"{self.format.name} encoding failed: {exc}") from exc
        else:
            self._buf.write(to_pcm16(x))
        self._samples += x.size

    def finish(self) -> bytes:
        """Flush the encoder and return the complete file (idempotent)."""
        if self._result is not None:
            return self._result
        if self._closed:
            raise EngineError("finish() after close(): the encoder was aborted")
        self._closed = True
        try:
            if self._sf is not None:
                self._sf.close()
                data = self._buf.getvalue()
            elif self._proc is not None:
                data = self._finish_ffmpeg()
            else:
                data = self._buf.getvalue()
        except RuntimeError as exc:
            raise EncodingError(f"{self.format.name} encoding failed: {exc}") from exc
        finally:
            self._release()
        self._result = data
        log.debug("encoded %.2f s as %s at %d Hz: %d bytes in %.1f ms", self.duration_seconds,
                  self.format.name, self.sample_rate, len(data),
                  (time.perf_counter() - self._started) * 1000)
        return data

    def _finish_ffmpeg(self) -> bytes:
        proc = self._proc
        if proc is None:
            raise EngineError(f"{self.format.name} encoder has no ffmpeg process")
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            rc = proc.wait(timeout=_FFMPEG_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise self._ffmpeg_error(f"ffmpeg still running after {_FFMPEG_TIMEOUT:.0f} s") from exc
        except OSError as exc:
            raise self._ffmpeg_error(f"ffmpeg stopped reading ({exc})") from exc
        if self._reader is not None:
            self._reader.join()
        if rc != 0:
            raise self._ffmpeg_error(f"ffmpeg exited with status {rc}")
        if self._out_path is None:
            return b"".join(self._out)
        try:
            with open(self._out_path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise EncodingError(f"{self.format.name} encoding failed: cannot read ffmpeg's output: {exc}") from exc
        if self.format.name == "mp3":
            data = mp3.set_end_padding(data, self._samples)
        return data

    def close(self) -> None:
        """Abort: release the encoder (and any ffmpeg process) without producing output."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._sf is not None and not self._sf.closed:
            try:
                self._sf.close()
            except RuntimeError:
                log.debug("ignoring error while closing an aborted %s encoder", self.format.name)
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            if self._reader is not None:
                self._reader.join()  # ffmpeg is gone, so the reader sees EOF
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._out_path is not None:  # after ffmpeg is gone, so it cannot recreate the file
            _remove_file(self._out_path)
            self._out_path = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.close()


def _remove_file(path: str) -> None:
    """Delete ``path`` if it is still there (an encoder's temporary output)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove temporary encoder output %s: %s", path, exc)


def _abandon_ffmpeg(proc: subprocess.Popen[bytes], out_path: str | None) -> None:
    """Finalizer of an encoder dropped unfinished: kill its ffmpeg, then delete its output file."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if out_path is not None:
        _remove_file(out_path)


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


def run_ffmpeg(args: Sequence[str], data: bytes, what: str, timeout: float) -> bytes:
    """Run the bundled ffmpeg on ``data`` (stdin) with ``args``; its stdout, or EncodingError saying ``what`` failed."""
    cmd = [_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *args]
    try:
        done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EncodingError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        raise EncodingError(f"{what} failed: ffmpeg exited with status {done.returncode}: "
                            f"{_stderr_tail(done.stderr)}")
    return done.stdout


def _decode_aac(data: bytes) -> tuple[np.ndarray, int]:
    if len(data) < 7 or data[0] != 0xFF or data[1] & 0xF6 != 0xF0:
        raise EncodingError("aac decoding failed: data does not start with an ADTS header")
    index = (data[2] >> 2) & 0x0F
    if index >= len(_ADTS_RATES):
        raise EncodingError(f"aac decoding failed: bad ADTS sampling index {index}")
    decoded = run_ffmpeg(["-f", "aac", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "pipe:1"], data,
                         "aac decoding", _FFMPEG_TIMEOUT)
    x = np.frombuffer(decoded, "<f4")[_AAC_PRIMING:]
    return x.astype(np.float32), _ADTS_RATES[index]

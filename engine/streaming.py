"""Audio as it is made: one growing file in any format, handed out piece by piece.

:class:`DeltaEncoder` takes one sentence of samples at a time and returns the bytes of the
output file that are ready so far; the pieces, concatenated in order, are one playable file
of the format asked for. It is what the SSE form of ``POST /v1/audio/speech`` sends
(``speech.audio.delta`` events), so a client that appends the deltas gets:

* ``pcm``: raw 16-bit little-endian mono, exactly as the non-streamed answer;
* ``wav``: a WAV header whose RIFF and data sizes say "unknown" (``0xFFFFFFFF``, as
  streamed WAV always does), then 16-bit PCM; every sentence's PCM follows in the delta of
  that sentence, so the sample count is the non-streamed file's;
* ``mp3``, ``aac``, ``opus``, ``flac``: one continuous encode in this process, written out
  as it goes (MP3 frames from LAME through ``lameenc``, without a Xing header; ADTS frames,
  an Ogg Opus stream and a FLAC stream whose header has no total length from ffmpeg's
  encoders and muxers through PyAV, into a sink that cannot seek, as a pipe). The encoder
  keeps up to a frame or an Ogg page (about a second for opus) until the next sentence or
  the end, so a delta is what the encoder has flushed, not exactly one sentence. (Until it
  moved in-process, every streamed request started an ffmpeg process for this.)

The stored, non-streamed file is made by :class:`engine.audio.AudioEncoder` as before; this
one runs beside it only for streamed requests.
"""
from __future__ import annotations

import contextlib
import struct
from fractions import Fraction
from types import TracebackType
from typing import TYPE_CHECKING, Self

import lameenc
import numpy as np

from .audio import _LIBAV_CODECS, _LibavCodec, effective_rate, resample, to_pcm16, validate_format
from .exceptions import EncodingError, EngineError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import OutputContainer

__all__ = ["SENTENCE_ALIGNED", "DeltaEncoder", "streaming_wav_header"]

#: Formats whose deltas are exactly one sentence each (no encoder state between them): a
#: stream of them can continue with another attempt's next sentence.
SENTENCE_ALIGNED = frozenset({"pcm", "wav"})
_UNKNOWN_SIZE = 0xFFFFFFFF
#: mp3 at a constant 64 kbps: with no Xing header (the stream cannot go back to write one),
#: players and libsndfile estimate a VBR stream's length from its first frames and stop short.
#: LAME's algorithm quality 5, as ffmpeg's LAME ran it.
_MP3_KBPS = 64
_MP3_ALGORITHM = 5
#: The other formats through PyAV, at the stored file's settings (aac 64k, opus 48k VBR).
_LIBAV: dict[str, _LibavCodec] = {**_LIBAV_CODECS, "flac": _LibavCodec("flac", "flac", 0)}


class _Sink:
    """A write-only file for PyAV: no seek, so the muxers write as to a pipe and never go back."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 44-byte PCM WAV header (16-bit mono) whose sizes are unknown, for a stream of samples."""
    byte_rate = sample_rate * 2
    return (b"RIFF" + struct.pack("<I", _UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, 2, 16)
            + b"data" + struct.pack("<I", _UNKNOWN_SIZE))


class DeltaEncoder:
    """Encode a stream sentence by sentence: :meth:`write` and :meth:`finish` return the new bytes.

    ``sample_rate`` is the output rate (moved up to one the codec supports, as
    :class:`engine.audio.AudioEncoder` does); chunks arrive at ``input_rate``. Use it as a
    context manager, or call :meth:`close`, to release the encoder early.
    """

    def __init__(self, fmt: str, sample_rate: int, input_rate: int | None = None) -> None:
        self.format = validate_format(fmt).name
        self.sample_rate = effective_rate(self.format, sample_rate)
        self.input_rate = int(sample_rate if input_rate is None else input_rate)
        self._header_sent = False
        self._lame: lameenc.Encoder | None = None
        self._sink = _Sink()
        self._container: OutputContainer | None = None
        self._stream: AudioStream | None = None
        self._samples = 0
        self._done = False
        if self.format == "mp3":
            self._start_lame()
        elif self.format in _LIBAV:
            self._start_libav(_LIBAV[self.format])

    def _start_lame(self) -> None:
        enc = lameenc.Encoder()
        try:
            enc.set_channels(1)
            enc.set_in_sample_rate(self.sample_rate)
            enc.set_out_sample_rate(self.sample_rate)
            enc.set_bit_rate(_MP3_KBPS)
            enc.set_quality(_MP3_ALGORITHM)
            enc.silence()
            enc.encode(b"")  # LAME checks its settings on the first call
        except RuntimeError as exc:
            raise EncodingError(f"mp3 stream encoding failed to start: {exc}") from exc
        self._lame = enc

    def _start_libav(self, codec: _LibavCodec) -> None:
        import av  # imported here, as engine.audio does: ffmpeg's libraries cost about 18 MB of memory

        try:
            # flush_packets: every packet reaches the sink at once, not when libavformat's buffer fills
            self._container = av.open(self._sink, "w", format=codec.muxer, options={"flush_packets": "1"})
            stream = self._container.add_stream(codec.codec, rate=self.sample_rate, layout="mono",
                                                options=dict(codec.options))
            if not isinstance(stream, av.audio.stream.AudioStream):  # cannot happen: the codecs are audio codecs
                raise EncodingError(f"{codec.codec} is not an audio codec")
            if codec.default_kbps:
                stream.codec_context.bit_rate = codec.default_kbps * 1000
            self._stream = stream
        except (av.FFmpegError, ValueError) as exc:
            self.close()
            raise EncodingError(f"{self.format} stream encoding failed to start: {exc}") from exc

    def write(self, samples: np.ndarray) -> bytes:
        """Add one chunk (float32 mono at ``input_rate``); returns the output bytes ready now."""
        if self._done:
            raise EngineError("write() after finish() or close()")
        x = resample(np.asarray(samples, dtype=np.float32), self.input_rate, self.sample_rate)
        pcm = to_pcm16(x)
        if self._lame is not None:
            try:
                return bytes(self._lame.encode(pcm))
            except RuntimeError as exc:
                self.close()
                raise EncodingError(f"mp3 stream encoding failed: {exc}") from exc
        if self._stream is not None:
            self._encode_libav(np.frombuffer(pcm, "<i2"))
            return self._sink.take()
        head = b""
        if self.format == "wav" and not self._header_sent:
            head, self._header_sent = streaming_wav_header(self.sample_rate), True
        return head + pcm

    def _encode_libav(self, pcm: np.ndarray | None) -> None:
        """Encode int16 ``pcm`` and mux what the encoder hands back; None flushes and closes the stream."""
        import av

        if self._container is None or self._stream is None:  # cannot happen: the callers checked
            raise EngineError(f"{self.format} stream encoder has no stream")
        frame = None
        if pcm is not None:
            if pcm.size == 0:
                return
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = self.sample_rate, Fraction(1, self.sample_rate), self._samples
            self._samples += pcm.size
        try:
            self._container.mux(self._stream.encode(frame))
            if frame is None:
                self._container.close()
                self._container = None
        except (av.FFmpegError, ValueError) as exc:
            self.close()
            raise EncodingError(f"{self.format} stream encoding failed: {exc}") from exc

    def finish(self) -> bytes:
        """Flush the encoder; returns the last bytes of the file (the header alone if nothing was written)."""
        if self._done:
            return b""
        self._done = True
        if self._lame is not None:
            try:
                return bytes(self._lame.flush())
            except RuntimeError as exc:
                raise EncodingError(f"mp3 stream encoding failed: {exc}") from exc
            finally:
                self._lame = None
        if self._stream is not None:
            self._encode_libav(None)
            self._stream = None
            return self._sink.take()
        if self.format == "wav" and not self._header_sent:
            self._header_sent = True
            return streaming_wav_header(self.sample_rate)
        return b""

    def close(self) -> None:
        """Abort: release the encoder without the rest of the file."""
        self._done = True
        self._lame = None
        self._stream = None
        container, self._container = self._container, None
        if container is not None:
            import av

            with contextlib.suppress(av.FFmpegError, ValueError):  # an aborted stream: nothing of it is wanted
                container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""Audio as it is made: one growing file in any format, handed out piece by piece.

:class:`DeltaEncoder` takes one sentence of samples at a time and returns the bytes of the
output file that are ready so far; the pieces, concatenated in order, are one playable file
of the format asked for. It is what the SSE form of ``POST /v1/audio/speech`` sends
(``speech.audio.delta`` events), so a client that appends the deltas gets:

* ``pcm``: raw 16-bit little-endian mono, exactly as the non-streamed answer;
* ``wav``: a WAV header whose RIFF and data sizes say "unknown" (``0xFFFFFFFF``, as
  streamed WAV always does), then 16-bit PCM; every sentence's PCM follows in the delta of
  that sentence, so the sample count is the non-streamed file's;
* ``mp3``, ``aac``, ``opus``, ``flac``: one continuous ffmpeg encode to a pipe (MP3 frames
  without a Xing header, ADTS frames, an Ogg Opus stream, a FLAC stream whose header has no
  total length). The encoder keeps up to a frame or an Ogg page (about a second for opus)
  until the next sentence or the end, so a delta is what the encoder has flushed, not
  exactly one sentence.

The stored, non-streamed file is made by :class:`engine.audio.AudioEncoder` as before; this
one runs beside it only for streamed requests.
"""
from __future__ import annotations

import contextlib
import struct
import subprocess
import threading
from types import TracebackType
from typing import IO, Self

import numpy as np

from .audio import _ffmpeg_exe, effective_rate, resample, to_pcm16, validate_format
from .exceptions import EncodingError, EngineError

__all__ = ["SENTENCE_ALIGNED", "DeltaEncoder", "streaming_wav_header"]

#: Formats whose deltas are exactly one sentence each (no encoder state between them): a
#: stream of them can continue with another attempt's next sentence.
SENTENCE_ALIGNED = frozenset({"pcm", "wav"})
_UNKNOWN_SIZE = 0xFFFFFFFF
_FFMPEG_ARGS: dict[str, tuple[str, ...]] = {
    # mp3 at a constant 64 kbps: with no Xing header (a pipe cannot go back to write one), players and
    # libsndfile estimate a VBR stream's length from its first frames and stop short.
    "mp3": ("-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", "0", "-id3v2_version", "0", "-f", "mp3"),
    "aac": ("-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k", "-f", "adts"),
    "opus": ("-c:a", "libopus", "-application", "audio", "-compression_level", "3", "-b:a", "48k",
             "-f", "ogg"),
    "flac": ("-c:a", "flac", "-f", "flac"),
}
_FINISH_TIMEOUT = 60.0


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
    context manager, or call :meth:`close`, so that an ffmpeg process never outlives it.
    """

    def __init__(self, fmt: str, sample_rate: int, input_rate: int | None = None) -> None:
        self.format = validate_format(fmt).name
        self.sample_rate = effective_rate(self.format, sample_rate)
        self.input_rate = int(sample_rate if input_rate is None else input_rate)
        self._header_sent = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = bytearray()
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stderr = bytearray()
        self._done = False
        if self.format in _FFMPEG_ARGS:
            self._start()

    def _start(self) -> None:
        cmd = [_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar", str(self.sample_rate),
               "-ac", "1", "-i", "pipe:0", *_FFMPEG_ARGS[self.format], "-flush_packets", "1", "pipe:1"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE)
        except OSError as exc:
            raise EncodingError(f"{self.format} stream encoding failed: cannot start ffmpeg: {exc}") from exc
        stdout, stderr = self._proc.stdout, self._proc.stderr
        if stdout is None or stderr is None:  # cannot happen: both are PIPE
            raise EncodingError(f"{self.format} stream encoding failed: ffmpeg has no output pipe")
        self._reader = threading.Thread(target=self._drain, args=(stdout, stderr), daemon=True,
                                        name=f"{self.format}-delta-reader")
        self._reader.start()

    def _drain(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        errors = threading.Thread(target=lambda: self._stderr.extend(stderr.read()), daemon=True)
        errors.start()
        while True:
            data = stdout.read1(65536) if hasattr(stdout, "read1") else stdout.read(65536)
            if not data:
                break
            with self._lock:
                self._out.extend(data)
        errors.join()

    def _take(self) -> bytes:
        with self._lock:
            data = bytes(self._out)
            self._out.clear()
        return data

    def write(self, samples: np.ndarray) -> bytes:
        """Add one chunk (float32 mono at ``input_rate``); returns the output bytes ready now."""
        if self._done:
            raise EngineError("write() after finish() or close()")
        x = resample(np.asarray(samples, dtype=np.float32), self.input_rate, self.sample_rate)
        pcm = to_pcm16(np.clip(np.nan_to_num(x), -1.0, 1.0))
        if self._proc is None:
            head = b""
            if self.format == "wav" and not self._header_sent:
                head, self._header_sent = streaming_wav_header(self.sample_rate), True
            return head + pcm
        if self._proc.stdin is None:
            raise EncodingError(f"{self.format} stream encoding failed: ffmpeg has no input pipe")
        try:
            self._proc.stdin.write(pcm)
            self._proc.stdin.flush()
        except OSError as exc:
            self.close()
            raise EncodingError(f"{self.format} stream encoding failed: ffmpeg stopped reading ({exc}): "
                                f"{self._stderr.decode('utf-8', 'replace')[-400:]}") from exc
        return self._take()

    def finish(self) -> bytes:
        """Flush the encoder; returns the last bytes of the file (the header alone if nothing was written)."""
        if self._done:
            return b""
        self._done = True
        if self._proc is None:
            if self.format == "wav" and not self._header_sent:
                self._header_sent = True
                return streaming_wav_header(self.sample_rate)
            return b""
        proc = self._proc
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            rc = proc.wait(timeout=_FINISH_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.close()
            raise EncodingError(f"{self.format} stream encoding failed: {exc}") from exc
        if self._reader is not None:
            self._reader.join()
        self._proc = None
        if rc != 0:
            raise EncodingError(f"{self.format} stream encoding failed: ffmpeg exited with status {rc}: "
                                f"{self._stderr.decode('utf-8', 'replace')[-400:]}")
        return self._take()

    def close(self) -> None:
        """Abort: stop ffmpeg without waiting for the rest of the file."""
        self._done = True
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if self._reader is not None:
                self._reader.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

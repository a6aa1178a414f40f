"""Concatenating audio: encoded segments or PCM pieces in order, one encoded file out.

:func:`concat` puts a batch's items end to end (``tasks.batch_result``). It takes the
cheap path when it can, joining the encoded frames as they are:

* mp3: the frames of every segment behind one rewritten Xing/LAME info frame
  (:func:`engine.mp3.join_streams`); each inner boundary keeps its segment's encoder
  delay and padding, about 50-100 ms of near-silence (a fanned-out job does not come
  here: ``tasks.fanout`` feeds every part's samples to one encoder, so its parts meet
  sample-exact);
* aac: ADTS frames back to back (each segment keeps its 1024-sample priming);
* pcm: the raw samples back to back, with the gap as zeros.

That needs every segment already in the output format at the output rate, and for mp3
and aac no gap (a gap of encoded silence would not be exact) and, for aac, each
segment's sample count (ADTS cannot tell it). Otherwise every segment is decoded,
resampled to the output rate and encoded once, ``gap_seconds`` of silence between them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from . import mp3
from .audio import (
    AudioEncoder,
    decode,
    effective_rate,
    resample,
    silence,
    validate_format,
)
from .exceptions import OptionError

log = logging.getLogger(__name__)

__all__ = ["FRAME_JOINABLE", "Joined", "Segment", "concat"]

#: Formats whose encoded segments :func:`concat` can join without re-encoding.
FRAME_JOINABLE = frozenset({"mp3", "aac", "pcm"})


@dataclass(frozen=True)
class Segment:
    """One piece of audio for :func:`concat`.

    ``data`` is the encoded file in ``format`` (``"pcm"``: raw little-endian s16), or a
    function that returns it when it is needed (so a long list is read one piece at a
    time when it is re-encoded); a function returning None means the piece is gone and
    is left out. ``rate`` is the piece's sample rate: required for pcm, which has no
    header. ``samples``, when known, is how many samples it holds (at ``rate``).
    """

    format: str
    data: bytes | Callable[[], bytes | None]
    rate: int | None = None
    samples: int | None = None

    def load(self) -> bytes | None:
        """The piece's bytes (None when it is gone)."""
        return self.data() if callable(self.data) else self.data


@dataclass(frozen=True)
class Joined:
    """The concatenated file."""

    audio: bytes
    format: str
    sample_rate: int
    #: Samples in the file (as a gapless decoder returns them; see :func:`concat` for aac).
    samples: int
    #: Where each segment starts in the file, in samples at :attr:`sample_rate`; None for a
    #: segment that was gone.
    offsets: list[int | None]

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples / self.sample_rate


def concat(segments: Sequence[Segment], fmt: str, rate: int, gap_seconds: float = 0.0) -> Joined:
    """Put ``segments`` end to end, ``gap_seconds`` of silence apart, as one ``fmt`` file.

    ``rate`` is the requested output rate; the file is at ``effective_rate(fmt, rate)``.
    Frames are joined as they are when the segments allow it (see the module docstring),
    else everything is decoded and encoded once. The gap goes between segments that are
    there, after the first one with any audio. For joined aac the sample count is the
    sum of the segments' ``samples``. Raises OptionError for no segments or a bad
    format, rate or gap, and the decoder's and encoder's errors.
    """
    spec = validate_format(fmt)
    out_rate = effective_rate(spec.name, rate)
    gap = silence(gap_seconds, out_rate)
    if not segments:
        raise OptionError("nothing to concatenate: no segments")
    if _frame_joinable(segments, spec.name, out_rate, gap.size):
        loaded = [(segment, segment.load()) for segment in segments]
        joined = _join_frames(loaded, spec.name, out_rate, gap.size)
        if joined is not None:
            return joined
        return _reencode(loaded, spec.name, out_rate, gap)
    return _reencode(((segment, segment.load()) for segment in segments), spec.name, out_rate, gap)


def _frame_joinable(segments: Sequence[Segment], fmt: str, rate: int, gap_samples: int) -> bool:
    if fmt not in FRAME_JOINABLE or (gap_samples and fmt != "pcm"):
        return False
    for segment in segments:
        if segment.format != fmt:
            return False
        # an mp3 segment tells its own rate (checked once parsed); pcm and aac are taken at their word
        if segment.rate != rate and not (fmt == "mp3" and segment.rate is None):
            return False
        if fmt == "aac" and segment.samples is None:
            return False
    return True


def _join_frames(loaded: list[tuple[Segment, bytes | None]], fmt: str, rate: int, gap_samples: int) -> Joined | None:
    """Join encoded frames; None when a segment turns out not to fit (an mp3 at another rate)."""
    offsets: list[int | None] = []
    if fmt == "mp3":
        streams = [mp3.parse(data) for _, data in loaded if data is not None]
        if not streams:
            return None  # nothing to join: the encoder makes the empty file
        if any(s.rate != rate for s in streams):
            log.info("mp3 segments are not all at %d Hz; re-encoding them instead of joining", rate)
            return None
        audio, samples = mp3.join_streams(streams)
        starts = iter(mp3.segment_starts(streams))
        offsets = [next(starts) if data is not None else None for _, data in loaded]
        return Joined(audio, fmt, rate, samples, offsets)
    pieces: list[bytes] = []
    written = 0
    gap = bytes(2 * gap_samples)
    for segment, data in loaded:
        if data is None:
            offsets.append(None)
            continue
        if written and gap:
            pieces.append(gap)
            written += gap_samples
        offsets.append(written)
        pieces.append(data)
        if fmt == "pcm":
            written += len(data) // 2
        else:
            written += segment.samples or 0
    return Joined(b"".join(pieces), fmt, rate, written, offsets)


def _reencode(loaded: Iterable[tuple[Segment, bytes | None]], fmt: str, rate: int, gap: np.ndarray) -> Joined:
    """Decode every segment, resample it to ``rate`` and encode them all once."""
    encoder = AudioEncoder(fmt, rate)
    offsets: list[int | None] = []
    written = 0
    try:
        for segment, data in loaded:
            if data is None:
                offsets.append(None)
                continue
            samples, segment_rate = decode(data, segment.format, pcm_rate=segment.rate)
            samples = resample(samples, segment_rate, encoder.sample_rate)
            if written and gap.size:
                encoder.write(gap)
                written += gap.size
            offsets.append(written)
            encoder.write(samples)
            written += samples.size
        audio = encoder.finish()
    except BaseException:
        encoder.close()
        raise
    return Joined(audio, fmt, encoder.sample_rate, encoder.samples_written, offsets)


"""MPEG audio layer III streams as LAME writes them: frames, the Xing/LAME info tag, joins.

An mp3 file from :class:`engine.audio.AudioEncoder` is a run of layer III frames whose
first frame holds no audio but a Xing (VBR) or Info (CBR) header: frame and byte counts,
a 100-entry seek table, and LAME's extension with the encoder delay and end padding that
let a gapless decoder (libsndfile's mpg123, ffmpeg, browsers) return exactly the samples
that were encoded. Two CRC-16s guard the extension: one of the audio frames ("music CRC")
and one of the info frame up to the tag's own CRC field.

* :func:`frame_header` reads one frame header, :func:`parse` a whole stream;
* :func:`read_info_tag` and :func:`write_info_tag` read and rewrite the Xing/LAME fields;
* :func:`with_info_tag` puts that frame in front of frames from an encoder that leaves it out
  (``lameenc``), :func:`set_end_padding` fixes the padding ffmpeg writes;
* :func:`join` concatenates encoded segments behind one rewritten info frame;
* :func:`crc16` and :func:`crc16_combine` compute the tag's checksums.

Layout of the info frame (offsets from the frame start)::

    4-byte header, side information (9/17/32 bytes), "Xing"|"Info", flags (4 bytes),
    [frames 4][stream bytes 4][seek table 100][quality 4]  -- each only if its flag is set,
    LAME extension (36 bytes): encoder string 9, revision 1, lowpass 1, replay gain 8,
    flags 1, bitrate 1, delay+padding 3 (12 bits each) at +21, misc 3,
    music length 4 at +28, music CRC 2 at +32, tag CRC 2 at +34.
"""
from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

import crcmod.predefined

from .exceptions import EngineError

log = logging.getLogger(__name__)

__all__ = [
    "LAME_ENCODER_DELAY", "FrameHeader", "InfoTag", "Mp3Stream", "crc16", "crc16_combine", "frame_header", "join",
    "join_streams", "parse", "read_info_tag", "segment_starts", "set_end_padding", "with_info_tag", "write_info_tag",
]

_MPEG1_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MPEG2_KBPS = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
# MPEG version bits (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5; 1 is reserved) -> rates by index.
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_XING_IDS = (b"Xing", b"Info")
#: Names the LAME extension starts with: LAME itself, or ffmpeg's libavcodec/libavformat.
_LAME_IDS = (b"LAME", b"Lavc", b"Lavf")
_LAME_BYTES = 36
_FLAG_FRAMES, _FLAG_BYTES, _FLAG_TOC, _FLAG_QUALITY = 1, 2, 4, 8
#: The 12-bit delay and padding fields hold at most this.
_MAX_DELAY_OR_PADDING = 4095


@dataclass(frozen=True)
class FrameHeader:
    """One MPEG layer III frame header."""

    #: Bytes of the whole frame, header included.
    size: int
    #: Samples per channel the frame decodes to (1152 for MPEG-1, 576 for MPEG-2 and 2.5).
    samples: int
    rate: int
    #: Bytes of side information after the 4-byte header (a Xing header follows it).
    side_info: int
    mono: bool


@dataclass(frozen=True)
class InfoTag:
    """The Xing/Info header of a stream's first frame, and LAME's extension when it has one.

    Offsets count from the start of the info frame; fields the tag lacks are None.
    """

    header: FrameHeader
    #: Offset of ``Xing`` or ``Info``.
    xing_at: int
    flags: int
    #: Audio frames in the stream (the info frame not counted), and where that field is.
    frames: int | None
    frames_at: int | None
    #: Bytes of the whole stream (the info frame included), and where that field is.
    stream_bytes: int | None
    bytes_at: int | None
    #: Offset of the 100-byte seek table.
    toc_at: int | None
    #: Offset of the LAME extension.
    lame_at: int | None
    #: Encoder delay and end padding in samples (0 without a LAME extension).
    delay: int = 0
    padding: int = 0
    #: LAME's music length (bytes of the stream, info frame included) and music CRC.
    music_length: int | None = None
    music_crc: int | None = None


@dataclass(frozen=True)
class Mp3Stream:
    """One MP3 segment split into its info frame (if any) and its audio frames."""

    #: The Xing/Info frame as found (None when the stream starts with audio).
    info: bytes | None
    tag: InfoTag | None
    audio: bytes
    #: Where each audio frame starts in :attr:`audio`.
    frame_offsets: tuple[int, ...]
    samples_per_frame: int
    rate: int
    delay: int
    padding: int
    #: The LAME tag's CRC-16 of :attr:`audio`, when the tag covers exactly this stream.
    music_crc: int | None = None

    @property
    def frames(self) -> int:
        """Number of audio frames."""
        return len(self.frame_offsets)

    @property
    def samples(self) -> int:
        """Samples a gapless decoder yields: every frame's, less the encoder delay and padding."""
        return max(0, self.frames * self.samples_per_frame - self.delay - self.padding)


# --- frames --------------------------------------------------------------------------------------
def frame_header(data: bytes, pos: int = 0) -> FrameHeader:
    """The MPEG layer III frame header at byte ``pos``; EngineError when there is none."""
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        raise EngineError(f"not an MP3 frame at byte {pos}")
    version = (data[pos + 1] >> 3) & 3
    layer = (data[pos + 1] >> 1) & 3
    bitrate_index = data[pos + 2] >> 4
    rate_index = (data[pos + 2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        raise EngineError(f"unsupported MP3 frame header at byte {pos}")
    mono = (data[pos + 3] >> 6) == 3
    rate = _RATES[version][rate_index]
    slot = (data[pos + 2] >> 1) & 1
    if version == 3:
        return FrameHeader(144 * _MPEG1_KBPS[bitrate_index] * 1000 // rate + slot, 1152, rate,
                           17 if mono else 32, mono)
    return FrameHeader(72 * _MPEG2_KBPS[bitrate_index] * 1000 // rate + slot, 576, rate,
                       9 if mono else 17, mono)


def _id3v2_length(data: bytes) -> int:
    """Bytes of a leading ID3v2 tag (0 without one)."""
    if data[:3] != b"ID3" or len(data) < 10:
        return 0
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]
    return 10 + size + (10 if data[5] & 0x10 else 0)


def _strip_tags(data: bytes) -> bytes:
    """``data`` without a leading ID3v2 or a trailing ID3v1 tag."""
    data = data[_id3v2_length(data):]
    if len(data) >= 128 and data[-128:-125] == b"TAG":
        data = data[:-128]
    return data


# --- the info tag --------------------------------------------------------------------------------
def read_info_tag(frame: bytes) -> InfoTag | None:
    """The Xing/Info header (and LAME extension) of ``frame``, the first frame of a stream.

    None when the frame holds audio rather than an info header. Raises EngineError when
    ``frame`` does not start with a layer III header.
    """
    header = frame_header(frame, 0)
    xing_at = 4 + header.side_info
    if frame[xing_at:xing_at + 4] not in _XING_IDS or len(frame) < xing_at + 8:
        return None
    flags = struct.unpack_from(">I", frame, xing_at + 4)[0]
    pos = xing_at + 8
    fields: dict[int, int | None] = {}
    for flag, width in ((_FLAG_FRAMES, 4), (_FLAG_BYTES, 4), (_FLAG_TOC, 100), (_FLAG_QUALITY, 4)):
        fields[flag] = pos if flags & flag and len(frame) >= pos + width else None
        if flags & flag:
            pos += width
    frames_at, bytes_at = fields[_FLAG_FRAMES], fields[_FLAG_BYTES]
    tag = InfoTag(
        header=header, xing_at=xing_at, flags=flags,
        frames=struct.unpack_from(">I", frame, frames_at)[0] if frames_at is not None else None,
        frames_at=frames_at,
        stream_bytes=struct.unpack_from(">I", frame, bytes_at)[0] if bytes_at is not None else None,
        bytes_at=bytes_at, toc_at=fields[_FLAG_TOC], lame_at=None,
    )
    if frame[pos:pos + 4] not in _LAME_IDS or len(frame) < pos + _LAME_BYTES:
        return tag
    d = frame[pos + 21:pos + 24]
    return replace(
        tag, lame_at=pos, delay=(d[0] << 4) | (d[1] >> 4), padding=((d[1] & 0x0F) << 8) | d[2],
        music_length=struct.unpack_from(">I", frame, pos + 28)[0],
        music_crc=struct.unpack_from(">H", frame, pos + 32)[0],
    )


def write_info_tag(frame: bytes, tag: InfoTag, *, frames: int | None = None, stream_bytes: int | None = None,
                   toc: bytes | None = None, delay: int | None = None, padding: int | None = None,
                   music_length: int | None = None, music_crc: int | None = None) -> bytes:
    """``frame`` (the info frame ``tag`` was read from) with the given fields rewritten.

    Fields left as None keep their value. When the frame has a LAME extension, its tag
    CRC is recomputed. Raises EngineError for a field the tag has no room for, or a
    value out of its field's range.
    """
    out = bytearray(frame)

    def where(offset: int | None, name: str) -> int:
        if offset is None:
            raise EngineError(f"the MP3 info tag has no {name} field")
        return offset

    if frames is not None:
        struct.pack_into(">I", out, where(tag.frames_at, "frame count"), frames)
    if stream_bytes is not None:
        struct.pack_into(">I", out, where(tag.bytes_at, "byte count"), stream_bytes)
    if toc is not None:
        if len(toc) != 100:
            raise EngineError(f"an MP3 seek table has 100 entries, not {len(toc)}")
        at = where(tag.toc_at, "seek table")
        out[at:at + 100] = toc
    lame_fields = (delay, padding, music_length, music_crc)
    if tag.lame_at is None:
        if any(v is not None for v in lame_fields):
            raise EngineError("the MP3 info tag has no LAME extension")
        return bytes(out)
    lame = tag.lame_at
    new_delay = tag.delay if delay is None else delay
    new_padding = tag.padding if padding is None else padding
    if not (0 <= new_delay <= _MAX_DELAY_OR_PADDING and 0 <= new_padding <= _MAX_DELAY_OR_PADDING):
        raise EngineError(f"MP3 delay {new_delay} or padding {new_padding} does not fit the LAME tag's 12 bits")
    out[lame + 21:lame + 24] = bytes([new_delay >> 4, ((new_delay & 0x0F) << 4) | (new_padding >> 8),
                                      new_padding & 0xFF])
    if music_length is not None:
        struct.pack_into(">I", out, lame + 28, music_length)
    if music_crc is not None:
        struct.pack_into(">H", out, lame + 32, music_crc)
    struct.pack_into(">H", out, lame + 34, crc16(bytes(out[:lame + 34])))
    return bytes(out)


# --- streams -------------------------------------------------------------------------------------
def parse(data: bytes) -> Mp3Stream:
    """Split an MP3 stream (ID3 tags skipped) into its info frame and audio frames.

    Raises EngineError when it is not a run of layer III frames.
    """
    data = _strip_tags(data)
    first = frame_header(data, 0)
    tag = read_info_tag(data[:first.size])
    info: bytes | None = None
    start = 0
    music_crc: int | None = None
    if tag is not None:
        info = data[:first.size]
        start = first.size
        if tag.lame_at is not None and tag.music_length == len(data):  # the CRC covers this whole segment
            music_crc = tag.music_crc
    offsets: list[int] = []
    pos = start
    sizes: dict[int, int] = {}  # a frame's size follows from header bytes 1-2 (version, layer, bitrate, rate, padding)
    while pos + 4 <= len(data):
        offsets.append(pos - start)
        key = data[pos + 1] << 8 | data[pos + 2]
        size = sizes.get(key) if data[pos] == 0xFF else None
        if size is None:
            size = sizes[key] = frame_header(data, pos).size
        pos += size
    if pos != len(data):
        music_crc = None
    delay, padding = (tag.delay, tag.padding) if tag is not None else (0, 0)
    return Mp3Stream(info=info, tag=tag, audio=data[start:pos], frame_offsets=tuple(offsets),
                     samples_per_frame=first.samples, rate=first.rate, delay=delay, padding=padding,
                     music_crc=music_crc)


def set_end_padding(data: bytes, samples: int) -> bytes:
    """Set the LAME tag's end padding so a gapless decoder yields exactly ``samples`` samples.

    ffmpeg's mp3 muxer writes at most 1105 samples of padding (one frame plus the
    decoder delay) even when LAME padded more, so some lengths decoded up to a frame
    long (22050 Hz, 1.7 s: 2 samples; 12000 Hz, 0.05 s: 23). The padding is whatever the
    frames hold beyond the encoder delay and the input, so it is rewritten from the
    frame count, and the tag's CRC with it. Data without a Xing+LAME tag is returned as is
    (with a warning).
    """
    at = _id3v2_length(data)
    try:
        header = frame_header(data, at)
    except EngineError as exc:
        log.warning("mp3 output does not start with a layer III frame (%s); leaving its header alone", exc)
        return data
    frame = data[at:at + header.size]
    tag = read_info_tag(frame)
    if tag is None:
        log.warning("mp3 output has no Xing header; decoders may return extra samples")
        return data
    if tag.frames is None:
        log.warning("mp3 output's Xing header has no frame count; leaving it alone")
        return data
    if tag.lame_at is None:
        log.warning("mp3 output has no LAME tag; decoders may return extra samples")
        return data
    padding = tag.frames * header.samples - tag.delay - samples
    if not 0 <= padding <= _MAX_DELAY_OR_PADDING:
        log.warning("mp3 output holds %d frames for %d samples; leaving its LAME tag alone", tag.frames, samples)
        return data
    return data[:at] + write_info_tag(frame, tag, padding=padding) + data[at + header.size:]


#: LAME's encoder delay in samples (its filterbank's ENCDELAY): what the LAME tag's delay field holds.
LAME_ENCODER_DELAY = 576
# LAME's "VBR method" nibble of its tag by rate control: CBR, and VBR (mtrh, LAME's default VBR).
_LAME_METHOD_CBR, _LAME_METHOD_VBR = 1, 4
_INFO_FIELDS_BYTES = 8 + 4 + 4 + 100 + 4  # "Xing"/"Info", flags, frames, bytes, seek table, quality


def with_info_tag(audio: bytes, samples: int, *, delay: int = LAME_ENCODER_DELAY, cbr: bool = False,
                  quality: int = 0, encoder: bytes = b"LAME3.100") -> bytes:
    """Put a Xing/Info frame with LAME's gapless tag in front of LAME's raw ``audio`` frames.

    This is the frame LAME itself writes (``lame_get_lametag_frame``) when it can seek back
    to the start of a file; an encoder that only hands out frames (``lameenc``) leaves it
    out. ``samples`` is how many samples went in; the tag's delay is ``delay`` and its
    padding whatever the frames hold beyond the delay and the input, so a gapless decoder
    (libsndfile's mpg123, ffmpeg, browsers) returns exactly ``samples``. ``cbr`` marks a
    constant-bitrate stream ("Info", and an info frame of the stream's own bitrate where the
    tag fits); otherwise it is VBR ("Xing", the smallest frame the tag fits in). ``quality`` is the
    Xing quality field (LAME: 100 - 10 * VBR quality - algorithm quality). The frame count,
    byte count, seek table, music length and both CRCs are filled in as :func:`join_streams`
    does. Raises EngineError when ``audio`` is not layer III frames or the padding does not
    fit the tag.
    """
    first = frame_header(audio, 0)
    version = (audio[1] >> 3) & 3
    kbps_table = _MPEG1_KBPS if version == 3 else _MPEG2_KBPS
    needed = 4 + first.side_info + _INFO_FIELDS_BYTES + _LAME_BYTES
    start = audio[2] >> 4 if cbr else 1
    header = b""
    size = 0
    for index in range(start, 15):
        header = bytes([0xFF, audio[1] | 0x01, (index << 4) | (audio[2] & 0x0C), audio[3]])  # no CRC, no padding slot
        size = frame_header(header).size
        if size >= needed:
            break
    else:
        raise EngineError(f"no MP3 frame at {first.rate} Hz is big enough for the info tag")
    rate_bits = 0 if first.rate <= 32000 else 1 if first.rate == 44100 else 2
    method = _LAME_METHOD_CBR if cbr else _LAME_METHOD_VBR
    kbps = min(kbps_table[audio[2] >> 4], 255) if cbr else 0
    lame = (encoder[:9].ljust(9, b" ") + bytes([method, 0]) + bytes(8)  # revision 0 + method, lowpass, replay gain
            + bytes([0, kbps]) + bytes(3)  # flags, bitrate; delay and padding set below
            + bytes([rate_bits << 6, 0, 0, 0]) + bytes(8))  # misc, mp3 gain, preset; music length and CRCs below
    frame = (header + bytes(first.side_info) + (b"Info" if cbr else b"Xing")
             + struct.pack(">I", _FLAG_FRAMES | _FLAG_BYTES | _FLAG_TOC | _FLAG_QUALITY) + bytes(108)
             + struct.pack(">I", max(0, quality)) + lame)
    frame += bytes(size - len(frame))
    tag = read_info_tag(frame)
    if tag is None:  # cannot happen: the frame was built with one
        raise EngineError("the built MP3 info frame has no Xing header")
    stream = parse(frame + audio)
    padding = stream.frames * stream.samples_per_frame - delay - samples
    if not 0 <= padding <= _MAX_DELAY_OR_PADDING:
        raise EngineError(f"{stream.frames} MP3 frames cannot hold {samples} samples after a delay of {delay}")
    stream = replace(stream, info=write_info_tag(frame, tag, delay=delay, padding=padding), delay=delay,
                     padding=padding)
    return join_streams([stream])[0]


def segment_starts(streams: Sequence[Mp3Stream]) -> list[int]:
    """Where each stream's own audio (after its encoder delay) starts in their gapless join."""
    starts: list[int] = []
    frames = 0
    for stream in streams:
        if not starts:
            starts.append(0)
        else:
            starts.append(frames * stream.samples_per_frame - streams[0].delay + stream.delay)
        frames += stream.frames
    return starts


def join(segments: Sequence[bytes]) -> tuple[bytes, int]:
    """Join LAME MP3 segments (same rate) into one file; returns (bytes, samples a gapless decoder yields).

    See :func:`join_streams`. Raises EngineError for no segments, mixed rates or data
    that is not MP3.
    """
    if not segments:
        raise EngineError("no MP3 segments to join")
    return join_streams([parse(s) for s in segments])


def join_streams(parsed: Sequence[Mp3Stream]) -> tuple[bytes, int]:
    """Join parsed MP3 segments into one file; returns (bytes, samples a gapless decoder yields).

    The frames are concatenated (each segment starts with an empty bit reservoir, so
    that is a valid stream) behind one rewritten Xing/LAME info frame: total frame and
    byte counts, a new seek table, the first segment's encoder delay and the last one's
    padding, and both CRCs. Players then show the whole length and seek correctly; each
    inner boundary keeps its segment's encoder delay and padding, about 50-100 ms of
    near-silence, which falls between sentences.
    """
    if not parsed:
        raise EngineError("no MP3 segments to join")
    first, last = parsed[0], parsed[-1]
    if any(p.rate != first.rate or p.samples_per_frame != first.samples_per_frame for p in parsed):
        raise EngineError("MP3 segments differ in sample rate")
    audio = b"".join(p.audio for p in parsed)
    offsets: list[int] = []
    base = 0
    for p in parsed:
        offsets.extend(base + o for o in p.frame_offsets)
        base += len(p.audio)
    frames = len(offsets)
    samples = max(0, frames * first.samples_per_frame - first.delay - last.padding)
    tag = first.tag
    if first.info is None or tag is None:
        return audio, frames * first.samples_per_frame
    if tag.frames is None or tag.stream_bytes is None or tag.toc_at is None:
        # no frame count, byte count or seek table to rewrite: drop the header
        return audio, frames * first.samples_per_frame
    total_bytes = len(first.info) + len(audio)
    toc = bytearray(100)
    for i in range(100):
        frame = min(frames - 1, i * frames // 100) if frames else 0
        position = len(first.info) + (offsets[frame] if offsets else 0)
        toc[i] = min(255, position * 256 // total_bytes)
    if tag.lame_at is None:
        info = write_info_tag(first.info, tag, frames=frames, stream_bytes=total_bytes, toc=bytes(toc))
        return info + audio, samples
    music = 0
    for p in parsed:  # each segment's LAME tag already holds its frames' CRC: combine, do not re-read
        music = crc16_combine(music, p.music_crc if p.music_crc is not None else crc16(p.audio), len(p.audio))
    info = write_info_tag(first.info, tag, frames=frames, stream_bytes=total_bytes, toc=bytes(toc),
                          delay=first.delay, padding=last.padding, music_length=total_bytes, music_crc=music)
    return info + audio, samples


# --- CRC-16 --------------------------------------------------------------------------------------
#: CRC-16/ARC (crcmod's "crc-16": polynomial 0x8005, reflected, initial 0), in C.
_CRC16 = crcmod.predefined.mkCrcFun("crc-16")


def crc16(data: bytes, crc: int = 0) -> int:
    """CRC-16 (polynomial 0x8005, reflected, initial 0: CRC-16/ARC), as the LAME tag uses.

    ``crc`` continues a CRC of earlier data.
    """
    return int(_CRC16(data, crc))


def _gf2_apply(matrix: Sequence[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def crc16_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-16 of A followed by B from the CRCs of A and B (as zlib's crc32_combine does).

    Feeding zero bytes to the register is linear, so crc(A+B) = Z^len(B)(crc(A)) ^ crc(B),
    with Z^n computed by squaring: O(log n) instead of reading megabytes of MP3 in Python.
    """
    zero_byte = [crc16(b"\x00", 1 << bit) for bit in range(16)]  # column `bit`: register 1<<bit after one 0x00
    power = zero_byte
    n = length_b
    while n:
        if n & 1:
            crc_a = _gf2_apply(power, crc_a)
        n >>= 1
        if n:
            power = [_gf2_apply(power, column) for column in power]
    return crc_a ^ crc_b

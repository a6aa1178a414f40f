"""engine.streaming.DeltaEncoder: a growing file handed out sentence by sentence, encoded in this process."""
from __future__ import annotations

import io
import subprocess

import av
import numpy as np
import pytest

from engine.audio import decode
from engine.exceptions import EngineError
from engine.streaming import DeltaEncoder

RATE = 24000


def sentences(count: int = 3, seconds: float = 1.2) -> list[np.ndarray]:
    """``count`` tones of ``seconds`` each, a different pitch per sentence."""
    t = np.arange(int(seconds * RATE)) / RATE
    return [(0.3 * np.sin(2 * np.pi * (200 + 60 * i) * t)).astype(np.float32) for i in range(count)]


def decoded_length(data: bytes) -> int:
    """Samples ffmpeg's decoders (through PyAV) read from ``data``, at the stream's own rate."""
    with av.open(io.BytesIO(data)) as container:
        return sum(frame.samples for frame in container.decode(audio=0))


@pytest.mark.parametrize("fmt", ["mp3", "aac", "opus", "flac"])
def test_the_deltas_are_one_file_of_the_whole_input(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    parts = sentences()
    with DeltaEncoder(fmt, RATE) as enc:
        deltas = [enc.write(part) for part in parts]
        deltas.append(enc.finish())
    data = b"".join(deltas)
    total = sum(len(p) for p in parts)
    if fmt in ("mp3", "aac", "flac"):  # a frame's worth held back at most: the first sentence is out already
        assert len(deltas[0]) > 0.5 * len(data) / len(parts)
    length = decoded_length(data)
    if fmt == "flac":
        assert length == total
    elif fmt == "opus":
        assert length == 2 * total  # libopus decodes at 48 kHz; the Ogg granule positions trim it exactly
    else:  # no gapless info in a stream: the encoder's delay and padding stay in
        assert total <= length <= total + 3 * 1152


def test_an_mp3_stream_is_constant_bitrate_without_a_xing_frame() -> None:
    with DeltaEncoder("mp3", RATE) as enc:
        data = b"".join([enc.write(p) for p in sentences()] + [enc.finish()])
    assert data[0] == 0xFF and b"Xing" not in data[:200] and b"Info" not in data[:200]
    assert data[2] >> 4 == 8  # bitrate index 8 of MPEG-2: 64 kbps
    samples, rate = decode(data, "mp3")
    assert rate == RATE and len(samples) >= 3 * int(1.2 * RATE)


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_pcm_and_wav_deltas_are_exactly_one_sentence_each(fmt: str) -> None:
    parts = sentences()
    with DeltaEncoder(fmt, RATE) as enc:
        deltas = [enc.write(part) for part in parts]
        deltas.append(enc.finish())
    header = 44 if fmt == "wav" else 0
    assert [len(d) for d in deltas] == [header + 2 * len(parts[0]), 2 * len(parts[1]), 2 * len(parts[2]), 0]


@pytest.mark.parametrize("fmt", ["mp3", "opus", "wav"])
def test_write_after_finish_or_close_is_refused(fmt: str) -> None:
    enc = DeltaEncoder(fmt, RATE)
    enc.write(sentences(1)[0])
    enc.close()
    with pytest.raises(EngineError):
        enc.write(sentences(1)[0])
    assert enc.finish() == b""

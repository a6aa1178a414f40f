"""Fan-out building blocks without workers: part plans and joining MP3 segments."""
from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import soundfile as sf

from engine.audio import AudioEncoder, _ffmpeg_exe, decode
from engine.exceptions import EngineError
from engine.mp3 import join as join_mp3
from tasks.fanout import PartPlan


def tone(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def segments(rate: int, n: int = 4) -> tuple[list[bytes], int]:
    out, samples = [], 0
    for k in range(n):
        encoder = AudioEncoder("mp3", rate)
        encoder.write(tone(0.8 + 0.3 * k, rate, 220 + 55 * k))
        out.append(encoder.finish())
        samples += encoder.samples_written
    return out, samples


@pytest.mark.parametrize("rate", [24000, 22050, 48000])
def test_joined_mp3_decodes_to_the_length_its_header_claims(rate):
    parts, samples = segments(rate)
    audio, claimed = join_mp3(parts)
    decoded, decoded_rate = decode(audio, "mp3")
    assert decoded_rate == rate
    assert len(decoded) == claimed  # libsndfile (mpg123) trusts the rewritten Xing/LAME header
    assert sf.info(io.BytesIO(audio)).frames == claimed
    # Only the encoder delay and padding of the inner boundaries are extra: under 100 ms each.
    assert samples <= claimed < samples + 3 * 0.1 * rate


def test_joined_mp3_is_read_whole_by_ffmpeg_without_complaint(tmp_path):
    parts, _ = segments(24000)
    audio, claimed = join_mp3(parts)
    path = tmp_path / "joined.mp3"  # a file: from a pipe ffmpeg cannot check the byte count, even of one segment
    path.write_bytes(audio)
    done = subprocess.run([_ffmpeg_exe(), "-hide_banner", "-v", "warning", "-i", str(path), "-f", "f32le", "pipe:1"],
                          capture_output=True, check=True)
    assert len(done.stdout) // 4 == claimed
    assert done.stderr == b""  # no CRC mismatch, no bad frame count


def test_one_segment_is_unchanged_in_length():
    parts, samples = segments(24000, n=1)
    audio, claimed = join_mp3(parts)
    assert claimed == samples and len(decode(audio, "mp3")[0]) == samples


def test_join_refuses_mixed_rates_and_garbage():
    a, _ = segments(24000, n=1)
    b, _ = segments(48000, n=1)
    with pytest.raises(EngineError):
        join_mp3(a + b)
    with pytest.raises(EngineError):
        join_mp3([b"not an mp3 at all"])
    with pytest.raises(EngineError):
        join_mp3([])


def test_part_plan_round_trip():
    plan = PartPlan(job_id="j", groups=[["One.", "Two."], ["Three, with a comma."]], format="mp3", rate=24000,
                    voice_rate=24000, replays=1)
    stored = {k.encode(): v.encode() for k, v in plan.to_redis().items()}
    again = PartPlan.from_redis("j", stored)
    assert again == plan
    assert (plan.total, plan.chunks, plan.first_chunk(1), plan.characters) == (2, 3, 2, 28)
    assert PartPlan.from_redis("j", {}) is None

"""Benchmark the lossy encoders (mp3, aac, opus) on heart's speech: cost beside synthesis, size, distortion.

heart's speech is synthesized once per clip (a short clip of about a second, one sentence,
about a minute), timing the synthesis by CPU seconds; then every candidate encodes the
same sentence chunks, as ``synthesize()`` feeds :class:`engine.audio.AudioEncoder`:

* **ffmpeg binary**: the bundled imageio-ffmpeg binary, one process per encode, with the
  command line the engine used until it moved in-process (the baseline; the samples go
  to its stdin in one write at the end, which costs the same CPU as sentence by sentence);
* **PyAV**: the same ffmpeg encoders (libmp3lame, aac, libopus) and muxers in-process
  through the ``av`` wheel, at the same settings;
* **lameenc**: LAME in-process through the ``lameenc`` wheel, with the Xing/LAME gapless
  frame from :func:`engine.mp3.with_info_tag`, at LAME's VBR quality 4 and algorithm
  quality 5 (what ffmpeg's libmp3lame ran) and at the fast algorithm (-q7) at several VBR
  qualities;
* **engine**: :class:`engine.audio.AudioEncoder` as it stands (whatever it runs).

Runs are interleaved (every candidate once per round, the order rotated) after one
warm-up round. Per candidate and clip it prints the median CPU seconds of every process
(``getrusage`` of this process plus its waited-for children, so ffmpeg's own CPU counts),
the wall time, x real time by CPU, the ratio of encoding CPU to heart's synthesis CPU of
the same audio (the issue-12 target for mp3: at most 20%), the bitrate, and the
log-spectral distance of the decoded output against the source (below 8 kHz, on frames
no quieter than 50 dB under the loudest, after aligning by cross-correlation, so an
encoder delay that is not compensated shows as the "lag" column instead of as distortion).

Not a timed test: figures for docs/benchmarks.md. Usage::

    flock /tmp/tts-bench.lock python scripts/bench_encode.py [--repeat 5] [--clips clip,sentence,minute]
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import av
import imageio_ffmpeg
import lameenc
import numpy as np
from scipy.signal import correlate, stft

from engine import SynthesisOptions, VoiceCatalog, mp3, stream
from engine.audio import AudioEncoder, decode, to_pcm16
from scripts.bench_engine import bench_text, machine
from settings import get_settings

log = logging.getLogger("bench_encode")

VOICE = "heart"
SEED = 0
#: Clip name -> (text, timed rounds as a multiple of --repeat): short clips are cheap, so more rounds.
CLIPS: dict[str, tuple[Callable[[], str], int]] = {
    "clip": (lambda: "Good morning.", 6),
    "sentence": (lambda: bench_text(200), 3),
    "minute": (lambda: bench_text(1000), 1),
}
LSD_MAX_HZ = 8000.0


class Encoder(Protocol):
    """What a candidate makes for one encode: chunks in, the file out."""

    def write(self, chunk: np.ndarray) -> None: ...

    def finish(self) -> bytes: ...


# --- candidates -----------------------------------------------------------------------------------
#: The engine's ffmpeg command lines before it moved in-process (rate control included).
FFMPEG_ARGS = {
    "mp3": ("-c:a", "libmp3lame", "-id3v2_version", "0", "-write_xing", "1", "-metadata:s:a:0", "encoder=LAME",
            "-q:a", "4", "-f", "mp3"),
    "aac": ("-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k", "-f", "adts"),
    "opus": ("-c:a", "libopus", "-application", "audio", "-compression_level", "3", "-vbr", "on", "-b:a", "48k",
             "-f", "ogg"),
}


class FfmpegBinary:
    """One bundled-ffmpeg process per encode, s16le on stdin (mp3 to a temporary file, for its Xing frame)."""

    def __init__(self, fmt: str, rate: int) -> None:
        self.fmt, self.samples = fmt, 0
        self.path: str | None = None
        target = ["pipe:1"]
        if fmt == "mp3":
            fd, self.path = tempfile.mkstemp(suffix=".mp3")
            os.close(fd)
            target = ["-y", self.path]
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "s16le", "-ar",
               str(rate), "-ac", "1", "-i", "pipe:0", *FFMPEG_ARGS[fmt], *target]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pcm = bytearray()

    def write(self, chunk: np.ndarray) -> None:
        self.pcm += to_pcm16(chunk)  # one write at the end: no reader thread needed for the pipe
        self.samples += len(chunk)

    def finish(self) -> bytes:
        out, _ = self.proc.communicate(bytes(self.pcm))
        if self.proc.returncode:
            raise RuntimeError(f"ffmpeg exited with {self.proc.returncode}")
        if self.path is None:
            return out
        data = Path(self.path).read_bytes()
        os.unlink(self.path)
        return mp3.set_end_padding(data, self.samples)


#: PyAV: (codec, muxer, codec options, bit rate) at the ffmpeg binary's settings.
PYAV = {
    "mp3": ("libmp3lame", "mp3", {"global_quality": str(4 * 118), "flags": "+qscale"}, None),
    "aac": ("aac", "adts", {"aac_coder": "fast"}, 64000),
    "opus": ("libopus", "ogg", {"application": "audio", "compression_level": "3", "vbr": "on"}, 48000),
}


class PyAVEncoder:
    """ffmpeg's encoder and muxer in this process through PyAV, into memory."""

    def __init__(self, fmt: str, rate: int) -> None:
        codec, muxer, options, bit_rate = PYAV[fmt]
        self.rate, self.buf = rate, io.BytesIO()
        self.container = av.open(self.buf, "w", format=muxer,
                                 container_options={"write_xing": "1", "id3v2_version": "0"} if fmt == "mp3" else {})
        stream = self.container.add_stream(codec, rate=rate, layout="mono", options=options)
        if not isinstance(stream, av.audio.stream.AudioStream):
            raise TypeError(f"{codec} is not an audio codec")
        self.stream = stream
        if bit_rate:
            self.stream.codec_context.bit_rate = bit_rate
        self.pts = 0

    def write(self, chunk: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(np.frombuffer(to_pcm16(chunk), "<i2").reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate, frame.pts = self.rate, self.pts
        self.pts += len(chunk)
        self.container.mux(self.stream.encode(frame))

    def finish(self) -> bytes:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buf.getvalue()


#: lameenc settings tried: (VBR quality, algorithm quality, VBR maximum kbps or None).
LAMEENC: tuple[tuple[int, int, int | None], ...] = ((4, 5, None), (2, 7, None), (1, 7, None), (1, 7, 64))


class LameEnc:
    """LAME through lameenc (raw frames), then engine.mp3's Xing/LAME frame in front."""

    def __init__(self, rate: int, vbr_quality: int, quality: int, max_kbps: int | None = None) -> None:
        self.enc = lameenc.Encoder()
        self.enc.set_channels(1)
        self.enc.set_in_sample_rate(rate)
        self.enc.set_out_sample_rate(rate)
        self.enc.set_vbr(4)
        self.enc.set_vbr_quality(vbr_quality)
        self.enc.set_quality(quality)
        if max_kbps is not None:
            self.enc.set_vbr_max_bitrate_kbps(max_kbps)
        self.enc.silence()
        self.quality = 100 - 10 * vbr_quality - quality
        self.out, self.samples = bytearray(), 0

    def write(self, chunk: np.ndarray) -> None:
        self.out += self.enc.encode(to_pcm16(chunk))
        self.samples += len(chunk)

    def finish(self) -> bytes:
        self.out += self.enc.flush()
        return mp3.with_info_tag(bytes(self.out), self.samples, quality=self.quality)


class EngineEncoder:
    """engine.audio.AudioEncoder as shipped."""

    def __init__(self, fmt: str, rate: int) -> None:
        self.enc = AudioEncoder(fmt, rate)

    def write(self, chunk: np.ndarray) -> None:
        self.enc.write(chunk)

    def finish(self) -> bytes:
        return self.enc.finish()


Factory = Callable[[int], Encoder]


def _lameenc(vbr_quality: int, quality: int, max_kbps: int | None, rate: int) -> Encoder:
    return LameEnc(rate, vbr_quality, quality, max_kbps)


def candidates() -> dict[str, tuple[str, Factory]]:
    """Candidate name -> (format, factory taking the sample rate)."""
    out: dict[str, tuple[str, Factory]] = {}
    for fmt in ("mp3", "aac", "opus"):
        out[f"{fmt} ffmpeg binary"] = (fmt, partial(FfmpegBinary, fmt))
        out[f"{fmt} PyAV"] = (fmt, partial(PyAVEncoder, fmt))
        if fmt == "mp3":
            for v, q, top in LAMEENC:
                label = f"mp3 lameenc V{v} q{q}" + (f" max {top}k" if top else "")
                out[label] = (fmt, partial(_lameenc, v, q, top))
        out[f"{fmt} engine"] = (fmt, partial(EngineEncoder, fmt))
    return out


# --- measuring -------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that were waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Row:
    """One candidate on one clip (medians over the timed rounds)."""

    clip: str
    audio_seconds: float
    synth_cpu: float
    candidate: str
    format: str
    cpu: float
    wall: float
    kbps: float
    lsd_db: float
    lag: int
    #: Samples the decoder returned less the samples encoded (0: gapless).
    extra_samples: int

    @property
    def xrt_cpu(self) -> float:
        """Audio seconds per CPU second of encoding."""
        return self.audio_seconds / self.cpu

    @property
    def of_synthesis(self) -> float:
        """Encoding CPU over heart's synthesis CPU of the same audio."""
        return self.cpu / self.synth_cpu


def synthesize(catalog: VoiceCatalog, text: str, rounds: int) -> tuple[list[np.ndarray], float]:
    """heart's sentence chunks for ``text`` and the median CPU seconds to synthesize them."""
    options = SynthesisOptions(voice=VOICE, seed=SEED)
    times, chunks = [], []
    for _ in range(rounds + 1):
        started = cpu_seconds()
        chunks = [c.samples for c in stream(text, options, catalog)]
        times.append(cpu_seconds() - started)
    return chunks, statistics.median(times[1:])


def encode_once(factory: Factory, rate: int, chunks: list[np.ndarray]) -> tuple[float, float, bytes]:
    """(CPU seconds of every process, wall seconds, bytes) of one encode."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    enc = factory(rate)
    for chunk in chunks:
        enc.write(chunk)
    data = enc.finish()
    return cpu_seconds() - cpu, time.perf_counter() - wall, data


def log_spectral_distance(ref: np.ndarray, out: np.ndarray, rate: int) -> tuple[float, int]:
    """(LSD in dB below LSD_MAX_HZ over the frames within 50 dB of the loudest, lag of ``out`` in samples)."""
    search = min(len(ref), rate * 4)
    corr = correlate(out[:search + 4096], ref[:search], mode="full", method="fft")
    lags = np.arange(-search + 1, len(out[:search + 4096]))
    window = np.abs(lags) <= 4096
    lag = int(lags[window][np.argmax(corr[window])])
    aligned = out[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), out])
    n = min(len(ref), len(aligned))
    freqs, _, a = stft(ref[:n], fs=rate, nperseg=512, noverlap=256)
    _, _, b = stft(aligned[:n], fs=rate, nperseg=512, noverlap=256)
    band = freqs <= LSD_MAX_HZ
    pa, pb = np.abs(a[band]) ** 2, np.abs(b[band]) ** 2
    energy = pa.sum(axis=0)
    loud = energy >= energy.max() * 1e-5
    eps = 1e-10
    diff = 10 * np.log10(pa[:, loud] + eps) - 10 * np.log10(pb[:, loud] + eps)
    return float(np.mean(np.sqrt(np.mean(diff ** 2, axis=0)))), lag


def bench_clip(name: str, catalog: VoiceCatalog, repeat: int, only: set[str] | None) -> list[Row]:
    """Every candidate on one clip, interleaved."""
    text_of, factor = CLIPS[name]
    rounds = repeat * factor
    rate = catalog.info(VOICE).sample_rate
    chunks, synth_cpu = synthesize(catalog, text_of(), rounds)
    source = np.clip(np.concatenate(chunks), -1.0, 1.0)
    audio_seconds = len(source) / rate
    cands = {k: v for k, v in candidates().items() if only is None or k.split()[0] in only}
    names = list(cands)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    last: dict[str, bytes] = {}
    for round_no in range(rounds + 1):
        shift = round_no % len(names)
        for cand in names[shift:] + names[:shift]:
            c, w, data = encode_once(cands[cand][1], rate, chunks)
            if round_no:
                cpu[cand].append(c)
                wall[cand].append(w)
            last[cand] = data
    rows = []
    for cand in names:
        fmt = cands[cand][0]
        decoded, decoded_rate = decode(last[cand], fmt)
        if decoded_rate != rate:
            raise RuntimeError(f"{cand} decoded at {decoded_rate} Hz, not {rate}")
        lsd, lag = log_spectral_distance(source, decoded, rate)
        rows.append(Row(clip=name, audio_seconds=audio_seconds, synth_cpu=synth_cpu, candidate=cand, format=fmt,
                        cpu=statistics.median(cpu[cand]), wall=statistics.median(wall[cand]),
                        kbps=len(last[cand]) * 8 / audio_seconds / 1000, lsd_db=lsd, lag=lag,
                        extra_samples=len(decoded) - len(source)))
        log.info("%s %s: cpu %.4f s, %.1f kbps, LSD %.2f dB", name, cand, rows[-1].cpu, rows[-1].kbps, lsd)
    return rows


def markdown(rows: list[Row], meta: dict[str, Any]) -> str:
    """The rows as one Markdown table per clip, ratios against the ffmpeg binary of the same format."""
    m = meta["machine"]
    lines = [(f"Machine: {m['cpu']}, {m['cores']} cores; load average {meta['load_before']} at the start, "
              f"{meta['load_after']} at the end; {meta['repeat']} x (clip 6, sentence 3, minute 1) timed rounds "
              f"after 1 warm-up; heart, {meta['rate']} Hz, 1 onnxruntime thread; `{meta['command']}`.")]
    for clip in dict.fromkeys(r.clip for r in rows):
        group = [r for r in rows if r.clip == clip]
        first = group[0]
        lines += ["", (f"**{clip}**: {first.audio_seconds:.2f} s of audio, heart's synthesis "
                       f"{first.synth_cpu * 1000:.1f} ms CPU ({first.audio_seconds / first.synth_cpu:.0f}x real time)"),
                  "", ("| candidate | CPU ms (all processes) | CPU vs ffmpeg binary | wall ms | x RT (CPU) "
                       "| encode / synthesis CPU | kbps | LSD dB | lag | extra samples |"),
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in group:
            base = next(b for b in group if b.candidate == f"{r.format} ffmpeg binary")
            lines.append(f"| {r.candidate} | {r.cpu * 1000:.1f} | {r.cpu / base.cpu:.2f} | {r.wall * 1000:.1f} "
                         f"| {r.xrt_cpu:.0f} | **{100 * r.of_synthesis:.1f}%** | {r.kbps:.1f} | {r.lsd_db:.2f} "
                         f"| {r.lag} | {r.extra_samples} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: synthesize the clips, run the candidates, print Markdown (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds of the minute clip (more for shorter)")
    parser.add_argument("--clips", default=",".join(CLIPS), help=f"comma-separated: {','.join(CLIPS)}")
    parser.add_argument("--formats", default="mp3,aac,opus", help="comma-separated formats to run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each candidate to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    if set(clips) - set(CLIPS) or args.repeat < 1:
        parser.error(f"clips must be among {', '.join(CLIPS)} and --repeat >= 1")
    settings = get_settings()
    catalog = VoiceCatalog(voices_dir=settings.voices_dir or None, onnx_threads=1, model_cache_dir=settings.model_cache)
    catalog.backend(VOICE)
    meta: dict[str, Any] = {"machine": machine(), "repeat": args.repeat, "rate": catalog.info(VOICE).sample_rate,
                            "load_before": round(os.getloadavg()[0], 2),
                            "command": " ".join(["python", "scripts/bench_encode.py",
                                                 *(argv if argv is not None else sys.argv[1:])])}
    only = {f.strip() for f in args.formats.split(",") if f.strip()}
    rows = [row for clip in clips for row in bench_clip(clip, catalog, args.repeat, only)]
    meta["load_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

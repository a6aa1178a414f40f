"""The voices' sessions run without onnxruntime's memory arena, and that does not change a sample (issue 12)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine import VoiceCatalog
from engine.backends import HibariBackend, KokoroBackend, PiperBackend
from engine.kokoro_model import style_for_tokens


@pytest.fixture(scope="module")
def catalog(model_cache: Path) -> VoiceCatalog:
    """One catalog for the module, as a worker builds it."""
    return VoiceCatalog(model_cache_dir=model_cache, onnx_threads=1)


def _with_arena(path: str) -> ort.InferenceSession:
    """The same model under onnxruntime's defaults (the arena on), one thread."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def test_every_family_runs_without_the_arena(catalog: VoiceCatalog) -> None:
    heart = catalog.backend("heart")
    joe = catalog.backend("joe")
    kokoro = catalog.backend("jf_alpha")
    assert isinstance(heart, HibariBackend) and isinstance(joe, PiperBackend) and isinstance(kokoro, KokoroBackend)
    sessions = [heart.model.sess, joe.voice.session, kokoro.model.session]
    assert [s.get_session_options().enable_cpu_mem_arena for s in sessions] == [False, False, False]


def test_heart_sounds_the_same_as_with_the_arena(catalog: VoiceCatalog) -> None:
    heart = catalog.backend("heart")
    assert isinstance(heart, HibariBackend)
    ids = heart.ids(heart.phonemize("The ferryman repaired the lanterns along the pier.")[0])
    feeds = {"ids": np.asarray([ids], np.int64), "speed": np.asarray([1.0], np.float32)}
    arena = _with_arena(heart.model.model_path)
    ours = heart.model.sess.run(None, feeds)  # the model's tensors; hibari's DSP turns them into samples
    assert [o.tobytes() for o in arena.run(None, feeds)] == [o.tobytes() for o in ours]


def test_kokoro_sounds_the_same_as_with_the_arena(catalog: VoiceCatalog, model_cache: Path) -> None:
    kokoro = catalog.backend("jf_alpha")
    assert isinstance(kokoro, KokoroBackend)
    ids = kokoro.ids(kokoro.phonemize("Good morning.")[0])
    ours = kokoro.run(ids, 1.0, np.random.default_rng(0))
    feeds = {"tokens": np.asarray([ids], np.int64), "style": style_for_tokens(kokoro.style, len(ids) - 2),
             "speed": np.asarray([1.0], np.float32)}
    arena = _with_arena(str(next(model_cache.glob("*.onnx"))))
    assert np.array_equal(np.asarray(arena.run(None, feeds)[0], np.float32).ravel(), ours)

"""Kokoro runs give their arena memory back, and that does not change a sample (issue 12)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine import VoiceCatalog
from engine.backends import KokoroBackend
from engine.kokoro_model import style_for_tokens


@pytest.fixture(scope="module")
def catalog(model_cache: Path) -> VoiceCatalog:
    """One catalog for the module, as a worker builds it."""
    return VoiceCatalog(model_cache_dir=model_cache, onnx_threads=1)


def test_kokoro_runs_shrink_their_arena(catalog: VoiceCatalog) -> None:
    alpha, kumo = catalog.backend("jf_alpha"), catalog.backend("jm_kumo")
    assert isinstance(alpha, KokoroBackend) and isinstance(kumo, KokoroBackend)
    assert alpha.model.run_options is kumo.model.run_options  # one model, one set of run options
    assert alpha.model.run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"


def test_kokoro_sounds_the_same_as_a_plain_session(catalog: VoiceCatalog, model_cache: Path) -> None:
    kokoro = catalog.backend("jf_alpha")
    assert isinstance(kokoro, KokoroBackend)
    ids = kokoro.ids(kokoro.phonemize("Good morning.")[0])
    ours = kokoro.run(ids, 1.0, np.random.default_rng(0))
    feeds = {"tokens": np.asarray([ids], np.int64), "style": style_for_tokens(kokoro.style, len(ids) - 2),
             "speed": np.asarray([1.0], np.float32)}
    opts = ort.SessionOptions()  # onnxruntime's defaults, one thread, runs that keep their arena
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    plain = ort.InferenceSession(str(next(model_cache.glob("*.onnx"))), sess_options=opts,
                                 providers=["CPUExecutionProvider"])
    assert np.array_equal(np.asarray(plain.run(None, feeds)[0], np.float32).ravel(), ours)

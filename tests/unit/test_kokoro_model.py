"""Unit tests for engine.kokoro_model: blends, style rows, style files and the assembled model.

The assembly tests use the real part wheels (about 90 MB, about a second to assemble) in
temporary folders, including two processes racing to assemble into the same folder.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine import kokoro_model
from engine.exceptions import ModelAssetError, OptionError

JA_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- blends ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,expected",
    [
        ("jf_alpha+jm_kumo", [("jf_alpha", 0.5), ("jm_kumo", 0.5)]),
        ("jf_alpha*0.7+jm_kumo*0.3", [("jf_alpha", 0.7), ("jm_kumo", 0.3)]),
        ("jf_alpha*2+jm_kumo*2", [("jf_alpha", 0.5), ("jm_kumo", 0.5)]),
        ("jf_alpha * 1 + jm_kumo * 3", [("jf_alpha", 0.25), ("jm_kumo", 0.75)]),
        ("a*.5+b+c*1.5", [("a", 0.5 / 3), ("b", 1 / 3), ("c", 0.5)]),
        ("af_heart", [("af_heart", 1.0)]),
    ],
)
def test_parse_blend_normalises_weights(spec: str, expected: list[tuple[str, float]]) -> None:
    parts = kokoro_model.parse_blend(spec)
    assert [name for name, _ in parts] == [name for name, _ in expected]
    assert [w for _, w in parts] == pytest.approx([w for _, w in expected])
    assert sum(w for _, w in parts) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "spec",
    ["", "+", "jf_alpha+", "+jm_kumo", "jf_alpha*0+jm_kumo", "jf_alpha*-1+jm_kumo", "jf_alpha*x+jm_kumo",
     "jf_alpha*+jm_kumo", "jf alpha+jm_kumo", "jf_alpha**2+jm_kumo", "jf_alpha*0.7*2+jm_kumo"],
)
def test_bad_blends_raise_option_error(spec: str) -> None:
    with pytest.raises(OptionError) as info:
        kokoro_model.parse_blend(spec)
    assert repr(spec) in str(info.value)


def test_blend_styles_is_the_weighted_sum() -> None:
    styles = kokoro_model.load_style_file(kokoro_model.builtin_style_file())
    parts = kokoro_model.parse_blend("jf_alpha*0.7+jm_kumo*0.3")
    blended = kokoro_model.blend_styles(styles, parts)
    assert blended.dtype == np.float32 and blended.shape == (510, 256)
    np.testing.assert_allclose(blended, 0.7 * styles["jf_alpha"] + 0.3 * styles["jm_kumo"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(blended, styles["jf_alpha"]) and not np.allclose(blended, styles["jm_kumo"])


# --- style rows -------------------------------------------------------------------------------
@pytest.mark.parametrize("n_tokens,index", [(1, 0), (2, 1), (5, 4), (100, 99), (510, 509), (511, 509),
                                            (5000, 509), (0, 0), (-3, 0)])
def test_style_for_tokens_picks_row_n_minus_one_clipped(n_tokens: int, index: int) -> None:
    table = np.repeat(np.arange(510, dtype=np.float32)[:, None], 256, axis=1)
    row = kokoro_model.style_for_tokens(table, n_tokens)
    assert row.shape == (1, 256)
    assert np.all(row == index)


# --- style files ----------------------------------------------------------------------------------
def test_builtin_style_file_has_the_five_japanese_voices() -> None:
    path = kokoro_model.builtin_style_file()
    assert kokoro_model.style_names(path) == JA_VOICES
    styles = kokoro_model.load_style_file(path)
    assert sorted(styles) == JA_VOICES
    assert all(s.shape == (510, 256) and s.dtype == np.float32 for s in styles.values())


def test_user_style_file_in_upstream_layout(tmp_path: Path) -> None:
    src = kokoro_model.load_style_file(kokoro_model.builtin_style_file())
    path = tmp_path / "voices-v1.0.bin"  # upstream ships an npz under this name, arrays (510, 1, 256)
    with open(path, "wb") as fh:
        np.savez(fh, af_test=src["jf_alpha"].reshape(510, 1, 256), bm_test=src["jm_kumo"].reshape(510, 1, 256))
    assert kokoro_model.style_names(path) == ["af_test", "bm_test"]
    loaded = kokoro_model.load_style_file(path)
    np.testing.assert_array_equal(loaded["af_test"], src["jf_alpha"])


@pytest.mark.parametrize("content", [b"", b"not a numpy file at all" * 10, b"PK\x03\x04" + b"\x00" * 100])
def test_unreadable_style_file_raises_model_asset_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "voices.npz"
    path.write_bytes(content)
    with pytest.raises(ModelAssetError, match=r"voices\.npz"):
        kokoro_model.style_names(path)
    with pytest.raises(ModelAssetError, match=r"voices\.npz"):
        kokoro_model.load_style_file(path)


def test_missing_style_file_raises_model_asset_error(tmp_path: Path) -> None:
    with pytest.raises(ModelAssetError, match="cannot be read"):
        kokoro_model.style_names(tmp_path / "absent.npz")


# --- model assembly ---------------------------------------------------------------------------------
def test_expected_sha256_is_a_hex_digest() -> None:
    digest = kokoro_model.expected_sha256()
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_assemble_model_verifies_checksum_and_reuses_the_file(tmp_path: Path) -> None:
    cache = tmp_path / "nested" / "models"  # created when missing
    path = kokoro_model.assemble_model(cache)
    assert path == cache / kokoro_model.MODEL_FILENAME
    assert sha256(path) == kokoro_model.expected_sha256()
    assert path.stat().st_size > 50_000_000
    assert list(cache.iterdir()) == [path]
    mtime = path.stat().st_mtime_ns
    assert kokoro_model.assemble_model(cache) == path
    assert path.stat().st_mtime_ns == mtime  # not rebuilt when valid


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_corrupted_cached_model_is_rebuilt(tmp_path: Path, damage: str) -> None:
    path = kokoro_model.assemble_model(tmp_path)
    size = path.stat().st_size
    if damage == "flip":
        with open(path, "r+b") as fh:
            fh.seek(size // 2)
            byte = fh.read(1)
            fh.seek(size // 2)
            fh.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(size // 3)
    else:
        path.write_bytes(b"")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a real edit moves mtime
    assert sha256(path) != kokoro_model.expected_sha256()
    rebuilt = kokoro_model.assemble_model(tmp_path)
    assert rebuilt == path
    assert path.stat().st_size == size
    assert sha256(path) == kokoro_model.expected_sha256()
    assert [p.name for p in tmp_path.iterdir()] == [kokoro_model.MODEL_FILENAME]


def _assemble_in_child(cache: str, barrier: Any, results: Any) -> None:
    """Child process: wait for the others, then assemble into the shared folder."""
    try:
        barrier.wait(timeout=60)
        path = kokoro_model.assemble_model(cache)
        results.put(("ok", str(path)))
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent, which fails the test
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_concurrent_assembly_from_two_processes_yields_one_valid_file(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_assemble_in_child, args=(str(cache), barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert outcomes == [("ok", str(cache / kokoro_model.MODEL_FILENAME))] * 2
    assert sorted(p.name for p in cache.iterdir()) == [kokoro_model.MODEL_FILENAME]  # no .part left over
    assert sha256(cache / kokoro_model.MODEL_FILENAME) == kokoro_model.expected_sha256()


# --- leftovers of interrupted assemblies -------------------------------------------------------------
STALE = kokoro_model.STALE_PART_SECONDS


def make_part(cache: Path, age_seconds: float, size: int = 4096) -> Path:
    """A temporary model file named as an assembly names it, last written ``age_seconds`` ago."""
    fd, name = tempfile.mkstemp(prefix=kokoro_model.MODEL_FILENAME + ".", suffix=".part", dir=cache)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"\0" * size)
    age(Path(name), age_seconds)
    return Path(name)


def age(path: Path, seconds: float) -> None:
    """Set ``path``'s access and modification times to ``seconds`` ago."""
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_assembly_removes_stale_part_files_but_not_fresh_ones(tmp_path: Path) -> None:
    stale = [make_part(tmp_path, STALE + 60), make_part(tmp_path, 3 * 86400)]
    fresh = [make_part(tmp_path, 5), make_part(tmp_path, STALE - 60)]  # another process may be writing these
    unrelated = [tmp_path / "notes.part", tmp_path / "other-model.onnx.x1y2.part",
                 tmp_path / f"{kokoro_model.MODEL_FILENAME}.bak"]
    for path in unrelated:
        path.write_bytes(b"keep me")
        age(path, 3 * 86400)
    path = kokoro_model.assemble_model(tmp_path)
    assert sha256(path) == kokoro_model.expected_sha256()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in fresh) and all(p.exists() for p in unrelated)


def test_stale_parts_are_removed_when_the_model_is_already_assembled(tmp_path: Path) -> None:
    path = kokoro_model.assemble_model(tmp_path)
    mtime = path.stat().st_mtime_ns
    stale = make_part(tmp_path, STALE + 1)
    fresh = make_part(tmp_path, 1)
    assert kokoro_model.assemble_model(tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not stale.exists() and fresh.exists()
    assert kokoro_model.remove_stale_parts(tmp_path) == []
    assert kokoro_model.remove_stale_parts(tmp_path, max_age=0) == [fresh]


def test_part_left_by_a_process_killed_mid_assembly_is_removed_once_stale(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    cache.mkdir()
    child = multiprocessing.get_context("spawn").Process(target=kokoro_model.assemble_model, args=(str(cache),))
    child.start()
    pattern = f"{kokoro_model.MODEL_FILENAME}.*.part"
    deadline = time.monotonic() + 120
    try:
        while not any(p.stat().st_size > 0 for p in cache.glob(pattern) if p.exists()):
            assert child.is_alive(), "the child finished before it could be killed mid-assembly"
            assert time.monotonic() < deadline, "the child never started writing the model"
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    [leftover] = cache.glob(pattern)
    assert not (cache / kokoro_model.MODEL_FILENAME).exists()
    path = kokoro_model.assemble_model(cache)  # the leftover is fresh: it might be a live writer's
    assert leftover.exists() and sha256(path) == kokoro_model.expected_sha256()
    age(leftover, STALE + 1)  # ten minutes later
    assert kokoro_model.assemble_model(cache) == path
    assert sorted(p.name for p in cache.iterdir()) == [kokoro_model.MODEL_FILENAME]

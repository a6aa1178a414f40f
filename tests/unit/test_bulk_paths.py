"""Path safety and discovery of ``tts_batch_client``: nothing may land outside ``--out``."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from tts_batch_client.bulk import MAX_JOB_NAME, job_name
from tts_batch_client.errors import UsageError
from tts_batch_client.files import SourceFile, discover
from tts_batch_client.manifest import Manifest
from tts_batch_client.outputs import UnsafePathError, plan_outputs, safe_output_path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder.resolve()


def test_plain_relative_paths_stay_inside(out: Path) -> None:
    assert safe_output_path(out, "a/b/c.mp3") == out / "a" / "b" / "c.mp3"
    assert safe_output_path(out, PurePosixPath("top.wav")) == out / "top.wav"


@pytest.mark.parametrize("bad", ["../x.mp3", "a/../../x.mp3", "/etc/x.mp3", "a/..", "", "."])
def test_escapes_are_refused(out: Path, bad: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_output_path(out, bad)


def test_symlinked_folder_leading_outside_is_refused(out: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "letters").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside"):
        safe_output_path(out, "letters/welcome.mp3")
    with pytest.raises(UnsafePathError):
        safe_output_path(out, "letters/new/deeper.mp3")
    assert not (elsewhere / "new").exists()


def test_symlinked_folder_inside_out_is_allowed(out: Path) -> None:
    (out / "real").mkdir()
    (out / "alias").symlink_to(out / "real", target_is_directory=True)
    assert safe_output_path(out, "alias/x.mp3") == out / "alias" / "x.mp3"


def test_output_file_that_is_a_symlink_is_refused(out: Path, tmp_path: Path) -> None:
    (out / "inside.mp3").write_bytes(b"x")
    (out / "link.mp3").symlink_to(out / "inside.mp3")
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_output_path(out, "link.mp3")
    (out / "dangling.mp3").symlink_to(tmp_path / "nowhere.mp3")
    with pytest.raises(UnsafePathError):
        safe_output_path(out, "dangling.mp3")


def test_manifest_symlink_is_refused(out: Path, tmp_path: Path) -> None:
    (out / "manifest.json").symlink_to(tmp_path / "stolen.json")
    with pytest.raises(UnsafePathError):
        Manifest(out)


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_discover_folder_recursively_mirrors_relative_paths(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in", {"a.txt": b"a", "sub/b.md": b"b", "sub/deep/c.TXT": b"c", "skip.rst": b"x",
                                   ".hidden/d.txt": b"d", "sub/.e.txt": b"e"})
    found = discover([str(root)])
    assert [str(s.relative) for s in found] == ["a.txt", "sub/b.md", "sub/deep/c.TXT"]
    assert all(s.root == root for s in found)
    assert [s.markdown for s in found] == [False, True, False]


def test_discover_glob_is_relative_to_its_fixed_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in", {"x/a.md": b"a", "x/y/b.md": b"b", "x/c.txt": b"c"})
    found = discover([f"{root}/x/**/*.md"])
    assert [str(s.relative) for s in found] == ["a.md", "y/b.md"]
    assert all(s.root == root / "x" for s in found)


def test_discover_file_dedupes_and_skips_the_output_folder(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in", {"a.txt": b"a", "out/old.txt": b"o"})
    out = (root / "out").resolve()
    found = discover([str(root), str(root / "a.txt")], skip=out)
    assert [str(s.relative) for s in found] == ["a.txt"]


def test_discover_refuses_missing_inputs_and_other_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        discover([str(tmp_path / "missing")])
    with pytest.raises(UsageError, match="match"):
        discover([f"{tmp_path}/*.txt"])
    (tmp_path / "notes.rst").write_text("x")
    with pytest.raises(UsageError, match=r"\.txt and \.md"):
        discover([str(tmp_path / "notes.rst")])


def test_discover_does_not_follow_symlinked_folders(tmp_path: Path) -> None:
    outside = _tree(tmp_path / "outside", {"secret.txt": b"s"})
    root = _tree(tmp_path / "in", {"a.txt": b"a"})
    os.symlink(outside, root / "link", target_is_directory=True)
    assert [str(s.relative) for s in discover([str(root)])] == ["a.txt"]


def test_plan_outputs_keeps_suffix_when_stems_clash(tmp_path: Path) -> None:
    root = tmp_path / "in"

    def src(rel: str, base: Path = root) -> SourceFile:
        return SourceFile(path=base / rel, root=base, relative=PurePosixPath(rel))

    a_txt, a_md, b = src("n/a.txt"), src("n/a.md"), src("b.md")
    other_b = src("b.md", tmp_path / "second")
    plan = plan_outputs([a_txt, a_md, b, other_b], "opus")
    assert plan[a_txt] == PurePosixPath("n/a.txt.opus")
    assert plan[a_md] == PurePosixPath("n/a.md.opus")
    assert plan[b] == PurePosixPath("b.opus")
    assert isinstance(plan[other_b], str) and "same output b.opus" in plan[other_b]


@pytest.mark.parametrize(("stem", "name"), [
    ("chapter 1", "chapter 1"),
    ("line\nbreak\ttab", "line break tab"),
    ("undecodable \udcff byte", "undecodable \ufffd byte"),
    ("é" * 250, "é" * MAX_JOB_NAME),
])
def test_a_job_name_is_one_line_the_server_takes(stem: str, name: str) -> None:
    """A file's stem may hold what a job ``name`` may not (control characters, undecodable bytes, length)."""
    assert job_name(stem) == name

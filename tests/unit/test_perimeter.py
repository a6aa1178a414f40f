"""The closed perimeter's small parts: stream slots across threads, the stream and Flower
settings, and Flower's password file (made once, private, reused; TTS_FLOWER_PASSWORD wins)."""
from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from app.streams import StreamSlots
from scripts.flower_password import FlowerPasswordError, flower_login, password_path
from settings import SettingsError, load_settings

THREADS = 32


def test_slots_hand_out_exactly_their_limit_across_threads() -> None:
    slots = StreamSlots("test stream", 4, retry_after=1)
    start = threading.Barrier(THREADS)
    taken = []
    lock = threading.Lock()

    def take() -> None:
        start.wait(10)
        slot = slots.try_acquire()  # never blocks
        if slot is not None:
            with lock:
                taken.append(slot)

    threads = [threading.Thread(target=take) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(taken) == 4 and slots.in_use == 4
    assert slots.try_acquire() is None

    for slot in taken:
        slot.release()
        slot.release()  # a second release (generator end and response close both call it) is a no-op
    assert slots.in_use == 0
    again = [slots.try_acquire() for _ in range(5)]
    assert sum(slot is not None for slot in again) == 4


def test_stream_and_flower_defaults_are_closed() -> None:
    settings = load_settings({})
    assert (settings.stream_max_clients, settings.stream_max_seconds, settings.batch_stream_max_clients) == (4, 300, 2)
    assert settings.flower_host == "127.0.0.1"
    assert settings.flower_password == ""  # no published default


@pytest.mark.parametrize("env", [
    {"TTS_STREAM_MAX_CLIENTS": "0"},
    {"TTS_STREAM_MAX_SECONDS": "0"},
    {"TTS_BATCH_STREAM_MAX_CLIENTS": "-1"},
    {"TTS_FLOWER_HOST": " "},
    {"TTS_FLOWER_USER": "ad:min"},
    {"TTS_FLOWER_USER": ""},
    {"TTS_FLOWER_PASSWORD": "one,two"},
])
def test_unusable_values_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    assert next(iter(env)) in str(caught.value)


def test_flower_password_is_made_once_private_and_reused(tmp_path: Path) -> None:
    settings = load_settings({"TTS_DATA_DIR": str(tmp_path / "var")})
    first = flower_login(settings)
    assert first.path == password_path(settings) == (tmp_path / "var" / "flower-password").resolve()
    assert first.user == "admin" and len(first.password) >= 32 and first.basic_auth == f"admin:{first.password}"
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert first.where == str(first.path)
    assert flower_login(settings) == first
    assert [p.name for p in first.path.parent.iterdir()] == ["flower-password"]  # no temporary file left

    explicit = flower_login(load_settings({"TTS_DATA_DIR": str(tmp_path / "var"), "TTS_FLOWER_PASSWORD": "mine"}))
    assert (explicit.password, explicit.path, explicit.where) == ("mine", None, "TTS_FLOWER_PASSWORD")
    assert first.path.read_text().strip() == first.password


def test_starts_at_once_agree_on_one_password(tmp_path: Path) -> None:
    settings = load_settings({"TTS_DATA_DIR": str(tmp_path)})
    start = threading.Barrier(8)
    seen: list[str] = []

    def login() -> None:
        start.wait(10)
        seen.append(flower_login(settings).password)

    threads = [threading.Thread(target=login) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(seen) == 8 and len(set(seen)) == 1
    assert password_path(settings).read_text().strip() == seen[0]


def test_a_loose_or_broken_password_file(tmp_path: Path) -> None:
    settings = load_settings({"TTS_DATA_DIR": str(tmp_path)})
    path = password_path(settings)
    path.write_text("kept-from-before\n")
    path.chmod(0o644)
    assert flower_login(settings).password == "kept-from-before"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # made the owner's only

    path.write_text("\n")
    with pytest.raises(FlowerPasswordError, match="delete it"):
        flower_login(settings)

"""Worker memory (issue 12): the Celery memory bound from settings, and runs that give their arena back."""
from __future__ import annotations

import pytest

from engine.backends import shrinking_run_options
from settings import SettingsError, load_settings
from tasks.celery_app import celery_config, create_celery


def test_worker_max_memory_is_read_in_mib() -> None:
    assert load_settings({"TTS_WORKER_MAX_MEMORY_MB": "768"}).worker_max_memory_mb == 768
    assert load_settings({}).worker_max_memory_mb > 0  # a bound by default


def test_a_negative_worker_max_memory_is_refused() -> None:
    with pytest.raises(SettingsError, match="TTS_WORKER_MAX_MEMORY_MB"):
        load_settings({"TTS_WORKER_MAX_MEMORY_MB": "-1"})


def test_the_celery_app_carries_the_bound_in_kib() -> None:
    settings = load_settings({"TTS_WORKER_MAX_MEMORY_MB": "768"})
    assert create_celery(settings).conf.worker_max_memory_per_child == 768 * 1024
    default = load_settings({})
    assert create_celery(default).conf.worker_max_memory_per_child == default.worker_max_memory_mb * 1024


def test_zero_means_no_bound() -> None:
    # billiard replaces a child only when the bound is above 0.
    assert celery_config(load_settings({"TTS_WORKER_MAX_MEMORY_MB": "0"}))["worker_max_memory_per_child"] == 0


def test_shrinking_run_options_free_the_cpu_arena() -> None:
    assert shrinking_run_options().get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"

"""Correlation ids and the JSON / plain log formats."""
from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.correlation import (
    REQUEST_ID_HEADER,
    CorrelationFilter,
    bind,
    current,
    new_correlation_id,
    valid_request_id,
)
from monitoring.logs import JSON_FIELDS, configure_logging
from settings import Settings


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.strip()]


def test_header_name() -> None:
    assert REQUEST_ID_HEADER == "X-Request-ID"


@pytest.mark.parametrize("value", ["abc", "req-123_ABC.xyz", "a b", "x" * 128, "  padded  "])
def test_valid_request_ids_are_kept(value: str) -> None:
    assert valid_request_id(value) == value.strip()


@pytest.mark.parametrize("value", [None, "", "   ", "x" * 129, "bad\nline", "tab\there", "é", "\x00", 42, b"\xff"])
def test_invalid_request_ids_are_replaced(value: object) -> None:
    replacement = valid_request_id(value)
    assert replacement != value
    assert len(replacement) == 32 and int(replacement, 16) >= 0


def test_new_ids_are_unique() -> None:
    assert len({new_correlation_id() for _ in range(100)}) == 100


def test_bind_nests_and_restores() -> None:
    assert current() == {"correlation_id": None, "job_id": None, "voice": None}
    with bind(correlation_id="c1") as ctx:
        assert ctx == {"correlation_id": "c1", "job_id": None, "voice": None}
        with bind(job_id="j1", voice="heart"):
            assert current() == {"correlation_id": "c1", "job_id": "j1", "voice": "heart"}
            with bind(correlation_id="c2"):
                assert current()["correlation_id"] == "c2"
            assert current()["correlation_id"] == "c1"
        assert current() == {"correlation_id": "c1", "job_id": None, "voice": None}
    assert current()["correlation_id"] is None


def test_bind_restores_after_an_exception() -> None:
    with pytest.raises(RuntimeError), bind(correlation_id="c1"):
        raise RuntimeError("boom")
    assert current()["correlation_id"] is None


def test_bound_values_do_not_leak_between_threads() -> None:
    seen: dict[str, str | None] = {}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        with bind(correlation_id=name):
            barrier.wait()
            seen[name] = current()["correlation_id"]

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a", "b": "b"}


def test_filter_stamps_records_but_extra_wins() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    with bind(correlation_id="c1", job_id="j1"):
        assert CorrelationFilter().filter(record)
    assert (record.correlation_id, record.job_id, record.voice) == ("c1", "j1", None)
    explicit = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    explicit.job_id = "mine"
    with bind(job_id="j1"):
        CorrelationFilter().filter(explicit)
    assert explicit.job_id == "mine"


def test_json_lines_carry_context_and_extra_fields() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_json=True, log_level="INFO"), "worker", stream=stream)
    log = logging.getLogger("tests.logs")
    log.debug("hidden at INFO")
    with bind(correlation_id="c1", job_id="j1", voice="heart"):
        log.info("job %s done", "j1", extra={"synthesis_ms": 812.5, "characters": 40})
    log.warning("outside")
    first, second = (json.loads(line) for line in lines(stream))
    assert list(first)[: len(JSON_FIELDS)] == list(JSON_FIELDS)
    assert first["message"] == "job j1 done"
    assert first["level"] == "INFO"
    assert first["logger"] == "tests.logs"
    assert first["component"] == "worker"
    assert (first["correlation_id"], first["job_id"], first["voice"]) == ("c1", "j1", "heart")
    assert first["synthesis_ms"] == 812.5 and first["characters"] == 40
    assert first["timestamp"].endswith("+00:00")
    assert second["correlation_id"] is None and second["level"] == "WARNING"


def test_exceptions_are_inside_the_json_line() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_json=True), "api", stream=stream)
    try:
        raise ValueError("bad input")
    except ValueError:
        logging.getLogger("tests.logs").exception("failed")
    (line,) = lines(stream)
    record = json.loads(line)
    assert "ValueError: bad input" in record["exc_info"]


def test_plain_text_when_json_is_off() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_json=False, log_level="debug"), "api", stream=stream)
    with bind(correlation_id="c9", job_id="j9"):
        logging.getLogger("tests.logs").debug("plain line")
    (line,) = lines(stream)
    assert "DEBUG tests.logs [api cid=c9 job=j9] plain line" in line
    with pytest.raises(ValueError):
        json.loads(line)


def test_reconfiguring_replaces_only_our_handlers() -> None:
    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    first, second = io.StringIO(), io.StringIO()
    configure_logging(Settings(), "api", stream=first)
    configure_logging(Settings(), "api", stream=second)
    logging.getLogger("tests.logs").warning("once")
    assert lines(first) == [] and len(lines(second)) == 1
    assert foreign in root.handlers
    root.removeHandler(foreign)


def test_bad_level_falls_back_to_info_with_a_warning() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_level="LOUD"), "api", stream=stream)
    assert logging.getLogger().level == logging.INFO
    assert "LOUD" in stream.getvalue()


def test_log_file_rotates(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "api.log"
    settings = Settings(log_file=str(path), log_max_bytes=2000, log_backup_count=2)
    configure_logging(settings, "api", stream=io.StringIO())
    log = logging.getLogger("tests.logs")
    for i in range(100):
        log.info("line %d %s", i, "x" * 50)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["api.log", "api.log.1", "api.log.2"]
    for name in files:
        for line in (path.parent / name).read_text().splitlines():
            assert json.loads(line)["component"] == "api"
    assert path.stat().st_size <= 2000

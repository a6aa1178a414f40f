"""Where the bulk client's API address and key come from, and ``tts-batch bulk`` handing over to it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from app import cli as server_cli
from settings import load_settings, reset_settings
from tts_batch_client import cli
from tts_batch_client.api import _worth_retrying
from tts_batch_client.bulk import EXIT_USAGE, Options
from tts_batch_client.environment import ClientEnvironment, read_environment


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of the conversion run, recorded instead of talking to an API."""
    calls: list[dict[str, Any]] = []

    def fake_run(inputs: list[str], out: str, options: Options, **kwargs: Any) -> int:
        calls.append({"inputs": inputs, "out": out, "options": options, **kwargs})
        return 0

    monkeypatch.setattr(cli, "run", fake_run)
    monkeypatch.delenv("TTS_API_URL", raising=False)
    monkeypatch.delenv("TTS_API_KEY", raising=False)
    return calls


def test_read_environment_treats_empty_as_unset() -> None:
    assert read_environment({}) == ClientEnvironment()
    assert read_environment({"TTS_API_URL": "", "TTS_API_KEY": ""}) == ClientEnvironment()
    assert read_environment({"TTS_API_URL": "http://h:1", "TTS_API_KEY": "k"}) == ClientEnvironment("http://h:1", "k")


def test_api_defaults_option_then_environment_then_caller_then_builtin(
        runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["in", "--out", "o"]) == 0
    assert runs[-1]["api_url"] == cli.DEFAULT_API and runs[-1]["api_key"] is None
    assert cli.main(["in", "--out", "o"], default_api="http://caller:1") == 0
    assert runs[-1]["api_url"] == "http://caller:1"
    monkeypatch.setenv("TTS_API_URL", "http://env:2")
    monkeypatch.setenv("TTS_API_KEY", "env-key")
    assert cli.main(["in", "--out", "o"], default_api="http://caller:1") == 0
    assert (runs[-1]["api_url"], runs[-1]["api_key"]) == ("http://env:2", "env-key")
    assert cli.main(["in", "--out", "o", "--api", "http://opt:3", "--api-key", "opt-key"]) == 0
    assert (runs[-1]["api_url"], runs[-1]["api_key"]) == ("http://opt:3", "opt-key")
    assert runs[-1]["options"] == Options(voice="heart", format="mp3", speed=1.0, timeout=1800.0)
    assert (runs[-1]["inputs"], runs[-1]["concurrency"], runs[-1]["quiet"]) == (["in"], 4, False)


def test_missing_input_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--api", "http://127.0.0.1:9"])
    assert status == EXIT_USAGE
    assert "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tts_batch_bulk_hands_over_with_the_settings_address(runs: list[dict[str, Any]]) -> None:
    reset_settings(load_settings({"TTS_API_HOST": "0.0.0.0", "TTS_API_PORT": "9123"}))
    try:
        assert server_cli.main(["bulk", "books", "--out", "audio", "--voice", "joe", "-c", "2", "-q"]) == 0
    finally:
        reset_settings()
    assert runs[-1]["api_url"] == "http://127.0.0.1:9123"
    assert runs[-1]["options"].voice == "joe" and runs[-1]["concurrency"] == 2 and runs[-1]["quiet"] is True


def _response(status: int, body: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    return response


def test_the_client_retries_a_key_still_in_use_but_not_other_conflicts():
    in_use = {"error": {"code": "idempotency_key_in_use", "message": "retry in a moment"}}
    assert _worth_retrying(_response(409, in_use))
    assert _worth_retrying(_response(503, {"error": {"code": "service_unavailable"}}))
    assert not _worth_retrying(_response(409, {"error": {"code": "job_not_finished"}}))
    assert not _worth_retrying(_response(422, {"error": {"code": "idempotency_key_reused"}}))

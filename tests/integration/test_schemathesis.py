"""Schema fuzzing: schemathesis against the served ``/openapi.json`` on a real stack, every check on.

A real Redis, a real Celery worker with the real voices, the API served over HTTP. The
``st`` command reads the document the API serves and runs every phase: the examples, the
coverage of each schema's edges, random fuzzing (valid and invalid data) and the stateful
phase that follows the document's links (submit a job, poll it, download it, cancel it;
the same for batches). Every check is on (``--checks all``): no server error, documented
status codes, content types, headers and response schemas, invalid data refused, valid
data accepted, missing auth refused, and the rest. It must find nothing.

The stack is small so that each request is quick: texts of at most 300 characters, the
speech endpoint waits 10 s at most, the metrics stream ends after one second. The API is
closed with a bootstrap admin key, so the auth checks have something to check.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

#: The links a client follows from a submit (app/jobs.py JOB_LINKS, app/batches.py BATCH_LINKS).
JOB_AND_BATCH_LINKS = ("GetJob", "GetJobAudio", "CancelJob", "DeleteJob", "GetBatch", "ListBatchItems",
                       "GetBatchResult", "GetBatchAudio", "CancelBatch", "DeleteBatch")

#: Where positive_data_acceptance may see a 400, and why (the file says).
CONFIG = Path(__file__).with_name("schemathesis.toml")
ADMIN_KEY = "tts_5c4e11a0c0de_schemathesis-admin-key-for-the-fuzz-stack-only"


@pytest.fixture
def fuzz_stack(make_stack: Any) -> Any:
    """A closed stack with small limits, so that fuzzed requests finish quickly."""
    return make_stack(TTS_API_KEYS=ADMIN_KEY, TTS_MAX_TEXT_CHARS="300", TTS_SPEECH_TIMEOUT="10",
                      TTS_STREAM_MAX_SECONDS="1", TTS_MAX_BATCH_INPUTS="20")


def run_schemathesis(base: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``st run`` on the served document with every check and phase; its report in ``tmp_path``."""
    command = [
        str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG), "run", f"{base}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "-H", f"Authorization: Bearer {ADMIN_KEY}",
        # One worker: with two threads, hypothesis's ast.parse of its lambdas hits CPython 3.11.7's
        # "AST constructor recursion depth mismatch" race (a SystemError inside schemathesis, not the API).
        "--seed", "11", "--workers", "1",
        "--request-timeout", "30", "--generation-database", "none",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
        "--no-color", "--output-truncate", "false", *extra,
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    return subprocess.run(command, capture_output=True, text=True, timeout=1500, env=env, check=False, cwd=tmp_path)


@pytest.mark.timeout(1800)
def test_schemathesis_finds_nothing(fuzz_stack: Any, tmp_path: Path) -> None:
    with fuzz_stack.serve() as base:
        document = requests.get(f"{base}/openapi.json", timeout=10).json()
        assert document["openapi"].startswith("3.1")
        result = run_schemathesis(base, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    print(output[output.find("Coverage"):])  # the phases and the summary, for a -s run
    # The run really tested the API: every operation, and the stateful phase through the links.
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    links = re.search(r"API Links:\s+(\d+) covered", output)
    assert selected and tested and links, output[-3000:]
    assert int(tested.group(1)) == int(selected.group(2)) == len(
        [op for item in document["paths"].values() for op in item]), output[-3000:]
    assert int(links.group(1)) >= len(JOB_AND_BATCH_LINKS), output[-3000:]

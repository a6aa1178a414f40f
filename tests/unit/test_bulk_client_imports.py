"""The bulk client package imports none of the server: not its frameworks, not its own modules."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Top-level modules the client must never load: the server's frameworks and the server itself.
SERVER_MODULES = {"flask", "celery", "onnxruntime", "redis", "numpy", "app", "tasks", "engine", "monitoring",
                  "settings"}
IMPORTS = "import tts_batch_client, tts_batch_client.bulk, tts_batch_client.cli"


def test_client_package_imports_nothing_of_the_server() -> None:
    code = f"{IMPORTS}; import json, sys; print(json.dumps(sorted(sys.modules)))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = {name.split(".")[0] for name in json.loads(proc.stdout)}
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "tts_batch_client" in loaded and "requests" in loaded
    assert not loaded & SERVER_MODULES, sorted(loaded & SERVER_MODULES)
    assert not imported & SERVER_MODULES, sorted(imported & SERVER_MODULES)  # not even imported and dropped

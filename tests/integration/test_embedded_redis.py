"""The embedded Redis launcher: start, persistence across a crash, noeviction, clean stop."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import psutil
import pytest
import redis

from scripts.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    PortInUseError,
    find_free_port,
    port_is_free,
)

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_start_set_get_and_url(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.url_for_db(3).endswith(f":{server.port}/3")
        assert server.pid is not None and psutil.pid_exists(server.pid)
        client = redis.Redis.from_url(server.url)
        assert client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["save"] == ""
        assert config["bind"] == "127.0.0.1"
        assert Path(config["dir"]) == (tmp_path / "redis").resolve()
        client.close()
    assert (tmp_path / "redis" / "redis.log").exists()
    assert (tmp_path / "redis" / "appendonly.aof").exists()


def test_aof_survives_kill_and_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, appendfsync="always").start()
    try:
        port, first_pid = server.port, server.pid
        client = redis.Redis.from_url(server.url)
        client.set("job:1", "queued")
        client.rpush("queue", "a", "b", "c")
        client.close()

        server.kill()
        assert server.pid is None
        assert _gone(first_pid)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(server.url, socket_connect_timeout=0.5).ping()

        server.restart()
        assert server.port == port, "restart must keep the port so clients can reconnect"
        assert server.pid not in (None, first_pid)
        client = redis.Redis.from_url(server.url)
        assert client.get("job:1") == b"queued"
        assert client.lrange("queue", 0, -1) == [b"a", b"b", b"c"]
        client.close()
    finally:
        server.stop()


def test_graceful_stop_flushes_aof_with_everysec(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path).start()  # appendfsync everysec (the default)
    try:
        client = redis.Redis.from_url(server.url)
        client.set("written-just-before-stop", "1")
        client.close()
        server.stop()  # SHUTDOWN: fsyncs the AOF, no waiting needed
        assert server.pid is None
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.get("written-just-before-stop") == b"1"
        client.close()
    finally:
        server.stop()


def test_noeviction_refuses_writes_instead_of_dropping_keys(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 512 * 1024)
        blob = b"x" * 16 * 1024
        written = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(1000):  # ~16 MB worth: far beyond the limit
                client.set(f"task:{i}", blob)
                written += 1
        assert written > 0
        assert client.dbsize() == written, "noeviction must keep every key that was accepted"
        assert client.info("stats")["evicted_keys"] == 0
        client.close()


def test_stop_leaves_no_process_and_frees_the_port(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path).start()
    pid, port = server.pid, server.port
    assert pid is not None
    server.stop()
    assert _gone(pid)
    assert server.pid is None and not server.is_running()
    assert port_is_free(port)
    server.stop()  # idempotent
    server.kill()  # and harmless when already stopped


def test_context_manager_removes_its_temporary_folder() -> None:
    with EmbeddedRedis() as server:
        data_dir, pid = server.data_dir, server.pid
        assert data_dir.is_dir()
    assert pid is not None and _gone(pid)
    assert not data_dir.exists()


def test_explicit_port_in_use_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(PortInUseError, match=str(port)):
            EmbeddedRedis(port=port, data_dir=tmp_path).start()
        assert time.monotonic() - started < 2


def test_startup_failure_quotes_the_server_output(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, extra_args=["--maxmemory-policy", "bogus-policy"])
    with pytest.raises(EmbeddedRedisError, match="bogus-policy"):
        server.start()
    assert server.pid is None


def test_port_helpers() -> None:
    port = find_free_port()
    assert 0 < port < 65536
    assert port_is_free(port)


def test_session_fixture_survives_kill_and_restart(redis_server, redis_dbs, redis_url: str) -> None:
    """The conftest contract: ``redis_url`` is an empty, dedicated db; kill/restart keep the URL."""
    client = redis.Redis.from_url(redis_url)
    assert set(client.keys()) <= redis_dbs.reserved_keys
    if redis_server.embedded:
        assert not redis_url.endswith("/0"), "tests get their own db, not db 0"
    client.set("k", "v")
    client.close()
    redis_server.kill()  # skips the test when TEST_REDIS_URL points at an external Redis
    redis_server.restart()
    client = redis.Redis.from_url(redis_url)
    assert client.get("k") == b"v"
    client.close()


def test_redis_url_fixture_starts_empty(redis_dbs, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert set(client.keys()) <= redis_dbs.reserved_keys  # the previous test's key was flushed
    client.close()

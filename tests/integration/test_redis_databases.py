"""Where tests get their Redis databases: a shared ``TEST_REDIS_URL`` server is used without harming anyone.

``conftest.ClaimedDatabases`` runs here against a server of the test's own (``own_redis``)
standing in for a shared one: someone else's data in some databases, other test sessions
claiming databases at the same time, a session that was killed and left its claim behind.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
import redis
from conftest import CLAIM_KEY, ClaimedDatabases, EmbeddedDatabases

pytestmark = pytest.mark.integration


def db_client(server: Any, db: int) -> redis.Redis:
    return redis.Redis.from_url(server.url_for_db(db))


def db_of(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_empty_databases_are_claimed_and_nobody_elses_data_is_touched(own_redis: Any) -> None:
    theirs = {0: {b"app:user:1": b"alice"}, 2: {b"app:queue": b"keep me"}}
    for db, keys in theirs.items():
        db_client(own_redis, db).mset(keys)
    pool = ClaimedDatabases(own_redis.url_for_db(0))

    first, second = pool.acquire(), pool.acquire()
    assert (db_of(first), db_of(second)) == (1, 3)  # 0 and 2 hold someone else's keys
    for url in (first, second):
        client = redis.Redis.from_url(url)
        assert set(client.keys()) == pool.reserved_keys == {CLAIM_KEY.encode()}
        assert json.loads(client.get(CLAIM_KEY))["pid"] == os.getpid()
        client.set("tts:job:x", "ours")
    pool.release(first)
    pool.release(second)

    assert db_client(own_redis, 1).dbsize() == 0 and db_client(own_redis, 3).dbsize() == 0
    for db, keys in theirs.items():  # untouched
        client = db_client(own_redis, db)
        assert {k: client.get(k) for k in client.keys()} == keys  # noqa: SIM118 - Redis KEYS, not a dict


def test_the_named_database_comes_first(own_redis: Any) -> None:
    pool = ClaimedDatabases(own_redis.url_for_db(5))
    url = pool.acquire()
    assert db_of(url) == 5
    pool.release(url)


def test_two_sessions_never_share_a_database(own_redis: Any) -> None:
    a, b = ClaimedDatabases(own_redis.url), ClaimedDatabases(own_redis.url)
    urls = [pool.acquire() for _ in range(4) for pool in (a, b)]
    assert len(set(urls)) == len(urls)
    owners = {json.loads(redis.Redis.from_url(u).get(CLAIM_KEY))["session"] for u in urls}
    assert owners == {a.session, b.session}
    for url in urls:
        (a if url in a.held else b).release(url)
    assert all(redis.Redis.from_url(u).dbsize() == 0 for u in urls)


def test_a_killed_sessions_claim_is_taken_over_but_a_live_ones_is_not(own_redis: Any) -> None:
    host = socket.gethostname()
    dead = json.dumps({"host": host, "pid": dead_pid(), "session": "gone"})
    live = json.dumps({"host": host, "pid": os.getpid(), "session": "running"})
    elsewhere = json.dumps({"host": f"not-{host}", "pid": dead_pid(), "session": "remote"})
    db_client(own_redis, 0).mset({CLAIM_KEY: live, "tts:job:live": "x"})
    db_client(own_redis, 1).mset({CLAIM_KEY: elsewhere, "tts:job:remote": "x"})
    db_client(own_redis, 2).mset({CLAIM_KEY: dead, "tts:job:leftover": "x"})
    pool = ClaimedDatabases(own_redis.url)

    url = pool.acquire()
    assert db_of(url) == 2  # the dead local session's, its leftovers flushed
    assert set(redis.Redis.from_url(url).keys()) == {CLAIM_KEY.encode()}
    assert db_client(own_redis, 0).get("tts:job:live") == b"x"  # a live session's: left alone
    assert db_client(own_redis, 1).get("tts:job:remote") == b"x"  # another machine's: cannot tell, left alone
    pool.release(url)


def test_release_leaves_a_database_whose_claim_is_no_longer_ours(own_redis: Any) -> None:
    pool = ClaimedDatabases(own_redis.url)
    url = pool.acquire()
    client = redis.Redis.from_url(url)
    client.set(CLAIM_KEY, "someone else now")
    client.set("their:key", "x")
    pool.release(url)
    assert client.get("their:key") == b"x"


def test_embedded_databases_skip_db_0_and_come_round_again(own_redis: Any) -> None:
    pool = EmbeddedDatabases(own_redis, count=3)
    first, second = pool.acquire(), pool.acquire()
    assert (db_of(first), db_of(second)) == (1, 2)
    redis.Redis.from_url(first).set("k", "v")
    pool.release(first)
    again = pool.acquire()
    assert again == first and redis.Redis.from_url(again).dbsize() == 0

"""The result store's contract (``tasks.result_store``), the same tests on both stores.

``file``: a folder under the test's tmp path. ``s3``: a fresh bucket on the session's moto
server (``s3_server`` in tests/conftest.py), a real S3-protocol server in its own process.
The expiry index lives in a real Redis (``redis_url``: the embedded server, a database per test).
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from scripts.embedded_redis import find_free_port
from settings import load_settings
from tasks import keys
from tasks.exceptions import ResultMissing, ResultStoreUnavailable
from tasks.result_store import (
    TMP_MAX_AGE_SECONDS,
    TOMBSTONE_STALE_MS,
    ExpiryIndex,
    FileStore,
    ResultStore,
    open_result_store,
)

pytestmark = pytest.mark.integration

FUTURE = time.time() + 3600
DATA = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes


@pytest.fixture
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture(params=["file", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_env(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """The TTS_* settings that point a process at this test's store."""
    if kind == "file":
        return {"TTS_RESULT_STORE": (tmp_path / "results").as_uri()}
    s3 = request.getfixturevalue("s3_bucket")
    return dict(s3.env)


@pytest.fixture
def store(store_env: dict[str, str], client: Any) -> ResultStore:
    return open_result_store(load_settings(store_env), client)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_read_size(store: ResultStore, client: Any) -> None:
    ref = store.put(DATA, FUTURE)
    assert ref == sha(DATA)
    assert store.read(ref) == DATA
    assert store.size(ref) == len(DATA)
    assert store.stat(ref) == (ref, len(DATA))
    assert client.zscore(keys.RESULTS_EXPIRY, ref) == pytest.approx(FUTURE)
    other = sha(b"never stored")
    assert store.read(other) is None
    assert store.size(other) is None
    assert store.retain(other, FUTURE) is False


def test_put_file_streams_the_same_object(store: ResultStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    ref = store.put_file(src, FUTURE)
    assert ref == sha(data)
    assert store.size(ref) == len(data)
    assert b"".join(store.iter_range(ref, chunk=64 * 1024)) == data
    # the same bytes put again from memory: the same object
    assert store.put(data, FUTURE) == ref


@pytest.mark.parametrize(("start", "end"), [(0, None), (0, 1), (100, 5000), (10_000, None), (10_243, 10_244),
                                             (9_000, 20_000), (500, 500), (20_000, None), (10_244, None)])
def test_iter_range(store: ResultStore, start: int, end: int | None) -> None:
    ref = store.put(DATA, FUTURE)
    chunks = list(store.iter_range(ref, start, end, chunk=1000))
    assert b"".join(chunks) == DATA[start:end]
    assert all(0 < len(c) <= 1000 for c in chunks)


def test_iter_range_of_a_missing_object_raises_at_the_call(store: ResultStore) -> None:
    with pytest.raises(ResultMissing):
        store.iter_range(sha(b"nothing"))
    with pytest.raises(ResultMissing):
        store.iter_range(sha(b"nothing"), 5, 5)


def test_iter_range_close_lets_go(store: ResultStore) -> None:
    ref = store.put(DATA, FUTURE)
    it = store.iter_range(ref, chunk=100)
    assert next(it) == DATA[:100]
    it.close()  # type: ignore[attr-defined]
    assert list(it) == []


def test_content_addressed_stored_once(store: ResultStore, kind: str, client: Any) -> None:
    a = store.put(b"same bytes", FUTURE)
    b = store.put(b"same bytes", FUTURE + 10)
    c = store.put(b"other bytes", FUTURE)
    assert a == b != c
    assert client.zcard(keys.RESULTS_EXPIRY) == 2
    assert sorted(_object_names(store, kind)) == sorted([f"{a[:2]}/{a}", f"{c[:2]}/{c}"])


def _object_names(store: ResultStore, kind: str) -> list[str]:
    """Every object the store holds, as ``xx/ref`` below its root or prefix."""
    if kind == "file":
        assert isinstance(store, FileStore)
        return [str(p.relative_to(store.root)) for p in store.root.rglob("*")
                if p.is_file() and p.parent != store.tmp]
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)  # type: ignore[attr-defined]
    return [o["Key"][len(store.prefix):] for o in listing.get("Contents", [])]  # type: ignore[attr-defined]


def test_no_partial_object_is_ever_visible(store: ResultStore, kind: str, tmp_path: Path) -> None:
    """A writer's bytes appear whole under the ref or not at all."""
    data = os.urandom(8 * 1024 * 1024)
    ref = sha(data)
    seen: list[int | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(store.size(ref))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        if kind == "file":
            src = tmp_path / "src.bin"
            src.write_bytes(data)
            store.put_file(src, FUTURE)
        else:
            store.put(data, FUTURE)
    finally:
        done.set()
        watcher.join(10)
    assert set(seen) <= {None, len(data)}
    assert seen, "the watcher saw nothing"
    assert store.read(ref) == data
    if kind == "file":
        assert isinstance(store, FileStore)
        assert list(store.tmp.iterdir()) == []


def test_a_failed_file_write_leaves_nothing(tmp_path: Path, client: Any) -> None:
    """The folder store writes through tmp/: a write that fails midway leaves no object and no temporary file."""
    store = FileStore(tmp_path / "results", ExpiryIndex(client))

    class Boom(OSError):
        pass

    def fill(out: Any) -> None:
        out.write(b"half")
        raise Boom("disk went away")

    final = store.path(sha(b"x"))
    with pytest.raises(ResultStoreUnavailable):
        store._install(final, fill)
    assert not final.exists()
    assert list(store.tmp.iterdir()) == []


def test_retain_extends_and_never_shortens(store: ResultStore, client: Any) -> None:
    ref = store.put(DATA, FUTURE)
    assert store.retain(ref, FUTURE + 100) is True
    assert client.zscore(keys.RESULTS_EXPIRY, ref) == pytest.approx(FUTURE + 100)
    assert store.retain(ref, FUTURE - 100) is True
    store.put(DATA, FUTURE - 200)
    assert client.zscore(keys.RESULTS_EXPIRY, ref) == pytest.approx(FUTURE + 100)
    assert store.sweep(now=FUTURE + 50) == 0
    assert store.read(ref) == DATA
    assert store.sweep(now=FUTURE + 100) == 1
    assert store.read(ref) is None
    assert store.retain(ref, FUTURE + 500) is False


def test_sweep_deletes_only_expired(store: ResultStore, client: Any) -> None:
    t = 2_000_000_000.0
    refs = {n: store.put(f"object {n}".encode(), t + n) for n in range(10)}
    assert store.sweep(now=t + 4.5) == 5
    for n, ref in refs.items():
        assert (store.read(ref) is None) == (n <= 4), n
    assert client.zcard(keys.RESULTS_EXPIRY) == 5
    assert store.sweep(now=t + 4.5) == 0
    assert store.sweep(now=t + 100, limit=3) == 3
    assert store.sweep(now=t + 100) == 2
    assert client.zcard(keys.RESULTS_EXPIRY) == 0
    assert all(store.read(ref) is None for ref in refs.values())


def test_sweep_of_an_object_already_gone_is_quiet(store: ResultStore, kind: str, client: Any) -> None:
    ref = store.put(DATA, 1000.0)
    store._delete_many([ref])
    assert store.sweep(now=2000.0) == 1
    assert client.zcard(keys.RESULTS_EXPIRY) == 0


def test_sweep_write_race_by_hand(store: ResultStore, client: Any) -> None:
    """The interleaving the claim protocol closes, driven step by step.

    A sweeper claims expired R; a writer of the same bytes is told to wait (busy); the
    sweeper deletes the object and removes R; the writer then references and writes R anew.
    """
    index = store.index
    ref = store.put(DATA, 1000.0)
    tombstone, claimed = index.claim(2000.0, 100)
    assert claimed == [ref]
    assert index.expires_at(ref) == tombstone < 0
    # the writer comes now: busy, and it writes nothing
    assert index.try_reference(ref, FUTURE) is False
    assert index.expires_at(ref) == tombstone
    # a writer blocked on the claim, in a thread, goes on once the sweeper is done
    result: list[str] = []
    writer = threading.Thread(target=lambda: result.append(store.put(DATA, FUTURE)))
    writer.start()
    time.sleep(0.1)  # let it reach its busy loop; correctness does not depend on this
    assert result == []
    gone, failed = store._delete_many(claimed)
    assert (gone, failed) == ([ref], [])
    assert index.remove(tombstone, gone) == 1
    writer.join(10)
    assert result == [ref]
    assert store.read(ref) == DATA
    assert index.expires_at(ref) == pytest.approx(FUTURE)


def test_writer_before_the_claim_wins(store: ResultStore, client: Any) -> None:
    """A writer whose reference landed first makes the sweeper's claim skip the ref."""
    ref = store.put(DATA, 1000.0)
    assert store.retain(ref, FUTURE) is True
    _, claimed = store.index.claim(2000.0, 100)
    assert claimed == []
    assert store.sweep(now=2000.0) == 0
    assert store.read(ref) == DATA


def test_a_removal_after_a_new_reference_keeps_it(store: ResultStore, client: Any) -> None:
    """The sweeper's final removal touches only members still holding its tombstone."""
    ref = store.put(DATA, 1000.0)
    tombstone, claimed = store.index.claim(2000.0, 100)
    client.zadd(keys.RESULTS_EXPIRY, {ref: FUTURE})  # someone replaced the claim (as a stale takeover would)
    assert store.index.remove(tombstone, claimed) == 0
    assert store.index.expires_at(ref) == FUTURE


def test_a_dead_sweepers_claim_is_taken_over(store: ResultStore, client: Any) -> None:
    ref = store.put(DATA, 1000.0)
    server_ms = int(client.time()[0]) * 1000
    client.zadd(keys.RESULTS_EXPIRY, {ref: -(server_ms - TOMBSTONE_STALE_MS - 5000)})  # claimed 65 s ago
    # a writer takes it over at once
    assert store.retain(ref, FUTURE) is True
    assert store.index.expires_at(ref) == pytest.approx(FUTURE)
    # and a sweep takes over a dead sweeper's claim too
    other = store.put(b"other", 1000.0)
    client.zadd(keys.RESULTS_EXPIRY, {other: -(server_ms - TOMBSTONE_STALE_MS - 5000)})
    assert store.sweep(now=2000.0) == 1
    assert store.read(other) is None
    assert store.read(ref) == DATA


def test_a_busy_writer_gives_up_after_a_bounded_wait(store: ResultStore, client: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import result_store

    monkeypatch.setattr(result_store, "BUSY_WAIT_SECONDS", 0.3)
    ref = store.put(DATA, 1000.0)
    store.index.claim(2000.0, 100)  # a sweeper that never finishes
    started = time.monotonic()
    with pytest.raises(ResultStoreUnavailable):
        store.put(DATA, FUTURE)
    assert time.monotonic() - started < 2
    assert store.read(ref) == DATA  # the claim's sweeper had not deleted it yet


def test_a_failed_delete_puts_the_ref_back(store: ResultStore, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = store.put(DATA, 1000.0)
    monkeypatch.setattr(store, "_delete_many", lambda refs: ([], list(refs)))
    assert store.sweep(now=2000.0) == 0
    assert store.index.expires_at(ref) == 2000.0  # expired, not claimed: writers are not held up
    assert store.index.try_reference(ref, FUTURE) is True


def test_concurrent_put_and_sweep_never_lose_a_referenced_object(store: ResultStore) -> None:
    """Two threads, many rounds: a writer of three blobs in turn, and a sweeper sweeping all the time.

    The writer drives the expiry clock: round ``n`` sets it to ``n`` and puts blob ``n % 3`` to
    expire at ``n + 2.5``, so the blob's previous reference (from round ``n - 3``, at ``n - 0.5``)
    expires in this very round, and the sweeper may be claiming or deleting it at that moment.
    The sweeper's clock never passes ``n`` during round ``n``, so right after the put the object
    must be there, every time. Every fifth round the writer first waits for a sweep at ``n`` to end
    (so that reference is certainly deleted before the put); the other rounds race the sweeper.
    Between rounds the writer waits for the sweeper to go round once more, so it cannot outrun it.
    """
    blobs = [f"blob {n}".encode() * 50 for n in range(3)]
    rounds = 200
    clock = [0.0]
    lost: list[tuple[int, str]] = []
    stop = threading.Event()
    progress = threading.Condition()
    swept = [0, -1.0]  # sweeps done, the clock of the last one

    def sweeper() -> int:
        deleted = 0
        while not stop.is_set():
            now = clock[0]
            deleted += store.sweep(now=now)
            with progress:
                swept[0] += 1
                swept[1] = now
                progress.notify_all()
        return deleted

    def wait(what: str, done: Any) -> None:
        with progress:  # bounded: the sweeper may have died (its error is raised below)
            if not progress.wait_for(lambda: done() or sweeping.done(), timeout=30):
                raise AssertionError(f"{what}: not within 30 s")

    with ThreadPoolExecutor(1) as pool:
        sweeping = pool.submit(sweeper)
        try:
            for n in range(rounds):
                clock[0] = float(n)
                if n % 5 == 0:
                    wait(f"round {n}: a sweep at {n}", lambda n=n: swept[1] >= n)
                with progress:
                    before = swept[0]
                ref = store.put(blobs[n % len(blobs)], n + 2.5)
                if store.size(ref) is None:
                    lost.append((n, ref))
                wait(f"round {n}: the next sweep", lambda b=before: swept[0] >= b + 2)
                if sweeping.done():
                    break
        finally:
            stop.set()
        deleted = sweeping.result(30)  # re-raises what the sweeper raised
    assert not lost, f"{len(lost)} referenced object(s) missing right after their put: {lost[:5]}"
    certain = len(range(5, rounds, 5))
    assert deleted >= certain, f"the sweeper deleted {deleted} object(s); rounds that waited for it: {certain}"


def test_invalid_refs_are_refused(store: ResultStore) -> None:
    for bad in ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "", "../" + "a" * 61, "g" * 64, "a" * 63 + "\n"]:
        for call in (store.read, store.size, store.local_path):
            with pytest.raises(ValueError):
                call(bad)
        with pytest.raises(ValueError):
            store.retain(bad, FUTURE)
        with pytest.raises(ValueError):
            store.iter_range(bad)
        with pytest.raises(ValueError):
            store.presigned_url(bad, filename="x.wav", media_type="audio/wav", expires_in=60)


def test_local_path_and_presigned_url(store: ResultStore, kind: str) -> None:
    ref = store.put(DATA, FUTURE)
    if kind == "file":
        path = store.local_path(ref)
        assert path is not None and path.read_bytes() == DATA
        assert store.local_path(sha(b"gone")) is None
        assert store.presigned_url(ref, filename="a.wav", media_type="audio/wav", expires_in=60) is None
        return
    assert store.local_path(ref) is None
    url = store.presigned_url(ref, filename="my speech.wav", media_type="audio/wav", expires_in=60)
    assert url is not None
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200
    assert answer.content == DATA
    assert answer.headers["Content-Type"] == "audio/wav"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="my speech.wav"'
    url = store.presigned_url(ref, filename="ignored.wav", media_type="audio/mpeg", expires_in=60,
                              disposition="attachment; filename=\"x.mp3\"; filename*=UTF-8''%C3%A9t%C3%A9.mp3")
    assert url is not None
    answer = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert answer.status_code == 206
    assert answer.content == DATA[10:20]
    assert answer.headers["Content-Disposition"] == "attachment; filename=\"x.mp3\"; filename*=UTF-8''%C3%A9t%C3%A9.mp3"


def test_check_passes_on_a_live_store(store: ResultStore) -> None:
    store.check()
    assert "secret" not in store.url.lower() and "testing" not in store.url


def test_check_fails_quickly_on_a_dead_store(kind: str, tmp_path: Path, client: Any,
                                             store_env: dict[str, str]) -> None:
    if kind == "file":
        store = FileStore(tmp_path / "results", ExpiryIndex(client))
        store.tmp.rmdir()
        store.tmp.write_text("now tmp is a file")
    else:
        env = {**store_env, "TTS_S3_ENDPOINT_URL": f"http://127.0.0.1:{find_free_port()}"}  # nothing listens
        store = open_result_store(load_settings(env), client)
    started = time.monotonic()
    with pytest.raises(ResultStoreUnavailable):
        store.check()
    assert time.monotonic() - started < 5
    with pytest.raises(ResultStoreUnavailable):
        store.put(b"cannot land", FUTURE)


def test_stray_temporary_files_are_swept_after_an_hour(tmp_path: Path, client: Any) -> None:
    store = FileStore(tmp_path / "results", ExpiryIndex(client))
    old = store.tmp / "dead-writer"
    new = store.tmp / "live-writer"
    old.write_bytes(b"half an object")
    new.write_bytes(b"being written")
    long_ago = time.time() - TMP_MAX_AGE_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    assert store.sweep() == 0
    assert not old.exists()
    assert new.exists()


def test_open_result_store_default_is_the_data_dir(tmp_path: Path, client: Any) -> None:
    store = open_result_store(load_settings({"TTS_DATA_DIR": str(tmp_path)}), client)
    assert isinstance(store, FileStore)
    assert store.root == (tmp_path / "results").resolve()
    plain = open_result_store(load_settings({"TTS_RESULT_STORE": str(tmp_path / "plain")}), client)
    assert isinstance(plain, FileStore) and plain.root == (tmp_path / "plain").resolve()
    ref = plain.put(DATA, FUTURE)
    assert (tmp_path / "plain" / ref[:2] / ref).read_bytes() == DATA


def test_the_reconciler_sweeps_the_store_at_most_every_interval(kind: str, store_env: dict[str, str],
                                                                 redis_url: str, client: Any, tmp_path: Path) -> None:
    """The worker holding the reconcile lock sweeps the store too, once per TTS_RESULT_STORE_SWEEP_INTERVAL."""
    from tasks import reconciler
    from tasks.runtime import Runtime

    settings = load_settings({**store_env, "REDIS_URL": redis_url, "TTS_DATA_DIR": str(tmp_path),
                              "TTS_RESULT_STORE_SWEEP_INTERVAL": "600"})
    rt = Runtime(settings)
    store = rt.result_store
    expired = store.put(b"expired a second ago", time.time() - 1)
    kept = store.put(b"still wanted", FUTURE)
    assert reconciler.sweep_if_due(rt, "this-worker") is not None
    assert store.read(expired) is None
    assert store.read(kept) == b"still wanted"
    assert 590 < client.ttl(keys.RESULTS_SWEPT) <= 600
    # within the interval the next reconcile sweep leaves the store alone
    again = store.put(b"expired as well", time.time() - 1)
    reconciler.sweep(rt)
    assert store.read(again) == b"expired as well"
    client.delete(keys.RESULTS_SWEPT)  # the interval is over
    assert reconciler.sweep_results_if_due(rt) == 1
    assert store.read(again) is None
    assert reconciler.sweep_results_if_due(rt) is None


def test_a_stack_on_s3_keeps_its_audio_in_the_bucket(make_stack: Any, s3_bucket: Any) -> None:
    """A real worker (a subprocess) writes a job's audio into moto's bucket; the API streams it back,
    ranges included, and with TTS_RESULT_STORE_REDIRECT sends the client to a presigned URL instead."""
    from app import create_app

    stack = make_stack(**s3_bucket.env)
    client = stack.client
    submitted = client.post("/v1/jobs", json={"text": f"A result kept in a bucket, {uuid.uuid4().hex[:6]}.",
                                              "voice": "heart", "format": "wav", "name": "bucket"})
    assert submitted.status_code == 202, submitted.get_json()
    job_id = submitted.get_json()["id"]
    assert stack.wait_for(job_id)["status"] == "succeeded"

    whole = client.get(f"/v1/jobs/{job_id}/audio")
    assert whole.status_code == 200 and whole.mimetype == "audio/wav"
    data = whole.data
    ref = sha(data)
    assert len(data) > 10_000
    assert s3_bucket.keys() == [f"results/{ref[:2]}/{ref}"]  # the job's audio and its cache entry: one object
    assert stack.redis.zscore(keys.RESULTS_EXPIRY, ref) > time.time() + 3600
    big = [k for k in stack.redis.scan_iter(count=1000) if stack.redis.memory_usage(k) > len(data) // 2]
    assert big == [], f"audio-sized keys in Redis: {big}"

    part = client.get(f"/v1/jobs/{job_id}/audio", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206
    assert part.data == data[100:1100]

    redirecting = create_app(load_settings({**stack.env, "TTS_RESULT_STORE_REDIRECT": "1"})).test_client()
    moved = redirecting.get(f"/v1/jobs/{job_id}/audio")
    assert moved.status_code == 302
    fetched = requests.get(moved.headers["Location"], timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["Content-Type"] == "audio/wav"
    assert fetched.headers["Content-Disposition"].startswith("attachment; filename=")


def test_check_names_a_missing_bucket(s3_bucket: Any, client: Any) -> None:
    """The bucket is not created for the operator: a store in one that does not exist is unavailable."""
    env = {**s3_bucket.env, "TTS_RESULT_STORE": f"s3://{s3_bucket.name}-absent/results"}
    store = open_result_store(load_settings(env), client)
    with pytest.raises(ResultStoreUnavailable, match="absent"):
        store.check()
    with pytest.raises(ResultStoreUnavailable):
        store.put(b"nowhere to go", FUTURE)
    assert store.url == f"s3://{s3_bucket.name}-absent/results/ at {s3_bucket.endpoint}"


def test_a_broken_folder_is_unavailable_not_missing(tmp_path: Path, client: Any) -> None:
    """An error other than "no such file" (EIO, a stale NFS handle, here a file where a folder should
    be) is ResultStoreUnavailable (a 503), never "gone" (a 410) nor a bare OSError (a 500)."""
    store = FileStore(tmp_path / "results", ExpiryIndex(client))
    ref = sha(b"under a broken folder")
    (store.root / ref[:2]).write_text("a file where the folder should be")
    for call in (store.size, store.read, store.iter_range):
        with pytest.raises(ResultStoreUnavailable):
            call(ref)
    with pytest.raises(ResultStoreUnavailable):
        store.put(b"under a broken folder", FUTURE)
    assert store.local_path(ref) is None


def test_a_folder_store_that_cannot_be_created_still_opens(tmp_path: Path, client: Any) -> None:
    """The process starts; check() and writes say what is wrong."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    store = FileStore(blocker / "results", ExpiryIndex(client))
    with pytest.raises(ResultStoreUnavailable):
        store.check()
    with pytest.raises(ResultStoreUnavailable):
        store.put(b"nowhere", FUTURE)
    with pytest.raises(ResultStoreUnavailable):  # a path through a file: not "gone"
        store.read(sha(b"nowhere"))

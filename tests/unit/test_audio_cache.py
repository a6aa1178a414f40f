"""AudioCache on fakeredis with a real folder result store (round trip, entries without bytes,
objects kept alive for a hit, entry limit, LRU eviction, byte counter, TTL) and cache_key."""
from __future__ import annotations

import hashlib
import time

import fakeredis
import pytest

import tasks.cache as cache_module
from engine.exceptions import UnknownVoiceError
from settings import Settings
from tasks import keys
from tasks.cache import RETAIN_HEADROOM, AudioCache, cache_key
from tasks.job_request import JobInput
from tasks.result_store import ExpiryIndex, FileStore
from tasks.runtime import Runtime
from tasks.service import JobService

TTL = 3600


class FakeClock:
    """A clock the cache reads for its LRU scores: every call is one second later."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def time(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(cache_module, "time", fake)  # the module's `time`, read as time.time()
    return fake


class CountingStore(FileStore):
    """The folder store, counting the calls a cache hit may make."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.retains = 0
        self.puts = 0

    def retain(self, ref: str, expires_at: float) -> bool:
        self.retains += 1
        return super().retain(ref, expires_at)

    def put(self, data: bytes, expires_at: float) -> str:
        self.puts += 1
        return super().put(data, expires_at)


@pytest.fixture
def store(client, tmp_path) -> CountingStore:
    return CountingStore(tmp_path / "results", ExpiryIndex(client))


@pytest.fixture
def make(client, store):
    def build(client=client, max_bytes=1000, max_entry_bytes=100, ttl=TTL, hold=None) -> AudioCache:
        return AudioCache(client, store, ttl=ttl, max_entry_bytes=max_entry_bytes, max_bytes=max_bytes, hold=hold)
    return build


def read(cache: AudioCache, key: str) -> tuple[bytes, dict] | None:
    """What a hit serves: the stored bytes (read from the store) and the metadata."""
    hit = cache.get(key)
    if hit is None:
        return None
    data = cache.results.read(hit.ref)
    assert data is not None and len(data) == hit.size
    return data, hit.meta


def counter(client) -> int:
    return int(client.get(keys.AUDIO_BYTES) or 0)


def sizes(client) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(keys.AUDIO_SIZES).items()}


def stored_keys(client) -> set[str]:
    prefix = keys.audio("")
    index_keys = {keys.AUDIO_INDEX, keys.AUDIO_SIZES, keys.AUDIO_BYTES}
    return {k.decode()[len(prefix):] for k in client.keys(prefix + "*") if k.decode() not in index_keys}


# --- put / get -----------------------------------------------------------------------------
def test_round_trip_with_metadata(client, make):
    cache = make()
    assert cache.put("k1", b"\x00\x01audio", {"duration": 1.25, "sample_rate": 24000})
    assert read(cache, "k1") == (b"\x00\x01audio", {"duration": 1.25, "sample_rate": 24000})


def test_round_trip_without_metadata_gives_an_empty_dict(client, make):
    cache = make()
    cache.put("k1", b"abc")
    assert read(cache, "k1") == (b"abc", {})


def test_miss_is_none(client, make):
    assert make().get("nope") is None


def test_a_miss_writes_nothing(client, make):
    """get() refreshes in the same round trip as it reads: on a miss that refresh must touch nothing."""
    cache = make()
    assert cache.get("nope") is None
    assert client.zcard(keys.AUDIO_INDEX) == 0 and stored_keys(client) == set()


def test_put_counts_bytes_and_indexes_the_entry(client, make, clock):
    cache = make()
    cache.put("a", b"x" * 10)
    cache.put("b", b"y" * 25)
    assert counter(client) == 35
    assert sizes(client) == {"a": 10, "b": 25}
    assert [m.decode() for m in client.zrange(keys.AUDIO_INDEX, 0, -1)] == ["a", "b"]
    assert cache.stats() == {"entries": 2, "bytes": 35, "max_bytes": 1000}


def test_overwriting_an_entry_counts_only_the_difference(client, make):
    cache = make()
    cache.put("a", b"x" * 40)
    cache.put("a", b"y" * 15)
    assert counter(client) == 15
    assert sizes(client) == {"a": 15}
    assert read(cache, "a") == (b"y" * 15, {})
    assert cache.stats()["entries"] == 1


def test_an_entry_over_max_entry_bytes_is_not_stored(client, make):
    cache = make(max_entry_bytes=100)
    assert cache.put("big", b"x" * 101) is False
    assert cache.get("big") is None
    assert client.exists(keys.audio("big")) == 0
    assert counter(client) == 0
    assert sizes(client) == {}
    assert client.zcard(keys.AUDIO_INDEX) == 0


def test_an_entry_of_exactly_max_entry_bytes_is_stored(client, make):
    cache = make(max_entry_bytes=100)
    assert cache.put("edge", b"x" * 100) is True
    assert read(cache, "edge") == (b"x" * 100, {})


def test_delete_drops_the_entry_and_its_bytes(client, make):
    cache = make()
    cache.put("a", b"x" * 10)
    cache.put("b", b"y" * 20)
    cache.delete("a")
    assert cache.get("a") is None
    assert counter(client) == 20
    assert sizes(client) == {"b": 20}
    cache.delete("a")  # twice: nothing more to take off
    assert counter(client) == 20


# --- the bytes live in the result store ------------------------------------------------------
def test_an_entry_holds_the_ref_not_the_bytes(client, make, store):
    cache = make(max_entry_bytes=10_000, max_bytes=10_000)
    audio = bytes(range(256)) * 20
    cache.put("k", audio, {"duration": 0.5})
    entry = {k.decode(): v for k, v in client.hgetall(keys.audio("k")).items()}
    ref = hashlib.sha256(audio).hexdigest()
    assert set(entry) == {"ref", "size", "meta", "expires"}
    assert entry["ref"].decode() == ref and int(entry["size"]) == len(audio)
    assert sum(len(k) + len(v) for k, v in entry.items()) < 400 < len(audio)
    assert store.read(ref) == audio
    assert cache.get("k").ref == ref


def test_identical_audio_under_two_keys_is_stored_once(client, make, store, tmp_path):
    cache = make()
    cache.put("a", b"same bytes")
    cache.put("b", b"same bytes")
    assert cache.get("a").ref == cache.get("b").ref
    files = [f for f in (tmp_path / "results").rglob("*") if f.is_file() and f.parent.name != "tmp"]
    assert len(files) == 1


def test_a_hit_keeps_the_object_for_hold_seconds_without_a_store_call_most_of_the_time(client, make, store):
    hold = 2 * TTL
    cache = make(hold=hold)
    cache.put("a", b"x" * 10)  # stored for hold seconds already
    ref = cache.get("a").ref
    before = store.retains
    for _ in range(5):
        hit = cache.get("a")
        assert hit.expires_at >= time.time() + hold - 5
    assert store.retains == before  # the entry's ``expires`` said it lives long enough
    assert store.index.expires_at(ref) >= time.time() + hold - 5


def test_a_hit_whose_expiry_falls_short_extends_it_once_with_headroom(client, make, store):
    cache = make(hold=TTL)
    cache.put("a", b"x" * 10)
    client.hset(keys.audio("a"), "expires", repr(time.time() + 10))  # as if stored long ago
    hit = cache.get("a")
    assert store.retains == 1
    assert hit.expires_at >= time.time() + TTL * (1 + RETAIN_HEADROOM) - 5
    assert store.index.expires_at(hit.ref) >= hit.expires_at - 1  # the index says so too (ZADD GT)
    cache.get("a")
    assert store.retains == 1  # recorded: the next hit needs no call


def test_a_hit_whose_object_is_gone_is_a_miss_and_drops_the_entry(client, make, store):
    cache = make()
    cache.put("a", b"x" * 10)
    ref = cache.get("a").ref
    store.path(ref).unlink()  # swept, or the folder lost
    client.hset(keys.audio("a"), "expires", "0")  # so the hit has to ask the store
    assert cache.get("a") is None
    assert client.exists(keys.audio("a")) == 0 and counter(client) == 0 and sizes(client) == {}


def test_put_with_a_known_ref_extends_the_object_instead_of_writing_it_again(client, make, store):
    cache = make()
    ref = store.put(b"job audio", time.time() + 60)
    puts = store.puts
    cache.put("a", b"job audio", ref=ref)
    assert store.puts == puts and cache.get("a").ref == ref
    assert store.index.expires_at(ref) >= time.time() + TTL - 5


def test_put_with_a_ref_stored_long_enough_makes_no_store_call(client, make, store):
    """The worker stores a job's audio for as long as its cache entry needs (keep_until), then caches it."""
    cache = make(hold=2 * TTL)
    until = cache.keep_until()
    ref = store.put(b"job audio", until)
    puts, retains = store.puts, store.retains
    cache.put("a", b"job audio", ref=ref, expires_at=until)
    hit = cache.get("a")
    assert (store.puts, store.retains) == (puts, retains)
    assert hit.ref == ref and hit.expires_at == until


def test_put_with_a_ref_that_is_gone_stores_the_bytes(client, make, store):
    cache = make()
    ref = store.put(b"job audio", time.time() + 60)
    store.path(ref).unlink()
    cache.put("a", b"job audio", ref=ref)
    assert read(cache, "a") == (b"job audio", {})


def test_an_entry_of_the_old_layout_is_dropped(client, make):
    """An entry written before the result store (the bytes in the hash) is a miss, and goes."""
    cache = make()
    client.hset(keys.audio("old"), mapping={"audio": b"bytes in redis", "meta": "{}"})
    assert cache.get("old") is None
    assert client.exists(keys.audio("old")) == 0
    cache.put("old", b"new bytes")
    assert set(client.hkeys(keys.audio("old"))) == {b"ref", b"size", b"meta", b"expires"}


def test_eviction_drops_the_entry_and_leaves_the_object_to_its_expiry(client, make, store, clock):
    cache = make(max_bytes=100, max_entry_bytes=100)
    cache.put("a", b"a" * 60)
    ref = hashlib.sha256(b"a" * 60).hexdigest()
    cache.put("b", b"b" * 60)  # 120 > 100: "a" goes
    assert cache.get("a") is None
    assert store.read(ref) == b"a" * 60  # a job may still name it; the store's index expires it


# --- eviction ------------------------------------------------------------------------------
def test_least_recently_put_is_evicted_first(client, make, clock):
    cache = make(max_bytes=100, max_entry_bytes=100)
    for name in ("a", "b", "c"):
        cache.put(name, name.encode() * 30)
    assert counter(client) == 90
    cache.put("d", b"d" * 30)  # 120 > 100: "a" goes
    assert stored_keys(client) == {"b", "c", "d"}
    assert cache.get("a") is None
    assert counter(client) == 90
    assert sizes(client) == {"b": 30, "c": 30, "d": 30}


def test_a_get_makes_an_entry_recently_used(client, make, clock):
    cache = make(max_bytes=100, max_entry_bytes=100)
    for name in ("a", "b", "c"):
        cache.put(name, name.encode() * 30)
    assert cache.get("a") is not None  # "a" is now the most recent; "b" the least
    cache.put("d", b"d" * 30)
    assert stored_keys(client) == {"a", "c", "d"}
    assert cache.get("b") is None
    assert counter(client) == 90


def test_eviction_removes_as_many_entries_as_needed(client, make, clock):
    cache = make(max_bytes=100, max_entry_bytes=100)
    for name in "abcde":
        cache.put(name, name.encode() * 20)  # 5 x 20 = 100, at the bound
    assert counter(client) == 100 and stored_keys(client) == set("abcde")
    cache.put("f", b"f" * 70)  # 170: a, b, c, d must go (170 -> 150 -> 130 -> 110 -> 90)
    assert stored_keys(client) == {"e", "f"}
    assert counter(client) == 90
    assert sizes(client) == {"e": 20, "f": 70}
    assert [m.decode() for m in client.zrange(keys.AUDIO_INDEX, 0, -1)] == ["e", "f"]


def test_byte_counter_matches_the_entries_after_many_puts(client, make, clock):
    cache = make(max_bytes=500, max_entry_bytes=200)
    for i in range(60):
        cache.put(f"k{i % 17}", bytes(10 + (i * 37) % 150))
        assert counter(client) == sum(sizes(client).values())
        assert counter(client) <= 500
    assert set(sizes(client)) == stored_keys(client)
    assert client.zcard(keys.AUDIO_INDEX) == len(stored_keys(client))


def test_an_entry_that_expired_by_ttl_still_counts_until_evicted(client, make, clock):
    cache = make(max_bytes=50, max_entry_bytes=50)
    cache.put("old", b"o" * 30)
    client.delete(keys.audio("old"))  # what the TTL does to the entry itself
    assert cache.get("old") is None
    assert counter(client) == 30
    cache.put("new", b"n" * 30)  # 60 > 50: the expired one is evicted and its bytes taken off
    assert counter(client) == 30
    assert sizes(client) == {"new": 30}


# --- TTL --------------------------------------------------------------------------------------
def test_put_sets_the_ttl(client, make):
    cache = make(ttl=TTL)
    cache.put("a", b"x")
    assert 0 < client.ttl(keys.audio("a")) <= TTL


def test_get_refreshes_the_ttl(client, make):
    cache = make(ttl=TTL)
    cache.put("a", b"x")
    client.expire(keys.audio("a"), 5)
    assert cache.get("a") is not None
    assert client.ttl(keys.audio("a")) > TTL - 5


def test_overwrite_refreshes_the_ttl(client, make):
    cache = make(ttl=TTL)
    cache.put("a", b"x")
    client.expire(keys.audio("a"), 5)
    cache.put("a", b"y")
    assert client.ttl(keys.audio("a")) > TTL - 5


# --- cache_key ------------------------------------------------------------------------------
OPTIONS = {"voice": "heart", "speed": 1.0, "format": "mp3", "sample_rate": None, "seed": None, "markdown": False}
KEY_ARGS = ("Hello there.", OPTIONS, 24000, "hibari-tts 0.2.1")


def key(text="Hello there.", rate=24000, model="hibari-tts 0.2.1", **options):
    return cache_key(text, {**OPTIONS, **options}, rate, model)


def test_cache_key_is_a_stable_sha256():
    assert cache_key(*KEY_ARGS) == cache_key(*KEY_ARGS)
    assert len(cache_key(*KEY_ARGS)) == 64 and int(cache_key(*KEY_ARGS), 16) >= 0


@pytest.mark.parametrize("changed", [
    {"text": "Hello there!"},
    {"text": "hello there."},
    {"voice": "joe"},
    {"speed": 1.1},
    {"speed": 0.9999},
    {"format": "wav"},
    {"rate": 16000},
    {"seed": 0},
    {"seed": 1},
    {"model": "hibari-tts 0.2.2"},
])
def test_cache_key_changes_with_everything_that_changes_the_audio(changed):
    assert key(**changed) != key()


def test_cache_key_changes_with_the_engine_audio_version(monkeypatch):
    before = key()
    monkeypatch.setattr(cache_module, "ENGINE_AUDIO_VERSION", cache_module.ENGINE_AUDIO_VERSION + "-next")
    assert key() != before


@pytest.mark.parametrize("same", [
    {"name": "chapter one"},
    {"cache": False},
    {"markdown": True},  # markdown changes the normalised text, which is keyed; the flag itself is not
    {"correlation_id": "abc"},
    {"sample_rate": 16000},  # the requested rate is keyed as the output rate argument
])
def test_cache_key_ignores_fields_that_do_not_change_the_audio(same):
    assert key(**same) == key()


def test_cache_key_speed_int_and_float_agree():
    assert key(speed=1) == key(speed=1.0)


def test_cache_key_seed_none_differs_from_seed_zero():
    assert key(seed=None) != key(seed=0)


# --- cache_key as JobService.prepare computes it ---------------------------------------------------
@pytest.fixture(scope="module")
def service() -> JobService:
    runtime = Runtime(Settings(redis_url="redis://fake/0"))
    runtime.redis = fakeredis.FakeRedis()  # the cached property, set before first use
    return JobService(runtime)


def prepared_key(service, **fields):
    body = {"text": "Hello there.", "voice": "heart", **fields}
    return service.prepare(JobInput.model_validate(body).resolve())[1]


def test_prepare_key_ignores_the_name_and_the_cache_flag_is_what_disables_it(service):
    assert prepared_key(service, name="a") == prepared_key(service, name="b") == prepared_key(service)
    assert prepared_key(service, cache=False) is None


def test_prepare_key_follows_the_normalised_text(service):
    # whitespace that normalising removes does not change the audio, so not the key
    assert prepared_key(service, text="Hello   there.") == prepared_key(service)
    # Markdown markup is removed only when the request says the text is Markdown
    assert prepared_key(service, text="**Hello** there.", markdown=True) == prepared_key(service)
    assert prepared_key(service, text="**Hello** there.") != prepared_key(service)


def test_prepare_key_native_rate_equals_no_rate(service):
    # heart speaks at 24 kHz: asking for 24 kHz is the same audio as asking for nothing
    assert prepared_key(service, sample_rate=24000) == prepared_key(service)
    assert prepared_key(service, sample_rate=16000) != prepared_key(service)


@pytest.mark.parametrize("changed", [{"voice": "joe"}, {"speed": 1.2}, {"format": "wav"}, {"seed": 5},
                                     {"text": "Hello again."}])
def test_prepare_key_changes_with_audio_fields(service, changed):
    assert prepared_key(service, **changed) != prepared_key(service)


def test_prepare_key_changes_with_the_model_version(service, monkeypatch):
    before = prepared_key(service)
    monkeypatch.setattr(service.rt.catalog, "model_version", lambda voice: "hibari-tts 999")
    assert prepared_key(service) != before


def test_prepare_refuses_an_unknown_voice_before_any_key(service):
    with pytest.raises(UnknownVoiceError):
        prepared_key(service, voice="nobody")

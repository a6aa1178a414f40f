"""The result store: audio, batch zips and other large results, out of Redis memory.

Redis keeps records and small entries; the bytes live here: in a folder (the default,
``TTS_DATA_DIR/results``, or ``TTS_RESULT_STORE=/path`` / ``file:///path``) or in any
S3-compatible bucket (``TTS_RESULT_STORE=s3://bucket/prefix``). :func:`open_result_store`
picks one from the settings; both implement :class:`ResultStore`.

Reliability choices
-------------------
* **Content-addressed.** An object's name is ``<prefix>/<ref[:2]>/<ref>`` where ``ref`` is
  the SHA-256 (hex) of its bytes. Identical audio (a cache hit, a retried or superseded
  attempt) is stored once, and every write is idempotent: writing bytes that are already
  there only extends their life.
* **Atomic writes.** A reader never sees a partial object. The folder store writes
  ``<root>/tmp/<uuid>`` on the same filesystem, flushes and fsyncs it, ``os.replace``-s it onto
  the final name and fsyncs the folder (so a crash leaves either no object or the whole one);
  a write whose object already exists with the right size is skipped. An S3 PUT (or a
  multipart upload's completion) is atomic by itself. Stray temporary files of a writer
  killed mid-write are deleted by the sweep once they are an hour old.
* **Expiry by the same TTLs as before** (a job's audio by ``TTS_RESULT_TTL``, a cache entry by
  ``TTS_CACHE_TTL``). One object may be referenced by several jobs and a cache entry, so its
  expiry is the latest of theirs: the index, a sorted set in the job store's Redis
  (``tts:results:expiry``, ref -> expires_at, 156 bytes an object), only ever grows a
  score (``ZADD GT``). :meth:`ResultStore.sweep` deletes the objects whose score has passed;
  one worker runs it, from the reconciler (``tasks.reconciler``), at most every
  ``TTS_RESULT_STORE_SWEEP_INTERVAL`` seconds. Both stores keep expiry in this one index
  (the folder store could use mtimes, but one code path is one set of bugs).
* **No lost object in the sweep/write race.** A sweeper deleting an expired ref while a new
  job writes the same bytes must not leave the job pointing at nothing. Two Lua scripts
  (atomic in Redis) close it. The sweeper *claims* expired refs by replacing their score with
  a tombstone (minus the claim's time in ms, from Redis's own clock, so hosts' clocks do not
  matter), deletes the objects, then removes each member only if its score is still that
  tombstone. A writer (``put``, ``retain``) adds its reference with ``ZADD GT`` unless the
  score is a tombstone younger than :data:`TOMBSTONE_STALE_MS`; then it is *busy*, and the
  writer waits in short steps (at most :data:`BUSY_WAIT_SECONDS`) and tries again. ``put``
  makes the object visible under its final name only *after* its ``ZADD`` succeeded. So a
  writer that got through either came before the claim (which then sees a future score and
  leaves the ref alone) or after the sweeper's removal (and writes the object anew). A
  tombstone older than a minute is a dead sweeper's: a writer takes it over, and so does the
  next sweep. A delete that failed puts the ref back as expired, so writers are not held up.
  ``expires_at`` must lie in the future: a reference that is already expired protects nothing.
* **Refs are validated** (64 lowercase hex digits) before they become a path or an S3 key:
  no path traversal, no key outside the prefix.
* **Bounded waits.** The S3 client has connect/read timeouts of a few seconds and a small
  retry count, so a hung store fails a job's attempt (which is retried) instead of hanging
  a worker; :meth:`ResultStore.check` (``/health/detailed``) makes one attempt only.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import time
import unicodedata
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import boto3
import redis
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from settings import Settings

from . import keys
from .exceptions import ResultMissing, ResultStoreUnavailable
from .redis_values import text

log = logging.getLogger(__name__)

__all__ = [
    "BUSY_WAIT_SECONDS",
    "TMP_MAX_AGE_SECONDS",
    "TOMBSTONE_STALE_MS",
    "ExpiryIndex",
    "FileStore",
    "ResultStore",
    "S3Store",
    "StoredObject",
    "open_result_store",
    "validate_ref",
]

#: A ref: the SHA-256 of the object's bytes, in lowercase hex.
_REF = re.compile(r"[0-9a-f]{64}")
#: A sweeper's claim older than this is a dead sweeper's: writers and the next sweep take it over.
TOMBSTONE_STALE_MS = 60_000
#: How long a writer waits for a sweeper that holds a claim on its ref before giving up.
BUSY_WAIT_SECONDS = 5.0
#: Steps of that wait.
BUSY_STEP_SECONDS = 0.02
#: A temporary file older than this belongs to a writer that died mid-write: the sweep deletes it.
TMP_MAX_AGE_SECONDS = 3600.0
#: Refs claimed (and deleted) per round of a sweep.
SWEEP_BATCH = 500
#: Bytes read per step while hashing or copying a file.
_COPY_CHUNK = 1024 * 1024
#: S3: seconds to connect and to wait for each read, and attempts per request (botocore's standard retry
#: mode, with backoff). A hung store fails the request in well under a minute instead of hanging a worker.
S3_CONNECT_TIMEOUT = 3.0
S3_READ_TIMEOUT = 10.0
S3_MAX_ATTEMPTS = 3
#: S3: files larger than this go up as a multipart upload (which becomes visible only when complete).
S3_MULTIPART_THRESHOLD = 64 * 1024 * 1024

# KEYS[1] the index; ARGV: ref, expires_at, stale ms. 1 = referenced, 0 = busy (a live sweeper's claim).
_WRITE = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s then
  s = tonumber(s)
  if s < 0 then
    local t = redis.call('TIME')
    local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now_ms + s < tonumber(ARGV[3]) then
      return 0
    end
  end
end
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
return 1
"""

# KEYS[1] the index; ARGV: now (the expiry clock), limit, stale ms.
# Returns {tombstone, ref...}: expired refs and dead sweepers' claims, now claimed by this tombstone.
_CLAIM = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tomb = -now_ms
local refs = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (tonumber(ARGV[3]) - now_ms), ARGV[1],
                        'LIMIT', 0, tonumber(ARGV[2]))
local out = {tomb}
for i, ref in ipairs(refs) do
  redis.call('ZADD', KEYS[1], tomb, ref)
  out[#out + 1] = ref
end
return out
"""

# KEYS[1] the index; ARGV: tombstone, mode ('remove' after the delete; else a score to put back), ref...
# Only refs whose score is still this sweep's tombstone are touched; returns how many.
_RELEASE = """
local tomb = tonumber(ARGV[1])
local n = 0
for i = 3, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tomb then
    if ARGV[2] == 'remove' then
      redis.call('ZREM', KEYS[1], ARGV[i])
    else
      redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    end
    n = n + 1
  end
end
return n
"""


class StoredObject(NamedTuple):
    """An object in the store: its ref (the SHA-256 of its bytes) and its size in bytes."""

    ref: str
    size: int


def validate_ref(ref: str) -> str:
    """``ref`` itself when it is 64 lowercase hex digits; ValueError otherwise (never a path or key)."""
    if not isinstance(ref, str) or not _REF.fullmatch(ref):
        raise ValueError(f"not a result ref (64 lowercase hex digits): {ref!r:.80}")
    return ref


def _now() -> float:
    return time.time()


class ExpiryIndex:
    """The expiry index in Redis (``tts:results:expiry``) and the claim protocol (see the module docstring)."""

    def __init__(self, client: redis.Redis, key: str = keys.RESULTS_EXPIRY) -> None:
        self.redis = client
        self.key = key
        self._write = client.register_script(_WRITE)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def try_reference(self, ref: str, expires_at: float) -> bool:
        """One attempt at ``ZADD GT``; False when a live sweeper holds a claim on ``ref``."""
        return bool(self._write(keys=[self.key], args=[ref, repr(float(expires_at)), TOMBSTONE_STALE_MS]))

    def reference(self, ref: str, expires_at: float) -> None:
        """Extend ``ref``'s life to at least ``expires_at``, waiting out a sweeper's claim on it.

        Raises ResultStoreUnavailable when the claim outlasts :data:`BUSY_WAIT_SECONDS`.
        """
        deadline = time.monotonic() + BUSY_WAIT_SECONDS
        while not self.try_reference(ref, expires_at):
            if time.monotonic() >= deadline:
                raise ResultStoreUnavailable(f"result {ref}: a sweep has been deleting it for over "
                                             f"{BUSY_WAIT_SECONDS:.0f} s; try again later")
            time.sleep(BUSY_STEP_SECONDS)

    def expires_at(self, ref: str) -> float | None:
        """The ref's score (negative while a sweeper claims it), or None when it is not indexed."""
        score = self.redis.zscore(self.key, ref)
        return None if score is None else float(score)

    def claim(self, now: float, limit: int) -> tuple[int, list[str]]:
        """Claim up to ``limit`` refs expired at ``now`` (and dead sweepers' claims); (tombstone, refs)."""
        reply = self._claim(keys=[self.key], args=[repr(float(now)), max(1, limit), TOMBSTONE_STALE_MS])
        return int(reply[0]), [text(r) for r in reply[1:]]

    def remove(self, tombstone: int, refs: list[str]) -> int:
        """After their objects were deleted: remove the refs still claimed by ``tombstone``."""
        if not refs:
            return 0
        return int(self._release(keys=[self.key], args=[tombstone, "remove", *refs]))

    def put_back(self, tombstone: int, refs: list[str], expires_at: float) -> int:
        """After a failed delete: give the refs still claimed by ``tombstone`` the score ``expires_at`` again."""
        if not refs:
            return 0
        return int(self._release(keys=[self.key], args=[tombstone, repr(float(expires_at)), *refs]))


class ResultStore(ABC):
    """Where large results live (see the module docstring). Refs are SHA-256 hex of the bytes.

    Every method that takes a ref raises ValueError for one that is not 64 lowercase hex digits.
    Methods that reach the store raise ResultStoreUnavailable when it cannot be reached; the
    index's Redis errors (``redis.RedisError``) pass through as they are.
    """

    #: What the store is, for logs and ``/health/detailed`` (never credentials).
    url: str

    def __init__(self, index: ExpiryIndex) -> None:
        self.index = index

    # --- writing ----------------------------------------------------------------------------
    def put(self, data: bytes, expires_at: float) -> str:
        """Store ``data`` content-addressed; returns its ref (the SHA-256 hex of ``data``).

        Atomic (a reader never sees a partial object); writing a ref that exists only extends
        its life to ``max(current, expires_at)``. The object is written after its reference
        is in the index, so a sweep can never delete it under the caller.
        """
        ref = hashlib.sha256(data).hexdigest()
        self.index.reference(ref, expires_at)
        self._write_bytes(ref, data)
        return ref

    def put_file(self, path: Path, expires_at: float) -> str:
        """As :meth:`put`, from the file at ``path``, streamed (never read into memory whole)."""
        return self.put_file_object(path, expires_at).ref

    def put_file_object(self, path: Path, expires_at: float) -> StoredObject:
        """As :meth:`put_file`, returning the ref with the size stored."""
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while block := f.read(_COPY_CHUNK):
                digest.update(block)
                size += len(block)
        ref = digest.hexdigest()
        self.index.reference(ref, expires_at)
        self._write_file(ref, path, size)
        return StoredObject(ref, size)

    def retain(self, ref: str, expires_at: float) -> bool:
        """Extend the object's life to at least ``expires_at``; False if the object is gone."""
        validate_ref(ref)
        self.index.reference(ref, expires_at)
        return self.size(ref) is not None

    # --- reading ----------------------------------------------------------------------------
    @abstractmethod
    def size(self, ref: str) -> int | None:
        """The object's size in bytes, or None when it is gone."""

    def stat(self, ref: str) -> StoredObject | None:
        """The object's ref and size, or None when it is gone."""
        size = self.size(ref)
        return None if size is None else StoredObject(ref, size)

    @abstractmethod
    def read(self, ref: str) -> bytes | None:
        """The whole object, or None when it is gone."""

    @abstractmethod
    def iter_range(self, ref: str, start: int = 0, end: int | None = None,
                   chunk: int = 256 * 1024) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the object in chunks of at most ``chunk`` (``end`` None: to its end).

        The object is opened by the call itself, which raises ResultMissing when it is gone
        (not the first ``next``), so a caller can answer 404 before it starts a response. The
        range is clipped to the object; an empty one yields nothing. The iterator has
        ``close()`` (WSGI servers call it), which lets the object go at once.
        """

    def local_path(self, ref: str) -> Path | None:
        """The object's file, for ``send_file``: the folder store's, while it exists; None for S3."""
        validate_ref(ref)
        return None

    def presigned_url(self, ref: str, *, filename: str, media_type: str, expires_in: int,
                      disposition: str | None = None) -> str | None:
        """S3: a GET URL valid ``expires_in`` s that answers with Content-Disposition (an attachment
        named ``filename``, or ``disposition`` verbatim when given) and Content-Type ``media_type``.
        The folder store: None (it has no URL to give)."""
        validate_ref(ref)
        return None

    # --- expiry -----------------------------------------------------------------------------
    def sweep(self, now: float | None = None, limit: int = 10_000) -> int:
        """Delete the objects expired at ``now`` (default: the time), at most ``limit``; returns how many.

        Safe to run beside writers (the claim protocol in the module docstring). The folder
        store also deletes temporary files older than :data:`TMP_MAX_AGE_SECONDS`.
        """
        t = _now() if now is None else now
        deleted = 0
        while deleted < limit:
            tombstone, refs = self.index.claim(t, min(SWEEP_BATCH, limit - deleted))
            if not refs:
                break
            gone, failed = self._delete_many(refs)
            deleted += self.index.remove(tombstone, gone)
            if failed:
                self.index.put_back(tombstone, failed, t)
                log.warning("result store %s: %d expired object(s) could not be deleted; the next sweep tries again",
                            self.url, len(failed))
                break
        self._sweep_extra(t)
        if deleted:
            log.info("result store %s: deleted %d expired object(s)", self.url, deleted)
        return deleted

    def _sweep_extra(self, now: float) -> None:
        """Store-specific housekeeping after a sweep (the folder store: stray temporary files)."""
        return None

    # --- health -----------------------------------------------------------------------------
    @abstractmethod
    def check(self) -> None:
        """Raise ResultStoreUnavailable when the store cannot be reached (or written, for a folder)."""

    # --- what each store does ---------------------------------------------------------------
    @abstractmethod
    def _write_bytes(self, ref: str, data: bytes) -> None:
        """Make ``data`` the object ``ref`` atomically (skip when it is there with the right size)."""

    @abstractmethod
    def _write_file(self, ref: str, path: Path, size: int) -> None:
        """Make the file at ``path`` (``size`` bytes) the object ``ref`` atomically, streamed."""

    @abstractmethod
    def _delete_many(self, refs: list[str]) -> tuple[list[str], list[str]]:
        """Delete the objects (a missing one counts as deleted); (deleted, failed)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class _Chunks(Iterator[bytes]):
    """Bytes ``[start, end)`` of an open binary stream, in chunks; ``close()`` closes the stream."""

    def __init__(self, stream: IO[bytes] | Any, remaining: int | None, chunk: int) -> None:
        self._stream = stream
        self._remaining = remaining
        self._chunk = max(1, chunk)

    def __next__(self) -> bytes:
        if self._stream is None:
            raise StopIteration
        want = self._chunk if self._remaining is None else min(self._chunk, self._remaining)
        block: bytes = self._stream.read(want) if want > 0 else b""
        if not block:
            self.close()
            raise StopIteration
        if self._remaining is not None:
            self._remaining -= len(block)
        return block

    def close(self) -> None:
        """Let the object go (idempotent)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(ResultStore):
    """Results as files under a folder: ``<root>/<ref[:2]>/<ref>``, written through ``<root>/tmp``."""

    def __init__(self, root: Path | str, index: ExpiryIndex) -> None:
        super().__init__(index)
        self.root = Path(root).resolve()
        self.tmp = self.root / "tmp"
        self.url = self.root.as_uri()
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # not fatal here: check() reports it, and writes fail as unavailable
            log.warning("result store %s: cannot create its folder: %s", self.url, exc)

    def path(self, ref: str) -> Path:
        """Where the object ``ref`` lives (whether or not it exists)."""
        validate_ref(ref)
        return self.root / ref[:2] / ref

    def _unavailable(self, ref: str, exc: OSError) -> ResultStoreUnavailable:
        return ResultStoreUnavailable(f"result store {self.url}: cannot read {ref}: {exc}")

    def size(self, ref: str) -> int | None:
        path = self.path(ref)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:  # EIO, a stale NFS handle, a folder that is not one: not "gone"
            raise self._unavailable(ref, exc) from exc

    def read(self, ref: str) -> bytes | None:
        path = self.path(ref)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unavailable(ref, exc) from exc

    def iter_range(self, ref: str, start: int = 0, end: int | None = None,
                   chunk: int = 256 * 1024) -> Iterator[bytes]:
        path = self.path(ref)
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed by the iterator)
        except FileNotFoundError:
            raise ResultMissing(ref) from None
        except OSError as exc:
            raise self._unavailable(ref, exc) from exc
        start = max(0, start)
        if start:
            f.seek(start)
        return _Chunks(f, None if end is None else max(0, end - start), chunk)

    def local_path(self, ref: str) -> Path | None:
        path = self.path(ref)
        return path if path.is_file() else None

    def check(self) -> None:
        probe = self.tmp / f"check-{uuid.uuid4().hex}"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ResultStoreUnavailable(f"result store {self.url} cannot be written: {exc}") from exc

    def _exists_with_size(self, final: Path, size: int) -> bool:
        try:
            return final.stat().st_size == size
        except OSError:  # missing, or unreadable: write it (which says what is wrong if it cannot)
            return False

    def _write_bytes(self, ref: str, data: bytes) -> None:
        final = self.path(ref)
        if self._exists_with_size(final, len(data)):
            return
        self._install(final, lambda out: out.write(data))

    def _write_file(self, ref: str, path: Path, size: int) -> None:
        final = self.path(ref)
        if self._exists_with_size(final, size):
            return

        def copy(out: IO[bytes]) -> None:
            with open(path, "rb") as src:
                while block := src.read(_COPY_CHUNK):
                    out.write(block)

        self._install(final, copy)

    def _install(self, final: Path, fill: Any) -> None:
        """Write a temporary file with ``fill(out)``, fsync it and rename it onto ``final`` (then fsync the folder)."""
        tmp = self.tmp / uuid.uuid4().hex
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if exc.errno == errno.ENOENT and not self.root.exists():
                raise ResultStoreUnavailable(f"result store {self.url} is gone: {exc}") from exc
            raise ResultStoreUnavailable(f"result store {self.url}: could not write {final.name}: {exc}") from exc

    def _delete_many(self, refs: list[str]) -> tuple[list[str], list[str]]:
        gone: list[str] = []
        failed: list[str] = []
        for ref in refs:
            try:
                self.path(ref).unlink(missing_ok=True)
                gone.append(ref)
            except OSError as exc:
                log.warning("result store %s: could not delete %s: %s", self.url, ref, exc)
                failed.append(ref)
        return gone, failed

    def _sweep_extra(self, now: float) -> None:
        cutoff = _now() - TMP_MAX_AGE_SECONDS
        try:
            entries = list(os.scandir(self.tmp))
        except FileNotFoundError:
            return
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    log.info("result store %s: deleted %s, left by a writer that stopped mid-write",
                             self.url, entry.name)


def _attachment(filename: str) -> str:
    """``attachment`` with ``filename`` (an ASCII fallback) and, for other names, RFC 6266's ``filename*``."""
    name = "".join(c for c in filename.replace("/", "_").replace("\\", "_") if c.isprintable()) or "download"
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").replace('"', "")
    header = f'attachment; filename="{ascii_name or "download"}"'
    if ascii_name != name:
        header += "; filename*=UTF-8''" + quote(name, safe="!#$&+-.^_`|~")
    return header


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Store(ResultStore):
    """Results as objects ``<prefix><ref[:2]>/<ref>`` in an S3-compatible bucket (boto3).

    Nothing is created remotely: the bucket must exist (``check`` says so when it does not).
    With an ``endpoint_url`` (MinIO, Ceph, moto) requests use path-style addressing, and
    checksums are computed only where the operation requires them, which every S3-compatible
    service accepts. Presigned URLs name the endpoint as configured, so clients given them must
    reach it too.
    """

    def __init__(self, bucket: str, prefix: str, index: ExpiryIndex, *, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None) -> None:
        super().__init__(index)
        if not bucket:
            raise ValueError("an S3 result store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        shown = f"s3://{bucket}/{self.prefix}"
        if endpoint_url:
            parts = urlsplit(endpoint_url)
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            shown += " at " + urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.url = shown
        session = boto3.session.Session(aws_access_key_id=access_key_id or None,
                                        aws_secret_access_key=secret_access_key or None,
                                        region_name=region or None)
        config = Config(connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT,
                        retries={"total_max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
                        signature_version="s3v4",
                        s3={"addressing_style": "path"} if endpoint_url else {},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        self.client: Any = session.client("s3", endpoint_url=endpoint_url or None, config=config)
        self._session = session
        self._endpoint_url = endpoint_url or None
        self._config = config
        self._transfer = TransferConfig(multipart_threshold=S3_MULTIPART_THRESHOLD)

    @functools.cached_property
    def _probe(self) -> Any:
        """The client :meth:`check` uses: one attempt, short timeouts, so a health probe answers quickly."""
        return self._session.client("s3", endpoint_url=self._endpoint_url, config=self._config.merge(
            Config(connect_timeout=2, read_timeout=3, retries={"total_max_attempts": 1, "mode": "standard"})))

    def key(self, ref: str) -> str:
        """The object key of ``ref``."""
        validate_ref(ref)
        return f"{self.prefix}{ref[:2]}/{ref}"

    def _unavailable(self, what: str, exc: Exception) -> ResultStoreUnavailable:
        detail = f"{_error_code(exc)}: {exc}" if isinstance(exc, ClientError) else str(exc)
        return ResultStoreUnavailable(f"result store {self.url}: {what} failed: {detail}")

    def size(self, ref: str) -> int | None:
        key = self.key(ref)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise self._unavailable(f"HEAD {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(f"HEAD {key}", exc) from exc
        return int(head["ContentLength"])

    def _get(self, key: str, byte_range: str | None) -> Any:
        """The GetObject answer; None when the object is gone; ``"empty"`` for a range past its end."""
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if byte_range:
            params["Range"] = byte_range
        try:
            return self.client.get_object(**params)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _MISSING_CODES:
                return None
            if code == "InvalidRange":
                return "empty"
            raise self._unavailable(f"GET {key}", exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable(f"GET {key}", exc) from exc

    def read(self, ref: str) -> bytes | None:
        key = self.key(ref)
        answer = self._get(key, None)
        if answer is None:
            return None
        body = answer["Body"]
        try:
            return bytes(body.read())
        except BotoCoreError as exc:
            raise self._unavailable(f"GET {key}", exc) from exc
        finally:
            body.close()

    def iter_range(self, ref: str, start: int = 0, end: int | None = None,
                   chunk: int = 256 * 1024) -> Iterator[bytes]:
        key = self.key(ref)
        start = max(0, start)
        if end is not None and end <= start:  # S3 ignores a Range it cannot parse and sends everything
            if self.size(ref) is None:
                raise ResultMissing(ref)
            return iter(())
        byte_range = None
        if start or end is not None:
            byte_range = f"bytes={start}-" + ("" if end is None else str(end - 1))
        answer = self._get(key, byte_range)
        if answer is None:
            raise ResultMissing(ref)
        if answer == "empty":  # the range starts at or past the end
            return iter(())
        return _Chunks(answer["Body"], None, chunk)

    def presigned_url(self, ref: str, *, filename: str, media_type: str, expires_in: int,
                      disposition: str | None = None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self.key(ref),
                  "ResponseContentDisposition": disposition or _attachment(filename),
                  "ResponseContentType": media_type}
        try:
            return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=max(1, expires_in)))
        except BotoCoreError as exc:  # no credentials to sign with
            raise self._unavailable("presigning", exc) from exc

    def check(self) -> None:
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable(f"HEAD bucket {self.bucket}", exc) from exc

    def _write_bytes(self, ref: str, data: bytes) -> None:
        # No HEAD first: almost every put is of new audio (cache hits take retain), so asking would cost a
        # request per job to save one upload in a hundred; PUTting identical bytes again changes nothing.
        key = self.key(ref)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/octet-stream")
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable(f"PUT {key}", exc) from exc

    def _write_file(self, ref: str, path: Path, size: int) -> None:
        if self.size(ref) == size:
            return
        key = self.key(ref)
        try:
            self.client.upload_file(str(path), self.bucket, key, Config=self._transfer,
                                    ExtraArgs={"ContentType": "application/octet-stream"})
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._unavailable(f"upload of {key}", exc) from exc

    def _delete_many(self, refs: list[str]) -> tuple[list[str], list[str]]:
        by_key = {self.key(ref): ref for ref in refs}
        failed: set[str] = set()
        names = list(by_key)
        for n in range(0, len(names), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = names[n:n + 1000]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                log.warning("result store %s: could not delete %d object(s): %s", self.url, len(batch), exc)
                failed.update(by_key[k] for k in batch)
                continue
            for error in answer.get("Errors", []):
                if error.get("Code") not in _MISSING_CODES and error.get("Key") in by_key:
                    log.warning("result store %s: could not delete %s: %s", self.url, error.get("Key"),
                                error.get("Message"))
                    failed.add(by_key[error["Key"]])
        return [r for r in refs if r not in failed], [r for r in refs if r in failed]


def _file_root(url: str) -> Path:
    """The folder a ``file://`` URL or a plain path names."""
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r}: a file:// result store must be on this host")
        return Path(unquote(parts.path))
    return Path(url)


def open_result_store(settings: Settings, redis_client: redis.Redis) -> ResultStore:
    """The store ``settings.result_store_url`` names, with its expiry index in ``redis_client`` (the job store's).

    Creates nothing remote: a folder store makes its folder; an S3 store only builds its client.
    """
    url = settings.result_store_url.strip()
    index = ExpiryIndex(redis_client)
    if url.startswith("s3://"):
        parts = urlsplit(url)
        return S3Store(parts.netloc, unquote(parts.path), index, endpoint_url=settings.s3_endpoint_url or None,
                       region=settings.s3_region or None, access_key_id=settings.s3_access_key_id or None,
                       secret_access_key=settings.s3_secret_access_key or None)
    return FileStore(_file_root(url), index)

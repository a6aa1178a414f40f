"""The one place that reads the environment.

Every tunable of tts-batch is a field of :class:`Settings`, read once from environment
variables with the ``TTS_`` prefix (plus ``REDIS_URL``). Nothing else in the code base
calls ``os.environ``; everything asks :func:`get_settings`.

Defaults are documented beside each field and in ``docs/operations.md``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["Settings", "SettingsError", "child_environment", "get_settings", "load_settings", "redis_size_bytes",
           "reset_settings"]

#: OpenAI voice names mapped to local voice ids (``TTS_OPENAI_VOICES`` overrides, as JSON).
DEFAULT_OPENAI_VOICES: dict[str, str] = {
    "alloy": "heart",
    "ash": "joe",
    "ballad": "joe",
    "coral": "heart",
    "echo": "joe",
    "fable": "joe",
    "onyx": "joe",
    "nova": "heart",
    "sage": "heart",
    "shimmer": "heart",
    "verse": "joe",
    "marin": "heart",
    "cedar": "joe",
}


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


#: RabbitMQ's delivery limit beyond ``max_attempts``: returns of a message that never reached the
#: attempt counter (a worker's connection lost with prefetched messages, a Redis error that gives
#: the message back). ``tasks.lifecycle.begin_attempt`` dead-letters a job at ``max_attempts`` + 1
#: counted deliveries itself; the broker's limit is the backstop for the returns it cannot count.
BROKER_REDELIVERY_HEADROOM = 10


def _project_root() -> Path:
    return Path(__file__).resolve().parent


@dataclass(frozen=True)
class Settings:
    """All configuration, with the defaults a user sees when nothing is set."""

    # --- connections -------------------------------------------------------------------
    #: Redis for broker, job store and audio cache. Empty: start an embedded Redis.
    redis_url: str = ""
    #: Optional separate Redis for the audio cache (so the broker never evicts).
    cache_url: str = ""
    #: Where the embedded Redis keeps its append-only file.
    data_dir: str = str(_project_root() / "var")
    #: Port of the embedded Redis (0: pick a free one; default avoids a system Redis on 6379).
    embedded_redis_port: int = 6390
    #: ``appendfsync`` of the embedded Redis: ``everysec`` (a 202 survives Redis being killed;
    #: a power loss can take the last second of accepted jobs), ``always`` (it survives a power
    #: loss too, at about half the submits per second: docs/reliability.md) or ``no``.
    embedded_redis_fsync: str = "everysec"
    #: ``maxmemory`` of the embedded Redis (``noeviction``: a full Redis refuses writes loudly, it
    #: never drops a job or a queued message). The API stops admitting jobs at
    #: ``redis_memory_high_water`` of it. Audio is in the result store, not here.
    embedded_redis_maxmemory: str = "2gb"
    #: Address(es) the embedded Redis listens on, space-separated. Anything but loopback (a bridge
    #: address for workers on other hosts, ``0.0.0.0``) requires ``embedded_redis_password``.
    embedded_redis_bind: str = "127.0.0.1"
    #: ACL user of the embedded Redis when a password is set (the ``default`` user is then off).
    embedded_redis_user: str = "tts"
    #: Password of that user; empty: no ACL, and the embedded Redis may bind loopback only.
    embedded_redis_password: str = ""

    # --- broker (``tasks.celery_app``) ------------------------------------------------------
    #: Celery's broker. Empty: the Redis of the job store (``REDIS_URL`` or the embedded one), as
    #: before. ``amqp://user:password@host:5672/vhost``: RabbitMQ (quorum queues, publisher
    #: confirms); the job store, leases and cache stay in Redis whatever the broker.
    broker_url: str = ""
    #: RabbitMQ only: ``x-delivery-limit`` of the work queues, the returns of one message after which
    #: RabbitMQ dead-letters it into ``tts.dead-letter`` (and the worker fails its job). 0: derived,
    #: ``max_attempts`` + :data:`BROKER_REDELIVERY_HEADROOM`.
    broker_delivery_limit: int = 0
    #: RabbitMQ only: the server's ``consumer_timeout`` in seconds as set in ``rabbitmq.conf`` (RabbitMQ's
    #: default: 1800). It must exceed ``task_time_limit``, else RabbitMQ closes the channel of a
    #: worker running a long job; the settings refuse anything lower.
    broker_consumer_timeout: int = 1800

    # --- result store (``tasks.result_store``) ----------------------------------------------
    #: Where audio and other large results live; Redis keeps only records and small entries.
    #: Empty: the local filesystem under ``TTS_DATA_DIR/results``. A path or ``file:///path``:
    #: that folder. ``s3://bucket/prefix``: an S3-compatible bucket (boto3).
    result_store: str = ""
    #: S3 only: answer audio downloads with a 302 to a presigned URL instead of relaying the bytes.
    result_store_redirect: bool = False
    #: Seconds a presigned download URL stays valid.
    result_store_presign_seconds: int = 900
    #: S3 only: the endpoint of an S3-compatible service (MinIO, moto, Ceph); empty: AWS.
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    #: S3 credentials; empty: boto3's own chain (its environment variables, config files, an instance role).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    #: Seconds between sweeps that delete expired results from the store (one worker sweeps, in the reconciler).
    result_store_sweep_interval: int = 60

    # --- engine ------------------------------------------------------------------------
    #: Intra-op threads per model session (hibari keeps one: ``HibariBackend.max_threads``). They
    #: do not spin (``engine.backends.session_options``), so two per worker process cost nothing
    #: when every process is busy, and let a request alone use two cores: about 1.7x lower
    #: latency at concurrency 1 on 2 cores for joe (issue 12).
    onnx_threads: int = 2
    voices_dir: str = ""
    kokoro_voices: str = ""
    model_cache_dir: str = ""
    default_voice: str = "heart"
    default_format: str = "mp3"

    # --- API ---------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8354
    max_text_chars: int = 100_000
    max_batch_inputs: int = 10_000
    result_ttl: int = 24 * 3600
    api_keys: tuple[str, ...] = ()
    speech_timeout: float = 60.0
    openai_voices: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_OPENAI_VOICES))
    #: Concurrent ``/api/metrics/stream`` clients per API process; the next ones get 429. Each
    #: holds a server thread, so keep it well below one process's threads (the Procfile: 8).
    stream_max_clients: int = 4
    #: Seconds a metrics stream runs at most before it ends; the client reconnects (SSE ``retry:``).
    stream_max_seconds: int = 300
    #: Unfinished jobs the whole service admits; beyond it a submit gets 429 ``queue_full``.
    max_queued: int = 50_000
    #: Fraction of Redis ``maxmemory`` at which submits get 429 ``queue_full`` (when maxmemory is set).
    redis_memory_high_water: float = 0.9
    #: Networks per-job callbacks may reach although they are private or loopback (CIDRs, comma-separated).
    callback_allowed_networks: tuple[str, ...] = ()
    #: Seconds a callback delivery may take (connect and read each).
    callback_timeout: float = 5.0
    #: Bytes of a callback receiver's response that are read at most (the rest is dropped).
    callback_max_response_bytes: int = 65_536
    #: Concurrent streamed batch zips (``/v1/batches/<id>/result``) per API process; the next get 429.
    batch_stream_max_clients: int = 2
    #: Concurrent SSE speech answers (``stream_format: "sse"``) per API process; the next get 429.
    speech_stream_max_clients: int = 4

    # --- queue and worker --------------------------------------------------------------
    queue: str = "synthesis"
    worker_concurrency: int = 0  # 0: number of cores
    task_soft_time_limit: int = 600
    task_time_limit: int = 660
    visibility_timeout: int = 3600
    #: Seconds between sweeps that give unacknowledged messages of dead workers back to the queue.
    unacked_restore_interval: int = 10
    #: Only every Nth sweep scans Redis (kombu's throttle); interval x throttle is the sweep period.
    unacked_restore_throttle: int = 6
    #: A worker child whose peak resident memory passed this many MiB is replaced by a fresh
    #: one after its task (Celery's ``worker_max_memory_per_child``, in KiB; billiard compares
    #: the child's peak RSS, ``ru_maxrss``, not the RSS of the moment); 0: never. Measured with
    #: every bundled voice (``scripts/bench_memory.py``, docs/benchmarks.md "Worker memory"): a
    #: child holds 700 to 900 MiB between jobs, one-sentence jobs peak at about 800 MiB, and the
    #: longest run a voice allows (Kokoro at 500 tokens) peaks at 1,640 MiB in a plain process.
    #: 2,048 sits above that with room, so only a child that really grew is replaced.
    worker_max_memory_mb: int = 2048
    #: A running job holds a lease its worker renews every third of this; a lease that
    #: expires (the worker or its host died) lets the reconciler send the job again.
    lease_seconds: int = 30
    #: Seconds between reconciler sweeps (one worker at a time sweeps, under a Redis lock).
    reconcile_interval: int = 10
    chunk_fanout_chars: int = 2_000
    #: Fan-out: texts longer than ``chunk_fanout_chars`` (0: never) are split by sentence into
    #: parts of about this many characters, synthesized in parallel (the job's own task and
    #: any idle worker process) and fed in order to one encoder (``tasks.fanout``).
    fanout_part_chars: int = 1_000
    #: Longest concatenated batch audio (``concatenate``) the API builds, in seconds.
    batch_concat_max_seconds: int = 4 * 3600

    # --- retry policy ------------------------------------------------------------------
    max_attempts: int = 3
    base_delay_ms: int = 100
    max_delay_ms: int = 5_000
    exponential_base: float = 2.0
    #: Full jitter (delay drawn uniformly from 0 to the exponential cap). Off only in tests.
    retry_jitter: bool = True

    # --- cache -------------------------------------------------------------------------
    cache_ttl: int = 7 * 24 * 3600
    cache_max_entry_bytes: int = 50 * 1024 * 1024
    cache_max_bytes: int = 1024 * 1024 * 1024

    # --- testing only: never reachable from the API ---------------------------------------
    #: "transient:N" fails each job's first N attempts; "permanent" always fails;
    #: "crash" kills the worker child (SIGKILL) on every attempt; "crash_before_callback"
    #: kills it right after a job's final transition, before its callback is queued.
    fault_injection: str = ""

    # --- monitoring --------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True
    log_file: str = ""
    log_max_bytes: int = 10 * 1024 * 1024
    log_backup_count: int = 5
    exporter_port: int = 9808
    #: Address the standalone exporter binds (``0.0.0.0`` to let a Prometheus elsewhere scrape).
    exporter_host: str = "127.0.0.1"
    #: Address Flower binds (``0.0.0.0`` only behind a firewall or proxy of your own).
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str = "admin"
    #: Flower's basic-auth password. Empty: ``make up`` makes a random one on first start and
    #: keeps it in ``TTS_DATA_DIR/flower-password`` (mode 0600); there is no default password.
    flower_password: str = ""
    #: Webhook receivers; setting any requires ``webhook_secret`` (deliveries are always signed).
    webhook_urls: tuple[str, ...] = ()
    #: Key of the ``X-TTS-Signature`` HMAC; required when ``webhook_urls`` is set.
    webhook_secret: str = ""
    webhook_timeout: float = 5.0
    #: Attempts per delivery; the delivery task raises it to what 15 minutes of receiver
    #: outage need (11 with the default backoff), never lowers it.
    webhook_max_attempts: int = 11
    alert_error_rate: float = 0.05
    alert_response_time_p95_ms: float = 1000.0
    alert_queue_length: int = 1000
    alert_interval: int = 60
    #: Seconds of history the error-rate and p95 alerts look at.
    alert_window: int = 300
    #: Finished jobs needed in the window before the error-rate alert may fire.
    alert_min_jobs: int = 5
    metrics_history_max: int = 2880
    metrics_sample_interval: int = 30

    @property
    def var_dir(self) -> Path:
        """Folder for run-time state (embedded Redis data, model cache, Flower db)."""
        return Path(self.data_dir)

    @property
    def effective_redis_url(self) -> str:
        """The Redis in use for the job store, leases and cache: ``REDIS_URL``, or the embedded
        Redis that ``make up`` starts."""
        return self.redis_url or self.embedded_redis_url

    @property
    def celery_broker_url(self) -> str:
        """Celery's broker: ``TTS_BROKER_URL``, else the Redis in use (:attr:`effective_redis_url`)."""
        return self.broker_url.strip() or self.effective_redis_url

    @property
    def broker_is_amqp(self) -> bool:
        """True when the broker is RabbitMQ (``amqp://``, ``amqps://``, ``pyamqp://``)."""
        return self.celery_broker_url.startswith(AMQP_SCHEMES)

    @property
    def delivery_limit(self) -> int:
        """RabbitMQ's ``x-delivery-limit``: the setting, or ``max_attempts`` + the redelivery headroom."""
        return self.broker_delivery_limit or self.max_attempts + BROKER_REDELIVERY_HEADROOM

    @property
    def embedded_redis_url(self) -> str:
        """The URL of the embedded Redis: loopback if it listens there, else its first address;
        with ``USER:PASSWORD@`` when it has a password."""
        addresses = [a.lstrip("-") for a in self.embedded_redis_bind.split()]
        if not addresses or any(a in _WILDCARDS for a in addresses):
            host = "127.0.0.1"
        else:
            host = next((a for a in addresses if _is_loopback(a)), addresses[0])
        host = f"[{host}]" if ":" in host else host
        auth = ""
        if self.embedded_redis_password:
            auth = f"{quote(self.embedded_redis_user, safe='')}:{quote(self.embedded_redis_password, safe='')}@"
        return f"redis://{auth}{host}:{self.embedded_redis_port}/0"

    @property
    def result_store_url(self) -> str:
        """The result store in use: ``TTS_RESULT_STORE``, else ``file://`` the ``results`` folder of the data dir."""
        return self.result_store or (self.var_dir / "results").resolve().as_uri()

    @property
    def audio_cache_url(self) -> str:
        """The Redis holding the audio cache (``TTS_CACHE_URL``, else the main one)."""
        return self.cache_url or self.effective_redis_url

    @property
    def model_cache(self) -> Path:
        """Folder the Kokoro model is assembled into."""
        return Path(self.model_cache_dir) if self.model_cache_dir else self.var_dir / "models"

    @property
    def concurrency(self) -> int:
        """Worker processes: the setting, or the number of cores."""
        return self.worker_concurrency or (os.cpu_count() or 1)

    @property
    def fault(self) -> tuple[str, int]:
        """The parsed fault switch: (kind, count)."""
        raw = self.fault_injection.strip()
        if not raw:
            return ("", 0)
        kind, _, count = raw.partition(":")
        return (kind, int(count or 0))

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (for tests and sub-processes)."""
        return dataclasses.replace(self, **changes)


_ENV_NAMES: dict[str, str] = {"redis_url": "REDIS_URL"}
#: URL schemes of a RabbitMQ broker (kombu's pyamqp transport).
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")
_WILDCARDS = frozenset({"0.0.0.0", "::", "*"})


def _is_loopback(address: str) -> bool:
    """Whether ``address`` (one entry of a Redis ``bind``) is a loopback address."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _env_name(name: str) -> str:
    return _ENV_NAMES.get(name, "TTS_" + name.upper())


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = str(f.type)
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind.startswith("tuple"):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        if kind.startswith("Mapping"):
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return {str(k): str(v) for k, v in value.items()}
    except (ValueError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{_env_name(f.name)}={raw!r} is not a valid {kind}: {exc}") from exc
    return raw


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from an environment mapping (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(_env_name(f.name))
        if raw is not None:
            values[f.name] = _convert(f, raw)
    settings = Settings(**values)
    if settings.max_attempts < 1:
        raise SettingsError("TTS_MAX_ATTEMPTS must be at least 1")
    if settings.embedded_redis_fsync not in {"always", "everysec", "no"}:
        raise SettingsError("TTS_EMBEDDED_REDIS_FSYNC must be always, everysec or no")
    if settings.task_time_limit <= settings.task_soft_time_limit:
        raise SettingsError("TTS_TASK_TIME_LIMIT must exceed TTS_TASK_SOFT_TIME_LIMIT")
    if settings.visibility_timeout <= settings.task_time_limit:
        raise SettingsError("TTS_VISIBILITY_TIMEOUT must exceed TTS_TASK_TIME_LIMIT")
    if settings.lease_seconds < 3:
        raise SettingsError("TTS_LEASE_SECONDS must be at least 3 (the lease is renewed every third of it)")
    if settings.reconcile_interval < 1:
        raise SettingsError("TTS_RECONCILE_INTERVAL must be at least 1 second")
    if settings.max_delay_ms / 1000 >= settings.visibility_timeout:
        # An ETA beyond the visibility timeout makes Redis hand the task to a second worker.
        raise SettingsError("TTS_MAX_DELAY_MS must stay below TTS_VISIBILITY_TIMEOUT (seconds)")
    if settings.webhook_urls and not settings.webhook_secret.strip():
        # A worker must never send an unsigned delivery: receivers could not tell ours from a forgery.
        raise SettingsError(
            "TTS_WEBHOOK_URLS is set but TTS_WEBHOOK_SECRET is empty: webhook deliveries are always signed. "
            "Set TTS_WEBHOOK_SECRET to a long random string (python -c 'import secrets; "
            "print(secrets.token_hex(32))') and give it to the receivers, or unset TTS_WEBHOOK_URLS")
    for entry in settings.callback_allowed_networks:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:  # an entry that allowed nothing would fail every callback it was meant for
            raise SettingsError(f"TTS_CALLBACK_ALLOWED_NETWORKS: {entry!r} is not a network (a CIDR such as "
                                f"10.20.0.0/16 or fd12:3456::/48, comma-separated): {exc}") from None
    if settings.webhook_max_attempts < 1:
        raise SettingsError("TTS_WEBHOOK_MAX_ATTEMPTS must be at least 1")
    if settings.worker_max_memory_mb < 0:
        raise SettingsError("TTS_WORKER_MAX_MEMORY_MB must be 0 (no limit) or a size in MiB")
    for name in ("stream_max_clients", "stream_max_seconds", "batch_stream_max_clients", "speech_stream_max_clients"):
        if getattr(settings, name) < 1:
            raise SettingsError(f"{_env_name(name)} must be at least 1")
    maxmemory = redis_size_bytes(settings.embedded_redis_maxmemory)
    if maxmemory is None:
        raise SettingsError("TTS_EMBEDDED_REDIS_MAXMEMORY must be a size such as 2gb, 512mb or 0 (no limit)")
    # TTS_CACHE_MAX_BYTES bounds audio in the result store, not in Redis (an entry there is a few hundred
    # bytes), so it is no longer held to a share of the embedded Redis's maxmemory.
    store = settings.result_store.strip()
    if store and "://" in store and not store.startswith(("file://", "s3://")):
        raise SettingsError(f"TTS_RESULT_STORE={store!r}: give a folder, file:///folder or s3://bucket/prefix")
    if store.startswith("s3://") and not store[len("s3://"):].split("/", 1)[0]:
        raise SettingsError(f"TTS_RESULT_STORE={store!r} names no bucket: s3://bucket/prefix")
    if settings.result_store_redirect and not store.startswith("s3://"):
        raise SettingsError("TTS_RESULT_STORE_REDIRECT needs an s3:// TTS_RESULT_STORE (a folder has no URL to send)")
    if settings.result_store_presign_seconds < 1 or settings.result_store_sweep_interval < 1:
        raise SettingsError("TTS_RESULT_STORE_PRESIGN_SECONDS and TTS_RESULT_STORE_SWEEP_INTERVAL must be at least 1")
    if settings.max_queued < 1:
        raise SettingsError("TTS_MAX_QUEUED must be at least 1")
    if not 0.1 <= settings.redis_memory_high_water <= 1.0:
        raise SettingsError("TTS_REDIS_MEMORY_HIGH_WATER must be between 0.1 and 1.0")
    broker = settings.broker_url.strip()
    if broker and not broker.startswith((*AMQP_SCHEMES, "redis://", "rediss://", "unix://")):
        raise SettingsError(f"TTS_BROKER_URL must be an amqp:// (RabbitMQ) or redis:// URL, not {broker.split(':')[0]!r}")
    if broker and not settings.broker_is_amqp and broker != settings.effective_redis_url:
        # Queue lengths (health, metrics, alerts) and the reconciler's "queued with no message" check read
        # kombu's lists in the job store's Redis: on another Redis they would find none and send jobs again.
        raise SettingsError("TTS_BROKER_URL names a Redis other than the job store's; that is not supported "
                            "(queue lengths and the reconciler read the job store's Redis): leave it empty to "
                            "use REDIS_URL, or give an amqp:// RabbitMQ (docs/scaling.md)")
    if settings.broker_delivery_limit < 0:
        raise SettingsError("TTS_BROKER_DELIVERY_LIMIT must be 0 (derived from TTS_MAX_ATTEMPTS) or at least 1")
    if settings.broker_is_amqp and settings.broker_consumer_timeout <= settings.task_time_limit:
        # RabbitMQ would close the channel of a worker whose job runs longer, and redeliver the job meanwhile.
        raise SettingsError(f"TTS_BROKER_CONSUMER_TIMEOUT ({settings.broker_consumer_timeout} s, RabbitMQ's "
                            f"consumer_timeout) must exceed TTS_TASK_TIME_LIMIT ({settings.task_time_limit} s): raise "
                            "consumer_timeout in rabbitmq.conf (docs/operations.md) and this setting with it")
    bind = [a.lstrip("-") for a in settings.embedded_redis_bind.split()]
    if not settings.redis_url and not all(_is_loopback(a) for a in bind or [""]) and not settings.embedded_redis_password:
        # An open Redis on a network is a remote shell (CONFIG SET dir + SAVE writes files anywhere).
        raise SettingsError(f"TTS_EMBEDDED_REDIS_BIND={settings.embedded_redis_bind!r} reaches beyond loopback: "
                            "set TTS_EMBEDDED_REDIS_PASSWORD (a long random string) too, or bind 127.0.0.1")
    if any(c.isspace() for c in settings.embedded_redis_password) or not settings.embedded_redis_user.strip() or \
            any(c.isspace() for c in settings.embedded_redis_user) or settings.embedded_redis_user == "default":
        raise SettingsError("TTS_EMBEDDED_REDIS_PASSWORD may hold no whitespace, and TTS_EMBEDDED_REDIS_USER must be "
                            "a name without whitespace other than 'default'")
    if not settings.flower_host.strip():
        raise SettingsError("TTS_FLOWER_HOST must name an address, e.g. 127.0.0.1")
    if not settings.flower_user or any(c in settings.flower_user for c in ":,") or "," in settings.flower_password:
        # Flower takes the login as user:password and splits a list of them at commas.
        raise SettingsError("TTS_FLOWER_USER must be set and hold no ':' or ',', and TTS_FLOWER_PASSWORD no ','")
    return settings


def redis_size_bytes(value: str) -> int | None:
    """Bytes of a Redis memory size (``2gb``, ``512mb``, ``100000``, as ``redis.conf`` reads them: ``gb``
    is 1024**3, ``g`` 10**9); None when it is not one."""
    units = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}
    raw = value.strip().lower()
    digits = raw.rstrip("kmgb")
    unit = raw[len(digits):]
    if not digits.isdigit() or unit not in units:
        return None
    return int(digits) * units[unit]


def child_environment(inherit_settings: bool = True, **overrides: str) -> dict[str, str]:
    """The environment for a child process (worker, API, benchmark run): this process's
    environment, without the ``TTS_*``/``REDIS_URL`` settings unless ``inherit_settings``,
    plus ``overrides``. The one other place, besides :func:`load_settings`, that reads it."""
    env = {k: v for k, v in os.environ.items()
           if inherit_settings or not (k.startswith("TTS_") or k == "REDIS_URL")}
    env.update(overrides)
    return env


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first call."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def reset_settings(settings: Settings | None = None) -> Settings:
    """Replace (or re-read) the process-wide settings. For entry points and tests."""
    global _current
    _current = settings if settings is not None else load_settings()
    return _current

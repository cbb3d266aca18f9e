"""One settings object, read once from the environment at the edge.

`Settings.from_env()` is the only code in taskbus that reads `os.environ` for its own
settings; everything else receives a `Settings`. (`http.gunicorn.install` passes the thread count on
to the functions-framework CLI's gunicorn, which reads its own `THREADS`.)
Units are in the names (`_s`, `_ms`, `_bytes`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from taskbus.errors import ConfigError
from taskbus.task import NAME_RE
from taskbus.webhooks import Source, sources_from_env

_CUSTOM = {"env": "custom"}  # fields read by their own rules below, not by name


@dataclasses.dataclass(frozen=True)
class Settings:
    redis_url: str = dataclasses.field(default="redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    key_prefix: str = "taskbus"
    log_level: str = "INFO"
    # Redis client: bounded so a dead server surfaces in about a second, never 14 s.
    redis_connect_timeout_s: float = 0.5
    redis_socket_timeout_s: float = 0.8
    redis_retries: int = 1
    redis_max_connections: int = 64
    # 202 only once Redis has fsynced the task to its AOF (WAITAOF): a Redis crash cannot lose
    # an acknowledged task. Costs up to ~0.1 s per enqueue with `appendfsync everysec`.
    enqueue_fsync: bool = False
    # Redis Cluster: REDIS_URL is a seed node (or use redis+cluster://host:port[,host:port...]).
    # ENQUEUE_REPLICAS=N: a 202 only once N replicas of the node that took the task have it (WAIT N).
    redis_cluster: bool = False
    enqueue_replicas: int = 0
    # HTTP: where each function listens (PORT, set by Cloud Run, wins) and how many threads serve it
    host: str = "127.0.0.1"
    port: int = 0
    enqueue_port: int = 8080
    status_port: int = 8081
    web_workers: int = 0  # gunicorn worker processes per function; 0: one per CPU
    # Threads are cheap while idle; many keep slow clients (slow-loris) from starving the rest.
    enqueue_threads: int = 128
    status_threads: int = 128  # each long-poll holds a thread for up to MAX_WAIT_S
    body_timeout_s: float = 10.0  # a body must arrive within this long (408 otherwise)
    max_body_bytes: int = 1024 * 1024
    max_wait_s: float = 60.0
    status_base_url: str = ""  # where the status function is reachable, for status_url; empty: relative links
    retry_after_s: int = 1
    # Access control: bearer keys for /tasks and /enqueue (API_KEYS, or API_KEYS_FILE); unset = open
    api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False, metadata=_CUSTOM)
    # Webhooks: WEBHOOK_SOURCES and WEBHOOK_<SOURCE>_* (see taskbus/webhooks.py)
    webhooks: tuple[Source, ...] = dataclasses.field(default=(), repr=False, metadata=_CUSTOM)
    webhook_tolerance_s: float = 300.0
    webhook_dedupe_ttl_s: int = 24 * 3600
    # Task defaults and retention
    default_max_attempts: int = 5
    default_timeout_s: float = 300.0
    result_ttl_s: int = 24 * 3600
    pending_ttl_s: int = 7 * 24 * 3600
    idempotency_ttl_s: int = 24 * 3600
    # Worker
    queues: tuple[str, ...] = ("default",)
    consumer_group: str = "taskbus"
    concurrency: int = 8
    lease_s: float = 30.0
    grace_s: float = 8.0
    block_ms: int = 500
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    handlers: str = "worker_fn.handlers"
    consumer_name: str = ""  # empty: derived from host name and pid
    unknown_type_grace_s: float = 600.0  # a task no live worker has a handler for fails after this long
    cancel_grace_s: float = 10.0  # a cancelled running task ends `cancelled` this long after the request at the latest
    priority_max_delay_s: float = 60.0  # priorities delay no task more than this beyond its FIFO turn
    # Operators: dead letters keep the task (payload included) this long, beyond RESULT_TTL_S, for re-drives
    dead_ttl_s: int = 14 * 24 * 3600
    dead_max: int = 100_000  # dead letters kept per queue (oldest dropped first, counted as evicted)
    recent_max: int = 10_000  # per-queue index of recently finished tasks (the console's `finished` list)
    redrive_rate: float = 50.0  # tasks/s a re-drive moves when it names no rate
    # The console function: ADMIN_KEYS (or ADMIN_KEYS_FILE) of `label:key` (or bare keys), required
    # unless CONSOLE_READ_ONLY; CONSOLE_REDACT lists payload field paths shown as "***"
    admin_keys: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False, metadata=_CUSTOM)
    console_read_only: bool = False
    console_port: int = 8082
    console_redact: tuple[str, ...] = ()
    # Channel: Redis Streams, or Kafka (CHANNEL=kafka; Redis then holds the task state only)
    channel: str = "redis"
    kafka_bootstrap_servers: str = ""
    kafka_topic_prefix: str = "taskbus"
    kafka_partitions: int = 6  # partitions of each topic taskbus creates (the most workers a queue can use)
    kafka_replication_factor: int = -1  # -1: the broker's default
    kafka_session_timeout_ms: int = 10000  # how long a SIGKILLed worker keeps its partitions
    kafka_max_poll_interval_ms: int = 300000  # a worker that stops polling this long leaves its group
    kafka_fetch_wait_ms: int = 100  # longest a fetch waits at the broker: a pickup-latency floor on some brokers
    kafka_produce_timeout_s: float = 5.0  # an unacknowledged enqueue becomes a 503 after this long
    kafka_outbox_age_s: float = 30.0  # a task still unpublished after this long is re-published
    kafka_redeliver_s: float = 300.0  # a published task still not started after this long is published again
    kafka_security_protocol: str = ""
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = dataclasses.field(default="", repr=False)
    kafka_ssl_ca_location: str = ""
    # Telemetry, traces and logs: tracing is on when either OTEL_ variable below is set (the SDK reads
    # its other OTEL_* variables itself); GOOGLE_CLOUD_PROJECT names the project in log lines' trace field
    otel_exporter_otlp_endpoint: str = dataclasses.field(default="", repr=False)  # a URL may carry a token
    otel_traces_exporter: str = ""  # otlp (the default once the endpoint is set), console, or none (off)
    otel_service_name: str = ""  # empty: taskbus-<service>, e.g. taskbus-enqueue
    google_cloud_project: str = ""
    # Metrics: a worker serves /metrics (and /healthz) on PORT, else on METRICS_PORT when that is set;
    # `taskbus serve` runs prometheus_client's multiprocess mode in PROMETHEUS_MULTIPROC_DIR (empty: a temp dir)
    metrics_port: int = 0
    prometheus_multiproc_dir: str = dataclasses.field(default="", metadata=_CUSTOM)  # prometheus_client's own name

    @property
    def cluster(self) -> bool:
        """Whether REDIS_URL names (a seed node of) a Redis Cluster."""
        return self.redis_cluster or urlsplit(self.redis_url).scheme.endswith("+cluster")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default `os.environ`); unknown names are ignored."""
        env = os.environ if env is None else env
        changes: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            if field.metadata.get("env") == "custom":
                continue
            raw = env.get(field.name.upper())
            if raw is None or raw == "":
                continue
            changes[field.name] = _convert(field.name, field.type, raw)
        changes["api_keys"] = _api_keys(env)
        changes["admin_keys"] = _admin_keys(env)
        changes["webhooks"] = sources_from_env(env)
        changes["prometheus_multiproc_dir"] = env.get("PROMETHEUS_MULTIPROC_DIR", "")
        settings = cls(**changes)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse settings that would make the system unsafe rather than fail later. Each
        message names the variable, its value and what is expected: it is all an operator sees."""
        if self.log_level.upper() not in LOG_LEVELS:
            raise _bad("LOG_LEVEL", self.log_level, f"one of {', '.join(LOG_LEVELS)}")
        self._check_redis_url()
        for name in ("port", "enqueue_port", "status_port", "console_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise _bad(name.upper(), getattr(self, name), "a TCP port, 1-65535")
        _at_least(self, 0, "web_workers")
        _at_least(self, 1, "enqueue_threads", "status_threads", "concurrency", "max_body_bytes", "block_ms",
                  "redis_max_connections", "kafka_partitions")
        _at_least(self, 0, "redis_retries", "enqueue_replicas")
        _above_zero(self, "redis_connect_timeout_s", "redis_socket_timeout_s", "lease_s", "body_timeout_s",
                    "max_wait_s", "backoff_max_s", "kafka_produce_timeout_s")
        _at_least(self, 0, "grace_s", "backoff_base_s", "unknown_type_grace_s", "cancel_grace_s")
        _at_least(self, 1, "dead_ttl_s", "dead_max", "recent_max")
        _above_zero(self, "redrive_rate", "priority_max_delay_s")
        if self.block_ms / 1000 >= self.redis_socket_timeout_s:
            raise _bad("BLOCK_MS", self.block_ms,
                       f"below REDIS_SOCKET_TIMEOUT_S in ms ({self.redis_socket_timeout_s * 1000:g})")
        if not 1 <= self.default_max_attempts <= 100:
            raise _bad("DEFAULT_MAX_ATTEMPTS", self.default_max_attempts, "an integer 1-100")
        if not 0 < self.default_timeout_s <= 86400:
            raise _bad("DEFAULT_TIMEOUT_S", self.default_timeout_s, "a number of seconds in (0, 86400]")
        if self.channel not in CHANNELS:
            raise _bad("CHANNEL", self.channel, " or ".join(CHANNELS))
        if self.channel == "kafka" and not self.kafka_bootstrap_servers:
            raise ConfigError("KAFKA_BOOTSTRAP_SERVERS is empty: expected host:port[,host:port...] with CHANNEL=kafka")
        if self.kafka_outbox_age_s <= self.kafka_produce_timeout_s:
            raise _bad("KAFKA_OUTBOX_AGE_S", self.kafka_outbox_age_s,
                       f"more than KAFKA_PRODUCE_TIMEOUT_S ({self.kafka_produce_timeout_s:g})")
        if self.kafka_redeliver_s <= self.kafka_outbox_age_s:
            raise _bad("KAFKA_REDELIVER_S", self.kafka_redeliver_s,
                       f"more than KAFKA_OUTBOX_AGE_S ({self.kafka_outbox_age_s:g})")
        if self.otel_traces_exporter not in TRACES_EXPORTERS:
            raise _bad("OTEL_TRACES_EXPORTER", self.otel_traces_exporter, " or ".join(TRACES_EXPORTERS[1:]))
        if not self.queues:
            raise _bad("QUEUES", "", "comma-separated queue names")
        for queue in self.queues:
            if not NAME_RE.fullmatch(queue):
                raise _bad("QUEUES", ",".join(self.queues), "comma-separated names of 1-128 characters of "
                           "A-Z a-z 0-9 _ . : -")

    def _check_redis_url(self) -> None:
        if urlsplit(self.redis_url).scheme not in REDIS_SCHEMES:
            raise _bad("REDIS_URL", mask_url(self.redis_url),
                       "redis://[[user]:password@]host[:port][/db], rediss://... or unix:///path/to/socket")
        if not self.cluster:
            return
        parts = urlsplit(self.redis_url)
        seeds = parts.netloc.rpartition("@")[2].split(",")
        if (parts.scheme.startswith("unix") or parts.path not in ("", "/", "/0") or "db=" in parts.query
                or not all(re.fullmatch(r"[^:\s]+(:\d{1,5})?", seed) for seed in seeds)):
            raise _bad("REDIS_URL", mask_url(self.redis_url), "redis[s][+cluster]://[[user]:password@]host[:port]"
                       "[,host[:port]...] with db 0 (a Redis Cluster has only db 0)")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
CHANNELS = ("redis", "kafka")
TRACES_EXPORTERS = ("", "otlp", "console", "none")
_EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false (or 1/0, yes/no, on/off)"}


def _show(value: object) -> str:
    """A value as the operator wrote it: `-1`, not `-1.0`."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _bad(variable: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{variable}={_show(value)!r} is invalid: expected {expected}")


def _at_least(settings: Settings, low: int, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if value < low:
            kind = "an integer" if isinstance(value, int) else "a number"
            raise _bad(name.upper(), value, f"{kind} >= {low}")


def _above_zero(settings: Settings, *names: str) -> None:
    for name in names:
        if getattr(settings, name) <= 0:
            raise _bad(name.upper(), getattr(settings, name), "a number > 0")


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***` (in the authority and in a `password=` query):
    URLs are named in errors and logs, secrets never."""
    netloc = urlsplit(url).netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        url = url.replace(netloc, f"{user}:***@{host}" if sep else f"***@{host}", 1)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def _api_keys(env: Mapping[str, str], name: str = "API_KEYS") -> tuple[str, ...]:
    raw = env.get(name, "")
    if env.get(f"{name}_FILE"):
        try:
            with open(env[f"{name}_FILE"], encoding="utf-8") as f:
                raw = f.read()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={env[f'{name}_FILE']!r} cannot be read ({exc.strerror}): "
                              "expected a readable file of keys, one per line") from None
    return tuple(k.strip() for k in raw.replace("\n", ",").split(",") if k.strip())


def _admin_keys(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """ADMIN_KEYS entries as (label, key): `label:key`, or a bare key labelled `key<n>` by its
    position. The label names the operator in audit trails; the key is never logged."""
    keys = []
    for n, entry in enumerate(_api_keys(env, "ADMIN_KEYS"), start=1):
        label, sep, key = entry.partition(":")
        if not sep:
            label, key = f"key{n}", entry
        if not key or not NAME_RE.fullmatch(label):
            raise ConfigError(f"ADMIN_KEYS entry {n} is invalid: expected label:key (label of A-Z a-z 0-9 _ . -) "
                              "or a bare key")
        keys.append((label, key))
    return tuple(keys)


def _convert(name: str, type_name: object, raw: str) -> object:
    kind = str(type_name)
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError:
        raise _bad(name.upper(), raw, _EXPECTED.get(kind, kind)) from None

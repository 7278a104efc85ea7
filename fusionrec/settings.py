"""One frozen settings object for every fusionrec process.

Every key is read from a ``FUSIONREC_<KEY>`` environment variable (or a ``.env`` file), validated when the
process starts, and documented in ``docs/configuration.md`` (a test keeps that file and this class in step).
This module is also the single place that turns the settings into client configurations: librdkafka dicts for
confluent-kafka and keyword arguments for aiokafka/Faust, so broker quirks (Tansu needs a short session timeout
and a short fetch wait) are tuned here and nowhere else.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "get_settings", "load_settings", "redact_url"]

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fusionrec"


class SettingsError(ValueError):
    """Settings failed validation; the message lists every offending ``FUSIONREC_*`` variable."""


class Settings(BaseSettings):
    """fusionrec configuration. Field descriptions are the documentation; see ``docs/configuration.md``."""

    model_config = SettingsConfigDict(
        env_prefix="FUSIONREC_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- Kafka -----------------------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:19092",
        description="Comma-separated host:port list of the Kafka cluster. The embedded broker listens on the "
        "first entry when `fusionrec up` starts it.",
    )
    kafka_client_id: str = Field("fusionrec", description="client.id prefix sent to the brokers.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="security.protocol for every Kafka client."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL username.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never printed).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) that signs the brokers' certificates.")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Password of the client key (never printed).")
    kafka_session_timeout_ms: int = Field(
        6000, ge=1000, le=300_000,
        description="Consumer-group session timeout. Group joins take about half of it on Tansu, so keep it short.",
    )
    kafka_heartbeat_interval_ms: int = Field(1000, ge=100, le=60_000, description="Consumer heartbeat interval.")
    kafka_fetch_wait_max_ms: int = Field(
        50, ge=10, le=5000,
        description="Longest a fetch waits for data. Tansu sleeps about half of it even when data is there; "
        "50 gives ~15 ms p50 / ~45 ms p99 end to end.",
    )
    kafka_linger_ms: int = Field(
        5, ge=0, le=1000,
        description="Producer batching delay. Tansu slows down with many small batches: keep it >= 5.",
    )
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="Producer compression codec."
    )
    kafka_idempotence: bool = Field(
        True,
        description="Use the idempotent producer (no duplicates from retries on real Kafka). Consumers dedupe by "
        "event_id either way, so turning it off trades duplicates for the Tansu crash case in docs/tansu.md.",
    )
    kafka_replication_factor: int = Field(1, ge=1, le=16, description="Replication factor for topics we create.")

    # --- Topics ----------------------------------------------------------------------------------------------
    topic_events: str = Field("fusionrec-events", description="The shop's events (contract v1), keyed by user_id.")
    topic_dead_letter: str = Field(
        "fusionrec-dead-letter", description="Rejected events with the original bytes and the reasons."
    )
    topic_recommendations: str = Field(
        "recommendations", description="Fused recommendation lists, compacted, keyed by user_id."
    )
    topic_snapshots: str = Field(
        "fusionrec-model-snapshots", description="Internal: model snapshots, compacted, keyed by model name."
    )
    events_partitions: int = Field(6, ge=1, le=1024, description="Partitions of the events topic.")
    dead_letter_partitions: int = Field(1, ge=1, le=1024, description="Partitions of the dead-letter topic.")
    recommendations_partitions: int = Field(6, ge=1, le=1024, description="Partitions of the recommendations topic.")

    # --- Redis -----------------------------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL; rediss:// for TLS. A password in the URL is redacted in every output.",
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password, if not in the URL (never printed)."
    )
    redis_ssl_ca_certs: Path | None = Field(None, description="CA bundle for rediss:// connections.")

    redis_prefix: str = Field("fr:", min_length=1, max_length=64,
                              description="Prefix of every Redis key fusionrec writes (one namespace per deployment).")

    # --- Profiles and deduplication --------------------------------------------------------------------------
    profile_ttl_s: int = Field(30 * 24 * 3600, ge=60, description="A profile expires this long after its last event.")
    profile_recent_items: int = Field(20, ge=1, le=1000, description="Recent items kept per profile.")
    profile_bought_items: int = Field(50, ge=1, le=10_000, description="Bought items kept per profile (filtering).")
    profile_categories: int = Field(10, ge=1, le=1000, description="Category affinities kept per profile.")
    dedup_window_s: int = Field(
        3600, ge=60,
        description="How long an applied event_id is remembered: a duplicate arriving later than this after the "
        "original's bucket was last written is applied again (redeliveries at the same offset are always caught).",
    )
    dedup_bucket_s: int = Field(60, ge=1, le=86_400, description="Width of one dedup bucket, by event time.")

    # --- Stream worker ---------------------------------------------------------------------------------------
    worker_group: str = Field("fusionrec-worker", description="Faust app id, which is the consumer group id.")
    worker_max_batch: int = Field(5000, ge=1, le=100_000, description="Most records fetched and processed at once.")
    worker_web_port: int = Field(6066, ge=0, le=65535, description="Port of Faust's web server (health, stats).")
    worker_web_bind: str = Field("127.0.0.1", description="Address Faust's web server binds to.")
    snapshot_interval_s: float = Field(
        10.0, gt=0, description="How often each partition's model state is snapshotted to Redis (offsets are "
        "committed up to the snapshot, so this bounds the replay after a crash).",
    )
    model_max_idle_s: int = Field(
        7 * 24 * 3600, ge=60, description="Models evict users and items idle longer than this (event time).",
    )

    # --- Fusion and ranking ----------------------------------------------------------------------------------
    ranker_interval_ms: int = Field(
        200, ge=10, le=600_000,
        description="How often the ranker refreshes the lists of users whose state changed since the last refresh "
        "(start to start; a list waits up to this long, plus the ranking, after its user's event was processed).",
    )
    ranker_k: int = Field(20, ge=1, le=1000, description="Items per published list.")
    ranker_candidates: int = Field(50, ge=1, le=10_000, description="Candidates each source proposes per user.")
    ranker_category_cap: int = Field(
        0, ge=0, le=1000, description="Most items of one category in a list (diversity; 0: no cap). A cap costs "
        "hit rate where shoppers browse within one category (see docs/evaluation.md).",
    )
    ranker_normalise: Literal["max", "rank"] = Field(
        "rank", description="How each source's scores are brought to one scale before fusion: max (divide by the "
        "user's best score from that source) or rank (the DCG discount of the candidate's position).",
    )
    ranker_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the ranker's tensors live: auto picks CUDA when available, else CPU.",
    )
    ranker_threads: int = Field(
        1, ge=0, le=1024,
        description="torch threads of a worker's ranker on the CPU (0: torch's default, one per core). Workers "
        "scale out one per core; a second thread contends with the broker, Redis and the worker's own threads and "
        "made refreshes slower, not faster, on a 2-core machine.",
    )
    recommendations_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="The serving copy of a list in Redis expires this long after it was made.",
    )
    fusion_epsilon: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Share of lists served with exploring weights (one source boosted, chosen uniformly).",
    )
    fusion_half_life_s: float = Field(
        86_400.0, gt=0, description="Bandit rewards and exposures halve after this long (event time): tracks drift.",
    )
    fusion_new_user_events: int = Field(
        5, ge=1, description="A user with fewer events than this is in the `new` segment, else `returning`.",
    )
    fusion_holdout: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Fraction of users (by a hash of user_id) served with fixed equal weights instead of the "
        "bandit's: a live A/B of learned against fixed fusion.",
    )

    # --- Events ----------------------------------------------------------------------------------------------
    max_event_bytes: int = Field(16_384, ge=256, le=1_048_576, description="Events larger than this are rejected.")
    max_future_skew_ms: int = Field(
        3_600_000, ge=0, description="Events stamped further than this in the future are rejected."
    )

    # --- Processes and ports ---------------------------------------------------------------------------------
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Where `fusionrec up` keeps PID files, logs and embedded-service data "
        "(default $XDG_STATE_HOME/fusionrec or ~/.local/state/fusionrec).",
    )
    broker_storage: Literal["memory", "s3"] = Field(
        "memory",
        description="Embedded broker storage: memory (lost on restart) or s3 (kept in an S3 server; see "
        "broker_s3_endpoint).",
    )
    broker_s3_endpoint: str | None = Field(
        None,
        description="S3 endpoint for broker_storage=s3. Unset: `fusionrec up` starts a local moto server (state "
        "survives broker crashes, not the moto process). Set it to a real S3/MinIO for durable storage.",
    )
    broker_s3_bucket: str = Field("tansu", description="Bucket that holds the embedded broker's data.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: off).")
    metrics_bind: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts:
            raise ValueError("must list at least one host:port")
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{host!r} is not host:port")
        return ",".join(hosts)

    @field_validator("topic_events", "topic_dead_letter", "topic_recommendations", "topic_snapshots")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value) or value in {".", ".."}:
            raise ValueError(f"{value!r} is not a legal Kafka topic name (letters, digits, '.', '_', '-')")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL"):
            missing = [
                name for name, val in (
                    ("FUSIONREC_KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                    ("FUSIONREC_KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                    ("FUSIONREC_KAFKA_SASL_PASSWORD", self.kafka_sasl_password),
                ) if val is None
            ]
            if missing:
                raise ValueError(f"security protocol {self.kafka_security_protocol} needs {', '.join(missing)}")
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError("kafka_heartbeat_interval_ms must be at most a third of kafka_session_timeout_ms")
        return self

    def __repr_args__(self):
        """repr()/str() show the redacted values, so a logged Settings never leaks a URL's password."""
        yield from self.redacted().items()

    # --- derived values --------------------------------------------------------------------------------------
    @property
    def bootstrap_hosts(self) -> list[tuple[str, int]]:
        out = []
        for host in self.kafka_bootstrap_servers.split(","):
            name, _, port = host.rpartition(":")
            out.append((name.strip("[]"), int(port)))
        return out

    def librdkafka_common(self) -> dict[str, Any]:
        """Connection and security keys shared by every confluent-kafka client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
            # librdkafka's "info" (6) reports every reconnect and queue purge; show warnings unless debugging.
            "log_level": {"DEBUG": 7, "INFO": 4, "WARNING": 4, "ERROR": 3}[self.log_level],
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        for key, path in (
            ("ssl.ca.location", self.kafka_ssl_cafile),
            ("ssl.certificate.location", self.kafka_ssl_certfile),
            ("ssl.key.location", self.kafka_ssl_keyfile),
        ):
            if path is not None:
                conf[key] = str(path)
        if self.kafka_ssl_key_password:
            conf["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return conf

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka producer configuration: batched, compressed, acks=all, idempotent by default."""
        conf = self.librdkafka_common() | {
            "client.id": f"{self.kafka_client_id}-producer",
            "acks": "all",
            "enable.idempotence": self.kafka_idempotence,
            "linger.ms": self.kafka_linger_ms,
            "compression.type": self.kafka_compression,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "message.max.bytes": max(1_000_000, self.max_event_bytes * 4),
        }
        return conf | overrides

    def consumer_config(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        """librdkafka consumer configuration with the group timings that work on Tansu and on Kafka."""
        conf = self.librdkafka_common() | {
            "client.id": f"{self.kafka_client_id}-consumer",
            "group.id": group_id,
            "session.timeout.ms": self.kafka_session_timeout_ms,
            "heartbeat.interval.ms": self.kafka_heartbeat_interval_ms,
            "fetch.wait.max.ms": self.kafka_fetch_wait_max_ms,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
        return conf | overrides

    def admin_config(self) -> dict[str, Any]:
        return self.librdkafka_common() | {"client.id": f"{self.kafka_client_id}-admin"}

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients (and Faust's ``broker_credentials``)."""
        kwargs: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_security_protocol.endswith("SSL"):
            import ssl

            context = ssl.create_default_context(cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None)
            if self.kafka_ssl_certfile:
                context.load_cert_chain(
                    str(self.kafka_ssl_certfile),
                    str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                    self.kafka_ssl_key_password.get_secret_value() if self.kafka_ssl_key_password else None,
                )
            kwargs["ssl_context"] = context
        return kwargs

    def redis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url(settings.redis_url, **kwargs)``."""
        kwargs: dict[str, Any] = {}
        if self.redis_password is not None:
            kwargs["password"] = self.redis_password.get_secret_value()
        if self.redis_ssl_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(self.redis_ssl_ca_certs)
        return kwargs

    def redacted(self) -> dict[str, Any]:
        """Every setting as printable text: secrets masked, passwords in URLs replaced by ``***``."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***"
            elif name == "redis_url" or name == "broker_s3_endpoint":
                value = redact_url(value) if value else value
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def redact_url(url: str) -> str:
    """Replace the password of ``scheme://user:password@host`` with ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment plus ``overrides``; raise :class:`SettingsError` with every problem."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            field = loc[0] if loc else ""
            var = f"FUSIONREC_{field.upper()}" if field else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            given = err.get("input")
            shown = "" if field and ("password" in field or field == "redis_url") or not field else f" (got {given!r})"
            lines.append(f"  {var}: {msg}{shown}")
        raise SettingsError("invalid fusionrec settings:\n" + "\n".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()

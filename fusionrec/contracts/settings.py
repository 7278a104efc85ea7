"""One frozen settings object for every fusionrec process, in sections: one per component.

Every key is read from a ``FUSIONREC_<SECTION>_<KEY>`` environment variable (or a ``.env`` file), validated when
the process starts, and documented in ``docs/configuration.md`` (a test keeps that file and this module in step).
Each section states its defaults once, and each component receives its own section (the ranker
:class:`RankerSettings`, the profile store :class:`ProfileSettings` and :class:`DedupSettings`, ...).

The flat name of a key (``ranker_interval_ms``: the variable without ``FUSIONREC_``, in lower case) is also how
:func:`load_settings` and :meth:`Settings.replace` take overrides.

This module is also the single place that turns the settings into client configurations: librdkafka dicts for
confluent-kafka and keyword arguments for aiokafka/Faust, so broker quirks (Tansu needs a short session timeout
and a short fetch wait) are tuned here and nowhere else.

It is longer than the project's other modules on purpose: every setting, its default, its bounds and its
documentation stand in this one file, so that there is exactly one place to look them up.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from fusionrec.contracts.events import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_FUTURE_SKEW_MS,
    DEFAULT_MAX_PRICE,
    DEFAULT_MAX_QUANTITY,
)
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.logs import kafka_logger

__all__ = [
    "ApiSettings",
    "BrokerSettings",
    "DedupSettings",
    "EventSettings",
    "FusionSettings",
    "KafkaSettings",
    "MetricsSettings",
    "ModelSettings",
    "PrivacySettings",
    "ProfileSettings",
    "RankerSettings",
    "RedisSettings",
    "Settings",
    "SettingsError",
    "TopicSettings",
    "WorkerSettings",
    "get_settings",
    "load_settings",
    "redact_url",
]

ENV_PREFIX = "FUSIONREC_"
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fusionrec"


class SettingsError(ValueError):
    """Settings failed validation; the message lists every offending ``FUSIONREC_*`` variable."""


class _Section(BaseModel):
    """A frozen group of settings; its field ``x`` in section ``s`` is the variable ``FUSIONREC_S_X``."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Connection, security and client tuning of every Kafka client."""

    bootstrap_servers: str = Field(
        "127.0.0.1:19092",
        description="Comma-separated host:port list of the Kafka cluster. The embedded broker listens on the "
        "first entry when `fusionrec up` starts it.",
    )
    client_id: str = Field("fusionrec", description="client.id prefix sent to the brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="security.protocol for every Kafka client."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL username.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never printed).")
    ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) that signs the brokers' certificates.")
    ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    ssl_key_password: SecretStr | None = Field(None, description="Password of the client key (never printed).")
    session_timeout_ms: int = Field(
        6000,
        ge=1000,
        le=300_000,
        description="Consumer-group session timeout. Group joins take about half of it on Tansu, so keep it short.",
    )
    heartbeat_interval_ms: int = Field(1000, ge=100, le=60_000, description="Consumer heartbeat interval.")
    fetch_wait_max_ms: int = Field(
        50,
        ge=10,
        le=5000,
        description="Longest a fetch waits for data. Tansu sleeps about half of it even when data is there; "
        "50 gives ~15 ms p50 / ~45 ms p99 end to end.",
    )
    linger_ms: int = Field(
        50,
        ge=0,
        le=1000,
        description="Producer batching delay. Tansu's fetches list every stored batch of a partition, so a paced "
        "producer's tiny batches slow every consumer down: 50 keeps freshness p99 under 2 s at 1,000 events/s where "
        "5 gave 29 s (BENCHMARKS.md). On Kafka a few ms are enough.",
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="Producer compression codec."
    )
    idempotence: bool = Field(
        True,
        description="Use the idempotent producer (no duplicates from retries on real Kafka). Consumers dedupe by "
        "event_id either way. On Tansu's s3 storage a crash can make the idempotent producer report a batch as "
        "delivered that was never stored; fusionrec's producers send such records again (docs/tansu.md).",
    )
    replication_factor: int = Field(1, ge=1, le=16, description="Replication factor for topics we create.")

    @field_validator("bootstrap_servers")
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

    @model_validator(mode="after")
    def _check_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                name
                for name, val in (
                    ("FUSIONREC_KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                    ("FUSIONREC_KAFKA_SASL_USERNAME", self.sasl_username),
                    ("FUSIONREC_KAFKA_SASL_PASSWORD", self.sasl_password),
                )
                if val is None
            ]
            if missing:
                raise ValueError(f"security protocol {self.security_protocol} needs {', '.join(missing)}")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("kafka_heartbeat_interval_ms must be at most a third of kafka_session_timeout_ms")
        return self

    @property
    def bootstrap_hosts(self) -> list[tuple[str, int]]:
        out = []
        for host in self.bootstrap_servers.split(","):
            name, _, port = host.rpartition(":")
            out.append((name.strip("[]"), int(port)))
        return out


class TopicSettings(_Section):
    """The topics' names and partition counts (layouts: :mod:`fusionrec.contracts.topics`)."""

    events: str = Field("fusionrec-events", description="The shop's events (contract v1), keyed by user_id.")
    dead_letter: str = Field(
        "fusionrec-dead-letter", description="Rejected events with the original bytes and the reasons."
    )
    recommendations: str = Field(
        "recommendations", description="Fused recommendation lists, compacted, keyed by user_id."
    )
    item_side: str = Field(
        "",
        description="The item-side halves of every partition's events, which every worker of the group reads in "
        "full into its item-side replica (docs/worker.md); the workers create it. Empty: {worker group}-item-side "
        "(derived state of one group).",
    )
    events_partitions: int = Field(6, ge=1, le=1024, description="Partitions of the events topic.")
    dead_letter_partitions: int = Field(1, ge=1, le=1024, description="Partitions of the dead-letter topic.")
    recommendations_partitions: int = Field(6, ge=1, le=1024, description="Partitions of the recommendations topic.")

    @field_validator("events", "dead_letter", "recommendations", "item_side")
    @classmethod
    def _check_topic(cls, value: str, info: ValidationInfo) -> str:
        if value == "" and info.field_name == "item_side":
            return value
        if not _TOPIC_NAME.match(value) or value in {".", ".."}:
            raise ValueError(f"{value!r} is not a legal Kafka topic name (letters, digits, '.', '_', '-')")
        return value


class RedisSettings(_Section):
    """Where fusionrec keeps profiles, model snapshots and the serving copy of the lists."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL; rediss:// for TLS. A password in the URL is redacted in every output.",
    )
    password: SecretStr | None = Field(None, description="Redis password, if not in the URL (never printed).")
    ssl_ca_certs: Path | None = Field(None, description="CA bundle for rediss:// connections.")
    prefix: str = Field(
        "fr:",
        min_length=1,
        max_length=64,
        description="Prefix of every Redis key fusionrec writes (one namespace per deployment); no braces, which "
        "Redis Cluster reads as a hash tag.",
    )
    cluster: bool = Field(
        False,
        description="Redis Cluster: connect with redis-py's cluster client (the URL names any one node) and split "
        "multi-key reads and the batch write by hash slot (docs/worker.md). Off: one Redis, one call per batch.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
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

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise ValueError("must not contain { or }: Redis Cluster would hash the prefix instead of the user")
        return value

    @property
    def keys(self) -> RedisKeys:
        """The key schema under this deployment's prefix."""
        return RedisKeys(self.prefix)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url(settings.redis.url, **kwargs)``."""
        kwargs: dict[str, Any] = {}
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if self.ssl_ca_certs is not None:
            kwargs["ssl_ca_certs"] = str(self.ssl_ca_certs)
        return kwargs


class ProfileSettings(_Section):
    """The user profiles in Redis (:mod:`fusionrec.stores.profiles`)."""

    ttl_s: int = Field(30 * 24 * 3600, ge=60, description="A profile expires this long after its last event.")
    recent_items: int = Field(20, ge=1, le=1000, description="Recent items kept per profile.")
    bought_items: int = Field(50, ge=1, le=10_000, description="Bought items kept per profile (filtering).")
    categories: int = Field(10, ge=1, le=1000, description="Category affinities kept per profile.")

    @property
    def limits(self) -> tuple[int, int, int]:
        """The recent, bought and category caps, in the order :meth:`Profile.learn` takes them."""
        return self.recent_items, self.bought_items, self.categories


class DedupSettings(_Section):
    """Which applied event ids each user's profile remembers (docs/worker.md, exactly once in effect)."""

    max_ids: int = Field(
        256,
        ge=1,
        le=65_535,
        description="Event ids remembered per user (8 bytes each): a duplicate is skipped while its original is "
        "among the user's last this many applied events, whatever timestamp it carries.",
    )
    window_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="A user's dedup entry expires this long after the user's last event was processed (wall "
        "clock): a duplicate or a redelivery arriving later is applied again.",
    )


class WorkerSettings(_Section):
    """The stream worker: its consumer group, batches, web server and snapshots."""

    group: str = Field("fusionrec-worker", description="Faust app id, which is the consumer group id.")
    max_batch: int = Field(5000, ge=1, le=100_000, description="Most records fetched and processed at once.")
    web_port: int = Field(6066, ge=0, le=65535, description="Port of Faust's web server (health, stats).")
    web_bind: str = Field("127.0.0.1", description="Address Faust's web server binds to.")
    snapshot_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often each partition's model state is snapshotted to Redis (offsets are committed up to "
        "the snapshot, so this bounds the replay after a crash).",
    )


class ModelSettings(_Section):
    """What every online recommender shares."""

    max_idle_s: int = Field(
        7 * 24 * 3600, ge=60, description="Models evict users and items idle longer than this (event time)."
    )
    max_users: int = Field(
        500_000,
        ge=16,
        description="Users each model of a partition keeps (every source's user side and the fused recommender's "
        "bandit state): a new user past it first drops the least recently active 1/16. With max_items, this bounds "
        'a worker\'s memory by setting, whatever the traffic (BENCHMARKS.md, "Memory at 1M users").',
    )
    max_items: int = Field(
        500_000,
        ge=16,
        description="Items each source keeps, the shared item side included: a new item past it first drops the "
        "least recently active 1/16.",
    )
    item_sync_ms: int = Field(
        1000,
        ge=0,
        le=3_600_000,
        description="Item-side state (popularity, trending, co-visitation links, category tallies) is shared by all "
        "partitions, learned from every partition's events in sync ticks of this much event time: a list sees "
        "other partitions' events at most about one tick late (docs/worker.md). 0: every partition keeps its own "
        "item side, learned from its users only (the layout before 0.2).",
    )
    # --- abuse limits on the shared item side (models/guard.py; only with item_sync_ms > 0) ---
    guard_window_s: int = Field(
        60,
        ge=1,
        le=86_400,
        description="The event-time window of the item side's abuse limits (the per-user cap and the item rates).",
    )
    guard_user_cap: int = Field(
        60,
        ge=0,
        description="Events per user and guard window that may move item-side statistics (popularity, trending, "
        "co-visitation, category); a user's later events in the window still shape their own profile and lists. "
        "0: no cap.",
    )
    guard_min_users: int = Field(
        3,
        ge=0,
        description="Distinct returning users (seen in an earlier guard window) an item needs before the popular, "
        "trending and category sources (guard_sources) learn more than guard_unvoted_cap of its events: a crowd of "
        "brand-new accounts cannot push an item to everyone. 0 or 1: no minimum.",
    )
    guard_unvoted_cap: int = Field(
        5,
        ge=0,
        description="Records of an item without guard_min_users returning users that the guarded sources learn all "
        "the same (the long tail of items few users touched); the rest wait for the item's voters.",
    )
    guard_sources: str = Field(
        "popular,trending,category",
        pattern=r"^[a-z_]*(,[a-z_]+)*$",
        description="Comma-separated sources an item enters only with guard_min_users distinct returning users.",
    )
    guard_jump_min: int = Field(
        200,
        ge=1,
        description="An item with at least this many events in a guard window, and guard_jump_factor times its "
        "previous window's (plus one), is flagged as a rate jump (metric and log; nothing is changed).",
    )
    guard_jump_factor: float = Field(
        10.0, ge=1.0, description="See guard_jump_min: how many times its previous rate an item must reach."
    )
    sources: str = Field(
        "cf,covisit,popular,trending,category,recent,sknn,successor,itemcf",
        description="The sources a worker (and `fusionrec evaluate`) runs, comma-separated, in this order "
        "(docs/sources.md). Changing the list changes the bandit's and the learned ranker's shape: their state is "
        "then not restored from older snapshots.",
    )
    session_gap_ms: int = Field(
        1_800_000,
        ge=1,
        description="Events of a user without a shared session_id belong to one session when at most this far "
        "apart (the session sources: sknn, successor).",
    )
    sknn_query_items: int = Field(
        10, ge=1, le=1000, description="sknn: the current session's latest distinct items that make its vector."
    )
    sknn_sample_size: int = Field(
        50,
        ge=1,
        le=10_000,
        description="sknn: newest sessions remembered per item, where neighbours are looked for (bounds the cost "
        "of a list and the memory of the index).",
    )
    sknn_neighbours: int = Field(50, ge=1, le=10_000, description="sknn: neighbour sessions whose items are scored.")
    sknn_half_life_s: int = Field(
        3 * 86_400, ge=1, description="sknn: a neighbour session this much older than now weighs half as much."
    )
    sknn_session_items: int = Field(
        20, ge=1, le=1000, description="sknn: items kept per remembered session (the first ones)."
    )
    sknn_max_sessions: int = Field(
        200_000, ge=1, description="sknn: sessions of the whole shop remembered (least recently active go first)."
    )
    successor_steps: int = Field(
        3, ge=1, le=100, description="successor: how many later events of a session an item links to (1/gap)."
    )
    successor_seed_items: int = Field(
        3, ge=1, le=100, description="successor: the user's latest items whose successors are proposed."
    )
    successor_max: int = Field(30, ge=1, le=10_000, description="successor: successors kept per item.")
    successor_half_life_s: int = Field(
        7 * 86_400, ge=1, description="successor: after this long, a successor link counts half as much."
    )
    itemcf_recent_items: int = Field(
        10, ge=1, le=1000, description="itemcf: the user's latest distinct items that seed candidates."
    )
    itemcf_history: int = Field(
        10,
        ge=1,
        le=10_000,
        description="itemcf: the user's latest distinct items a new item co-occurs with (and the most that seed "
        "candidates).",
    )
    itemcf_seen: int = Field(
        100,
        ge=1,
        le=100_000,
        description="itemcf: distinct items remembered per user to keep out of their candidates.",
    )
    itemcf_neighbours: int = Field(50, ge=1, le=10_000, description="itemcf: most similar items kept per item.")
    itemcf_half_life_s: int = Field(
        30 * 86_400, ge=1, description="itemcf: after this long, a co-occurrence counts half as much."
    )

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names:
            raise ValueError("must name at least one source")
        if len(set(names)) != len(names):
            raise ValueError("names a source twice")
        return ",".join(names)


class RankerSettings(_Section):
    """The ranker that fuses the sources into one list per user, and where the lists go."""

    interval_ms: int = Field(
        200,
        ge=10,
        le=600_000,
        description="How often the ranker refreshes the lists of users whose state changed since the last refresh "
        "(start to start; a list waits up to this long, plus the ranking, after its user's event was processed).",
    )
    k: int = Field(20, ge=1, le=1000, description="Items per published list.")
    candidates: int = Field(50, ge=1, le=10_000, description="Candidates each source proposes per user.")
    category_cap: int = Field(
        0,
        ge=0,
        le=1000,
        description="Most items of one category in a list (diversity; 0: no cap). A cap costs hit rate where "
        "shoppers browse within one category (see docs/evaluation.md).",
    )
    normalise: Literal["max", "rank"] = Field(
        "rank",
        description="How each source's scores are brought to one scale before fusion: max (divide by the user's "
        "best score from that source) or rank (the DCG discount of the candidate's position).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the ranker's tensors live: auto picks CUDA when available, else CPU."
    )
    threads: int = Field(
        1,
        ge=0,
        le=1024,
        description="torch threads of a worker's ranker on the CPU (0: torch's default, one per core). Workers "
        "scale out one per core; a second thread contends with the broker, Redis and the worker's own threads and "
        "made refreshes slower, not faster, on a 2-core machine.",
    )
    list_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="The serving copy of a list in Redis expires this long after it was made."
    )
    learned: bool = Field(
        True,
        description="Serve the learned ranker's lists (a torch model stacking the sources, trained online from what "
        "users did next; docs/ranking.md) once it has learned from `learned_min_lists` lists; false: bandit fusion.",
    )
    learned_min_lists: int = Field(
        200, ge=0, description="Labelled lists a partition's learned ranker learns before its lists are served."
    )
    learned_pool: int = Field(
        100, ge=1, le=10_000, description="Candidates of each list remembered (the top of the union) for training."
    )
    learned_max_users: int = Field(
        50_000,
        ge=1,
        description="Most users per partition whose last list's pool waits for their next event (least recently "
        "ranked forgotten first): bounds the learned ranker's memory, about 2 KB per user.",
    )
    learned_hidden: int = Field(16, ge=1, le=1024, description="Width of the learned ranker's hidden layer.")
    learned_lr: float = Field(0.01, gt=0.0, le=1.0, description="The learned ranker's Adam learning rate.")


class FusionSettings(_Section):
    """The bandit that learns how much to trust each source."""

    epsilon: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Share of lists served with exploring weights (one source boosted, chosen uniformly).",
    )
    half_life_s: float = Field(
        86_400.0, gt=0, description="Bandit rewards and exposures halve after this long (event time): tracks drift."
    )
    new_user_events: int = Field(
        5, ge=1, description="A user with fewer events than this is in the `new` segment, else `returning`."
    )
    holdout: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of users (by a hash of user_id) served with fixed equal weights instead of the "
        "bandit's: a live A/B of learned against fixed fusion.",
    )


class EventSettings(_Section):
    """Limits of the event contract (docs/events.md)."""

    max_bytes: int = Field(
        DEFAULT_MAX_EVENT_BYTES, ge=256, le=1_048_576, description="Events larger than this are rejected."
    )
    max_future_skew_ms: int = Field(
        DEFAULT_MAX_FUTURE_SKEW_MS, ge=0, description="Events stamped further than this in the future are rejected."
    )
    max_price: float = Field(
        DEFAULT_MAX_PRICE,
        gt=0,
        le=1e15,
        description="Events with a higher price (in the shop's currency unit) are rejected as implausible.",
    )
    max_quantity: int = Field(
        DEFAULT_MAX_QUANTITY,
        ge=1,
        le=1_000_000_000,
        description="Events with a higher quantity are rejected as implausible.",
    )


class BrokerSettings(_Section):
    """The embedded broker that `fusionrec up` starts (Tansu)."""

    storage: Literal["memory", "s3"] = Field(
        "memory",
        description="Embedded broker storage: memory (lost on restart) or s3 (kept in an S3 server; see "
        "broker_s3_endpoint).",
    )
    s3_endpoint: str | None = Field(
        None,
        description="S3 endpoint for broker_storage=s3. Unset: `fusionrec up` starts a local moto server (state "
        "survives broker crashes, not the moto process). Set it to a real S3/MinIO for durable storage.",
    )
    s3_bucket: str = Field("tansu", description="Bucket that holds the embedded broker's data.")


class MetricsSettings(_Section):
    """The Prometheus endpoint of the worker and the online evaluation."""

    port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics endpoint, and of the worker's /livez and /readyz probes (0: off).",
    )
    bind: str = Field("127.0.0.1", description="Address the metrics endpoint binds to.")


class ApiSettings(_Section):
    """The serving API (`fusionrec serve`, docs/serving.md)."""

    host: str = Field("127.0.0.1", description="Address the serving API binds to (0.0.0.0: every interface).")
    port: int = Field(8080, ge=0, le=65535, description="Port of the serving API.")
    key_hashes: SecretStr | None = Field(
        None,
        description="Comma-separated SHA-256 hex digests of the API keys that may call /v1/* (`fusionrec serve "
        "--hash-key` prints one). Unset: the API is open to anyone who can reach it (a warning at start).",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, le=64 * 1_048_576, description="Largest request body accepted (413 above it)."
    )
    max_events: int = Field(1000, ge=1, le=100_000, description="Most events in one POST /v1/events.")
    max_k: int = Field(200, ge=1, le=10_000, description="Largest k a request may ask for.")
    max_rerank_items: int = Field(1000, ge=1, le=100_000, description="Most candidates in one POST /v1/rerank.")
    delivery_timeout_s: float = Field(
        10.0, gt=0, le=300, description="How long POST /v1/events waits for the brokers' acknowledgements (503 after)."
    )
    item_side_refresh_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often the API looks for a newer item-side snapshot in Redis (the workers write one every "
        "snapshot interval), from which it serves the fallback list and similar items.",
    )

    @field_validator("key_hashes")
    @classmethod
    def _check_hashes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        hashes = [h.strip().lower() for h in value.get_secret_value().split(",") if h.strip()]
        bad = sum(1 for h in hashes if not re.fullmatch(r"[0-9a-f]{64}", h))
        if bad:
            raise ValueError(f"{bad} of {len(hashes)} entries are not SHA-256 hex digests (64 hex characters)")
        return SecretStr(",".join(hashes)) if hashes else None

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The configured key digests, raw (32 bytes each); empty: no key required."""
        if self.key_hashes is None:
            return ()
        return tuple(bytes.fromhex(h) for h in self.key_hashes.get_secret_value().split(","))


class PrivacySettings(_Section):
    """Pseudonymisation of user ids (docs/privacy.md)."""

    user_key: SecretStr | None = Field(
        None,
        description="Secret key (at least 16 characters; never printed) of the user pseudonyms: when set, the "
        "worker replaces every user id by HMAC-SHA256(key, id) cut to 96 bits (`p.` + 24 hex digits) as it reads "
        "the events, so Redis, snapshots, the item-side, recommendations and dead-letter topics hold no raw id; "
        "read a user's list with `fusionrec pseudonym USER`. Changing it orphans every user's state.",
    )

    @field_validator("user_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 characters (a random secret, e.g. `openssl rand -hex 32`)")
        return value


class Settings(BaseSettings):
    """fusionrec configuration. Field descriptions are the documentation; see ``docs/configuration.md``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topic: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    profile: ProfileSettings = ProfileSettings()
    dedup: DedupSettings = DedupSettings()
    worker: WorkerSettings = WorkerSettings()
    model: ModelSettings = ModelSettings()
    ranker: RankerSettings = RankerSettings()
    fusion: FusionSettings = FusionSettings()
    event: EventSettings = EventSettings()
    broker: BrokerSettings = BrokerSettings()
    metrics: MetricsSettings = MetricsSettings()
    api: ApiSettings = ApiSettings()

    privacy: PrivacySettings = PrivacySettings()
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Where `fusionrec up` keeps PID files, logs and embedded-service data "
        "(default $XDG_STATE_HOME/fusionrec or ~/.local/state/fusionrec).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format: text for people, json (one object per line) for log shippers."
    )

    def __repr_args__(self):
        """repr()/str() show the redacted values, so a logged Settings never leaks a URL's password."""
        yield from self.redacted().items()

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied, by flat name (``redis_prefix="x:"``), validated like the environment."""
        data = self.model_dump()
        for section, values in _nest(changes).items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section] = data[section] | values
            else:
                data[section] = values
        return type(self).model_validate(data)

    # --- client configurations -------------------------------------------------------------------------------
    def librdkafka_common(self) -> dict[str, Any]:
        """Connection and security keys shared by every confluent-kafka client."""
        kafka = self.kafka
        conf: dict[str, Any] = {
            "bootstrap.servers": kafka.bootstrap_servers,
            "security.protocol": kafka.security_protocol,
            # librdkafka's "info" (6) reports every reconnect and queue purge; show warnings unless debugging.
            "log_level": {"DEBUG": 7, "INFO": 4, "WARNING": 4, "ERROR": 3}[self.log_level],
            # ... through Python logging, one line per condition per window (fusionrec.contracts.logs)
            "logger": kafka_logger(),
        }
        if kafka.sasl_mechanism:
            conf["sasl.mechanism"] = kafka.sasl_mechanism
        if kafka.sasl_username:
            conf["sasl.username"] = kafka.sasl_username
        if kafka.sasl_password:
            conf["sasl.password"] = kafka.sasl_password.get_secret_value()
        for key, path in (
            ("ssl.ca.location", kafka.ssl_cafile),
            ("ssl.certificate.location", kafka.ssl_certfile),
            ("ssl.key.location", kafka.ssl_keyfile),
        ):
            if path is not None:
                conf[key] = str(path)
        if kafka.ssl_key_password:
            conf["ssl.key.password"] = kafka.ssl_key_password.get_secret_value()
        return conf

    @property
    def item_side_topic(self) -> str:
        """The item-side topic: ``topic.item_side``, or ``{worker.group}-item-side`` (it holds derived state of one
        group of workers)."""
        return self.topic.item_side or f"{self.worker.group}-item-side"

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka producer configuration: batched, compressed, acks=all, idempotent by default."""
        kafka = self.kafka
        conf = self.librdkafka_common() | {
            "client.id": f"{kafka.client_id}-producer",
            "acks": "all",
            "enable.idempotence": kafka.idempotence,
            # The Java client's placement of keys (murmur2), not librdkafka's CRC32: fusionrec.contracts.partitioning
            "partitioner": "murmur2_random",
            "linger.ms": kafka.linger_ms,
            "compression.type": kafka.compression,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "message.max.bytes": max(1_000_000, self.event.max_bytes * 4),
        }
        return conf | overrides

    def consumer_config(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        """librdkafka consumer configuration with the group timings that work on Tansu and on Kafka."""
        kafka = self.kafka
        conf = self.librdkafka_common() | {
            "client.id": f"{kafka.client_id}-consumer",
            "group.id": group_id,
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
        return conf | overrides

    def admin_config(self) -> dict[str, Any]:
        return self.librdkafka_common() | {"client.id": f"{self.kafka.client_id}-admin"}

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments for aiokafka clients (and Faust's ``broker_credentials``)."""
        kafka = self.kafka
        kwargs: dict[str, Any] = {"security_protocol": kafka.security_protocol}
        if kafka.sasl_mechanism:
            kwargs["sasl_mechanism"] = kafka.sasl_mechanism
            kwargs["sasl_plain_username"] = kafka.sasl_username
            kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        if kafka.security_protocol.endswith("SSL"):
            import ssl

            context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
            if kafka.ssl_certfile:
                context.load_cert_chain(
                    str(kafka.ssl_certfile),
                    str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
                    kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None,
                )
            kwargs["ssl_context"] = context
        return kwargs

    def faust_app_kwargs(self) -> dict[str, Any]:
        """Broker, producer and web keyword arguments of the worker's Faust app (credentials apart: they are Faust
        objects, built by the worker from :meth:`aiokafka_kwargs`)."""
        kafka, worker = self.kafka, self.worker
        return {
            "broker": ";".join(f"kafka://{host}" for host in kafka.bootstrap_servers.split(",")),
            "broker_client_id": f"{kafka.client_id}-worker",
            "broker_session_timeout": kafka.session_timeout_ms / 1000,
            "broker_heartbeat_interval": kafka.heartbeat_interval_ms / 1000,
            "broker_request_timeout": max(30.0, kafka.session_timeout_ms / 1000 + 5),
            "broker_max_poll_records": worker.max_batch,
            "broker_commit_interval": 1.0,
            "consumer_auto_offset_reset": "earliest",
            "processing_guarantee": "at_least_once",  # Tansu has no transactions: effects are made idempotent
            "producer_linger": kafka.linger_ms / 1000,
            "producer_compression_type": None if kafka.compression == "none" else kafka.compression,
            "web_enabled": False,
            "web_port": worker.web_port,
            "web_bind": worker.web_bind,
            "web_host": worker.web_bind,
        }

    def redacted(self) -> dict[str, Any]:
        """Every setting by flat name as printable text: secrets masked, passwords in URLs replaced by ``***``."""
        out: dict[str, Any] = {}
        for name, value in self._flat_items():
            if isinstance(value, SecretStr):
                value = "***"
            elif name in {"redis_url", "broker_s3_endpoint"}:
                value = redact_url(value) if value else value
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out

    def to_env(self) -> dict[str, str]:
        """Every set value as ``FUSIONREC_*`` environment variables, secrets included: for a child process only."""
        env = {}
        for name, value in self._flat_items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env

    def _flat_items(self) -> Iterator[tuple[str, Any]]:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, _Section):
                for field in type(value).model_fields:
                    yield f"{name}_{field}", getattr(value, field)
            else:
                yield name, value

    @classmethod
    def documented_fields(cls) -> Iterator[tuple[str, Any]]:
        """``(flat name, FieldInfo)`` of every key, in order: what docs/configuration.md lists."""
        for name, info in cls.model_fields.items():
            section = info.annotation
            if isinstance(section, type) and issubclass(section, _Section):
                for field, sub in section.model_fields.items():
                    yield f"{name}_{field}", sub
            else:
                yield name, info


def _sections() -> dict[str, type[_Section]]:
    return {
        name: info.annotation
        for name, info in Settings.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, _Section)
    }


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"ranker_k": 5, "log_level": "INFO"}`` → ``{"ranker": {"k": 5}, "log_level": "INFO"}``; a whole
    section may be given by its name."""
    sections = _sections()
    out: dict[str, Any] = {}
    for name, value in flat.items():
        section, _, field = name.partition("_")
        if name in Settings.model_fields:
            out[name] = value
        elif section in sections and field in sections[section].model_fields:
            out.setdefault(section, {})[field] = value
        else:
            raise SettingsError(f"invalid fusionrec settings:\n  {ENV_PREFIX}{name.upper()}: no such setting")
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
    """Build settings from the environment plus ``overrides`` (by flat name); raise :class:`SettingsError` with
    every problem."""
    try:
        return Settings(**_nest(overrides))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"] if not str(part).isdigit()]
            field = "_".join(loc)
            var = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            given = err.get("input")
            secret = "password" in field or field in {"redis_url", "privacy_user_key"} or isinstance(given, dict)
            shown = "" if not field or secret else f" (got {given!r})"
            lines.append(f"  {var}: {msg}{shown}")
        raise SettingsError("invalid fusionrec settings:\n" + "\n".join(lines)) from None


#: FUSIONREC_* variables read outside the settings (by scripts and the deploy files).
OTHER_ENV = frozenset({"FUSIONREC_SHARED_DATA", "FUSIONREC_IMAGE"})


def env_names() -> set[str]:
    """Every environment variable the settings read."""
    names = set()
    for name, info in Settings.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names.update(f"{ENV_PREFIX}{name}_{field}".upper() for field in section.model_fields)
        else:
            names.add(f"{ENV_PREFIX}{name}".upper())
    return names


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``FUSIONREC_*`` variable that no setting reads (a typo is otherwise silently ignored),
    with the closest known name."""
    environ = os.environ if environ is None else environ
    known = env_names()
    warnings = []
    for var in sorted(environ):
        if var.upper().startswith(ENV_PREFIX) and var.upper() not in known | OTHER_ENV:
            close = difflib.get_close_matches(var.upper(), sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else " (`fusionrec config --env` lists them)"
            warnings.append(f"{var} is not a fusionrec setting and is ignored{hint}")
    return warnings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded once."""
    return load_settings()

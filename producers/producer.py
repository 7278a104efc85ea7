"""The shop-facing producer: validated events into the events topic, with delivery reports surfaced.

Built on librdkafka (confluent-kafka): batched and compressed, ``acks=all`` and idempotent by default. Sending is
asynchronous; call :meth:`EventProducer.flush` (or use the producer as a context manager) before exiting, and
read :attr:`EventProducer.stats` or pass ``on_delivery`` to learn what the brokers acknowledged.

It survives a broker restart (:class:`~fusionrec.infra.resilient.ResilientProducer`): on a fatal error (an
idempotent producer whose broker forgot it: "Unknown Producer Id") or a delivery timeout it recreates the
librdkafka producer and re-sends every event not yet acknowledged, in the order they were first sent;
:attr:`EventProducer.stall_s` tells how long acknowledgements have been waited for.

>>> with EventProducer() as producer:                                    # doctest: +SKIP
...     producer.send(Event("e-1", "user-7", "sku-42", "view", ts_ms))
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message

from fusionrec.contracts.events import Event, ensure_valid
from fusionrec.contracts.settings import Settings, get_settings
from fusionrec.infra.resilient import ResilientProducer

__all__ = ["BrokerUnreachable", "EventProducer", "DeliveryStats", "DeliveryFailed"]

log = logging.getLogger("fusionrec.producer")

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class DeliveryFailed(RuntimeError):
    """Some events were not acknowledged by the brokers before the flush deadline."""


class BrokerUnreachable(RuntimeError):
    """No broker answered within the check's timeout."""


@dataclass
class DeliveryStats:
    """What the brokers acknowledged so far. ``errors`` keeps the first few failure messages."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    resets: int = 0  # times the librdkafka producer was recreated (a fatal error, a broker restart)
    resent: int = 0  # events sent again after a reset because they had not been acknowledged
    errors: list[str] = field(default_factory=list)

    @property
    def in_flight(self) -> int:
        return self.sent - self.delivered - self.failed


class EventProducer:
    """Send contract-v1 events to the events topic, keyed by user id.

    Parameters
    ----------
    settings
        Connection, security and batching settings (default: from the environment).
    topic
        Target topic (default: ``settings.topic.events``).
    validate
        Check each event against the contract before sending (raises :class:`~fusionrec.contracts.events.InvalidEvent`).
        Replays of trusted files turn it off to save the per-event cost.
    on_delivery
        Called from :meth:`poll`/:meth:`flush` with ``(error, message)`` for every acknowledged or failed event.
    overrides
        Extra librdkafka keys, e.g. ``{"linger.ms": 20}``.
    on_reset
        Called with the reason each time the librdkafka producer is recreated (a fatal error, a broker restart).
    stall_reset_s
        Recreate it also when events wait this long without any acknowledgement (a broker that came back empty
        can leave librdkafka retrying for ever).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        topic: str | None = None,
        validate: bool = True,
        on_delivery: DeliveryCallback | None = None,
        overrides: dict | None = None,
        on_reset: Callable[[str], None] | None = None,
        stall_reset_s: float = 10.0,
    ):
        self.settings = settings or get_settings()
        self.topic = topic or self.settings.topic.events
        self.validate = validate
        self.stats = DeliveryStats()
        self._lock = threading.Lock()
        self._user_callback = on_delivery
        self._on_reset_cb = on_reset
        self._producer = ResilientProducer(
            self.settings.producer_config(**(overrides or {})),
            name="event producer",
            on_reset=self._on_reset,
            stall_reset_s=stall_reset_s,
        )
        self._closed = False

    def _on_reset(self, reason: str) -> None:
        self.stats.resets = self._producer.resets
        self.stats.resent = self._producer.resent
        if self._on_reset_cb is not None:
            self._on_reset_cb(reason)

    @property
    def unplaced(self) -> int:
        """Events sent again because a broker acknowledged them without an offset (a "duplicate sequence" answer,
        which Tansu's s3 storage can give for a batch it never stored: fusionrec.infra.resilient)."""
        return self._producer.unplaced

    @property
    def stall_s(self) -> float:
        """Seconds since the brokers last acknowledged an event while some wait for it (0 when none waits)."""
        return self._producer.stall_s

    def check_broker(self, timeout_s: float = 5.0) -> None:
        """Raise :class:`BrokerUnreachable` unless a broker answers a metadata request within ``timeout_s`` (a
        replay to a wrong address then fails in seconds, not after the flush deadline)."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            servers = self.settings.kafka.bootstrap_servers
            raise BrokerUnreachable(
                f"no Kafka broker answered at {servers} within {timeout_s:g} s ({exc.args[0].str()}); "
                "is it running? `fusionrec up` starts the embedded one, FUSIONREC_KAFKA_BOOTSTRAP_SERVERS or "
                "--bootstrap-servers points elsewhere"
            ) from None

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            if err is None:
                self.stats.delivered += 1
            else:
                self.stats.failed += 1
                if len(self.stats.errors) < 20:
                    self.stats.errors.append(f"{msg.topic()}: {err.str()}")
        if err is not None:
            log.warning("delivery failed for key %r: %s", msg.key(), err.str())
        if self._user_callback is not None:
            self._user_callback(err, msg)

    def send(self, event: Event) -> None:
        """Queue one event for delivery (keyed by its user id). Raises ``InvalidEvent`` if it breaks the contract."""
        if self.validate:
            limits = self.settings.event
            ensure_valid(event, max_price=limits.max_price, max_quantity=limits.max_quantity)
        self.send_raw(event.key, event.to_json(), timestamp_ms=event.ts)

    def send_raw(self, key: bytes | None, value: bytes, *, timestamp_ms: int | None = None) -> None:
        """Queue pre-encoded bytes; waits (serving delivery reports) while librdkafka's queue is full."""
        self._producer.produce(self.topic, value, key, timestamp=timestamp_ms or 0, on_delivery=self._on_delivery)
        self.stats.sent += 1
        if self.stats.sent % 1000 == 0:
            self._producer.poll(0)

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports; returns how many were served."""
        return self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0, *, raise_on_failure: bool = False) -> int:
        """Wait until every queued event is acknowledged or ``timeout`` passes; return how many are still queued."""
        remaining = self._producer.flush(timeout)
        if raise_on_failure and (remaining or self.stats.failed):
            raise DeliveryFailed(
                f"{remaining} events still queued and {self.stats.failed} failed; first errors: {self.stats.errors[:3]}"
            )
        return remaining

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then close the connections (a broker shutting down gracefully waits for open ones). Once only:
        the producer is unusable afterwards."""
        if self._closed:
            return
        remaining = self.flush(timeout)
        if remaining:
            log.error("%d events were not delivered before close", remaining)
        self._producer.close()
        self._closed = True

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

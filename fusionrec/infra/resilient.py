"""A librdkafka producer that outlives its broker: recreated after a fatal error, unacknowledged records re-sent.

Why: an idempotent librdkafka producer whose broker restarts without its state (Tansu with memory storage, or
any broker that lost the producer id) gets ``UNKNOWN_PRODUCER_ID`` or ``OUT_OF_ORDER_SEQUENCE_NUMBER`` and raises a
*fatal* error: every later ``produce`` fails, for ever. :class:`ResilientProducer` watches fatal errors (the
``error_cb``, ``produce`` raising, delivery reports), delivery failures that a fresh producer can cure (producer-id
and sequence errors), and acknowledgements that stop coming; on one it purges the old producer, builds a new one (a
new producer id: idempotence re-initialised) and, when it keeps them (``keep_unacked``), re-sends every record not yet
acknowledged, in the order they were first sent. A record may then reach the topic twice (it was written but its
acknowledgement was lost); consumers dedupe by ``event_id`` (docs/worker.md). Records the broker refuses for good
(too large, not authorised) are reported as failed, never re-sent.

An acknowledgement **without an offset** is not taken at its word (when it keeps records): librdkafka reports a
broker's ``DUPLICATE_SEQUENCE_NUMBER`` answer to a retried batch as a success, the batch's first record at no
offset and the others numbered on from -1 ("the broker wrote it before"). Kafka stores a batch and its producer
sequence together, so there that is true; Tansu's ``s3`` storage writes the sequence (``meta.json``) before the
batch, in separate object-store writes, so a broker killed between the two answers the retry "duplicate" for a
batch it never stored (docs/tansu.md). Such records are sent again under new sequence numbers; a copy that did
exist is deduplicated downstream.

Everything runs on the thread that calls :meth:`produce`, :meth:`poll` and :meth:`flush` (librdkafka serves its
callbacks there): a reset never happens inside a callback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fusionrec.contracts.logs import kafka_logger

__all__ = ["RESET_CODES", "ResilientProducer"]

log = logging.getLogger("fusionrec.kafka")

DeliveryCallback = Callable[[KafkaError | None, Message], None]

#: Delivery errors that a fresh producer cures: the broker lost our producer id or sequence (a restart without its
#: state), or gave our producer id to another producer (Tansu restarted empty hands ids out from 1 again, and a
#: record of ours then meets another producer's epoch: ``PRODUCER_FENCED``, which killed a worker's item-side link
#: in a restart test before it was listed here). A record that timed out (``message.timeout.ms``) has failed as
#: configured and is reported, not re-sent; a broker that comes back empty while librdkafka keeps retrying is caught
#: by ``stall_reset_s`` instead.
RESET_CODES = frozenset(
    {
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.PRODUCER_FENCED,
        KafkaError._FATAL,
    }
)
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


@dataclass
class _Pending:
    topic: str
    value: bytes
    key: bytes | None
    timestamp: int
    callback: DeliveryCallback | None
    resends: int = 0


class ResilientProducer:
    """A confluent-kafka ``Producer`` that rebuilds itself after a fatal error.

    Parameters
    ----------
    config
        librdkafka configuration (an ``error_cb`` in it is called as well as ours).
    name
        For logs.
    keep_unacked
        Keep every record until the broker acknowledges it and re-send the unacknowledged ones after a reset (the
        events and item-side topics). Without it (derived data, such as published lists), a reset loses what was
        queued and reports it as failed to each record's callback.
    max_resends
        A record re-sent this many times and still not acknowledged is reported as failed.
    stall_reset_s
        Reset also when records wait this long without any acknowledgement (librdkafka may retry a broker that
        came back empty forever). ``None``: only on errors.
    on_reset
        Called after each reset with the reason (metrics).
    """

    def __init__(
        self,
        config: dict[str, Any],
        *,
        name: str = "producer",
        keep_unacked: bool = True,
        max_resends: int = 5,
        stall_reset_s: float | None = 10.0,
        on_reset: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._user_error_cb = config.get("error_cb")
        self._config = {k: v for k, v in config.items() if k != "error_cb"}
        self.name = name
        self.keep_unacked = keep_unacked
        self.max_resends = max_resends
        self.stall_reset_s = stall_reset_s
        self.on_reset = on_reset
        self.clock = clock
        self.resets = 0
        self.resent = 0
        self.unplaced = 0  # records acknowledged without an offset and sent again (see the module's docstring)
        self._unplaced: list[int] = []  # their sequence numbers, until sent again
        self._counting: dict[tuple[str, int], int] = {}  # (topic, partition) -> the next offset of such a report
        self._pending: dict[int, _Pending] = {}  # insertion order = first-send order
        self._seq = 0
        self._generation = 0
        self._broken: str | None = None
        self._last_progress = clock()
        self._producer = self._new()

    # --- state ---------------------------------------------------------------------------------------------------

    def _new(self) -> Producer:
        return Producer({**self._config, "error_cb": self._on_error})

    def __len__(self) -> int:
        """Records not yet acknowledged (kept ones, or what librdkafka still queues)."""
        return len(self._pending) if self.keep_unacked else len(self._producer)

    @property
    def stall_s(self) -> float:
        """Seconds since the last acknowledgement while records wait for one (0 when nothing waits)."""
        return max(self.clock() - self._last_progress, 0.0) if len(self) else 0.0

    # --- callbacks (served inside poll/flush/produce, on the caller's thread) ------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("%s: fatal error: %s; the producer will be recreated", self.name, err)
            self._broken = self._broken or f"fatal: {err.str()}"
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            # reported per broker and retry: through the Kafka logger, which lets one line per condition through
            kafka_logger().warning("%s: %s", self.name, err.str())
        else:
            log.debug("%s: %s", self.name, err)
        if self._user_error_cb is not None:
            self._user_error_cb(err)

    def _delivered(self, generation: int, seq: int, callback, err: KafkaError | None, msg: Message) -> None:
        if not self.keep_unacked:  # nothing is re-sent: every outcome, a purge included, goes to the caller
            if err is None:
                self._last_progress = self.clock()
            elif generation == self._generation and (err.fatal() or err.code() in RESET_CODES):
                self._broken = self._broken or f"delivery: {err.str()}"
            if callback is not None:
                callback(err, msg)
            return
        if generation != self._generation:  # the old producer's purge: already queued again on the new one
            return
        if err is None:
            self._last_progress = self.clock()
            entry = self._pending.get(seq)
            if self._offsetless(msg) and entry is not None and entry.resends < self.max_resends:
                self._unplaced.append(seq)  # "written before", maybe never written: sent again by _heal
                return
            self._pending.pop(seq, None)
            if entry is not None and entry.callback is not None:
                entry.callback(None, msg)
            return
        if err.code() in _PURGED:
            return
        entry = self._pending.get(seq)
        if (err.fatal() or err.code() in RESET_CODES) and entry is not None and entry.resends < self.max_resends:
            self._broken = self._broken or f"delivery: {err.str()}"
            return
        self._pending.pop(seq, None)
        if entry is not None and entry.callback is not None:
            entry.callback(err, msg)

    def _offsetless(self, msg: Message) -> bool:
        """Whether an acknowledgement is librdkafka's report of a "duplicate sequence" answer: the batch's first
        record at no offset (None), the others numbered on from it (0, 1, 2, ...: reports of one batch are served
        together, in order). A real batch that happens to continue that count is taken for one too: sent again, a
        duplicate the consumers drop."""
        where = (msg.topic(), msg.partition())
        offset = msg.offset()
        if offset is None or offset < 0:
            self._counting[where] = 0
            return True
        if self._counting.get(where) == offset:
            self._counting[where] = offset + 1
            return True
        self._counting.pop(where, None)
        return False

    # --- sending -------------------------------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        *,
        timestamp: int = 0,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queue one record; waits (serving delivery reports) while librdkafka's queue is full."""
        seq = self._seq
        self._seq += 1
        if self.keep_unacked:
            if not self._pending:
                self._last_progress = self.clock()
            self._pending[seq] = _Pending(topic, value, key, timestamp, on_delivery)
        self._send(seq, topic, value, key, timestamp, on_delivery)
        self._heal()

    def _send(self, seq: int, topic: str, value: bytes, key: bytes | None, timestamp: int, callback) -> None:
        while True:
            if self._broken:  # the record is kept (and re-sent by the reset) or counted as lost by it
                if not self.keep_unacked and callback is not None:
                    self._lost(callback, topic, key)
                return
            report = _bind(self._delivered, self._generation, seq, callback)
            try:
                self._producer.produce(topic, value, key, on_delivery=report, timestamp=timestamp)
                return
            except BufferError:  # the local queue is full: let librdkafka drain it
                self._producer.poll(0.05)
                self._check_stall()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and not error.fatal() and error.code() not in RESET_CODES:
                    raise
                self._broken = self._broken or f"produce: {exc}"

    def _lost(self, callback: DeliveryCallback, topic: str, key: bytes | None) -> None:
        error = KafkaError(KafkaError._FATAL, f"{self.name}: producer reset, record dropped", fatal=False)
        callback(error, _Lost(topic, key))

    def _serve(self, call: Callable[[float], int], timeout: float) -> int | None:
        """``poll`` or ``flush`` of the librdkafka producer; None when it broke (the producer is then reset).

        confluent-kafka raised ``SystemError("... returned NULL without setting an exception")`` from ``flush`` once
        in a worker, right after a fatal "Unknown Producer Id" on a broker restart, and the worker died of it in a
        hand-over snapshot. Records whose reports were lost with it are still kept, and the reset re-sends them.
        """
        try:
            return call(timeout)
        except SystemError as exc:
            log.error("%s: librdkafka's %s failed: %s; the producer will be recreated", self.name, call.__name__, exc)
            self._broken = self._broken or f"{call.__name__} failed: {exc}"
            return None

    def poll(self, timeout: float = 0) -> int:
        """Serve delivery reports (and reset if one of them, or an error, asked for it)."""
        served = self._serve(self._producer.poll, timeout)
        self._heal()
        return served or 0

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every record is acknowledged (or failed for good) or ``timeout`` passes, resetting as
        needed; return how many are still unacknowledged."""
        deadline = self.clock() + timeout
        while True:
            left = deadline - self.clock()
            remaining = self._serve(self._producer.flush, max(min(left, 1.0), 0.0))
            self._heal()
            remaining = len(self._producer) if remaining is None else remaining
            if (not len(self) and not remaining) or self.clock() >= deadline:
                return len(self)

    def list_topics(self, timeout: float) -> object:
        """The cluster's metadata (raises ``KafkaException`` when no broker answers within ``timeout``)."""
        return self._producer.list_topics(timeout=timeout)

    def close(self) -> None:
        """Close the connections (after :meth:`flush`): a broker shutting down gracefully waits for open ones."""
        self._producer.close()

    # --- recovery ------------------------------------------------------------------------------------------------

    def _check_stall(self) -> None:
        if self.stall_reset_s is not None and not self._broken and self.stall_s > self.stall_reset_s:
            self._broken = f"no acknowledgement for {self.stall_s:.0f} s"

    def _heal(self) -> None:
        self._check_stall()
        while self._broken or self._unplaced:
            if self._broken:
                self._reset()  # re-sends every unacknowledged record, the unplaced ones included
            else:
                self._place_again()

    def _place_again(self) -> None:
        """Send again, under new sequence numbers, the records acknowledged without an offset."""
        seqs, self._unplaced = self._unplaced, []
        for seq in seqs:
            entry = self._pending.get(seq)
            if entry is None:
                continue
            if self._broken:  # kept: the reset re-sends it
                return
            entry.resends += 1
            self.resent += 1
            self.unplaced += 1
            self._send(seq, entry.topic, entry.value, entry.key, entry.timestamp, entry.callback)
        log.warning(
            '%s: %d records acknowledged without an offset (the broker answered a retry "duplicate sequence") '
            "sent again, in case it never stored them (%d so far)",
            self.name,
            len(seqs),
            self.unplaced,
        )

    def _reset(self) -> None:
        reason, self._broken = self._broken, None
        self._unplaced = []  # every unacknowledged record is sent again below
        old = self._producer
        self._generation += 1
        try:
            old.purge()
            old.poll(0)  # purged records' reports: ignored (kept) or counted as lost (not kept)
        except Exception as exc:  # noqa: BLE001 - a broken producer may refuse even this
            log.debug("%s: purge failed: %s", self.name, exc)
        self._producer = self._new()
        del old
        self.resets += 1
        resent = 0
        if self.keep_unacked:
            for seq, entry in list(self._pending.items()):
                if self._broken:
                    break
                entry.resends += 1
                self._send(seq, entry.topic, entry.value, entry.key, entry.timestamp, entry.callback)
                resent += 1
            self.resent += resent
        self._last_progress = self.clock()
        log.error(
            "%s: recreated the producer (%s); re-sent %d unacknowledged records in order (reset %d)",
            self.name,
            reason,
            resent,
            self.resets,
        )
        if self.on_reset is not None:
            self.on_reset(reason or "")


def _bind(fn, generation: int, seq: int, callback):
    return lambda err, msg: fn(generation, seq, callback, err, msg)


class _Lost:
    """Stands in for a ``Message`` in the report of a record dropped by a reset (nothing was sent)."""

    def __init__(self, topic: str, key: bytes | None):
        self._topic, self._key = topic, key

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes | None:
        return self._key

    def partition(self) -> int:
        return -1

    def offset(self) -> int:
        return -1

    def value(self) -> bytes | None:
        return None

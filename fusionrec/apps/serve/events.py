"""Events posted to the API: validated by the contract, produced to the events topic, awaited until acknowledged.

Validation is the contract's own (:func:`fusionrec.contracts.events.validate_dict`, with the shop's limits), so the
API rejects exactly what the workers would send to the dead-letter topic. A batch is all or nothing at validation:
one invalid event and none is produced, and the 422 lists every reason of every invalid event by its index.

Producing is librdkafka's (the same configuration as :class:`~fusionrec.producers.producer.EventProducer`:
``acks=all``, idempotent, keyed by user id). A thread serves the delivery reports and resolves one future per
event on the event loop; the request answers 202 only once the brokers acknowledged every event of it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Producer

from fusionrec.contracts.events import Event, Reason, validate_dict
from fusionrec.contracts.settings import Settings

__all__ = ["DeliveryError", "EventSender", "validate_batch"]

log = logging.getLogger("fusionrec.serve")


class DeliveryError(RuntimeError):
    """Some events of a request were not acknowledged by the brokers."""


def validate_batch(settings: Settings, objects: list[Any]) -> tuple[list[Event], list[dict[str, Any]]]:
    """The valid events, and ``{"index", "reasons"}`` for each invalid one (every reason, as the contract gives)."""
    limits = settings.event
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    for index, obj in enumerate(objects):
        result = validate_dict(
            obj,
            max_future_skew_ms=limits.max_future_skew_ms,
            max_price=limits.max_price,
            max_quantity=limits.max_quantity,
        )
        reasons = list(result.reasons)
        if result.event is not None:
            size = len(result.event.to_json())
            if size > limits.max_bytes:
                reasons.append(Reason("oversize", "", f"event is {size} bytes; the limit is {limits.max_bytes}"))
            else:
                events.append(result.event)
        if reasons:
            errors.append({"index": index, "reasons": [r.as_dict() for r in reasons]})
    return events, errors


class EventSender:
    """Produces events and awaits their acknowledgements; its thread serves librdkafka's callbacks."""

    def __init__(self, settings: Settings):
        self.topic = settings.topic.events
        self.timeout_s = settings.api.delivery_timeout_s
        self._producer = Producer(
            settings.producer_config(
                **{
                    "client.id": f"{settings.kafka.client_id}-api",
                    # librdkafka gives up on an event at the request's deadline, so every future resolves.
                    "message.timeout.ms": int(self.timeout_s * 1000),
                },
                error_cb=self._on_error,
            )
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fusionrec-api-deliveries", daemon=True)
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        log.warning("event producer: %s", err)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, events: list[Event]) -> list[tuple[int, int]]:
        """Produce ``events`` and wait until the brokers acknowledged them all; their ``(partition, offset)``.

        Raises :class:`DeliveryError` naming what failed (some events may still have been written: the workers
        dedupe by ``event_id``, so the caller can send the whole batch again).
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future] = []

        def settle(fut: asyncio.Future, err: str | None, where: tuple[int, int]) -> None:
            if not fut.done():
                if err is None:
                    fut.set_result(where)
                else:
                    fut.set_exception(DeliveryError(err))

        for event in events:
            fut = loop.create_future()
            futures.append(fut)

            def delivered(err: KafkaError | None, msg: Any, fut: asyncio.Future = fut) -> None:
                text = None if err is None else err.str()
                loop.call_soon_threadsafe(settle, fut, text, (msg.partition(), msg.offset()))

            try:
                self._producer.produce(
                    self.topic, event.to_json(), event.key, timestamp=event.ts, on_delivery=delivered
                )
            except BufferError:
                for pending in futures:
                    pending.cancel()
                raise DeliveryError("the producer's queue is full; retry shortly") from None
        try:
            async with asyncio.timeout(self.timeout_s + 1.0):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise DeliveryError(f"not acknowledged within {self.timeout_s:g} s") from None

    def broker_reachable(self, timeout: float = 2.0) -> str | None:
        """None when the brokers answer with the events topic's metadata, else why not (blocking: run it in a
        thread)."""
        try:
            meta = self._producer.list_topics(self.topic, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its message
            return str(exc)
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return f"topic {self.topic!r}: {'missing' if topic is None else topic.error.str()}"
        return None

    def close(self, timeout: float = 5.0) -> None:
        remaining = self._producer.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=2.0)
        if remaining:
            log.error("%d posted events were not delivered before the API stopped", remaining)

"""Dead letters of any size: cut to fit with a digest and a note; delivered, retried and counted once acknowledged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from fusionrec.contracts.dead_letters import (
    DEAD_LETTER_KEY_BYTES,
    dead_letter_key,
    dead_letter_record,
    shrink_dead_letter,
    was_truncated,
)
from fusionrec.contracts.events import Reason
from fusionrec.streams.dead_letters import DeadLetter, deliver
from fusionrec.streams.metrics import WorkerMetrics

REASONS = [Reason("oversize", "", "event is 1000000 bytes; the limit is 16384")]


def letter(raw, key=None, max_bytes=None):
    value = dead_letter_record(raw, REASONS, topic="t", partition=1, offset=7, key=key, now_ms=1, max_bytes=max_bytes)
    return value, orjson.loads(value)


def test_a_small_dead_letter_is_whole_with_size_and_digest():
    raw = b'{"type": "click"}'
    value, record = letter(raw, key=b"u1", max_bytes=10_000)
    assert base64.b64decode(record["original_b64"]) == raw and record["original_text"] == raw.decode()
    assert record["original_size"] == 17 and record["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert record["key_size"] == 2
    assert "truncated" not in record and not was_truncated(value)


def test_a_one_megabyte_message_is_cut_to_fit_with_its_digest():
    raw = os.urandom(1_000_000)
    value, record = letter(raw, key=b"u1", max_bytes=999_000)
    assert len(value) <= 999_000 and was_truncated(value)
    kept = base64.b64decode(record["original_b64"])
    assert raw.startswith(kept) and len(kept) > 700_000  # as much as fits
    assert record["truncated"] == ["original"] and "first bytes" in record["note"]
    assert record["original_size"] == 1_000_000 and record["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(record["key_b64"]) == b"u1"


def test_a_huge_key_is_cut_before_the_value_beyond_its_first_kilobyte():
    key = os.urandom(300_000)
    value, record = letter(b"x" * 5000, key=key, max_bytes=20_000)
    assert len(value) <= 20_000 and record["truncated"] == ["key"]
    assert base64.b64decode(record["original_b64"]) == b"x" * 5000
    assert key.startswith(base64.b64decode(record["key_b64"]))
    assert record["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert dead_letter_key(key) is None and dead_letter_key(b"u1") == b"u1" and dead_letter_key(None) is None
    assert dead_letter_key(b"k" * DEAD_LETTER_KEY_BYTES) is not None


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 200_000), st.integers(0, 50_000) | st.none(), st.integers(900, 300_000))
def test_any_sizes_fit_and_keep_prefixes(raw_size, key_size, max_bytes):
    raw = os.urandom(raw_size)
    key = None if key_size is None else os.urandom(key_size)
    value, record = letter(raw, key=key, max_bytes=max_bytes)
    assert len(value) <= max_bytes
    assert raw.startswith(base64.b64decode(record["original_b64"]))
    if key is not None:
        assert key.startswith(base64.b64decode(record["key_b64"]))
    assert was_truncated(value) == bool(record.get("truncated"))


def test_shrinking_halves_until_nothing_is_left_to_cut():
    value, _ = letter(os.urandom(100_000), key=b"u1")
    smaller = shrink_dead_letter(value, len(value) // 2)
    assert len(smaller) <= len(value) // 2 and orjson.loads(smaller)["truncated"] == ["original"]
    floor = shrink_dead_letter(smaller, 10)
    record = orjson.loads(floor)
    assert record["original_b64"] == "" and record["key_b64"] == "" and record["original_size"] == 100_000
    assert len(shrink_dead_letter(floor, 10)) == len(floor)


class FakeTopic:
    """A dead-letter topic whose producer fails as scripted: ``plan`` is a list of outcomes per send attempt."""

    def __init__(self, plan):
        self.plan = list(plan)
        self.delivered: list[tuple[bytes | None, bytes]] = []
        self.attempts = 0

    async def send(self, *, key, value):
        self.attempts += 1
        outcome = self.plan.pop(0) if self.plan else "ok"
        if outcome == "too_large_client":  # the producer's own check, wrapped by Faust
            try:
                raise MessageSizeTooLargeError("too large")
            except MessageSizeTooLargeError as exc:
                raise ProducerSendError("Error while sending") from exc
        ack = asyncio.get_running_loop().create_future()
        if outcome == "too_large_broker":
            ack.set_exception(MessageSizeTooLargeError())
        elif outcome == "down":
            ack.set_exception(KafkaConnectionError("broker away"))
        else:
            self.delivered.append((key, value))
            ack.set_result(object())
        return ack


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def metrics(registry):
    return WorkerMetrics(registry)


def test_deliver_retries_and_shrinks_and_counts_only_what_was_acknowledged(metrics, registry):
    count = registry.get_sample_value
    big, _ = letter(os.urandom(200_000), key=b"u1")
    letters = [DeadLetter(b"u1", big, "oversize"), DeadLetter(b"u2", b'{"small": 1}', "not_json")]
    topic = FakeTopic(["too_large_client", "down", "too_large_broker", "ok"])
    asyncio.run(deliver(topic.send, letters, metrics, retry_s=0.001))
    assert sorted(key for key, _ in topic.delivered) == [b"u1", b"u2"]
    sent_big = dict(topic.delivered)[b"u1"]
    assert len(sent_big) <= len(big) // 4 + 1000 and orjson.loads(sent_big)["original_size"] == 200_000
    assert count("fusionrec_worker_dead_letter_total", {"reason": "oversize"}) == 1
    assert count("fusionrec_worker_dead_letter_total", {"reason": "not_json"}) == 1
    assert count("fusionrec_worker_dead_letter_errors_total") == 3
    assert count("fusionrec_worker_dead_letter_truncated_total") == 2


def test_nothing_is_counted_while_the_broker_refuses(metrics, registry):
    count = registry.get_sample_value
    topic = FakeTopic(["down"] * 3)

    async def run():
        task = asyncio.ensure_future(deliver(topic.send, [DeadLetter(None, b"{}", "empty")], metrics, retry_s=0.05))
        await asyncio.sleep(0.02)
        assert (count("fusionrec_worker_dead_letter_total", {"reason": "empty"}) or 0) == 0 and not task.done()
        await task

    asyncio.run(run())
    assert topic.attempts == 4 and topic.delivered == [(None, b"{}")]
    assert count("fusionrec_worker_dead_letter_total", {"reason": "empty"}) == 1

"""ResilientProducer's recovery logic, without a broker: librdkafka queues locally and never connects."""

from __future__ import annotations

from confluent_kafka import KafkaError

from fusionrec.infra.resilient import ResilientProducer
from fusionrec.infra.stack import free_port


def _producer(**kwargs) -> ResilientProducer:
    config = {"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": 0, "enable.idempotence": True}
    return ResilientProducer(config, stall_reset_s=None, **kwargs)


class _Msg:
    def __init__(self, value, offset=0, partition=0):
        self._value = value
        self._offset = offset
        self._partition = partition

    def offset(self):
        return self._offset

    def partition(self):
        return self._partition

    def value(self):
        return self._value

    def topic(self):
        return "t"

    def key(self):
        return None


def test_a_fatal_error_recreates_the_producer_and_resends_in_order():
    resets = []
    producer = _producer(on_reset=resets.append)
    for i in range(5):
        producer.produce("t", f"v{i}".encode())
    old = producer._producer
    producer._on_error(KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "Unknown Producer Id", fatal=True))
    producer.poll(0)
    assert producer.resets == 1 and producer.resent == 5 and len(producer) == 5
    assert producer._producer is not old and resets and resets[0].startswith("fatal")
    assert [e.value for e in producer._pending.values()] == [f"v{i}".encode() for i in range(5)]


def test_acknowledged_records_are_not_resent_and_old_reports_are_ignored():
    producer = _producer()
    for i in range(3):
        producer.produce("t", f"v{i}".encode())
    generation = producer._generation
    producer._delivered(generation, 0, None, None, _Msg(b"v0"))  # acknowledged
    producer._on_error(KafkaError(KafkaError._FATAL, "fatal", fatal=True))
    producer.poll(0)
    assert producer.resent == 2 and len(producer) == 2
    producer._delivered(generation, 1, None, None, _Msg(b"v1"))  # the old producer's report: not ours any more
    assert len(producer) == 2


def test_permanent_failures_are_reported_not_resent():
    failed = []
    producer = _producer()
    producer.produce("t", b"big", on_delivery=lambda err, msg: failed.append(err.code()))
    producer._delivered(producer._generation, 0, None, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), _Msg(b"big"))
    producer.poll(0)
    assert failed == [KafkaError.MSG_SIZE_TOO_LARGE] and len(producer) == 0 and producer.resets == 0


def test_without_keeping_records_a_reset_reports_what_it_dropped():
    failed = []
    producer = _producer(keep_unacked=False)
    for i in range(3):
        producer.produce("t", f"v{i}".encode(), on_delivery=lambda err, msg: failed.append(err.code()))
    producer._on_error(KafkaError(KafkaError._FATAL, "fatal", fatal=True))
    producer.poll(0)
    assert producer.resets == 1 and producer.resent == 0
    assert len(failed) == 3  # purged from the old producer, each reported to its callback


def test_a_batch_acknowledged_without_an_offset_is_sent_again():
    """librdkafka reports a "duplicate sequence" answer as a success: the batch's first record at no offset, the
    others numbered 0, 1, ...; Tansu's s3 storage gives it for batches it never stored (docs/tansu.md), so those
    records go again, under new sequence numbers. A real batch after them is believed."""
    delivered = []
    producer = _producer()
    for i in range(4):
        producer.produce("t", f"v{i}".encode(), on_delivery=lambda err, msg: delivered.append(msg.offset()))
    generation = producer._generation
    for seq, offset in [(0, None), (1, 0), (2, 1)]:  # one batch, answered "duplicate"
        producer._delivered(generation, seq, None, None, _Msg(f"v{seq}".encode(), offset=offset))
    producer._delivered(generation, 3, None, None, _Msg(b"v3", offset=4000))  # the next batch, stored
    producer.poll(0)
    assert delivered == [4000] and len(producer) == 3 and producer.unplaced == 3 and producer.resent == 3
    assert producer.resets == 0 and [e.resends for e in producer._pending.values()] == [1, 1, 1]
    for seq, offset in [(0, 4001), (1, 4002), (2, 4003)]:  # the copies sent again are stored
        producer._delivered(generation, seq, None, None, _Msg(f"v{seq}".encode(), offset=offset))
    assert delivered == [4000, 4001, 4002, 4003] and len(producer) == 0


def test_an_acknowledgement_without_an_offset_is_believed_after_max_resends():
    delivered = []
    producer = _producer(max_resends=2)
    producer.produce("t", b"v0", on_delivery=lambda err, msg: delivered.append(msg.offset()))
    for _ in range(3):
        producer._delivered(producer._generation, 0, None, None, _Msg(b"v0", offset=None))
        producer.poll(0)
    assert producer.unplaced == 2 and delivered == [None] and len(producer) == 0


def test_a_broken_librdkafka_call_resets_instead_of_raising():
    """confluent-kafka's flush once raised SystemError after a fatal error on a broker restart, and killed a worker:
    the producer is recreated instead and what was not acknowledged is sent again."""
    producer = _producer()
    producer.produce("t", b"v0")
    old = producer._producer

    class _Broken:
        def __init__(self, real):
            self.real = real

        def flush(self, timeout):
            raise SystemError("<method 'flush' of 'cimpl.Producer' objects> returned NULL without setting an exception")

        def __getattr__(self, name):
            return getattr(self.real, name)

    producer._producer = _Broken(old)
    assert producer.flush(0.5) == 1  # not acknowledged (no broker), but no exception: reset and re-sent
    assert producer.resets == 1 and producer.resent == 1 and not isinstance(producer._producer, _Broken)

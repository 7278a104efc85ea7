"""TopicWatch (streams/rewind.py): a recreated events topic is rebased onto the state's offsets, never skipped."""

from __future__ import annotations

from fusionrec.streams.batching import Record, RecordBatch
from fusionrec.streams.rewind import MISSING, TopicWatch


class _Hashes:
    """The two Redis hash commands the watch uses, in memory (the real Redis: tests/integration/)."""

    def __init__(self):
        self.data: dict[str, dict[bytes, bytes]] = {}

    def hgetall(self, key):
        return dict(self.data.get(key, {}))

    def hset(self, key, mapping):
        self.data.setdefault(key, {}).update({k.encode(): str(v).encode() for k, v in mapping.items()})


def _batch(partition: int, offsets: range) -> RecordBatch:
    return RecordBatch("events", partition, [Record(o, b"u", b"{}", 0) for o in offsets])


def test_a_recreated_topic_continues_the_state_offsets():
    ids = iter(["A", "A", MISSING, "B", "B"])
    store = _Hashes()
    watch = TopicWatch(store, "fr:topic-id:events", "events", lambda: next(ids))
    assert watch.check({0: 0, 1: 0}) == set() and watch.ready  # first sight: the id is remembered
    assert watch.check({0: 500, 1: 300}) == set() and watch.bases == {}
    assert watch.check({0: 500, 1: 300}) == set() and not watch.ready  # gone: not ready, nothing to rebase yet
    assert watch.check({0: 500, 1: 300}) == {0, 1}  # back with a new id: the new offset 0 continues at 500 / 300
    assert watch.bases == {0: 500, 1: 300} and not watch.ready and watch.detections == 1
    batch = watch.translate(_batch(0, range(0, 3)))
    assert [r.offset for r in batch.records] == [500, 501, 502]
    assert watch.to_topic(0, 502) == 2 and watch.to_state(1, 0) == 300
    assert not watch.ready  # partition 1 has not read the new topic yet
    watch.translate(_batch(1, range(0, 1)))
    assert watch.ready
    assert watch.check({0: 503, 1: 301}) == set()  # the same new topic: nothing more
    again = TopicWatch(store, "fr:topic-id:events", "events", lambda: "B")  # a restarted worker reads the bases
    assert again.bases == {0: 500, 1: 300} and again.ids == {0: "B", 1: "B"}


def test_a_topic_end_behind_the_state_is_reported_not_rebased():
    watch = TopicWatch(_Hashes(), "k", "events", lambda: "A")
    watch.check({0: 100})
    watch.check_end(0, 100, 100)
    assert watch.ready
    watch.check_end(0, 40, 100)
    assert not watch.ready and watch.rewound == {0} and watch.bases == {}
    watch.check_end(0, 120, 100)
    assert watch.ready


def test_a_broker_that_does_not_answer_proves_nothing():
    watch = TopicWatch(_Hashes(), "k", "events", lambda: None)
    assert watch.check({0: 100}) == set() and watch.ready and watch.ids == {}


def test_a_rebased_partition_read_from_the_old_offsets_goes_back_to_the_start():
    """A worker assigned while the topic was gone resumes at its old offsets on the new topic: those batches are
    dropped and the consumer sent back to offset 0, and a batch fetched from the old offsets that comes after the
    new topic's first batch is dropped too: nothing below the old offsets is skipped."""
    ids = iter(["A", MISSING, "B"])
    watch = TopicWatch(_Hashes(), "k", "events", lambda: next(ids))
    watch.check({0: 0})
    watch.check({0: 900})  # gone at the assignment: the consumer resumes at the snapshot, ~900
    assert watch.check({0: 900}) == {0}  # a batch from offset 900 of the new topic looked like a redelivery
    assert watch.translate(_batch(0, range(900, 910))) is None and watch.resume_at(0) == 0
    assert not watch.ready
    batch = watch.translate(_batch(0, range(0, 5)))  # from the start, after the seek
    assert [r.offset for r in batch.records] == [900, 901, 902, 903, 904] and watch.ready
    assert watch.translate(_batch(0, range(910, 920))) is None and watch.resume_at(0) == 5  # fetched before the seek
    assert [r.offset for r in watch.translate(_batch(0, range(5, 12))).records] == list(range(905, 912))
    assert [r.offset for r in watch.translate(_batch(0, range(10, 13))).records] == [910, 911, 912]  # overlap: kept
    watch.forget([0])
    assert watch.translate(_batch(0, range(50, 51))) is not None  # reassigned later: positioned from its snapshot

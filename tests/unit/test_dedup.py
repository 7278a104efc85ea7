"""One user's dedup window (pure): keyed by event id alone, bounded, redeliveries told from duplicates."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fusionrec.stores.dedup import DUPLICATE, NEW, REDELIVERED, REDELIVERED_DUPLICATE, SeenIds


def run(window: SeenIds, records):
    return [window.check(event_id, partition, offset) for event_id, partition, offset in records]


def test_a_repeated_id_is_a_duplicate_whatever_its_offset_and_a_redelivery_is_not():
    window = SeenIds(max_ids=8)
    assert run(window, [("a", 0, 10), ("b", 0, 11), ("a", 0, 15)]) == [NEW, NEW, DUPLICATE]
    # the same records again (a restart re-reads from its snapshot): processed before, changed nothing then
    assert run(window, [("a", 0, 10), ("b", 0, 11), ("a", 0, 15)]) == [REDELIVERED, REDELIVERED, REDELIVERED_DUPLICATE]
    assert run(window, [("c", 0, 16), ("b", 0, 20)]) == [NEW, DUPLICATE]


def test_the_window_holds_the_last_max_ids_applied_ids():
    window = SeenIds(max_ids=3)
    assert run(window, [(f"e{i}", 0, i) for i in range(5)]) == [NEW] * 5
    assert len(window) == 3
    # e0 and e1 left the window: applied again; e2..e4 are still in it
    assert run(window, [("e0", 0, 10), ("e3", 0, 11), ("e4", 0, 12)]) == [NEW, DUPLICATE, DUPLICATE]


def test_a_redelivery_is_caught_after_its_id_left_the_window():
    window = SeenIds(max_ids=2)
    first = [(f"e{i}", 0, 100 + i) for i in range(10)]
    assert run(window, first) == [NEW] * 10
    assert run(window, first) == [REDELIVERED] * 10  # by offset: at or before the last record processed


def test_round_trip_keeps_every_decision():
    window = SeenIds(max_ids=4)
    run(window, [("a", 2, 1), ("b", 2, 2), ("a", 2, 3), ("c", 2, 7)])
    again = SeenIds.decode(window.encode(), max_ids=4)
    assert (again.partition, again.offset, again.skipped, bytes(again.digests)) == (2, 7, [3], bytes(window.digests))
    assert run(again, [("a", 2, 3), ("b", 2, 2), ("b", 2, 8), ("d", 2, 9)]) == [
        REDELIVERED_DUPLICATE,
        REDELIVERED,
        DUPLICATE,
        NEW,
    ]
    assert SeenIds.decode(None, 4).offset == -1 and len(SeenIds.decode(b"", 4)) == 0


def test_the_stored_entry_is_small_and_bounded():
    window = SeenIds(max_ids=256)
    run(window, [("web-7f3a9c", 0, 1), ("web-7f3a9d", 0, 2)])
    assert len(window.encode()) == 15 + 2 * 8
    run(window, [(f"ev-{i}", 0, 10 + i) for i in range(1000)] + [(f"ev-{i}", 0, 2000 + i) for i in range(900, 1000)])
    assert len(window.encode()) == 15 + 256 * 8 + 100 * 8  # 256 digests, 100 skipped offsets
    run(window, [(f"ev-{i}", 0, 3000 + i) for i in range(800, 1000)])  # 200 more duplicates: 256 offsets kept
    assert len(window.encode()) == 15 + 256 * 8 + 256 * 8


def test_a_new_partition_starts_a_new_watermark():
    window = SeenIds(max_ids=8)
    run(window, [("a", 0, 50), ("b", 0, 51)])
    # the topic recreated with another layout: low offsets on another partition are new records, ids still known
    assert run(window, [("c", 4, 3), ("a", 4, 4)]) == [NEW, DUPLICATE]


records = st.lists(st.sampled_from([f"e{i}" for i in range(12)]), max_size=60)


@settings(max_examples=200, deadline=None)
@given(records, st.lists(st.integers(1, 10), min_size=1, max_size=10), st.integers(1, 6))
def test_decisions_do_not_depend_on_how_batches_cut_the_stream(ids, cuts, max_ids):
    stream = [(event_id, 1, offset) for offset, event_id in enumerate(ids)]
    whole = run(SeenIds(max_ids), stream)
    stored, got, at = None, [], 0
    while at < len(stream):
        size = cuts[len(got) % len(cuts)]
        window = SeenIds.decode(stored, max_ids)  # each batch starts from what the last one stored
        got += run(window, stream[at : at + size])
        stored, at = window.encode(), at + size
    assert got == whole
    # a replay of all of it afterwards changes nothing: originals are redeliveries, and the last max_ids
    # duplicates are known as such (older ones are taken for originals: docs/worker.md, limits)
    dup_at = [i for i, status in enumerate(whole) if status == DUPLICATE]
    remembered = set(dup_at[-max_ids:])
    expected = [REDELIVERED_DUPLICATE if i in remembered else REDELIVERED for i in range(len(whole))]
    assert run(SeenIds.decode(stored, max_ids), stream) == expected

"""Profiles and dedup against the real Redis: new, redelivered and duplicate records, atomic writes, bounded windows."""

from __future__ import annotations

import uuid

import pytest
import redis

from fusionrec.contracts.events import Event
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.settings import DedupSettings, ProfileSettings
from fusionrec.stores.profiles import DUPLICATE, NEW, REDELIVERED, REDELIVERED_DUPLICATE, ProfileStore


@pytest.fixture
def store(stack):
    client = redis.Redis.from_url(stack.settings.redis.url)
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    yield ProfileStore(
        client,
        RedisKeys(prefix),
        ProfileSettings(recent_items=3, bought_items=3, categories=3),
        DedupSettings(window_s=120, max_ids=64),
    )
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_new_redelivered_and_duplicate_records(store):
    a = Event("e1", "u1", "i1", "view", 1_700_000_000_000, category_id="c1")
    b = Event("e2", "u1", "i2", "purchase", 1_700_000_000_500)
    assert store.apply([(a, 0, 10), (b, 0, 11), (a, 0, 12)]) == [NEW, NEW, DUPLICATE]  # dup inside one batch
    assert store.apply([(a, 0, 10), (b, 0, 11)]) == [REDELIVERED, REDELIVERED]  # same offsets again
    assert store.apply([(b, 3, 99)]) == [DUPLICATE]  # same id elsewhere
    profile = store.get("u1")
    assert profile.counts == {"view": 1, "purchase": 1}
    assert profile.recent_items == ["i2", "i1"] and profile.bought_items == ["i2"]
    assert profile.last_seen_ms == 1_700_000_000_500 and profile.categories == {"c1": 1.0}
    assert store.get_many(["u1", "nobody"])[1].is_new


def test_typical_profile_is_small(store):
    events = [
        Event(f"e{i}", "shopper-184467", f"sku-{1000 + i}", t, 1_700_000_000_000 + i, category_id=f"cat-{i % 3}")
        for i, t in enumerate(["view", "view", "add_to_cart", "view", "purchase"])
    ]
    store.apply([(e, 1, i) for i, e in enumerate(events)])
    assert store.client.memory_usage(store.profile_key("shopper-184467")) <= 300


def test_dedup_windows_and_profiles_expire(store):
    store.apply([(Event("e9", "u9", "i9", "view", 1_700_000_000_000), 0, 1)])
    assert 0 < store.client.ttl(store.profile_key("u9")) <= store.profile.ttl_s
    assert 0 < store.client.ttl(store.keys.dedup("u9")) <= 120


def test_a_large_batch_of_few_users(store):
    events = [(Event(f"big-{i}", f"u{i % 97}", f"i{i}", "view", 1_700_000_000_000), 0, i) for i in range(6000)]
    assert store.apply(events) == [NEW] * 6000
    assert store.apply(events[:10]) == [REDELIVERED] * 10
    assert sum(sum(p.counts.values()) for p in store.get_many([f"u{i}" for i in range(97)])) == 6000


def test_a_resent_event_is_a_duplicate_whatever_its_timestamp(store):
    now = 1_700_000_000_000
    first = [Event(f"row-{i}", "ann", f"i{i}", "view", now + i) for i in range(20)]
    assert store.apply([(e, 2, 100 + i) for i, e in enumerate(first)]) == [NEW] * 20
    # the same file re-sent with wall-clock stamps ten minutes and a day later: new records, same ids
    later = [e._replace(ts=e.ts + 600_000) for e in first[:10]] + [e._replace(ts=e.ts + 86_400_000) for e in first[10:]]
    assert store.apply([(e, 2, 500 + i) for i, e in enumerate(later)]) == [DUPLICATE] * 20
    assert store.get("ann").counts == {"view": 20}
    # and a restart that re-reads both: nothing changes, and the duplicates are known as such
    again = [(e, 2, 100 + i) for i, e in enumerate(first)] + [(e, 2, 500 + i) for i, e in enumerate(later)]
    assert store.apply(again) == [REDELIVERED] * 20 + [REDELIVERED_DUPLICATE] * 20
    assert store.get("ann").counts == {"view": 20}


def test_another_users_event_with_the_same_id_is_not_dropped(store):
    now = 1_700_000_000_000
    real = Event("web-1", "bob", "tea", "purchase", now)
    forged = Event("web-1", "mallory", "junk", "view", now - 10)  # same id, earlier, other user
    assert store.apply([(forged, 0, 1), (real, 1, 7)]) == [NEW, NEW]
    assert store.get("bob").bought_items == ["tea"] and store.get("mallory").counts == {"view": 1}


def test_the_window_is_bounded_per_user_and_small(store):
    events = [(Event(f"e{i}", "heavy", f"i{i % 7}", "view", 1_700_000_000_000 + i), 0, i) for i in range(1000)]
    assert store.apply(events) == [NEW] * 1000
    assert len(store.seen("heavy")) == 64  # dedup_max_ids in this store
    assert store.client.memory_usage(store.keys.dedup("heavy")) <= 64 * 8 + 200
    # an id older than the window is applied again (the documented limit); a recent one is not
    old, recent = events[0][0], events[-1][0]
    assert store.apply([(old, 0, 2000), (recent, 0, 2001)]) == [NEW, DUPLICATE]
    # a redelivery of everything is still caught, by offset, although most ids have left the window
    assert set(store.apply(events)) == {REDELIVERED}
    assert store.get("heavy").counts == {"view": 1001}

    store.apply([(Event("web-7f3a9c", "shopper-184467", "sku-1", "view", 1_700_000_000_000), 3, 5)])
    assert store.client.memory_usage(store.keys.dedup("shopper-184467")) <= 120  # a typical user: a few bytes

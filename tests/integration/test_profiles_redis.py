"""Profiles and dedup against the real Redis: new, redelivered and duplicate records, atomic writes."""

from __future__ import annotations

import uuid

import pytest
import redis

from fusionrec.contracts.events import Event
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.settings import DedupSettings, ProfileSettings
from fusionrec.stores.profiles import DUPLICATE, NEW, REDELIVERED, ProfileStore


@pytest.fixture
def store(stack):
    client = redis.Redis.from_url(stack.settings.redis.url)
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    yield ProfileStore(
        client,
        RedisKeys(prefix),
        ProfileSettings(recent_items=3, bought_items=3, categories=3),
        DedupSettings(window_s=120),
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


def test_seen_entries_and_profiles_expire(store):
    store.apply([(Event("e9", "u9", "i9", "view", 1_700_000_000_000), 0, 1)])
    assert 0 < store.client.ttl(store.profile_key("u9")) <= store.profile.ttl_s
    seen = next(iter(store.client.scan_iter(match=store.keys.seen("*"))))
    assert 0 < store.client.ttl(seen) <= 120


def test_a_batch_in_one_dedup_bucket_larger_than_luas_unpack_limit(store):
    events = [(Event(f"big-{i}", f"u{i % 97}", f"i{i}", "view", 1_700_000_000_000), 0, i) for i in range(6000)]
    assert store.apply(events) == [NEW] * 6000
    assert store.apply(events[:10]) == [REDELIVERED] * 10
    assert sum(sum(p.counts.values()) for p in store.get_many([f"u{i}" for i in range(97)])) == 6000

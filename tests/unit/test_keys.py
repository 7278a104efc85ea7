"""The key schema's hash tags: every multi-key operation's keys land in one Redis Cluster slot."""

from __future__ import annotations

import doctest

import pytest
from redis.crc import key_slot

import fusionrec.contracts.keys
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.settings import Settings

USERS = ["u1", "user-42", "a}b", "}x", "}", "}}", "{x}", "x{", "{", "ä}ö", "a" * 200, "7f3a9c0d"]


def test_doctests():
    assert doctest.testmod(fusionrec.contracts.keys).failed == 0


@pytest.mark.parametrize("user", USERS)
def test_a_users_keys_share_one_slot(user):
    keys = RedisKeys("fr:")
    slots = {key_slot(k.encode()) for k in (keys.profile(user), keys.dedup(user), keys.recommendation(user))}
    assert len(slots) == 1


def test_users_keys_are_distinct_and_spread():
    keys = RedisKeys("fr:")
    users = sorted(set(USERS) | {f"user-{i}" for i in range(2000)})
    assert len({keys.profile(u) for u in users}) == len(users)  # the two tag forms never collide
    assert len({key_slot(keys.profile(u).encode()) for u in users}) > 1500  # not one slot per partition


def test_a_topics_weights_share_one_slot_and_keep_their_partition():
    keys = RedisKeys("fr:")
    assert len({key_slot(keys.weights("events", p).encode()) for p in range(12)}) == 1
    assert [keys.partition_of(keys.weights("events", p)) for p in range(3)] == [0, 1, 2]


def test_a_prefix_with_braces_is_refused():
    with pytest.raises(ValueError, match="must not contain"):
        Settings().replace(redis_prefix="fr{x}:")

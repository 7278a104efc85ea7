"""The serving API's pure parts: key checks, the rerank order, weight means, batch validation, its settings."""

from __future__ import annotations

import hashlib
import time

import pytest

from fusionrec.apps.serve.app import mean_weights, rerank_items
from fusionrec.apps.serve.events import validate_batch
from fusionrec.apps.serve.http import ApiKeyCheck, hash_key
from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem
from fusionrec.contracts.settings import SettingsError, load_settings


def test_hash_key_is_the_sha256_hex_digest():
    assert hash_key("k") == hashlib.sha256(b"k").hexdigest()


def test_a_key_is_admitted_when_its_digest_is_any_of_the_configured():
    check = ApiKeyCheck((bytes.fromhex(hash_key("a")), bytes.fromhex(hash_key("b"))))
    assert check.admits("a") and check.admits("b")
    assert not check.admits("c") and not check.admits("") and not check.admits(None)
    assert ApiKeyCheck(()).admits(None)  # no digest configured: open


def test_settings_take_comma_separated_digests_and_refuse_others():
    conf = load_settings(api_key_hashes=f" {hash_key('a').upper()} , {hash_key('b')} ")
    assert conf.api.hashes == (bytes.fromhex(hash_key("a")), bytes.fromhex(hash_key("b")))
    assert conf.redacted()["api_key_hashes"] == "***"
    assert load_settings().api.hashes == ()
    with pytest.raises(SettingsError, match="FUSIONREC_API_KEY_HASHES: 1 of 2 entries are not SHA-256"):
        load_settings(api_key_hashes=f"{hash_key('a')},secret")


def _rec(items):
    return Recommendation(
        "u",
        tuple(RecommendedItem(i, s, parts) for i, s, parts in items),
        {},
        "new",
        Policy("bandit", "exploit", 1.0),
        0,
        "m",
        1,
        1,
    )


def test_rerank_puts_listed_items_first_by_score_and_keeps_the_rest_in_order():
    rec = _rec([("a", 0.9, {"cf": 0.9}), ("b", 0.7, {"covisit": 0.5, "cf": 0.2}), ("c", 0.1, {})])
    out = rerank_items("u", ["z", "b", "y", "a", "z", "c"], rec)
    assert [i["item_id"] for i in out["items"]] == ["a", "b", "c", "z", "y"]
    assert [i["given_position"] for i in out["items"]] == [3, 1, 5, 0, 2]
    assert out["items"][1]["reason"] == "#2 on the user's fused list: covisit 0.50 + cf 0.20"
    assert out["items"][2]["reason"] == "#3 on the user's fused list"
    assert [i["on_list"] for i in out["items"]] == [True, True, True, False, False]
    cold = rerank_items("u", ["z", "y"], None)
    assert not cold["personalised"] and [i["item_id"] for i in cold["items"]] == ["z", "y"]


def test_mean_weights_average_each_source_over_partitions():
    entries = [{"weights": {"new": {"cf": 0.2, "trending": 0.8}}}, {"weights": {"new": {"cf": 0.4, "trending": 0.6}}}]
    assert mean_weights(entries)["new"] == pytest.approx({"cf": 0.3, "trending": 0.7})
    assert mean_weights([]) == {}


def test_a_batch_is_validated_with_every_reason_of_every_event():
    conf = load_settings(event_max_bytes=256)
    now = int(time.time() * 1000)
    good = {"event_id": "e", "user_id": "u", "item_id": "i", "type": "view", "ts": now}
    big = good | {"session_id": "s" * 128, "category_id": "c" * 128, "rec_id": "r" * 128}  # each field legal
    events, invalid = validate_batch(conf, [good, {"type": "nope"}, big, 5])
    assert [e.event_id for e in events] == ["e"]
    assert [e["index"] for e in invalid] == [1, 2, 3]
    assert {r["code"] for r in invalid[0]["reasons"]} >= {"missing_field", "unknown_type"}
    assert [r["code"] for r in invalid[1]["reasons"]] == ["oversize"]
    assert [r["code"] for r in invalid[2]["reasons"]] == ["not_an_object"]


def test_lists_are_read_under_the_pseudonym_when_the_privacy_key_is_set():
    from fusionrec.apps.serve.app import Serving
    from fusionrec.contracts.privacy import Pseudonymiser, pseudonym
    from fusionrec.contracts.settings import load_settings

    key = "a-long-enough-secret"
    settings = load_settings(privacy_user_key=key)
    serving = Serving(settings, None, None, None, pseudonyms=Pseudonymiser.from_settings(settings))
    assert serving.list_key("u1") == settings.redis.keys.recommendation(pseudonym(key.encode(), "u1"))
    assert "u1" not in serving.list_key("u1")
    plain = Serving(load_settings(), None, None, None)
    assert plain.list_key("u1") == load_settings().redis.keys.recommendation("u1")

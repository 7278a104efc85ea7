"""The recommendations topic's format: the worker's direct payload and the typed object encode the same JSON."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from fusionrec.contracts.recommendations import (
    Policy,
    Recommendation,
    RecommendationFormatError,
    RecommendedItem,
    decode,
    encode,
    encode_message_and_copy,
)
from fusionrec.models.fused import FusedList
from fusionrec.models.fusion import Pull
from fusionrec.models.ranker import RankedItem, RankedList
from fusionrec.streams.publisher import list_payload


def fused_list() -> FusedList:
    ranked = RankedList(
        "u1",
        [
            RankedItem("i1", 0.812345678, {"covisit": 0.5123456789, "cf": 0.3000000001}, "c1"),
            RankedItem("i2", 0.4, {"popular": 0.4}, None),
        ],
        {"covisit": ["i1"], "cf": ["i1", "i9"], "popular": ["i2"]},
    )
    pull = Pull({"covisit": 0.6, "cf": 0.2666666667, "popular": 0.1333333333}, "bandit", "boost:cf", 0.0333333333, 7)
    return FusedList(ranked, "returning", pull, ranker="learned")


def test_the_published_payload_decodes_to_the_list_rounded_to_six_decimals():
    value = orjson.dumps(
        list_payload(fused_list(), model_version="m", generated_at=20, newest_event_ts=10, partition=3)
    )
    rec = decode(value)
    assert rec == Recommendation(
        user_id="u1",
        items=(
            RecommendedItem("i1", 0.812346, {"covisit": 0.512346, "cf": 0.3}, "c1"),
            RecommendedItem("i2", 0.4, {"popular": 0.4}, None),
        ),
        sources={"covisit": ("i1",), "cf": ("i1", "i9"), "popular": ("i2",)},
        segment="returning",
        policy=Policy("bandit", "boost:cf", 0.033333, {"covisit": 0.6, "cf": 0.266667, "popular": 0.133333}),
        weights_version=7,
        model_version="m",
        generated_at=20,
        newest_event_ts=10,
        partition=3,
        ranker="learned",
    )
    assert encode(rec) == value  # the typed object writes the same bytes


def test_the_redis_copy_is_the_message_in_rows_without_the_per_source_lists():
    obj = list_payload(fused_list(), model_version="m", generated_at=20, newest_event_ts=10, partition=3)
    whole = orjson.dumps(obj)
    message, copy = encode_message_and_copy(obj)
    assert orjson.loads(message) == orjson.loads(whole)  # the same JSON object (sources moved to the end)
    assert decode(message) == decode(whole)
    stored, full = orjson.loads(copy), orjson.loads(whole)
    assert "sources" not in stored and stored["items"] == [
        [i["item_id"], i["score"], i["category_id"], i["contributions"]] for i in full["items"]
    ]
    assert {k: v for k, v in stored.items() if k != "items"} == {
        k: v for k, v in full.items() if k not in ("items", "sources")
    }
    assert decode(copy) == dataclasses.replace(decode(whole), sources={})
    assert len(copy) < len(message)
    assert obj == orjson.loads(whole)  # the object is given back as it came


def test_a_row_of_the_wrong_length_is_a_format_error():
    _, copy = encode_message_and_copy(
        list_payload(fused_list(), model_version="m", generated_at=20, newest_event_ts=10, partition=3)
    )
    broken = orjson.loads(copy)
    broken["items"][0] = broken["items"][0][:3]
    with pytest.raises(RecommendationFormatError, match="bad field value"):
        decode(orjson.dumps(broken))

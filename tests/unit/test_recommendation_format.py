"""The recommendations topic's format: the worker's direct payload and the typed object encode the same JSON."""

from __future__ import annotations

import orjson

from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem, decode, encode
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

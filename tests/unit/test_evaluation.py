"""The prequential evaluation on tiny hand-made streams, with the expected values worked out by hand."""

from __future__ import annotations

import math

import pytest

from fusionrec.apps.evaluation import EvalConfig, RankMetrics, evaluate, rating_mae, sessionize
from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import load_settings

T0 = 1_700_000_000_000
SETTINGS = load_settings(ranker_device="cpu")


def test_rank_metrics_by_hand():
    m = RankMetrics((1, 5))
    for rank in (0, 3, None, 6):
        m.add(rank)
    m.add(None, served=False)
    s = m.summary()
    assert s["targets"] == 5 and s["served"] == 0.8
    assert s["hits@1"] == 1 and s["hits@5"] == 2
    assert s["hr@1"] == 0.2 and s["hr@5"] == 0.4
    assert s["mrr@5"] == pytest.approx((1 + 1 / 4) / 5, abs=1e-4)
    assert s["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 5, abs=1e-4)
    assert s["mrr@1"] == pytest.approx(0.2)


def four_events():
    return [
        Event("e0", "u1", "i1", "view", T0 + 1),  # new, no list yet
        Event("e1", "u2", "i2", "view", T0 + 2),  # new, no list yet
        Event("e2", "u1", "i1", "add_to_cart", T0 + 3),  # repeat; u1's list was made after block 0
        Event("e3", "u2", "i1", "view", T0 + 4),  # new for u2; u2's list was made after block 1
    ]


def test_lists_in_effect_and_hits_by_hand():
    report = evaluate(four_events(), EvalConfig(block=1, settings=SETTINGS))
    v = report["variants"]
    assert report["run"]["targets"] == 4
    # popular: after block 0 the list is [i1] (u1 hits at rank 0); after block 1 it is [i2, i1], ties broken by the
    # larger id, so u2 hits i1 at rank 1. Two of four targets, MRR (1 + 1/2)/4, NDCG (1 + 1/log2 3)/4.
    popular = v["popular"]["all"]
    assert popular["hits@20"] == 2 and popular["hr@20"] == 0.5
    assert popular["mrr@20"] == pytest.approx(0.375, abs=1e-4)
    assert popular["ndcg@20"] == pytest.approx((1 + 1 / math.log2(3)) / 4, abs=1e-4)
    assert popular["served"] == 0.5  # the first two events had no list
    # recent: u1's list holds i1 (the cart is a hit at rank 0); u2's holds i2 only.
    recent = v["recent"]
    assert recent["all"]["hits@20"] == 1 and recent["kind:repeat"]["hits@20"] == 1
    assert recent["kind:repeat"]["targets"] == 1 and recent["kind:new"]["targets"] == 3
    # co-visitation has nothing to propose from one item per user
    assert v["covisit"]["all"]["hits@20"] == 0
    # the fused lists contain both hits
    assert v["fused:equal"]["all"]["hits@20"] == 2 and v["fused:bandit"]["all"]["hits@20"] == 2
    assert v["fused:bandit"]["segment:new"]["targets"] == 4  # nobody has 5 events yet
    assert report["catalogue"] == 2


def test_block_is_the_list_lag():
    """With both events of u1 in one block, the second is judged against no list at all."""
    events = four_events()
    report = evaluate(events, EvalConfig(block=4, settings=SETTINGS))
    assert report["variants"]["popular"]["all"]["hits@20"] == 0
    assert report["variants"]["popular"]["all"]["served"] == 0.0


def test_train_until_and_warmup_only_learn():
    events = four_events()
    until = evaluate(events, EvalConfig(block=1, train_until=T0 + 4, settings=SETTINGS))
    assert until["run"]["scored_events"] == 1
    assert until["variants"]["popular"]["all"]["targets"] == 1
    assert until["variants"]["popular"]["all"]["hits@20"] == 1  # e3, learned from e0..e2 without scoring them
    warm = evaluate(events, EvalConfig(block=1, warmup=3, settings=SETTINGS))
    assert warm["variants"]["popular"]["all"] == until["variants"]["popular"]["all"]


def test_holdout_reports_both_arms_over_all_users():
    events = [Event(f"e{n}", f"u{n % 40}", f"i{n % 7}", "view", T0 + n) for n in range(400)]
    report = evaluate(events, EvalConfig(block=10, holdout=0.5, settings=SETTINGS))
    v = report["variants"]
    assert v["ab:bandit"]["all"]["targets"] > 0 and v["ab:fixed"]["all"]["targets"] > 0
    # every target falls in exactly one arm, served or not
    assert v["ab:bandit"]["all"]["targets"] + v["ab:fixed"]["all"]["targets"] == v["fused:bandit"]["all"]["targets"]


def test_sessions_stand_in_for_users():
    events = [
        Event("a", "u", "i1", "view", T0),
        Event("b", "u", "i2", "view", T0 + 1000),
        Event("c", "u", "i3", "view", T0 + 10_000_000),
    ]
    assert [e.user_id for e in sessionize(events, 60_000)] == ["u#0", "u#0", "u#1"]
    report = evaluate(events, EvalConfig(block=1, session_gap_ms=60_000, settings=SETTINGS))
    assert report["run"]["session_gap_ms"] == 60_000
    assert report["variants"]["popular"]["all"]["served"] == pytest.approx(1 / 3, abs=1e-3)  # u#1 is new


def test_report_names_the_best_single_source_and_the_timeline():
    events = [Event(f"e{n}", f"u{n % 30}", f"i{(n * 7) % 50}", "view", T0 + n * 1000) for n in range(600)]
    report = evaluate(events, EvalConfig(block=20, windows=5, settings=SETTINGS))
    assert report["best_single"] in report["variants"]
    assert 4 <= len(report["timeline"]) <= 6
    assert set(report["timeline"][-1]["weights"]) == {"new", "returning"}


def test_rating_mae_runs_ours_and_river_side_by_side():
    events = [
        Event(f"r{n}", f"u{n % 20}", f"m{(n * 3) % 40}", "rate", T0 + n, rating=float(1 + (n * 7) % 5))
        for n in range(2000)
    ]
    result = rating_mae(events)
    assert result["ratings"] == 2000
    assert abs(result["mae"]["cf"] - result["mae"]["river"]) < 0.05
    assert rating_mae(four_events()) is None


def test_a_list_is_made_when_any_event_of_the_next_active_block_is_a_target():
    """u1's next block starts with a repeat view (not a target) and then views a new item: the list made after
    block 0 must exist for that second event."""
    events = [
        Event("a", "u1", "i1", "view", T0 + 1),
        Event("d", "u2", "i3", "view", T0 + 2),
        Event("b", "u1", "i1", "view", T0 + 3),  # block 1: repeat view, not a target
        Event("c", "u1", "i3", "view", T0 + 4),  # block 1: new item, judged against the list made after block 0
    ]
    report = evaluate(events, EvalConfig(block=2, settings=SETTINGS))
    popular = report["variants"]["popular"]["all"]
    # targets: a and d (unserved: first events), c (served: after block 0 popular is [i3, i1], so i3 at rank 0)
    assert popular["targets"] == 3 and popular["served"] == pytest.approx(1 / 3, abs=1e-3)
    assert popular["hits@20"] == 1 and popular["mrr@20"] == pytest.approx(1 / 3, abs=1e-3)

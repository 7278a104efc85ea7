"""The online evaluation's join and counts, on hand-made streams whose hits were worked out by hand."""

from __future__ import annotations

import doctest

import pytest

import fusionrec.consumers.online_eval
from fusionrec.consumers.online_eval import OnlineEvaluator
from fusionrec.contracts.events import Event
from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem


def rec(user, generated_at, items, sources=None, segment="returning"):
    return Recommendation(
        user_id=user,
        items=tuple(RecommendedItem(item, 1.0 - n / 100) for n, item in enumerate(items)),
        sources={name: tuple(ids) for name, ids in (sources or {}).items()},
        segment=segment,
        policy=Policy("bandit", "exploit", 0.9),
        weights_version=1,
        model_version="test",
        generated_at=generated_at,
        newest_event_ts=generated_at - 1,
    )


def ev(ts, user, item, type="view", rating=None):
    return Event(f"e{ts}-{user}-{item}", user, item, type, ts, rating=rating)


LISTS = [
    rec("ann", 1000, "abcd", {"cf": "befa", "pop": "ga"}),
    rec("ann", 3000, "efg", {"cf": "e", "pop": "abcd"}),
    rec("bob", 2000, "xy", {"pop": "x", "recent": "z"}, segment="new"),
]

#: (event, what observe_event returns), judged at k=3 against LISTS. The reasons are in the comments.
STREAM = [
    (ev(500, "ann", "a"), {}),  # new; ann's first list is from 1000: unserved
    (ev(1500, "ann", "b"), {"fused": True, "cf": True, "pop": False}),  # new; list 1000: b 2nd, cf 1st
    (ev(1600, "ann", "d"), {"fused": False, "cf": False, "pop": False}),  # new; d is 4th in the fused list: cut
    (ev(1700, "ann", "b"), None),  # a repeat view is not a target
    (ev(2500, "ann", "a", "purchase"), {"fused": True, "cf": False, "pop": True}),  # repeat; still list 1000
    (ev(3000, "ann", "e", "favourite"), {"fused": True, "cf": True, "pop": False}),  # new; list 3000 (inclusive)
    (ev(3100, "ann", "z", "impression"), None),
    (ev(3200, "ann", "q", "rate", 2.0), None),  # low rating: not a target, but q is seen now
    (ev(3300, "ann", "q", "add_to_cart"), {"fused": False, "cf": False, "pop": False}),  # repeat
    (ev(2100, "bob", "y", "add_to_cart"), {"fused": True, "pop": False, "recent": False}),  # new; segment new
    (ev(2200, "bob", "z", "rate", 5.0), {"fused": False, "pop": False, "recent": True}),  # new
    (ev(1900, "bob", "x"), {}),  # new; bob's list was made after the event: unserved
    (ev(2300, "carl", "x", "purchase"), {}),  # new; carl never had a list
    (ev(2400, "bob", "y", "purchase"), {"fused": True, "pop": False, "recent": False}),  # repeat
]


def cell(hits, targets):
    return {"targets": targets, "hits": hits, "hit_rate": hits / targets if targets else None}


def variant(new, repeat, new_seg, returning_seg):
    hits, targets = new[0] + repeat[0], new[1] + repeat[1]
    return cell(hits, targets) | {
        "by_kind": {"new": cell(*new), "repeat": cell(*repeat)},
        "by_segment": {"new": cell(*new_seg), "returning": cell(*returning_seg)},
    }


def run(evaluator, lists=LISTS, stream=STREAM):
    for served in lists:
        evaluator.observe_list(served)
    return [evaluator.observe_event(event) for event, _ in stream]


def test_each_event_is_judged_against_the_list_in_effect():
    assert run(OnlineEvaluator(k=3)) == [expected for _, expected in STREAM]


def test_summary_counts_per_variant_kind_and_segment():
    evaluator = OnlineEvaluator(k=3)
    run(evaluator)
    # (hits, targets) from STREAM's comments: ann's targets are in segment returning, bob's in new.
    assert evaluator.summary() == {
        "k": 3,
        "targets": 8,
        "unserved": 3,
        "unserved_by_kind": {"new": 3, "repeat": 0},
        "lists": 3,
        "variants": {
            "fused": variant(new=(3, 5), repeat=(2, 3), new_seg=(2, 3), returning_seg=(3, 5)),
            "cf": variant(new=(2, 3), repeat=(0, 2), new_seg=(0, 0), returning_seg=(2, 5)),
            "pop": variant(new=(0, 5), repeat=(1, 3), new_seg=(0, 3), returning_seg=(1, 5)),
            "recent": variant(new=(1, 2), repeat=(0, 1), new_seg=(1, 3), returning_seg=(0, 0)),
        },
    }
    assert evaluator.summary()["variants"]["fused"]["hit_rate"] == 0.625
    assert evaluator.unserved == 3


def test_given_sources_are_judged_on_every_target_missing_ones_as_misses():
    evaluator = OnlineEvaluator(k=3, sources=["cf", "recent", "trending"])
    run(evaluator)
    variants = evaluator.summary()["variants"]
    assert list(variants) == ["fused", "cf", "recent", "trending"]  # pop is not asked for
    # cf has no list for bob: his 3 targets are misses. recent has none for ann: her 5 are misses.
    assert [(variants[v]["hits"], variants[v]["targets"]) for v in variants] == [(5, 8), (2, 8), (1, 8), (0, 8)]


def test_k_cuts_the_fused_list_and_each_source_list():
    evaluator = OnlineEvaluator(k=1)
    evaluator.observe_list(rec("ann", 1000, "abcd", {"cf": "befa"}))
    assert evaluator.observe_event(ev(1500, "ann", "b")) == {"fused": False, "cf": True}
    assert evaluator.observe_event(ev(1600, "ann", "a")) == {"fused": True, "cf": False}
    assert evaluator.observe_event(ev(1700, "ann", "e")) == {"fused": False, "cf": False}


def test_lists_may_arrive_in_any_order_and_redeliveries_replace():
    evaluator = OnlineEvaluator(k=3)
    for served in [LISTS[1], LISTS[2], LISTS[0], LISTS[0]]:
        evaluator.observe_list(served)
    assert [evaluator.observe_event(event) for event, _ in STREAM] == [expected for _, expected in STREAM]
    assert evaluator.list_in_effect("ann", 2999).generated_at == 1000
    assert evaluator.list_in_effect("ann", 3000).generated_at == 3000
    assert evaluator.list_in_effect("ann", 999) is None and evaluator.list_in_effect("nobody", 5000) is None
    assert evaluator.summary()["lists"] == 4  # records read, the redelivery included


def test_only_the_latest_lists_per_user_are_kept():
    evaluator = OnlineEvaluator(k=3, max_lists_per_user=2)
    for at, item in ((1000, "a"), (2000, "b"), (3000, "c")):
        evaluator.observe_list(rec("ann", at, item))
    assert evaluator.observe_event(ev(1500, "ann", "a")) == {}  # list 1000 was dropped: unserved
    assert evaluator.observe_event(ev(2500, "ann", "b")) == {"fused": True}
    evaluator.observe_list(rec("ann", 500, "z"))  # older than every kept list: dropped at once
    assert evaluator.list_in_effect("ann", 600) is None


def test_users_beyond_the_cap_drop_the_least_recently_updated():
    evaluator = OnlineEvaluator(k=3, max_users=16)  # drops one user at a time
    for n in range(16):
        evaluator.observe_list(rec(f"u{n}", 1000, "a"))
    evaluator.observe_list(rec("u0", 2000, "b"))  # u0 updated: u1 is the oldest now
    evaluator.observe_list(rec("u16", 1000, "a"))
    assert evaluator.list_in_effect("u1", 1500) is None
    assert evaluator.list_in_effect("u0", 1500) is not None and evaluator.list_in_effect("u2", 1500) is not None


def test_non_targets_are_not_counted_anywhere():
    evaluator = OnlineEvaluator()
    evaluator.observe_list(rec("ann", 1000, "a"))
    assert evaluator.observe_event(ev(1500, "ann", "a", "impression")) is None
    assert evaluator.observe_event(ev(1600, "ann", "a", "remove_from_cart")) is None
    summary = evaluator.summary()
    assert summary["targets"] == 0 and summary["unserved"] == 0
    assert summary["variants"] == {
        "fused": cell(0, 0) | {"by_kind": {"new": cell(0, 0), "repeat": cell(0, 0)}, "by_segment": {}}
    }


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"max_lists_per_user": 0}, {"max_users": 0}])
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(ValueError):
        OnlineEvaluator(**kwargs)


def test_docstring_examples_pass():
    result = doctest.testmod(fusionrec.consumers.online_eval, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0

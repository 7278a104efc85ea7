"""The prequential evaluation on tiny hand-made streams, with the expected values worked out by hand.

The hand-worked tests run one partition with its own item side (``SETTINGS``), where a list sees every event
learned before it; the production layout (partitions, the shared item side and its sync ticks, event-time lag) has
tests of its own at the end."""

from __future__ import annotations

import doctest
import math
from collections import Counter

import pytest

import fusionrec.apps.evaluation
from fusionrec.apps.evaluation import EvalConfig, RankMetrics, _Run, evaluate, rating_mae, refresh_blocks, sessionize
from fusionrec.apps.evaluation_report import format_summary
from fusionrec.contracts.events import Event
from fusionrec.contracts.partitioning import partition_for
from fusionrec.contracts.settings import load_settings
from fusionrec.models import SOURCES

T0 = 1_700_000_000_000
SETTINGS = load_settings(ranker_device="cpu", topic_events_partitions=1, model_item_sync_ms=0)
PRODUCTION = load_settings(ranker_device="cpu")  # 6 partitions, item side shared in 1,000 ms ticks, 200 ms lag


def test_rank_metrics_by_hand():
    m = RankMetrics((1, 5))
    for rank in (0, 3, None, 6):
        m.add(rank)
    m.add(None, served=False)
    s = m.summary()
    assert s["targets"] == 5 and s["served"] == 0.8 and s["unserved"] == 1
    assert s["hr_served@5"] == 0.5  # two hits among the four targets that had a list
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


# --- the production layout -----------------------------------------------------------------------------------------


def user_on(partition: int, partitions: int, start: int = 0) -> str:
    """The first user id ``u{n}`` (n >= start) that murmur2 places on ``partition``."""
    n = start
    while partition_for(f"u{n}".encode(), partitions) != partition:
        n += 1
    return f"u{n}"


def test_the_config_defaults_are_the_settings():
    conf = load_settings(topic_events_partitions=4, ranker_interval_ms=300, model_item_sync_ms=500)
    config = EvalConfig(settings=conf)
    assert (config.n_partitions, config.refresh_lag_ms, config.sync_ms) == (4, 300, 500)
    assert EvalConfig(block=10, lag_ms=50, settings=conf).refresh_lag_ms is None  # --block wins
    assert EvalConfig(partitions=2, item_sync_ms=0, lag_ms=50, settings=conf).sync_ms == 0
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        EvalConfig(partitions=0, settings=conf)


def test_refresh_blocks_follow_event_time_windows():
    ts = [T0, T0 + 150, T0 + 199, T0 + 200, T0 + 999, T0 + 5000, T0 + 5001]
    events = [Event(f"e{n}", "u", "i", "view", t) for n, t in enumerate(ts)]
    assert refresh_blocks(events, lag_ms=200) == [(0, 3), (3, 4), (4, 5), (5, 7)]
    assert refresh_blocks(events, lag_ms=1000) == [(0, 5), (5, 7)]
    assert refresh_blocks(events, block=3, lag_ms=200) == [(0, 3), (3, 6), (6, 7)]  # a count wins
    assert refresh_blocks([], lag_ms=200) == []


def lag_events():
    return [
        Event("a", "u1", "i1", "view", T0),
        Event("b", "u2", "i2", "view", T0 + 10),
        Event("c", "u1", "i2", "view", T0 + 100),  # u1 again, 100 ms later: new item i2
    ]


def test_lag_ms_is_the_list_lag_in_event_time():
    """Within one 200 ms window u1's second event sees no list; with 50 ms windows it sees the list made after
    the first window, where popularity ranks i2 (ties: larger id first) first."""
    same = evaluate(lag_events(), EvalConfig(lag_ms=200, settings=SETTINGS))
    assert same["run"]["blocks"] == 1 and same["run"]["lag_ms"] == 200 and same["run"]["block"] is None
    assert same["variants"]["popular"]["all"]["unserved"] == 3
    apart = evaluate(lag_events(), EvalConfig(lag_ms=50, settings=SETTINGS))
    assert apart["run"]["blocks"] == 2
    popular = apart["variants"]["popular"]["all"]
    assert popular["unserved"] == 2 and popular["hits@20"] == 1 and popular["mrr@20"] == pytest.approx(1 / 3, abs=1e-3)


def test_the_shared_item_side_lags_by_less_than_a_tick():
    """With the item side shared in 1,000 ms ticks, u1's list made after the first 50 ms window has u1's own
    history (recent) but no popularity yet: the tick it belongs to is still open."""
    report = evaluate(lag_events(), EvalConfig(lag_ms=50, partitions=1, item_sync_ms=1000, settings=SETTINGS))
    assert report["run"]["item_sync_ms"] == 1000 and report["run"]["partitions"] == 1
    popular = report["variants"]["popular"]["all"]
    assert popular["unserved"] == 2 and popular["served"] == 0.0 and popular["hits@20"] == 0
    assert report["variants"]["recent"]["all"]["served"] == pytest.approx(1 / 3, abs=1e-3)


def test_users_of_one_partition_only_touch_that_partition():
    users = [user_on(p, 3, start=10 * p) for p in range(3)]
    events = [Event(f"e{n}", users[n % 3], f"i{n % 5}", "view", T0 + 1000 * n) for n in range(30)]
    run = _Run(EvalConfig(partitions=3, item_sync_ms=1000, settings=SETTINGS), list(SOURCES))
    run.learn(events)
    for p, state in enumerate(run.states):
        assert state.offset == 9  # its own offsets: the ten events of its one user
        assert state.fusion.n_users == 1 and state.fusion.segment(users[p]) == "returning"
        for user in users:
            assert bool(state.models["recent"].candidates(user, 5)) == (user == users[p])
    report = evaluate(events, EvalConfig(partitions=3, item_sync_ms=1000, settings=SETTINGS))
    assert report["partition_events"] == [10, 10, 10] and len(report["partition_rewards"]) == 3


def test_every_partition_ranks_against_the_shared_item_side():
    """u_b (partition 1) is offered i1, which only u_a (partition 0) has touched: with the item side shared, once
    the tick of u_a's event is applied; kept per partition, never. (Without the abuse limits: with them, one new
    user's view does not make an item popular; tests/unit/test_guard.py.)"""
    a, b = user_on(0, 2), user_on(1, 2)
    events = [
        Event("e0", a, "i1", "view", T0),
        Event("e1", b, "i2", "view", T0 + 5000),
        Event("e2", b, "i1", "view", T0 + 10_000),
    ]
    unguarded = SETTINGS.replace(model_guard_min_users=0)
    shared = evaluate(events, EvalConfig(partitions=2, item_sync_ms=1000, settings=unguarded))
    assert shared["variants"]["popular"]["all"]["hits@20"] == 1
    apart = evaluate(events, EvalConfig(partitions=2, item_sync_ms=0, settings=SETTINGS))
    assert apart["variants"]["popular"]["all"]["hits@20"] == 0


def test_only_the_lists_that_will_be_judged_are_made():
    """Four blocks of one event: u1's list after block 0 (e2 is a target) and u2's after block 1 (e3); none after
    a user's last event."""
    report = evaluate(four_events(), EvalConfig(block=1, settings=SETTINGS))
    assert report["run"]["lists_made"] == 2


def test_summary_counts_what_the_metrics_use():
    report = evaluate(four_events(), EvalConfig(block=1, warmup=1, settings=SETTINGS))
    run = report["run"]
    assert (run["targets"], run["targets_in_file"]) == (3, 4)  # the warm-up event is not scored
    assert (run["served_targets"], run["unserved_targets"], run["served_share"]) == (2, 1, 0.6667)
    assert run["hr@20"] == report["variants"]["fused:bandit"]["all"]["hr@20"]
    assert run["hr_served@20"] == pytest.approx(run["hr@20"] * 3 / 2, abs=1e-3)
    text = format_summary(report)
    assert "3 scored targets (of 4 in the file): 2 served (66.7%), 1 unserved" in text
    assert "1 partition, item side per partition" in text and "every 1 events" in text


def test_six_partitions_keep_every_target():
    """The layout changes the lists, never which events are judged."""
    events = [Event(f"e{n}", f"u{(n * 7) % 40}", f"i{(n * 3) % 25}", "view", T0 + 150 * n) for n in range(600)]
    one = evaluate(events, EvalConfig(partitions=1, settings=PRODUCTION))
    six = evaluate(events, EvalConfig(settings=PRODUCTION))
    assert six["run"]["partitions"] == 6 and six["run"]["item_sync_ms"] == 1000 and six["run"]["lag_ms"] == 200
    for variant in one["variants"]:
        assert six["variants"][variant]["all"]["targets"] == one["variants"][variant]["all"]["targets"]
    assert sum(six["partition_events"]) == 600
    assert six["partition_events"] == [
        Counter(partition_for(e.user_id.encode(), 6) for e in events)[p] for p in range(6)
    ]


def test_the_module_examples():
    assert doctest.testmod(fusionrec.apps.evaluation).failed == 0


def test_train_until_reads_seconds_milliseconds_and_iso_times():
    from fusionrec.apps.cli.data import _parse_time

    assert _parse_time("887039271") == 887_039_271_000  # MovieLens-100K, 1998, in seconds
    assert _parse_time("887039271000") == 887_039_271_000  # the same in ms: 12 digits, not 13
    assert _parse_time("1511663679000") == 1_511_663_679_000
    assert _parse_time("1998-02-09T15:47:51") == 887_039_271_000

"""The online evaluation's join in event time (``TimeOrderedJoin``): what the Kafka reader feeds the evaluator, on
hand-made read orders whose judgements were worked out by hand."""

from __future__ import annotations

import fusionrec.consumers.online_eval
from fusionrec.consumers.online_eval import OnlineEvaluator, TimeOrderedJoin
from fusionrec.contracts.events import Event
from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem

GRACE_MS = 100


def rec(user, generated_at, items):
    return Recommendation(
        user,
        tuple(RecommendedItem(item, 1.0) for item in items),
        {},
        "returning",
        Policy("bandit", "exploit", 0.9),
        1,
        "test",
        generated_at,
        generated_at - 1,
    )


def ev(ts, user, item):
    return Event(f"e{ts}-{user}-{item}", user, item, "view", ts)


def join(**kwargs):
    evaluator = OnlineEvaluator(k=1, **kwargs)
    return evaluator, TimeOrderedJoin(evaluator, GRACE_MS, [0], [0], now=0.0)


def hits_and_unserved(evaluator):
    summary = evaluator.summary()
    return summary["variants"]["fused"]["hits"], summary["unserved"]


def test_lists_read_ahead_of_the_events_do_not_push_the_list_in_effect_out():
    # Ann's three lists are read before her three events (a run from the beginning); each event's item is first on
    # the list made before it. Fed in read order, an evaluator remembering one list per user keeps only the last.
    lists = [rec("ann", 1000, "a"), rec("ann", 2000, "b"), rec("ann", 3000, "c")]
    events = [ev(1500, "ann", "a"), ev(2500, "ann", "b"), ev(3500, "ann", "c")]
    naive = OnlineEvaluator(k=1, max_lists_per_user=1)
    for served in lists:
        naive.observe_list(served)
    for event in events:
        naive.observe_event(event)
    assert hits_and_unserved(naive) == (1, 2)

    evaluator, joined = join(max_lists_per_user=1)
    for served in lists:
        joined.add_list(0, served, now=0.0)
    for event in events:
        joined.add_event(0, event, now=0.0)
    joined.judge_due(now=0.0)
    # Lists made after 1500 + grace and 2500 + grace have arrived: those two are judged at once; 3500 waits.
    assert hits_and_unserved(evaluator) == (2, 0) and len(joined.pending) == 1
    joined.judge_due(now=0.2)  # no list for a grace period: judged with what has arrived
    assert hits_and_unserved(evaluator) == (3, 0) and not joined.pending


def test_an_event_waits_for_lists_that_are_still_arriving():
    evaluator, joined = join()
    joined.add_event(0, ev(1500, "ann", "a"), now=0.0)
    joined.add_list(0, rec("bob", 900, "x"), now=0.08)  # lists are arriving, but none made after 1500 yet
    joined.judge_due(now=0.15)  # past the grace period: still waits
    assert len(joined.pending) == 1 and evaluator.lists_seen == 1  # bob's list precedes every event to come
    joined.add_list(0, rec("ann", 1000, "a"), now=0.16)  # ann's list in effect, late (a lagging worker)
    joined.add_list(0, rec("bob", 1700, "y"), now=0.17)  # made after 1500 + grace: every earlier list is in
    joined.judge_due(now=0.17)
    assert hits_and_unserved(evaluator) == (1, 0) and not joined.pending
    assert evaluator.lists_seen == 2  # bob's 1700 list waits: an event still to come may precede it


def test_without_lists_arriving_an_event_is_judged_after_the_grace_period():
    evaluator, joined = join()
    joined.add_event(0, ev(1500, "ann", "a"), now=0.0)
    joined.judge_due(now=0.05)
    assert len(joined.pending) == 1
    joined.judge_due(now=0.1)
    assert hits_and_unserved(evaluator) == (0, 1) and not joined.pending


def test_a_full_list_buffer_lets_the_events_move_on(monkeypatch):
    monkeypatch.setattr(fusionrec.consumers.online_eval, "MAX_HELD_LISTS", 2)
    evaluator, joined = join()
    joined.add_event(0, ev(1500, "ann", "a"), now=0.0)
    joined.add_list(0, rec("ann", 1000, "a"), now=0.0)
    joined.judge_due(now=0.0)
    assert len(joined.pending) == 1 and not joined.held  # waits for a list made after 1600; ann's is handed over
    joined.add_list(0, rec("bob", 1550, "x"), now=0.0)
    joined.judge_due(now=0.0)
    assert len(joined.pending) == 1 and len(joined.held) == 1  # bob's list waits for the event before it
    joined.add_list(0, rec("cat", 1560, "y"), now=0.0)  # two held: the reader pauses the lists; judge now
    joined.judge_due(now=0.0)
    assert hits_and_unserved(evaluator) == (1, 0) and not joined.pending


def test_drain_judges_what_is_pending_then_hands_over_every_list():
    evaluator, joined = join()
    joined.add_list(0, rec("ann", 1000, "a"), now=0.0)
    joined.add_list(0, rec("ann", 5000, "z"), now=0.0)
    joined.add_event(0, ev(1500, "ann", "a"), now=0.0)
    joined.drain()
    assert hits_and_unserved(evaluator) == (1, 0) and evaluator.lists_seen == 2 and not joined.held

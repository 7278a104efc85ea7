"""Online evaluation: were the users' next interactions on the lists they were being served?

Joins the recommendations topic with the events topic. For each target event (:mod:`fusionrec.models.targets`: a
discovery
``"new"`` or a conversion ``"repeat"``) it finds the user's *list in effect*: the latest list generated at or before
the event's time (``generated_at <= event.ts``), so the list a user's own event caused never counts for it. It
then records, for the fused list (variant ``"fused"``, its first ``k`` items) and for each source's own top
``k`` (the list's ``sources``, what that source alone would have recommended), whether the event's item was on
it: a hit rate at ``k`` per variant, per target kind and per user segment, measured on the same events.

:class:`OnlineEvaluator` holds the counts and :class:`TimeOrderedJoin` feeds it in event time; both are pure (no
Kafka, no metrics client). :mod:`fusionrec.consumers.online_eval_service` reads both topics into them and exports
the counts as Prometheus metrics.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from fusionrec.contracts.events import Event
from fusionrec.contracts.recommendations import Recommendation
from fusionrec.models.targets import TARGET_KINDS, TargetFilter

__all__ = ["FUSED", "MAX_HELD_LISTS", "MAX_PENDING_EVENTS", "MAX_WAIT_S", "OnlineEvaluator", "TimeOrderedJoin"]

log = logging.getLogger("fusionrec.online_eval")

#: The variant name of the fused list (the others are source names).
FUSED = "fused"


@dataclass(frozen=True, slots=True)
class _Served:
    """A list as the evaluator keeps it: the cut sets computed once, when it arrives."""

    generated_at: int
    rec: Recommendation
    fused: frozenset[str]
    sources: Mapping[str, frozenset[str]]


def _rate(hits: int, targets: int) -> float | None:
    return hits / targets if targets else None


def _cell(hits: int, targets: int) -> dict[str, Any]:
    return {"targets": targets, "hits": hits, "hit_rate": _rate(hits, targets)}


class OnlineEvaluator:
    """Hit rate at ``k`` of the fused lists and of every source, on the events that followed them.

    Feed it lists (:meth:`observe_list`) and events (:meth:`observe_event`); an event is judged against the lists
    seen so far, so feed a list before the events that come after it, and not long before the events that come
    before it (``max_lists_per_user``): :func:`run_online_eval` feeds both in event time.

    Parameters
    ----------
    k
        Length of the lists compared: the first ``k`` items of the fused list and of each source's list.
    sources
        Source names to evaluate. ``None``: every source the list in effect has (a source missing from a list is
        not judged on that event). Given: exactly these, and a source missing from the list in effect counts as a
        miss (it proposed nothing).
    max_lists_per_user
        Lists remembered per user, the most recently generated ones; an event older than all of them is unserved.
    max_users
        Users whose lists are remembered; a new user beyond it first drops the least recently updated 1/16.
    targets
        The target rule (default: a fresh :class:`~fusionrec.models.targets.TargetFilter`).

    Examples
    --------

    >>> from fusionrec.contracts.recommendations import Policy, Recommendation, RecommendedItem
    >>> def rec(user, at, items, sources):
    ...     return Recommendation(user, tuple(RecommendedItem(i, 1.0) for i in items), sources, "new",
    ...                           Policy("bandit", "exploit", 0.9), 1, "test", at, at)
    >>> ev = OnlineEvaluator(k=2)
    >>> ev.observe_list(rec("ann", 100, ["tea", "mug", "pot"], {"cf": ("pot", "tea"), "recent": ("cup",)}))
    >>> ev.observe_event(Event("e1", "ann", "pot", "view", 150))
    {'fused': False, 'cf': True, 'recent': False}
    >>> ev.observe_event(Event("e2", "bob", "tea", "view", 150)) # bob has no list: unserved
    {}
    >>> ev.summary()["variants"]["cf"]["hit_rate"], ev.summary()["unserved"]
    (1.0, 1)

    """

    def __init__(
        self,
        k: int = 20,
        sources: Iterable[str] | None = None,
        *,
        max_lists_per_user: int = 4,
        max_users: int = 1_000_000,
        targets: TargetFilter | None = None,
    ):
        if k < 1 or max_lists_per_user < 1 or max_users < 1:
            raise ValueError("k, max_lists_per_user and max_users must be at least 1")
        self.k = k
        self.sources = None if sources is None else tuple(sources)
        self.max_lists_per_user = max_lists_per_user
        self.max_users = max_users
        self._filter = targets if targets is not None else TargetFilter()
        self._lists: dict[str, list[_Served]] = {}  # user -> lists by generated_at; least recently updated first
        self._targets: Counter[tuple[str, str]] = Counter()  # (variant, kind)
        self._hits: Counter[tuple[str, str]] = Counter()
        self._segment_targets: Counter[tuple[str, str]] = Counter()  # (variant, segment)
        self._segment_hits: Counter[tuple[str, str]] = Counter()
        self._unserved: Counter[str] = Counter()  # kind
        self.lists_seen = 0

    @property
    def unserved(self) -> int:
        """Target events whose user had no list in effect."""
        return sum(self._unserved.values())

    def observe_list(self, rec: Recommendation) -> None:
        """Remember a published list (a redelivered one, same user and ``generated_at``, replaces its copy)."""
        self.lists_seen += 1
        k = self.k
        names = rec.sources if self.sources is None else self.sources
        served = _Served(
            rec.generated_at,
            rec,
            frozenset(rec.item_ids[:k]),
            {name: frozenset(rec.sources.get(name, ())[:k]) for name in names},
        )
        lists = self._lists.pop(rec.user_id, None)
        if lists is None:
            lists = []
            if len(self._lists) >= self.max_users:
                for old in list(islice(self._lists, max(1, self.max_users // 16))):
                    del self._lists[old]
        self._lists[rec.user_id] = lists  # most recently updated last
        at = bisect.bisect_right(lists, rec.generated_at, key=lambda s: s.generated_at)
        if at and lists[at - 1].generated_at == rec.generated_at:
            lists[at - 1] = served
        else:
            lists.insert(at, served)
            if len(lists) > self.max_lists_per_user:
                del lists[0]

    def list_in_effect(self, user_id: str, ts: int) -> Recommendation | None:
        """The latest list of ``user_id`` generated at or before ``ts`` (epoch ms), if any is remembered."""
        served = self._in_effect(user_id, ts)
        return None if served is None else served.rec

    def _in_effect(self, user_id: str, ts: int) -> _Served | None:
        lists = self._lists.get(user_id)
        if not lists:
            return None
        at = bisect.bisect_right(lists, ts, key=lambda s: s.generated_at)
        return lists[at - 1] if at else None

    def observe_event(self, event: Event) -> dict[str, bool] | None:
        """Judge one event: ``None`` if it is not a target, ``{}`` if its user had no list in effect (unserved),
        else ``{variant: hit}`` for ``"fused"`` and each source evaluated."""
        kind = self._filter.classify(event)
        if kind is None:
            return None
        served = self._in_effect(event.user_id, event.ts)
        if served is None:
            self._unserved[kind] += 1
            return {}
        item, segment = event.item_id, served.rec.segment
        result = {FUSED: item in served.fused}
        for name, ids in served.sources.items():
            result[name] = item in ids
        for variant, hit in result.items():
            self._targets[variant, kind] += 1
            self._segment_targets[variant, segment] += 1
            if hit:
                self._hits[variant, kind] += 1
                self._segment_hits[variant, segment] += 1
        return result

    @property
    def variants(self) -> list[str]:
        """``"fused"`` first, then the sources evaluated so far (or given), by name."""
        names = set(self.sources or ()) | {variant for variant, _ in self._targets}
        names.discard(FUSED)
        return [FUSED, *sorted(names)]

    def summary(self) -> dict[str, Any]:
        """Every count as plain data (JSON-ready): targets, hits and hit rate per variant, overall, by kind and by
        segment, plus the unserved targets. A hit rate with no targets is ``None``."""
        segments = sorted({segment for _, segment in self._segment_targets})
        variants = {}
        for variant in self.variants:
            targets = sum(self._targets[variant, kind] for kind in TARGET_KINDS)
            hits = sum(self._hits[variant, kind] for kind in TARGET_KINDS)
            variants[variant] = _cell(hits, targets) | {
                "by_kind": {
                    kind: _cell(self._hits[variant, kind], self._targets[variant, kind]) for kind in TARGET_KINDS
                },
                "by_segment": {
                    segment: _cell(self._segment_hits[variant, segment], self._segment_targets[variant, segment])
                    for segment in segments
                },
            }
        return {
            "k": self.k,
            "targets": variants[FUSED]["targets"],
            "unserved": self.unserved,
            "unserved_by_kind": {kind: self._unserved[kind] for kind in TARGET_KINDS},
            "lists": self.lists_seen,
            "variants": variants,
        }


# --- the time-ordered join --------------------------------------------------------------------------------------------
#: Lists read ahead of the events being judged, and events read ahead of the lists, that :func:`run_online_eval`
#: keeps in memory before it pauses that topic (resumed at half).
MAX_HELD_LISTS = 10_000
MAX_PENDING_EVENTS = 100_000
#: An event is judged at the latest this long after it was read, whatever the lists are doing.
MAX_WAIT_S = 60.0


class TimeOrderedJoin:
    """Feeds an :class:`OnlineEvaluator` from the two topics in event time, whatever the order they are read in.

    Events wait in ``pending`` (arrival order) until the lists made before them have been read:

    * while lists are arriving (a recommendations partition is *active* if it delivered one in the last grace
      period, or is paused), until every active partition has delivered a list made more than ``grace_ms`` after
      the event (a worker publishes a partition's lists in the order it makes them; the margin covers several
      workers writing one partition). A backlog of lists, or a worker that lags, is waited for;
    * while none is arriving, ``grace_ms`` of wall time after the event was read;
    * and at the latest :data:`MAX_WAIT_S` after it was read, or at once when :data:`MAX_HELD_LISTS` lists are
      held (the lists cannot be read further until the events move on).

    Lists wait in ``held`` (by ``generated_at``) until no event before them is left to judge: the lists made at
    or before an event are handed to the evaluator just before it is judged, the others once every events
    partition has moved past them. So the evaluator's memory of a user's lists holds the lists in effect now, not
    lists read ahead of the events (a backlog, a run from the beginning), which would push the list in effect
    out of it. Assumes each events partition is roughly in time order (a user's events are: keyed by user).
    """

    def __init__(
        self,
        evaluator: OnlineEvaluator,
        grace_ms: int,
        list_partitions: Iterable[int],
        event_partitions: Iterable[int],
        now: float,
    ):
        self.evaluator = evaluator
        self.grace_ms = grace_ms
        self.lists_paused = False  # set by the reader while it has paused the recommendations topic
        self.pending: deque[tuple[float, Event]] = deque()  # (read at, monotonic seconds; event)
        self.held: list[tuple[int, int, Recommendation]] = []  # heap of (generated_at, arrival, list)
        self._arrivals = 0
        # Per recommendations partition: newest generated_at read, and when a list last arrived (the start counts,
        # so lists get one grace period to start arriving).
        self._list_marks = dict.fromkeys(list_partitions, -math.inf)
        self._list_arrived = dict.fromkeys(self._list_marks, now)
        self._event_marks = dict.fromkeys(event_partitions, -math.inf)  # newest event ts read, per partition

    def add_list(self, partition: int, rec: Recommendation, now: float) -> None:
        heapq.heappush(self.held, (rec.generated_at, self._arrivals, rec))
        self._arrivals += 1
        self._list_arrived[partition] = now
        if rec.generated_at > self._list_marks.get(partition, -math.inf):
            self._list_marks[partition] = rec.generated_at

    def add_event(self, partition: int, event: Event, now: float) -> None:
        self.pending.append((now, event))
        if event.ts > self._event_marks.get(partition, -math.inf):
            self._event_marks[partition] = event.ts

    def _release(self, until: float) -> None:
        """Hand the held lists made at or before ``until`` to the evaluator, oldest first."""
        held = self.held
        while held and held[0][0] <= until:
            self.evaluator.observe_list(heapq.heappop(held)[2])

    def judge_due(self, now: float) -> None:
        """Judge the pending events that are due, then hand over the lists no event still to come precedes."""
        grace_s = self.grace_ms / 1000
        active = [
            mark
            for partition, mark in self._list_marks.items()
            if self.lists_paused or now - self._list_arrived[partition] < grace_s
        ]
        lists_mark = min(active) if active else None
        pending = self.pending
        while pending:
            read_at, event = pending[0]
            waited = now - read_at
            due = (
                (waited >= grace_s if lists_mark is None else lists_mark > event.ts + self.grace_ms)
                or waited >= MAX_WAIT_S
                or len(self.held) >= MAX_HELD_LISTS
            )
            if not due:
                break
            pending.popleft()
            self._release(event.ts)
            self.evaluator.observe_event(event)
        events_mark = min(self._event_marks.values(), default=-math.inf)
        self._release(min(events_mark, pending[0][1].ts) if pending else events_mark)

    def drain(self) -> None:
        """Judge every pending event with the lists read so far, then hand over the rest of the lists."""
        while self.pending:
            event = self.pending.popleft()[1]
            self._release(event.ts)
            self.evaluator.observe_event(event)
        self._release(math.inf)

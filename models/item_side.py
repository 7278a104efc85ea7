"""One item side for the whole shop: every source's item-side state, learned from every partition's events in an
order that depends on the events alone.

Events are keyed by user, so a partition holds everything about its users, but only a share of what an item
learns (its popularity, its co-visitation links, its share of its category). A worker therefore keeps, beside each
partition's *user side* (the models learning :meth:`~fusionrec.models.base.Recommender.learn_user_side`), one
:class:`ItemSide` replica fed with the item-side records of **every** partition, and ranks each user from the two
joined (:meth:`ItemSide.views`).

Partitions interleave differently in every run (which worker holds them, when each batch arrives), and the item
side's state (pruned neighbour lists, caps) depends on the order it learns in. So records are applied in **sync
ticks** of event time (``interval_ms``): each partition stamps its events with its :class:`TickClock` and closes a
tick once its event time has passed it; the replica applies tick ``T`` once every partition has closed it,
partitions in order, each partition's records in offset order. The item side after tick ``T`` is then a function of
the events alone — the same for one worker or five, after a crash and a replay or not — and it lags each
partition by at most the tick in progress (plus the slowest partition's lag).

Pure: no I/O. The worker moves records through a Kafka topic (``fusionrec.streams.item_side``); the evaluation hands
them over in process.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .base import Recommender
from .guard import ItemSideGuard
from .learned import LearnedRanker

__all__ = ["LABELS", "ItemSide", "Record", "TickClock", "records_by_tick", "split_models"]

#: The key of a record's contexts under which an event's labelled pools travel to the shared learned ranker.
LABELS = "learned"

#: One event's item-side half: ``[offset, item_id, ts, {source: context}]`` (a list: it crosses JSON as is).
Record = list[Any]

_NONE = object()  # a source absent from a record's contexts

#: Records between two eviction passes of the replica, at tick boundaries (so eviction is a function of the events
#: too): as often as one partition's models evict per offsets (``fusionrec.streams.state.EVICT_EVERY``), so the
#: shared item side forgets idle items as a single partition would.
EVICT_EVERY_RECORDS = 50_000


def split_models(models: Mapping[str, Recommender]) -> dict[str, Recommender]:
    """The models of ``models`` that learn in two halves (their item side can be shared)."""
    return {name: model for name, model in models.items() if model.splits()}


class TickClock:
    """A partition's sync clock: stamps each event with the tick open when it arrived, in offset order.

    An event later than the open tick closes every tick before its own; an event earlier than it (out of order)
    joins the open tick. So the stamps are a function of the partition's event sequence (and of explicit
    :meth:`close_through` calls, which a worker makes only when the partition goes quiet).

    >>> clock = TickClock(1000)
    >>> [clock.stamp(ts) for ts in (100, 900, 2500, 1200, 3100)], clock.closed
    ([0, 0, 2, 2, 3], 2)

    """

    __slots__ = ("interval_ms", "open")

    def __init__(self, interval_ms: int, open_tick: int | None = None):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        self.interval_ms = interval_ms
        self.open = open_tick

    def stamp(self, ts: int) -> int:
        tick = ts // self.interval_ms
        if self.open is None or tick > self.open:
            self.open = tick
        return self.open

    @property
    def closed(self) -> int | None:
        """The last tick no later event of this partition will join (None before the first event)."""
        return None if self.open is None else self.open - 1

    def close_through(self, tick: int) -> None:
        """Close every tick up to ``tick`` (a quiet partition must not hold the others back)."""
        if self.open is None or self.open <= tick:
            self.open = tick + 1


class ItemSide:
    """The item-side replica: the shared half of every splittable source, fed by all ``partitions``.

    Parameters
    ----------
    models
        Fresh instances of the splittable sources (:func:`split_models`), by source name; they become the replica.
    partitions
        How many partitions feed it: a tick is applied once each of them has closed it.

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import CoVisitation, Popularity
    >>> side = ItemSide({"popular": Popularity()}, partitions=2)
    >>> user_side = Popularity()
    >>> record = [0, "mug", 1500, {"popular": user_side.learn_user_side(Event("e", "u", "mug", "view", 1500))}]
    >>> side.offer(0, 1, [record])
    1
    >>> side.close(0, 1); side.apply()  # partition 1 has not closed tick 1 yet
    0
    >>> side.close(1, 1); side.apply(), side.models["popular"].candidates("anyone", 1)
    (1, [('mug', 1.0)])

    """

    def __init__(
        self,
        models: Mapping[str, Recommender],
        partitions: int,
        learned: LearnedRanker | None = None,
        guard: ItemSideGuard | None = None,
    ):
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.models = dict(models)
        #: Abuse limits (per-user caps, voters before popularity, rate jumps), asked about every record as it is
        #: applied, so they too are a function of the events.
        self.guard = guard
        #: The learned ranker every partition ranks with, trained on every partition's labels (records' ``LABELS``)
        #: in the replica's order, a mini-batch whenever enough have arrived, at tick boundaries.
        self.learned = learned
        self.partitions = partitions
        #: Per partition: the last tick it closed (None: none yet), the last offset received (-1: none).
        self.closed: list[int | None] = [None] * partitions
        self.seen: list[int] = [-1] * partitions
        #: The last tick applied (None: none yet).
        self.applied: int | None = None
        self.records_applied = 0
        self._ticks: list[int] = []  # sorted ticks with pending records
        self._pending: dict[int, list[list[Record]]] = {}  # tick -> per partition, in offset order
        self._next_evict: int | None = None

    # --- feeding -----------------------------------------------------------------------------------------------

    def offer(self, partition: int, tick: int, records: Iterable[Record]) -> int:
        """Queue a partition's records stamped ``tick``; records at offsets already received are dropped (a
        replay after a crash sends them again). Returns how many were queued."""
        seen = self.seen[partition]
        fresh = [record for record in records if record[0] > seen]
        if not fresh:
            return 0
        self.seen[partition] = fresh[-1][0]
        if self.applied is not None and tick <= self.applied:
            tick = self.applied + 1  # late (a partition that was closed while quiet): the next tick to apply
        slots = self._pending.get(tick)
        if slots is None:
            slots = self._pending[tick] = [[] for _ in range(self.partitions)]
            bisect.insort(self._ticks, tick)
        slots[partition].extend(fresh)
        return len(fresh)

    def receive(self, partition: int, groups: Iterable[tuple[int, list[Record]]], closed: int | None) -> int:
        """Queue what one partition sent (its records by tick, as ``PartitionState.take_outbox`` groups them) and
        record the tick it closed; return how many records were new."""
        queued = sum(self.offer(partition, tick, records) for tick, records in groups)
        self.close(partition, closed)
        return queued

    def close(self, partition: int, through: int | None) -> None:
        """Record that ``partition`` will stamp nothing more at or before tick ``through``."""
        if through is not None:
            known = self.closed[partition]
            if known is None or through > known:
                self.closed[partition] = through

    def close_all(self, through: int) -> None:
        """Close every partition through ``through`` (an in-process replay that knows every partition's time)."""
        for partition in range(self.partitions):
            self.close(partition, through)

    @property
    def ready(self) -> int | None:
        """The last tick every partition has closed: how far :meth:`apply` may go (None: not yet)."""
        closed = self.closed
        if any(tick is None for tick in closed):
            return None
        return min(closed)  # type: ignore[type-var]

    def newest_tick(self) -> int | None:
        """The newest tick any partition has closed or stamped records with (None: nothing yet)."""
        known = [tick for tick in self.closed if tick is not None]
        if self._ticks:
            known.append(self._ticks[-1])
        return max(known, default=None)

    def lag_ticks(self) -> int:
        """How many ticks with records wait for a partition to close them."""
        return len(self._ticks)

    # --- applying ----------------------------------------------------------------------------------------------

    def apply(self) -> int:
        """Learn every queued tick up to :attr:`ready`, in tick, partition and offset order; return the records
        learned.

        A tick is learned source by source (:meth:`~fusionrec.models.base.Recommender.learn_item_side_many`), each
        source's records in that order: the sources share no state, and the guard's decisions depend only on the
        records it is offered, so this leaves the state record-by-record learning leaves, at a fraction of the
        per-record dispatch.
        """
        ready = self.ready
        if ready is None:
            return 0
        learned = 0
        while self._ticks and self._ticks[0] <= ready:
            tick = self._ticks.pop(0)
            self._evict_due()
            records = [record for slot in self._pending.pop(tick) for record in slot]
            self._learn(records)
            learned += len(records)
            self.records_applied += len(records)
            if self.learned is not None:
                self.learned.learn_pending()
            self.applied = tick
        if self.applied is None or ready > self.applied:
            self.applied = ready
        return learned

    def _learn(self, records: list[Record]) -> None:
        """One tick's records: the guard decides every record first, then each source learns what it may."""
        ranker = self.learned
        if ranker is not None:
            add = ranker.add_labelled
            for _offset, _item, _ts, contexts in records:
                labels = contexts.get(LABELS)
                if labels:
                    for labelled in labels:
                        add(labelled)
        guard = self.guard
        if guard is None:
            teach = popular = records
            guarded: frozenset[str] = frozenset()
        else:
            decisions = guard.admit_many(records)
            teach = [record for record, (teaches, _) in zip(records, decisions, strict=True) if teaches]
            popular = [record for record, (_, counts) in zip(records, decisions, strict=True) if counts]
            guarded = guard.sources
        for source, model in self.models.items():
            pool = popular if source in guarded else teach
            batch = [(item, ts, c) for _, item, ts, contexts in pool if (c := contexts.get(source, _NONE)) is not _NONE]
            if batch:
                model.learn_item_side_many(batch)

    def _evict_due(self) -> None:
        """Evict idle items once per ``EVICT_EVERY_RECORDS`` records applied, at a tick boundary."""
        if not self.models:
            return
        if self._next_evict is None:
            self._next_evict = EVICT_EVERY_RECORDS
        if self.records_applied >= self._next_evict:
            now = max(model.clock_ms for model in self.models.values())
            for model in self.models.values():
                model.evict(now)
            self._next_evict = (self.records_applied // EVICT_EVERY_RECORDS + 1) * EVICT_EVERY_RECORDS

    # --- ranking -----------------------------------------------------------------------------------------------

    def views(self, user_side: Mapping[str, Recommender]) -> dict[str, Recommender]:
        """A partition's models for ranking: the user side of each splittable source joined with this item side;
        the others as they are."""
        return {
            name: model.with_item_side(self.models[name]) if name in self.models else model
            for name, model in user_side.items()
        }

    # --- snapshots ---------------------------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """Everything but the models, JSON-able: the clocks, the offsets received and the records still queued."""
        return {
            "partitions": self.partitions,
            "closed": list(self.closed),
            "seen": list(self.seen),
            "applied": self.applied,
            "records_applied": self.records_applied,
            "next_evict": self._next_evict,
            "pending": [[tick, self._pending[tick]] for tick in self._ticks],
            "learned": None if self.learned is None else self.learned.to_state(),
            "guard": None if self.guard is None else self.guard.to_state(),
        }

    def load_meta(self, meta: Mapping[str, Any]) -> None:
        """Install what :meth:`meta` returned (the models are restored apart)."""
        if meta["partitions"] != self.partitions:
            raise ValueError(
                f"the item-side snapshot was taken with {meta['partitions']} partitions, not {self.partitions}"
            )
        self.closed = list(meta["closed"])
        self.seen = list(meta["seen"])
        self.applied = meta["applied"]
        self.records_applied = meta["records_applied"]
        self._next_evict = meta["next_evict"]
        self._pending = {tick: slots for tick, slots in meta["pending"]}
        self._ticks = sorted(self._pending)
        if self.learned is not None and meta.get("learned"):
            self.learned.load_state(meta["learned"])
        if self.guard is not None and meta.get("guard"):
            self.guard.load_state(meta["guard"])


def records_by_tick(stamped: Sequence[tuple[int, Record]]) -> list[tuple[int, list[Record]]]:
    """Group ``(tick, record)`` pairs (in offset order, so ticks never decrease) into one list per tick."""
    out: list[tuple[int, list[Record]]] = []
    for tick, record in stamped:
        if out and out[-1][0] == tick:
            out[-1][1].append(record)
        else:
            out.append((tick, [record]))
    return out

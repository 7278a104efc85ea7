"""Per-partition model state: the online recommenders of one events partition, with the offset they reflect.

Model state is kept per partition, not per worker: a partition's users (events are keyed by user) always land on
the same partition, so user-side state moves with the partition when the group rebalances, and one worker or
five produce the same models. The item side of the splittable sources (popularity, trending, co-visitation links,
category tallies) is shared instead: with a sync clock (``model.item_sync_ms`` > 0) a partition learns only their
user side and queues each event's item-side half for the shared :class:`~fusionrec.models.item_side.ItemSide`,
which the :class:`PartitionRegistry` reaches through an :class:`ItemSideFeed` (Kafka in the worker, in process
otherwise); a partition's users are ranked from its models joined with that item side (docs/worker.md).

Models that learn in mini-batches (those with a ``batch_size``, e.g. the CF model's vectorised SGD) would end up
in a state that depends on how fetches happened to cut the stream, so a crash and replay, or just different
timing, would give different models. They are fed in fixed blocks of ``batch_size`` events counted per
partition instead; the partial block waits in ``pending`` (and in the snapshot). Every other model learns each
batch at once. So a partition's models are a function of its event sequence alone.

Snapshots go to Redis under ``P snap:{topic}:{partition}`` (:class:`~fusionrec.contracts.keys.RedisKeys`) as one
hash: ``offset`` (the last offset learned), ``model:{name}`` per model, ``pending:{name}`` per block-fed model, and
``fusion`` (the bandit's state and the lists last served, which its rewards are credited against). The snapshot is
the source of truth for "what the models have learned"; offsets are committed to Kafka only up to it, so after a
crash a worker restores the snapshot and re-reads at most one snapshot interval.

:class:`PartitionRegistry` holds the states of the partitions this worker owns, loading each from its snapshot on
first use; the batch path (:mod:`~fusionrec.streams.apply`), the ranker (:mod:`~fusionrec.streams.refresh`) and the
snapshotter (:mod:`~fusionrec.streams.snapshots`) share it.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import orjson
import redis

from fusionrec.contracts.events import Event, validate_dict
from fusionrec.contracts.settings import RankerSettings, Settings
from fusionrec.models import SOURCES, Recommender
from fusionrec.models.fused import FusedRecommender
from fusionrec.models.fusion import FusionBandit
from fusionrec.models.guard import USER, ItemSideGuard, user_digest
from fusionrec.models.item_side import LABELS, ItemSide, Record, TickClock, records_by_tick, split_models
from fusionrec.models.learned import LearnedRanker
from fusionrec.models.ranker import FusionRanker
from fusionrec.models.topk import pick_device
from fusionrec.stores.client import connect
from fusionrec.streams.metrics import WorkerMetrics

__all__ = [
    "ItemSideFeed",
    "LocalItemSide",
    "PartitionRegistry",
    "PartitionState",
    "SnapshotStore",
    "build_fusion",
    "build_item_side",
    "build_models",
    "build_ranker",
    "enabled_sources",
    "partition_clock",
]

log = logging.getLogger("fusionrec.state")

#: Offsets between two eviction passes (per partition, so eviction is a function of the stream, not of timing).
EVICT_EVERY = 50_000


def enabled_sources(settings: Settings) -> dict[str, type[Recommender]]:
    """The registered sources ``model.sources`` names, in its order (``ValueError`` for a name not registered)."""
    names = settings.model.sources.split(",")
    unknown = [name for name in names if name not in SOURCES]
    if unknown:
        raise ValueError(f"FUSIONREC_MODEL_SOURCES names unknown sources {unknown}; known: {sorted(SOURCES)}")
    return {name: SOURCES[name] for name in names}


def source_params(settings: Settings, name: str, partition: int) -> dict[str, object]:
    """The constructor arguments the settings give source ``name`` (seeded by partition where it draws)."""
    model = settings.model
    params: dict[str, object] = {"max_idle_ms": model.max_idle_s * 1000}
    accepted = inspect.signature(SOURCES[name]).parameters
    params |= {
        cap: value for cap, value in (("max_users", model.max_users), ("max_items", model.max_items)) if cap in accepted
    }
    if name == "cf":
        params["seed"] = 1000 + partition
    elif name == "sknn":
        params |= {
            "session_gap_ms": model.session_gap_ms,
            "query_items": model.sknn_query_items,
            "sample_size": model.sknn_sample_size,
            "neighbours": model.sknn_neighbours,
            "neighbour_half_life_ms": model.sknn_half_life_s * 1000,
            "max_session_items": model.sknn_session_items,
            "max_sessions": model.sknn_max_sessions,
        }
    elif name == "successor":
        params |= {
            "steps": model.successor_steps,
            "seed_items": model.successor_seed_items,
            "session_gap_ms": model.session_gap_ms,
            "half_life_ms": model.successor_half_life_s * 1000,
            "max_successors": model.successor_max,
        }
    elif name == "itemcf":
        params |= {
            "recent_items": model.itemcf_recent_items,
            "max_history": model.itemcf_history,
            "max_seen": model.itemcf_seen,
            "half_life_ms": model.itemcf_half_life_s * 1000,
            "max_neighbours": model.itemcf_neighbours,
        }
    return params


def build_models(settings: Settings, partition: int) -> dict[str, Recommender]:
    """A fresh set of the enabled recommenders (:func:`enabled_sources`), seeded by partition so runs are
    reproducible."""
    return {name: cls(**source_params(settings, name, partition)) for name, cls in enabled_sources(settings).items()}


def build_item_side(settings: Settings, partitions: int) -> ItemSide | None:
    """The shared item side of ``partitions`` partitions, or None when ``model.item_sync_ms`` is 0 (kept per
    partition)."""
    if not settings.model.item_sync_ms:
        return None
    return ItemSide(
        split_models(build_models(settings, 0)), partitions, build_learned(settings, 3000 - 1), build_guard(settings)
    )


def build_guard(settings: Settings) -> ItemSideGuard | None:
    """The item side's abuse limits (models/guard.py), or None when every limit is off."""
    model = settings.model
    if not model.guard_user_cap and model.guard_min_users <= 1 and not model.guard_jump_min:
        return None
    return ItemSideGuard(
        window_ms=model.guard_window_s * 1000,
        user_cap=model.guard_user_cap,
        min_users=model.guard_min_users,
        unvoted_cap=model.guard_unvoted_cap,
        jump_min=model.guard_jump_min,
        jump_factor=model.guard_jump_factor,
        sources={name for name in model.guard_sources.split(",") if name},
    )


def build_learned(settings: Settings, seed: int, device: str | None = None) -> LearnedRanker | None:
    """The learned ranker the settings describe (None when ``ranker.learned`` is off), seeded."""
    ranker = settings.ranker
    if not ranker.learned:
        return None
    sources = enabled_sources(settings)
    return LearnedRanker(
        list(sources),
        hidden=ranker.learned_hidden,
        lr=ranker.learned_lr,
        pool=ranker.learned_pool,
        max_pending=ranker.learned_max_users,
        min_lists=ranker.learned_min_lists,
        item_signals=[name for name, cls in sources.items() if not cls.personal],
        seed=seed,
        device=device or pick_device(ranker.device),
    )


def partition_clock(settings: Settings, open_tick: int | None = None) -> TickClock | None:
    """A partition's sync clock, or None when the item side is kept per partition."""
    return TickClock(settings.model.item_sync_ms, open_tick) if settings.model.item_sync_ms else None


def build_ranker(ranker: RankerSettings) -> FusionRanker:
    """The ranker its settings describe (stateless apart from its device: one per worker)."""
    return FusionRanker(
        k=ranker.k,
        candidates=ranker.candidates,
        category_cap=ranker.category_cap,
        normalise=ranker.normalise,
        device=ranker.device,
    )


def build_fusion(settings: Settings, partition: int, ranker: FusionRanker | None = None) -> FusedRecommender:
    """A fresh fused recommender over the enabled sources, its bandit seeded by partition."""
    sources = list(enabled_sources(settings))
    bandit = FusionBandit(
        sources,
        epsilon=settings.fusion.epsilon,
        half_life_ms=settings.fusion.half_life_s * 1000,
        seed=2000 + partition,
    )
    ranker = ranker or build_ranker(settings.ranker)
    learned = build_learned(settings, 3000 + partition, str(ranker.device))
    return FusedRecommender(
        sources,
        ranker,
        bandit,
        holdout=settings.fusion.holdout,
        new_user_events=settings.fusion.new_user_events,
        max_idle_ms=settings.model.max_idle_s * 1000,
        max_users=settings.model.max_users,
        learned=learned,
    )


@dataclass
class PartitionState:
    """The models of one partition and the offset of the last event they learned (-1: none).

    ``fusion`` learns which sources to trust from the same events; ``changed`` holds, per user, the times of the
    events learned since the user's list was last refreshed (the ranker's work list and its freshness clock).
    """

    partition: int
    models: dict[str, Recommender]
    fusion: FusedRecommender | None = None
    offset: int = -1
    dirty: bool = False
    #: False while a batch's models have learned but its profile write has not succeeded yet: a snapshot then
    #: would record an offset whose profiles may never be written.
    settled: bool = True
    evicted: dict[str, int] = field(default_factory=dict)
    pending: dict[str, list[Event]] = field(default_factory=dict)
    changed: dict[str, list[int]] = field(default_factory=dict)
    #: With a clock, the splittable sources learn their user side only and each event's item-side half waits in
    #: ``outbox`` as ``(tick, record)`` for the shared :class:`~fusionrec.models.item_side.ItemSide`; without one,
    #: every model learns whole events here (the item side per partition).
    clock: TickClock | None = None
    outbox: list[tuple[int, Record]] = field(default_factory=list)

    @property
    def clock_ms(self) -> int:
        """The latest event time any of the partition's models has seen (0 before any event)."""
        return max((model.clock_ms for model in self.models.values()), default=0)

    def learn(self, events: list[tuple[Event, int]], last_offset: int) -> None:
        """Feed ``(event, offset)`` pairs (in order) to every model and advance the offset to ``last_offset``.

        Eviction runs each time the stream crosses a multiple of ``EVICT_EVERY`` offsets, between the events on
        either side, so it too depends only on the event sequence.
        """
        before = self.offset
        start = 0
        for index, (_event, offset) in enumerate(events):
            if offset // EVICT_EVERY > self.offset // EVICT_EVERY:
                self._feed(events[start:index])
                start = index
                self._evict()
            self.offset = max(self.offset, offset)
        self._feed(events[start:])
        if last_offset > self.offset:
            self.offset = last_offset
        self.dirty = self.dirty or self.offset != before

    def take_outbox(self) -> tuple[list[tuple[int, list[Record]]], int | None]:
        """The item-side records learned since the last call, grouped by tick, and the last tick this partition
        has closed: what goes to the item side next."""
        stamped, self.outbox = self.outbox, []
        return records_by_tick(stamped), None if self.clock is None else self.clock.closed

    def _feed(self, pairs: list[tuple[Event, int]]) -> None:
        if not pairs:
            return
        events = [e for e, _ in pairs]
        split = self.clock is not None
        labels: list[list] | None = None
        if self.fusion is not None:
            if split and self.fusion.serving_ranker is not self.fusion.learned:
                # each event's labels (for the shared learned ranker) travel in the event's item-side record
                labels = []
                for event in events:
                    self.fusion.learn_one(event)
                    labels.append(self.fusion.take_labels())
            else:
                self.fusion.learn_many(events)
            changed = self.changed
            for event in events:
                stamps = changed.get(event.user_id)
                if stamps is None:
                    changed[event.user_id] = [event.ts]
                else:
                    stamps.append(event.ts)
        for name, model in self.models.items():
            if split and model.splits():
                continue
            block = getattr(model, "batch_size", None)
            if not block:
                model.learn_many(events)
                continue
            waiting = self.pending.setdefault(name, [])
            waiting.extend(events)
            ready = len(waiting) - len(waiting) % block
            if ready:
                model.learn_many(waiting[:ready])
                del waiting[:ready]

        if split:
            self._feed_user_side(pairs, labels)

    def _feed_user_side(self, pairs: list[tuple[Event, int]], labels: list[list] | None = None) -> None:
        # source by source (the sources share no state): one call per source and batch, not per event
        events = [event for event, _ in pairs]
        halves = [(name, model.learn_user_side_many(events)) for name, model in self.models.items() if model.splits()]
        stamp, out = self.clock.stamp, self.outbox.append  # type: ignore[union-attr]
        for n, (event, offset) in enumerate(pairs):
            tick = stamp(event.ts)
            contexts = {name: context for name, learned in halves if (context := learned[n]) is not None}
            if labels is not None and labels[n] and contexts:
                # only on a record that exists anyway: which events carry labels depends on when lists were made,
                # and the item side's offsets and counts must not
                contexts[LABELS] = labels[n]
            if contexts:
                contexts[USER] = user_digest(event.user_id)  # for the item side's abuse limits (models/guard.py)
                out((tick, [offset, event.item_id, event.ts, contexts]))

    def _evict(self) -> None:
        for name, model in self.models.items():
            dropped = model.evict(model.clock_ms)
            if dropped:
                self.evicted[name] = self.evicted.get(name, 0) + dropped
        if self.fusion is not None:
            dropped = self.fusion.evict(self.clock_ms)
            if dropped:
                self.evicted["fusion"] = self.evicted.get("fusion", 0) + dropped


class SnapshotStore:
    """Writes and reads :class:`PartitionState` snapshots in Redis."""

    def __init__(self, client: redis.Redis, settings: Settings, topic: str, ranker: FusionRanker | None = None):
        self.client = client
        self.settings = settings
        self.topic = topic
        self.keys = settings.redis.keys
        self.ranker = ranker or build_ranker(settings.ranker)

    def key(self, partition: int) -> str:
        return self.keys.snapshot(self.topic, partition)

    def save(self, state: PartitionState, client: redis.Redis | None = None) -> int:
        """Write the snapshot atomically; return its size in bytes."""
        client = client or self.client
        mapping: dict[str, bytes | str] = {"offset": str(state.offset)}
        if state.clock is not None and state.clock.open is not None:
            mapping["tick"] = str(state.clock.open)
        for name, model in state.models.items():
            mapping[f"model:{name}"] = model.snapshot()
        for name, waiting in state.pending.items():
            mapping[f"pending:{name}"] = orjson.dumps([e.to_dict() for e in waiting])
        if state.fusion is not None:
            mapping["fusion"] = orjson.dumps(state.fusion.to_state())
        pipe = client.pipeline(transaction=True)
        pipe.delete(self.key(state.partition))
        pipe.hset(self.key(state.partition), mapping=mapping)
        pipe.execute()
        state.dirty = False
        return sum(len(v) for v in mapping.values())

    def save_all_fresh_connection(
        self,
        states: list[PartitionState],
        item_side: ItemSideFeed | None = None,
        epoch: tuple[str, bytes] | None = None,
    ) -> None:
        """Save ``states`` (and the item side) over a new connection (in a forked child the parent's connections
        are not ours); with ``epoch`` (key, token), only if Redis still holds that epoch (streams/epoch.py)."""
        client = connect(self.settings.redis)
        if epoch is not None and client.get(epoch[0]) != epoch[1]:
            raise RuntimeError("Redis lost the worker state (the epoch changed): snapshot not written")
        for state in states:
            self.save(state, client)
        if item_side is not None:
            item_side.save(client)
        if epoch is not None and client.get(epoch[0]) != epoch[1]:
            # Redis restarted empty while we wrote (the client reconnected into it): nothing may pin an offset there
            written = [self.key(state.partition) for state in states]
            if item_side is not None and getattr(item_side, "key", None):
                written.append(item_side.key)
            for key in written:  # one by one: on a Redis Cluster they are in different slots
                client.delete(key)
            raise RuntimeError(
                "Redis lost the worker state (the epoch changed) while the snapshot was written: removed"
            )

    def position(self, partition: int) -> int:
        """Where to resume reading the partition: just after its snapshot, or at the start without one."""
        offset = self.client.hget(self.key(partition), "offset")
        return 0 if offset is None else int(offset) + 1

    def load(self, partition: int) -> PartitionState:
        """The partition's last snapshot, or fresh models at offset -1 when there is none."""
        data = self.client.hgetall(self.key(partition))
        fusion = build_fusion(self.settings, partition, self.ranker)
        if not data:
            return PartitionState(
                partition, build_models(self.settings, partition), fusion, clock=partition_clock(self.settings)
            )
        models = build_models(self.settings, partition)
        pending: dict[str, list[Event]] = {}
        for raw_name, blob in data.items():
            name = raw_name.decode()
            if name.startswith("model:") and name[6:] in models:
                models[name[6:]] = Recommender.restore(blob)
            elif name.startswith("pending:"):
                pending[name[8:]] = [validate_dict(d, max_future_skew_ms=10**13).event for d in orjson.loads(blob)]
            elif name == "fusion":
                fusion.load_state(orjson.loads(blob))
        tick = data.get(b"tick")
        clock = partition_clock(self.settings, None if tick is None else int(tick))
        state = PartitionState(partition, models, fusion, offset=int(data[b"offset"]), pending=pending, clock=clock)
        log.info("restored partition %d at offset %d (%d models)", partition, state.offset, len(models))
        return state

    def load_all(self) -> Iterable[PartitionState]:
        """Every partition's snapshot of this topic (for tools and tests that compare whole runs)."""
        for key in self.client.scan_iter(match=self.keys.snapshots(self.topic)):
            yield self.load(self.keys.partition_of(key))


class ItemSideFeed(Protocol):
    """Where partitions' item-side records go and the shared replica comes from: over Kafka in the worker
    (:class:`fusionrec.streams.item_side.ItemSideLink`), in process otherwise (:class:`LocalItemSide`)."""

    replica: ItemSide

    def publish(self, state: PartitionState) -> int: ...
    def drain(self) -> int: ...
    def close_quiet(self, partitions: PartitionRegistry) -> None: ...
    def forget(self, partitions: Iterable[int]) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> None: ...
    def save(self, client: redis.Redis | None = None) -> int: ...
    def stop(self) -> None: ...


class LocalItemSide:
    """The item side without Kafka, for in-process runs of the worker's classes (benchmarks, tests): records go
    straight into the replica, and a partition's closed tick closes every partition (one process sees them all).
    """

    def __init__(self, replica: ItemSide):
        self.replica = replica

    def publish(self, state: PartitionState) -> int:
        groups, closed = state.take_outbox()
        self.replica.receive(state.partition, groups, closed)
        if closed is not None:  # one process sees every partition: what one has closed, all have
            self.replica.close_all(closed)
        self.replica.apply()
        return sum(len(records) for _, records in groups)

    def drain(self) -> int:
        return self.replica.apply()

    def close_quiet(self, partitions: PartitionRegistry) -> None:
        pass

    def forget(self, partitions: Iterable[int]) -> None:
        pass

    def flush(self, timeout_s: float = 30.0) -> None:
        pass

    def save(self, client: redis.Redis | None = None) -> int:  # noqa: ARG002 - the ItemSideFeed interface
        """Nothing to save: an in-process replica is rebuilt with its run."""
        return 0

    def stop(self) -> None:
        pass


class PartitionRegistry:
    """The :class:`PartitionState` of every partition this worker holds, loaded from its snapshot on first use, and
    the shared item side they rank against (``item_side``; by default in process when the settings share it).

    Only the state thread touches it (batches, refreshes, snapshots and hand-overs run there one after another).
    """

    def __init__(
        self, store: SnapshotStore, metrics: WorkerMetrics | None = None, item_side: ItemSideFeed | None = None
    ):
        self.store = store
        self.metrics = metrics
        self.states: dict[int, PartitionState] = {}
        settings = None if store is None else store.settings
        if item_side is None and settings is not None and settings.model.item_sync_ms:
            item_side = LocalItemSide(build_item_side(settings, settings.topic.events_partitions))  # type: ignore[arg-type]
        self.item_side = item_side
        #: partition -> monotonic time of its last batch (or of its state's creation): quiet partitions are closed.
        self.last_batch: dict[int, float] = {}
        #: partition -> the high watermark the consumer last saw (None: not fetched yet); set by the worker.
        self.highwater: Callable[[int], int | None] | None = None

    def state(self, partition: int) -> PartitionState:
        """The partition's state, restored from its snapshot (or fresh) the first time it is asked for."""
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = self.store.load(partition)
            shared = None if self.item_side is None else self.item_side.replica.learned
            if shared is not None and state.fusion is not None and state.fusion.learned is not None:
                state.fusion.share(shared)
            self.last_batch[partition] = time.monotonic()
            if self.metrics:
                self.metrics.partitions.set(len(self.states))
        return state

    def hold(self, partitions: Iterable[int]) -> None:
        """Load the states of newly assigned partitions now, so that a partition without events is known (and
        closed when quiet) instead of holding the item side back."""
        for partition in partitions:
            self.state(partition)

    def quiet(self, partition: int, for_s: float) -> bool:
        """Whether the partition had no batch for ``for_s`` seconds *and* has nothing left to read (its learned
        offset reached the high watermark its consumer last saw): idle, not merely behind."""
        state = self.states.get(partition)
        if state is None or time.monotonic() - self.last_batch.get(partition, 0.0) < for_s:
            return False
        if self.highwater is None:
            return True
        highwater = self.highwater(partition)
        return highwater is not None and state.offset + 1 >= highwater

    def learned(self, state: PartitionState) -> None:
        """After a batch: hand the partition's new item-side records to the item side."""
        self.last_batch[state.partition] = time.monotonic()
        if self.item_side is not None:
            self.item_side.publish(state)

    def ranking_models(self, state: PartitionState) -> dict[str, Recommender]:
        """The models a partition's users are ranked with: its own, joined with the shared item side."""
        if self.item_side is None:
            return state.models
        return self.item_side.replica.views(state.models)

    def drop(self, partitions: list[int]) -> None:
        """Forget partitions this worker no longer owns (after snapshotting them)."""
        for partition in partitions:
            self.states.pop(partition, None)
            self.last_batch.pop(partition, None)
        if self.item_side is not None:
            self.item_side.forget(partitions)
        if self.metrics:
            self.metrics.partitions.set(len(self.states))

"""Prequential (test-then-train) evaluation of every source, of equal-weight fusion and of bandit fusion, in the
production layout.

The run replays an event file in time order through **the production code**, laid out as live workers hold it:
users are placed on ``partitions`` partitions by Kafka's murmur2 partitioner
(:func:`~fusionrec.contracts.partitioning.partition_for` of the ``user_id``, the events' key); each partition has its
own :class:`fusionrec.streams.state.PartitionState` (the sources fed exactly as the worker feeds them, the fused
recommender with its bandit, seeded by partition); one :class:`~fusionrec.models.item_side.ItemSide` replica learns
the item side (popularity, trending, co-visitation, category tallies) of every partition's events in sync ticks of
``item_sync_ms`` (0: each partition keeps its own item side, learned from its users only: the layout before 0.2).
Each partition's users are ranked by the same :class:`~fusionrec.models.ranker.FusionRanker` from the partition's
models joined with the replica (:meth:`ItemSide.views <fusionrec.models.item_side.ItemSide.views>`). Only Kafka and
Redis are left out, so it runs in-process. The protocol (see ``docs/evaluation.md``):

1. Events are cut into refresh blocks of event time: a block is the events of one window ``ts // lag_ms`` (``lag_ms``
   defaults to the ranker interval, 200 ms). The live worker re-ranks the list of a user whose state changed once
   per interval, so a list lags its user by up to one interval. With ``block`` set, blocks are ``block`` events long
   instead (the lag counted in events, the protocol before 0.2).
2. Before a block is learned, each of its events is judged against the lists in effect: the lists made after the
   block in which the user was last active. Which events are judged is the rule of
   :class:`fusionrec.models.targets.TargetFilter` (``new`` items, and ``repeat`` carts/purchases, reported apart). A
   user without a list yet (no earlier active block: their first event) is a miss, counted as *unserved*.
3. Then the block is learned: each partition learns its users' events (the sources' user side, the bandit's
   rewards) and hands its item-side records to the replica. The replay is in global time order, so every partition
   is then closed through the tick before the next event's, and the replica applies every complete tick: a list sees
   the other partitions' events less than one tick late, as in a live worker whose partitions all have traffic.
   Every user active in the block gets new lists from their partition's state: bandit-weighted fusion, equal-weight
   fusion (the same candidates, fused with equal weights) and each source alone (its own top ``k`` after the same
   filters).

Variants: ``fused:learned`` (what a worker serves: the learned ranker of :mod:`fusionrec.models.learned` once it
has learned enough, bandit fusion before), ``fused:bandit``, ``fused:equal``, one per source (``popular`` is the
popularity baseline), and with ``holdout`` the two arms of the in-stream A/B split, ``ab:bandit`` (the treatment:
what a worker serves) and ``ab:fixed`` (fixed equal-weight fusion).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fusionrec.contracts.events import Event
from fusionrec.contracts.partitioning import partition_for
from fusionrec.contracts.settings import Settings, load_settings
from fusionrec.models.fused import FusedList
from fusionrec.models.fusion import SEGMENTS, FixedWeights, holdout_arm
from fusionrec.models.ranker import RankedList
from fusionrec.models.targets import TARGET_KINDS, TargetFilter

__all__ = ["EvalConfig", "RankMetrics", "evaluate", "rating_mae", "refresh_blocks", "sessionize"]

FUSED = ("fused:learned", "fused:bandit", "fused:equal")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how (see the module docstring). ``None`` for ``lag_ms``, ``partitions`` and
    ``item_sync_ms``: the value of ``settings`` (``ranker.interval_ms``, ``topic.events_partitions``,
    ``model.item_sync_ms``), as a worker deployed with them would run."""

    ks: tuple[int, ...] = (10, 20)
    #: Count-based refresh blocks of this many events; when set, it wins over ``lag_ms``.
    block: int | None = None
    lag_ms: int | None = None
    partitions: int | None = None
    item_sync_ms: int | None = None
    warmup: int = 0
    train_until: int | None = None
    holdout: float = 0.0
    session_gap_ms: int | None = None
    windows: int = 20
    settings: Settings = field(default_factory=load_settings)

    def __post_init__(self) -> None:
        for name, least in (("block", 1), ("lag_ms", 1), ("partitions", 1), ("item_sync_ms", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")

    @property
    def k(self) -> int:
        return max(self.ks)

    @property
    def refresh_lag_ms(self) -> int | None:
        """The event-time lag of a list (the refresh window), or None when blocks are counted in events."""
        if self.block is not None:
            return None
        return self.lag_ms if self.lag_ms is not None else self.settings.ranker.interval_ms

    @property
    def n_partitions(self) -> int:
        return self.partitions if self.partitions is not None else self.settings.topic.events_partitions

    @property
    def sync_ms(self) -> int:
        return self.item_sync_ms if self.item_sync_ms is not None else self.settings.model.item_sync_ms


class RankMetrics:
    """Hit rate (recall), MRR and NDCG at several cut-offs for single-target lists, accumulated one target at a time.

    ``served`` is the share of targets whose list (of this variant) was not empty; ``unserved`` counts the targets
    whose user had no list in effect at all, and ``hr_served@k`` is the hit rate over the others (the basis of
    published next-item protocols, which skip a user's first event).

    >>> m = RankMetrics((1, 3))
    >>> m.add(0); m.add(2); m.add(None, served=False)
    >>> m.summary()["hr@1"], m.summary()["hr@3"], round(m.summary()["mrr@3"], 4), round(m.summary()["ndcg@3"], 4)
    (0.3333, 0.6667, 0.4444, 0.5)
    >>> m.summary()["unserved"], m.summary()["hr_served@3"]
    (1, 1.0)

    """

    def __init__(self, ks: Iterable[int]):
        self.ks = tuple(sorted(ks))
        self.targets = 0
        self.served = 0
        self.listed = 0
        self.hits = dict.fromkeys(self.ks, 0)
        self.rr = dict.fromkeys(self.ks, 0.0)
        self.dcg = dict.fromkeys(self.ks, 0.0)

    def add(self, rank: int | None, served: bool = True, listed: bool | None = None) -> None:
        """Record one target; ``rank`` is the 0-based position of the target item in the list, None if absent;
        ``served``: the list was not empty; ``listed``: the user had a list in effect (default: ``served``)."""
        self.targets += 1
        self.served += served
        self.listed += served if listed is None else listed
        if rank is None:
            return
        for k in self.ks:
            if rank < k:
                self.hits[k] += 1
                self.rr[k] += 1.0 / (rank + 1)
                self.dcg[k] += 1.0 / math.log2(rank + 2)

    def summary(self) -> dict[str, float]:
        n = max(self.targets, 1)
        out: dict[str, float] = {
            "targets": self.targets,
            "served": round(self.served / n, 4),
            "unserved": self.targets - self.listed,
        }
        for k in self.ks:
            out[f"hits@{k}"] = self.hits[k]
            out[f"hr@{k}"] = round(self.hits[k] / n, 4)
            out[f"mrr@{k}"] = round(self.rr[k] / n, 4)
            out[f"ndcg@{k}"] = round(self.dcg[k] / n, 4)
            out[f"hr_served@{k}"] = round(self.hits[k] / self.listed, 4) if self.listed else 0.0
        return out


def sessionize(events: Iterable[Event], gap_ms: int) -> Iterator[Event]:
    """Events with ``user_id`` replaced by ``user#n``, a new ``n`` after ``gap_ms`` of the user's inactivity: for
    click-streams where a session, not the user's long history, carries the signal.

    >>> evs = [Event("a", "u", "i", "view", 0), Event("b", "u", "j", "view", 10), Event("c", "u", "k", "view", 500)]
    >>> [e.user_id for e in sessionize(evs, gap_ms=100)]
    ['u#0', 'u#0', 'u#1']

    """
    last: dict[str, tuple[int, int]] = {}
    for event in events:
        seen = last.get(event.user_id)
        session = 0 if seen is None else seen[1] + (event.ts - seen[0] > gap_ms)
        last[event.user_id] = (event.ts, session)
        yield event._replace(user_id=f"{event.user_id}#{session}")


def refresh_blocks(events: list[Event], block: int | None = None, lag_ms: int = 200) -> list[tuple[int, int]]:
    """The refresh blocks of ``events`` as ``(start, end)`` index ranges: ``block`` events each when given, else the
    runs of events in one event-time window ``ts // lag_ms`` (a new block wherever the window changes).

    >>> evs = [Event(str(n), "u", "i", "view", ts) for n, ts in enumerate((0, 150, 199, 200, 650, 700))]
    >>> refresh_blocks(evs, lag_ms=200), refresh_blocks(evs, block=4)
    ([(0, 3), (3, 4), (4, 6)], [(0, 4), (4, 6)])

    """
    n = len(events)
    if block is not None:
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        return [(start, min(start + block, n)) for start in range(0, n, block)]
    if lag_ms < 1:
        raise ValueError(f"lag_ms must be >= 1, got {lag_ms}")
    bounds: list[tuple[int, int]] = []
    start, window = 0, None
    for index, event in enumerate(events):
        w = event.ts // lag_ms
        if w != window:
            if index:
                bounds.append((start, index))
            start, window = index, w
    if n:
        bounds.append((start, n))
    return bounds


def _rank_of(items: list[str], item: str) -> int | None:
    try:
        return items.index(item)
    except ValueError:
        return None


class _Run:
    """The state of one evaluation run: the partitions' production state and the shared item side, the lists in
    effect, the metrics."""

    def __init__(self, config: EvalConfig, sources: list[str]):
        from fusionrec.streams.state import (
            PartitionState,
            build_fusion,
            build_item_side,
            build_models,
            build_ranker,
            partition_clock,
        )

        self.partitions = config.n_partitions
        self.sync_ms = config.sync_ms
        settings = config.settings.replace(
            ranker_k=config.k, fusion_holdout=config.holdout, model_item_sync_ms=self.sync_ms
        )
        self.config = config
        self.ranker = build_ranker(settings.ranker)
        self.states = [
            PartitionState(
                p, build_models(settings, p), build_fusion(settings, p, self.ranker), clock=partition_clock(settings)
            )
            for p in range(self.partitions)
        ]
        #: The shared item side (None: each partition's models keep their own).
        self.replica = build_item_side(settings, self.partitions)
        if self.replica is not None and self.replica.learned is not None:  # one learned ranker for every partition
            for state in self.states:
                state.fusion.share(self.replica.learned)
        # Equal-weight fusion: the weights of the fixed policy, the same for every user and segment, so the lists
        # are the bandit's candidates fused once more with them (no state of its own to learn).
        self.equal_weights = dict(FixedWeights(list(self.states[0].models)).pull(SEGMENTS[0]).weights)
        self.sources = sources
        self.variants = [*FUSED, *sources] + (["ab:bandit", "ab:fixed"] if config.holdout > 0 else [])
        self.served: dict[str, tuple[list[list[str]], str]] = {}  # user -> (lists by variant index, arm)
        groups = ["all", *(f"kind:{k}" for k in TARGET_KINDS), *(f"segment:{s}" for s in SEGMENTS)]
        self.metrics = {v: {g: RankMetrics(config.ks) for g in groups} for v in self.variants}
        self.recommended: dict[str, set[str]] = {v: set() for v in self.variants}
        self.catalogue: set[str] = set()
        self.timeline: list[dict[str, Any]] = []
        self._window = {v: [0, 0] for v in self.variants}
        self._partition_of: dict[str, int] = {}
        self.lists_made = 0
        #: Per holdout arm, the variants that judge its users' targets and the index of the list each reads.
        plain = [(v, n) for n, v in enumerate(self.variants) if not v.startswith("ab:")]
        self._judged = {arm: plain + ([(f"ab:{arm}", 0)] if config.holdout > 0 else []) for arm in ("bandit", "fixed")}

    def partition(self, user: str) -> int:
        """The user's partition, as a producer keying events by ``user_id`` places them."""
        p = self._partition_of.get(user)
        if p is None:
            p = self._partition_of[user] = partition_for(user.encode(), self.partitions)
        return p

    # --- judging -----------------------------------------------------------------------------------------------

    def judge(self, event: Event, kind: str) -> None:
        user = event.user_id
        segment = self.states[self.partition(user)].fusion.segment(user)
        entry = self.served.get(user)
        k = self.config.k
        arm = holdout_arm(user, self.config.holdout) if self.config.holdout > 0 else "bandit"
        keys = ("all", f"kind:{kind}", f"segment:{segment}")
        for variant, index in self._judged[arm]:
            if entry is None:
                rank, served, listed = None, False, False
            else:
                ids = entry[0][index]
                rank, served, listed = _rank_of(ids[:k], event.item_id), bool(ids), True
            groups = self.metrics[variant]
            for group in keys:
                groups[group].add(rank, served, listed)
            window = self._window[variant]
            window[0] += 1
            window[1] += rank is not None and rank < 20

    # --- learning and refreshing -------------------------------------------------------------------------------

    def learn(self, block: list[Event]) -> None:
        """Each partition learns its users' events of ``block`` (in order, at its own offsets); then the item-side
        records go to the replica."""
        by_partition: dict[int, list[tuple[Event, int]]] = {}
        states = self.states
        for event in block:
            p = self.partition(event.user_id)
            pairs = by_partition.get(p)
            if pairs is None:
                pairs = by_partition[p] = []
            pairs.append((event, states[p].offset + 1 + len(pairs)))
            self.catalogue.add(event.item_id)
        replica = self.replica
        for p, pairs in by_partition.items():
            state = states[p]
            state.learn(pairs, pairs[-1][1])
            if replica is not None:
                replica.receive(p, *state.take_outbox())

    def sync(self, next_ts: int) -> None:
        """Close every partition through the tick before ``next_ts``'s (the next event: the replay is in global
        time order, so no partition stamps an earlier tick any more) and apply what is complete."""
        if self.replica is not None:
            self.replica.close_all(next_ts // self.sync_ms - 1)
            self.replica.apply()

    def refresh(self, needed: set[str]) -> None:
        """New lists for the users of ``needed`` whose state changed, each from their partition's models."""
        ranker, replica, equal = self.ranker, self.replica, self.equal_weights
        shared: dict[tuple[str, int], list[tuple[str, float]]] = {}
        for state in self.states:
            changed = state.changed
            if not changed:
                continue
            users = [user for user in changed if user in needed]
            changed.clear()
            if not users:
                continue
            models = replica.views(state.models) if replica is not None else state.models
            now = state.clock_ms
            for start in range(0, len(users), 256):
                chunk = users[start : start + 256]
                prepared = ranker.prepare(models, chunk, now, gathered=self._gather(models, chunk, now, shared))
                bandit = state.fusion.recommend(models, chunk, now, prepared=prepared, bandit_lists=True)
                fused_equal = ranker.fuse(prepared, [equal] * len(chunk))
                for fused_bandit, ranked_equal in zip(bandit, fused_equal, strict=True):
                    self._store(fused_bandit, ranked_equal)
            self.lists_made += len(users)

    def _gather(
        self,
        models: dict[str, Any],
        users: list[str],
        now: int,
        shared: dict[tuple[str, int], list[tuple[str, float]]],
    ) -> dict[str, list[list[tuple[str, float]]]]:
        """What :meth:`FusionRanker.gather <fusionrec.models.ranker.FusionRanker.gather>` returns, with the
        user-independent sources of the shared item side (popularity, trending) asked once per refresh and ``now``
        rather than once per partition: between two applies every partition would get the same list."""
        ranker = self.ranker
        gathered: dict[str, list[list[tuple[str, float]]]] = {}
        for name, model in models.items():
            if self.replica is not None and name in self.replica.models and not model.personal:
                pairs = shared.get((name, now))
                if pairs is None:
                    pairs = shared[(name, now)] = model.candidates(users[0], ranker.candidates, now)
                gathered[name] = [pairs] * len(users)
            else:
                gathered[name] = model.candidates_many(
                    users, ranker.candidates, now, device=ranker.device, max_chunk_bytes=ranker.max_chunk_bytes
                )
        return gathered

    def _store(self, fused: FusedList, equal: RankedList) -> None:
        bandit = fused.bandit if fused.bandit is not None else fused.ranked
        lists: list[list[str]] = [fused.ranked.item_ids, bandit.item_ids, equal.item_ids]
        lists.extend(equal.source_lists.get(source, []) for source in self.sources)
        for variant, ids in zip(self.variants, lists, strict=False):
            self.recommended[variant].update(ids)
        self.served[fused.user_id] = (lists, fused.pull.arm)
        if self.config.holdout > 0:
            self.recommended[f"ab:{fused.pull.arm}"].update(fused.ranked.item_ids)

    def weights(self) -> dict[str, dict[str, float]]:
        """The bandits' exploit weights per segment, averaged over the partitions (each learns its own)."""
        per_partition = [state.fusion.weights() for state in self.states]
        return {
            segment: {
                source: sum(w[segment][source] for w in per_partition) / len(per_partition)
                for source in per_partition[0][segment]
            }
            for segment in per_partition[0]
        }

    def close_window(self, ts: int) -> None:
        point: dict[str, Any] = {"ts": ts, "hr@20": {}, "weights": self.weights()}
        for variant, (targets, hits) in self._window.items():
            point["hr@20"][variant] = round(hits / targets, 4) if targets else None
            self._window[variant] = [0, 0]
        self.timeline.append(point)

    def report(self) -> dict[str, Any]:
        catalogue = max(len(self.catalogue), 1)
        variants = {}
        for variant in self.variants:
            groups = {group: m.summary() for group, m in self.metrics[variant].items()}
            groups["coverage"] = round(len(self.recommended[variant]) / catalogue, 4)
            variants[variant] = groups
        out = {
            "variants": variants,
            "timeline": self.timeline,
            "catalogue": len(self.catalogue),
            "weights": self.weights(),
            "rewards": sum(state.fusion.rewards for state in self.states),
        }
        if self.partitions > 1:
            out["partition_weights"] = [state.fusion.weights() for state in self.states]
            out["partition_rewards"] = [state.fusion.rewards for state in self.states]
            out["partition_events"] = [state.offset + 1 for state in self.states]
        return out


def _lists_needed(
    events: list[Event], kinds: list[str | None], scored: list[bool], bounds: list[tuple[int, int]]
) -> list[set[str]]:
    """For each block (``bounds``), the users whose list made after it will be judged: those with a scored target
    among their events in the next block where they are active (every event of that block sees the same list)."""
    needed: list[set[str]] = [set() for _ in bounds]
    blocks: dict[str, tuple[int, int | None]] = {}  # user -> (block of their latest event, block active before it)
    for b, (start, end) in enumerate(bounds):
        for n in range(start, end):
            user = events[n].user_id
            latest, before = blocks.get(user, (None, None))
            if latest != b:
                latest, before = b, latest
                blocks[user] = (latest, before)
            if before is not None and kinds[n] is not None and scored[n]:
                needed[before].add(user)
    return needed


def evaluate(
    events: list[Event], config: EvalConfig | None = None, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Run the prequential evaluation over ``events`` (time-ordered) and return the report (a JSON-able dict).

    Lists are made only for the users whose list a later event will judge: the others cannot change a metric
    (the bandit then sees the exposure of judged lists only, which shifts every source's exposure alike).
    """
    from fusionrec.streams.state import enabled_sources

    config = config or EvalConfig()
    sources = list(enabled_sources(config.settings))
    if config.session_gap_ms is not None:
        events = list(sessionize(events, config.session_gap_ms))
    run = _Run(config, sources)
    started, cpu_started = time.perf_counter(), time.process_time()
    classifier = TargetFilter()
    kinds = [classifier.classify(event) for event in events]
    scored = [
        n >= config.warmup and (config.train_until is None or event.ts >= config.train_until)
        for n, event in enumerate(events)
    ]
    lag_ms = config.refresh_lag_ms
    bounds = refresh_blocks(events, config.block, lag_ms or 1)
    needed = _lists_needed(events, kinds, scored, bounds)
    if events:
        first, last = events[0].ts, events[-1].ts
        test_start = max(first, config.train_until or first)
        width = max((last - test_start) / max(config.windows, 1), 1.0)
        next_window = test_start + width
    for b, (start, end) in enumerate(bounds):
        block = events[start:end]
        for n in range(start, end):
            if scored[n]:
                event = events[n]
                while event.ts >= next_window:
                    run.close_window(int(next_window))
                    next_window += width
                if kinds[n] is not None:
                    run.judge(event, kinds[n])
        run.learn(block)
        if needed[b]:
            run.sync(events[end].ts if end < len(events) else events[-1].ts)
            run.refresh(needed[b])
        else:
            for state in run.states:
                state.changed.clear()
        if progress is not None:
            progress(len(block))
    if events:
        run.close_window(int(next_window))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    report = run.report()
    singles = {name: report["variants"][name]["all"][f"hr@{config.k}"] for name in sources}
    best = max(singles, key=singles.get)
    report["best_single"] = best
    bandit_hr = report["variants"]["fused:bandit"]["all"][f"hr@{config.k}"]
    report["fusion_vs_best_single"] = round(bandit_hr / singles[best], 3) if singles[best] else None
    served = report["variants"]["fused:learned"]["all"]  # what a worker serves: the learned ranker once ready
    served_hr = served[f"hr@{config.k}"]
    report["learned_vs_best_single"] = round(served_hr / singles[best], 3) if singles[best] else None
    report["learned_vs_bandit"] = round(served_hr / bandit_hr, 3) if bandit_hr else None
    bandit = served
    targets = bandit["targets"]
    report["run"] = {
        "events": len(events),
        "scored_events": sum(scored),
        "targets": targets,
        "targets_in_file": sum(k is not None for k in kinds),
        "served_targets": targets - bandit["unserved"],
        "unserved_targets": bandit["unserved"],
        "served_share": round((targets - bandit["unserved"]) / targets, 4) if targets else 0.0,
        f"hr@{config.k}": served_hr,
        f"hr_served@{config.k}": served[f"hr_served@{config.k}"],
        "seconds": round(seconds, 2),
        "events_per_s": round(len(events) / seconds, 1) if seconds > 0 else None,
        "cpu_seconds": round(cpu_seconds, 2),
        "partitions": run.partitions,
        "item_sync_ms": run.sync_ms,
        "lag_ms": lag_ms,
        "block": config.block,
        "blocks": len(bounds),
        "lists_made": run.lists_made,
        "ks": list(config.ks),
        "warmup": config.warmup,
        "train_until": config.train_until,
        "holdout": config.holdout,
        "session_gap_ms": config.session_gap_ms,
        "settings": {
            key: getattr(config.settings, key)
            for key in sorted(type(config.settings).model_fields)
            if key.startswith(("ranker_", "fusion_"))
        },
    }
    return report


def rating_mae(events: list[Event]) -> dict[str, Any] | None:
    """Progressive validation (predict, then learn) of the CF model's rating predictions, side by side with River's
    ``BiasedMF`` under the same parameters (those of River's documented MovieLens example) on the same ``rate``
    events in the same order. None when the events carry no ratings."""
    from river import optim, reco

    from fusionrec.models.cf import MatrixFactorization

    ratings = [
        (e.user_id, e.item_id, float(e.rating), e.ts) for e in events if e.type == "rate" and e.rating is not None
    ]
    if not ratings:
        return None
    ours = MatrixFactorization(n_factors=10, bias_lr=0.025, latent_lr=0.05, init_std=0.1, seed=73)
    river = reco.BiasedMF(
        n_factors=10,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.05),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
        l2_bias=0.0,
        l2_latent=0.0,
    )
    errors = {"cf": 0.0, "river": 0.0}
    timings = {"cf": 0.0, "river": 0.0}
    for user, item, y, ts in ratings:
        t = time.perf_counter()
        errors["cf"] += abs(ours.predict_rating(user, item) - y)
        ours.learn_rating(user, item, y, ts)
        t2 = time.perf_counter()
        errors["river"] += abs(river.predict_one(user, item) - y)
        river.learn_one(user, item, y)
        timings["cf"] += t2 - t
        timings["river"] += time.perf_counter() - t2
    n = len(ratings)
    return {
        "ratings": n,
        "mae": {name: round(total / n, 4) for name, total in errors.items()},
        "ratings_per_s": {name: round(n / t) for name, t in timings.items()},
        "protocol": "progressive validation in time order; BiasedMF(n_factors=10, SGD 0.025 biases / 0.05 "
        "latent, Normal(0, 0.1) init, no L2), predictions not clipped",
    }

"""Prequential (test-then-train) evaluation of every source, of equal-weight fusion and of bandit fusion.

The run replays an event file in time order through **the production code**: the worker's per-partition state
(:class:`fusionrec.streams.state.PartitionState`: the six sources fed exactly as the worker feeds them, the fused
recommender with its bandit), the same :class:`~fusionrec.models.ranker.FusionRanker`, the same refresh rule. Only
Kafka and
Redis are left out, so it runs in-process and fast. The protocol (see ``docs/evaluation.md``):

1. Events are cut into refresh blocks of ``block`` events: the live worker re-ranks a user's list after a change
   once per ranker interval, so a list lags its user by up to one interval's worth of traffic. ``block`` is that lag
   in events (at 1,000 events/s and a 200 ms interval: 200).
2. Before a block is learned, each of its events is judged against the lists in effect: the lists made after the
   block in which the user was last active. Which events are judged is the rule of
   :class:`fusionrec.models.targets.TargetFilter` (``new`` items, and ``repeat`` carts/purchases, reported apart). A
   user
   without a list yet (their first event) is a miss, counted as *unserved*.
3. Then the block is learned (the sources, the bandit's rewards), and every user active in it gets new lists:
   bandit-weighted fusion, equal-weight fusion (the same candidates, fused with equal weights) and each source
   alone (its own top ``k`` after the same filters).

Variants: ``fused:bandit``, ``fused:equal``, one per source (``popular`` is the popularity baseline), and with
``holdout`` the two arms of the in-stream A/B split, ``ab:bandit`` and ``ab:fixed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import Settings, load_settings
from fusionrec.models.fused import FusedList, FusedRecommender
from fusionrec.models.fusion import SEGMENTS, holdout_arm
from fusionrec.models.targets import TARGET_KINDS, TargetFilter

__all__ = ["EvalConfig", "RankMetrics", "evaluate", "rating_mae", "sessionize"]

FUSED = ("fused:bandit", "fused:equal")


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how (see the module docstring)."""

    ks: tuple[int, ...] = (10, 20)
    block: int = 200
    warmup: int = 0
    train_until: int | None = None
    holdout: float = 0.0
    session_gap_ms: int | None = None
    windows: int = 20
    settings: Settings = field(default_factory=load_settings)

    @property
    def k(self) -> int:
        return max(self.ks)


class RankMetrics:
    """Hit rate (recall), MRR and NDCG at several cut-offs for single-target lists, accumulated one target at a time.

    >>> m = RankMetrics((1, 3))
    >>> m.add(0); m.add(2); m.add(None)
    >>> m.summary()["hr@1"], m.summary()["hr@3"], round(m.summary()["mrr@3"], 4), round(m.summary()["ndcg@3"], 4)
    (0.3333, 0.6667, 0.4444, 0.5)

    """

    def __init__(self, ks: Iterable[int]):
        self.ks = tuple(sorted(ks))
        self.targets = 0
        self.served = 0
        self.hits = dict.fromkeys(self.ks, 0)
        self.rr = dict.fromkeys(self.ks, 0.0)
        self.dcg = dict.fromkeys(self.ks, 0.0)

    def add(self, rank: int | None, served: bool = True) -> None:
        """Record one target; ``rank`` is the 0-based position of the target item in the list, None if absent."""
        self.targets += 1
        self.served += served
        if rank is None:
            return
        for k in self.ks:
            if rank < k:
                self.hits[k] += 1
                self.rr[k] += 1.0 / (rank + 1)
                self.dcg[k] += 1.0 / math.log2(rank + 2)

    def summary(self) -> dict[str, float]:
        n = max(self.targets, 1)
        out: dict[str, float] = {"targets": self.targets, "served": round(self.served / n, 4)}
        for k in self.ks:
            out[f"hits@{k}"] = self.hits[k]
            out[f"hr@{k}"] = round(self.hits[k] / n, 4)
            out[f"mrr@{k}"] = round(self.rr[k] / n, 4)
            out[f"ndcg@{k}"] = round(self.dcg[k] / n, 4)
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


def _rank_of(items: list[str], item: str) -> int | None:
    try:
        return items.index(item)
    except ValueError:
        return None


class _Run:
    """The state of one evaluation run: production state, the equal-weight twin, lists in effect, metrics."""

    def __init__(self, config: EvalConfig, sources: list[str]):
        from fusionrec.streams.state import PartitionState, build_fusion, build_models, build_ranker

        settings = config.settings.replace(ranker_k=config.k, fusion_holdout=config.holdout)
        self.config = config
        self.ranker = build_ranker(settings.ranker)
        self.state = PartitionState(0, build_models(settings, 0), build_fusion(settings, 0, self.ranker))
        self.equal = FusedRecommender(
            list(self.state.models),
            self.ranker,
            None,
            new_user_events=settings.fusion.new_user_events,
            max_idle_ms=settings.model.max_idle_s * 1000,
        )
        self.sources = sources
        self.variants = [*FUSED, *sources] + (["ab:bandit", "ab:fixed"] if config.holdout > 0 else [])
        self.served: dict[str, tuple[list[list[str]], str]] = {}  # user -> (lists by variant index, arm)
        groups = ["all", *(f"kind:{k}" for k in TARGET_KINDS), *(f"segment:{s}" for s in SEGMENTS)]
        self.metrics = {v: {g: RankMetrics(config.ks) for g in groups} for v in self.variants}
        self.recommended: dict[str, set[str]] = {v: set() for v in self.variants}
        self.catalogue: set[str] = set()
        self.offset = -1
        self.timeline: list[dict[str, Any]] = []
        self._window = {v: [0, 0] for v in self.variants}

    # --- judging -----------------------------------------------------------------------------------------------

    def judge(self, event: Event, kind: str) -> None:
        segment = self.state.fusion.segment(event.user_id)
        entry = self.served.get(event.user_id)
        k = self.config.k
        arm = holdout_arm(event.user_id, self.config.holdout)
        for n, variant in enumerate(self.variants):
            if variant.startswith("ab:") and variant != f"ab:{arm}":
                continue
            if entry is None:
                rank, served = None, False
            else:
                lists = entry[0]
                index = 0 if variant.startswith("ab:") else n
                rank, served = _rank_of(lists[index][:k], event.item_id), bool(lists[index])
            groups = self.metrics[variant]
            for group in ("all", f"kind:{kind}", f"segment:{segment}"):
                groups[group].add(rank, served)
            window = self._window[variant]
            window[0] += 1
            window[1] += rank is not None and rank < 20

    # --- learning and refreshing -------------------------------------------------------------------------------

    def learn(self, block: list[Event]) -> None:
        pairs = []
        for event in block:
            self.offset += 1
            pairs.append((event, self.offset))
            self.catalogue.add(event.item_id)
        self.state.learn(pairs, self.offset)
        self.equal.learn_many(block)

    def refresh(self, needed: set[str]) -> None:
        users = [user for user in self.state.changed if user in needed]
        self.state.changed.clear()
        if not users:
            return
        models = self.state.models
        now = self.state.clock_ms
        for start in range(0, len(users), 256):
            chunk = users[start : start + 256]
            prepared = self.ranker.prepare(models, chunk, now)
            bandit = self.state.fusion.recommend(models, chunk, now, prepared=prepared)
            equal = self.equal.recommend(models, chunk, now, prepared=prepared)
            for fused_bandit, fused_equal in zip(bandit, equal, strict=True):
                self._store(fused_bandit, fused_equal)

    def _store(self, bandit: FusedList, equal: FusedList) -> None:
        lists: list[list[str]] = [bandit.ranked.item_ids, equal.ranked.item_ids]
        lists.extend(equal.ranked.source_lists.get(source, []) for source in self.sources)
        for variant, ids in zip(self.variants, lists, strict=False):
            self.recommended[variant].update(ids)
        self.served[bandit.user_id] = (lists, bandit.pull.arm)
        if self.config.holdout > 0:
            self.recommended[f"ab:{bandit.pull.arm}"].update(bandit.ranked.item_ids)

    def close_window(self, ts: int) -> None:
        point: dict[str, Any] = {"ts": ts, "hr@20": {}, "weights": self.state.fusion.weights()}
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
        return {
            "variants": variants,
            "timeline": self.timeline,
            "catalogue": len(self.catalogue),
            "weights": self.state.fusion.weights(),
            "rewards": self.state.fusion.rewards,
        }


def _lists_needed(events: list[Event], kinds: list[str | None], scored: list[bool], block: int) -> list[set[str]]:
    """For each block, the users whose list made after it will be judged: those with a scored target among their
    events in the next block where they are active (every event of that block sees the same list)."""
    needed: list[set[str]] = [set() for _ in range(math.ceil(len(events) / block))]
    blocks: dict[str, tuple[int, int | None]] = {}  # user -> (block of their latest event, block active before it)
    for n, event in enumerate(events):
        b = n // block
        latest, before = blocks.get(event.user_id, (None, None))
        if latest != b:
            latest, before = b, latest
            blocks[event.user_id] = (latest, before)
        if before is not None and kinds[n] is not None and scored[n]:
            needed[before].add(event.user_id)
    return needed


def evaluate(
    events: list[Event], config: EvalConfig | None = None, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Run the prequential evaluation over ``events`` (time-ordered) and return the report (a JSON-able dict).

    Lists are made only for the users whose list a later event will judge: the others cannot change a metric
    (the bandit then sees the exposure of judged lists only, which shifts every source's exposure alike).
    """
    from fusionrec.models import SOURCES

    config = config or EvalConfig()
    if config.session_gap_ms is not None:
        events = list(sessionize(events, config.session_gap_ms))
    run = _Run(config, list(SOURCES))
    started = time.perf_counter()
    classifier = TargetFilter()
    kinds = [classifier.classify(event) for event in events]
    scored = [
        n >= config.warmup and (config.train_until is None or event.ts >= config.train_until)
        for n, event in enumerate(events)
    ]
    needed = _lists_needed(events, kinds, scored, config.block)
    if events:
        first, last = events[0].ts, events[-1].ts
        test_start = max(first, config.train_until or first)
        width = max((last - test_start) / max(config.windows, 1), 1.0)
        next_window = test_start + width
    for b in range(len(needed)):
        block = events[b * config.block : (b + 1) * config.block]
        for n, event in enumerate(block, start=b * config.block):
            if scored[n]:
                while event.ts >= next_window:
                    run.close_window(int(next_window))
                    next_window += width
                if kinds[n] is not None:
                    run.judge(event, kinds[n])
        run.learn(block)
        run.refresh(needed[b])
        if progress is not None:
            progress(len(block))
    if events:
        run.close_window(int(next_window))
    seconds = time.perf_counter() - started
    report = run.report()
    singles = {name: report["variants"][name]["all"][f"hr@{config.k}"] for name in SOURCES}
    best = max(singles, key=singles.get)
    report["best_single"] = best
    bandit_hr = report["variants"]["fused:bandit"]["all"][f"hr@{config.k}"]
    report["fusion_vs_best_single"] = round(bandit_hr / singles[best], 3) if singles[best] else None
    report["run"] = {
        "events": len(events),
        "scored_events": sum(scored),
        "targets": sum(k is not None for k in kinds),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(events) / seconds, 1) if seconds > 0 else None,
        "block": config.block,
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

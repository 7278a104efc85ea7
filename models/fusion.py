"""Fusion weights learned online: how much to trust each recommender source, per user segment.

The ranker fuses the sources' normalised scores with a weight per source. :class:`FusionBandit` learns those
weights from the shop's own events, River-style (:meth:`~FusionBandit.pull` / :meth:`~FusionBandit.update`):

* **Exposure.** When a list is served, every source is *exposed* in proportion to its share of each item's score,
  discounted by position (``1 / log2(position + 2)``, the DCG discount): a source that put the top item there is
  exposed more than one that contributed to the tenth.
* **Reward.** When the user then views, carts or buys an item of that list, the sources that put it there share a
  reward of ``event weight × position discount`` in proportion to their contributions (purchase > cart > view,
  :data:`~fusionrec.models.base.DEFAULT_EVENT_WEIGHTS`).
* **Value.** A source's value is its reward per unit of exposure, shrunk towards the segment's pooled rate with a
  prior worth ``prior_exposure`` units (so a source seen little stays near the average instead of swinging to 0
  or 1). The weights are the values raised to ``sharpness`` and normalised, mixed with a floor of ``min_weight``
  per source.
* **Exploration.** With probability ``epsilon`` a list is served with one source (drawn uniformly) boosted:
  ``(1 - boost) × weights + boost × that source``. Every list logs the action and its probability (the
  propensity) so that another policy can be evaluated offline from the logs (inverse propensity scoring).
* **Drift.** Rewards and exposures decay with ``half_life_ms`` of event time, so the weights follow a shop whose
  best source changes (a sale makes trending matter, a new catalogue makes CF stale).
* **Segments.** One set of statistics per segment (``new`` and ``returning`` users by default): what works for a
  first visit (popular, trending, category) is not what works for a loyal customer (CF, co-visitation).

:class:`FixedWeights` never learns: equal-weight fusion, and the holdout arm of a live A/B test (:func:`holdout_arm`).
Both are a :class:`FusionPolicy`, the interface the fused recommender uses.

"""

from __future__ import annotations

import abc
import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "SEGMENTS",
    "FixedWeights",
    "FusionBandit",
    "FusionPolicy",
    "Pull",
    "holdout_arm",
    "position_discount",
]

#: The user segments that get their own weights.
SEGMENTS: tuple[str, ...] = ("new", "returning")


def position_discount(position: int) -> float:
    """The DCG discount of a 0-based list position: 1.0 for the top item, about 0.23 for the 20th.

    >>> [round(position_discount(p), 3) for p in (0, 1, 9)]
    [1.0, 0.631, 0.289]

    """
    return 1.0 / math.log2(position + 2)


def holdout_arm(user_id: str, fraction: float) -> str:
    """``"fixed"`` for the ``fraction`` of users in the fixed-weight holdout, else ``"bandit"``.

    The split is a hash of the user id (BLAKE2b, not Python's salted ``hash``), so every worker, every restart and
    the offline evaluation put a user in the same arm.

    >>> holdout_arm("u1", 0.0), holdout_arm("u1", 1.0)
    ('bandit', 'fixed')

    """
    if fraction <= 0.0:
        return "bandit"
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return "fixed" if int.from_bytes(digest, "big") / 2.0**64 < fraction else "bandit"


@dataclass(frozen=True, slots=True)
class Pull:
    """The fusion weights chosen for one list, and how they were chosen."""

    weights: Mapping[str, float]
    arm: str
    action: str
    propensity: float
    version: int


class FusionPolicy(abc.ABC):
    """How the fusion weights of each list are chosen (per user segment), and what is learned from the lists served.

    The shape of River's ``bandit/base.py``: :meth:`pull` chooses, :meth:`update` learns. The public :meth:`pull`
    does the shared step (the exploit weights, then the :class:`Pull` record); subclasses write :meth:`_exploit`
    (the weights they trust) and, if they explore, :meth:`_choose` (a departure from them, and its probability).

    Parameters
    ----------
    sources
        The source names (arms); at least one.

    """

    #: Which arm of a live A/B test this policy is (``Pull.arm``).
    arm: ClassVar[str]

    def __init__(self, sources: Sequence[str]):
        if not sources:
            raise ValueError("a fusion policy needs at least one source")
        self.sources = tuple(sources)

    # --- choosing ----------------------------------------------------------------------------------------------

    def pull(self, segment: str) -> Pull:
        """The weights for the next list of ``segment``, with the action taken and its probability (propensity)."""
        weights, action, propensity = self._choose(self._exploit(segment))
        return Pull(weights, self.arm, action, propensity, self.version)

    def weights(self, segment: str) -> dict[str, float]:
        """The exploit weights of ``segment`` (sum 1), as a new dict."""
        return dict(self._exploit(segment))

    @abc.abstractmethod
    def _exploit(self, segment: str) -> Mapping[str, float]:
        """The weights this policy trusts for ``segment`` (sum 1); callers do not modify them."""

    def _choose(self, weights: Mapping[str, float]) -> tuple[Mapping[str, float], str, float]:
        """The weights of the next list, the action's name and its probability; by default always the exploit
        weights, an action named after the arm."""
        return weights, self.arm, 1.0

    @property
    def version(self) -> int:
        """How many rewards the weights have learned from: the weights version published with each list."""
        return 0

    # --- learning ----------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def expose(self, segment: str, exposure: Mapping[str, float], ts: int) -> None:
        """Record that a list served to ``segment`` at ``ts`` exposed each source by the given amount."""

    @abc.abstractmethod
    def update(self, segment: str, reward: Mapping[str, float], ts: int) -> None:
        """Credit each source with its share of the reward for an interaction with a served item."""

    # --- state -------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def to_state(self) -> dict[str, Any]:
        """Learned statistics as plain JSON-able values (the parameters are the owner's to keep)."""

    @abc.abstractmethod
    def load_state(self, state: Mapping[str, Any]) -> None:
        """Install :meth:`to_state`'s output."""


class FixedWeights(FusionPolicy):
    """Fusion with weights that never change (equal by default): the baseline and the holdout arm.

    >>> FixedWeights(["cf", "popular"], {"cf": 3.0}).pull("new")
    Pull(weights={'cf': 1.0, 'popular': 0.0}, arm='fixed', action='fixed', propensity=1.0, version=0)

    """

    arm = "fixed"

    def __init__(self, sources: Sequence[str], weights: Mapping[str, float] | None = None):
        super().__init__(sources)
        raw = (
            {s: 1.0 for s in self.sources} if weights is None else {s: float(weights.get(s, 0.0)) for s in self.sources}
        )
        total = sum(raw.values())
        if total <= 0:
            raise ValueError("weights must have a positive sum")
        self._weights = {s: w / total for s, w in raw.items()}

    def _exploit(self, segment: str) -> Mapping[str, float]:  # noqa: ARG002 - the same weights for every segment
        return self._weights

    def expose(self, segment: str, exposure: Mapping[str, float], ts: int) -> None:
        """Never learns."""

    def update(self, segment: str, reward: Mapping[str, float], ts: int) -> None:
        """Never learns."""

    def to_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Nothing to install."""


class FusionBandit(FusionPolicy):
    """Learns per segment how much weight each source deserves (see the module docstring).

    Parameters
    ----------
    sources
        The source names (arms).
    segments
        The user segments, each with its own statistics.
    epsilon
        Probability that a list explores (one source boosted).
    boost
        How far an exploring list moves towards the boosted source (0: not at all, 1: that source alone).
    half_life_ms
        Rewards and exposures halve after this long (event time).
    prior_exposure
        Strength of the shrinkage towards the segment's pooled reward rate, in exposure units.
    sharpness
        Weights are ``value ** sharpness``, normalised: above 1 the best source takes more of the weight.
    min_weight
        Every source's exploit weight includes this much (the rest is shared by value), so none is ever switched
        off and the order among weak sources is kept.
    seed
        Seed of the exploration draws.

    Examples
    --------

    >>> bandit = FusionBandit(["cf", "popular"], epsilon=0.0, half_life_ms=10**12)
    >>> for t in range(100):
    ...     bandit.expose("returning", {"cf": 1.0, "popular": 1.0}, ts=t)
    ...     bandit.update("returning", {"cf": 0.5}, ts=t)
    >>> weights = bandit.pull("returning").weights
    >>> weights["cf"] > 0.9 > 0.1 > weights["popular"]
    True

    """

    arm = "bandit"

    def __init__(
        self,
        sources: Sequence[str],
        segments: Sequence[str] = SEGMENTS,
        epsilon: float = 0.05,
        boost: float = 0.5,
        half_life_ms: float = 86_400_000.0,
        prior_exposure: float = 20.0,
        sharpness: float = 1.0,
        min_weight: float = 0.001,
        seed: int | None = None,
    ):
        super().__init__(sources)
        if not 0.0 <= epsilon <= 1.0 or not 0.0 <= boost <= 1.0:
            raise ValueError("epsilon and boost must be in [0, 1]")
        if half_life_ms <= 0 or prior_exposure <= 0 or sharpness <= 0 or min_weight < 0:
            raise ValueError("half_life_ms, prior_exposure and sharpness must be > 0, min_weight >= 0")
        self.segments = tuple(segments)
        self.epsilon = epsilon
        self.boost = boost
        self.half_life_ms = half_life_ms
        self.prior_exposure = prior_exposure
        self.sharpness = sharpness
        self.min_weight = min_weight
        self.seed = seed
        self._rng = random.Random(seed)
        n = len(self.sources)
        self._reward = {seg: [0.0] * n for seg in self.segments}
        self._exposure = {seg: [0.0] * n for seg in self.segments}
        self._last_ts = {seg: None for seg in self.segments}
        self._updates = 0
        self._cache: dict[str, dict[str, float]] = {}

    # --- learning ----------------------------------------------------------------------------------------------

    def _decay(self, segment: str, ts: int) -> None:
        last = self._last_ts[segment]
        if last is None or ts > last:
            if last is not None:
                factor = 2.0 ** (-(ts - last) / self.half_life_ms)
                reward, exposure = self._reward[segment], self._exposure[segment]
                for n in range(len(reward)):
                    reward[n] *= factor
                    exposure[n] *= factor
            self._last_ts[segment] = ts

    def expose(self, segment: str, exposure: Mapping[str, float], ts: int) -> None:
        self._decay(segment, ts)
        totals = self._exposure[segment]
        for n, source in enumerate(self.sources):
            totals[n] += exposure.get(source, 0.0)
        self._cache.pop(segment, None)

    def update(self, segment: str, reward: Mapping[str, float], ts: int) -> None:
        self._decay(segment, ts)
        totals = self._reward[segment]
        for n, source in enumerate(self.sources):
            totals[n] += reward.get(source, 0.0)
        self._updates += 1
        self._cache.pop(segment, None)

    # --- choosing ----------------------------------------------------------------------------------------------

    def values(self, segment: str) -> dict[str, float]:
        """Each source's reward per unit exposure, shrunk towards the segment's pooled rate."""
        reward, exposure = self._reward[segment], self._exposure[segment]
        total_e = sum(exposure)
        pooled = sum(reward) / total_e if total_e > 0 else 0.0
        prior = self.prior_exposure
        return {s: (reward[n] + prior * pooled) / (exposure[n] + prior) for n, s in enumerate(self.sources)}

    def _exploit(self, segment: str) -> dict[str, float]:
        """The exploit weights of ``segment``; equal while nothing has been rewarded."""
        cached = self._cache.get(segment)
        if cached is not None:
            return cached
        values = self.values(segment)
        n = len(self.sources)
        top = max(values.values())
        if top <= 0.0:
            weights = {s: 1.0 / n for s in self.sources}
        else:
            raw = {s: (max(v, 0.0) / top) ** self.sharpness for s, v in values.items()}
            total = sum(raw.values())
            floor = min(self.min_weight, 1.0 / n)  # mixed in, not clipped: the order among weak sources survives
            weights = {s: (1.0 - n * floor) * r / total + floor for s, r in raw.items()}
        self._cache[segment] = weights
        return weights

    def _choose(self, weights: Mapping[str, float]) -> tuple[Mapping[str, float], str, float]:
        """Exploit with probability ``1 - epsilon``, else boost one source chosen uniformly."""
        if self.epsilon > 0.0 and self._rng.random() < self.epsilon:
            boosted = self.sources[self._rng.randrange(len(self.sources))]
            keep = 1.0 - self.boost
            mixed = {s: keep * w + (self.boost if s == boosted else 0.0) for s, w in weights.items()}
            return mixed, f"boost:{boosted}", self.epsilon / len(self.sources)
        return weights, "exploit", 1.0 - self.epsilon

    @property
    def version(self) -> int:
        return self._updates

    # --- state -------------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "reward": self._reward,
            "exposure": self._exposure,
            "last_ts": self._last_ts,
            "updates": self._updates,
            "rng": self._rng.getstate(),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Install :meth:`to_state`'s output; sources or segments added since then start from nothing."""
        saved = list(state["sources"])
        for seg in self.segments:
            if seg not in state["reward"]:
                continue
            for n, source in enumerate(self.sources):
                if source in saved:
                    self._reward[seg][n] = float(state["reward"][seg][saved.index(source)])
                    self._exposure[seg][n] = float(state["exposure"][seg][saved.index(source)])
            self._last_ts[seg] = state["last_ts"][seg]
        self._updates = int(state["updates"])
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        self._cache.clear()

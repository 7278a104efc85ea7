"""A learned ranker that stacks the sources: a small torch model over their normalised scores, trained online from
what each user did next.

Bandit fusion gives each source one weight per segment, so where one source is far better the mix dilutes it, and
where sources agree on the hits credit cannot tell them apart. :class:`LearnedRanker` is the seeds' model fusion,
*stacking*: a meta-model over the base models' outputs, scoring every candidate of the union of sources.

**Model.** Each source ``j`` that proposed candidate ``m`` adds a contribution ``g_j(x) >= 0`` (a small MLP with
a softplus output, shared by the sources, told which source it is by a learned per-source offset); the candidate's
score is ``Σ_j g_j``. The features ``x`` of a (candidate, source) pair are the source's normalised score, how many
sources proposed the candidate and their summed score (agreement), the user's segment and activity, and the
bandit's current weight of the source for the user's segment. The model is additive by source, so every item of a
list says exactly which sources put it there and how much each contributed (attribution, as with bandit fusion).

**Training.** When a list is made, the top ``pool`` candidates of the union by their best rank in any source
(:func:`pool_order`, independent of the learned model) are remembered for the user with what their features are
made of; the user's next target event (a new item, or a cart/purchase:
:class:`~fusionrec.models.targets.TargetFilter`) labels them: the item the user chose is the positive, the rest of
the pool negatives. Labelled pools are learned in mini-batches of ``batch_lists`` at the next ranking call (off the
event loop, on the ranker's thread) with a listwise softmax loss (the negative log-probability of the chosen item
among the pool: what a hit rate rewards), weighted by the event's type (purchase > cart > view). Targets outside
the pool teach nothing and are counted (``misses``). Parameters, optimiser moments and the remembered pools are part
of the state; training is seeded and is a deterministic function of the sequence of lists and events.

**Cold start.** Until it has learned from ``min_lists`` labelled lists, :meth:`LearnedRanker.ready` is false and
the fused recommender serves bandit fusion (:mod:`fusionrec.models.fused`).

Pure: no I/O. CUDA when the ranker's device is CUDA, CPU otherwise.
"""

from __future__ import annotations

import base64
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import torch

__all__ = ["FEATURES", "LearnedRanker", "Rows", "UserContext", "pool_order", "scores"]

#: The features of one (candidate, source) pair, in the order of the model's input; then one per item signal.
FEATURES = ("score", "n_sources", "others", "returning", "activity", "weight", "log_rank")
_WEIGHT = FEATURES.index("weight")


@dataclass(frozen=True, slots=True)
class UserContext:
    """What the ranker knows of a user beyond the candidates: segment, activity and the bandit's weights."""

    returning: bool
    events: int
    weights: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Rows:
    """The learned ranker's input: features ``x[N, F]`` of the proposed (candidate, source) pairs at ``(b, m, j)``
    of candidates shaped ``shape`` ``(B, M, S)``."""

    shape: tuple[int, ...]
    b: np.ndarray
    m: np.ndarray
    j: np.ndarray
    x: np.ndarray


@dataclass(slots=True)
class _Pool:
    """The remembered candidates of one list: item ids, sources' scores ``[P, S]`` and signals ``[P, G]`` (float16),
    the user's context then."""

    items: list[str]
    dense: np.ndarray
    signals: np.ndarray | None
    context: np.ndarray

    def to_state(self) -> list[Any]:
        return [
            self.items,
            _encode(self.dense),
            None if self.signals is None else _encode(self.signals),
            _encode(self.context),
        ]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> _Pool:
        items, dense, signals, context = state
        return cls(list(items), _decode(dense), None if signals is None else _decode(signals), _decode(context))


class _Stacker(torch.nn.Module):
    """``g_j(x) = α · w_j s_j + softplus(w2 · relu(W1 x + b1 + e_j) + b2 + c_j)``, one row per (candidate, source)
    pair: bandit fusion's term (the source's weight × its normalised score, scaled by a learned ``α``, 1 at the
    start) plus a learned correction that starts near 0, so a fresh model ranks as bandit fusion does and learns
    departures from it as evidence comes in."""

    def __init__(self, n_sources: int, n_features: int, hidden: int):
        super().__init__()
        self.hidden = torch.nn.Linear(n_features, hidden)
        self.source_offset = torch.nn.Parameter(torch.zeros(n_sources, hidden))
        self.out = torch.nn.Linear(hidden, 1)
        torch.nn.init.constant_(self.out.bias, -2.0)
        self.source_bias = torch.nn.Parameter(torch.zeros(n_sources))
        self.prior = torch.nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus(prior) = 1

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(x) + self.source_offset[source])
        correction = torch.nn.functional.softplus(self.out(h).squeeze(-1) + self.source_bias[source])
        return torch.nn.functional.softplus(self.prior) * x[:, 0] * x[:, _WEIGHT] + correction


class LearnedRanker:
    """Scores candidates by a stacking model learned online (see the module docstring).

    Parameters
    ----------
    sources
        The source names, in the order of the candidates' columns.
    hidden
        Width of the model's hidden layer.
    lr
        Adam's learning rate.
    batch_lists
        New labelled lists per optimiser step.
    replay
        Earlier labelled lists replayed beside each new batch, ``replay`` × ``batch_lists`` of them, drawn from the
        last ``replay_size``: where labels are scarce (a short shop log has a few hundred), one pass over them is too
        little training.
    replay_size
        Labelled lists kept for replay.
    pool
        Candidates remembered per list for training (the top of the order the list was made from).
    min_lists
        Labelled lists learned before :meth:`ready` (before it, the fused recommender serves bandit fusion).
    max_pending
        Most users whose last pool is remembered (least recently ranked forgotten first): bounds memory.
    item_signals
        Sources whose score of *every* candidate is a feature (not only of those they proposed): the user-independent
        ones, popularity and trending, tell how popular an item is wherever it came from.
    seed
        Seeds the initial parameters.
    device
        Where the model runs (the fusion ranker's device).

    Examples
    --------

    >>> ranker = LearnedRanker(["a", "b"], min_lists=1, batch_lists=1, device="cpu")
    >>> dense = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)   # item 0 from a, item 1 from b
    >>> valid = np.ones((1, 2), dtype=bool)
    >>> context = [UserContext(False, 1, {"a": 0.5, "b": 0.5})]
    >>> ctx = ranker.context(context)
    >>> x = ranker.features(dense, valid, ctx)
    >>> for _ in range(60):                      # the user always takes b's item
    ...     ranker.remember(["u"], [["x", "y"]], dense, ctx, None, pool_order(dense, valid))
    ...     _ = ranker.label("u", "y")
    ...     _ = ranker.learn_pending()
    >>> ranker.ready, ranker.lists_learned
    (True, 60)
    >>> contributions = ranker.contributions(x)
    >>> bool(contributions[0, 1, 1] > contributions[0, 0, 0])
    True

    """

    def __init__(
        self,
        sources: Sequence[str],
        hidden: int = 16,
        lr: float = 0.01,
        batch_lists: int = 32,
        replay: int = 3,
        replay_size: int = 1024,
        pool: int = 100,
        min_lists: int = 200,
        max_pending: int = 20_000,
        item_signals: Sequence[str] = (),
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        if not sources:
            raise ValueError("a learned ranker needs at least one source")
        self.sources = tuple(sources)
        self.hidden = hidden
        self.lr = lr
        self.batch_lists = batch_lists
        self.replay = replay
        self.replay_size = replay_size
        self.pool = pool
        self.min_lists = min_lists
        self.max_pending = max_pending
        self.item_signals = tuple(item_signals)
        self.n_features = len(FEATURES) + len(self.item_signals)
        self.seed = seed
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _Stacker(len(self.sources), self.n_features, hidden)
        self.net.to(self.device)
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=lr)
        #: user -> the pool of the user's last list, waiting for the user's next target
        self._pending: OrderedDict[str, _Pool] = OrderedDict()
        #: labelled pools waiting for the next step: (pool, index of the chosen item, weight)
        self._labelled: list[tuple[_Pool, int, float]] = []
        #: the last ``replay_size`` labelled pools learned, replayed beside new ones
        self._learned: list[tuple[_Pool, int, float]] = []
        self.lists_learned = 0
        self.misses = 0  # targets not in the remembered pool
        self.steps = 0
        self.last_loss: float | None = None

    @property
    def ready(self) -> bool:
        return self.lists_learned >= self.min_lists

    # --- features ----------------------------------------------------------------------------------------------

    def context(self, users: Sequence[UserContext]) -> np.ndarray:
        """The per-user inputs ``[B, 2 + S]``: returning (0/1), scaled log activity, the bandit's weights × S."""
        out = np.empty((len(users), 2 + len(self.sources)), dtype=np.float32)
        for b, c in enumerate(users):
            out[b, 0] = float(c.returning)
            out[b, 1] = math.log1p(c.events) / 5.0
            out[b, 2:] = [c.weights.get(name, 0.0) * len(self.sources) for name in self.sources]
        return out

    def features(
        self,
        dense: np.ndarray,
        valid: np.ndarray,
        context: Sequence[UserContext] | np.ndarray,
        signals: np.ndarray | None = None,
    ) -> Rows:
        """The model's input for candidates ``dense[B, M, S]`` (0: not proposed), the users' :meth:`context` and the
        ``item_signals``' scores ``signals[B, M, G]`` of every candidate (each scaled to at most 1): one row of
        :data:`FEATURES` (then the signals) per *proposed* (candidate, source) pair, the only ones that contribute."""
        ctx = context if isinstance(context, np.ndarray) else self.context(context)
        s = dense.shape[2]
        proposed = (dense > 0.0) & valid[:, :, None]
        bi, mi, ji = np.nonzero(proposed)
        score = dense[bi, mi, ji]
        x = np.empty((len(bi), self.n_features), dtype=np.float32)
        x[:, 0] = score
        x[:, 1] = proposed.sum(axis=2, dtype=np.float32)[bi, mi] / s
        x[:, 2] = dense.sum(axis=2)[bi, mi] - score
        x[:, 3] = ctx[bi, 0]
        x[:, 4] = ctx[bi, 1]
        x[:, 5] = ctx[bi, 2 + ji]
        # the position the score stands for (rank normalisation: the DCG discount 1/log2(pos + 2))
        x[:, 6] = np.log1p(np.exp2(1.0 / np.maximum(score, 0.05)) - 2.0) / 4.0
        if self.item_signals:
            if signals is None:
                raise ValueError(f"the item signals {self.item_signals} are needed")
            x[:, len(FEATURES) :] = signals[bi, mi]
        return Rows(dense.shape, bi, mi, ji, x)

    def _contributions(self, rows: Rows) -> torch.Tensor:
        """``g[B, M, S]`` (0 where not proposed), differentiable."""
        out = torch.zeros(rows.shape, dtype=torch.float32, device=self.device)
        if len(rows.x):
            index = tuple(torch.from_numpy(i).to(self.device) for i in (rows.b, rows.m, rows.j))
            out[index] = self.net(torch.from_numpy(rows.x).to(self.device), index[2])
        return out

    def contributions(self, rows: Rows) -> np.ndarray:
        """Each source's contribution ``[B, M, S]`` to each candidate's learned score (0 where not proposed), for
        the :meth:`features` ``rows``."""
        with torch.inference_mode():
            return self._contributions(rows).cpu().numpy()

    # --- learning ----------------------------------------------------------------------------------------------

    def remember(
        self,
        users: Sequence[str],
        unions: Sequence[Sequence[str]],
        dense: np.ndarray,
        context: np.ndarray,
        signals: np.ndarray | None,
        order_by: np.ndarray,
    ) -> None:
        """Remember each user's top ``pool`` candidates by ``order_by[B, M]`` (:func:`pool_order`) with what their
        features are made of (``dense``, the user's :meth:`context`, ``signals``), for labelling by the user's next
        target. Kept compact (float16 scores; features are rebuilt when learning)."""
        order = np.argsort(-order_by, axis=1, kind="stable")[:, : self.pool]
        rows = np.arange(len(users))[:, None]
        pooled = dense[rows, order].astype(np.float16)  # one gather for the batch; each pool is a slice of it
        pooled_signals = None if signals is None else signals[rows, order].astype(np.float16)
        pending = self._pending
        for b, user in enumerate(users):
            n = min(len(unions[b]), self.pool)
            if n == 0:
                pending.pop(user, None)
                continue
            top = order[b, :n].tolist()
            pending[user] = _Pool(
                list(itemgetter(*top)(unions[b])) if n > 1 else [unions[b][top[0]]],
                pooled[b, :n],
                None if pooled_signals is None else pooled_signals[b, :n],
                context[b],
            )
            pending.move_to_end(user)
        while len(pending) > self.max_pending:
            pending.popitem(last=False)

    def label(self, user: str, item_id: str, weight: float = 1.0) -> bool:
        """The user chose ``item_id`` (a target event): label their remembered pool; whether it was in it."""
        pool = self._pending.get(user)
        if pool is None:
            return False
        try:
            target = pool.items.index(item_id)
        except ValueError:
            self.misses += 1
            return False
        self._labelled.append((pool, target, float(weight)))
        return True

    def take_labelled(self) -> list[list[Any]]:
        """Hand the labelled pools waiting here over, JSON-able (:meth:`add_labelled` takes them): a partition that
        ranks with a ranker shared by every partition sends its labels to it instead of learning them."""
        out = [[pool.to_state(), target, weight] for pool, target, weight in self._labelled]
        self._labelled = []
        return out

    def add_labelled(self, labelled: Sequence[Any]) -> None:
        """Queue one labelled pool that :meth:`take_labelled` handed over (another partition's)."""
        pool, target, weight = labelled
        self._labelled.append((_Pool.from_state(pool), int(target), float(weight)))

    def learn_pending(self) -> int:
        """Learn the labelled lists in full mini-batches of ``batch_lists``, in order (the rest wait for more), each
        with ``replay`` × as many earlier ones; how many new lists were learned."""
        labelled, size = self._labelled, self.batch_lists
        full = len(labelled) - len(labelled) % size
        for start in range(0, full, size):
            batch = labelled[start : start + size]
            self._step(batch + self._replayed(self.replay * size))
            self.lists_learned += len(batch)
            self._learned.extend(batch)
            del self._learned[: -self.replay_size or None]
        self._labelled = labelled[full:]
        return full

    def _replayed(self, n: int) -> list[tuple[_Pool, int, float]]:
        """``n`` earlier labelled pools, spread over the replay memory by a step-dependent stride (deterministic:
        no random state to snapshot)."""
        memory = self._learned
        if not memory or n <= 0:
            return []
        offset = self.steps * 7919
        return [memory[(offset + i * 104_729) % len(memory)] for i in range(n)]

    def _step(self, batch: list[tuple[_Pool, int, float]]) -> None:
        width = max(len(pool.items) for pool, _, _ in batch)
        s, g = len(self.sources), len(self.item_signals)
        dense = np.zeros((len(batch), width, s), dtype=np.float32)
        signals = np.zeros((len(batch), width, g), dtype=np.float32)
        valid = np.zeros((len(batch), width), dtype=bool)
        context = np.stack([pool.context for pool, _, _ in batch])
        for i, (pool, _, _) in enumerate(batch):
            n = len(pool.items)
            dense[i, :n] = pool.dense
            if g:
                signals[i, :n] = pool.signals
            valid[i, :n] = True
        rows = self.features(dense, valid, context, signals)
        targets = torch.tensor([t for _, t, _ in batch], device=self.device)
        weights = torch.tensor([w for _, _, w in batch], dtype=torch.float32, device=self.device)
        scores = self._contributions(rows).sum(dim=2)
        scores = scores.masked_fill(~torch.from_numpy(valid).to(self.device), float("-inf"))
        loss = (torch.nn.functional.cross_entropy(scores, targets, reduction="none") * weights).sum() / weights.sum()
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.steps += 1
        self.last_loss = float(loss.detach())

    def forget(self, user: str) -> None:
        self._pending.pop(user, None)

    # --- state -------------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Parameters, optimiser moments, remembered pools and labelled lists, as JSON-able values."""
        optimiser = self.optimiser.state_dict()
        return {
            "params": {name: _encode(p.detach().cpu().numpy()) for name, p in self.net.state_dict().items()},
            "adam": {
                str(i): {k: _encode(v.cpu().numpy()) if torch.is_tensor(v) else v for k, v in moments.items()}
                for i, moments in optimiser["state"].items()
            },
            "pending": {user: pool.to_state() for user, pool in self._pending.items()},
            "labelled": [[pool.to_state(), t, w] for pool, t, w in self._labelled],
            "learned": [[pool.to_state(), t, w] for pool, t, w in self._learned],
            "lists_learned": self.lists_learned,
            "misses": self.misses,
            "steps": self.steps,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict({name: torch.from_numpy(_decode(v)) for name, v in state["params"].items()})
        self.net.to(self.device)
        optimiser = self.optimiser.state_dict()
        optimiser["state"] = {
            int(i): {
                k: torch.from_numpy(_decode(v)).to(self.device) if isinstance(v, dict) else v
                for k, v in moments.items()
            }
            for i, moments in state["adam"].items()
        }
        self.optimiser.load_state_dict(optimiser)
        self._pending = OrderedDict((user, _Pool.from_state(pool)) for user, pool in state["pending"].items())
        self._labelled = [(_Pool.from_state(pool), int(t), float(w)) for pool, t, w in state["labelled"]]
        self._learned = [(_Pool.from_state(pool), int(t), float(w)) for pool, t, w in state.get("learned", [])]
        self.lists_learned = int(state["lists_learned"])
        self.misses = int(state["misses"])
        self.steps = int(state["steps"])

    @property
    def n_pending(self) -> int:
        return len(self._pending)


def pool_order(dense: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The order a list's training pool is taken from ``[B, M]``: each candidate's best normalised score over the
    sources (its best rank, with rank normalisation), the summed score breaking ties.

    It does not depend on the learned ranker: a pool in the model's own order would keep out the items the model
    underrates, which could then never be labelled and corrected."""
    order = dense.max(axis=2) + dense.sum(axis=2) * 1e-3
    order[~valid] = -math.inf
    return order


def scores(contributions: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each candidate's learned score ``[B, M]``: the sum of its sources' contributions, ``-inf`` for padding."""
    scores = contributions.sum(axis=2)
    scores[~valid] = -math.inf
    return scores


def _encode(array: np.ndarray) -> dict[str, Any]:
    shape = list(array.shape)  # before ascontiguousarray, which makes a 0-d array 1-d
    data = np.ascontiguousarray(array).tobytes()
    return {"dtype": array.dtype.str, "shape": shape, "data": base64.b64encode(data).decode()}


def _decode(blob: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(blob["data"])
    return np.frombuffer(raw, dtype=np.dtype(blob["dtype"])).reshape(blob["shape"]).copy()

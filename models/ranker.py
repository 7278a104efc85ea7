"""The fusion ranker: candidates from every source → normalised scores → weighted fusion → filters → top K.

For a batch of users, :meth:`FusionRanker.rank`

1. gathers up to ``candidates`` proposals per user from every source, the whole batch of users at once
   (:meth:`~fusionrec.models.base.Recommender.candidates_many`: the CF source scores the whole catalogue for all of
   them in one exhaustive, chunked pass on the ranker's device, the others loop over their ``candidates``);
2. normalises each source's scores per user, so that no source dominates by scale: ``"max"`` divides by the
   source's best score for that user (keeping how much better the best is than the rest), ``"rank"`` uses the DCG
   discount of the candidate's position;
3. removes the items that some source excludes for the user (:meth:`~fusionrec.models.base.Recommender.excluded`:
   the ``recent`` source's purchases) and items marked unavailable;
4. fuses with the user's weights as one batched tensor product on the ranker's device (CUDA when available),
   ``score = Σ_source weight × normalised score``; the contributions of each source are kept for attribution;
5. walks the fused order keeping at most ``category_cap`` items per category (diversity) until it has ``k``; an
   item's category is the first one a source knows
   (:meth:`~fusionrec.models.base.Recommender.category_of`).

The ranker never names a concrete model: it asks every source the same questions, and resolves once per
:meth:`~FusionRanker.prepare` which sources override the optional ones
(:meth:`~fusionrec.models.base.Recommender.provides`), so that the others cost nothing.

It also returns each source's own top ``k`` after the same filters: what that source alone would have shown.
CPU and CUDA give the same lists within float tolerance (ties are broken by a stable sort on the union order).

"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import chain, compress, count, filterfalse, islice
from operator import itemgetter

import numpy as np
import torch

from fusionrec.contracts.recommendations import rounded_columns

from .base import Recommender
from .fusion import position_discount
from .topk import pick_device

__all__ = ["Candidates", "FusionRanker", "Kept", "RankedItem", "RankedList", "fused_parts"]

NORMALISATIONS = ("max", "rank")
#: The per-source contributions ``[B, k, S]`` of the items a :class:`Kept` keeps: ``parts[b, p]`` those of
#: ``kept.top[b, p]`` (0 past ``kept.counts[b]``).
Parts = np.ndarray
# The zips below that run per user or per item pair sequences of equal length by construction, and say
# strict=False: a strict zip costs a third more per call here.
_ITEM = itemgetter(0)
_DISCOUNTS = np.array([position_discount(n) for n in range(1000)])  # grown by _discounts when a list is longer


@dataclass(slots=True)
class RankedItem:
    """One item of a fused list; ``contributions`` maps each source to its part of ``score``. (Not frozen: a frozen
    dataclass's ``__init__`` costs several times as much, and every list makes ``k`` of them.)"""

    item_id: str
    score: float
    contributions: dict[str, float]
    category_id: str | None = None


@dataclass(slots=True)
class Candidates:
    """Every user's filtered, normalised candidates (:meth:`FusionRanker.prepare`): ``dense[b, m, j]`` is source
    ``j``'s normalised score of ``unions[b][m]`` (0: not proposed), ``valid`` masks the padding; categories are
    looked up (``category_of``) only for the items a list keeps."""

    users: list[str]
    sources: list[str]
    unions: list[list[str]]
    source_lists: list[dict[str, list[str]]]
    dense: np.ndarray
    valid: np.ndarray
    category_of: Callable[[str], str | None] | None
    _codes: tuple[np.ndarray, list[str]] | None = field(default=None, init=False, repr=False, compare=False)

    def item_codes(self) -> tuple[np.ndarray, list[str]]:
        """``(codes, items)``: ``items`` are the batch's distinct union items in order of first appearance (user by
        user), and ``codes[b, m]`` is the index of ``unions[b][m]`` in ``items`` (0 on the padding, which ``valid``
        masks): for what is looked up once per distinct item rather than once per user and item. Computed on the
        first call, C-level, and kept.

        >>> candidates = Candidates(["u", "v"], ["s"], [["a", "b"], ["b"]], [{}, {}], np.zeros((2, 2, 1)),
        ...                         np.array([[True, True], [True, False]]), None)
        >>> codes, items = candidates.item_codes()
        >>> codes.tolist(), items
        ([[0, 1], [1, 0]], ['a', 'b'])

        """
        if self._codes is None:
            index: defaultdict[str, int] = defaultdict(count().__next__)
            codes = np.zeros(self.valid.shape, dtype=np.int64)
            codes[self.valid] = np.fromiter(
                map(index.__getitem__, chain.from_iterable(self.unions)), dtype=np.int64, count=int(self.valid.sum())
            )
            self._codes = (codes, list(index))
        return self._codes


@dataclass(frozen=True, slots=True)
class Kept:
    """What :meth:`FusionRanker.keep` keeps of a batch's lists: ``top[b, :counts[b]]`` are user ``b``'s union
    positions, best first, and ``scores[b, p]`` the score of ``top[b, p]``."""

    top: np.ndarray
    counts: np.ndarray
    scores: np.ndarray


def fused_parts(prepared: Candidates, w: np.ndarray, kept: Kept) -> Parts:
    """The per-source contributions of fused lists with weights ``w[B, S]`` (weight × normalised score) of the
    items ``kept`` keeps, for the whole batch at once."""
    return kept_parts(prepared.dense, kept, w)


def kept_parts(values: np.ndarray, kept: Kept, w: np.ndarray | None = None) -> Parts:
    """``values[b, kept.top[b, p], :]`` (times ``w[b]`` when given) for every kept position, 0 past each list's
    count: one gather over the batch instead of one per user."""
    rows = np.arange(kept.top.shape[0])[:, None]
    parts = values[rows, kept.top]
    if w is not None:
        parts = parts * w[:, None, :]
    parts[np.arange(kept.top.shape[1])[None, :] >= kept.counts[:, None]] = 0.0
    return parts


class _BatchItems:
    """The items of a batch's lists as arrays: ``scores[b, p]`` and per-source ``parts[b, p, :]`` of user ``b``'s
    ``p``-th item; what every list reads as numbers is converted for the whole batch at once, when first asked."""

    __slots__ = ("scores", "parts", "sources", "_raw", "_rounded")

    def __init__(self, scores: np.ndarray, parts: np.ndarray, sources: Sequence[str]):
        self.scores, self.parts, self.sources = scores, parts, sources
        self._raw: tuple[list, list] | None = None
        self._rounded: tuple[list, list, list] | None = None

    def raw(self) -> tuple[list, list]:
        """``(scores, parts)`` as nested Python lists."""
        if self._raw is None:
            self._raw = (self.scores.tolist(), self.parts.tolist())
        return self._raw

    def rounded(self) -> tuple[list, list]:
        """``(scores, contributions)``: every item's score and ``{source: part}`` of its parts ``> 0``, rounded to 6
        decimals. Only the parts that are there are converted (a few of the sources per item): each item's set of
        sources is a bit pattern, mapped once per batch to its tuple of names."""
        if self._rounded is None:
            parts = self.parts
            proposed = parts > 0.0
            bits = (proposed.astype(np.int64) << np.arange(parts.shape[2], dtype=np.int64)).sum(axis=2).tolist()
            values = np.round(parts[proposed].astype(np.float64), 6).tolist()  # C order: user, position, source
            sources = tuple(self.sources)
            names: dict[int, tuple[str, ...]] = {}
            contributions, at = [], 0
            for row in bits:
                out = []
                for bit in row:
                    keys = names.get(bit)
                    if keys is None:
                        keys = names[bit] = tuple(s for n, s in enumerate(sources) if bit >> n & 1)
                    end = at + len(keys)
                    out.append(dict(zip(keys, values[at:end], strict=True)))
                    at = end
                contributions.append(out)
            self._rounded = (np.round(self.scores.astype(np.float64), 6).tolist(), contributions)
        return self._rounded


class RankedList:
    """A user's fused list and every source's own filtered top ``k``.

    The ranker keeps a batch's items as arrays (:class:`_BatchItems`) and each list its ids, categories and row;
    the :class:`RankedItem` objects are built only when ``items`` is read: publishing reads the rounded columns
    (:meth:`rounded_columns`) and the evaluation the ids, so most lists never build them."""

    __slots__ = ("user_id", "source_lists", "_items", "_ids", "_categories", "_batch", "_row")

    def __init__(
        self, user_id: str, items: list[RankedItem] | None = None, source_lists: dict[str, list[str]] | None = None
    ):
        self.user_id = user_id
        self.source_lists = {} if source_lists is None else source_lists
        self._items: list[RankedItem] | None = [] if items is None else items
        self._ids: list[str] = []
        self._categories: list[str | None] = []
        self._batch: _BatchItems | None = None
        self._row = 0

    def _set_columns(self, ids: list[str], categories: list[str | None], batch: _BatchItems, row: int) -> None:
        self._items, self._ids, self._categories, self._batch, self._row = None, ids, categories, batch, row

    @property
    def items(self) -> list[RankedItem]:
        if self._items is None:
            assert self._batch is not None
            scores, parts = self._batch.raw()
            sources, n, b = self._batch.sources, len(self._ids), self._row
            self._items = [
                RankedItem(item, score, {s: c for s, c in zip(sources, part, strict=False) if c > 0.0}, category)
                for item, score, part, category in zip(
                    self._ids, scores[b][:n], parts[b][:n], self._categories, strict=False
                )
            ]
        return self._items

    @items.setter
    def items(self, items: list[RankedItem]) -> None:
        self._items, self._batch = items, None

    @property
    def item_ids(self) -> list[str]:
        if self._items is None:
            return list(self._ids)
        return [item.item_id for item in self._items]

    def rounded_columns(self) -> tuple[list[str], list[float], list[dict[str, float]], list[str | None]]:
        """``(item ids, scores, contributions, category ids)``, scores and contributions rounded to 6 decimals
        (numpy, once per batch): what the published JSON holds."""
        if self._items is not None:
            return rounded_columns((i.item_id, i.score, i.contributions, i.category_id) for i in self._items)
        assert self._batch is not None
        scores, contributions = self._batch.rounded()
        n, b = len(self._ids), self._row
        return list(self._ids), scores[b][:n], contributions[b][:n], list(self._categories)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RankedList):
            return NotImplemented
        return (self.user_id, self.items, self.source_lists) == (other.user_id, other.items, other.source_lists)

    def __repr__(self) -> str:
        return f"RankedList(user_id={self.user_id!r}, items={self.items!r}, source_lists={self.source_lists!r})"


class FusionRanker:
    """Fuses the sources' candidates into one top-``k`` list per user (see the module docstring).

    Parameters
    ----------
    k
        Items per list.
    candidates
        Proposals gathered from each source per user.
    category_cap
        Most items of one category per list; 0 for no cap. Items of unknown category are not capped.
    normalise
        ``"max"`` or ``"rank"``: how each source's scores are brought to a common scale.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    max_chunk_bytes
        Memory bound of one block of the exhaustive CF scoring.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import Popularity, RecentItems
    >>> events = [Event("e1", "ann", "tea", "view", 1), Event("e2", "bob", "mug", "purchase", 2),
    ...           Event("e3", "ann", "mug", "purchase", 3)]
    >>> models = {"popular": Popularity(), "recent": RecentItems()}
    >>> for model in models.values():
    ...     model.learn_many(events)
    >>> ranker = FusionRanker(k=5, normalise="max", device="cpu")
    >>> [ann] = ranker.rank(models, ["ann"], [{"popular": 0.5, "recent": 0.5}])

    Ann bought the mug, so only the tea is left. Both sources put it there: ``recent`` with its best score,
    ``popular`` with a tenth of its best (the mug's):

    >>> [(item.item_id, {s: round(c, 3) for s, c in item.contributions.items()}) for item in ann.items]
    [('tea', {'popular': 0.05, 'recent': 0.5})]

    """

    def __init__(
        self,
        k: int = 20,
        candidates: int = 50,
        category_cap: int = 0,
        normalise: str = "rank",
        device: str = "auto",
        max_chunk_bytes: int = 64 * 2**20,
    ):
        if k < 1 or candidates < 1 or category_cap < 0:
            raise ValueError("k and candidates must be >= 1, category_cap >= 0")
        if normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
        self.k = k
        self.candidates = candidates
        self.category_cap = category_cap
        self.normalise = normalise
        self.device = pick_device(device)
        self.max_chunk_bytes = max_chunk_bytes

    # --- candidates --------------------------------------------------------------------------------------------

    def gather(
        self, models: Mapping[str, Recommender], users: Sequence[str], now_ms: int | None = None
    ) -> dict[str, list[list[tuple[str, float]]]]:
        """Each source's candidates for each user: ``{source: [[(item, score), ...] per user]}``."""
        device, max_chunk_bytes = self.device, self.max_chunk_bytes
        return {
            name: model.candidates_many(users, self.candidates, now_ms, device=device, max_chunk_bytes=max_chunk_bytes)
            for name, model in models.items()
        }

    # --- ranking -----------------------------------------------------------------------------------------------

    def _normalised(self, pairs: Sequence[tuple[str, float]], scores: Sequence[float]) -> np.ndarray | None:
        """``"max"`` normalisation of one candidate list (``scores``: its scores, best first): each score over the
        list's best, 0 where the score or the best is not positive. ``None`` for ``"rank"``, whose values depend on
        the position alone (:data:`_DISCOUNTS`)."""
        if self.normalise == "rank":
            return None
        values = np.asarray(scores, dtype=np.float64)
        top = pairs[0][1] if pairs else 0.0
        if top <= 0.0:
            return np.zeros(len(values))
        with np.errstate(invalid="ignore"):
            return np.where(values > 0.0, values / top, 0.0)

    def prepare(
        self,
        models: Mapping[str, Recommender],
        users: Sequence[str],
        now_ms: int | None = None,
        unavailable: Collection[str] = (),
        exclude: Sequence[Collection[str]] | None = None,
        gathered: Mapping[str, list[list[tuple[str, float]]]] | None = None,
    ) -> Candidates:
        """Gather (unless ``gathered`` is given), filter and normalise every source's candidates for ``users``:
        the part of ranking that does not depend on the weights, so one preparation serves several weightings.

        ``unavailable`` items are never kept; ``exclude`` adds items per user, and so does every source's
        :meth:`~fusionrec.models.base.Recommender.excluded` (bought items, for a ``recent`` source).

        The work is batched (see :class:`_Batch`): each candidate list is split into its items and scores once (a
        list shared by every user, like popularity's, once per batch), the values and the dense tensor are numpy
        over the whole batch, and a user's union is built by C-level dict and list operations over their items;
        Python loops run per user and source, not per candidate.
        """
        sources = list(models)
        if gathered is None:
            gathered = self.gather(models, users, now_ms)
        excluders = [model.excluded for model in models.values() if model.provides("excluded")]
        category_of = _first_known([model.category_of for model in models.values() if model.provides("category_of")])
        batch = _Batch(self, [gathered[name] for name in sources], frozenset(unavailable))
        for b, user in enumerate(users):
            banned = [excluded(user) for excluded in excluders]
            if exclude is not None:
                banned.append(set(exclude[b]))
            batch.add_user(b, sources, [part for part in banned if part])
        dense, valid = batch.tensor(len(users), len(sources))
        return Candidates(list(users), sources, batch.unions, batch.source_lists, dense, valid, category_of)

    def order(
        self, prepared: Candidates, weights: Sequence[Mapping[str, float]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(w[B, S], fused[B, M], order[B, M])``: the users' weights as a matrix, the fused scores (``-inf`` on the
        padding) and their order, best first (one batched product and one stable sort on the ranker's device)."""
        users, sources = prepared.users, prepared.sources
        if len(weights) != len(users):
            raise ValueError("one weights mapping per user is needed")
        rows: dict[int, list[float]] = {}  # by id of the weights mapping: a mapping shared by many users is read once
        for ws in weights:
            if id(ws) not in rows:
                rows[id(ws)] = [float(ws.get(s, 0.0)) for s in sources]
        w = np.array([rows[id(ws)] for ws in weights], dtype=np.float32).reshape(len(users), len(sources))
        with torch.inference_mode():
            x = torch.from_numpy(prepared.dense).to(self.device)
            fused = torch.bmm(x, torch.from_numpy(w).to(self.device)[:, :, None]).squeeze(2)
            fused = torch.where(
                torch.from_numpy(prepared.valid).to(self.device), fused, torch.tensor(float("-inf"), device=self.device)
            )
            order = torch.sort(fused, dim=1, descending=True, stable=True).indices
            return w, fused.cpu().numpy(), order.cpu().numpy()

    def fuse(self, prepared: Candidates, weights: Sequence[Mapping[str, float]]) -> list[RankedList]:
        """Fuse prepared candidates with one weights mapping (source → weight) per user, then cap and cut to k
        (:meth:`order`, :meth:`keep`, :meth:`lists`)."""
        if len(weights) != len(prepared.users):
            raise ValueError("one weights mapping per user is needed")
        if prepared.dense.shape[1] == 0:
            return self.lists(prepared, None, None)
        w, fused, order = self.order(prepared, weights)
        kept = self.keep(prepared, fused, order)
        return self.lists(prepared, kept, fused_parts(prepared, w, kept))

    def select(self, prepared: Candidates, contributions: np.ndarray, scores: np.ndarray) -> list[RankedList]:
        """The lists of ``prepared`` ordered by another scorer's ``scores[B, M]`` (``-inf`` on the padding; ties in
        union order), each item with that scorer's per-source ``contributions[B, M, S]``: the same cap and cut to
        ``k`` as :meth:`fuse` (the learned ranker's lists, :mod:`fusionrec.models.learned`)."""
        if prepared.dense.shape[1] == 0:
            return self.lists(prepared, None, None)
        order = np.argsort(-scores, axis=1, kind="stable")
        kept = self.keep(prepared, scores, order)
        return self.lists(prepared, kept, kept_parts(contributions, kept))

    def keep(self, prepared: Candidates, scores: np.ndarray, order: np.ndarray) -> Kept:
        """Cap and cut each list of ``order`` (best first; ``scores[b, m]`` of union item ``m``): the union
        positions kept, best first, without building any item (:meth:`lists` does, for the lists that are read).

        Without a cap a list is its first positions up to the first score ``<= 0``, at most ``k`` (vectorised over
        the batch). With one, each list walks its order keeping at most ``category_cap`` items per known category,
        until ``k`` are kept or a score is ``<= 0``."""
        if not self.category_cap:
            top = np.ascontiguousarray(order[:, : self.k])
            top_scores = np.take_along_axis(scores, top, axis=1)
            return Kept(top, (top_scores > 0.0).sum(axis=1), top_scores)
        category_of = prepared.category_of
        cap, k = self.category_cap, self.k
        width = min(k, order.shape[1])
        top = np.zeros((len(prepared.users), width), dtype=np.int64)
        top_scores = np.zeros((len(prepared.users), width), dtype=scores.dtype)
        counts = np.zeros(len(prepared.users), dtype=np.int64)
        for b, union in enumerate(prepared.unions):
            row = scores[b].tolist()
            per_category: dict[str, int] = {}
            kept: list[int] = []
            for m in order[b, : len(union)].tolist():
                if row[m] <= 0.0:
                    break
                cat = category_of(union[m]) if category_of is not None else None
                if cat is not None:
                    seen = per_category.get(cat, 0)
                    if seen >= cap:
                        continue
                    per_category[cat] = seen + 1
                kept.append(m)
                if len(kept) == k:
                    break
            counts[b] = len(kept)
            top[b, : len(kept)] = kept
            top_scores[b, : len(kept)] = [row[m] for m in kept]
        return Kept(top, counts, top_scores)

    def lists(
        self, prepared: Candidates, kept: Kept | None, parts: Parts | None, users: Sequence[int] | None = None
    ) -> list[RankedList]:
        """The :class:`RankedList` of each user (of the batch positions ``users`` only, when given; the others' lists
        keep their own lists but no items), with the items ``kept`` and their per-source contributions ``parts``
        (``[B, k, S]``, :func:`fused_parts`), kept as columns (see :class:`RankedList`)."""
        results = [RankedList(u, [], dict(own)) for u, own in zip(prepared.users, prepared.source_lists, strict=False)]
        if kept is None or parts is None:
            return results
        category_of = prepared.category_of
        counts = kept.counts.tolist()
        tops = kept.top.tolist()
        batch = _BatchItems(kept.scores, parts, prepared.sources)
        for b in range(len(results)) if users is None else users:
            n = counts[b]
            if not n:
                continue
            ids = list(map(prepared.unions[b].__getitem__, tops[b][:n]))
            categories = list(map(category_of, ids)) if category_of is not None else [None] * n
            results[b]._set_columns(ids, categories, batch, b)
        return results

    def rank(
        self,
        models: Mapping[str, Recommender],
        users: Sequence[str],
        weights: Sequence[Mapping[str, float]],
        now_ms: int | None = None,
        unavailable: Collection[str] = (),
        exclude: Sequence[Collection[str]] | None = None,
        gathered: Mapping[str, list[list[tuple[str, float]]]] | None = None,
    ) -> list[RankedList]:
        """The fused list of each of ``users`` with the matching ``weights`` (source → weight): :meth:`prepare`
        then :meth:`fuse`."""
        if len(weights) != len(users):
            raise ValueError("one weights mapping per user is needed")
        if not users:
            return []
        return self.fuse(self.prepare(models, users, now_ms, unavailable, exclude, gathered), weights)


class _Batch:
    """One :meth:`FusionRanker.prepare` call's candidates, assembled user by user.

    Every (user, source) list is split once into its items and normalised values (by identity: a list that every
    user shares is split once per batch). For each user, the items of all their lists in source order are the
    *entries*; the union is ``dict.fromkeys`` of the entries that are kept (value > 0, not banned), so its order is
    first appearance, and the union position of each kept entry is one C-level ``map`` over a dict. What is per
    entry (user, source, value) stays in flat numpy arrays built at the end (:meth:`tensor`).
    """

    def __init__(self, ranker: FusionRanker, lists: list[list[Sequence[tuple[str, float]]]], unavailable: frozenset):
        self.ranker = ranker
        self.k = ranker.k
        self.lists = lists
        self.unavailable = unavailable
        self.rank = ranker.normalise == "rank"
        # under "rank", the sources whose users' lists are not one shared object: split per user, never cached
        self.direct = frozenset(
            j for j, per_user in enumerate(lists) if self.rank and not all(pairs is per_user[0] for pairs in per_user)
        )
        self.split: dict[int, tuple[tuple[str, ...], np.ndarray | None, list[bool] | None]] = {}
        self.unions: list[list[str]] = []
        self.source_lists: list[dict[str, list[str]]] = []
        self.lengths: list[int] = []  # entries per (user, source), user-major
        self.values: list[np.ndarray] = []  # "max": the values of each (user, source) list
        self.members = array("q")  # the union position of every kept entry, in entry order
        self.banned: list[tuple[int, np.ndarray]] = []  # (first entry, mask) of the users with banned entries
        self.total = 0

    def _split(
        self, pairs: Sequence[tuple[str, float]]
    ) -> tuple[tuple[str, ...], np.ndarray | None, list[bool] | None]:
        """A list's items, its ``"max"`` values (``None`` for ``"rank"``) and, when some value is not positive,
        which are."""
        if self.rank:  # the values are the positions' discounts: only the items are needed
            split = self.split[id(pairs)] = (tuple(map(_ITEM, pairs)), None, None)
            return split
        items, scores = tuple(zip(*pairs, strict=False)) if pairs else ((), ())
        values = self.ranker._normalised(pairs, scores)
        positive = None
        if values is not None:
            mask = values > 0.0
            if not mask.all():
                positive = mask.tolist()
        split = self.split[id(pairs)] = (items, values, positive)
        return split

    def add_user(self, b: int, sources: list[str], parts: list[AbstractSet[str]]) -> None:
        """User ``b``'s union and own lists; ``parts``: the non-empty sets of items excluded for them."""
        entries: list[str] = []
        spans: list[tuple[int, int]] = []  # each source's entries: entries[start:stop]
        flags: list[bool] | None = None
        split, lists, lengths, direct = self.split, self.lists, self.lengths, self.direct
        for j in range(len(sources)):
            pairs = lists[j][b]
            start = len(entries)
            if j in direct:  # a personal list under "rank": its items straight into the entries, nothing kept
                entries.extend(map(_ITEM, pairs))
            else:
                one = split.get(id(pairs))
                if one is None:
                    one = self._split(pairs)
                items, values, positive = one
                if positive is not None and flags is None:
                    flags = [True] * start
                if flags is not None:
                    flags.extend(positive if positive is not None else [True] * len(items))
                entries.extend(items)
                if values is not None:
                    self.values.append(values)
            spans.append((start, len(entries)))
            lengths.append(len(entries) - start)
        kept = entries if flags is None else list(compress(entries, flags))
        union = dict.fromkeys(kept)
        seen = union if flags is None else dict.fromkeys(entries)
        if self.unavailable:
            parts = [*parts, self.unavailable]
        hit: set[str] = set()
        for part in parts:  # only the excluded items that this user's lists hold matter: look up the smaller side
            hit.update(filter(seen.__contains__, part) if len(part) <= len(seen) else filter(part.__contains__, seen))
        k = self.k
        if hit:
            dropped = hit.__contains__
            kept = list(filterfalse(dropped, kept))
            union = dict.fromkeys(kept)
            self.banned.append((self.total, np.fromiter(map(dropped, entries), dtype=bool, count=len(entries))))
            own = {
                name: list(islice(filterfalse(dropped, islice(entries, start, stop)), k))
                for name, (start, stop) in zip(sources, spans, strict=False)
            }
        else:
            own = {
                name: entries[start : min(stop, start + k)] for name, (start, stop) in zip(sources, spans, strict=False)
            }
        self.total += len(entries)
        position = dict(zip(union, range(len(union)), strict=False))
        self.members.extend(map(position.__getitem__, kept))
        self.unions.append(list(union))
        self.source_lists.append(own)

    def tensor(self, n_users: int, n_sources: int) -> tuple[np.ndarray, np.ndarray]:
        """``dense[b, m, j]``, source ``j``'s value of user ``b``'s union item ``m``, and the mask of real items."""
        sizes = [len(union) for union in self.unions]
        width = max(sizes, default=0)
        dense = np.zeros((n_users, width, n_sources), dtype=np.float32)
        valid = np.arange(width) < np.array(sizes, dtype=np.intp)[:, None]
        if not self.total:
            return dense, valid
        lengths = np.array(self.lengths, dtype=np.intp)
        group = np.repeat(np.arange(lengths.shape[0]), lengths)  # each entry's (user, source) list, user-major
        if self.rank:
            positions = np.arange(self.total) - (np.cumsum(lengths) - lengths)[group]
            values = _discounts(int(lengths.max()))[positions]
        else:
            values = np.concatenate(self.values)
        if self.banned or not self.rank:  # else every entry is kept: rank values are all positive
            keep = values > 0.0
            for first, mask in self.banned:
                keep[first : first + mask.shape[0]] &= ~mask
            group, values = group[keep], values[keep]
        users, sources = np.divmod(group, n_sources)
        dense[users, np.frombuffer(self.members, dtype=np.int64), sources] = values
        return dense, valid


def _discounts(n: int) -> np.ndarray:
    """The ``"rank"`` values of positions ``0 .. n-1`` (or more), :func:`~fusionrec.models.fusion.position_discount`."""
    global _DISCOUNTS
    if n > _DISCOUNTS.shape[0]:
        _DISCOUNTS = np.array([position_discount(p) for p in range(max(n, 2 * _DISCOUNTS.shape[0]))])
    return _DISCOUNTS


def _first_known(lookups: list[Callable[[str], str | None]]) -> Callable[[str], str | None] | None:
    """One lookup that asks ``lookups`` in turn and returns the first answer that is not ``None``: ``None`` when
    there is nothing to ask, the only lookup itself when there is one (the usual case, one call per item)."""
    if len(lookups) <= 1:
        return lookups[0] if lookups else None

    def first(item_id: str) -> str | None:
        for lookup in lookups:
            answer = lookup(item_id)
            if answer is not None:
                return answer
        return None

    return first

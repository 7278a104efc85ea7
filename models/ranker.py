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

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .base import Recommender
from .fusion import position_discount
from .topk import pick_device

__all__ = ["Candidates", "FusionRanker", "RankedItem", "RankedList"]

NORMALISATIONS = ("max", "rank")
_DISCOUNTS = [position_discount(n) for n in range(1000)]


@dataclass(frozen=True, slots=True)
class RankedItem:
    """One item of a fused list; ``contributions`` maps each source to its part of ``score``."""

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


@dataclass(slots=True)
class RankedList:
    """A user's fused list and every source's own filtered top ``k``."""

    user_id: str
    items: list[RankedItem]
    source_lists: dict[str, list[str]] = field(default_factory=dict)

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]


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

    def _normalised(self, pairs: list[tuple[str, float]]) -> list[float]:
        """Scores on a common scale; ``pairs`` are best first, as every source's ``candidates`` returns them."""
        if self.normalise == "rank":
            return (
                _DISCOUNTS[: len(pairs)]
                if len(pairs) <= len(_DISCOUNTS)
                else [position_discount(n) for n in range(len(pairs))]
            )
        top = pairs[0][1] if pairs else 0.0
        if top <= 0.0:
            return [0.0] * len(pairs)
        return [score / top if score > 0.0 else 0.0 for _, score in pairs]

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
        """
        sources = list(models)
        if gathered is None:
            gathered = self.gather(models, users, now_ms)
        excluders = [model.excluded for model in models.values() if model.provides("excluded")]
        category_of = _first_known([model.category_of for model in models.values() if model.provides("category_of")])
        k = self.k
        always_banned = frozenset(unavailable)
        unions: list[list[str]] = []
        source_lists: list[dict[str, list[str]]] = []
        width = 0
        coords: list[tuple[list[int], list[int], list[float]]] = []
        normalised: dict[int, list[float]] = {}  # by id of the candidate list: shared lists are normalised once
        for b, user in enumerate(users):
            banned = always_banned
            for excluded in excluders:
                banned = banned | excluded(user)
            if exclude is not None:
                banned = banned | set(exclude[b])
            index: dict[str, int] = {}
            rows: list[int] = []
            cols: list[int] = []
            vals: list[float] = []
            own_lists: dict[str, list[str]] = {}
            for j, name in enumerate(sources):
                pairs = gathered[name][b]
                values = normalised.get(id(pairs))
                if values is None:
                    values = normalised[id(pairs)] = self._normalised(pairs)
                own: list[str] = []
                for (item, _), value in zip(pairs, values, strict=True):
                    if banned and item in banned:
                        continue
                    if len(own) < k:
                        own.append(item)
                    if value > 0.0:
                        rows.append(index.setdefault(item, len(index)))
                        cols.append(j)
                        vals.append(value)
                own_lists[name] = own
            unions.append(list(index))
            source_lists.append(own_lists)
            coords.append((rows, cols, vals))
            width = max(width, len(index))
        dense = np.zeros((len(users), width, len(sources)), dtype=np.float32)
        valid = np.zeros((len(users), width), dtype=bool)
        for b, (rows, cols, vals) in enumerate(coords):
            dense[b, rows, cols] = vals
            valid[b, : len(unions[b])] = True
        return Candidates(list(users), sources, unions, source_lists, dense, valid, category_of)

    def fuse(self, prepared: Candidates, weights: Sequence[Mapping[str, float]]) -> list[RankedList]:
        """Fuse prepared candidates with one weights mapping (source → weight) per user, then cap and cut to k."""
        users, sources = prepared.users, prepared.sources
        if len(weights) != len(users):
            raise ValueError("one weights mapping per user is needed")
        results = [RankedList(user, [], dict(own)) for user, own in zip(users, prepared.source_lists, strict=True)]
        if prepared.dense.shape[1] == 0:
            return results
        w = np.array([[float(ws.get(s, 0.0)) for s in sources] for ws in weights], dtype=np.float32)
        with torch.inference_mode():
            x = torch.from_numpy(prepared.dense).to(self.device)
            fused = torch.bmm(x, torch.from_numpy(w).to(self.device)[:, :, None]).squeeze(2)
            fused = torch.where(
                torch.from_numpy(prepared.valid).to(self.device), fused, torch.tensor(float("-inf"), device=self.device)
            )
            order = torch.sort(fused, dim=1, descending=True, stable=True).indices
            fused_np, order_np = fused.cpu().numpy(), order.cpu().numpy()
        dense = prepared.dense
        cap, k = self.category_cap, self.k
        category_of = prepared.category_of
        for b, result in enumerate(results):
            union = prepared.unions[b]
            per_category: dict[str, int] = {}
            chosen = result.items
            wb = w[b]
            for m in order_np[b, : len(union)].tolist():
                score = float(fused_np[b, m])
                if score <= 0.0:
                    break
                cat = category_of(union[m]) if category_of is not None else None
                if cap and cat is not None:
                    seen = per_category.get(cat, 0)
                    if seen >= cap:
                        continue
                    per_category[cat] = seen + 1
                row = (dense[b, m] * wb).tolist()
                chosen.append(
                    RankedItem(union[m], score, {s: c for s, c in zip(sources, row, strict=False) if c > 0.0}, cat)
                )
                if len(chosen) == k:
                    break
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

"""The ranker as it was before the batched path (``FusionRanker.prepare``/``fuse`` and the sources' candidate code
of commit f7f20db), kept as the straightforward reference that the tests and ``benchmarks/bench_ranker.py``
compare the batched path against: one Python loop per candidate, the fused order walked item by item, the CF
source scored exhaustively, the category source's candidates ranked by ``heapq.nlargest`` with a key.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Mapping, Sequence
from operator import itemgetter

import numpy as np
import torch

from fusionrec.models import CategoryAffinity, CoVisitation, MatrixFactorization, RecentItems, Recommender
from fusionrec.models._state import by_score_then_id
from fusionrec.models.fusion import position_discount
from fusionrec.models.ranker import Candidates, FusionRanker, RankedItem, RankedList, _first_known
from fusionrec.models.topk import exhaustive_top_k

__all__ = ["ReferenceRanker", "reference_candidates_many"]

_DISCOUNTS = [position_discount(n) for n in range(1000)]


def top_k(pairs, k: int) -> list[tuple[str, float]]:
    if k <= 0:
        return []
    return heapq.nlargest(k, (p for p in pairs if p[1] > 0.0), key=by_score_then_id)


def _covisit_scored(model: CoVisitation, user_id: str, now_ms: int | None) -> dict[str, float]:
    recent = model._recent.get(user_id)
    if not recent:
        return {}
    scores: dict[str, float] = {}
    get = scores.get
    for rank, (seed, *_) in enumerate(reversed(recent), start=1):
        neighbours = model._links.get(seed)
        if neighbours:
            seed_weight = 1.0 / rank
            for other, strength in neighbours.items():
                scores[other] = get(other, 0.0) + seed_weight * strength
    for seed, *_ in recent:
        scores.pop(seed, None)
    factor = model._forward_factor(now_ms, model.half_life_ms)
    return {item: value * factor for item, value in scores.items()}


def _category_candidates(model: CategoryAffinity, user_id: str, k: int) -> list[tuple[str, float]]:
    shares = model._shares(user_id)
    best = heapq.nlargest(model.top_categories, shares.items(), key=itemgetter(1, 0))
    pairs = []
    for category, share in best:
        tally = model._category_items.get(category)
        if tally:
            scale = share / model._category_total[category]
            pairs.extend((item, value * scale) for item, value in tally.items())
    return top_k(pairs, k)


def _cf_candidates_many(
    model: MatrixFactorization, users: Sequence[str], k: int, device: torch.device, max_chunk_bytes: int
) -> list[list[tuple[str, float]]]:
    out: list[list[tuple[str, float]]] = [[] for _ in users]
    known = [(n, vector) for n, user in enumerate(users) if (vector := model.user_vector(user)) is not None]
    if not known or model.n_items == 0:
        return out
    rows = [n for n, _ in known]
    factors = np.stack([vector for _, vector in known]).astype(np.float32, copy=False)
    base = np.array([model.global_mean + model.user_bias(users[n]) for n in rows], dtype=np.float32)
    scores, indices = exhaustive_top_k(
        factors,
        np.asarray(model.item_matrix(), dtype=np.float32),
        k,
        item_bias=np.asarray(model.item_bias(), dtype=np.float32),
        user_bias=base,
        device=device,
        max_chunk_bytes=max_chunk_bytes,
    )
    ids = model.item_ids()
    for n, user_scores, user_indices in zip(rows, scores.tolist(), indices.tolist(), strict=True):
        out[n] = [(ids[i], s) for s, i in zip(user_scores, user_indices, strict=True) if i >= 0]
    return out


def reference_candidates_many(
    model: Recommender,
    users: Sequence[str],
    k: int,
    now_ms: int | None = None,
    device: torch.device | str = "cpu",
    max_chunk_bytes: int = 64 * 2**20,
) -> list[list[tuple[str, float]]]:
    """What ``model.candidates_many`` returned before: the CF source exhaustively, the others through their
    ``candidates`` one user at a time (a user-independent source asked once, its list shared)."""
    if isinstance(model, MatrixFactorization):
        return _cf_candidates_many(model, users, k, torch.device(device), max_chunk_bytes)
    if isinstance(model, CategoryAffinity):
        return [_category_candidates(model, user, k) for user in users]
    if isinstance(model, CoVisitation):
        return [top_k(_covisit_scored(model, user, now_ms).items(), k) for user in users]
    if isinstance(model, RecentItems):
        return [top_k(model._scored(user, now_ms).items(), k) for user in users]
    if users and not model.personal:
        return [model.candidates(users[0], k, now_ms)] * len(users)
    return Recommender.candidates_many(model, users, k, now_ms)


class ReferenceRanker(FusionRanker):
    """:class:`~fusionrec.models.ranker.FusionRanker` with the per-candidate ``gather``, ``prepare`` and ``fuse``."""

    def gather(self, models, users, now_ms=None):
        return {
            name: reference_candidates_many(model, users, self.candidates, now_ms, self.device, self.max_chunk_bytes)
            for name, model in models.items()
        }

    def _old_normalised(self, pairs: list[tuple[str, float]]) -> list[float]:
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
        normalised: dict[int, list[float]] = {}
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
                    values = normalised[id(pairs)] = self._old_normalised(pairs)
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

"""Exact top-k items for many users under a matrix-factorisation model, scored exhaustively in bounded memory.

Scoring every user against every item is one matrix product, but the full score matrix does not fit (100k users
x 1M items is 400 GB in float32), so :func:`exhaustive_top_k` walks it in blocks of at most ``max_chunk_bytes``:
a chunk of users against a chunk of items, ``torch.topk`` of the block, and a running merge of each user's best
``k`` across item chunks. Only ``(n_users, k)`` results ever live in full.

Why torch rather than numpy: ``torch.topk`` selects in parallel over rows (``np.argpartition`` uses one core and
needs a negated copy), the block is written in place into one reused buffer (a fresh 400 MB numpy product
page-faults every time), and the same code runs on a CUDA device when there is one. :func:`numpy_top_k` is the
plain numpy path, kept as the reference the tests and the benchmark compare against.

On one CPU thread an exhaustive pass is the ranker's largest cost (70,000 items cost ~0.3 ms per user), and
almost all of it is spent on items that cannot make the top ``k``. :func:`bounded_top_k` gives the same answer
scoring only the items that can: by Cauchy-Schwarz a score is at most ``bias + |item| |user|``, and a lower bound
on each user's ``k``-th best comes from scoring a small probe of likely items first, so every item whose bound
falls below it is skipped unscored (on the Taobao slice ~1 % of the catalogue is left per user).

>>> users = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
>>> items = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=np.float32)
>>> scores, rows = exhaustive_top_k(users, items, k=2, device="cpu")
>>> rows.tolist(), scores.tolist()
([[0, 1], [2, 1]], [[3.0, 1.0], [2.0, 1.0]])
>>> exhaustive_top_k(users, items, k=2, exclude=[[0], [0, 1, 2]], device="cpu")[1].tolist()
[[1, 2], [-1, -1]]

"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["bounded_top_k", "exhaustive_top_k", "numpy_top_k", "pick_device", "plan_chunks"]

_SCORE_BYTES = 4  # float32
#: Rows per block the planner aims for before it splits the catalogue: enough for the matmul and for topk's
#: per-row parallelism to have work, few enough that a large catalogue still fits the budget in one item chunk.
_MIN_USER_CHUNK = 32
#: Below this many rows MKL's sgemm takes another path that rounds differently (scores differ in the last bit from
#: those of a taller block); :func:`bounded_top_k` keeps its blocks at least this tall, as the exhaustive pass's are.
_MIN_GEMM_ROWS = 4

ArrayLike = np.ndarray | torch.Tensor


def pick_device(preference: str = "auto") -> torch.device:
    """The device to score on: ``"auto"`` takes CUDA when torch sees one, else the CPU.

    Asking for ``"cuda"`` (or ``"cuda:N"``) on a machine without it is an error rather than a silent CPU
    fallback, so a benchmark or a job never reports CPU figures as GPU ones.

    >>> pick_device("cpu")
    device(type='cpu')

    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {preference!r} requested but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})"
            )
        return torch.device(preference)
    raise ValueError(f"unknown device preference {preference!r}: use 'auto', 'cpu' or 'cuda'")


def plan_chunks(n_users: int, n_items: int, k: int, max_chunk_bytes: int) -> tuple[int, int]:
    """Users and items per block so that no temporary score array exceeds ``max_chunk_bytes``.

    Two temporaries hold scores: the block (``user_chunk * item_chunk``) and the merge of a user chunk's running
    best with the block's best (``user_chunk * (k' + min(k', item_chunk))``, ``k' = min(k, n_items)``). The whole
    catalogue goes in one item chunk when that still leaves ``_MIN_USER_CHUNK`` users per block (no merge
    needed); otherwise the catalogue is split so that it does.

    Returns
    -------
    user_chunk, item_chunk
        Both at least 1, and at most ``n_users`` and ``n_items`` when those are positive.

    Raises
    ------
    ValueError
        When the budget cannot hold even one user's merge (``2 * k'`` scores).

    >>> plan_chunks(100_000, 100_000, 100, 64 * 2**20)
    (167, 100000)
    >>> plan_chunks(100_000, 10_000_000, 100, 64 * 2**20)
    (32, 524288)

    """
    if n_users < 0 or n_items < 0 or k < 0:
        raise ValueError(f"n_users, n_items and k must be >= 0, got {n_users}, {n_items}, {k}")
    budget = max_chunk_bytes // _SCORE_BYTES
    top = min(k, n_items)
    if budget < max(1, 2 * top):
        raise ValueError(
            f"max_chunk_bytes={max_chunk_bytes} cannot hold one user's merge of 2 * {top} float32 "
            f"scores ({2 * top * _SCORE_BYTES} bytes)"
        )
    n_users, n_items = max(n_users, 1), max(n_items, 1)
    if n_items * min(_MIN_USER_CHUNK, n_users) <= budget:
        item_chunk = n_items
    else:
        item_chunk = max(budget // min(_MIN_USER_CHUNK, n_users), 1)
    merge_width = top + min(top, item_chunk)
    user_chunk = min(n_users, budget // item_chunk, budget // max(merge_width, 1))
    return max(user_chunk, 1), item_chunk


def _as_float32(values: ArrayLike, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(device)


def _exclusions(exclude: Sequence[Iterable[int]], start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(row within the user chunk, item row) pairs to mask for users ``[start, stop)``, sorted by item row."""
    lists = [np.fromiter(exclude[user], dtype=np.int64) for user in range(start, stop)]
    if not lists:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    items = np.concatenate(lists)
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), [len(x) for x in lists])
    order = np.argsort(items, kind="stable")
    return rows[order], items[order]


def exhaustive_top_k(
    user_factors: ArrayLike,
    item_factors: ArrayLike,
    k: int,
    *,
    item_bias: ArrayLike | None = None,
    user_bias: ArrayLike | None = None,
    exclude: Sequence[Iterable[int]] | None = None,
    device: torch.device | str | None = None,
    max_chunk_bytes: int = 64 * 2**20,
) -> tuple[np.ndarray, np.ndarray]:
    """Every user's ``k`` best items by ``user_factors @ item_factors.T (+ item_bias + user_bias)``, best first.

    Parameters
    ----------
    user_factors, item_factors
        ``(U, F)`` and ``(N, F)`` latent factors (numpy arrays or torch tensors; computed in float32).
    k
        Items per user; ``k' = min(k, N)`` are returned.
    item_bias, user_bias
        Optional ``(N,)`` and ``(U,)`` terms added to the scores. A user's bias does not change their ranking, so
        it is added to the ``k'`` results only.
    exclude
        Optional sequence of ``U`` iterables of item rows never returned for that user (seen items, say). They
        are scored ``-inf``; a user left with fewer than ``k'`` items gets index ``-1`` and score ``-inf`` in the
        tail (as does any item whose score is ``-inf``).
    device
        ``None`` or ``"auto"`` for :func:`pick_device`'s choice, else ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or the
        :class:`torch.device`.
    max_chunk_bytes
        Upper bound on any temporary score array (see :func:`plan_chunks`).

    Returns
    -------
    scores, rows
        float32 and int64 arrays of shape ``(U, k')``, row ``u`` holding user ``u``'s best items first.

    """
    device = pick_device(str(device) if device is not None else "auto")
    n_users, n_factors = user_factors.shape
    n_items = item_factors.shape[0]
    if item_factors.shape[1] != n_factors:
        raise ValueError(f"user factors have {n_factors} columns, item factors {item_factors.shape[1]}")
    if item_bias is not None and tuple(item_bias.shape) != (n_items,):
        raise ValueError(f"item_bias must have shape ({n_items},), got {tuple(item_bias.shape)}")
    if user_bias is not None and tuple(user_bias.shape) != (n_users,):
        raise ValueError(f"user_bias must have shape ({n_users},), got {tuple(user_bias.shape)}")
    if exclude is not None and len(exclude) != n_users:
        raise ValueError(f"exclude must have one entry per user ({n_users}), got {len(exclude)}")
    user_chunk, item_chunk = plan_chunks(n_users, n_items, k, max_chunk_bytes)
    top = min(k, n_items)
    scores = np.full((n_users, top), -np.inf, dtype=np.float32)
    rows = np.full((n_users, top), -1, dtype=np.int64)
    if n_users == 0 or top == 0:
        return scores, rows

    with torch.inference_mode():
        items_t = _as_float32(item_factors, device)  # moved once; a chunk is a row slice, its .T a free view
        bias_t = None if item_bias is None else _as_float32(item_bias, device)
        block_buffer = torch.empty(min(user_chunk, n_users) * min(item_chunk, n_items), device=device)
        for start in range(0, n_users, user_chunk):
            stop = min(start + user_chunk, n_users)
            users_t = _as_float32(user_factors[start:stop], device)
            masked = _exclusions(exclude, start, stop) if exclude is not None else None
            best_v = best_i = None
            for first in range(0, n_items, item_chunk):
                last = min(first + item_chunk, n_items)
                block = block_buffer[: (stop - start) * (last - first)].view(stop - start, last - first)
                chunk_t = items_t[first:last].T
                if bias_t is None:
                    torch.mm(users_t, chunk_t, out=block)
                else:
                    torch.addmm(bias_t[first:last], users_t, chunk_t, out=block)
                if masked is not None:
                    lo, hi = np.searchsorted(masked[1], [first, last])
                    if hi > lo:
                        block[
                            torch.from_numpy(masked[0][lo:hi]).to(device),
                            torch.from_numpy(masked[1][lo:hi] - first).to(device),
                        ] = -torch.inf
                block_v, block_i = torch.topk(block, min(top, last - first), dim=1)
                block_i += first
                if best_v is None:
                    best_v, best_i = block_v, block_i
                else:
                    merged_v = torch.cat((best_v, block_v), dim=1)
                    best_v, where = torch.topk(merged_v, min(top, merged_v.shape[1]), dim=1)
                    best_i = torch.gather(torch.cat((best_i, block_i), dim=1), 1, where)
            if user_bias is not None:
                best_v = best_v + _as_float32(user_bias[start:stop], device)[:, None]
            scores[start:stop] = best_v.cpu().numpy()
            rows[start:stop] = best_i.cpu().numpy()
    rows[np.isneginf(scores)] = -1
    return scores, rows


def bounded_top_k(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    k: int,
    *,
    item_bias: np.ndarray | None = None,
    user_bias: np.ndarray | None = None,
    probe: int = 256,
    user_chunk: int = 32,
    min_items: int = 8192,
    min_users: int = 6,
    max_chunk_bytes: int = 64 * 2**20,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exhaustive_top_k`'s answer on the CPU (no exclusions), scoring only the items that can make the top.

    An item's score ``b_i + <q_i, p_u>`` is at most ``b_i + |q_i| |p_u|`` (Cauchy-Schwarz). The ``probe`` items of
    largest ``b_i + |q_i| median|p|`` are scored first; a user's ``k``-th best among them, ``L_u``, is at most their
    true ``k``-th best. Users are then taken in chunks of ``user_chunk`` of similar ``|p_u|``, and only the items
    whose bound reaches the chunk's lowest ``L_u`` at its largest ``|p_u|`` are scored (less a margin that covers
    float32 rounding), with the same ``torch.addmm`` and ``torch.topk`` as the exhaustive pass: the scores are those
    it computes, the items the same up to the order of exact ties.

    Catalogues under ``min_items`` items, batches under ``min_users`` users (the bounds cost a few passes over the
    catalogue, which one exhaustive pass per user beats for a handful of users) and factors that are not all finite
    go to :func:`exhaustive_top_k` (``max_chunk_bytes`` is its bound). Returns ``(scores, rows)`` as it does.

    >>> rng = np.random.default_rng(0)
    >>> users, items = rng.normal(size=(50, 8)), rng.normal(size=(20_000, 8))
    >>> bias = rng.normal(size=20_000)
    >>> fast = bounded_top_k(users, items, 10, item_bias=bias)
    >>> full = exhaustive_top_k(users, items, 10, item_bias=bias, device="cpu")
    >>> bool((fast[0] == full[0]).all()), bool((np.sort(fast[1]) == np.sort(full[1])).all())
    (True, True)

    """
    users = np.ascontiguousarray(user_factors, dtype=np.float32)
    items = np.asarray(item_factors)  # rows are converted to float32 as they are scored, not the whole catalogue
    n_users, n_factors = users.shape
    n_items = items.shape[0]
    top = min(k, n_items)
    bias = np.zeros(n_items, np.float32) if item_bias is None else np.ascontiguousarray(item_bias, dtype=np.float32)
    exhaustive = {"item_bias": item_bias, "user_bias": user_bias, "device": "cpu", "max_chunk_bytes": max_chunk_bytes}
    too_small = n_items < max(min_items, 4 * (probe + top)) or n_users < min_users
    if n_users == 0 or top == 0 or too_small or items.shape[1] != n_factors:
        return exhaustive_top_k(users, items, k, **exhaustive)
    norms = np.sqrt(np.einsum("ij,ij->i", items, items))  # of the rows as given: float32 rounding is in the margin
    radii = np.sqrt(np.einsum("ij,ij->i", users, users))
    if not np.isfinite(float(norms.sum()) + float(bias.sum()) + float(radii.sum())):  # a NaN or inf anywhere
        return exhaustive_top_k(users, items, k, **exhaustive)
    # float32 rounding of a score and of its bound, generously: |error| <= (F + 2) eps (|b| + |q| |p|) each
    margin = 8 * (n_factors + 2) * float(np.finfo(np.float32).eps)
    margin *= max(float(bias.max()), -float(bias.min())) + float(norms.max()) * float(radii.max())
    width = min(n_items, max(probe, 2 * top))
    likely = np.argpartition(bias + norms * np.median(radii), n_items - width)[n_items - width :]
    with torch.inference_mode():
        users_t = torch.from_numpy(users)
        probe_scores = torch.addmm(torch.from_numpy(bias[likely]), users_t, _rows32(items, likely).T)
        floor = torch.topk(probe_scores, top, dim=1).values[:, -1].numpy() - margin
        # the items any user of the batch may need; each chunk narrows them down to its own
        pool = np.flatnonzero(bias + norms * radii.max() >= floor.min())
        pool_bias, pool_norms = bias[pool], norms[pool]
        scores = np.empty((n_users, top), dtype=np.float32)
        rows = np.empty((n_users, top), dtype=np.int64)
        for chunk in _blocks(radii, user_chunk, plan_chunks(n_users, n_items, k, max_chunk_bytes)[0]):
            candidates = pool[pool_bias + pool_norms * radii[chunk].max() >= floor[chunk].min()]
            block = torch.addmm(torch.from_numpy(bias[candidates]), users_t[chunk], _rows32(items, candidates).T)
            best_v, best_i = torch.topk(block, top, dim=1)
            scores[chunk] = best_v.numpy()
            rows[chunk] = candidates[best_i.numpy()]
    if user_bias is not None:
        scores += np.asarray(user_bias, dtype=np.float32)[:, None]
    return scores, rows


def _blocks(radii: np.ndarray, size: int, exhaustive_rows: int) -> Iterator[np.ndarray]:
    """The users of each block of :func:`bounded_top_k`: ``size`` of similar radius at a time, within each block of
    rows the exhaustive pass would score together (``exhaustive_rows``), so that each user's scores are rounded as
    there. MKL's sgemm rounds blocks under :data:`_MIN_GEMM_ROWS` rows differently (and by row position): such a
    block is kept whole, in batch order, and a short remainder joins the block before it."""
    for first in range(0, radii.shape[0], exhaustive_rows):
        users = np.arange(first, min(first + exhaustive_rows, radii.shape[0]))
        if users.shape[0] < _MIN_GEMM_ROWS:
            yield users
            continue
        by_radius = users[np.argsort(radii[users], kind="stable")]
        bounds = [*range(0, by_radius.shape[0], size), by_radius.shape[0]]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < _MIN_GEMM_ROWS:
            del bounds[-2]
        for start, stop in itertools.pairwise(bounds):
            yield np.sort(by_radius[start:stop])


def _rows32(items: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """``items[rows]`` in float32, as a tensor (the rounding is the whole matrix's ``astype``, row by row)."""
    return torch.from_numpy(np.ascontiguousarray(items[rows], dtype=np.float32))


def numpy_top_k(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    k: int,
    *,
    item_bias: np.ndarray | None = None,
    user_chunk: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """The plain numpy path: per user chunk a matrix product and ``argpartition``, then a sort of the ``k``.

    Same contract as :func:`exhaustive_top_k` without exclusions or user bias; the reference for its tests and
    the baseline for its benchmark.

    >>> users = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> items = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0]], dtype=np.float32)
    >>> numpy_top_k(users, items, k=2)[1].tolist()
    [[0, 1], [2, 1]]

    """
    user_factors = np.asarray(user_factors, dtype=np.float32)
    item_factors = np.asarray(item_factors, dtype=np.float32)
    n_users, n_items = user_factors.shape[0], item_factors.shape[0]
    top = min(k, n_items)
    scores = np.empty((n_users, top), dtype=np.float32)
    rows = np.empty((n_users, top), dtype=np.int64)
    if top == 0:
        return scores, rows
    bias = None if item_bias is None else np.asarray(item_bias, dtype=np.float32)
    for start in range(0, n_users, user_chunk):
        block = user_factors[start : start + user_chunk] @ item_factors.T
        if bias is not None:
            block += bias
        if top < n_items:
            part = np.argpartition(-block, top - 1, axis=1)[:, :top]
        else:
            part = np.broadcast_to(np.arange(n_items), block.shape)
        part_scores = np.take_along_axis(block, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        scores[start : start + user_chunk] = np.take_along_axis(part_scores, order, axis=1)
        rows[start : start + user_chunk] = np.take_along_axis(part, order, axis=1)
    return scores, rows

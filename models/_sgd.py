"""The SGD update rule of :mod:`fusionrec.models.cf`, in its two forms: one step, and vectorised rounds of them.

The model chooses the samples (each event's item and its negatives); these kernels apply River's ``BiasedMF`` rule
to them. :func:`sgd_step` is one sequential step (``learn_one``, ``learn_rating``). :func:`sgd_rounds` applies a
mini-batch (``learn_many``) in *rounds*: round ``r`` holds every user's ``r``-th event of the batch, so a user moves
once per event and in order, by the summed gradient of the event's positive and its negatives (the usual
negative-sampling step). An item that several samples of one round touch moves by the mean of their gradients, so
that a hot item cannot take a hundred summed steps at once; items touched once move exactly as in
:func:`sgd_step`. The global mean moves per round.

>>> from fusionrec.models._factors import FactorTable
>>> users, items = FactorTable(n_factors=1), FactorTable(n_factors=1)
>>> u, i = users.add("ann", 0, np.array([1.0])), items.add("tea", 0, np.array([1.0]))
>>> rates = SGDRates(bias_lr=0.5, latent_lr=0.5, l2_bias=0.0, l2_latent=0.0, clip_gradient=1e12)
>>> sgd_rounds(users, items, np.array([u]), np.array([[i]]), np.array([[1.0]]), np.array([[1.0]]), 0.0, 0.0, rates)
(1.0, 1.0)
>>> float(users.bias[u]), float(items.factors[i, 0])  # prediction 1 + 0 + 0 + 1 = 2, gradient 2 * (2 - 1) = 2
(-1.0, 0.0)

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._factors import FactorTable, occurrence

__all__ = ["SGDRates", "sgd_rounds", "sgd_step"]


@dataclass(frozen=True, slots=True)
class SGDRates:
    """The hyper-parameters of one SGD step (the :class:`~fusionrec.models.cf.MatrixFactorization` parameters)."""

    bias_lr: float
    latent_lr: float
    l2_bias: float
    l2_latent: float
    clip_gradient: float


def sgd_step(
    users: FactorTable,
    items: FactorTable,
    u: int,
    i: int,
    y: float,
    weight: float,
    mean: float,
    weight_sum: float,
    rates: SGDRates,
) -> tuple[float, float]:
    """One step on user row ``u``, item row ``i``, target ``y``, gradient weighted ``weight``, exactly as River's
    ``BiasedMF.learn_one`` (the running mean is updated before the prediction); the new ``(mean, weight_sum)``."""
    weight_sum += weight
    mean += weight * (y - mean) / weight_sum
    pu, qi = users.factors[u], items.factors[i]
    bu, bi = users.bias, items.bias
    bu_u, bi_i = float(bu[u]), float(bi[i])
    g = 2.0 * (mean + bu_u + bi_i + float(pu.dot(qi)) - y)
    clip = rates.clip_gradient
    if g > clip:
        g = clip
    elif g < -clip:
        g = -clip
    g *= weight
    lr, l2 = rates.bias_lr, rates.l2_bias
    bu[u] = bu_u - lr * (g + l2 * bu_u)
    bi[i] = bi_i - lr * (g + l2 * bi_i)
    a = rates.latent_lr * g
    step_u = qi * a  # from the old q_i
    if rates.l2_latent:
        keep = 1.0 - rates.latent_lr * rates.l2_latent
        qi *= keep
        qi -= pu * a
        pu *= keep
    else:
        qi -= pu * a
    pu -= step_u
    return mean, weight_sum


def sgd_rounds(
    users: FactorTable,
    items: FactorTable,
    u: np.ndarray,
    cols_i: np.ndarray,
    cols_y: np.ndarray,
    cols_w: np.ndarray,
    mean: float,
    weight_sum: float,
    rates: SGDRates,
) -> tuple[float, float]:
    """Apply the SGD steps of ``u.shape[0]`` events in rounds (see the module); the new ``(mean, weight_sum)``.

    ``u`` holds each event's user row; ``cols_i``, ``cols_y`` and ``cols_w`` are ``(events, samples)``: the item
    rows, targets and gradient weights of each event's samples (weight 0: not a sample).
    """
    P, Q, bu_all, bi_all = users.factors, items.factors, users.bias, items.bias
    blr, llr, l2b, l2l, clip = rates.bias_lr, rates.latent_lr, rates.l2_bias, rates.l2_latent, rates.clip_gradient
    width = cols_i.shape[1]
    rounds = occurrence(u)
    order = np.argsort(rounds, kind="stable")
    bounds = np.flatnonzero(np.diff(rounds[order])) + 1
    for part in np.split(order, bounds):
        su, si, sy, sw = u[part], cols_i[part], cols_y[part], cols_w[part]
        flat_w = sw.ravel()
        total = float(flat_w.sum())
        mean = (mean * weight_sum + float(flat_w @ sy.ravel())) / (weight_sum + total)
        weight_sum += total
        pu, bu = P[su], bu_all[su]  # (R, f), (R,)
        qi, bi = Q[si], bi_all[si]  # (R, samples, f), (R, samples)
        g = 2.0 * (mean + bu[:, None] + bi + np.einsum("rf,rjf->rj", pu, qi) - sy)
        np.clip(g, -clip, clip, out=g)
        g *= sw
        if l2b or l2l:
            active = (sw > 0.0).sum(axis=1)
            bu_all[su] = bu - blr * (g.sum(axis=1) + l2b * active * bu)
            P[su] = pu - llr * (np.einsum("rj,rjf->rf", g, qi) + (l2l * active)[:, None] * pu)
        else:
            bu_all[su] = bu - blr * g.sum(axis=1)
            P[su] = pu - llr * np.einsum("rj,rjf->rf", g, qi)
        # item side, one row per (event, column) sample
        flat_i, flat_g, flat_b = si.ravel(), g.ravel(), bi.ravel()
        flat_q, flat_p = qi.reshape(-1, qi.shape[-1]), np.repeat(pu, width, axis=0)
        used = flat_w > 0.0
        if not used.all():  # negatives that hit their own positive are not samples
            flat_i, flat_g, flat_b, flat_q, flat_p = (
                flat_i[used],
                flat_g[used],
                flat_b[used],
                flat_q[used],
                flat_p[used],
            )
        step_b = blr * (flat_g + l2b * flat_b) if l2b else blr * flat_g
        step_q = llr * (flat_g[:, None] * flat_p + l2l * flat_q) if l2l else (llr * flat_g)[:, None] * flat_p
        ordered = np.sort(flat_i)
        if (ordered[1:] == ordered[:-1]).any():  # repeated items: the mean of their steps
            _, inverse, counts = np.unique(flat_i, return_inverse=True, return_counts=True)
            share = 1.0 / counts[inverse]
            np.add.at(bi_all, flat_i, -step_b * share)
            np.add.at(Q, flat_i, -step_q * share[:, None])
        else:
            bi_all[flat_i] = flat_b - step_b
            Q[flat_i] = flat_q - step_q
    return mean, weight_sum

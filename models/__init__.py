"""Online recommenders: each one a *source* of candidates and scores that the fusion layer combines.

Every model implements :class:`~fusionrec.models.base.Recommender` (``learn_one``/``learn_many`` on
:class:`fusionrec.contracts.events.Event`, ``score``/``rank``/``candidates``, ``evict``, ``snapshot``/``restore``,
and the optional ``candidates_many``/``excluded``/``category_of``), so that the ranker
(:mod:`fusionrec.models.ranker`) and the fused recommender (:mod:`fusionrec.models.fused`, weighted by a
:class:`~fusionrec.models.fusion.FusionPolicy`) never name a concrete model. This package is pure: numpy, river and
torch only, no Kafka, Redis, Faust or Prometheus.

>>> sorted(SOURCES)
['category', 'cf', 'covisit', 'itemcf', 'popular', 'recent', 'sknn', 'successor', 'trending']

"""

from __future__ import annotations

from .base import DEFAULT_EVENT_WEIGHTS, Recommender, SnapshotError
from .category import CategoryAffinity
from .cf import MatrixFactorization
from .covisit import CoVisitation
from .itemcf import ItemCF
from .popularity import Popularity, Trending
from .recent import RecentItems
from .sknn import SessionKNN
from .successors import Successors

__all__ = [
    "DEFAULT_EVENT_WEIGHTS",
    "SOURCES",
    "CategoryAffinity",
    "CoVisitation",
    "ItemCF",
    "MatrixFactorization",
    "Popularity",
    "Recommender",
    "RecentItems",
    "SessionKNN",
    "SnapshotError",
    "Successors",
    "Trending",
]

#: Every recommender class by the source name it reports (its ``source`` attribute).
SOURCES: dict[str, type[Recommender]] = {
    model.source: model
    for model in (
        MatrixFactorization,
        CoVisitation,
        Popularity,
        Trending,
        CategoryAffinity,
        RecentItems,
        SessionKNN,
        Successors,
        ItemCF,
    )
}

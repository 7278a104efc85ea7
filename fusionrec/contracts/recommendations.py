"""The recommendations topic's message format (version 1): one typed place that encodes and decodes it.

Downstream services import this module (and :mod:`fusionrec.consumers.client`) without pulling in Faust, torch or the
models.
The value of each record, keyed by ``user_id`` on a compacted topic, is a JSON object::

    {"v": 1, "user_id": "u42",
     "items": [{"item_id": "i7", "score": 0.83, "category_id": "c2",
                "contributions": {"covisit": 0.51, "cf": 0.32}}, ...],
     "sources": {"cf": ["i7", "i9", ...], "covisit": [...], ...},
     "segment": "returning",
     "policy": {"arm": "bandit", "action": "exploit", "propensity": 0.9, "weights": {"cf": 0.21, ...}},
     "weights_version": 1834, "model_version": "fusionrec-0.1.0 p3@120455",
     "generated_at": 1700000000123, "newest_event_ts": 1700000000042, "partition": 3, "ranker": "learned"}

* ``items`` is the fused list, best first. ``contributions`` says how much of the item's ``score`` each source gave
  (its fusion weight times its normalised score): the sources that put the item on the list.
* ``sources`` holds each source's own top items for this user (before fusion and filtering): what the source alone
  would have recommended. The online evaluation uses it to compare every source with the fused list.
* ``policy`` is what chose the fusion weights: the arm (``bandit`` or, for users in the fixed-weight holdout,
  ``fixed``), the action taken (``exploit``, or ``boost:<source>`` when exploring), the probability with which that
  action was chosen (the propensity, for off-policy evaluation) and the weights used.
* ``generated_at`` is the wall-clock time the list was made; ``newest_event_ts`` the time of the newest event of
  this user it reflects (epoch milliseconds both); ``partition`` the events partition whose models made it.
* ``ranker`` says what ordered the list: ``learned`` (the stacking model of :mod:`fusionrec.models.learned`, its
  ``contributions`` its per-source parts of the score) or ``bandit`` (the weighted sum with ``policy.weights``; also
  what a reader of lists written before the field existed gets).

A compact copy is stored in Redis under ``{prefix}rec:{user_id}`` for serving
(:meth:`fusionrec.contracts.keys.RedisKeys.recommendation`; :func:`encode_message_and_copy` writes both): the same
object without ``sources`` (for the topic's readers; serving reads each item's ``contributions``), each item a row
``["i7", 0.83, "c2", {"covisit": 0.51, "cf": 0.32}]`` (item_id, score, category_id, contributions) instead of an
object: half the bytes of a list (BENCHMARKS.md). :func:`decode` reads both forms; a list read from
Redis has empty ``sources``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "FORMAT_VERSION",
    "Policy",
    "RecommendedItem",
    "Recommendation",
    "RecommendationFormatError",
    "decode",
    "encode",
    "encode_message_and_copy",
    "item_fields",
    "payload",
    "rounded_columns",
]

FORMAT_VERSION = 1


class RecommendationFormatError(ValueError):
    """A record of the recommendations topic that is not a valid version-1 recommendation."""


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    """One item of a fused list, with the share of its score each source gave."""

    item_id: str
    score: float
    contributions: Mapping[str, float] = field(default_factory=dict)
    category_id: str | None = None

    @property
    def sources(self) -> list[str]:
        """The sources that put the item on the list, largest contribution first."""
        return [s for s, v in sorted(self.contributions.items(), key=lambda kv: -kv[1]) if v > 0]


@dataclass(frozen=True, slots=True)
class Policy:
    """How the fusion weights of a list were chosen; ``propensity`` is the probability of ``action``."""

    arm: str
    action: str
    propensity: float
    weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The fused list published for one user."""

    user_id: str
    items: tuple[RecommendedItem, ...]
    sources: Mapping[str, tuple[str, ...]]
    segment: str
    policy: Policy
    weights_version: int
    model_version: str
    generated_at: int
    newest_event_ts: int
    #: The events partition whose models made the list (absent in lists written before it was added).
    partition: int | None = None
    #: What ordered the list: ``learned`` or ``bandit`` (fusion with the policy's weights).
    ranker: str = "bandit"

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    def to_dict(self) -> dict:
        policy = self.policy
        return payload(
            user_id=self.user_id,
            items=[(i.item_id, i.score, i.contributions, i.category_id) for i in self.items],
            sources=self.sources,
            segment=self.segment,
            policy=(policy.arm, policy.action, policy.propensity, policy.weights),
            weights_version=self.weights_version,
            model_version=self.model_version,
            generated_at=self.generated_at,
            newest_event_ts=self.newest_event_ts,
            partition=self.partition,
            ranker=self.ranker,
        )


def payload(
    *,
    user_id: str,
    items: Iterable[tuple[str, float, Mapping[str, float], str | None]] = (),
    columns: tuple[Sequence[str], Sequence[float], Sequence[Mapping[str, float]], Sequence[str | None]] | None = None,
    sources: Mapping[str, Sequence[str]],
    segment: str,
    policy: tuple[str, str, float, Mapping[str, float]],
    weights_version: int,
    model_version: str,
    generated_at: int,
    newest_event_ts: int,
    partition: int | None = None,
    ranker: str = "bandit",
) -> dict:
    """The version-1 JSON object, the one place its layout is written; scores, contributions, the propensity and
    the weights rounded to 6 decimals. The worker builds it straight from its lists, without the typed objects in
    between (publishing is a large part of what a list costs): ``items`` as ``(item_id, score, contributions,
    category_id)`` tuples, or ``columns`` as ``(item ids, scores, contributions, category ids)`` already rounded
    to 6 decimals (:meth:`fusionrec.models.ranker.RankedList.rounded_columns`)."""
    if columns is None:
        columns = rounded_columns(items)
    arm, action, propensity, weights = policy
    return {
        "v": FORMAT_VERSION,
        "user_id": user_id,
        "items": [
            {"item_id": item_id, "score": score, "category_id": category_id, "contributions": contributions}
            for item_id, score, contributions, category_id in zip(*columns, strict=True)
        ],
        "sources": {name: list(ids) for name, ids in sources.items()},
        "segment": segment,
        "policy": {
            "arm": arm,
            "action": action,
            "propensity": round(propensity, 6),
            "weights": {s: round(w, 6) for s, w in weights.items()},
        },
        "weights_version": weights_version,
        "model_version": model_version,
        "generated_at": generated_at,
        "newest_event_ts": newest_event_ts,
        "partition": partition,
        "ranker": ranker,
    }


def rounded_columns(
    items: Iterable[tuple[str, float, Mapping[str, float], str | None]],
) -> tuple[list[str], list[float], list[dict[str, float]], list[str | None]]:
    """``(item ids, scores, contributions, category ids)`` of ``(item_id, score, contributions, category_id)``
    tuples, scores and contributions rounded to 6 decimals as the JSON holds them."""
    listed = list(items)
    return (
        [i[0] for i in listed],
        [round(i[1], 6) for i in listed],
        [{s: round(c, 6) for s, c in i[2].items()} for i in listed],
        [i[3] for i in listed],
    )


def encode_message_and_copy(obj: dict) -> tuple[bytes, bytes]:
    """``(message, copy)`` of one list's JSON object (:func:`payload`): the topic message, and the compact Redis
    serving copy (see the module docstring): no ``sources``, each item a row ``[item_id, score, category_id,
    contributions]``."""
    rows = [[i["item_id"], i["score"], i["category_id"], i["contributions"]] for i in obj["items"]]
    copy = {name: value for name, value in obj.items() if name != "sources"}
    copy["items"] = rows
    return orjson.dumps(obj), orjson.dumps(copy)


def encode(rec: Recommendation) -> bytes:
    """The record value for ``rec`` (compact JSON)."""
    return orjson.dumps(rec.to_dict())


def decode(value: bytes | str) -> Recommendation:
    """Parse a record value; raises :class:`RecommendationFormatError` naming what is wrong."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RecommendationFormatError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RecommendationFormatError("not a JSON object")
    version = data.get("v")
    if version != FORMAT_VERSION:
        raise RecommendationFormatError(f"format version {version!r}; this client reads version {FORMAT_VERSION}")
    try:
        policy = data["policy"]
        return Recommendation(
            user_id=str(data["user_id"]),
            items=tuple(map(_item, data["items"])),
            sources={str(k): tuple(str(x) for x in v) for k, v in data.get("sources", {}).items()},
            segment=str(data["segment"]),
            policy=Policy(
                str(policy["arm"]),
                str(policy["action"]),
                float(policy["propensity"]),
                {str(k): float(v) for k, v in policy.get("weights", {}).items()},
            ),
            weights_version=int(data["weights_version"]),
            model_version=str(data["model_version"]),
            generated_at=int(data["generated_at"]),
            newest_event_ts=int(data["newest_event_ts"]),
            partition=None if data.get("partition") is None else int(data["partition"]),
            ranker=str(data.get("ranker", "bandit")),
        )
    except KeyError as exc:
        raise RecommendationFormatError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise RecommendationFormatError(f"bad field value: {exc}") from None


def item_fields(entry: Any) -> tuple[Any, Any, Any, Any]:
    """``(item_id, score, category_id, contributions)`` of one entry of ``items``, as parsed: an object (the topic's
    form) or a row (the Redis copy's); ``contributions`` is ``{}`` when an object has none."""
    if isinstance(entry, list):
        item_id, score, category_id, contributions = entry
        return item_id, score, category_id, contributions
    return entry["item_id"], entry["score"], entry.get("category_id"), entry.get("contributions", {})


def _item(entry: Any) -> RecommendedItem:
    item_id, score, category_id, contributions = item_fields(entry)
    return RecommendedItem(
        str(item_id),
        float(score),
        {str(k): float(v) for k, v in contributions.items()},
        None if category_id is None else str(category_id),
    )

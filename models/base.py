"""The interface every fusionrec recommender implements.

A recommender is one *source* of recommendations (``"cf"``, ``"covisit"``, ``"popular"``, ...). The fusion layer
treats every source alike: it feeds each one the same :class:`~fusionrec.contracts.events.Event` stream with
:meth:`Recommender.learn_one` (or :meth:`Recommender.learn_many`), gathers proposals with
:meth:`Recommender.candidates` and compares items with :meth:`Recommender.score`.

Conventions shared by every model in this package:

* **Event time, not wall time.** Time-dependent state (decay, idleness) uses the events' ``ts`` (epoch ms).
  ``now_ms=None`` means "the latest event time this model has seen" (:attr:`Recommender.clock_ms`), so a replay
  gives the same answers as the live run it replays.
* **Event-type weights.** :data:`DEFAULT_EVENT_WEIGHTS` says how much each event type counts (a ``rate`` event's
  weight is scaled by its rating, see :func:`event_weight`); every model takes an ``event_weights`` mapping that
  overrides some or all of them. ``remove_from_cart`` weighs 0 by default: the earlier
  ``add_to_cart`` already counted as interest, a negative weight would push decayed counters below zero, and the
  models that care about removals (:class:`~fusionrec.models.recent.RecentItems`, whose carted items stop counting as
  carted)
  read the event type itself. Models skip events whose weight is 0; only
  :class:`~fusionrec.models.cf.MatrixFactorization` uses negative weights (as negative feedback).
* **Randomness is injected**: a ``seed`` parameter feeds private generators, never the global ones.
* **Bounded memory**: caps (``max_users``, ``max_items``, ...) are enforced as state is added: a new entry that
  would pass a cap first drops the least recently touched 1/16 of the entries (at once, so that finding them is
  amortised). :meth:`Recommender.evict` drops entries idle for longer than ``max_idle_ms``; call it periodically.
* **Snapshots** are versioned: :meth:`Recommender.snapshot` writes the constructor parameters and all learned state,
  :meth:`Recommender.restore` checks the model name and format version before reading anything else. Only restore
  snapshots you wrote: the payload is a pickle, read with an unpickler that allows plain containers and numpy arrays
  and refuses every other global.

"""

from __future__ import annotations

import abc
import heapq
import inspect
import io
import json
import pickle
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Self

import numpy as np

from fusionrec.contracts.events import EVENT_TYPES, Event

__all__ = ["DEFAULT_EVENT_WEIGHTS", "Recommender", "SnapshotError", "event_weight", "resolve_event_weights"]

#: How much each event type counts, strongest intent last. See the module docstring for ``remove_from_cart``.
DEFAULT_EVENT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "impression": 0.0,
        "view": 1.0,
        "favourite": 2.0,
        "add_to_cart": 3.0,
        "remove_from_cart": 0.0,
        "purchase": 5.0,
        "rate": 3.0,
    }
)

_MAGIC = b"FUSIONREC-MODEL\n"
#: Forward-decay exponents are re-based once they pass this many half-lives (2**256 is far from overflow).
MAX_DECAY_EXPONENT = 256.0


class SnapshotError(ValueError):
    """A snapshot could not be restored: not a model snapshot, another model's, or an unsupported format version."""


class _StateUnpickler(pickle.Unpickler):
    """Reads containers and numpy arrays only; any other global in the payload is refused."""

    _ALLOWED = frozenset(
        {
            ("numpy", "dtype"),
            ("numpy", "ndarray"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("collections", "deque"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise SnapshotError(f"snapshot payload refers to {module}.{name}, which a model snapshot never holds")
        return super().find_class(module, name)


def resolve_event_weights(event_weights: Mapping[str, float] | None) -> dict[str, float]:
    """Merge ``event_weights`` over :data:`DEFAULT_EVENT_WEIGHTS`, refusing unknown event types.

    >>> resolve_event_weights({"view": 0.5})["view"], resolve_event_weights(None)["purchase"]
    (0.5, 5.0)

    """
    weights = dict(DEFAULT_EVENT_WEIGHTS)
    if event_weights is not None:
        unknown = set(event_weights) - EVENT_TYPES
        if unknown:
            raise ValueError(f"event_weights has unknown event types {sorted(unknown)}; known: {sorted(EVENT_TYPES)}")
        weights.update({k: float(v) for k, v in event_weights.items()})
    return weights


def event_weight(weights: Mapping[str, float], event: Event) -> float:
    """How much ``event`` counts: its type's weight, and for a ``rate`` event that weight scaled by the rating.

    Ratings are read on the usual 1–5 star scale: 5 stars counts the full ``rate`` weight, 4 half of it, 3 nothing,
    and 2 or 1 star count negatively (only the CF model learns from negative weights; the others skip them).

    >>> from fusionrec.contracts.events import Event
    >>> [event_weight(DEFAULT_EVENT_WEIGHTS, Event("e", "u", "i", "rate", 1, rating=r)) for r in (5, 4, 3, 1)]
    [3.0, 1.5, 0.0, -3.0]
    >>> event_weight(DEFAULT_EVENT_WEIGHTS, Event("e", "u", "i", "purchase", 1))
    5.0

    """
    weight = weights.get(event.type, 0.0)
    if event.type == "rate" and event.rating is not None:
        weight *= (min(max(event.rating, 1.0), 5.0) - 3.0) / 2.0
    return weight


class Recommender(abc.ABC):
    """Base class of the online recommenders: one source of candidates and scores.

    Subclasses keep their constructor arguments as attributes of the same name (River style) and their learned
    state in private attributes; they implement :meth:`learn_one`, :meth:`score`, :meth:`candidates`,
    :meth:`evict`, :attr:`n_users`, :attr:`n_items`, and ``_get_state``/``_set_state`` for snapshots.

    """

    #: The name the fusion layer uses for attribution (metrics, logs, the ``source`` of a recommendation).
    source: ClassVar[str]
    #: False for sources whose candidates do not depend on the user (popularity): a ranker asks them once per batch.
    personal: ClassVar[bool] = True
    #: The version of the snapshot format; bump it whenever ``_get_state`` changes shape.
    snapshot_version: ClassVar[int] = 1

    _clock: int

    def __init__(self) -> None:
        self._clock = 0

    # --- learning ----------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def learn_one(self, event: Event) -> None:
        """Update the model with one event."""

    def learn_many(self, events: Iterable[Event]) -> None:
        """Update the model with events in order. The default loops over :meth:`learn_one`."""
        learn_one = self.learn_one
        for event in events:
            learn_one(event)

    # --- inference ---------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:
        """Score ``items`` for ``user_id``: one float per item, higher is better, 0.0 for "no opinion"."""

    @abc.abstractmethod
    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The (at most) ``k`` items this source proposes for ``user_id``, as ``(item, score)``, best first.

        The scores are those :meth:`score` gives the same items.
        """

    def rank(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> list[str]:
        """``items`` sorted by decreasing :meth:`score`; ties keep their input order."""
        items = list(items)
        if not items:
            return []
        order = np.argsort(-np.asarray(self.score(user_id, items, now_ms), dtype=np.float64), kind="stable")
        return [items[i] for i in order]

    # --- memory ------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def evict(self, now_ms: int) -> int:
        """Drop users and items idle for longer than ``max_idle_ms`` at ``now_ms``; return how many were dropped."""

    @property
    @abc.abstractmethod
    def n_users(self) -> int:
        """How many users the model holds state for."""

    @property
    @abc.abstractmethod
    def n_items(self) -> int:
        """How many items the model holds state for."""

    @property
    def clock_ms(self) -> int:
        """The latest event time seen (epoch ms): what ``now_ms=None`` stands for. 0 before any event."""
        return self._clock

    # --- snapshots ---------------------------------------------------------------------------------------------

    def _get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from the attributes of the same name."""
        params = {}
        for name, parameter in inspect.signature(type(self).__init__).parameters.items():
            if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            value = getattr(self, name)
            params[name] = dict(value) if isinstance(value, Mapping) else value
        return params

    #: Learned state kept as private attributes ``_<name>``; the default ``_get_state``/``_set_state`` save and
    #: restore exactly these. A model whose state needs more than that overrides both.
    _state_fields: ClassVar[tuple[str, ...]] = ()

    def _get_state(self) -> dict[str, Any]:
        """All learned state, as containers of plain values and numpy arrays."""
        if not self._state_fields:
            raise NotImplementedError(f"{type(self).__name__} declares no _state_fields and no _get_state")
        return {name: getattr(self, f"_{name}") for name in self._state_fields}

    def _set_state(self, state: dict[str, Any]) -> None:
        """Install what :meth:`_get_state` returned on a freshly constructed instance."""
        for name in self._state_fields:
            setattr(self, f"_{name}", state[name])

    def _forward_origin(self, ts: int, half_life_ms: float) -> int:
        """The origin ``t0`` of forward decay (weights grow as ``2**((ts - t0) / half_life)``, so old scores never
        need touching), set at the first event and moved to ``ts`` through ``self._rebase`` before the exponent
        could overflow. Models using it keep ``self._t0`` and implement ``_rebase(ts)``."""
        t0 = self._t0
        if t0 is None:
            t0 = self._t0 = ts
        if (ts - t0) / half_life_ms > MAX_DECAY_EXPONENT:
            self._rebase(ts)
            t0 = ts
        return t0

    def clone(self) -> Self:
        """A fresh, untrained model with the same parameters."""
        return type(self)(**self._get_params())

    def snapshot(self) -> bytes:
        """Serialise the parameters and learned state; :meth:`restore` reads it back.

        The blob starts with a magic line and a JSON header naming the model and the format version, so that a
        mismatch is reported clearly before the payload is read.
        """
        header = {"model": type(self).__name__, "source": self.source, "version": self.snapshot_version}
        state = self._get_state()
        state["_clock"] = self._clock
        payload = pickle.dumps({"params": self._get_params(), "state": state}, protocol=5)
        return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload

    @classmethod
    def restore(cls, blob: bytes) -> Self:
        """Rebuild a model from :meth:`snapshot`'s output.

        Called on :class:`Recommender` itself, it restores whichever registered model the snapshot holds.

        Raises
        ------
        SnapshotError
            If ``blob`` is not a model snapshot, holds another model, or has a format version this code cannot read.

        """
        blob = bytes(blob)
        if not blob.startswith(_MAGIC):
            raise SnapshotError("not a fusionrec model snapshot (bad magic bytes)")
        end = blob.find(b"\n", len(_MAGIC))
        try:
            header = json.loads(blob[len(_MAGIC) : end])
            name, version = header["model"], header["version"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"corrupt model snapshot header: {exc}") from None
        target = _find_model_class(name) if cls is Recommender else cls
        if target is None or target.__name__ != name:
            wanted = "a registered model" if target is None else target.__name__
            raise SnapshotError(f"snapshot holds a {name} model, not {wanted}")
        if version != target.snapshot_version:
            raise SnapshotError(
                f"{name} snapshot has format version {version!r}; this code reads version {target.snapshot_version}. "
                "Retrain the model, or restore with the release that wrote the snapshot and migrate it."
            )
        try:
            payload = _StateUnpickler(io.BytesIO(blob[end + 1 :])).load()
            params, state = payload["params"], payload["state"]
        except SnapshotError:
            raise
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupted payload can raise almost anything from pickle
            raise SnapshotError(f"corrupt {name} snapshot payload: {exc}") from None
        model = target(**params)
        model._clock = state.pop("_clock")
        model._set_state(state)
        return model  # type: ignore[return-value]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"


def _find_model_class(name: str) -> type[Recommender] | None:
    pending: list[type[Recommender]] = [Recommender]
    while pending:
        klass = pending.pop()
        if klass.__name__ == name and not inspect.isabstract(klass):
            return klass
        pending.extend(klass.__subclasses__())
    return None


def make_rngs(seed: int | None) -> tuple[random.Random, np.random.Generator]:
    """A private ``random.Random`` (cheap per-event draws) and numpy ``Generator`` (vectorised draws) for ``seed``."""
    return random.Random(seed), np.random.default_rng(seed)


def top_k(pairs: Iterable[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """The ``k`` pairs with the largest positive scores, best first.

    Ties go to the larger item id: any fixed order would do, and this one (descending ``(score, item)``) is the one
    a min-heap of ``(score, item)`` keeps exact for free.

    >>> top_k([("b", 3.0), ("a", 1.0), ("c", 0.0), ("d", 3.0)], 2)
    [('d', 3.0), ('b', 3.0)]

    """
    if k <= 0:
        return []
    return heapq.nlargest(k, (p for p in pairs if p[1] > 0.0), key=by_score_then_id)


def oldest_keys(last: Mapping[str, int], n: int) -> list[str]:
    """The ``n`` keys of ``last`` (key -> latest event ts) touched least recently.

    >>> oldest_keys({"a": 5, "b": 1, "c": 3}, 2)
    ['b', 'c']

    """
    keys = list(last)
    if n >= len(keys):
        return keys
    stamps = np.fromiter(last.values(), dtype=np.int64, count=len(keys))
    chosen = np.argpartition(stamps, n - 1)[:n]
    return [keys[i] for i in np.sort(chosen).tolist()]


def idle_keys(last: Mapping[str, int], cutoff: int) -> list[str]:
    """The keys of ``last`` (key -> latest event ts) not touched since ``cutoff``."""
    return [key for key, ts in last.items() if ts < cutoff]


def touch(last: dict[str, int], key: str, ts: int, cap: int, drop: Callable[[str], None]) -> None:
    """Record that ``key`` was active at ``ts``. A new key that would pass ``cap`` first drops the least recently
    active chunk of keys through ``drop``.

    >>> last, dropped = {"a": 1, "b": 2}, []
    >>> touch(last, "c", 3, cap=2, drop=lambda k: (dropped.append(k), last.pop(k)))
    >>> sorted(last), dropped
    (['b', 'c'], ['a'])

    """
    previous = last.get(key)
    if previous is None:
        if len(last) >= cap:
            for old in oldest_keys(last, cap_chunk(cap)):
                drop(old)
        last[key] = ts
    elif ts > previous:
        last[key] = ts


def cap_chunk(cap: int) -> int:
    """How many entries go at once when a cap is reached: 1/16 of it, so the scan for them is amortised."""
    return max(1, cap // 16)


def by_score_then_id(pair: tuple[str, float]) -> tuple[float, str]:
    return (pair[1], pair[0])


def decay_factor(exponent: float) -> float:
    """``2 ** exponent``, clamped so that far-past or far-future ``now_ms`` values cannot overflow.

    >>> decay_factor(-1.0), decay_factor(5000.0) > 1e300
    (0.5, True)

    """
    return 2.0 ** min(max(exponent, -1100.0), 1000.0)

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
  overrides some or all of them. ``remove_from_cart`` weighs 0 by default: the earlier ``add_to_cart`` already
  counted as interest, a negative weight would push decayed counters below zero, and the models that care about
  removals (:class:`~fusionrec.models.recent.RecentItems`, whose carted items stop counting as carted) read the
  event type itself. Models skip events whose weight is 0; only
  :class:`~fusionrec.models.cf.MatrixFactorization` uses negative weights (as negative feedback).
* **Randomness is injected**: a ``seed`` parameter feeds private generators, never the global ones.
* **Bounded memory**: caps (``max_users``, ``max_items``, ...) are enforced as state is added: a new entry that
  would pass a cap first drops the least recently touched 1/16 of the entries (at once, so that finding them is
  amortised). :meth:`Recommender.evict` drops entries idle for longer than ``max_idle_ms``; call it periodically.
* **Snapshots** are versioned: :meth:`Recommender.snapshot` writes the constructor parameters and all learned state,
  :meth:`Recommender.restore` checks the model name and format version before reading anything else. Only restore
  snapshots you wrote: the payload is a pickle, read with an unpickler that allows plain containers and numpy arrays
  and refuses every other global.
* **Two halves, where the model allows it.** Item-side state (what an item learns from *every* user's events:
  popularity, co-visitation links, category tallies) and user-side state (a user's recent items, their category
  affinity) can live apart: a model that lists :attr:`Recommender._item_fields` learns an event in two halves,
  :meth:`Recommender.learn_user_side` where the user's events are (a worker's partition) and
  :meth:`Recommender.learn_item_side` where everyone's are (one replica per worker, fed from every partition:
  :mod:`fusionrec.models.item_side`); :meth:`Recommender.with_item_side` joins the two for ranking.
  :meth:`Recommender.learn_one` is the two halves on one instance.
* **Optional capabilities** have defaults that say nothing, so a ranker can ask every source alike:
  :meth:`Recommender.candidates_many` (one batch of users at once), :meth:`Recommender.excluded` (items never to
  propose to a user) and :meth:`Recommender.category_of`; :meth:`Recommender.provides` tells which a model overrides.

The parameters every model takes mean the same everywhere, and are documented here once:

``event_weights``
    Overrides of some or all of :data:`DEFAULT_EVENT_WEIGHTS` (unknown event types are refused).
``max_users``, ``max_items``
    The caps (*bounded memory* above): most users, and most items, the model holds state for.
``max_idle_ms``
    :meth:`Recommender.evict` drops users and items without events for longer than this; ``None``: only the caps
    apply.

>>> from fusionrec.models import Popularity
>>> model = Popularity(event_weights={"view": 2.0}, max_idle_ms=60_000)
>>> model.event_weights, model.max_idle_ms, model.provides("excluded")
({'view': 2.0}, 60000, False)

"""

from __future__ import annotations

import abc
import copy
import inspect
import json
import pickle
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from fusionrec.contracts.events import EVENT_TYPES, Event

from ._snapshot import SnapshotError, find_subclass, load_payload
from ._state import MAX_DECAY_EXPONENT, decay_factor

if TYPE_CHECKING:
    import torch

__all__ = [
    "CAPABILITIES",
    "DEFAULT_EVENT_WEIGHTS",
    "Recommender",
    "SnapshotError",
    "event_weight",
    "require_at_least",
    "require_positive",
    "resolve_event_weights",
]

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
#: The optional capabilities of :class:`Recommender`: methods whose default says nothing.
CAPABILITIES = frozenset({"candidates_many", "excluded", "category_of"})


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


def require_positive(**values: float) -> None:
    """Refuse (``ValueError``) the first of ``values`` that is not > 0: the constructors' check of half-lives.

    >>> require_positive(half_life_ms=3_600_000, item_half_life_ms=0)
    Traceback (most recent call last):
        ...
    ValueError: item_half_life_ms must be > 0, got 0

    """
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def require_at_least(bound: int, **values: int) -> None:
    """Refuse (``ValueError``) the first of ``values`` below ``bound``: the constructors' check of caps and sizes."""
    for name, value in values.items():
        if value < bound:
            raise ValueError(f"{name} must be >= {bound}, got {value}")


class Recommender(abc.ABC):
    """Base class of the online recommenders: one source of candidates and scores.

    Subclasses keep their constructor arguments as attributes of the same name (River style) and their learned
    state in private attributes; they implement :meth:`learn_one`, :meth:`score`, :meth:`candidates`,
    :meth:`evict`, :attr:`n_users`, :attr:`n_items`, and ``_get_state``/``_set_state`` for snapshots (or list
    ``_state_fields``). They pass ``event_weights`` and ``max_idle_ms`` (the module docstring) to this constructor,
    which keeps them and resolves the weights into ``self._weights``.

    """

    #: The name the fusion layer uses for attribution (metrics, logs, the ``source`` of a recommendation).
    source: ClassVar[str]
    #: False for sources whose candidates do not depend on the user (popularity): a ranker asks them once per batch.
    personal: ClassVar[bool] = True
    #: The version of the snapshot format; bump it whenever ``_get_state`` changes shape.
    snapshot_version: ClassVar[int] = 1

    _clock: int
    _t0: int | None  # the forward-decay origin, in models that use it

    def __init__(self, event_weights: Mapping[str, float] | None = None, max_idle_ms: int | None = None) -> None:
        self.event_weights = event_weights
        self.max_idle_ms = max_idle_ms
        self._weights = resolve_event_weights(event_weights)
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

    def _weigh(self, event: Event) -> float:
        """Move the clock up to ``event``'s time; the event's weight (:func:`event_weight`, ``self._weights``)."""
        ts = event.ts
        if ts > self._clock:
            self._clock = ts
        return event_weight(self._weights, event)

    def _interaction(self, event: Event) -> float:
        """:meth:`_weigh` for models of consumption (what users touched, not how they liked it): a ``rate`` event
        counts its type's weight whatever the rating, since a one-star rating still says the user watched it."""
        ts = event.ts
        if ts > self._clock:
            self._clock = ts
        return self._weights.get(event.type, 0.0)

    # --- the two halves (see the module docstring and fusionrec.models.item_side) ------------------------------

    #: The learned state (private attributes ``_<name>``) that belongs to the item side. Empty: the model does not
    #: split, and keeps all its state where its users' events are.
    _item_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def splits(cls) -> bool:
        """Whether the model learns in two halves (:meth:`learn_user_side`, :meth:`learn_item_side`)."""
        return bool(cls._item_fields)

    def learn_user_side(self, event: Event) -> Any:
        """Learn what ``event`` says about its user; return what the item side needs to learn the rest (a plain,
        JSON-able value), or ``None`` when the event teaches the item side nothing.

        ``learn_item_side(event.item_id, event.ts, context)`` on another instance (the item-side replica) then
        leaves the pair in the state ``learn_one(event)`` leaves one instance in.
        """
        raise NotImplementedError(f"{type(self).__name__} does not learn in two halves")

    def learn_item_side(self, item_id: str, ts: int, context: Any) -> None:
        """Learn the item-side half of an event on ``item_id`` at ``ts`` from what :meth:`learn_user_side`
        returned (possibly on another instance, and after a JSON round trip: tuples may arrive as lists)."""
        raise NotImplementedError(f"{type(self).__name__} does not learn in two halves")

    def learn_user_side_many(self, events: Sequence[Event]) -> list[Any]:
        """:meth:`learn_user_side` for each of ``events``, in order: one context (or ``None``) per event.

        The worker learns every batch's user sides this way; the default loops, and a source whose per-event cost
        is mostly Python's call overhead overrides it with one tight loop that leaves the same state.
        """
        learn = self.learn_user_side
        return [learn(event) for event in events]

    def learn_item_side_many(self, records: Iterable[tuple[str, int, Any]]) -> None:
        """:meth:`learn_item_side` for each ``(item_id, ts, context)``, in order: the same state as the loop.

        The shared item side learns a whole sync tick at once this way (:meth:`fusionrec.models.item_side.ItemSide
        .apply`); the default loops, and a source overrides it where one tight loop pays. (A subclass of such a
        source that changes :meth:`learn_item_side` must change this too, and likewise for the user side.)
        """
        learn = self.learn_item_side
        for item_id, ts, context in records:
            learn(item_id, ts, context)

    def with_item_side(self, items: Self) -> Self:
        """A view for ranking: this instance's user-side state with ``items``' item-side state.

        Cheap (a shallow copy, no state copied); read it, do not train it: learning on the view would write into
        both instances' containers.
        """
        view = copy.copy(self)
        for name in self._item_fields:
            setattr(view, f"_{name}", getattr(items, f"_{name}"))
        view._clock = max(self._clock, items._clock)
        return view

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

    # --- optional capabilities (see the module docstring) ------------------------------------------------------

    def candidates_many(
        self,
        users: Sequence[str],
        k: int,
        now_ms: int | None = None,
        *,
        device: str | torch.device | None = None,  # noqa: ARG002 - a hint for sources that score in bulk
        max_chunk_bytes: int | None = None,  # noqa: ARG002 - likewise
    ) -> list[list[tuple[str, float]]]:
        """:meth:`candidates` for each of ``users``, one list per user.

        A source that scores a batch faster than one user at a time overrides this; ``device`` (the torch device to
        score on) and ``max_chunk_bytes`` (the memory bound of one block) are hints for it, ``None`` for its own
        choice. The default loops over :meth:`candidates`; a source that is not :attr:`personal` is asked once and
        every user gets that same list object (so that a ranker normalises it once).
        """
        if not users:
            return []
        if not self.personal:
            return [self.candidates(users[0], k, now_ms)] * len(users)
        candidates = self.candidates
        return [candidates(user, k, now_ms) for user in users]

    def excluded(self, user_id: str) -> AbstractSet[str]:  # noqa: ARG002 - the default knows of no exclusion
        """Items never to propose to ``user_id``, whichever source proposes them (bought items, say); none here."""
        return frozenset()

    def category_of(self, item_id: str) -> str | None:  # noqa: ARG002 - the default knows no category
        """The category of ``item_id``, if this source knows it (for a ranker's diversity cap); ``None`` here."""
        return None

    @classmethod
    def provides(cls, capability: str) -> bool:
        """Whether this model overrides the optional ``capability`` (a name in :data:`CAPABILITIES`) instead of
        inheriting its default: a caller resolves once which models to ask, rather than asking every model."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown capability {capability!r}; known: {sorted(CAPABILITIES)}")
        return getattr(cls, capability) is not getattr(Recommender, capability)

    # --- memory ------------------------------------------------------------------------------------------------

    def forget_user(self, user_id: str) -> bool:  # noqa: ARG002 - the default holds nothing of anyone
        """Drop every trace of ``user_id`` this model holds (the user asked to be forgotten); whether it held any.

        What the user taught the *items* (counts, links, the items' factors) is not per user and stays. The
        default is for sources that hold no per-user state (not :attr:`personal`); a personal source overrides it.
        """
        if self.personal:
            raise NotImplementedError(f"{type(self).__name__} holds per-user state and must implement forget_user")
        return False

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

    # --- forward decay (see fusionrec.models.popularity) -------------------------------------------------------

    def _forward_origin(self, ts: int, half_life_ms: float) -> int:
        """The origin ``t0`` of forward decay (weights grow as ``2**((ts - t0) / half_life)``, so old scores never
        need touching), set at the first event and moved to ``ts`` through ``self._rebase`` before the exponent
        could overflow. Models using it keep ``self._t0`` and implement ``_rebase(ts)``."""
        t0 = self._t0
        if t0 is None:
            t0 = self._t0 = ts
        if (ts - t0) / half_life_ms > MAX_DECAY_EXPONENT:
            self._rebase(ts)  # type: ignore[attr-defined]
            t0 = ts
        return t0

    def _forward_factor(self, now_ms: int | None, half_life_ms: float) -> float:
        """What forward-decayed values are multiplied by to be read at ``now_ms`` (``None``: the clock); 0.0 before
        the first event."""
        if self._t0 is None:
            return 0.0
        now = self._clock if now_ms is None else now_ms
        return decay_factor((self._t0 - now) / half_life_ms)

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
        target = find_subclass(Recommender, name) if cls is Recommender else cls
        if target is None or target.__name__ != name:
            wanted = "a registered model" if target is None else target.__name__
            raise SnapshotError(f"snapshot holds a {name} model, not {wanted}")
        if version != target.snapshot_version:
            raise SnapshotError(
                f"{name} snapshot has format version {version!r}; this code reads version {target.snapshot_version}. "
                "Retrain the model, or restore with the release that wrote the snapshot and migrate it."
            )
        params, state = load_payload(blob[end + 1 :], name)
        model = target(**params)
        model._clock = state.pop("_clock")
        model._set_state(state)
        return model  # type: ignore[return-value]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"

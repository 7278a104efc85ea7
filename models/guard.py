"""Abuse limits on the shared item side: what one user, or a crowd of brand-new ones, can do to what everyone sees.

Popularity and trending are the lists a new user sees first, and the cheapest to push: 2,000 fake users with one
view each put a new item into 98 % of new users' lists within 20 s (issue 12). :class:`ItemSideGuard` sits where
the item side learns (:meth:`fusionrec.models.item_side.ItemSide.apply`) and decides, record by record, what each
record may teach:

- **A cap per user and window.** A user's records count for the item side (every source) at most ``user_cap``
  times per ``window_ms`` of event time; beyond that they teach nothing until the next window (``capped``).
- **Voters before popularity.** Until ``min_users`` distinct *returning* users (seen in an earlier window than
  the one they act in) acted on an item, its records teach popular, trending and its category's list
  (``sources``) only ``unvoted_cap`` times; the rest teach those sources nothing (``unvoted``). Co-visitation
  still learns them (it links an item to what the same user saw, which one-event accounts do not have). The long
  tail of items a few users touched is learned as before; a flood of brand-new accounts adds ``unvoted_cap``
  records to its item, not thousands; once returning users vote it in, everything counts.
- **Rate jumps are flagged.** An item whose records in the current window reach ``jump_min`` and ``jump_factor``
  times its previous window's (plus one) is reported once per window (``jumps``, :attr:`flagged`), for a person to
  look at. Flagging changes nothing.

Deterministic: the guard's decisions are a function of the records in the order they are offered, which the item
side makes a function of the events alone (sync ticks); its state rides in the item side's snapshot. Memory is
bounded: users seen before and items that qualified are remembered in fixed Bloom filters (``bits`` bits each; a
false positive lets an unseen user count as returning, or an item skip the vote: rare, never the other way round),
the rest lives one window, and the items still collecting voters are forgotten when more than ``max_pending`` wait.

>>> guard = ItemSideGuard(window_ms=1000, user_cap=2, min_users=2, unvoted_cap=1, jump_min=3, jump_factor=2.0)
>>> [guard.admit(user, "mug", 100) for user in (1, 2)]  # new users, no votes: one record counts, then none
[(True, True), (True, False)]
>>> [guard.admit(user, "mug", 1100) for user in (1, 2)]  # returning in the next window: the second vote counts
[(True, False), (True, True)]
>>> [guard.admit(1, "pen", 1200)[0] for _ in range(3)]  # user 1's 3rd and 4th records this window: capped
[True, False, False]
>>> guard.capped, guard.unvoted
(2, 2)

"""

from __future__ import annotations

import base64
import functools
import hashlib
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["GUARDED_SOURCES", "USER", "ItemSideGuard", "user_digest"]

#: The key, among an item-side record's contexts, of the acting user's digest (:func:`user_digest`).
USER = "u"
#: The sources an item enters only with enough voters (by default): the item-wide lists a new user is shown.
GUARDED_SOURCES = frozenset({"popular", "trending", "category"})
#: The three answers of :meth:`ItemSideGuard.admit`: it teaches everything; only what ``sources`` do not learn;
#: nothing (capped).
_BOTH, _UNVOTED, _NEITHER = (True, True), (True, False), (False, False)


def user_digest(user_id: str) -> int:
    """A stable 48-bit digest of a user id: what item-side records carry instead of the id."""
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=6).digest(), "big")


@functools.lru_cache(maxsize=1 << 16)
def _digest(value: str) -> int:
    """The 64-bit digest of an item id (cached: a shop's items repeat, and blake2b is most of a lookup's cost)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


def _slots(value: int | str, bits: int, hashes: int) -> list[int]:
    """``hashes`` bit positions by double hashing (Kirsch and Mitzenmacher) of a 48-bit or longer digest."""
    if isinstance(value, str):
        value = _digest(value)
    first, step = value & 0xFFFFFFFF, (value >> 24) | 1
    return [(first + i * step) % bits for i in range(hashes)]


class _Bits:
    """A Bloom filter: set membership with false positives only (``hashes`` bits per member)."""

    __slots__ = ("bits", "data", "hashes")

    def __init__(self, bits: int, hashes: int = 4, data: bytes | None = None):
        self.bits = bits
        self.hashes = hashes
        self.data = bytearray(data) if data is not None else bytearray((bits + 7) // 8)

    def __contains__(self, value: int | str) -> bool:
        if isinstance(value, str):
            value = _digest(value)
        data, bits = self.data, self.bits
        slot, step = value & 0xFFFFFFFF, (value >> 24) | 1  # _slots(), inline: this runs for most records
        for _ in range(self.hashes):
            position = slot % bits
            if not data[position >> 3] & (1 << (position & 7)):
                return False
            slot += step
        return True

    def add(self, value: int | str) -> None:
        if isinstance(value, str):
            value = _digest(value)
        data, bits = self.data, self.bits
        slot, step = value & 0xFFFFFFFF, (value >> 24) | 1  # _slots(), inline
        for _ in range(self.hashes):
            position = slot % bits
            data[position >> 3] |= 1 << (position & 7)
            slot += step

    def dump(self) -> str:
        return base64.b64encode(zlib.compress(bytes(self.data), 1)).decode()

    @classmethod
    def load(cls, bits: int, hashes: int, text: str) -> _Bits:
        return cls(bits, hashes, zlib.decompress(base64.b64decode(text)))


class ItemSideGuard:
    """Per-user caps, voters before popularity, and rate-jump flags for the shared item side.

    Parameters
    ----------
    window_ms
        The event-time window of the caps and the rates (windows advance with the newest event time offered).
    user_cap
        Records per user and window that may teach the item side (0: no cap).
    min_users
        Distinct returning users an item needs before ``sources`` learn all its records (0 or 1: no vote).
    unvoted_cap
        Records of an item without enough voters that ``sources`` learn all the same.
    jump_min, jump_factor
        An item is flagged when its records in a window reach ``jump_min`` and ``jump_factor`` × (previous window's
        + 1).
    bits
        Size of each of the two Bloom filters (users seen before, items qualified; 4 bits per member): with the
        default 2^25 (4 MiB each), one in about 10^5 unseen users counts as returning once a million users were
        seen, one in 10^11 after 10,000.
    max_pending
        Items collecting voters beyond this are all forgotten (they start collecting again).
    sources
        The sources an item enters only with ``min_users`` voters.
    """

    def __init__(
        self,
        *,
        window_ms: int = 60_000,
        user_cap: int = 60,
        min_users: int = 3,
        unvoted_cap: int = 5,
        jump_min: int = 200,
        jump_factor: float = 10.0,
        bits: int = 1 << 25,
        max_pending: int = 200_000,
        sources: frozenset[str] | set[str] = GUARDED_SOURCES,
    ):
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms}")
        self.window_ms = window_ms
        self.user_cap = user_cap
        self.min_users = min_users
        self.unvoted_cap = unvoted_cap
        self.jump_min = jump_min
        self.jump_factor = jump_factor
        self.bits = bits
        self.max_pending = max_pending
        self.sources = frozenset(sources)
        self.capped = 0  # records whose item-side effect the per-user cap removed
        self.unvoted = 0  # records popular and trending did not learn: their item lacked voters
        self.jumps = 0  # (item, window) rate jumps flagged
        self.flagged: list[tuple[str, int, int]] = []  # the last few jumps: (item, records this window, previous)
        self._window: int | None = None
        self._known = _Bits(bits)  # users seen in an earlier window
        self._qualified = _Bits(bits)  # items with enough voters
        self._new_users: set[int] = set()  # first seen in this window: known from the next one
        self._user_counts: dict[int, int] = {}
        self._voters: dict[str, list] = {}  # item without enough voters -> [records let through, voters]
        self._item_counts: dict[str, int] = {}
        self._previous_counts: dict[str, int] = {}
        self._flagged_now: set[str] = set()

    @property
    def pending_items(self) -> int:
        """Items collecting voters (their records beyond ``unvoted_cap`` are kept out of ``sources``)."""
        return len(self._voters)

    def _advance(self, ts: int) -> None:
        window = ts // self.window_ms
        if self._window is None:
            self._window = window
            return
        if window <= self._window:
            return
        for user in self._new_users:
            self._known.add(user)
        self._new_users = set()
        self._user_counts = {}
        self._previous_counts = self._item_counts if window == self._window + 1 else {}
        self._item_counts = {}
        self._flagged_now = set()
        self._window = window

    def admit(self, user: int | None, item: str, ts: int) -> tuple[bool, bool]:
        """Offer one record: ``(teaches_item_side, teaches_sources)``.

        The first is False when the user reached their cap this window (then the second is False too); the
        second, whether the guarded ``sources`` may learn it, is False while the item lacks ``min_users``
        returning voters. A record without a user (an older snapshot's) is admitted.
        """
        return self.admit_many(((None, item, ts, {USER: user}),))[0]

    def admit_many(self, records: Iterable[Sequence[Any]]) -> list[tuple[bool, bool]]:
        """:meth:`admit` for each item-side record (``[offset, item_id, ts, contexts]``), in order: one loop, since
        the replica asks about every record of every partition."""
        out: list[tuple[bool, bool]] = []
        append = out.append
        window_ms, user_cap, min_users, unvoted_cap = self.window_ms, self.user_cap, self.min_users, self.unvoted_cap
        jump_min, jump_factor, max_pending = self.jump_min, self.jump_factor, self.max_pending
        known_users, qualified = self._known, self._qualified
        voters = self._voters
        current = self._window
        new_users, user_counts, item_counts = self._new_users, self._user_counts, self._item_counts
        previous_counts, flagged_now = self._previous_counts, self._flagged_now
        for _offset, item, ts, contexts in records:
            if current is None or ts // window_ms > current:
                self._advance(ts)  # a new window: the per-window tallies start afresh
                current = self._window
                new_users, user_counts, item_counts = self._new_users, self._user_counts, self._item_counts
                previous_counts, flagged_now = self._previous_counts, self._flagged_now
            count = item_counts.get(item, 0) + 1
            item_counts[item] = count
            if count >= jump_min and item not in flagged_now:
                previous = previous_counts.get(item, 0)
                if count >= jump_factor * (previous + 1):
                    flagged_now.add(item)
                    self.jumps += 1
                    self.flagged = [*self.flagged[-19:], (item, count, previous)]
            user = contexts.get(USER)
            if user is None:
                append(_BOTH)
                continue
            known = user in known_users
            if not known:
                new_users.add(user)
            if user_cap:
                used = user_counts.get(user, 0) + 1
                user_counts[user] = used
                if used > user_cap:
                    self.capped += 1
                    append(_NEITHER)
                    continue
            if min_users <= 1 or item in qualified:
                append(_BOTH)
                continue
            entry = voters.get(item)
            if entry is None:
                if len(voters) >= max_pending:
                    voters = self._voters = {}
                entry = voters[item] = [0, set()]
            if known:
                users = entry[1]
                users.add(user)
                if len(users) >= min_users:
                    qualified.add(item)
                    del voters[item]
                    append(_BOTH)
                    continue
            if entry[0] < unvoted_cap:
                entry[0] += 1
                append(_BOTH)
                continue
            self.unvoted += 1
            append(_UNVOTED)
        return out

    # --- snapshots ---------------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able state (the item side's snapshot carries it)."""
        return {
            "bits": self.bits,
            "window": self._window,
            "known": self._known.dump(),
            "qualified": self._qualified.dump(),
            "new_users": sorted(self._new_users),
            "user_counts": [[u, n] for u, n in self._user_counts.items()],
            "voters": [[item, n, sorted(users)] for item, (n, users) in self._voters.items()],
            "item_counts": list(self._item_counts.items()),
            "previous_counts": list(self._previous_counts.items()),
            "flagged_now": sorted(self._flagged_now),
            "counters": [self.capped, self.unvoted, self.jumps],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Install what :meth:`to_state` returned (the bit-set size must match)."""
        if state["bits"] != self.bits:
            raise ValueError(f"the guard's snapshot has {state['bits']} bits, not {self.bits}")
        self._window = state["window"]
        self._known = _Bits.load(self.bits, 4, state["known"])
        self._qualified = _Bits.load(self.bits, 4, state["qualified"])
        self._new_users = set(state["new_users"])
        self._user_counts = {u: n for u, n in state["user_counts"]}
        self._voters = {item: [n, set(users)] for item, n, users in state["voters"]}
        self._item_counts = dict(state["item_counts"])
        self._previous_counts = dict(state["previous_counts"])
        self._flagged_now = set(state["flagged_now"])
        self.capped, self.unvoted, self.jumps = state["counters"]

"""Keyed pseudonyms of user ids: what the worker stores and publishes instead of the shop's raw ids.

With a secret key (``FUSIONREC_PRIVACY_USER_KEY``), the worker replaces every event's ``user_id`` (and
``session_id``) by a pseudonym at its edge, right after validating the record, so that nothing it writes — Redis
keys and values, model snapshots, the item-side and recommendations topics, dead letters, logs, metrics — holds a
raw id. A pseudonym is an HMAC-SHA256 of the id under the key, cut to 96 bits, in hex after a ``p.`` prefix: stable
(the same id under the same key always gives the same pseudonym, so a user's state builds up as before), keyed (no
one without the key can compute it, or test a guessed id against it), and practically collision-free (two of a
billion users collide with a probability of about 10^-11).

The shop, which holds the key, reads a user's list by computing the same pseudonym (:func:`pseudonym`,
``fusionrec pseudonym USER``; :class:`fusionrec.consumers.client.RecommendationStore` does it itself when the key is
set). Changing the key orphans every user's state: the new pseudonyms start empty (docs/privacy.md).

>>> key = b"an example key of 32 bytes......"
>>> p = pseudonym(key, "u-1842")
>>> p, len(p), p == pseudonym(key, "u-1842"), p == pseudonym(b"another key of 32 bytes.........", "u-1842")
('p.97524236c057c5b6148dcf6d', 26, True, False)
>>> Pseudonymiser(None).user("u-1842")  # no key: ids pass through unchanged
'u-1842'
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fusionrec.contracts.events import Event

__all__ = ["PSEUDONYM_PREFIX", "REDRIVEN_HEADER", "Pseudonymiser", "pseudonym", "redrive_tag"]

#: Every pseudonym starts with this, so that people (and tests) can tell a pseudonym from a raw id at a glance.
PSEUDONYM_PREFIX = "p."
#: The header of a re-driven record whose ids are pseudonyms already (``fusionrec dlq redrive``); its value is
#: :func:`redrive_tag` of the record's value.
REDRIVEN_HEADER = "fusionrec-pseudonymised"
#: Bytes of the HMAC kept (96 bits: 24 hex digits).
PSEUDONYM_BYTES = 12
_new = tuple.__new__
#: Domain separation: the same key yields unrelated values for user ids, session ids and re-drive tags.
_USER, _SESSION, _REDRIVE = b"fusionrec/user/v1\0", b"fusionrec/session/v1\0", b"fusionrec/redrive/v1\0"


def pseudonym(key: bytes, user_id: str) -> str:
    """The pseudonym of ``user_id`` under ``key`` (what the worker stores the user under)."""
    return PSEUDONYM_PREFIX + hmac.digest(key, _USER + user_id.encode(), "sha256")[:PSEUDONYM_BYTES].hex()


def redrive_tag(key: bytes, value: bytes) -> bytes:
    """The header value that marks a re-driven record whose ids are pseudonyms already (only a holder of the key
    can make it, so an event cannot pass a pseudonym off as its own)."""
    return hmac.digest(key, _REDRIVE + value, "sha256")[:16]


class Pseudonymiser:
    """Pseudonyms under one key, remembered for the users seen recently; without a key, the identity.

    ``enabled`` is False without a key: :meth:`event` then returns events unchanged.
    """

    __slots__ = ("_cache", "_key", "max_cached")

    def __init__(self, key: bytes | str | None, max_cached: int = 100_000):
        self._key = key.encode() if isinstance(key, str) else key
        self._cache: dict[str, str] = {}
        self.max_cached = max_cached

    @classmethod
    def from_settings(cls, settings) -> Pseudonymiser:
        secret = settings.privacy.user_key
        return cls(None if secret is None else secret.get_secret_value())

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def user(self, user_id: str) -> str:
        """The pseudonym of ``user_id`` (``user_id`` itself without a key)."""
        if self._key is None:
            return user_id
        cache = self._cache
        out = cache.get(user_id)
        if out is None:
            if len(cache) >= self.max_cached:
                cache.clear()  # cheap bound; the next users are hashed again
            out = cache[user_id] = pseudonym(self._key, user_id)
        return out

    def session(self, session_id: str) -> str:
        """A pseudonym of ``session_id`` (only ever compared for equality, within one user's events)."""
        if self._key is None:
            return session_id
        return PSEUDONYM_PREFIX + hmac.digest(self._key, _SESSION + session_id.encode(), "sha256")[:8].hex()

    def event(self, event: Event) -> Event:
        """``event`` with its user id (and session id) replaced by pseudonyms."""
        if self._key is None:
            return event
        user = self._cache.get(event[1]) or self.user(event[1])
        # a tuple built directly: _replace costs 3x more, on every event
        if event[5] is None:
            return _new(Event, (event[0], user, *event[2:]))
        return _new(Event, (event[0], user, *event[2:5], self.session(event[5]), *event[6:]))

    def tag(self, value: bytes) -> bytes | None:
        """:func:`redrive_tag` of ``value`` (None without a key)."""
        return None if self._key is None else redrive_tag(self._key, value)

    def tagged(self, value: bytes | None, headers: Iterable[tuple[str, bytes]] | None) -> bool:
        """Whether ``headers`` carry a valid :data:`REDRIVEN_HEADER` for ``value``: the record's ids are pseudonyms
        under this key already (a forged or stale tag is not: its ids are hashed as any record's)."""
        if self._key is None or not headers or value is None:
            return False
        for name, tag in headers:
            if name == REDRIVEN_HEADER and tag is not None and hmac.compare_digest(tag, redrive_tag(self._key, value)):
                return True
        return False

    def __repr__(self) -> str:  # never the key
        return f"Pseudonymiser(enabled={self.enabled})"

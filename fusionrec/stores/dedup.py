"""Which events a user's profile has applied: the dedup window of one user, pure (the bytes go to Redis elsewhere).

Deduplication is scoped per user and keyed by ``event_id`` alone: a re-sent event counts once whatever time it
carries (a replay restamps every event), and another user's ids never hide this user's events. Per user it keeps

- the ``event_id`` digests of the last ``max_ids`` events applied (8 bytes of BLAKE2b each; collisions within one
  user's window are ~1e-17 per event);
- the record (``partition``, ``offset``) processed last, since a user's events arrive in offset order on one
  partition: a record at or before it was processed already, a *redelivery* (Kafka delivers at least once; a worker
  that restarts re-reads from its last snapshot). It changes nothing, whether or not its id is still in the window;
- the offsets of the last ``max_ids`` records skipped as duplicates, so that a redelivered duplicate is told apart
  from a redelivered original: the models learn the one and not the other after a restart.

So a duplicate is caught while its original is among the user's last ``max_ids`` applied events and the user's
entry lives (``dedup.window_s`` after the user's last event, processing time); a redelivery is caught while the
entry lives, however many events came since.

Stored as one binary string, little-endian: version (u8), partition (i32), last offset (i64), count of skipped
offsets (u16), the skipped offsets (i64 each), then the digests, oldest first.
"""

from __future__ import annotations

import struct
from hashlib import blake2b

__all__ = ["DUPLICATE", "NEW", "REDELIVERED", "REDELIVERED_DUPLICATE", "SeenIds", "digest"]

#: What a record is to a user's profile: applied now; processed before and applied then; a repeat of an applied
#: ``event_id``, skipped; a redelivery of a record that was skipped as such a repeat.
NEW, REDELIVERED, DUPLICATE, REDELIVERED_DUPLICATE = 1, 0, -1, -2

VERSION = 1
_HEADER = struct.Struct("<BiqH")
DIGEST_BYTES = 8


def digest(event_id: str) -> bytes:
    return blake2b(event_id.encode(), digest_size=DIGEST_BYTES).digest()


class SeenIds:
    """One user's dedup window: :meth:`check` classifies records in offset order, :meth:`encode` stores it.

    The window holds exactly the last ``max_ids`` applied ids after every record, so a record's fate does not
    depend on how fetches cut the stream into batches (a replay after a crash decides as the first run did).
    """

    __slots__ = ("digests", "max_ids", "offset", "partition", "skipped")

    def __init__(
        self,
        max_ids: int,
        partition: int = -1,
        offset: int = -1,
        skipped: list[int] | None = None,
        digests: bytes | bytearray = b"",
    ):
        self.max_ids = max_ids
        self.partition = partition
        self.offset = offset  # the last record processed, on ``partition``
        self.skipped = [] if skipped is None else skipped
        self.digests = bytearray(digests)
        if len(self.skipped) > max_ids or len(self.digests) > max_ids * DIGEST_BYTES:  # max_ids was lowered
            del self.skipped[:-max_ids], self.digests[: -max_ids * DIGEST_BYTES]

    @classmethod
    def decode(cls, raw: bytes | None, max_ids: int) -> SeenIds:
        if not raw:
            return cls(max_ids)
        version, partition, offset, n_skipped = _HEADER.unpack_from(raw)
        if version != VERSION:
            raise ValueError(f"unknown dedup entry version {version}")
        start = _HEADER.size + 8 * n_skipped
        skipped = list(struct.unpack_from(f"<{n_skipped}q", raw, _HEADER.size)) if n_skipped else []
        return cls(max_ids, partition, offset, skipped, memoryview(raw)[start:])

    def encode(self) -> bytes:
        skipped = self.skipped
        header = _HEADER.pack(VERSION, self.partition, self.offset, len(skipped))
        if skipped:
            header += struct.pack(f"<{len(skipped)}q", *skipped)
        return header + self.digests

    def __len__(self) -> int:
        return len(self.digests) // DIGEST_BYTES

    def check(self, event_id: str, partition: int, offset: int) -> int:
        """Classify the record at ``partition``/``offset`` carrying ``event_id``, and remember it."""
        if partition == self.partition and offset <= self.offset:
            return REDELIVERED_DUPLICATE if offset in self.skipped else REDELIVERED
        if partition != self.partition:  # the user's first record, or their partition changed (topic recreated)
            self.partition, self.skipped = partition, []
        self.offset = offset
        key = digest(event_id)
        if self._holds(key):
            self.skipped.append(offset)
            if len(self.skipped) > self.max_ids:
                del self.skipped[0]
            return DUPLICATE
        self.digests += key
        if len(self.digests) > self.max_ids * DIGEST_BYTES:
            del self.digests[:DIGEST_BYTES]
        return NEW

    def _holds(self, key: bytes) -> bool:
        digests = self.digests
        at = digests.find(key)
        while at >= 0:
            if at % DIGEST_BYTES == 0:
                return True
            at = digests.find(key, at + 1)
        return False

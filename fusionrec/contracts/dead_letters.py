"""Dead-letter records: what a consumer writes for a message it rejects, whatever the message's size.

A dead letter keeps the original value and key byte for byte (base64), with every reason and where the message
came from, so that a fixed consumer can replay it (``docs/events.md``). A rejected message may be as large as the
broker accepts (~1 MB), far beyond the events the contract allows, and base64 adds a third: such a dead letter
would not fit the dead-letter producer's request limit, and failing to send it would lose it. So a record longer
than ``max_bytes`` keeps the *first* bytes of the original that fit, names what was cut in ``truncated``, and
carries the size and sha256 digest of the whole (which every dead letter carries), so the original can still be
recognised.

With user pseudonyms on (``FUSIONREC_PRIVACY_USER_KEY``), :func:`pseudonymise_rejected` first replaces the raw user
id in what the letter keeps: in a payload that parses as a JSON object, the ``user_id`` and ``session_id`` fields
and any other top-level string equal to the record key become pseudonyms, the key too, and the letter lists them in
``pseudonymised``; a payload that does not parse cannot be cleaned, so it is withheld (``original_b64`` null,
``withheld: ["original"]``; the source offset still finds it on the events topic). Sizes and digests are then those
of the bytes kept. Pure: no Kafka here; the worker's sender (:mod:`fusionrec.streams.dead_letters`) picks ``max_bytes``
and shrinks a letter again if a broker refuses it as too large.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Callable
from typing import Any

import orjson

from fusionrec.contracts.events import CONTRACT_VERSION, Reason

__all__ = [
    "DEAD_LETTER_KEY_BYTES",
    "TRUNCATED_NOTE",
    "dead_letter_key",
    "dead_letter_record",
    "pseudonymise_rejected",
    "shrink_dead_letter",
    "was_truncated",
]

#: A record key longer than this is cut in the dead letter (and not used as the dead-letter record's own key).
DEAD_LETTER_KEY_BYTES = 1024
#: Longest original value repeated as readable text (``original_text``).
TEXT_BYTES = 4096
TRUNCATED_NOTE = (
    "too large for a dead letter: the fields named in 'truncated' hold only the first bytes of the original "
    "(original_size / key_size and the sha256 digests are of the whole)"
)


def dead_letter_record(
    raw: bytes | None,
    reasons: list[Reason],
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None = None,
    now_ms: int | None = None,
    max_bytes: int | None = None,
    privacy: dict[str, list[str]] | None = None,
) -> bytes:
    """The dead-letter value for a rejected message: the reasons, where it came from, and the original bytes.

    The original value and key are kept byte for byte (base64) when the record fits ``max_bytes`` (None: no
    limit); otherwise their first bytes are (see the module's docstring). ``original_text`` repeats a value of at
    most 4 KiB as text when it is valid UTF-8, for people reading the topic. ``privacy``: the marks
    :func:`pseudonymise_rejected` returned (``pseudonymised``, ``withheld``), recorded in the letter.
    """
    record: dict[str, Any] = {
        "v": CONTRACT_VERSION,
        "reasons": [r.as_dict() for r in reasons],
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "rejected_at": int(time.time() * 1000) if now_ms is None else now_ms,
        **_payload("original", raw),
        **_payload("key", key),
    }
    if privacy:
        record.update(privacy)
    if raw is not None and len(raw) <= TEXT_BYTES:
        with contextlib.suppress(UnicodeDecodeError):
            record["original_text"] = bytes(raw).decode("utf-8")
    value = orjson.dumps(record)
    if max_bytes is None or len(value) <= max_bytes:
        return value
    return _fit(record, max_bytes)


_KEY_MISMATCH_PSEUDONYMOUS = (
    "the record key is not the user_id (both pseudonymised in this letter): the key decides the partition, which "
    "holds the user's state"
)


def pseudonymise_rejected(
    raw: bytes | None,
    key: bytes | None,
    reasons: list[Reason],
    user: Callable[[str], str],
    session: Callable[[str], str],
) -> tuple[bytes | None, bytes | None, list[Reason], dict[str, list[str]]]:
    """What a dead letter may keep of a rejected record when user ids are pseudonymised: ``(value, key, reasons,
    marks)`` with the raw ids replaced by ``user(id)`` (``session(id)`` for a session id), or withheld when they
    cannot be found (see the module's docstring)."""
    marks: dict[str, list[str]] = {}
    done: list[str] = []
    withheld: list[str] = []
    key_text = None
    if key is not None:
        try:
            key_text = bytes(key).decode("utf-8")
        except UnicodeDecodeError:
            key, withheld = None, ["key"]
        else:
            key, done = user(key_text).encode(), ["key"]
    if raw is not None:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        cleaned: list[str] = []
        if type(obj) is dict:
            for name, value in obj.items():
                if type(value) is not str:
                    continue
                if name == "session_id":
                    obj[name] = session(value)
                elif name == "user_id" or value == key_text:
                    obj[name] = user(value)
                else:
                    continue
                cleaned.append(name)
            try:
                raw = orjson.dumps(obj)
            except TypeError:  # nested deeper than orjson writes (254 levels; it reads 1,024): cannot be rewritten
                obj = None
        if type(obj) is dict:
            done += cleaned
        else:
            raw = None
            withheld.append("original")
    if done:
        marks["pseudonymised"] = done
    if withheld:
        marks["withheld"] = withheld
    reasons = [r._replace(message=_KEY_MISMATCH_PSEUDONYMOUS) if r.code == "key_mismatch" else r for r in reasons]
    return raw, key, reasons, marks


def shrink_dead_letter(value: bytes, max_bytes: int) -> bytes:
    """``value`` (a dead letter) cut to at most ``max_bytes``, for a broker that refused it as too large."""
    return _fit(orjson.loads(value), max_bytes)


def was_truncated(value: bytes) -> bool:
    """Whether the dead letter ``value`` had its payload cut (the field name cannot occur unescaped elsewhere: the
    payloads are base64, and text in the reasons is a JSON string, whose quotes are escaped)."""
    return b'"truncated":' in value


def dead_letter_key(key: bytes | None) -> bytes | None:
    """The key to send a dead letter with: the original's, unless it is too long to be one (then none)."""
    return key if key is None or len(key) <= DEAD_LETTER_KEY_BYTES else None


def _payload(name: str, data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {f"{name}_b64": None}
    data = bytes(data)
    return {
        f"{name}_b64": base64.b64encode(data).decode(),
        f"{name}_size": len(data),
        f"{name}_sha256": hashlib.sha256(data).hexdigest(),
    }


def _fit(record: dict[str, Any], max_bytes: int) -> bytes:
    """Cut the base64 payloads until the record fits: a key beyond ``DEAD_LETTER_KEY_BYTES`` first, then the
    value, then the rest of the key. A base64 text cut at a multiple of 4 characters decodes to a prefix of the
    original, so what is left stays exact as far as it goes."""
    record.pop("original_text", None)
    cut: list[str] = list(record.get("truncated", []))
    # Reserve the room the markers take at most, so cutting to fit with them in place is exact.
    record["truncated"], record["note"] = ["original", "key"], TRUNCATED_NOTE
    key_limit = 4 * -(-DEAD_LETTER_KEY_BYTES // 3)  # base64 characters of DEAD_LETTER_KEY_BYTES bytes
    for name, floor in (("key", key_limit), ("original", 0), ("key", 0)):
        field = f"{name}_b64"
        text = record.get(field) or ""
        over = len(orjson.dumps(record)) - max_bytes
        if over <= 0:
            break
        keep = max(floor, len(text) - over) // 4 * 4
        if keep < len(text):
            record[field] = text[:keep]
            if name not in cut:
                cut.append(name)
    if cut:
        record["truncated"] = cut
    else:
        del record["truncated"], record["note"]
    return orjson.dumps(record)

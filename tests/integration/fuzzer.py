"""A seeded fuzzer of events-topic messages: what a hostile but honest client sends (issue 12).

Each fuzzed message is made from one real event (so it is keyed like one, by that event's user, and lands among the
user's own events) by one mutation: bytes flipped, cut or inserted; invalid UTF-8; a field of the wrong JSON type,
missing, null or extra; absurd values (huge integers, NaN / Infinity tokens, negative and far-future timestamps,
1e308 prices, giant quantities, very long strings); deep nesting; empty values and values around the size limits;
duplicate JSON keys; a record key that is not the user id; control records shaped like the project's own
(:mod:`fusionrec.contracts.control`) but malformed. Some mutations give valid events (an extra field, a null
optional field, an exact re-send, an odd but valid user id keyed by itself): those must be applied like any
other, deduplicated by ``event_id`` as any other.

Never a *valid* control record: a valid ``forget_user`` keyed by a real user would erase that user's profile,
which is its job, not a fault; :func:`fuzz_messages` checks every message with
:func:`~fusionrec.contracts.control.parse_control` and makes another instead.

Pure and seeded (a private :class:`random.Random`): the same events, count and seed give the same bytes.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import orjson

from fusionrec.contracts.control import Control, parse_control
from fusionrec.contracts.events import Event

__all__ = ["Fuzzed", "fuzz_messages", "interleave"]

DAY_MS = 86_400_000


class Fuzzed(NamedTuple):
    """One fuzzed record: its key and value as sent, and the mutation that made it."""

    key: bytes | None
    value: bytes | None
    kind: str


REQUIRED = ("event_id", "user_id", "item_id", "type", "ts")
FIELDS = (*REQUIRED, "v", "session_id", "category_id", "price", "quantity", "rating", "rec_id", "rec_position")
#: A value of each JSON type; a field gets one of another type than its own.
TYPED = [0, -1, 7, 1.5, -0.0, "", "1764000000000", "view", True, False, [], [1, 2], {}, {"a": 1}]
#: Bytes that are not UTF-8 (lone continuation, overlong, surrogate, beyond U+10FFFF, cut sequences).
BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]
NUMBER_TOKENS = [b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e999999", b"0x10", b"01", b"+1", b".5", b"1.", b"-"]
ODD_IDS = [
    "ü" * 128,
    "{tag}",
    "*",
    "fr:p:x",
    "  spaced  ",
    "emoji-\U0001f600",
    "a" * 128,
    "\u00a0nbsp",
    'quote"d',
    "back\\slash",
]
NOT_PRINTABLE = ["tab\there", "nl\n", "nul\x00", "del\x7f", "ls\u2028", "bidi\u202e", "zw\u200b"]


def _dumps(obj) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # an integer beyond 64 bits, which orjson does not write
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _flip(rng, d, key, ctx):
    raw = bytearray(_dumps(d))
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
    return key, bytes(raw)


def _truncate(rng, d, key, ctx):
    raw = _dumps(d)
    return key, raw[: rng.randrange(len(raw))]


def _insert(rng, d, key, ctx):
    raw = _dumps(d)
    piece = rng.choice([bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))), b'"', b",", b"{", b"}", b"\\"])
    at = rng.randrange(len(raw) + 1)
    return key, raw[:at] + piece + raw[at:]


def _bad_utf8(rng, d, key, ctx):
    raw = _dumps(d)
    starts = [i + 3 for i in range(len(raw)) if raw[i : i + 3] == b'":"']  # just inside a string value
    at = rng.choice(starts)
    return key, raw[:at] + rng.choice(BAD_UTF8) + raw[at:]


def _wrong_type(rng, d, key, ctx):
    name = rng.choice(FIELDS)
    current = type(d.get(name, ""))
    d[name] = rng.choice([v for v in TYPED if type(v) is not current or name in ("price", "rating")])
    return key, _dumps(d)


def _missing(rng, d, key, ctx):
    for name in rng.sample(REQUIRED, rng.randint(1, 3)):
        d.pop(name, None)
    return key, _dumps(d)


def _null(rng, d, key, ctx):
    d[rng.choice(FIELDS)] = None  # null required field: missing; null optional field: absent, so valid
    return key, _dumps(d)


def _extra(rng, d, key, ctx):
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(["foo", "x" * 300, "", "ts2", "__proto__", "Event_ID", "\u0000", "meta", "controls"])
        d[name] = rng.choice([None, 1, "v", [1, {"a": []}], {"control": "forget_user", "user_id": d["user_id"]}])
    if rng.random() < 0.5:
        d["event_id"] = ctx["fresh"]()  # a new event: applied, not a duplicate of its original
    return key, _dumps(d)


def _absurd(rng, d, key, ctx):
    now = ctx["now_ms"]
    name, values = rng.choice(
        [
            ("ts", [-1, 0, 1, d["ts"] // 1000, 10**15, 2**63 - 1, 2**64 - 1, -(2**63), 10**30, now + 10 * DAY_MS]),
            ("price", [1e308, -1e308, -0.01, 1e9 + 1, 1e10, 2**64, 0, 1e9, 5e-324]),
            ("quantity", [0, -5, 10**6, 10_001, 2**63, 10**30, 1, 10_000]),
            ("rating", [11, -1, 1e308, 10, 0, 10.000001]),
            ("rec_position", [-1, 1_000_001, 2**70, 0, 1_000_000]),
            ("v", [0, 2, 1.0, -1, 10**20]),
            ("event_id", ["x" * 129, "y" * 10_000, "", *NOT_PRINTABLE]),
            ("user_id", ["u" * 129, "u" * 10_000, "", *NOT_PRINTABLE]),
            ("item_id", ["i" * 129, "", *NOT_PRINTABLE]),
            ("type", ["click", "VIEW", "", "view " * 100, "purchase\x00"]),
            ("session_id", ["s" * 129, "", *NOT_PRINTABLE]),
            ("category_id", ["c" * 5000, "", "\x1b[31m"]),
        ]
    )
    d[name] = rng.choice(values)
    if name == "rating" and rng.random() < 0.5:
        d["type"] = "rate"
    return key, _dumps(d)


def _number_token(rng, d, key, ctx):
    raw = _dumps(d)
    old = str(d["ts"]).encode()
    return key, raw.replace(old, rng.choice(NUMBER_TOKENS), 1)


def _deep(rng, d, key, ctx):
    depth = rng.choice([100, 1023, 1024, 1025, 5000, 100_000])
    kind = rng.randrange(3)
    if kind == 0:
        return key, b"[" * depth + b"]" * depth
    if kind == 1:
        return key, b'{"a":' * depth + b"1" + b"}" * depth
    raw = _dumps(d)  # the nesting inside a field of an otherwise valid event (unknown field: ignored when it parses)
    nest = b"[" * min(depth, 900) + b"]" * min(depth, 900)
    return key, raw[:-1] + b',"nest":' + nest + b"}"


def _size(rng, d, key, ctx):
    limit = ctx["max_bytes"]
    choice = rng.randrange(10)
    if choice == 0:
        return key, None  # a record without a value (a tombstone)
    if choice == 1:
        return key, rng.choice([b"", b" ", b"{}", b"null", b"[]", b'""', b"0"])
    if choice == 9 and rng.random() < 0.3:  # rarely: far beyond the event limit, up to what the broker takes
        return key, b'{"pad":"' + b"p" * rng.randint(20_000, 980_000) + b'"}'
    d["event_id"] = ctx["fresh"]()
    d["pad"] = ""
    bare = len(_dumps(d))
    target = limit + rng.choice([-1, 0, 1, 2, 100, 1000])  # valid at the limit, oversize just beyond
    d["pad"] = "p" * max(target - bare, 0)
    return key, _dumps(d)


def _duplicate_keys(rng, d, key, ctx):
    name = rng.choice(["user_id", "type", "ts", "event_id", "item_id"])
    other = {
        "user_id": rng.choice([d["user_id"], "someone-else"]),
        "type": rng.choice(["click", "purchase", d["type"]]),
        "ts": rng.choice(["1", d["ts"], -1]),
        "event_id": ctx["fresh"](),
        "item_id": "other-item",
    }[name]
    pair = _dumps({name: other})[1:-1]
    raw = _dumps(d)
    raw = raw[:-1] + b"," + pair + b"}" if rng.random() < 0.5 else b"{" + pair + b"," + raw[1:]
    return key, raw


def _key(rng, d, key, ctx):
    user = d["user_id"].encode()
    return rng.choice(
        [
            ctx["other_user"]().encode(),
            None,
            b"",
            b"\xff\xfe" + user,
            user + b"\x00",
            user.upper() + b"X",
            user * (2048 // max(len(user), 1) + 1),  # over the 1 KiB a dead letter keeps of a key
            b" " + user,
        ]
    ), _dumps(d)


def _control(rng, d, key, ctx):
    user = d["user_id"]
    base = {"v": 1, "control": "forget_user", "user_id": user, "request_id": "r-" + ctx["fresh"](), "requested_at": 1}
    choice = rng.randrange(12)
    if choice == 0:
        del base["user_id"]
    elif choice == 1:
        base["control"] = rng.choice(["forget_everyone", "FORGET_USER", "", None, 1, ["forget_user"]])
    elif choice == 2:
        base["user_id"] = rng.choice([1, None, "", "u" * 129, ["x"], "nl\n"])
    elif choice == 3:
        base[rng.choice(["item_id", "event_id", "type", "extra"])] = "x"
    elif choice == 4:
        base["v"] = rng.choice([2, 0, "1"])
    elif choice == 5:
        return ctx["other_user"]().encode(), _dumps(base)  # keyed by someone else
    elif choice == 6:
        return None, _dumps(base)
    elif choice == 7:
        base["request_id"] = rng.choice([1, "", "r" * 129, {}])
    elif choice == 8:
        base["requested_at"] = rng.choice(["now", 1.5, None, []]) or "x"
    elif choice == 9:
        return key, _dumps({**d, "control": "forget_user"})  # an event carrying a control field: neither
    elif choice == 10:
        return key, _dumps(base)[:-5]  # cut
    else:
        return key, _dumps([base])  # a control inside a list
    return key, _dumps(base)


def _valid_variant(rng, d, key, ctx):
    """Valid on purpose: an exact re-send, an odd but valid id (keyed by itself), valid edge values."""
    choice = rng.randrange(4)
    if choice == 0:
        return key, _dumps(d)  # a producer's retry: a duplicate of its original
    if choice == 1:
        d["user_id"] = rng.choice(ODD_IDS)
        d["event_id"] = ctx["fresh"]()
        return d["user_id"].encode(), _dumps(d)
    if choice == 2:
        d["item_id"] = rng.choice(ODD_IDS)
        d["event_id"] = rng.choice(ODD_IDS[1:4]) + ctx["fresh"]()
        return key, _dumps(d)
    d.update(price=1e9, quantity=10_000, rec_position=1_000_000, rec_id="r" * 128, session_id="s" * 128)
    d["event_id"] = ctx["fresh"]()
    return key, _dumps(d)


MUTATIONS: dict[str, tuple[float, Callable]] = {
    "byte_flip": (8, _flip),
    "truncate": (6, _truncate),
    "insert": (6, _insert),
    "bad_utf8": (6, _bad_utf8),
    "wrong_type": (10, _wrong_type),
    "missing_field": (6, _missing),
    "null_field": (6, _null),
    "extra_field": (6, _extra),
    "absurd_value": (14, _absurd),
    "number_token": (4, _number_token),
    "deep_nesting": (3, _deep),
    "size": (5, _size),
    "duplicate_keys": (5, _duplicate_keys),
    "record_key": (6, _key),
    "control": (6, _control),
    "valid_variant": (6, _valid_variant),
}


def fuzz_messages(
    events: Sequence[Event], n: int, seed: int, *, max_bytes: int = 16_384, now_ms: int | None = None
) -> list[Fuzzed]:
    """``n`` fuzzed messages, each made from a random one of ``events`` by one mutation (see the module)."""
    rng = random.Random(seed)
    counter = iter(range(10**9))
    ctx = {
        "now_ms": int(time.time() * 1000) if now_ms is None else now_ms,
        "max_bytes": max_bytes,
        "fresh": lambda: f"fz-{seed}-{next(counter)}",
        "other_user": lambda: rng.choice(events).user_id + "-not",
    }
    names = list(MUTATIONS)
    weights = [MUTATIONS[k][0] for k in names]
    out: list[Fuzzed] = []
    while len(out) < n:
        kind = rng.choices(names, weights)[0]
        base = rng.choice(events)
        key, value = MUTATIONS[kind][1](rng, base.to_dict(), base.key, ctx)
        if value is not None and _valid_control(value, key):
            continue  # a valid forget_user would erase a real user: not a fault (see the module)
        out.append(Fuzzed(key, value, kind))
    return out


def _valid_control(value: bytes, key: bytes | None) -> bool:
    try:
        return isinstance(parse_control(value, key), Control)
    except Exception:  # noqa: BLE001 - a parser that raises on it does not take it for a valid control
        return False


def interleave(
    events: Sequence[Event], fuzzed: Sequence[Fuzzed], seed: int
) -> list[tuple[bytes | None, bytes | None, str]]:
    """``(key, value, kind)`` for every record in send order: the events in their order (kind ``valid``) with the
    fuzzed messages at random positions."""
    rng = random.Random(seed + 1)
    total = len(events) + len(fuzzed)
    at = set(rng.sample(range(total), len(fuzzed)))
    valid, bad = iter(events), iter(fuzzed)
    out = []
    for i in range(total):
        if i in at:
            f = next(bad)
            out.append((f.key, f.value, f.kind))
        else:
            e = next(valid)
            out.append((e.key, e.to_json(), "valid"))
    return out

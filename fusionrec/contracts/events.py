"""Event contract v1: what a shop sends to the events topic, and the validator every consumer runs.

An event is one JSON object per Kafka message, keyed by ``user_id`` (UTF-8) so that one user's events stay in
order on one partition. ``docs/events.md`` is the human-readable contract; this module is the executable one.

Validation never raises on input: :func:`validate` takes the raw bytes and returns either an :class:`Event` or
*every* reason the bytes are not one, each a :class:`Reason` with a stable ``code`` (used as a metric label and
in the dead-letter record, :mod:`fusionrec.contracts.dead_letters`) and a message for people. Plausibility bounds
(price, quantity) and the record-key check are arguments, so a consumer applies the shop's settings.
"""

from __future__ import annotations

import math
import time
from types import EllipsisType
from typing import Any, NamedTuple

import orjson

__all__ = [
    "CONTRACT_VERSION",
    "EVENT_TYPES",
    "Event",
    "InvalidEvent",
    "Reason",
    "Validation",
    "validate",
]

CONTRACT_VERSION = 1

#: Event types. ``impression``: the item was shown (e.g. on a served list) without a click; ``rate``: an explicit
#: rating (a review's stars), which carries the ``rating`` field.
EVENT_TYPES = frozenset({"impression", "view", "favourite", "add_to_cart", "remove_from_cart", "purchase", "rate"})
MAX_RATING = 10.0

#: Earliest plausible event time (1995-01-01 UTC, in epoch ms): older stamps are seconds-vs-ms mistakes.
MIN_TS_MS = 788_918_400_000
DEFAULT_MAX_EVENT_BYTES = 16_384
DEFAULT_MAX_FUTURE_SKEW_MS = 3_600_000
#: Defaults of the plausibility bounds a shop may change (``FUSIONREC_EVENT_MAX_PRICE``, ``..._MAX_QUANTITY``):
#: above them a value is a bug or an attack (1e308 overflows every sum), not a sale.
DEFAULT_MAX_PRICE = 1e9
DEFAULT_MAX_QUANTITY = 10_000
MAX_ID_LENGTH = 128

_ID_FIELDS = ("event_id", "user_id", "item_id")
_OPTIONAL_STR = ("session_id", "category_id", "rec_id")


class Reason(NamedTuple):
    """Why an event was rejected: a stable ``code``, the ``field`` concerned (or ``""``), and a message."""

    code: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "field": self.field, "message": self.message}


class InvalidEvent(ValueError):
    """Raised by producers that refuse to send an invalid event; carries every :class:`Reason`."""

    def __init__(self, reasons: list[Reason]):
        self.reasons = reasons
        super().__init__("; ".join(f"{r.field or 'event'}: {r.message}" for r in reasons))


class Event(NamedTuple):
    """One validated shop event (contract v1). ``ts`` is epoch milliseconds.

    A named tuple, not a dataclass: one is built for every record on the hot path, and a tuple is 4x cheaper.
    """

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: int
    session_id: str | None = None
    category_id: str | None = None
    price: float | None = None
    quantity: int | None = None
    rec_id: str | None = None
    rec_position: int | None = None
    rating: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": CONTRACT_VERSION,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type,
            "ts": self.ts,
        }
        for name in ("session_id", "category_id", "price", "quantity", "rec_id", "rec_position", "rating"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @property
    def key(self) -> bytes:
        """The Kafka message key: the user id, so one user's events stay ordered on one partition."""
        return self.user_id.encode()


class Validation(NamedTuple):
    """The outcome of :func:`validate`: ``event`` when valid, else ``reasons`` (never both empty)."""

    event: Event | None
    reasons: list[Reason]

    @property
    def ok(self) -> bool:
        return self.event is not None


def _check_id(name: str, value: Any, reasons: list[Reason], required: bool) -> str | None:
    if value is None:
        if required:
            reasons.append(Reason("missing_field", name, f"{name} is required"))
        return None
    if not isinstance(value, str):
        reasons.append(Reason("wrong_type", name, f"{name} must be a string, got {type(value).__name__}"))
        return None
    if not value or len(value) > MAX_ID_LENGTH:
        reasons.append(Reason("bad_value", name, f"{name} must be 1..{MAX_ID_LENGTH} characters"))
        return None
    if not value.isprintable():
        reasons.append(Reason("bad_value", name, f"{name} contains control characters"))
        return None
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_FAST_KEYS = frozenset({"v", "event_id", "user_id", "item_id", "type", "ts", "session_id", "category_id"})
_FAST_TYPES = EVENT_TYPES - {"rate"}


def _fast_event(obj: dict, now: int, max_future_skew_ms: int) -> Event | None:
    """The common shape (ids, type, ts, optional session/category) checked with few calls; None: use the full path.

    It accepts only what :func:`_validate_full` accepts, with the same result (a property test holds them equal).
    """
    if not obj.keys() <= _FAST_KEYS or obj.get("v", 1) != 1 or type(obj.get("v", 1)) is not int:
        return None
    event_id, user_id, item_id = obj.get("event_id"), obj.get("user_id"), obj.get("item_id")
    etype, ts = obj.get("type"), obj.get("ts")
    session_id, category_id = obj.get("session_id"), obj.get("category_id")
    if not (
        type(event_id) is str
        and type(user_id) is str
        and type(item_id) is str
        and type(ts) is int
        and type(etype) is str  # before the set test: a list or an object is unhashable
        and etype in _FAST_TYPES
        and MIN_TS_MS <= ts <= now + max_future_skew_ms
        and 0 < len(event_id) <= MAX_ID_LENGTH
        and 0 < len(user_id) <= MAX_ID_LENGTH
        and 0 < len(item_id) <= MAX_ID_LENGTH
        and event_id.isprintable()
        and user_id.isprintable()
        and item_id.isprintable()
    ):
        return None
    for value in (session_id, category_id):
        if value is not None and not (type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()):
            return None
    return Event(event_id, user_id, item_id, etype, ts, session_id, category_id)


def validate_dict(
    obj: Any,
    *,
    now_ms: int | None = None,
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
    max_price: float = DEFAULT_MAX_PRICE,
    max_quantity: int = DEFAULT_MAX_QUANTITY,
) -> Validation:
    """Validate an already-decoded JSON value against contract v1."""
    if type(obj) is dict:
        event = _fast_event(obj, int(time.time() * 1000) if now_ms is None else now_ms, max_future_skew_ms)
        if event is not None:
            return Validation(event, [])
    return _validate_full(
        obj, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms, max_price=max_price, max_quantity=max_quantity
    )


def _validate_full(
    obj: Any,
    *,
    now_ms: int | None = None,
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
    max_price: float = DEFAULT_MAX_PRICE,
    max_quantity: int = DEFAULT_MAX_QUANTITY,
) -> Validation:
    """Every check, collecting every reason."""
    if not isinstance(obj, dict):
        return Validation(None, [Reason("not_an_object", "", f"event must be a JSON object, got {type(obj).__name__}")])
    reasons: list[Reason] = []
    get = obj.get

    version = get("v", CONTRACT_VERSION)
    if not _is_int(version) or version != CONTRACT_VERSION:
        reasons.append(
            Reason("unsupported_version", "v", f"contract version must be {CONTRACT_VERSION}, got {version!r}")
        )

    event_id = _check_id("event_id", get("event_id"), reasons, True)
    user_id = _check_id("user_id", get("user_id"), reasons, True)
    item_id = _check_id("item_id", get("item_id"), reasons, True)

    etype = get("type")
    if etype is None:
        reasons.append(Reason("missing_field", "type", "type is required"))
    elif not isinstance(etype, str):
        reasons.append(Reason("wrong_type", "type", f"type must be a string, got {type(etype).__name__}"))
    elif etype not in EVENT_TYPES:
        shown = etype if len(etype) <= 40 else etype[:40] + "…"
        reasons.append(Reason("unknown_type", "type", f"unknown type {shown!r}; one of {sorted(EVENT_TYPES)}"))

    ts = get("ts")
    if ts is None:
        reasons.append(Reason("missing_field", "ts", "ts (epoch milliseconds) is required"))
    elif not _is_int(ts):
        reasons.append(
            Reason("wrong_type", "ts", f"ts must be an integer of epoch milliseconds, got {type(ts).__name__}")
        )
    else:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if ts < MIN_TS_MS:
            hint = " (seconds instead of milliseconds?)" if ts > MIN_TS_MS // 1000 else ""
            reasons.append(Reason("ts_out_of_range", "ts", f"ts {ts} is before 1995-01-01{hint}"))
        elif ts > now + max_future_skew_ms:
            reasons.append(
                Reason("ts_out_of_range", "ts", f"ts {ts} is more than {max_future_skew_ms} ms in the future")
            )

    optional: dict[str, Any] = {}
    for name in _OPTIONAL_STR:
        value = get(name)
        if value is not None:
            optional[name] = _check_id(name, value, reasons, False)

    price = get("price")
    if price is not None:
        if not isinstance(price, (int, float)) or isinstance(price, bool):
            reasons.append(Reason("wrong_type", "price", f"price must be a number, got {type(price).__name__}"))
        elif not math.isfinite(price) or not 0 <= price <= max_price:
            reasons.append(Reason("bad_value", "price", f"price must be a number between 0 and {max_price:g}"))
        else:
            optional["price"] = float(price)

    rating = get("rating")
    if rating is None:
        if etype == "rate":
            reasons.append(Reason("missing_field", "rating", "a rate event needs a rating"))
    elif not isinstance(rating, (int, float)) or isinstance(rating, bool):
        reasons.append(Reason("wrong_type", "rating", f"rating must be a number, got {type(rating).__name__}"))
    elif not math.isfinite(rating) or not 0 <= rating <= MAX_RATING:
        reasons.append(Reason("bad_value", "rating", f"rating must be between 0 and {MAX_RATING:g}"))
    else:
        optional["rating"] = float(rating)

    for name, low, high in (("quantity", 1, max_quantity), ("rec_position", 0, 1_000_000)):
        value = get(name)
        if value is not None:
            if not _is_int(value):
                reasons.append(Reason("wrong_type", name, f"{name} must be an integer, got {type(value).__name__}"))
            elif not low <= value <= high:
                reasons.append(Reason("bad_value", name, f"{name} must be between {low} and {high}"))
            else:
                optional[name] = value

    if reasons:
        return Validation(None, reasons)
    return Validation(Event(event_id, user_id, item_id, etype, ts, **optional), [])  # type: ignore[arg-type]


def validate(
    raw: bytes,
    *,
    now_ms: int | None = None,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS,
    max_price: float = DEFAULT_MAX_PRICE,
    max_quantity: int = DEFAULT_MAX_QUANTITY,
    key: bytes | None | EllipsisType = ...,
) -> Validation:
    """Validate one raw Kafka message value. Never raises: any input gives an event or reasons.

    Pass the record's ``key`` (``None`` for a record without one) to check that it is the ``user_id``: the key
    decides the partition, and so which partition's state the user's events build; a consumer of the events topic
    that keeps per-user state must check it. Left out (``...``), the key is not checked.
    """
    if raw is None:
        return Validation(None, [Reason("empty", "", "message has no value")])
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return Validation(None, [Reason("bad_encoding", "", f"value must be bytes, got {type(raw).__name__}")])
    if len(raw) > max_bytes:
        return Validation(None, [Reason("oversize", "", f"event is {len(raw)} bytes; the limit is {max_bytes}")])
    if not raw:
        return Validation(None, [Reason("empty", "", "message value is empty")])
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return Validation(None, [Reason("bad_encoding", "", "value is not valid UTF-8")])
        return Validation(None, [Reason("not_json", "", f"value is not JSON: {exc}")])
    except Exception as exc:  # noqa: BLE001 - orjson only raises JSONDecodeError, but the contract is 'never raise'
        return Validation(None, [Reason("not_json", "", f"value could not be decoded: {exc}")])
    result = validate_dict(
        obj, now_ms=now_ms, max_future_skew_ms=max_future_skew_ms, max_price=max_price, max_quantity=max_quantity
    )
    if key is not ...:
        wrong = _key_reason(key, obj)
        if wrong is not None:
            return Validation(None, [*result.reasons, wrong])
    return result


def _key_reason(key: bytes | None, obj: Any) -> Reason | None:
    """Why ``key`` is not the record's user id (None when it is, or when there is no valid user id to compare)."""
    user_id = obj.get("user_id") if type(obj) is dict else None
    if type(user_id) is not str:
        return None  # the missing or wrong user_id is a reason of its own
    if key is None:
        return Reason(
            "key_mismatch", "key", "the record has no key; it must be the user_id, which decides the partition"
        )
    if bytes(key) == user_id.encode():
        return None
    shown = bytes(key[:40]).decode("utf-8", "replace") + ("…" if len(key) > 40 else "")
    return Reason(
        "key_mismatch",
        "key",
        f"the record key {shown!r} is not the user_id: the key decides the partition, which holds the user's state",
    )


def ensure_valid(
    event: Event,
    *,
    now_ms: int | None = None,
    max_price: float = DEFAULT_MAX_PRICE,
    max_quantity: int = DEFAULT_MAX_QUANTITY,
) -> Event:
    """Check an :class:`Event` built in code against the contract; raise :class:`InvalidEvent` if it breaks it."""
    result = validate_dict(event.to_dict(), now_ms=now_ms, max_price=max_price, max_quantity=max_quantity)
    if not result.ok:
        raise InvalidEvent(result.reasons)
    return event

"""Control records: requests to the workers that travel on the events topic, in order with the user's events.

One kind so far, ``forget_user`` (``fusionrec forget USER``): the worker that owns the user's partition removes the
user's profile, dedup entry, stored list and every model's per-user state when it reaches the record
(docs/privacy.md). A control record is keyed by the user id, as the user's events are, so it lands on the
partition that holds the user's state and is processed exactly where it stands in their event sequence: events
before it are forgotten, events after it start a new history.

The value is one JSON object (contract v1)::

    {"v": 1, "control": "forget_user", "user_id": "u-1842", "request_id": "8c1e…", "requested_at": 1733212800000}

``request_id`` and ``requested_at`` are optional (the CLI sets them, for the audit trail in the worker's log). A
record that carries a ``"control"`` field but breaks this contract is a dead letter (``bad_control``, or
``key_mismatch`` when its key is not its ``user_id``), never an event.

>>> raw = control_record("u-1842", request_id="r1", now_ms=1733212800000)
>>> parse_control(raw, b"u-1842")
Control(kind='forget_user', user_id='u-1842', request_id='r1', requested_at=1733212800000)
>>> parse_control(raw, b"someone-else")[0].code
'key_mismatch'
>>> parse_control(b'{"event_id": "e1", "item_id": "control"}', b"u") is None   # the word alone is no control
True
"""

from __future__ import annotations

import time
import uuid
from typing import NamedTuple

import orjson

from fusionrec.contracts.events import CONTRACT_VERSION, MAX_ID_LENGTH, Reason

__all__ = ["CONTROL_KINDS", "FORGET_USER", "Control", "control_record", "parse_control"]

FORGET_USER = "forget_user"
CONTROL_KINDS = frozenset({FORGET_USER})
_FIELDS = frozenset({"v", "control", "user_id", "request_id", "requested_at"})
#: What a value must contain to be looked at as a control record at all (a cheap test on every record).
MARKER = b'"control"'


class Control(NamedTuple):
    """A validated control record."""

    kind: str
    user_id: str
    request_id: str | None = None
    requested_at: int | None = None


def control_record(user_id: str, *, request_id: str | None = None, now_ms: int | None = None) -> bytes:
    """The value of a ``forget_user`` record for ``user_id`` (send it keyed by ``user_id``)."""
    return orjson.dumps(
        {
            "v": CONTRACT_VERSION,
            "control": FORGET_USER,
            "user_id": user_id,
            "request_id": request_id or uuid.uuid4().hex,
            "requested_at": int(time.time() * 1000) if now_ms is None else now_ms,
        }
    )


def parse_control(raw: bytes, key: bytes | None) -> Control | list[Reason] | None:
    """The control record in ``raw``, the reasons it is not a valid one, or None when ``raw`` is not a control
    record at all (a JSON object without a ``"control"`` field: an event, valid or not)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or "control" not in obj:
        return None
    reasons = []
    kind, user_id = obj.get("control"), obj.get("user_id")
    version = obj.get("v", CONTRACT_VERSION)
    if type(version) is not int or version != CONTRACT_VERSION:  # as for events: not true, not 1.0
        reasons.append(Reason("unsupported_version", "v", f"contract version must be {CONTRACT_VERSION}"))
    if type(kind) is not str or kind not in CONTROL_KINDS:  # a list or an object is unhashable: test the type first
        reasons.append(Reason("bad_control", "control", f"control must be one of {sorted(CONTROL_KINDS)}"))
    extra = sorted(set(obj) - _FIELDS)
    if extra:
        reasons.append(Reason("bad_control", extra[0], f"a control record has no field(s) {extra}"))
    if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_LENGTH or not user_id.isprintable():
        reasons.append(Reason("bad_control", "user_id", f"user_id must be a string of 1..{MAX_ID_LENGTH} characters"))
    elif key is None or bytes(key) != user_id.encode():
        reasons.append(
            Reason("key_mismatch", "key", "a control record must be keyed by its user_id, which decides the partition")
        )
    request_id, requested_at = obj.get("request_id"), obj.get("requested_at")
    if request_id is not None and (type(request_id) is not str or not 0 < len(request_id) <= MAX_ID_LENGTH):
        reasons.append(Reason("bad_control", "request_id", f"request_id must be a string of 1..{MAX_ID_LENGTH}"))
    if requested_at is not None and type(requested_at) is not int:
        reasons.append(Reason("bad_control", "requested_at", "requested_at must be an integer (epoch ms)"))
    if reasons:
        return reasons
    return Control(kind, user_id, request_id, requested_at)

"""The event contract: every reason is reported, nothing raises, valid events round-trip."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionrec.contracts.events import EVENT_TYPES, Event, InvalidEvent, Reason, ensure_valid, validate, validate_dict

NOW = 1_700_000_000_000
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "ts": NOW - 5}


def codes(raw: bytes) -> list[tuple[str, str]]:
    result = validate(raw, now_ms=NOW)
    assert result.event is None
    return [(r.code, r.field) for r in result.reasons]


def test_valid_event_parses_with_optional_fields():
    raw = orjson.dumps(
        GOOD
        | {
            "session_id": "s",
            "category_id": "c",
            "price": 9,
            "quantity": 2,
            "rec_id": "r",
            "rec_position": 0,
            "unknown_future_field": [1],
        }
    )
    result = validate(raw, now_ms=NOW)
    assert result.ok and result.reasons == []
    assert result.event == Event("e1", "u1", "i1", "view", NOW - 5, "s", "c", 9.0, 2, "r", 0)
    assert result.event.key == b"u1"


def test_every_reason_is_reported_at_once():
    raw = orjson.dumps(
        {"event_id": 7, "item_id": "", "type": "click", "ts": 1_500_000_000, "price": -1, "quantity": 0, "v": 2}
    )
    assert codes(raw) == [
        ("unsupported_version", "v"),
        ("wrong_type", "event_id"),
        ("missing_field", "user_id"),
        ("bad_value", "item_id"),
        ("unknown_type", "type"),
        ("ts_out_of_range", "ts"),
        ("bad_value", "price"),
        ("bad_value", "quantity"),
    ]
    message = [r.message for r in validate(raw, now_ms=NOW).reasons if r.field == "ts"][0]
    assert "seconds instead of milliseconds" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", [("empty", "")]),
        (b"\xff\xfe{", [("bad_encoding", "")]),
        (b"{not json", [("not_json", "")]),
        (b"[1, 2]", [("not_an_object", "")]),
        (b"null", [("not_an_object", "")]),
        (b"x" * 20_000, [("oversize", "")]),
        (orjson.dumps(GOOD | {"ts": NOW + 2 * 3_600_000}), [("ts_out_of_range", "ts")]),
        (orjson.dumps(GOOD | {"ts": float(NOW)}), [("wrong_type", "ts")]),
        (orjson.dumps(GOOD | {"ts": True}), [("wrong_type", "ts")]),
        (orjson.dumps(GOOD | {"user_id": "a\nb"}), [("bad_value", "user_id")]),
        (orjson.dumps(GOOD | {"user_id": "u" * 129}), [("bad_value", "user_id")]),
        (orjson.dumps(GOOD | {"type": "rate"}), [("missing_field", "rating")]),
        (orjson.dumps(GOOD | {"type": "rate", "rating": 11}), [("bad_value", "rating")]),
        (orjson.dumps(GOOD | {"price": "3"}), [("wrong_type", "price")]),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "type"}), [("missing_field", "type")]),
    ],
)
def test_invalid_inputs_give_their_reason(raw, expected):
    assert codes(raw) == expected


def test_oversize_limit_is_configurable():
    raw = orjson.dumps(GOOD)
    assert validate(raw, now_ms=NOW, max_bytes=len(raw)).ok
    assert not validate(raw, now_ms=NOW, max_bytes=len(raw) - 1).ok


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"quantity": 1_000_000}, "quantity"),
        ({"quantity": 10_001}, "quantity"),
        ({"price": 1e308}, "price"),
        ({"price": 1_000_000_001}, "price"),
    ],
)
def test_absurd_values_are_rejected_with_their_bound(extra, field):
    result = validate(orjson.dumps(GOOD | extra), now_ms=NOW)
    assert [(r.code, r.field) for r in result.reasons] == [("bad_value", field)]
    assert "between" in result.reasons[0].message


def test_value_bounds_are_settings():
    raw = orjson.dumps(GOOD | {"quantity": 50_000, "price": 5e9})
    assert [r.field for r in validate(raw, now_ms=NOW).reasons] == ["price", "quantity"]
    assert validate(raw, now_ms=NOW, max_price=1e10, max_quantity=50_000).ok
    assert validate(orjson.dumps(GOOD | {"quantity": 10_000, "price": 1e9}), now_ms=NOW).ok  # bounds included
    from fusionrec.contracts.settings import EventSettings

    limits = EventSettings()
    assert (limits.max_price, limits.max_quantity) == (1e9, 10_000)
    with pytest.raises(InvalidEvent):
        ensure_valid(Event("e", "u", "i", "purchase", NOW, quantity=20_000), now_ms=NOW)
    ensure_valid(Event("e", "u", "i", "purchase", NOW, quantity=20_000), now_ms=NOW, max_quantity=20_000)


def test_the_record_key_must_be_the_user_id_when_checked():
    raw = orjson.dumps(GOOD)
    assert validate(raw, now_ms=NOW, key=b"u1").ok
    assert validate(raw, now_ms=NOW).ok  # not checked unless given
    for key in (b"u2", None, b"\xff" * 100):
        result = validate(raw, now_ms=NOW, key=key)
        assert [(r.code, r.field) for r in result.reasons] == [("key_mismatch", "key")]
        assert "partition" in result.reasons[0].message
    assert len(validate(raw, now_ms=NOW, key=b"k" * 100_000).reasons[0].message) < 200  # a huge key is not echoed
    # every reason at once: the value's, then the key's
    both = validate(orjson.dumps(GOOD | {"type": "click"}), now_ms=NOW, key=b"other")
    assert [r.code for r in both.reasons] == ["unknown_type", "key_mismatch"]
    # without a usable user_id there is nothing to compare: that reason stands alone
    assert [r.code for r in validate(b'{"type": "view"}', now_ms=NOW, key=b"x").reasons] == ["missing_field"] * 4


def test_ensure_valid_raises_invalid_event_with_reasons():
    with pytest.raises(InvalidEvent) as info:
        ensure_valid(Event("e", "u", "i", "teleport", NOW), now_ms=NOW)
    assert [r.code for r in info.value.reasons] == ["unknown_type"]
    assert "unknown type" in str(info.value)


def test_reason_as_dict():
    assert Reason("oversize", "", "too big").as_dict() == {"code": "oversize", "field": "", "message": "too big"}


# --- properties ---------------------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_validate_or_give_reasons(raw):
    result = validate(raw, now_ms=NOW)
    assert (result.event is None) == bool(result.reasons)
    assert all(isinstance(r, Reason) and r.code and r.message for r in result.reasons)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "event_id",
                "user_id",
                "item_id",
                "type",
                "ts",
                "price",
                "quantity",
                "rating",
                "v",
                "session_id",
                "rec_position",
                "other",
            ]
        ),
        json_values | st.sampled_from(sorted(EVENT_TYPES)) | st.integers(NOW - 10**12, NOW + 10**10),
    )
)
def test_any_json_object_validates_or_gives_reasons(obj):
    result = validate_dict(obj, now_ms=NOW)
    assert (result.event is None) == bool(result.reasons)


ids = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "), min_size=1, max_size=40
)


@settings(max_examples=300, deadline=None)
@given(
    ids,
    ids,
    ids,
    st.sampled_from(sorted(EVENT_TYPES - {"rate"})),
    st.integers(788_918_400_000, NOW),
    st.none() | st.floats(0, 1e6),
    st.none() | st.integers(1, 1000),
)
def test_valid_events_round_trip_through_json(event_id, user, item, etype, ts, price, quantity):
    event = Event(event_id, user, item, etype, ts, price=price, quantity=quantity)
    result = validate(event.to_json(), now_ms=NOW)
    assert result.reasons == []
    assert result.event == event


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.none(), st.binary(max_size=20) | st.none())
def test_dead_letter_record_keeps_the_original_bytes(raw, key):
    import base64

    from fusionrec.contracts.dead_letters import dead_letter_record

    reasons = validate(raw, now_ms=NOW).reasons or [Reason("x", "", "y")]
    record = orjson.loads(dead_letter_record(raw, reasons, topic="t", partition=2, offset=9, key=key, now_ms=NOW))
    assert record["source"] == {"topic": "t", "partition": 2, "offset": 9}
    assert record["reasons"] == [r.as_dict() for r in reasons] and record["rejected_at"] == NOW
    restored = None if record["original_b64"] is None else base64.b64decode(record["original_b64"])
    assert restored == raw
    assert (None if record["key_b64"] is None else base64.b64decode(record["key_b64"])) == key


@settings(max_examples=600, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["event_id", "user_id", "item_id", "type", "ts", "v", "session_id", "category_id", "price"]),
        st.none()
        | st.booleans()
        | st.integers(-5, NOW + 10**10)
        | st.floats(allow_nan=False)
        | st.text(max_size=130)
        | st.sampled_from(sorted(EVENT_TYPES))
        | st.integers(788_918_400_000, NOW),
    )
)
def test_fast_path_agrees_with_the_full_validator(obj):
    from fusionrec.contracts.events import _validate_full

    assert validate_dict(obj, now_ms=NOW) == _validate_full(obj, now_ms=NOW)


def test_fast_path_agrees_on_typical_events():
    from fusionrec.contracts.events import _validate_full

    for obj in (
        GOOD,
        GOOD | {"session_id": "s", "category_id": "c"},
        GOOD | {"v": 1},
        GOOD | {"v": True},
        GOOD | {"type": "rate", "rating": 3},
        GOOD | {"category_id": ""},
        GOOD | {"ts": NOW + 10**9},
    ):
        assert validate_dict(obj, now_ms=NOW) == _validate_full(obj, now_ms=NOW)


@pytest.mark.parametrize("etype", [[], [1, 2], {}, {"a": 1}])
def test_a_list_or_object_as_type_is_wrong_type_not_an_exception(etype):
    """Found by the fuzzer (issue 12): the fast path tested ``type in {...}`` before the type's type, raised
    TypeError (unhashable) out of ``validate``, and the worker retried the record's batch for ever."""
    result = validate(orjson.dumps(GOOD | {"type": etype}), now_ms=NOW)
    assert [r.code for r in result.reasons] == ["wrong_type"]

"""User pseudonyms: stable, keyed, never the raw id; dead letters that keep no raw id; the key never printed."""

from __future__ import annotations

import base64

import orjson
import pytest

from fusionrec.contracts.dead_letters import dead_letter_key, dead_letter_record, pseudonymise_rejected
from fusionrec.contracts.events import Event, validate
from fusionrec.contracts.privacy import PSEUDONYM_PREFIX, Pseudonymiser, pseudonym, redrive_tag
from fusionrec.contracts.settings import SettingsError, load_settings

KEY = b"k" * 32
OTHER = b"o" * 32
RAW = "alice@example.com"


def test_a_pseudonym_is_stable_keyed_and_hides_the_id():
    p = pseudonym(KEY, RAW)
    assert p == pseudonym(KEY, RAW)  # stable: the user's state builds up under one name
    assert p != pseudonym(OTHER, RAW)  # keyed: another key, another name
    assert p != pseudonym(KEY, RAW + "x")
    assert p.startswith(PSEUDONYM_PREFIX) and len(p) == len(PSEUDONYM_PREFIX) + 24
    assert RAW not in p and "alice" not in p
    int(p[len(PSEUDONYM_PREFIX) :], 16)  # hex digits
    assert validate(Event("e", p, "i", "view", 1_700_000_000_000).to_json()).ok  # a valid user id itself


def test_distinct_ids_get_distinct_pseudonyms():
    ids = [f"user-{n}" for n in range(20_000)]
    assert len({pseudonym(KEY, u) for u in ids}) == len(ids)


def test_pseudonymiser_replaces_user_and_session_ids_and_is_the_identity_without_a_key():
    event = Event("e1", RAW, "i1", "view", 1_700_000_000_000, session_id="sess-" + RAW)
    hidden = Pseudonymiser(KEY).event(event)
    assert hidden.user_id == pseudonym(KEY, RAW)
    assert hidden.session_id.startswith(PSEUDONYM_PREFIX) and RAW not in hidden.session_id
    assert hidden._replace(user_id=RAW, session_id=event.session_id) == event  # nothing else changes
    assert Pseudonymiser(KEY).session("s") == Pseudonymiser(KEY).session("s") != Pseudonymiser(OTHER).session("s")
    plain = Pseudonymiser(None)
    assert not plain.enabled and plain.event(event) is event and plain.user(RAW) == RAW
    assert "k" * 16 not in repr(Pseudonymiser(KEY))


def test_the_cache_is_bounded():
    p = Pseudonymiser(KEY, max_cached=10)
    assert [p.user(f"u{n}") for n in range(25)] == [pseudonym(KEY, f"u{n}") for n in range(25)]
    assert len(p._cache) <= 10


def test_the_key_is_a_secret_setting_never_shown(monkeypatch):
    secret = "correct horse battery staple 42"
    monkeypatch.setenv("FUSIONREC_PRIVACY_USER_KEY", secret)
    conf = load_settings()
    assert conf.privacy.user_key.get_secret_value() == secret
    assert secret not in repr(conf) and secret not in str(conf.redacted())
    assert conf.redacted()["privacy_user_key"] == "***"
    assert conf.to_env()["FUSIONREC_PRIVACY_USER_KEY"] == secret  # for a child process only
    assert Pseudonymiser.from_settings(conf).user(RAW) == pseudonym(secret.encode(), RAW)
    monkeypatch.delenv("FUSIONREC_PRIVACY_USER_KEY")
    assert load_settings().privacy.user_key is None


def test_a_short_key_is_refused_without_echoing_it(monkeypatch):
    monkeypatch.setenv("FUSIONREC_PRIVACY_USER_KEY", "short-secret")
    with pytest.raises(SettingsError, match="FUSIONREC_PRIVACY_USER_KEY") as info:
        load_settings()
    assert "short-secret" not in str(info.value)


def test_redrive_tags_need_the_key():
    assert redrive_tag(KEY, b"v") == redrive_tag(KEY, b"v") != redrive_tag(OTHER, b"v")
    assert redrive_tag(KEY, b"v") != redrive_tag(KEY, b"w")
    assert Pseudonymiser(None).tag(b"v") is None


# --- dead letters -------------------------------------------------------------------------------------------------

HIDE = Pseudonymiser(KEY)


def rejected(raw, key, reasons):
    value, new_key, reasons, marks = pseudonymise_rejected(raw, key, reasons, HIDE.user, HIDE.session)
    letter = dead_letter_record(
        value, reasons, topic="t", partition=0, offset=3, key=new_key, now_ms=1, privacy=marks, max_bytes=10_000
    )
    return dead_letter_key(new_key), letter, orjson.loads(letter)


def test_a_parsable_rejected_event_keeps_its_payload_with_pseudonyms():
    raw = orjson.dumps(
        {
            "event_id": "e",
            "user_id": RAW,
            "item_id": "i1",
            "type": "click",
            "ts": 1_700_000_000_000,
            "session_id": "s-" + RAW,
        }
    )
    key, letter, record = rejected(raw, RAW.encode(), validate(raw).reasons)
    assert RAW.encode() not in letter and RAW.encode() not in key
    original = orjson.loads(base64.b64decode(record["original_b64"]))
    assert original["user_id"] == pseudonym(KEY, RAW) and original["item_id"] == "i1" and original["type"] == "click"
    assert RAW not in original["session_id"]
    assert key == pseudonym(KEY, RAW).encode() and base64.b64decode(record["key_b64"]) == key
    assert sorted(record["pseudonymised"]) == ["key", "session_id", "user_id"]
    assert "withheld" not in record
    assert record["reasons"][0]["code"] == "unknown_type"


def test_a_misnamed_field_holding_the_key_is_pseudonymised_too():
    raw = orjson.dumps({"userId": RAW, "item_id": "i1"})
    _key, letter, record = rejected(raw, RAW.encode(), validate(raw).reasons)
    assert RAW.encode() not in letter and "userId" in record["pseudonymised"]


def test_a_key_mismatch_names_neither_id():
    raw = orjson.dumps({"event_id": "e", "user_id": RAW, "item_id": "i", "type": "view", "ts": 1_700_000_000_000})
    reasons = validate(raw, key=b"bob@example.com").reasons
    assert any("bob@example.com" in r.message for r in reasons)  # what the reason says without pseudonyms
    key, letter, record = rejected(raw, b"bob@example.com", reasons)
    assert b"bob@example.com" not in letter and RAW.encode() not in letter
    assert key == pseudonym(KEY, "bob@example.com").encode()
    assert [r["code"] for r in record["reasons"]] == ["key_mismatch"]


def test_a_payload_that_does_not_parse_is_withheld():
    raw = b'{"user_id": "' + RAW.encode() + b'", "item_id": '
    key, letter, record = rejected(raw, RAW.encode(), validate(raw).reasons)
    assert RAW.encode() not in letter
    assert record["original_b64"] is None and record["withheld"] == ["original"] and "original_text" not in record
    assert record["reasons"][0]["code"] == "not_json"
    assert key == pseudonym(KEY, RAW).encode()


def test_a_payload_nested_too_deep_to_rewrite_is_withheld():
    """Found by the fuzzer (issue 12): orjson reads 1,024 levels but writes 254, so rewriting such an object with
    pseudonyms raised TypeError, and the worker would retry the record's batch for ever."""
    raw = b'{"user_id": "' + RAW.encode() + b'", "a": ' + b'{"a": ' * 300 + b"1" + b"}" * 301
    key, letter, record = rejected(raw, RAW.encode(), validate(raw).reasons)
    assert RAW.encode() not in letter
    assert record["original_b64"] is None and record["withheld"] == ["original"]
    assert record["pseudonymised"] == ["key"] and key == pseudonym(KEY, RAW).encode()


def test_a_key_that_is_not_text_is_withheld():
    raw = orjson.dumps(["a", "list"])
    key, _letter, record = rejected(raw, b"\xff\xfe", validate(raw).reasons)
    assert key is None and record["key_b64"] is None
    assert sorted(record["withheld"]) == ["key", "original"]


def test_doctests():
    import doctest

    import fusionrec.contracts.privacy

    assert doctest.testmod(fusionrec.contracts.privacy).failed == 0


def test_only_a_holder_of_the_key_can_mark_a_record_as_pseudonymised():
    from fusionrec.contracts.privacy import REDRIVEN_HEADER

    value = b'{"user_id": "p.0123"}'
    keyed = Pseudonymiser(KEY)
    assert keyed.tagged(value, [(REDRIVEN_HEADER, redrive_tag(KEY, value))])
    assert not keyed.tagged(value, [(REDRIVEN_HEADER, redrive_tag(OTHER, value))])  # another key's tag
    assert not keyed.tagged(value + b" ", [(REDRIVEN_HEADER, redrive_tag(KEY, value))])  # another value
    assert not keyed.tagged(value, [("other", redrive_tag(KEY, value))]) and not keyed.tagged(value, None)
    assert not Pseudonymiser(None).tagged(value, [(REDRIVEN_HEADER, redrive_tag(KEY, value))])

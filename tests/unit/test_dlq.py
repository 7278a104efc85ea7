"""What `fusionrec dlq redrive` would send for each kind of dead letter (a dry run: no broker)."""

from __future__ import annotations

import orjson

from fusionrec.consumers.dead_letters import DeadLetterEntry, parse_position, redrive, select
from fusionrec.contracts.dead_letters import dead_letter_record, pseudonymise_rejected
from fusionrec.contracts.events import validate
from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.settings import load_settings

KEY = "a unit test key, 16 chars or more"


def entry(raw: bytes, key: bytes | None, offset: int, *, hide: bool = False, max_bytes: int | None = None):
    reasons = validate(raw, key=key).reasons
    marks = None
    if hide:
        p = Pseudonymiser(KEY)
        raw, key, reasons, marks = pseudonymise_rejected(raw, key, reasons, p.user, p.session)
    value = dead_letter_record(
        raw, reasons, topic="events", partition=4, offset=90 + offset, key=key, privacy=marks, max_bytes=max_bytes
    )
    return DeadLetterEntry(0, offset, len(value), orjson.loads(value))


CLICK = orjson.dumps({"event_id": "e", "user_id": "u1", "item_id": "i", "type": "click", "ts": 1_700_000_000_000})


def test_positions_and_selection():
    assert parse_position("3:120") == (3, 120) and parse_position("120") == (None, 120)
    entries = [entry(CLICK, b"u1", n) for n in range(3)]
    assert [e.position for e in select(entries, ["0:2", "1"])] == ["0:2", "0:1"]
    assert select(entries, ["1:1"]) == []


def test_what_a_dry_run_would_send():
    conf = load_settings(topic_events="events", privacy_user_key=KEY)
    plain = entry(CLICK, b"u1", 0)
    hidden = entry(CLICK, b"u1", 1, hide=True)
    withheld = entry(b"not json", b"u1", 2, hide=True)
    cut = entry(b"x" * 5000, b"u1", 3, max_bytes=1200)
    results = redrive(conf, [plain, hidden, withheld, cut], dry_run=True)
    by_offset = {r.entry.offset: r for r in results}
    assert not any(r.sent for r in results)  # a dry run sends nothing
    assert by_offset[0].skipped is None and by_offset[0].partition is None  # placed by its raw key, as before
    assert by_offset[1].skipped is None and by_offset[1].partition == 4  # the user's partition, not the pseudonym's
    assert "does not hold the whole record (original)" in by_offset[2].skipped
    assert "partition 4 offset 92" in by_offset[2].skipped
    assert "original" in by_offset[3].skipped  # truncated
    keyless = redrive(load_settings(topic_events="events"), [hidden], dry_run=True)
    assert "FUSIONREC_PRIVACY_USER_KEY" in keyless[0].skipped

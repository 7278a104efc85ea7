"""The worker against seeded fuzzed messages mixed into valid events, on the real broker and Redis (issue 12: "0
acknowledged events lost or doubled across ... fuzzed messages mixed into valid ones"): CI's size of
``benchmarks/fault_fuzz.py``."""

from __future__ import annotations

import time

import orjson
import pytest
import redis

from tests.integration.fuzz_accounting import account, handle
from tests.integration.fuzzer import MUTATIONS, fuzz_messages, interleave
from tests.integration.workers import make_events

SEED = 12


@pytest.mark.parametrize("pseudonyms", [False, True], ids=["raw-ids", "pseudonyms"])
def test_fuzzed_messages_lose_and_double_nothing(worker_settings, tmp_path, pseudonyms):
    if pseudonyms:  # dead letters then keep a rewritten payload (another path: it raised on deep nesting)
        worker_settings = worker_settings.replace(privacy_user_key="fuzz-test-key-0123456789abcdef")
    events = make_events(5000, seed=SEED, start_ms=int(time.time() * 1000) - 120_000)
    fuzzed = fuzz_messages(events, 1000, SEED, max_bytes=worker_settings.event.max_bytes)
    assert {f.kind for f in fuzzed} == set(MUTATIONS)
    sent = interleave(events, fuzzed, SEED)

    metrics, _seconds = handle(worker_settings, sent, tmp_path)
    acc = account(worker_settings, sent)

    assert acc.examples == [], acc.examples  # what went wrong, if anything, before the counts (raw ids included)
    assert acc.on_topic == len(sent) and acc.topic_missing == acc.topic_extra == 0
    assert (acc.lost, acc.doubled, acc.dead_letters_lost, acc.dead_letters_doubled) == (0, 0, 0, 0)
    assert acc.wrongly_rejected == acc.reason_mismatches == acc.digest_mismatches == acc.dedup_mismatches == 0
    assert acc.unexpected_users == 0
    assert acc.raw_ids_in_dead_letters == 0, acc.examples
    assert acc.applied == acc.applied_expected >= len(events) - 100  # a fuzzed copy may come before its original
    rejected = sum(acc.rejected_expected.values())
    assert acc.valid + rejected == len(sent) and acc.dead_letters == rejected
    assert metrics["fusionrec_worker_events_total"] == acc.applied_expected
    assert metrics.get("fusionrec_worker_duplicates_skipped_total", 0) == acc.duplicates_expected
    assert metrics["fusionrec_worker_dead_letter_total"] == rejected
    assert metrics.get("fusionrec_worker_dead_letter_errors_total", 0) == 0
    # the fuzzer reached every reason the contract has (key_mismatch and bad_control included) and valid variants
    assert set(acc.rejected_expected) >= {
        "empty", "oversize", "bad_encoding", "not_json", "not_an_object", "unsupported_version", "missing_field",
        "wrong_type", "bad_value", "unknown_type", "ts_out_of_range", "key_mismatch", "bad_control",
    }  # fmt: skip
    assert sum(acc.valid_fuzzed.values()) > 100

    if not pseudonyms:  # the accounting sees a fault when there is one: one more view, one dedup window gone
        client = redis.Redis.from_url(worker_settings.redis.url)
        user = events[0].user_id
        counts, *rest = orjson.loads(client.get(worker_settings.redis.keys.profile(user)))
        code = next(iter(counts))
        client.set(worker_settings.redis.keys.profile(user), orjson.dumps([counts | {code: counts[code] + 1}, *rest]))
        client.delete(worker_settings.redis.keys.dedup(events[1].user_id))
        again = account(worker_settings, sent, idle_timeout=2)
        assert (again.doubled, again.lost, again.dedup_mismatches) == (1, 0, 1)


def test_the_fuzzer_is_seeded_and_sends_no_valid_control_record():
    from fusionrec.contracts.control import Control, parse_control

    events = make_events(200, seed=SEED, start_ms=1_764_000_000_000)
    first = fuzz_messages(events, 500, SEED, now_ms=1_764_000_000_000)
    assert first == fuzz_messages(events, 500, SEED, now_ms=1_764_000_000_000)
    assert first != fuzz_messages(events, 500, SEED + 1, now_ms=1_764_000_000_000)
    assert not any(f.value and isinstance(parse_control(f.value, f.key), Control) for f in first)
    assert interleave(events, first, SEED) == interleave(events, first, SEED)

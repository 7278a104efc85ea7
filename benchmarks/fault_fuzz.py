"""Fault: fuzzed messages mixed into a real replay (issue 12: "10,000 fuzzed messages mixed into 100,000 valid ones").

A private stack (Tansu + Redis on free loopback ports) and one real ``fusionrec worker``; the first ``--valid``
events of DATA with ``--fuzzed`` seeded fuzzed messages (tests/integration/fuzzer.py: byte flips, cuts and
insertions, invalid UTF-8, wrong types, missing / null / extra fields, absurd values, NaN tokens, deep nesting,
values around the size limits, duplicate JSON keys, record keys that are not the user, malformed control records)
at random positions, each keyed like the event it was made from. Once the worker has handled every record, the
topics and Redis are read back and every record accounted for (tests/integration/fuzz_accounting.py): each valid
event (fuzzed ones that happen to be valid included) applied exactly once or skipped as a duplicate of an applied
``event_id``, per user and type, with the dedup window as the reference keeps it; each rejected record on the
dead-letter topic exactly once, with the contract's reason codes.

    python benchmarks/fault_fuzz.py ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz \
        --valid 100000 --fuzzed 10000 --seed 12 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionrec.infra.admin import ensure_topics  # noqa: E402
from fusionrec.infra.stack import Stack, private_settings  # noqa: E402
from fusionrec.producers.datasets import read_dataset  # noqa: E402
from tests.integration.fuzz_accounting import Accounting, account, handle  # noqa: E402
from tests.integration.fuzzer import fuzz_messages, interleave  # noqa: E402


def table(acc: Accounting, sent, metrics: dict) -> str:
    kinds = Counter(kind for _k, _v, kind in sent)
    n_valid = kinds.pop("valid", 0)
    rows = [
        ("sent valid", n_valid),
        ("sent fuzzed", sum(kinds.values())),
        ("on the topic", acc.on_topic),
        ("valid events (fuzzed ones included)", acc.valid),
        ("  of them fuzzed", acc.valid - n_valid),
        ("applied (expected)", acc.applied_expected),
        ("applied (Redis profiles)", acc.applied),
        ("applied (worker metric)", int(metrics.get("fusionrec_worker_events_total", 0))),
        ("duplicates skipped (expected)", acc.duplicates_expected),
        ("duplicates skipped (worker metric)", int(metrics.get("fusionrec_worker_duplicates_skipped_total", 0))),
        ("rejected (expected)", sum(acc.rejected_expected.values())),
        ("dead-lettered (on the topic)", acc.dead_letters),
    ]
    rows += [(f"  {code}", n) for code, n in sorted(acc.rejected_expected.items())]
    rows += [
        ("lost: events (profiles short)", acc.lost),
        ("lost: dead letters", acc.dead_letters_lost),
        ("doubled: events (profiles over)", acc.doubled),
        ("doubled: dead letters", acc.dead_letters_doubled),
        ("wrongly rejected (dead letter of a valid record)", acc.wrongly_rejected),
        ("dead letters with other reason codes", acc.reason_mismatches),
        ("dead letters with another digest", acc.digest_mismatches),
        ("dedup windows unlike the reference", acc.dedup_mismatches),
        ("profiles of users never applied", acc.unexpected_users),
        ("dead letters holding a raw user id (pseudonyms on)", acc.raw_ids_in_dead_letters),
        ("sent, not on the topic / on it twice", f"{acc.topic_missing} / {acc.topic_extra}"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(
        f"{name:<{width}}  {value:>10,}" if isinstance(value, int) else f"{name:<{width}}  {value:>10}"
        for name, value in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--valid", type=int, default=100_000)
    parser.add_argument("--fuzzed", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument(
        "--privacy", action="store_true", help="with user pseudonyms on (FUSIONREC_PRIVACY_USER_KEY, a fixed test key)"
    )
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args()

    events = read_dataset(args.path, limit=args.valid).events
    tmp = Path(tempfile.mkdtemp(prefix="fault-fuzz-"))
    privacy = {"privacy_user_key": "fault-fuzz-key-0123456789abcdef"} if args.privacy else {}
    settings = private_settings(tmp / "state", topic_events_partitions=3, **privacy)
    fuzzed = fuzz_messages(events, args.fuzzed, args.seed, max_bytes=settings.event.max_bytes)
    sent = interleave(events, fuzzed, args.seed)
    stack = Stack(settings)
    stack.up()
    try:
        ensure_topics(settings)
        metrics, seconds = handle(settings, sent, tmp, stall_s=120.0)
        acc = account(settings, sent)
    finally:
        stack.down()
    print(f"{len(sent):,} records handled in {seconds:.1f} s (contended machine); worker log {tmp / 'worker.log'}")
    print(table(acc, sent, metrics))
    print("fuzzed records that were valid events, by mutation:", dict(sorted(acc.valid_fuzzed.items())))
    for line in acc.examples:
        print("  " + line)
    print(
        "CLEAN: 0 lost, 0 doubled, every rejection dead-lettered once with the contract's reasons"
        if acc.clean
        else "NOT CLEAN"
    )
    if args.json:
        figures = {k: dict(v) if isinstance(v, Counter) else v for k, v in vars(acc).items()} | {
            "seed": args.seed,
            "privacy": args.privacy,
            "sent_valid": args.valid,
            "sent_fuzzed": len(fuzzed),
            "fuzzed_by_mutation": dict(Counter(f.kind for f in fuzzed)),
            "fuzzed_valid": acc.valid - args.valid,
            "metric_applied": int(metrics.get("fusionrec_worker_events_total", 0)),
            "metric_duplicates": int(metrics.get("fusionrec_worker_duplicates_skipped_total", 0)),
            "metric_dead_letters": int(metrics.get("fusionrec_worker_dead_letter_total", 0)),
            "metric_dead_letter_errors": int(metrics.get("fusionrec_worker_dead_letter_errors_total", 0)),
            "seconds": round(seconds, 1),
            "clean": acc.clean,
        }
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    sys.exit(0 if acc.clean else 1)


if __name__ == "__main__":
    main()

"""Forgetting a user: every model's per-user state goes, the rest of the partition stays as it was."""

from __future__ import annotations

import random

import orjson
import pytest

from fusionrec.contracts.control import FORGET_USER, Control, control_record, parse_control
from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import load_settings
from fusionrec.models import SOURCES, Recommender
from fusionrec.streams.forget import forget_user_state
from fusionrec.streams.state import PartitionState, build_fusion, build_models, partition_clock

TYPES = ["view"] * 5 + ["add_to_cart", "favourite", "purchase", "rate"]
GONE = "forget-me-7"


def stream(n: int, seed: int, start: int = 0) -> list[tuple[Event, int]]:
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        user = GONE if i % 5 == 0 else f"u{rng.randrange(40)}"
        etype = rng.choice(TYPES)
        out.append(
            (
                Event(
                    f"e{i}",
                    user,
                    f"i{rng.randrange(60)}",
                    etype,
                    1_700_000_000_000 + 1000 * i,
                    session_id=f"s-{user}",
                    category_id=f"c{rng.randrange(6)}",
                    rating=4.0 if etype == "rate" else None,
                ),
                i,
            )
        )
    return out


def partition(sync_ms: int) -> PartitionState:
    settings = load_settings(ranker_device="cpu", model_item_sync_ms=sync_ms)
    state = PartitionState(0, build_models(settings, 0), build_fusion(settings, 0), clock=partition_clock(settings))
    events = stream(2100, seed=3)  # not a whole number of CF blocks (1024): some of the user's events wait in pending
    state.learn(events, events[-1][1])
    state.fusion.recommend(state.models, [GONE, "u1", "u2"], now_ms=state.clock_ms)  # served lists, learned pools
    state.changed[GONE] = [1]
    return state


def others(state: PartitionState) -> dict:
    users = [f"u{n}" for n in range(40)]
    return {name: [model.candidates(u, 5) for u in users] for name, model in state.models.items()}


def holds(state: PartitionState, user: str) -> dict[str, bool]:
    """Where the user appears: in each model's snapshot, the pending blocks, the fusion state, the work list."""
    out = {name: user.encode() in model.snapshot() for name, model in state.models.items()}
    out["pending"] = any(e.user_id == user for waiting in state.pending.values() for e in waiting)
    out["fusion"] = user.encode() in orjson.dumps(state.fusion.to_state())
    out["changed"] = user in state.changed
    return out


@pytest.mark.parametrize("sync_ms", [1000, 0], ids=["shared-item-side", "item-side-per-partition"])
def test_forget_removes_the_user_from_every_model_and_nothing_else(sync_ms):
    state = partition(sync_ms)
    before = holds(state, GONE)
    personal = {name for name, cls in SOURCES.items() if cls.personal}
    assert all(before[name] for name in personal) and before["pending"] and before["fusion"] and before["changed"]
    kept = others(state)
    state.dirty = False

    held = forget_user_state(state, GONE)

    assert set(held) >= personal | {"fusion", "changed", "pending:cf"}
    assert not any(holds(state, GONE).values())  # not in any snapshot blob: a restore cannot bring it back
    assert others(state) == kept  # the other users' lists are what they were
    assert state.dirty  # the next snapshot is taken without the user
    for name in personal:
        assert state.models[name].candidates(GONE, 5) == [], name
    assert state.fusion.segment(GONE) == "new"
    assert forget_user_state(state, GONE) == []  # a second time: nothing left


def test_a_forgotten_user_starts_afresh_and_restores_without_the_old_history():
    state = partition(1000)
    forget_user_state(state, GONE)
    later = [(e, o) for e, o in stream(40, seed=8, start=3000) if e.user_id == GONE][:3]
    state.learn(later, later[-1][1])
    restored = Recommender.restore(state.models["recent"].snapshot())
    assert {item for item, _ in restored.candidates(GONE, 50)} <= {e.item_id for e, _ in later}
    assert restored.history_size(GONE) <= len(later)


def test_every_personal_source_implements_forget_user():
    for name, cls in SOURCES.items():
        model = cls()
        model.learn_one(Event("e", "u", "i", "purchase", 1_700_000_000_000, category_id="c"))
        assert model.forget_user("u") is cls.personal, name
        assert model.forget_user("u") is False, name


# --- the control record ------------------------------------------------------------------------------------------


def test_a_forget_record_parses_and_is_keyed_by_its_user():
    raw = control_record("u-9", request_id="r-1", now_ms=1_700_000_000_000)
    assert parse_control(raw, b"u-9") == Control(FORGET_USER, "u-9", "r-1", 1_700_000_000_000)
    assert [r.code for r in parse_control(raw, b"u-8")] == ["key_mismatch"]
    assert [r.code for r in parse_control(raw, None)] == ["key_mismatch"]


@pytest.mark.parametrize(
    ("value", "codes"),
    [
        ({"control": "drop_table", "user_id": "u"}, ["bad_control"]),
        ({"control": FORGET_USER}, ["bad_control"]),
        ({"control": FORGET_USER, "user_id": 7}, ["bad_control"]),
        ({"control": FORGET_USER, "user_id": "u", "item_id": "i"}, ["bad_control"]),
        ({"control": FORGET_USER, "user_id": "u", "v": 2}, ["unsupported_version"]),
        ({"control": FORGET_USER, "user_id": "u", "requested_at": "now"}, ["bad_control"]),
        # found by the fuzzer (issue 12): these raised TypeError, and the worker retried their batch for ever
        ({"control": [FORGET_USER], "user_id": "u"}, ["bad_control"]),
        ({"control": {"kind": FORGET_USER}, "user_id": "u"}, ["bad_control"]),
        # the version is the integer 1, as for events
        ({"control": FORGET_USER, "user_id": "u", "v": True}, ["unsupported_version"]),
        ({"control": FORGET_USER, "user_id": "u", "v": 1.0}, ["unsupported_version"]),
    ],
)
def test_a_broken_control_record_has_reasons(value, codes):
    assert [r.code for r in parse_control(orjson.dumps(value), b"u")] == codes


def test_what_is_not_a_control_record():
    for raw in (b"not json", b"[1]", b'{"item_id": "control"}', b'{"event_id": "control"}'):
        assert parse_control(raw, b"u") is None

"""A partition's models are a function of its event sequence alone, however the stream is cut into batches."""

from __future__ import annotations

import random

import pytest

from fusionrec.contracts.events import Event
from fusionrec.contracts.settings import load_settings
from fusionrec.streams import state as state_module
from fusionrec.streams.state import PartitionState, build_models

TYPES = ["view"] * 6 + ["add_to_cart", "favourite", "purchase", "remove_from_cart"]


def stream(n: int, seed: int) -> list[tuple[Event, int]]:
    rng = random.Random(seed)
    return [
        (
            Event(
                f"e{i}",
                f"u{rng.randrange(80)}",
                f"i{rng.randrange(150)}",
                rng.choice(TYPES),
                1_700_000_000_000 + 1000 * i,
                category_id=f"c{rng.randrange(9)}",
            ),
            i,
        )
        for i in range(n)
    ]


def fingerprint(state: PartitionState) -> dict:
    return {name: [model.candidates(f"u{u}", 5) for u in range(80)] for name, model in state.models.items()}


def test_batching_does_not_change_what_the_models_learn(monkeypatch):
    monkeypatch.setattr(state_module, "EVICT_EVERY", 700)  # cross several eviction boundaries
    settings = load_settings(model_max_idle_s=60)  # 60 s of event time: eviction really drops state
    events = stream(3000, seed=4)
    whole = PartitionState(0, build_models(settings, 0))
    whole.learn(events, events[-1][1])
    rng = random.Random(9)
    cut = PartitionState(0, build_models(settings, 0))
    i = 0
    while i < len(events):
        n = rng.randrange(1, 400)
        cut.learn(events[i : i + n], events[min(i + n, len(events)) - 1][1])
        i += n
    assert whole.offset == cut.offset == 2999
    assert whole.evicted and whole.evicted == cut.evicted
    assert fingerprint(whole) == fingerprint(cut)
    assert {k: [e.event_id for e in v] for k, v in whole.pending.items()} == {
        k: [e.event_id for e in v] for k, v in cut.pending.items()
    }


def test_block_fed_model_waits_for_a_full_block():
    settings = load_settings()
    state = PartitionState(0, build_models(settings, 0))
    block = state.models["cf"].batch_size
    events = stream(block - 1, seed=1)
    state.learn(events, events[-1][1])
    assert len(state.pending["cf"]) == block - 1 and state.models["cf"].n_users == 0
    more = stream(block + 1, seed=2)[block - 1 :]
    state.learn([(e, o) for e, o in more], more[-1][1])
    assert len(state.pending["cf"]) == 1 and state.models["cf"].n_users > 0
    assert state.models["popular"].n_items > 0 and state.dirty


@pytest.mark.parametrize("offsets", [[5, 6, 7], [0]])
def test_offset_only_moves_forward(offsets):
    state = PartitionState(0, build_models(load_settings(), 0), offset=10)
    state.learn([], offsets[-1])
    assert state.offset == 10 and not state.dirty


def test_the_memory_caps_are_settings_every_model_keeps_to():
    """FUSIONREC_MODEL_MAX_USERS / _MAX_ITEMS reach every source and the fused recommender: past them, the least
    recently active users and items go, so the state of 5,000 users over 5,000 items stays within 64 of each."""
    from fusionrec.streams.state import build_fusion

    settings = load_settings(model_max_users=64, model_max_items=64)
    models = build_models(settings, 0)
    fusion = build_fusion(settings, 0)
    t0 = 1_700_000_000_000
    events = [Event(f"e{n}", f"u{n}", f"i{n}", "view", t0 + n, category_id=f"c{n % 7}") for n in range(5000)]
    for model in models.values():
        model.learn_many(events)
    fusion.learn_many(events)
    for name, model in models.items():
        assert model.n_users <= 64, name
        assert model.n_items <= 64, name
    assert fusion.n_users <= 64

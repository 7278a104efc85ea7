"""Replay pacing, on a clock the test controls."""

import pytest

from fusionrec.producers.replay import Pacer


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rate_spaces_events_evenly():
    pacer = Pacer(rate=20_000, clock=FakeClock())
    assert [pacer.due(i, 0) for i in (0, 1, 20_000)] == [0.0, 1 / 20_000, 1.0]


def test_speed_compresses_data_time():
    pacer = Pacer(speed=60, first_ts=1_000_000, clock=FakeClock())
    assert pacer.due(5, 1_000_000 + 3_600_000) == 60.0


def test_unpaced_is_always_due_and_never_sleeps():
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    assert pacer.due(10**6, 10**12) == 0.0
    assert pacer.wait(10**6, 10**12) == 0.0


def test_rate_and_speed_are_exclusive_and_positive():
    with pytest.raises(ValueError, match="not both"):
        Pacer(rate=1, speed=1)
    with pytest.raises(ValueError, match="positive"):
        Pacer(rate=0)

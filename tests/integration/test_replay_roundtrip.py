"""A replay round trip through the real broker: N rows in, exactly N events back, ids stable across replays."""

from __future__ import annotations

import gzip

import pytest

from fusionrec.consumers.reader import read_topic, summarize_events
from fusionrec.infra.admin import ensure_topics
from fusionrec.producers.datasets import read_dataset
from fusionrec.producers.producer import EventProducer
from fusionrec.producers.replay import replay_events
from tests.conftest import TAOBAO_SLICE

N = 5000


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory):
    if not TAOBAO_SLICE.exists():
        pytest.fail(f"shared Taobao slice not found at {TAOBAO_SLICE}")
    path = tmp_path_factory.mktemp("data") / "slice.csv"
    with gzip.open(TAOBAO_SLICE, "rt") as src:
        path.write_text("".join(next(src) for _ in range(N)))
    return path


def replay_into(settings, topic, path, **kwargs):
    dataset = read_dataset(path)
    producer = EventProducer(settings, topic=topic, validate=False)
    result = replay_events(dataset.events, producer, **kwargs)
    return dataset, result


def test_n_rows_in_n_events_back_with_stable_ids(settings, slice_file):
    ensure_topics(settings)
    second_topic = settings.topic.events + "-again"
    ensure_topics(settings.replace(topic_events=second_topic))

    dataset, result = replay_into(settings, settings.topic.events, slice_file, timestamps="original")
    assert (result.sent, result.delivered, result.failed, result.undelivered) == (N, N, 0, 0)
    _, again = replay_into(settings, second_topic, slice_file, rate=20_000)
    assert again.delivered == N

    first = summarize_events(read_topic(settings, settings.topic.events, idle_timeout=3))
    second = summarize_events(read_topic(settings, second_topic, idle_timeout=3))
    assert first.records == first.valid == N and first.duplicates == 0 and first.key_mismatches == 0
    assert second.records == second.valid == N
    assert first.event_ids == second.event_ids == {e.event_id for e in dataset.events}
    assert sum(first.by_type.values()) == N and first.by_type["view"] > first.by_type["purchase"] > 0


def test_rate_limit_holds(settings, slice_file):
    ensure_topics(settings)
    _, result = replay_into(settings, settings.topic.events, slice_file, rate=10_000)
    assert result.delivered == N
    assert result.seconds >= 0.45  # 5000 events at 10k/s cannot finish in under half a second

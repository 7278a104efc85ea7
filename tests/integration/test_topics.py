"""Topic creation against the real broker: layout, idempotence, mismatches reported."""

from fusionrec.contracts.topics import topic_specs
from fusionrec.infra.admin import describe_topics, ensure_topics


def test_topics_are_created_once_with_their_layout(settings):
    first = ensure_topics(settings)
    assert [(s.spec.role, s.created, s.partitions) for s in first] == [
        ("events", True, 3),
        ("dead_letter", True, 1),
        ("item_side", True, 1),
        ("recommendations", True, 3),
    ]
    assert {s.spec.role: s.config.get("cleanup.policy") for s in first} == {
        "events": "delete",
        "dead_letter": "delete",
        "item_side": "delete",
        "recommendations": "compact",
    }
    second = ensure_topics(settings)
    assert [s.created for s in second] == [False] * 4 and all(s.exists and not s.problems for s in second)


def test_partition_mismatch_is_reported_not_changed(settings):
    ensure_topics(settings)
    wanted = settings.replace(topic_events_partitions=5)
    events = [s for s in describe_topics(wanted, topic_specs(wanted)) if s.spec.role == "events"][0]
    assert events.partitions == 3
    assert any("fixed at creation" in p for p in events.problems)

"""Creating and describing fusionrec's topics (the layouts are in :mod:`fusionrec.contracts.topics`).

Partition counts are fixed at creation, so :func:`ensure_topics` reports an existing topic whose layout differs
instead of changing it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from fusionrec.contracts.settings import Settings
from fusionrec.contracts.topics import TopicSpec, topic_specs

__all__ = ["TopicState", "delete_topics", "describe_topics", "ensure_topics"]

log = logging.getLogger("fusionrec.infra.admin")


@dataclass
class TopicState:
    spec: TopicSpec
    exists: bool
    partitions: int | None
    created: bool = False
    config: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(settings.admin_config())


def describe_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 10.0
) -> list[TopicState]:
    """The current state of each topic in ``specs`` (default: all of fusionrec's)."""
    specs = specs if specs is not None else topic_specs(settings)
    admin = _admin(settings)
    metadata = admin.list_topics(timeout=timeout)
    states = []
    for spec in specs:
        meta = metadata.topics.get(spec.name)
        if meta is None or meta.error is not None:
            states.append(TopicState(spec, exists=False, partitions=None))
            continue
        state = TopicState(spec, exists=True, partitions=len(meta.partitions))
        if state.partitions != spec.partitions:
            state.problems.append(
                f"has {state.partitions} partitions, settings ask for {spec.partitions} "
                "(partition counts are fixed at creation; recreate the topic to change it)"
            )
        states.append(state)
    existing = [s for s in states if s.exists]
    if existing:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.spec.name) for s in existing]
        try:
            futures = admin.describe_configs(resources, request_timeout=timeout)
            for state, future in zip(existing, futures.values(), strict=True):
                entries = future.result(timeout=timeout)
                state.config = {k: v.value for k, v in entries.items() if k in state.spec.config}
                for key, want in state.spec.config.items():
                    if key in state.config and state.config[key] != want:
                        state.problems.append(f"{key}={state.config[key]}, expected {want}")
        except KafkaException as exc:  # describe is informative only
            log.warning("could not describe topic configs: %s", exc)
    return states


def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None, timeout: float = 15.0) -> list[TopicState]:
    """Create the topics that do not exist yet; leave existing ones as they are. Idempotent."""
    specs = specs if specs is not None else topic_specs(settings)
    states = describe_topics(settings, specs, timeout)
    missing = [s.spec for s in states if not s.exists]
    if missing:
        admin = _admin(settings)
        new = [
            NewTopic(spec.name, spec.partitions, settings.kafka.replication_factor, config=dict(spec.config))
            for spec in missing
        ]
        for name, future in admin.create_topics(new, request_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
                log.info("created topic %s", name)
            except KafkaException as exc:
                if exc.args and getattr(exc.args[0], "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                    continue
                raise
        created = {spec.name for spec in missing}
        states = describe_topics(settings, specs, timeout)
        for state in states:
            state.created = state.spec.name in created
    return states


def delete_topics(settings: Settings, names: list[str], timeout: float = 15.0) -> list[str]:
    """Delete ``names`` where they exist; return the names deleted. Raises if the broker refuses."""
    admin = _admin(settings)
    existing = set(admin.list_topics(timeout=timeout).topics)
    names = [name for name in names if name in existing]
    if not names:
        return []
    for name, future in admin.delete_topics(names, request_timeout=timeout).items():
        future.result(timeout=timeout)
        log.info("deleted topic %s", name)
    return names

"""The README's Python examples run, against the real broker, as written."""

from __future__ import annotations

from pathlib import Path

from fusionrec.infra.admin import ensure_topics
from tests.integration.examples import run_python_examples

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_examples_run(settings):
    ensure_topics(settings)
    env = {
        "FUSIONREC_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FUSIONREC_TOPIC_EVENTS": settings.topic.events,
        "FUSIONREC_REDIS_URL": settings.redis.url,
    }
    run_python_examples(README, env)

"""Fixtures for integration tests (the session stack itself is in tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest

from fusionrec.infra.admin import ensure_topics


@pytest.fixture
def worker_settings(settings):
    tag = uuid.uuid4().hex[:8]
    conf = settings.replace(redis_prefix=f"w{tag}:", worker_group=f"g-{tag}")
    ensure_topics(conf)
    return conf

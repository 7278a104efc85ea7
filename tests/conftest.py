"""Shared fixtures. Integration tests get a real Tansu broker and a real Redis on free loopback ports, started
once per session through the same :class:`fusionrec.infra.stack.Stack` that `fusionrec up` uses."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from fusionrec.contracts.settings import Settings
from fusionrec.infra.stack import Stack, free_port, private_settings

REPO = Path(__file__).resolve().parents[1]
#: The shared real data, found as `make` finds it (scripts/shared_data.sh: the variable, beside the checkout, or
#: beside the repository a temporary clone came from).
SHARED_DATA = Path(
    subprocess.run(["bash", str(REPO / "scripts" / "shared_data.sh")], capture_output=True, text=True).stdout.strip()
    or REPO.parent / "shared" / "data"
)
TAOBAO_SLICE = SHARED_DATA / "taobao-userbehavior-slice" / "UserBehavior_slice.csv.gz"


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess with its own state dir and free ports (no user config leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSIONREC_")}
    env |= {
        "FUSIONREC_STATE_DIR": str(tmp / "state"),
        "FUSIONREC_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "FUSIONREC_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    return env | extra


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """A running embedded broker + Redis for the whole session; stopped (by PID) at the end."""
    tmp = tmp_path_factory.mktemp("stack")
    settings = private_settings(
        tmp / "state",
    )
    stack = Stack(settings)
    services = stack.up()
    assert [s.state for s in services] == ["running", "running"], services
    yield stack
    stack.down()


@pytest.fixture
def settings(stack: Stack) -> Settings:
    """Settings pointing at the session stack, with topics unique to this test."""
    tag = uuid.uuid4().hex[:8]
    return stack.settings.replace(
        topic_events=f"t-{tag}-events",
        topic_dead_letter=f"t-{tag}-dlq",
        topic_recommendations=f"t-{tag}-recs",
        topic_events_partitions=3,
        topic_recommendations_partitions=3,
        kafka_client_id=f"fr-test-{tag}",
        worker_group=f"fr-test-{tag}",  # and so its own item-side topic
    )


def pytest_collection_modifyitems(items):
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/e2e/" in path:
            item.add_marker(pytest.mark.e2e)

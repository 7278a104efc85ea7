"""The README's Python examples run, against the real broker, as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fusionrec.infra.admin import ensure_topics

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_examples_run(settings, tmp_path):
    ensure_topics(settings)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python examples"
    env = {
        "FUSIONREC_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FUSIONREC_TOPIC_EVENTS": settings.topic.events,
        "FUSIONREC_REDIS_URL": settings.redis.url,
        "PATH": "/usr/bin:/bin",
    }
    for block in blocks:
        proc = subprocess.run(
            [sys.executable, "-c", block], env=env, cwd=README.parent, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"README example failed:\n{block}\n{proc.stderr}"

"""Layers point one way: the edges (producers, consumers) and the shared contracts import without Faust."""

import subprocess
import sys

import pytest

FORBIDDEN_FOR_EDGES = ("faust", "mode", "aiokafka", "torch")


@pytest.mark.parametrize("module", [
    "fusionrec.settings", "fusionrec.events", "fusionrec.topics", "fusionrec.stack", "fusionrec.cli",
    "producers.producer", "producers.datasets", "producers.replay", "consumers.reader",
])
def test_edges_do_not_pull_in_the_stream_framework(module):
    code = (f"import sys, {module}; bad = [m for m in {FORBIDDEN_FOR_EDGES!r} if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imports {out}"

"""Running the Python examples of a Markdown document, as a reader would paste them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def run_python_examples(doc: Path, env: dict[str, str]) -> list[str]:
    """Run every ```` ```python ```` block of ``doc`` in a fresh interpreter, in the document's folder, with only
    ``env`` (and a plain ``PATH``) set; fail on the first that exits non-zero; return their standard outputs."""
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert blocks, f"{doc.name} has no python example"
    outputs = []
    for block in blocks:
        proc = subprocess.run(
            [sys.executable, "-c", block],
            env={"PATH": "/usr/bin:/bin"} | env,
            cwd=doc.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"{doc.name} example failed:\n{block}\n{proc.stderr}"
        outputs.append(proc.stdout)
    return outputs

"""The wheel installs one import root, `fusionrec`, with the repository's top-level folders mapped into it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tracked files, so that the build leaves nothing in the checkout."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("fusionrec-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"fusionrec", next(t for t in tops if t.endswith(".dist-info"))}
    for module in (
        "fusionrec/models/cf.py",
        "fusionrec/streams/app.py",
        "fusionrec/consumers/client.py",
        "fusionrec/producers/producer.py",
        "fusionrec/contracts/settings.py",
        "fusionrec/apps/cli/__init__.py",
        "fusionrec/apps/serve/app.py",
    ):
        assert module in names


def test_a_fresh_venv_imports_the_mapped_packages_and_nothing_else(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    before = {p.name for p in site.iterdir()}
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    added = {p.name for p in site.iterdir()} - before
    assert {name for name in added if not name.endswith(".dist-info")} == {"fusionrec"}
    # The dependencies come from this environment's site-packages (PYTHONPATH skips its editable-install hook).
    deps = sysconfig.get_paths()["purelib"]
    code = (
        "import importlib.util, fusionrec.models, fusionrec.streams.state, fusionrec.consumers.client, "
        "fusionrec.producers.replay, fusionrec.apps.cli\n"
        "print(fusionrec.models.__file__)\n"
        "print([n for n in ('models', 'streams', 'consumers', 'producers') if importlib.util.find_spec(n)])"
    )
    out = subprocess.run(
        [python, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()
    assert out[0].startswith(str(site)), out
    assert out[1] == "[]"

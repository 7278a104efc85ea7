"""Layers point one way. Every module's imports are read from its source (top-level and function-level alike) and
each project import must point to the module's own layer or one below it:

    0 contracts   fusionrec.contracts (settings, event and recommendation schemas, Redis keys, topics)
    1 models      fusionrec.models (pure online recommenders, fusion, ranking)
    2 edges       fusionrec.stores, fusionrec.infra, fusionrec.producers, fusionrec.consumers
    3 worker      fusionrec.streams
    4 apps        fusionrec.apps (CLI, demo, offline evaluation)

Edges talk to Kafka and Redis but never load the stream framework; the contracts and edges import without it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Where each subpackage of the one import root lives in the repository.
PACKAGES = {
    "fusionrec": REPO / "fusionrec",
    "fusionrec.models": REPO / "models",
    "fusionrec.producers": REPO / "producers",
    "fusionrec.consumers": REPO / "consumers",
    "fusionrec.streams": REPO / "streams",
}
LAYERS = {
    "fusionrec.contracts": 0,
    "fusionrec.models": 1,
    "fusionrec.stores": 2,
    "fusionrec.infra": 2,
    "fusionrec.producers": 2,
    "fusionrec.consumers": 2,
    "fusionrec.streams": 3,
    "fusionrec.apps": 4,
}
#: Names that were top-level packages once; importing them bare would work only from a source checkout.
BARE = {"models", "streams", "consumers", "producers"}


def layer_of(module: str) -> int | None:
    if module == "fusionrec":
        return 0  # the root package holds only the version
    best = max(
        (prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len, default=None
    )
    return None if best is None else LAYERS[best]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "fusionrec" and parts and parts[0] in {"models", "producers", "consumers", "streams"}:
                continue
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
    return out


MODULES = project_modules()


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"modules outside every layer: {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = layer_of(module)
    wrong = []
    for line, target in imports_of(module, MODULES[module]):
        top = target.split(".")[0]
        if top in BARE:
            wrong.append(f"line {line}: bare `{target}` (use fusionrec.{target})")
        elif top == "fusionrec":
            theirs = layer_of(target)
            if theirs is None or theirs > own:
                wrong.append(f"line {line}: {target} (layer {theirs}) from layer {own}")
    assert not wrong, f"{module} imports upwards:\n  " + "\n  ".join(wrong)


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fusionrec.streams.app import create_worker\n    import models.cf\n")
    found = imports_of("fusionrec.models.bad", bad)
    assert (2, "fusionrec.streams.app") in found and (3, "models.cf") in found
    assert layer_of("fusionrec.streams.app") > layer_of("fusionrec.models.bad")


FORBIDDEN_FOR_EDGES = ("faust", "mode", "aiokafka", "torch")


@pytest.mark.parametrize(
    "module",
    [
        "fusionrec.contracts.settings",
        "fusionrec.contracts.events",
        "fusionrec.contracts.topics",
        "fusionrec.contracts.recommendations",
        "fusionrec.contracts.keys",
        "fusionrec.infra.admin",
        "fusionrec.infra.stack",
        "fusionrec.stores.profiles",
        "fusionrec.apps.cli",
        "fusionrec.producers.producer",
        "fusionrec.producers.datasets",
        "fusionrec.producers.replay",
        "fusionrec.consumers.reader",
    ],
)
def test_edges_do_not_pull_in_the_stream_framework(module):
    code = f"import sys, {module}; bad = [m for m in {FORBIDDEN_FOR_EDGES!r} if m in sys.modules]; print(','.join(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imports {out}"


def test_contracts_import_nothing_else_of_the_project():
    code = (
        "import sys, fusionrec.contracts.settings, fusionrec.contracts.events, fusionrec.contracts.topics, "
        "fusionrec.contracts.recommendations, fusionrec.contracts.keys; "
        "print(','.join(sorted(m for m in sys.modules if m.startswith('fusionrec.') "
        "and not m.startswith('fusionrec.contracts'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""

"""The examples in the models' docstrings run (they are documentation, so they must stay true)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fusionrec.models

MODULES = [
    "fusionrec.models",
    *sorted(m.name for m in pkgutil.walk_packages(fusionrec.models.__path__, "fusionrec.models.")),
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no examples"

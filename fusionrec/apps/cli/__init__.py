"""The ``fusionrec`` command line: thin wrappers that parse flags, build settings and call the library.

One module per group of commands (``stack``, ``data``, ``worker``, ``lists``, ``serve``); importing them registers their
commands on the one Typer app of :mod:`fusionrec.apps.cli._app`. Libraries are imported inside the commands, so
``fusionrec --help`` starts fast and the CLI loads neither Faust nor torch until a command needs them.
"""

from __future__ import annotations

from importlib import import_module

from fusionrec.apps.cli._app import app

#: Imported in this order, so that ``--help`` lists the commands from starting the stack to evaluating.
COMMAND_MODULES = ("stack", "data", "worker", "lists", "serve", "privacy")
for _name in COMMAND_MODULES:
    import_module(f"{__name__}.{_name}")

__all__ = ["app", "main"]


def main() -> None:
    app()

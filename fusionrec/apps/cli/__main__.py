"""``python -m fusionrec.apps.cli``: the same as the ``fusionrec`` command."""

from fusionrec.apps.cli import main

main()

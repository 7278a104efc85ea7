"""Makes the editable install import another checkout: ``FR_REVISION_TREE=/path/to/worktree`` with this directory on
``PYTHONPATH`` maps every ``fusionrec.*`` package to that tree instead of this one (child processes inherit both,
so a worker started by a benchmark runs the same revision). Used by ``benchmarks/compare_revisions.sh``."""

import os

_tree = os.environ.get("FR_REVISION_TREE")
if _tree:
    try:
        import __editable___fusionrec_0_1_0_finder as _finder
    except ImportError:  # not an editable install: PYTHONPATH alone decides
        pass
    else:
        _root = os.path.dirname(_finder.MAPPING["fusionrec"])
        for _name, _path in list(_finder.MAPPING.items()):
            _finder.MAPPING[_name] = _tree + _path[len(_root) :]

"""Reading a model snapshot's payload safely: a pickle of plain containers and numpy arrays, nothing else.

:meth:`Recommender.snapshot <fusionrec.models.base.Recommender.snapshot>` writes a magic line, a JSON header and
this payload; :meth:`~fusionrec.models.base.Recommender.restore` checks the header, then reads the payload with
:func:`load_payload`, whose unpickler refuses every global but the few that numpy arrays and deques need.

>>> import pickle
>>> load_payload(pickle.dumps({"params": {}, "state": {"x": [1, 2]}}), "Popularity")
({}, {'x': [1, 2]})
>>> load_payload(pickle.dumps({"params": {}, "state": print}), "Popularity")
Traceback (most recent call last):
    ...
fusionrec.models._snapshot.SnapshotError: snapshot payload refers to builtins.print, which a model snapshot never holds

"""

from __future__ import annotations

import inspect
import io
import pickle
from typing import Any, TypeVar

__all__ = ["SnapshotError", "find_subclass", "load_payload"]

T = TypeVar("T", bound=type)


class SnapshotError(ValueError):
    """A snapshot could not be restored: not a model snapshot, another model's, or an unsupported format version."""


class _StateUnpickler(pickle.Unpickler):
    """Reads containers and numpy arrays only; any other global in the payload is refused."""

    _ALLOWED = frozenset(
        {
            ("numpy", "dtype"),
            ("numpy", "ndarray"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("collections", "deque"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise SnapshotError(f"snapshot payload refers to {module}.{name}, which a model snapshot never holds")
        return super().find_class(module, name)


def load_payload(data: bytes, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(params, state)`` pickled in ``data``, the payload of a snapshot of model ``name``.

    Raises
    ------
    SnapshotError
        If the payload refers to a forbidden global, or is truncated or corrupt.

    """
    try:
        payload = _StateUnpickler(io.BytesIO(data)).load()
        return payload["params"], payload["state"]
    except SnapshotError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupted payload can raise almost anything from pickle
        raise SnapshotError(f"corrupt {name} snapshot payload: {exc}") from None


def find_subclass(root: T, name: str) -> T | None:
    """The concrete subclass of ``root`` (or ``root`` itself) called ``name``, if one is defined."""
    pending = [root]
    while pending:
        klass = pending.pop()
        if klass.__name__ == name and not inspect.isabstract(klass):
            return klass
        pending.extend(klass.__subclasses__())
    return None

"""Read ``.npy`` files without running code from them.

Cellpose's GUI saves its results (``<name>_seg.npy``) as a pickled dict, and
``np.load(..., allow_pickle=True)`` runs whatever a pickle asks for: a crafted
file can execute a command.  :func:`load_npy` unpickles with an allow-list of
the only things such a file needs (numpy arrays, dtypes and scalars, builtin
containers), and refuses anything else with an error that names the file.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["UnsafePickleError", "load_npy"]

#: (module, name) pairs a pickled ``_seg.npy`` may refer to; numpy 1.x wrote ``numpy.core``
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
} | {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "complex", "slice",
                               "bytearray", "range")}
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}
_RENAMED = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric"}


class UnsafePickleError(ValueError):
    """A pickled ``.npy`` file refers to something other than arrays and builtin containers."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        module = _RENAMED.get(module, module)
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"{self.source}: refused to load: the pickle asks for {module}.{name}, which a "
                "Cellpose _seg.npy never holds (only numpy arrays, dtypes, scalars and builtin "
                "containers are allowed); the file may be crafted to run code"
            )
        if module.startswith("numpy._core"):  # numpy < 2 has no numpy._core
            import importlib

            try:
                importlib.import_module(module)
            except ImportError:
                module = module.replace("numpy._core", "numpy.core")
        return super().find_class(module, name)


def load_npy(path: str | os.PathLike, *, allow_pickle: bool = True):
    """``np.load`` for one ``.npy`` file, with pickled content read through an allow-list.

    Parameters
    ----------
    path : str or pathlib.Path
    allow_pickle : bool
        False refuses object arrays altogether (as ``np.load`` does).

    Returns
    -------
    ndarray

    Raises
    ------
    UnsafePickleError
        The pickle refers to anything but numpy arrays, dtypes, scalars and builtin containers.
    ValueError
        Not a ``.npy`` file, or object arrays with ``allow_pickle=False``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(f"{tmp}/a_seg.npy", {"masks": np.eye(2, dtype=np.uint16), "diameter": 30.0})
    ...     sorted(load_npy(f"{tmp}/a_seg.npy").item())
    ['diameter', 'masks']
    """
    path = Path(path)
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version not in _HEADER_READERS:
            raise ValueError(f"{path}: .npy format version {version} is not supported")
        shape, fortran, dtype = _HEADER_READERS[version](fh)
        if not dtype.hasobject:
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        if not allow_pickle:
            raise ValueError(f"{path}: holds pickled objects and allow_pickle is False")
        data = fh.read()
    array = _RestrictedUnpickler(io.BytesIO(data), path).load()
    if not isinstance(array, np.ndarray):
        raise UnsafePickleError(f"{path}: the pickle holds a {type(array).__name__}, not an array")
    return array

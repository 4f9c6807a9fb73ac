"""The optional ``bioimageio`` extra, imported on demand with a clear error when it is missing."""

from __future__ import annotations

import importlib

INSTALL_HINT = "install the bioimageio extra: pip install 'cellpose-nb[bioimageio]'"


def require(module: str = "bioimageio.spec"):
    """Import ``module`` of the bioimageio extra, or raise an ImportError that says how to install it.

    Examples
    --------
    >>> require("bioimageio.not_a_module")
    Traceback (most recent call last):
    ...
    ImportError: bioimageio.not_a_module is missing; install the bioimageio extra: pip install 'cellpose-nb[bioimageio]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is missing; {INSTALL_HINT}") from err

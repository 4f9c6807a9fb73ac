"""The argument order of the previous release, still accepted with a warning.

:func:`~cellpose_nb.predict.run_net`, :func:`~cellpose_nb.predict.predict_flows`
and :func:`~cellpose_nb.predict.estimate_diameter` took ``(model, data)``; they
now take the data first, as :func:`~cellpose_nb.predict.segment` does.  For one
release the old order is swapped back with a ``DeprecationWarning``; remove this
module (and its three calls) in the next one.
"""

from __future__ import annotations

import warnings

import torch


def _data_first(data, model, *, func, data_name):
    """``(data, model)``, swapped (with a DeprecationWarning) when called the old way round.

    The old order is recognised by a ``torch.nn.Module`` first and something
    else second; ``stacklevel`` points the warning at the caller of ``func``.
    """
    if isinstance(data, torch.nn.Module) and not isinstance(model, torch.nn.Module):
        warnings.warn(f"{func}(model, {data_name}) is deprecated and will stop working in the "
                      f"next release; call {func}({data_name}, model, ...)",
                      DeprecationWarning, stacklevel=3)
        return model, data
    return data, model

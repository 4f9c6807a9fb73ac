"""How a training run computes: mixed precision per device, and torch's thread count.

The weights, the loss and the optimizer stay float32; only the network's
forward pass runs under ``torch.autocast`` with the dtype of
:func:`amp_dtype`.
"""

from __future__ import annotations

import contextlib

import torch

from cellpose_nb.train.config import TrainConfig

__all__ = ["AMP_DTYPES", "cpu_has_bfloat16_units", "amp_dtype"]

#: Mixed precision: the autocast dtype per device type.  No autocast on mps.  On
#: the CPU, bfloat16 convolutions are fast only where the CPU has bfloat16 matrix
#: units (Intel AMX); there ``TrainConfig(amp=None)`` uses them (see
#: :func:`cpu_has_bfloat16_units`; benchmarks/train_vs_cellpose.py measures it).
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}


def cpu_has_bfloat16_units() -> bool:
    """True when this CPU has bfloat16 matrix units (Intel AMX tiles).

    Elsewhere (AVX2 laptops, Apple silicon, AMD before Zen 5) bfloat16
    convolutions are emulated and can be slower than float32.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private API: absent in other torch versions
        return False


def amp_dtype(config: TrainConfig, device_type: str):
    """The autocast dtype a training run uses on ``device_type``, None for float32.

    ``config.amp``: True -> ``AMP_DTYPES[device_type]`` (none on mps), False ->
    float32, None -> float16 on cuda, bfloat16 on a CPU with bfloat16 units
    (:func:`cpu_has_bfloat16_units`), float32 otherwise.

    Examples
    --------
    >>> amp_dtype(TrainConfig(), "cuda"), amp_dtype(TrainConfig(), "mps")
    (torch.float16, None)
    >>> amp_dtype(TrainConfig(amp=True), "cpu"), amp_dtype(TrainConfig(amp=False), "cuda")
    (torch.bfloat16, None)
    >>> amp_dtype(TrainConfig(), "cpu") == (torch.bfloat16 if cpu_has_bfloat16_units() else None)
    True
    """
    if config.amp is None:
        amp = device_type == "cuda" or (device_type == "cpu" and cpu_has_bfloat16_units())
    else:
        amp = bool(config.amp)
    return AMP_DTYPES.get(device_type) if amp else None


@contextlib.contextmanager
def _torch_threads(n):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)

"""How a training run computes: mixed precision per device, and torch's thread count.

On the CPU, mixed precision (bfloat16) is on by default where the CPU computes
bfloat16 natively, as its instruction-set flags say (AMX or AVX512-BF16).

The weights, the loss and the optimizer stay float32; only the network's
forward pass runs under ``torch.autocast`` with the dtype of
:func:`amp_dtype`.
"""

from __future__ import annotations

import contextlib

import torch

from cellpose_nb.train.config import TrainConfig

__all__ = ["AMP_DTYPES", "BFLOAT16_ISA", "cpu_bfloat16_isa", "cpu_has_bfloat16_units", "amp_dtype",
           "precision_reason"]

#: Mixed precision: the autocast dtype per device type.  No autocast on mps.  On
#: the CPU, bfloat16 convolutions are fast only where the CPU computes bfloat16
#: natively (see :func:`cpu_bfloat16_isa`); there ``TrainConfig(amp=None)`` uses
#: them (benchmarks/train_vs_cellpose.py and benchmarks/precision.py measure it).
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}
#: the instruction-set extensions that compute bfloat16 natively, best first, with
#: torch's probe of each (oneDNN uses them for bfloat16 convolutions)
BFLOAT16_ISA = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}


def cpu_bfloat16_isa() -> str | None:
    """The first extension of ``BFLOAT16_ISA`` this CPU has, or None.

    Intel AMX (Sapphire Rapids and later) and AVX512-BF16 (Cooper Lake, AMD
    Zen 4 and later) compute bfloat16 dot products in hardware; elsewhere
    (AVX2 laptops and servers, Apple silicon) bfloat16 convolutions are
    emulated and slower than float32.  Decided by the ISA flags, not by a
    vendor or a model name.

    >>> cpu_bfloat16_isa() in (None, *BFLOAT16_ISA)
    True
    """
    for name, probe in BFLOAT16_ISA.items():
        try:
            if getattr(torch.cpu, probe)():
                return name
        except (AttributeError, RuntimeError):  # private API: absent in other torch versions
            continue
    return None


def cpu_has_bfloat16_units() -> bool:
    """True when this CPU computes bfloat16 natively (:func:`cpu_bfloat16_isa`)."""
    return cpu_bfloat16_isa() is not None


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


def precision_reason(config: TrainConfig, device_type: str) -> str:
    """Why :func:`amp_dtype` chose what it chose, in words (kept in ``training.json``).

    >>> precision_reason(TrainConfig(amp=False), "cpu")
    'float32: amp=False'
    >>> precision_reason(TrainConfig(), "cuda")
    'float16 autocast: the default on cuda'
    """
    dtype = amp_dtype(config, device_type)
    name = "float32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    if config.amp is not None:
        return f"{name}: amp={config.amp}"
    if device_type != "cpu":
        return f"{name}: the default on {device_type}"
    isa = cpu_bfloat16_isa()
    if isa is None:
        return f"{name}: this CPU has none of {', '.join(BFLOAT16_ISA)} (bfloat16 would be emulated)"
    return f"{name}: this CPU has {isa}"


@contextlib.contextmanager
def _torch_threads(n):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)

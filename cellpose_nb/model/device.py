"""Where the network runs: the torch device, chosen at call time, and its memory layout."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Pick a torch device at call time.

    Parameters
    ----------
    device : str, torch.device or None
        None or ``"auto"``: cuda if available, else mps, else cpu.
        A string such as ``"cpu"`` or ``"cuda:1"`` is checked for availability.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; expected e.g. 'auto', 'cpu', "
                         "'cuda', 'cuda:0' or 'mps'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but torch.cuda.is_available() "
                         "is False")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but torch.backends.mps.is_available() is False")
    return device


def fast_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout in which the network runs fastest on its device.

    :meth:`CellposeUNet.forward` applies it to its input, so every caller
    gets it.  On the CPU and on cuda that is channels-last (NHWC): oneDNN's and cuDNN's
    convolutions then need no reordering, and the layout propagates through
    the whole network (weights stay as they are).  Values are equal to
    float32 rounding (benchmarks/README.md has the speed-ups).  Other
    devices get ``x`` unchanged.

    Examples
    --------
    >>> fast_layout(torch.zeros(2, 2, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    True
    """
    if x.ndim == 4 and x.device.type in ("cpu", "cuda"):
        return x.contiguous(memory_format=torch.channels_last)
    return x

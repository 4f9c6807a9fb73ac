"""Cellpose interop: CPnet parameter names, CPnet state dicts and weight files, cellpose's own model.

Our parameter names are chosen for reading (``encoder.0.convs.1.norm.weight``);
:func:`to_cellpose_keys` and :func:`from_cellpose_keys` translate them to and from
CPnet's names (``downsample.down.res_down_0.conv.conv_1.0.weight``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from .device import resolve_device
from .download import CELLPOSE_FILES, find_cellpose_weights
from .folder import _load_checked, _read_weights
from .network import DIAM_MEAN, CellposeUNet, ModelConfig
from .record import check_number

# Cellpose ignores the diam_mean stored in its built-in files and uses these values.
CELLPOSE_DIAM_MEAN = {"cyto3": DIAM_MEAN, "cyto2": DIAM_MEAN, "cyto": DIAM_MEAN, "nuclei": 17.0}
CELLPOSE_STYLE_WIDTH = 256  # cellpose.core.run_net stores styles in arrays this wide

# --- CPnet parameter names ------------------------------------------------------------
# (ours, CPnet's) prefixes; {i} is the scale, {j} the convolution inside a block.
_CELLPOSE_NAMES = (
    ("encoder.{i}.shortcut.norm.", "downsample.down.res_down_{i}.proj.0."),
    ("encoder.{i}.shortcut.conv.", "downsample.down.res_down_{i}.proj.1."),
    ("encoder.{i}.convs.{j}.norm.", "downsample.down.res_down_{i}.conv.conv_{j}.0."),
    ("encoder.{i}.convs.{j}.conv.", "downsample.down.res_down_{i}.conv.conv_{j}.2."),
    ("decoder.{i}.shortcut.norm.", "upsample.up.res_up_{i}.proj.0."),
    ("decoder.{i}.shortcut.conv.", "upsample.up.res_up_{i}.proj.1."),
    ("decoder.{i}.convs.0.norm.", "upsample.up.res_up_{i}.conv.conv_0.0."),
    ("decoder.{i}.convs.0.conv.", "upsample.up.res_up_{i}.conv.conv_0.2."),
    ("decoder.{i}.convs.{j}.block.norm.", "upsample.up.res_up_{i}.conv.conv_{j}.conv.0."),
    ("decoder.{i}.convs.{j}.block.conv.", "upsample.up.res_up_{i}.conv.conv_{j}.conv.2."),
    ("decoder.{i}.convs.{j}.style_proj.", "upsample.up.res_up_{i}.conv.conv_{j}.full."),
    ("head.norm.", "output.0."),
    ("head.conv.", "output.2."),
)
_CELLPOSE_EXTRA_KEYS = ("diam_mean", "diam_labels")  # CPnet parameters that are not weights


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(pattern + r"(?P<rest>\w+)")


def _rename(key: str, to_cellpose: bool) -> str:
    for ours, theirs in _CELLPOSE_NAMES:
        source, target = (ours, theirs) if to_cellpose else (theirs, ours)
        match = _template_regex(source).fullmatch(key)
        if match:
            groups = match.groupdict()
            return target.format(**groups) + groups["rest"]
    kind = "CellposeUNet" if to_cellpose else "CPnet"
    raise KeyError(f"{key!r} is not a {kind} parameter name")


def to_cellpose_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our state-dict keys to CPnet's (values untouched).

    Examples
    --------
    >>> list(to_cellpose_keys({"encoder.0.convs.1.norm.weight": None}))
    ['downsample.down.res_down_0.conv.conv_1.0.weight']
    """
    return {_rename(k, True): v for k, v in state_dict.items()}


def from_cellpose_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename CPnet's state-dict keys to ours; ``diam_mean``/``diam_labels`` are dropped.

    Examples
    --------
    >>> list(from_cellpose_keys({"output.2.bias": None, "diam_mean": None}))
    ['head.conv.bias']
    """
    return {_rename(k, False): v for k, v in state_dict.items()
            if k not in _CELLPOSE_EXTRA_KEYS}


def to_cellpose_state_dict(model: CellposeUNet) -> dict[str, torch.Tensor]:
    """CPnet state dict of ``model`` (CPU, float32), with ``diam_mean`` and ``diam_labels``.

    Examples
    --------
    >>> sd = to_cellpose_state_dict(CellposeUNet(ModelConfig(features=(8, 16))))
    >>> sd["diam_mean"], sd["output.2.weight"].shape
    (tensor([30.]), torch.Size([3, 8, 1, 1]))
    """
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
             for k, v in to_cellpose_keys(model.state_dict()).items()}
    state["diam_mean"] = torch.tensor([model.config.diam_mean], dtype=torch.float32)
    diam_labels = model.record.diam_labels  # None: the config's diam_mean (ModelRecord)
    diam_labels = model.config.diam_mean if diam_labels is None else diam_labels
    state["diam_labels"] = torch.tensor([float(diam_labels)], dtype=torch.float32)
    return state


def _cellpose_config(state_dict: Mapping[str, torch.Tensor], diam_mean: float) -> ModelConfig:
    """Read the architecture off the weight shapes of a CPnet state dict."""
    first = "downsample.down.res_down_0.proj.1.weight"
    if first not in state_dict or "output.2.weight" not in state_dict:
        raise ValueError(f"not a Cellpose CPnet state dict: no {first!r} or 'output.2.weight' "
                         f"(first keys: {list(state_dict)[:3]})")
    for key in (first, "output.2.weight", "downsample.down.res_down_0.conv.conv_0.2.weight"):
        shape = tuple(state_dict[key].shape) if key in state_dict else None
        if shape is None or len(shape) != 4:  # the shapes the architecture is read from
            raise ValueError(f"{key} must be a convolution weight (out, in, k, k); got "
                             f"{'none' if shape is None else f'shape {shape}'}")
    features, i = [], 0
    while f"downsample.down.res_down_{i}.proj.1.weight" in state_dict:
        features.append(state_dict[f"downsample.down.res_down_{i}.proj.1.weight"].shape[0])
        i += 1
    return ModelConfig(
        n_channels=state_dict[first].shape[1], features=tuple(features),
        n_out=state_dict["output.2.weight"].shape[0],
        kernel_size=state_dict["downsample.down.res_down_0.conv.conv_0.2.weight"].shape[-1],
        diam_mean=diam_mean)


def from_cellpose_state_dict(state_dict: Mapping[str, torch.Tensor], *,
                             diam_mean: float | None = None) -> CellposeUNet:
    """Build a CellposeUNet from a CPnet state dict (architecture read from the shapes).

    Parameters
    ----------
    state_dict : mapping
        As saved by ``CPnet.save_model``.
    diam_mean : float, optional
        Overrides the stored ``diam_mean`` (Cellpose does so for its built-in
        models); the default is the stored value, else 30.

    Returns
    -------
    CellposeUNet
        On the CPU, in eval mode, ``diam_labels`` set from the file when present.

    Examples
    --------
    >>> net = CellposeUNet(ModelConfig(features=(8, 16), diam_mean=17.0))
    >>> from_cellpose_state_dict(to_cellpose_state_dict(net)).config == net.config
    True
    """
    if diam_mean is None:
        diam_mean = _stored_diameter(state_dict, "diam_mean") if "diam_mean" in state_dict \
            else DIAM_MEAN
    model = CellposeUNet(_cellpose_config(state_dict, diam_mean))
    _load_checked(model, from_cellpose_keys(state_dict), "Cellpose state dict")
    if "diam_labels" in state_dict:
        model.record = model.record.replace(diam_labels=_stored_diameter(state_dict,
                                                                         "diam_labels"))
    return model.eval()


def _stored_diameter(state_dict: Mapping[str, torch.Tensor], key: str) -> float:
    """The diameter (px) a CPnet state dict stores as ``key``: a one-element tensor,
    finite and > 0 (CPnet keeps ``diam_mean`` and ``diam_labels`` as parameters)."""
    value = state_dict[key]
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{key} must hold one number of pixels; got {shape}")
    number = float(value.reshape(-1)[0])
    check_number(key, number, low=0, open_low=True)
    return number


# --- CPnet weight files ---------------------------------------------------------------
def load_cellpose_weights(path_or_name: str | os.PathLike, *,
                          device: str | torch.device | None = None) -> CellposeUNet:
    """Load an official Cellpose 3 CPnet weight file, by path or by model name.

    Parameters
    ----------
    path_or_name : str or path
        A file saved by ``CPnet.save_model``, or one of ``CELLPOSE_FILES``
        (found or downloaded by :func:`find_cellpose_weights`).
    device : str or torch.device, optional
        See :func:`resolve_device`.

    Returns
    -------
    CellposeUNet
        In eval mode; ``config.diam_mean`` and ``diam_labels`` from the file,
        except that for a name ``diam_mean`` is Cellpose's built-in value
        (17 for nuclei, 30 otherwise), as Cellpose itself does.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> net = CellposeUNet(ModelConfig(features=(8, 16)))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = export_cellpose_weights(net, pathlib.Path(tmp) / "mine")
    ...     load_cellpose_weights(path).config.features
    (8, 16)
    """
    diam_mean = None
    path = Path(path_or_name)
    if isinstance(path_or_name, str) and path_or_name in CELLPOSE_FILES and not path.exists():
        path = find_cellpose_weights(path_or_name)
        diam_mean = CELLPOSE_DIAM_MEAN[path_or_name]
    elif not path.is_file():
        raise FileNotFoundError(f"no weights file {path}; give a path or one of "
                                f"{list(CELLPOSE_FILES)}")
    state = _read_weights(path)
    try:
        model = from_cellpose_state_dict(state, diam_mean=diam_mean)
    except (KeyError, ValueError) as err:  # not CPnet's names, shapes or diameters
        raise ValueError(f"{path}: {err}") from err
    return model.to(resolve_device(device))


def export_cellpose_weights(model: CellposeUNet, path: str | os.PathLike, *,
                            overwrite: bool = False) -> Path:
    """Write a CPnet state dict that ``cellpose.models.CellposeModel(pretrained_model=path)``
    (cellpose 3.1) loads, with ``diam_mean`` and ``diam_labels``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = export_cellpose_weights(CellposeUNet(), pathlib.Path(tmp) / "cp_model")
    ...     sorted(torch.load(path, weights_only=True))[:2]
    ['diam_labels', 'diam_mean']
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_cellpose_state_dict(model), path)
    return path


# --- cellpose's own model, for comparisons --------------------------------------------
def cellpose_reference_model(path: str | os.PathLike, *, mkldnn: bool | None = None):
    """cellpose 3.1's own ``CellposeModel`` running the CPnet weight file ``path``, any widths.

    ``CellposeModel(pretrained_model=path)`` only builds Cellpose's default widths
    (32-256); this builds a ``CPnet`` of the file's widths (read by
    :func:`load_cellpose_weights`), pads its style with zeros to the 256 values
    that ``cellpose.core.run_net`` expects (which changes nothing else: styles
    are only normalised and returned), and sets ``diam_mean``/``diam_labels``
    from the file.  For side-by-side comparisons (benchmarks, the evaluation
    notebook, ``scripts/report_nuclei.py``); needs the optional ``cellpose``
    package (the ``reference`` extra).

    Parameters
    ----------
    path : path
        A file written by :func:`export_cellpose_weights` or ``CPnet.save_model``.
    mkldnn : bool, optional
        Passed to ``CPnet``; None: what ``CellposeModel`` detects.
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference package's import-time noise
            from cellpose import models, resnet_torch
    except ImportError as err:
        raise ImportError("cellpose_reference_model needs the reference package: "
                          "pip install cellpose==3.1.1.2") from err
    config = load_cellpose_weights(path, device="cpu").config

    class PaddedStyle(resnet_torch.CPnet):
        def forward(self, x):
            y, style = super().forward(x)[:2]
            return y, F.pad(style, (0, CELLPOSE_STYLE_WIDTH - style.shape[1]))

    reference = models.CellposeModel(gpu=False, diam_mean=config.diam_mean,
                                     nchan=config.n_channels)
    reference.net = PaddedStyle([config.n_channels, *config.features], config.n_out,
                                config.kernel_size,
                                mkldnn=reference.mkldnn if mkldnn is None else mkldnn,
                                max_pool=True, diam_mean=config.diam_mean)
    reference.net.load_model(str(path), device=torch.device("cpu"))
    reference.net.eval()
    reference.diam_mean = float(reference.net.diam_mean.item())
    reference.diam_labels = float(reference.net.diam_labels.item())
    return reference

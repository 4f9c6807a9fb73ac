"""The Cellpose 1.0 residual U-Net in PyTorch, its config, save/load and Cellpose interop.

The network is architecturally identical to ``cellpose.resnet_torch.CPnet``
(``nbase=[2, 32, 64, 128, 256]``, ``nout=3``, ``sz=3``, ``max_pool=True``):
with the same weights it gives the same outputs.  Our parameter names are
chosen for reading (``encoder.0.convs.1.norm.weight``); :func:`to_cellpose_keys`
and :func:`from_cellpose_keys` translate them to and from CPnet's names
(``downsample.down.res_down_0.conv.conv_1.0.weight``).

Anatomy, for the default ``features=(32, 64, 128, 256)`` and an input of
shape (B, 2, H, W)::

    encoder.0  DownBlock   2 ->  32   (B,  32, H,   W)
    encoder.1  DownBlock  32 ->  64   (B,  64, H/2, W/2)   after a 2x2 max-pool
    encoder.2  DownBlock  64 -> 128   (B, 128, H/4, W/4)
    encoder.3  DownBlock 128 -> 256   (B, 256, H/8, W/8)
    style      mean over pixels of encoder.3, L2-normalised   (B, 256)
    decoder.3  UpBlock   256 -> 256   (B, 256, H/8, W/8)   its own skip is encoder.3
    decoder.2  UpBlock   256 -> 128   (B, 128, H/4, W/4)   after 2x nearest upsampling
    decoder.1  UpBlock   128 ->  64   (B,  64, H/2, W/2)
    decoder.0  UpBlock    64 ->  32   (B,  32, H,   W)
    head       ConvBlock 1x1  32 -> 3 (B,   3, H,   W)   5*d_row, 5*d_col, cellprob logit

Skip connections are added, not concatenated, and the style vector is
projected and added to the input of every up-block convolution but the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ModelConfig",
    "ConvBlock",
    "StyleConvBlock",
    "DownBlock",
    "UpBlock",
    "StyleVector",
    "CellposeUNet",
    "OUTPUT_CHANNELS",
    "resolve_device",
    "fast_layout",
    "count_parameters",
    "feature_map_shapes",
    "save",
    "load",
    "load_pretrained",
    "to_cellpose_keys",
    "from_cellpose_keys",
    "to_cellpose_state_dict",
    "from_cellpose_state_dict",
    "export_cellpose_weights",
    "load_cellpose_weights",
    "cellpose_reference_model",
    "find_cellpose_weights",
    "download_weights",
    "verify_cached",
    "cache_dir",
]

# --- constants, each named once -----------------------------------------------------
BN_EPS = 1e-5  # BatchNorm epsilon of CPnet
BN_MOMENTUM = 0.05  # BatchNorm running-stat momentum of CPnet (PyTorch's default is 0.1)
OUTPUT_CHANNELS = ("d_row", "d_col", "cellprob")  # meaning of y[:, 0], y[:, 1], y[:, 2]

FORMAT_NAME = "cellpose_nb.model"  # written into config.json and the safetensors metadata
FORMAT_VERSION = 1  # bump when the folder layout or the parameter names change
WEIGHTS_FILE = "weights.safetensors"
TORCH_WEIGHTS_FILES = ("weights.pt", "weights.pth")  # also read by load(), never written
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.json"
THRESHOLDS_FILE = "thresholds.json"
INPUT_FILE = "input.json"  # how images become network input: {"channels": [...], "invert": ...}
PRETRAINED_DIR = Path(__file__).parent / "pretrained"  # package data: pretrained/<name>/

CELLPOSE_MODEL_URL = "https://www.cellpose.org/models"  # as cellpose.models._MODEL_URL
# model name -> file name on the Cellpose server (cellpose.models.model_path)
CELLPOSE_FILES = {
    "cyto3": "cyto3",
    "cyto2": "cyto2torch_0",
    "cyto": "cytotorch_0",
    "nuclei": "nucleitorch_0",
}
# Cellpose ignores the diam_mean stored in its built-in files and uses these values.
DIAM_MEAN = 30.0  # mean cell diameter (px) a model expects unless told (Cellpose's cyto models)
CELLPOSE_DIAM_MEAN = {"cyto3": 30.0, "cyto2": 30.0, "cyto": 30.0, "nuclei": 17.0}
# file name -> SHA-256 hex digest; only digests checked against a real download belong
# here (none yet: this was written offline).  Without an entry nothing is verified.
KNOWN_SHA256: dict[str, str] = {}


# --- configuration ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`CellposeUNet` (saved as ``config.json``).

    Examples
    --------
    >>> ModelConfig(features=(16, 32, 64, 128)).features
    (16, 32, 64, 128)
    """

    n_channels: int = 2  # input channels: cytoplasm + nuclei (zeros when absent)
    features: tuple[int, ...] = (32, 64, 128, 256)  # widths of the encoder scales
    n_out: int = 3  # output maps: FLOW_SCALE*d_row, FLOW_SCALE*d_col, cellprob logit
    kernel_size: int = 3  # size of the square convolution kernels (odd)
    diam_mean: float = DIAM_MEAN  # mean cell diameter (px) the model expects; nuclei 17

    def __post_init__(self):
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        object.__setattr__(self, "diam_mean", float(self.diam_mean))
        if self.n_channels < 1 or self.n_out < 1 or not self.features:
            raise ValueError(f"invalid ModelConfig {self}: need n_channels, n_out >= 1 "
                             "and at least one feature width")
        if min(self.features) < 1:
            raise ValueError(f"features must be positive, got {self.features}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        if not self.diam_mean > 0:
            raise ValueError(f"diam_mean must be > 0 pixels, got {self.diam_mean}")

    @property
    def size_multiple(self) -> int:
        """H and W of an input must be multiples of this (one halving per scale)."""
        return 2 ** (len(self.features) - 1)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of the fields."""
        return {**dataclasses.asdict(self), "features": list(self.features)}

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
        return cls(**d)


# --- building blocks ----------------------------------------------------------------
class ConvBlock(nn.Module):
    """Pre-activation convolution: BatchNorm -> ReLU (optional) -> Conv2d, same size.

    CPnet's ``batchconv`` (with ReLU) and ``batchconv0`` (without).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int
        Odd; padding keeps H and W.
    relu : bool
        False for the 1x1 projection shortcut of the residual blocks.

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).

    Examples
    --------
    >>> ConvBlock(2, 8, 3)(torch.zeros(1, 2, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 relu: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.relu:
            x = F.relu(x)
        return self.conv(x)


class StyleConvBlock(nn.Module):
    """Add a linear projection of the style vector to every pixel, then a ConvBlock.

    CPnet's ``batchconvstyle``.  Shapes: x (B, C, H, W), style (B, S) -> (B, C, H, W).

    Examples
    --------
    >>> block = StyleConvBlock(8, 4, 3)
    >>> block(torch.zeros(1, 8, 5, 5), torch.zeros(1, 4)).shape
    torch.Size([1, 8, 5, 5])
    """

    def __init__(self, channels: int, style_channels: int, kernel_size: int):
        super().__init__()
        self.style_proj = nn.Linear(style_channels, channels)
        self.block = ConvBlock(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.block(x + self.style_proj(style)[:, :, None, None])


class DownBlock(nn.Module):
    """Two residual units of two ConvBlocks; the first unit changes the width,
    so its shortcut is a 1x1 ConvBlock without ReLU (CPnet's ``resdown``).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).

    Examples
    --------
    >>> DownBlock(2, 8, 3)(torch.zeros(1, 2, 4, 4)).shape
    torch.Size([1, 8, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.shortcut = ConvBlock(in_channels, out_channels, 1, relu=False)
        widths = [in_channels, out_channels, out_channels, out_channels]
        self.convs = nn.ModuleList(ConvBlock(w, out_channels, kernel_size) for w in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.convs[1](self.convs[0](x))
        return x + self.convs[3](self.convs[2](x))


class UpBlock(nn.Module):
    """Residual up block (CPnet's ``resup``): like DownBlock, but the encoder
    features of the same scale (``skip``) are added after the first convolution
    and the style is added before the other three.

    Shapes: x (B, in_channels, H, W), skip (B, out_channels, H, W),
    style (B, S) -> (B, out_channels, H, W).

    Examples
    --------
    >>> up = UpBlock(8, 4, 8, 3)
    >>> up(torch.zeros(1, 8, 4, 4), torch.zeros(1, 4, 4, 4), torch.zeros(1, 8)).shape
    torch.Size([1, 4, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, style_channels: int,
                 kernel_size: int):
        super().__init__()
        self.shortcut = ConvBlock(in_channels, out_channels, 1, relu=False)
        self.convs = nn.ModuleList([
            ConvBlock(in_channels, out_channels, kernel_size),
            *(StyleConvBlock(out_channels, style_channels, kernel_size) for _ in range(3)),
        ])

    def forward(self, x: torch.Tensor, skip: torch.Tensor,
                style: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.convs[1](self.convs[0](x) + skip, style)
        return x + self.convs[3](self.convs[2](x, style), style)


class StyleVector(nn.Module):
    """Global average of the deepest features, divided by its L2 norm (CPnet's ``make_style``).

    Shapes: (B, C, H, W) -> (B, C).  As in Cellpose there is no epsilon:
    all-zero features give NaN.

    Examples
    --------
    >>> StyleVector()(torch.ones(1, 4, 2, 2))
    tensor([[0.5000, 0.5000, 0.5000, 0.5000]])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        style = x.mean(dim=(2, 3))
        return style / style.square().sum(dim=1, keepdim=True).sqrt()


# --- the network --------------------------------------------------------------------
class CellposeUNet(nn.Module):
    """Residual U-Net of Cellpose 1.0, equal to ``cellpose.resnet_torch.CPnet``.

    Parameters
    ----------
    config : ModelConfig, optional
        Defaults to ``ModelConfig()`` (the Cellpose architecture).

    Attributes
    ----------
    config : ModelConfig
    diam_labels : float
        Mean diameter (px) of the training masks before rescaling; set by
        training or loading, ``config.diam_mean`` until then.
    thresholds : dict or None
        Tuned post-processing thresholds read by :func:`load`.
    training_record : dict or None
        Training history read by :func:`load`.
    input_recipe : dict or None
        How images were turned into network input for training, e.g.
        ``{"channels": ["gray", None], "invert": "auto"}``: the defaults of
        :func:`cellpose_nb.predict.segment` for this model.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
    >>> y, style = net(torch.rand(1, 2, 8, 8))
    >>> tuple(y.shape), tuple(style.shape)
    ((1, 3, 8, 8), (1, 16))
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        config = ModelConfig() if config is None else config
        self.config = config
        self.diam_labels = config.diam_mean
        self.thresholds = None
        self.training_record = None
        self.input_recipe = None
        k, feats = config.kernel_size, config.features
        widths_in = (config.n_channels, *feats)  # CPnet's nbase
        self.encoder = nn.ModuleList(
            DownBlock(widths_in[i], widths_in[i + 1], k) for i in range(len(feats)))
        self.style = StyleVector()
        widths_up = (*feats, feats[-1])  # CPnet's nbaseup: the deepest block keeps its width
        self.decoder = nn.ModuleList(
            UpBlock(widths_up[i + 1], widths_up[i], feats[-1], k) for i in range(len(feats)))
        self.head = ConvBlock(feats[0], config.n_out, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict flows and cell probability.

        Parameters
        ----------
        x : torch.Tensor
            (B, n_channels, H, W), H and W multiples of ``config.size_multiple``.

        Returns
        -------
        y : torch.Tensor
            (B, n_out, H, W): ``FLOW_SCALE * d_row``, ``FLOW_SCALE * d_col``,
            cellprob logit (see ``OUTPUT_CHANNELS``).
        style : torch.Tensor
            (B, features[-1]), unit L2 norm, before its projections.
        """
        self._check_input(x)
        x = fast_layout(x)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        style = self.style(skips[-1])
        # the deepest up block gets the deepest features as both input and skip
        x = self.decoder[-1](skips[-1], skips[-1], style)
        for i in reversed(range(len(self.decoder) - 1)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.decoder[i](x, skips[i], style)
        return self.head(x), style

    def _check_input(self, x: torch.Tensor) -> None:
        shape, m = tuple(x.shape), self.config.size_multiple
        if x.ndim != 4 or shape[1] != self.config.n_channels:
            raise ValueError(f"input shape {shape}: expected (B, {self.config.n_channels}, H, W)")
        if shape[2] % m or shape[3] % m:
            raise ValueError(f"input shape {shape}: H and W must be multiples of {m} "
                             f"(2**(len(features)-1)); pad the image, e.g. to "
                             f"({-(-shape[2] // m) * m}, {-(-shape[3] // m) * m})")


# --- small utilities ----------------------------------------------------------------
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
    the whole network (weights stay as they are).  On this project's 2-core
    CPU it made a forward pass of the 16-128 network on 224 x 224 tiles
    1.2-1.6x faster and a training step of the default network (8 crops of
    224) 1.0-1.2x faster; values are equal to float32 rounding.  Other
    devices get ``x`` unchanged.

    Examples
    --------
    >>> fast_layout(torch.zeros(2, 2, 8, 8)).is_contiguous(memory_format=torch.channels_last)
    True
    """
    if x.ndim == 4 and x.device.type in ("cpu", "cuda"):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters.

    Examples
    --------
    >>> count_parameters(ConvBlock(2, 4, 1))
    16
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def feature_map_shapes(config: ModelConfig,
                       input_shape: tuple[int, int, int, int]) -> list[tuple[str, tuple]]:
    """Shape of the activations after every stage, for a (B, C, H, W) input.

    Runs the network on PyTorch's ``meta`` device: no memory, no arithmetic.

    Returns
    -------
    list of (str, tuple)
        ``("input", ...)``, ``("encoder.i", ...)``, ``("style", ...)``,
        ``("decoder.i", ...)`` (deepest first), ``("head", ...)``, in execution order.

    Examples
    --------
    >>> for name, shape in feature_map_shapes(ModelConfig(features=(8, 16)), (1, 2, 8, 8)):
    ...     print(name, shape)
    input (1, 2, 8, 8)
    encoder.0 (1, 8, 8, 8)
    encoder.1 (1, 16, 4, 4)
    style (1, 16)
    decoder.1 (1, 16, 4, 4)
    decoder.0 (1, 8, 8, 8)
    head (1, 3, 8, 8)
    """
    with torch.device("meta"):
        model = CellposeUNet(config).eval()
    shapes = [("input", tuple(input_shape))]
    for name, module in model.named_children():
        stages = module.named_children() if isinstance(module, nn.ModuleList) else [("", module)]
        for index, stage in stages:
            label = f"{name}.{index}" if index else name
            stage.register_forward_hook(
                lambda _m, _inp, out, label=label: shapes.append((label, tuple(out.shape))))
    with torch.no_grad():
        model(torch.empty(input_shape, device="meta"))
    return shapes


# --- CPnet parameter names ----------------------------------------------------------
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
    state["diam_labels"] = torch.tensor([float(model.diam_labels)], dtype=torch.float32)
    return state


def _cellpose_config(state_dict: Mapping[str, torch.Tensor], diam_mean: float) -> ModelConfig:
    """Read the architecture off the weight shapes of a CPnet state dict."""
    first = "downsample.down.res_down_0.proj.1.weight"
    if first not in state_dict or "output.2.weight" not in state_dict:
        raise ValueError(f"not a Cellpose CPnet state dict: no {first!r} or 'output.2.weight' "
                         f"(first keys: {list(state_dict)[:3]})")
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
        diam_mean = float(state_dict["diam_mean"][0]) if "diam_mean" in state_dict else DIAM_MEAN
    model = CellposeUNet(_cellpose_config(state_dict, diam_mean))
    _load_checked(model, from_cellpose_keys(state_dict), "Cellpose state dict")
    if "diam_labels" in state_dict:
        model.diam_labels = float(state_dict["diam_labels"][0])
    return model.eval()


# --- reading weights ----------------------------------------------------------------
def _load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source) -> None:
    """load_state_dict with errors that name the key, the source and both shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{source}: keys do not match the model; missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    for key in expected:  # in model order, so the first mismatch reported is the shallowest
        value = state_dict[key]
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)} but the model "
                             f"expects {tuple(expected[key].shape)}; the weights belong to "
                             f"another architecture than {getattr(model, 'config', '')}")
    model.load_state_dict(dict(state_dict))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a torch state dict (weights_only) as {name: tensor}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load(path.read_bytes())
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # each format has its own errors; all mean "not weights"
        raise ValueError(f"{path} is not a readable model weights file (corrupt, truncated "
                         f"or another format): {type(err).__name__}: {err}") from err
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{path} does not hold a state dict of named tensors "
                         f"(got {type(state).__name__})")
    return dict(state)


# --- our folder format --------------------------------------------------------------
def _to_json(obj) -> str:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)

    def default(o):  # numpy scalars/arrays and tensors
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    return json.dumps(obj, indent=2, default=default)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def save(model: CellposeUNet, folder: str | os.PathLike, *, training_record=None,
         thresholds: Mapping[str, float] | None = None, overwrite: bool = False,
         dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model`` to a folder: weights.safetensors, config.json, [training.json,
    thresholds.json, input.json (``model.input_recipe``)].

    Parameters
    ----------
    model : CellposeUNet
    folder : path
        Created if needed.
    training_record : dict or dataclass, optional
        Written to training.json.
    thresholds : dict, optional
        Tuned thresholds, written to thresholds.json.
    overwrite : bool
        Without it an existing target file raises FileExistsError and nothing is
        written.  With it, a stale training.json/thresholds.json that this call
        does not replace is deleted, so that :func:`load` cannot pick it up.
    dtype : torch.dtype or str, optional
        Storage dtype of the floating-point weights, e.g. ``torch.float16`` to
        halve the file; :func:`load` returns float32 parameters either way.

    Returns
    -------
    Path
        The folder.

    Examples
    --------
    >>> import tempfile
    >>> net = CellposeUNet(ModelConfig(features=(8, 16)))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = save(net, tmp, thresholds={"cellprob": 0.0})
    ...     load(tmp).thresholds
    {'cellprob': 0.0}
    """
    folder = Path(folder)
    storage = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if dtype is not None and not (isinstance(storage, torch.dtype) and storage.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float16, "
                         f"got {dtype!r}")
    extras = {TRAINING_FILE: training_record, THRESHOLDS_FILE: thresholds,
              INPUT_FILE: getattr(model, "input_recipe", None)}
    targets = [WEIGHTS_FILE, CONFIG_FILE] + [f for f, v in extras.items() if v is not None]
    if not overwrite:
        for name in targets:
            if (folder / name).exists():
                raise FileExistsError(f"{folder / name} exists; pass overwrite=True to replace it")
    folder.mkdir(parents=True, exist_ok=True)

    import safetensors.torch

    state = {k: v.detach().to("cpu", storage if storage and v.is_floating_point() else v.dtype)
             .contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, folder / WEIGHTS_FILE, metadata={
        "format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
    (folder / CONFIG_FILE).write_text(_to_json({
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(), "diam_labels": float(model.diam_labels)}))
    for name, value in extras.items():
        if value is not None:
            (folder / name).write_text(_to_json(value))
        elif overwrite:
            (folder / name).unlink(missing_ok=True)
    return folder


def load(folder: str | os.PathLike, *, device: str | torch.device | None = None) -> CellposeUNet:
    """Read a model folder written by :func:`save` (eval mode, on ``device``).

    Also reads ``weights.pt``/``weights.pth`` state dicts (``weights_only=True``)
    when there is no ``weights.safetensors``.

    Returns
    -------
    CellposeUNet
        With ``thresholds``, ``training_record`` and ``input_recipe`` set (None
        when absent).

    Raises
    ------
    FileNotFoundError
        Missing folder, config.json or weights file.
    ValueError
        Unreadable config or weights, or weights of another architecture.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE}, so it is not a model folder "
                                f"written by cellpose_nb.model.save (it holds "
                                f"{sorted(p.name for p in folder.iterdir())})")
    meta = _read_json(config_path)
    if not isinstance(meta, dict) or "config" not in meta:
        raise ValueError(f"{config_path} has no 'config' entry")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {meta['format_version']}, newer "
                         f"than this cellpose_nb reads ({FORMAT_VERSION}); upgrade cellpose_nb")
    config = ModelConfig.from_dict(meta["config"])
    candidates = [folder / n for n in (WEIGHTS_FILE, *TORCH_WEIGHTS_FILES)]
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has no weights file ({WEIGHTS_FILE})")
    model = CellposeUNet(config)
    _load_checked(model, _read_weights(weights), weights)
    model.diam_labels = float(meta.get("diam_labels", config.diam_mean))
    for attribute, name in (("training_record", TRAINING_FILE), ("thresholds", THRESHOLDS_FILE),
                            ("input_recipe", INPUT_FILE)):
        path = folder / name
        setattr(model, attribute, _read_json(path) if path.is_file() else None)
    return model.to(resolve_device(device)).eval()


def load_pretrained(name: str = "nuclei", *,
                    device: str | torch.device | None = None) -> CellposeUNet:
    """Load a model shipped with the package, from ``cellpose_nb/pretrained/<name>/``.

    Raises FileNotFoundError listing the available names when ``name`` is absent.
    """
    folder = PRETRAINED_DIR / name
    if not (folder / CONFIG_FILE).is_file():
        available = sorted(p.parent.name for p in PRETRAINED_DIR.glob(f"*/{CONFIG_FILE}"))
        raise FileNotFoundError(
            f"no pretrained model {name!r} in {PRETRAINED_DIR}; available: "
            f"{available or 'none yet'}. For the official Cellpose weights use "
            f"load_cellpose_weights({name!r})")
    return load(folder, device=device)


# --- Cellpose 3 weight files --------------------------------------------------------
def cache_dir() -> Path:
    """Where downloaded weights go: ``$CELLPOSE_NB_CACHE`` or ``~/.cellpose_nb/models``.

    Examples
    --------
    >>> cache_dir().name
    'models'
    """
    env = os.environ.get("CELLPOSE_NB_CACHE")
    return Path(env) if env else Path.home() / ".cellpose_nb" / "models"


def _cellpose_dir() -> Path:
    """Where cellpose keeps weights: ``$CELLPOSE_LOCAL_MODELS_PATH`` or ~/.cellpose/models."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


def _sidecar(path: Path) -> Path:
    """``<file>.sha256``: the digest of a downloaded file, written next to it."""
    return path.with_name(path.name + ".sha256")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_cached(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """Check a cached weight file against ``sha256``, else against its ``.sha256`` sidecar.

    The sidecar is written by :func:`download_weights`, so a file that was
    truncated or changed after its download is caught before it is loaded.
    A file with neither (copied by hand) is accepted as it is.

    Raises
    ------
    ValueError
        The digest differs; the message names the file.  Nothing is deleted.
    """
    path = Path(path)
    expected, source = sha256, "the published digest"
    if expected is None and _sidecar(path).is_file():
        expected = (_sidecar(path).read_text().split() or ["(empty)"])[0]
        source = f"{_sidecar(path).name}, written when it was downloaded"
    if expected is not None and _file_sha256(path) != expected.lower():
        raise ValueError(f"{path} does not match {source} (sha256 {expected}): the file is "
                         f"corrupt or was changed. Delete it (and {_sidecar(path).name}) to "
                         "download it again")
    return path


def download_weights(url: str, path: str | os.PathLike, *, sha256: str | None = None,
                     timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``path`` (via a ``.part`` file), checking SHA-256 if given.

    The digest of what was downloaded is written to ``<path>.sha256``, which
    :func:`verify_cached` checks each time the cached file is used.  A
    progress bar (tqdm) shows the bytes received.

    Raises
    ------
    ConnectionError
        The download failed (no network, server error); names the URL and ``path``.
    ValueError
        The checksum differs; the file is not kept.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
            headers = getattr(response, "headers", None)
            size = int(headers.get("Content-Length") or 0) if headers is not None else 0
            with tqdm(total=size or None, unit="B", unit_scale=True, leave=False,
                      desc=f"downloading {path.name}", disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as err:  # URLError, HTTPError, timeouts are OSErrors
        part.unlink(missing_ok=True)
        raise ConnectionError(
            f"could not download {url} to {path}: {err}. This needs network access; "
            f"without it, copy the file to {path} by hand (or set CELLPOSE_NB_CACHE to a "
            f"folder that holds it)") from err
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        part.unlink()
        raise ValueError(f"checksum mismatch for {url}: expected sha256 {sha256}, got "
                         f"{digest.hexdigest()}; the download was discarded")
    part.replace(path)
    _sidecar(path).write_text(f"{digest.hexdigest()}  {path.name}\n")
    return path


def find_cellpose_weights(name: str, *, download: bool = True) -> Path:
    """Path of the official Cellpose weights ``name`` (``cyto3``, ``cyto2``, ``cyto``, ``nuclei``).

    Looks in :func:`cache_dir`, then in cellpose's own folder (``~/.cellpose/models``);
    otherwise downloads from ``CELLPOSE_MODEL_URL`` into :func:`cache_dir`.
    """
    if name not in CELLPOSE_FILES:
        raise ValueError(f"unknown Cellpose model {name!r}; expected one of {list(CELLPOSE_FILES)}")
    filename = CELLPOSE_FILES[name]
    for folder in (cache_dir(), _cellpose_dir()):
        if (folder / filename).is_file():
            return verify_cached(folder / filename, KNOWN_SHA256.get(filename))
    target = cache_dir() / filename
    if not download:
        raise FileNotFoundError(f"Cellpose weights {name!r} not found in {cache_dir()} or "
                                f"{_cellpose_dir()}")
    return download_weights(f"{CELLPOSE_MODEL_URL}/{filename}", target,
                            sha256=KNOWN_SHA256.get(filename))


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
    except (KeyError, ValueError) as err:
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


CELLPOSE_STYLE_WIDTH = 256  # cellpose.core.run_net stores styles in arrays this wide


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

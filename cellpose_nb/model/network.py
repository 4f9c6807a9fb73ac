"""The Cellpose 1.0 residual U-Net in PyTorch: its config, its building blocks, the network.

Architecturally identical to ``cellpose.resnet_torch.CPnet`` (``nbase=[2, 32, 64, 128, 256]``,
``nout=3``, ``sz=3``, ``max_pool=True``): with the same weights it gives the same outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .device import fast_layout
from .record import ModelRecord

BN_EPS = 1e-5  # BatchNorm epsilon of CPnet
BN_MOMENTUM = 0.05  # BatchNorm running-stat momentum of CPnet (PyTorch's default is 0.1)
OUTPUT_CHANNELS = ("d_row", "d_col", "cellprob")  # meaning of y[:, 0], y[:, 1], y[:, 2]
DIAM_MEAN = 30.0  # mean cell diameter (px) a model expects unless told (Cellpose's cyto models)


# --- configuration --------------------------------------------------------------------
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


# --- building blocks ------------------------------------------------------------------
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


# --- the network ----------------------------------------------------------------------
class CellposeUNet(nn.Module):
    """Residual U-Net of Cellpose 1.0, equal to ``cellpose.resnet_torch.CPnet``.

    Parameters
    ----------
    config : ModelConfig, optional
        Defaults to ``ModelConfig()`` (the Cellpose architecture).

    Attributes
    ----------
    config : ModelConfig
    record : ModelRecord
        Everything the model knows besides its weights (training record,
        tuned thresholds, size model, input recipe, ``diam_labels``); written
        and read by :func:`~cellpose_nb.model.save` and :func:`~cellpose_nb.model.load`.
        Empty but for ``diam_labels = config.diam_mean`` until then.  Frozen:
        change it with ``net.record = net.record.replace(thresholds=...)``.

    Notes
    -----
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

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
    >>> y, style = net(torch.rand(1, 2, 8, 8))
    >>> tuple(y.shape), tuple(style.shape)
    ((1, 3, 8, 8), (1, 16))
    >>> net.record
    ModelRecord(diam_labels=30.0, input_recipe=None, thresholds=None, size_model=None, training=None)
    """

    record: ModelRecord

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        config = ModelConfig() if config is None else config
        self.config = config
        self.record = ModelRecord(diam_labels=config.diam_mean)
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
        skips = self._encode(x)
        style = self.style(skips[-1])
        # the deepest up block gets the deepest features as both input and skip
        x = self.decoder[-1](skips[-1], skips[-1], style)
        for i in reversed(range(len(self.decoder) - 1)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.decoder[i](x, skips[i], style)
        return self.head(x), style

    def encode_style(self, x: torch.Tensor) -> torch.Tensor:
        """The style vector alone: the encoder and the style, without the decoder.

        The same (B, features[-1]) as ``forward(x)[1]`` at about half the cost
        (the decoder's full-resolution blocks are skipped): what the size model
        needs to estimate the cells' diameter.

        >>> _ = torch.manual_seed(0)
        >>> net = CellposeUNet(ModelConfig(features=(8, 16))).eval()
        >>> x = torch.rand(2, 2, 16, 16)
        >>> torch.equal(net.encode_style(x), net(x)[1])
        True
        """
        return self.style(self._encode(x)[-1])

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's output at every scale (the decoder's skips), finest first."""
        self._check_input(x)
        x = fast_layout(x)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        return skips

    def with_diam_mean(self, diam_mean: float) -> CellposeUNet:
        """A copy with the same weights that expects cells of ``diam_mean`` px.

        For fine-tuning at a new scale: ``diam_mean`` only sets how images are
        zoomed, so the weights carry over, while the size model and the tuned
        thresholds, which belong to the old scale, are dropped (training refits
        them).  The training lineage is kept.

        >>> net = CellposeUNet(ModelConfig(features=(8, 16)))
        >>> net.with_diam_mean(40).config.diam_mean, net.config.diam_mean
        (40.0, 30.0)
        """
        copy = CellposeUNet(dataclasses.replace(self.config, diam_mean=diam_mean))
        copy.load_state_dict(self.state_dict())
        copy.record = self.record.replace(diam_labels=copy.config.diam_mean,
                                          size_model=None, thresholds=None)
        return copy.to(next(self.parameters()).device)

    def _check_input(self, x: torch.Tensor) -> None:
        shape, m = tuple(x.shape), self.config.size_multiple
        if x.ndim != 4 or shape[1] != self.config.n_channels:
            raise ValueError(f"input shape {shape}: expected (B, {self.config.n_channels}, H, W)")
        if shape[2] % m or shape[3] % m:
            raise ValueError(f"input shape {shape}: H and W must be multiples of {m} "
                             f"(2**(len(features)-1)); pad the image, e.g. to "
                             f"({-(-shape[2] // m) * m}, {-(-shape[3] // m) * m})")


# --- inspecting a network -------------------------------------------------------------
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


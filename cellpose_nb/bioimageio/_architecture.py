"""The architecture source shipped in a BioImage Model Zoo package (imports torch only).

bioimage.io's ``pytorch_state_dict`` weights name a Python file and a callable in
it; consumers (``bioimageio.core``, ...) import that one file on its own to build
the network, so it may import nothing but ``torch``.  :class:`CellposeNbUNet` is
:class:`cellpose_nb.model.CellposeUNet` again, module for module, so that its
``state_dict`` has the same names and shapes (``tests/test_bioimageio.py`` checks
that both agree, weights and outputs).  What it adds for the package:

- an input of ``n_inputs`` channels (1 for a model that reads one gray channel),
  completed with zero channels up to the network's ``n_channels``, as
  ``cellpose_nb.normalize.to_network_input`` does for a missing nuclear channel;
- tensors out, not a tuple with the style: ``(y, y)``, the first for the
  ``masks`` output (post-processed by bioimage.io's ``cellpose_flow_dynamics``
  step), the second for the raw ``flows`` output.  ``y`` is (B, 3, H, W):
  5 * d_row, 5 * d_col, cell-probability logit.

``load_bioimageio`` never imports this file from a package: it builds its own
``CellposeUNet`` and loads the weights into it.
"""

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5  # as cellpose_nb.model.network.BN_EPS
BN_MOMENTUM = 0.05  # as cellpose_nb.model.network.BN_MOMENTUM


class ConvBlock(nn.Module):
    """BatchNorm -> ReLU (optional) -> Conv2d, same size (CellposeUNet's ConvBlock)."""

    def __init__(self, in_channels, out_channels, kernel_size, relu=True):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu = relu

    def forward(self, x):
        x = self.norm(x)
        return self.conv(F.relu(x) if self.relu else x)


class StyleConvBlock(nn.Module):
    """Style projection added to every pixel, then a ConvBlock."""

    def __init__(self, channels, style_channels, kernel_size):
        super().__init__()
        self.style_proj = nn.Linear(style_channels, channels)
        self.block = ConvBlock(channels, channels, kernel_size)

    def forward(self, x, style):
        return self.block(x + self.style_proj(style)[:, :, None, None])


class DownBlock(nn.Module):
    """Two residual units; the first one's shortcut is a 1x1 ConvBlock without ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        self.shortcut = ConvBlock(in_channels, out_channels, 1, relu=False)
        widths = [in_channels, out_channels, out_channels, out_channels]
        self.convs = nn.ModuleList(ConvBlock(w, out_channels, kernel_size) for w in widths)

    def forward(self, x):
        x = self.shortcut(x) + self.convs[1](self.convs[0](x))
        return x + self.convs[3](self.convs[2](x))


class UpBlock(nn.Module):
    """Residual up block: the skip is added after the first convolution, the style before the others."""

    def __init__(self, in_channels, out_channels, style_channels, kernel_size):
        super().__init__()
        self.shortcut = ConvBlock(in_channels, out_channels, 1, relu=False)
        self.convs = nn.ModuleList([
            ConvBlock(in_channels, out_channels, kernel_size),
            *(StyleConvBlock(out_channels, style_channels, kernel_size) for _ in range(3)),
        ])

    def forward(self, x, skip, style):
        x = self.shortcut(x) + self.convs[1](self.convs[0](x) + skip, style)
        return x + self.convs[3](self.convs[2](x, style), style)


class CellposeNbUNet(nn.Module):
    """The residual U-Net of Cellpose 1.0 for a bioimage.io package.

    Parameters
    ----------
    n_channels, features, n_out, kernel_size
        The fields of ``cellpose_nb.model.ModelConfig`` (its ``diam_mean`` only
        sets how images are zoomed, which a package leaves to its user).
    n_inputs : int
        Channels of the package's input tensor, at most ``n_channels``; the
        missing ones are zeros.

    Shapes: (B, n_inputs, H, W), H and W multiples of ``2 ** (len(features) - 1)``
    -> two (B, n_out, H, W) tensors, equal.
    """

    def __init__(self, n_channels=2, features=(32, 64, 128, 256), n_out=3, kernel_size=3,
                 n_inputs=2):
        super().__init__()
        features = tuple(int(f) for f in features)
        if not 1 <= n_inputs <= n_channels:
            raise ValueError(f"n_inputs must be in [1, {n_channels}], got {n_inputs}")
        self.n_channels, self.n_inputs = int(n_channels), int(n_inputs)
        widths_in = (n_channels, *features)
        self.encoder = nn.ModuleList(
            DownBlock(widths_in[i], widths_in[i + 1], kernel_size) for i in range(len(features)))
        widths_up = (*features, features[-1])
        self.decoder = nn.ModuleList(
            UpBlock(widths_up[i + 1], widths_up[i], features[-1], kernel_size)
            for i in range(len(features)))
        self.head = ConvBlock(features[0], n_out, 1)

    def forward(self, x):
        if self.n_inputs < self.n_channels:  # a python attribute: traces as a constant
            zeros = torch.zeros_like(x[:, :1])
            x = torch.cat([x] + [zeros] * (self.n_channels - self.n_inputs), dim=1)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        style = skips[-1].mean(dim=(2, 3))
        style = style / style.square().sum(dim=1, keepdim=True).sqrt()
        x = self.decoder[-1](skips[-1], skips[-1], style)
        for i in reversed(range(len(self.decoder) - 1)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.decoder[i](x, skips[i], style)
        y = self.head(x)
        return y, y.clone()  # masks (post-processed by the consumer), flows (raw)

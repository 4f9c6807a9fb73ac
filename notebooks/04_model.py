# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · The network: Cellpose's residual U-Net
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/04_model.ipynb) (replace OWNER with the repository's owner once it is published)
#
# Notebooks 02 and 03 showed what the network must predict (two flow maps and
# a cell probability) and how masks come out of them. This notebook builds the
# network itself, the residual U-Net of Cellpose 1.0, block by block in plain
# PyTorch, and checks that it is, weight for weight, the package's
# `CellposeUNet` (which is Cellpose's `CPnet`).
#
# **What you will learn**
#
# - the building blocks: BatchNorm -> ReLU -> convolution, the residual down
#   block with its 1x1 projection shortcut, the style vector (global average of
#   the deepest features, L2-normalised), and the up block where the skip and
#   the projected style are *added* (not concatenated);
# - how they assemble into the U-Net, and that the package's weights load into
#   the notebook's network (and back) with equal outputs;
# - the feature-map shapes at every scale, and why inputs are padded to a
#   multiple of 8 (Cellpose: 16);
# - how many parameters there are, where they sit, and how width changes that;
# - the receptive field, in theory and measured with a gradient, and how the
#   style makes it global;
# - what the style vector captures: a PCA of the styles of images with
#   different cell sizes.
#
# **What you need**: notebooks 01-03 (images, flows, masks). PyTorch (the CPU
# build is enough), NumPy, matplotlib. No GPU, no data download.

# %% [markdown]
# ### Optional: set-up on Google Colab (skip anywhere else)
#
# The next cell does nothing unless it runs on Google Colab. There it installs
# this package from its repository (Colab's own numpy and torch are kept) and
# turns on Colab's widget manager. Edit `REPO_URL` if you work from a fork.

# %%
# Colab set-up: skippable, does nothing outside Colab.
REPO_URL = "https://github.com/OWNER/cellpose_nb"  # placeholder: the repository to install from

try:
    import google.colab  # noqa: F401

    IN_COLAB = True
except ImportError:
    IN_COLAB = False

if IN_COLAB:
    from IPython import get_ipython
    from google.colab import output

    # pip keeps installed packages that already satisfy the requirements (numpy, torch)
    get_ipython().run_line_magic("pip", f'install --quiet "cellpose-nb @ git+{REPO_URL}"')
    output.enable_custom_widget_manager()

# %%
# Every knob of this notebook.
import os

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: small inputs, few images
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

SEED = 0  # seed of every random weight and image below
THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default); small tensors run best on one
FEATURES = (32, 64, 128, 256)  # Cellpose's widths, one per scale
NARROW = (16, 32, 64, 128)  # a narrower network, for the parameter count
TINY = (8, 16, 32, 64)  # a tiny network for the quick experiments
KERNEL = 3  # convolution kernel size (Cellpose: 3)
CHECK_INPUT = (2, 2, 64, 64) if QUICK else (4, 2, 224, 224)  # (B, C, H, W) of the equality check
TABLE_SIZE = (224, 224)  # a Cellpose training tile (bsize), for the shape table
ODD_SIZE = (250, 310)  # an image size that is not a multiple of 8
PAD_MULTIPLES = (8, 16)  # pad to a multiple of 8 (enough) or 16 (what Cellpose does)
RF_SIZE = 256  # side of the input of the empirical receptive field (> the theoretical 248)
STYLE_SHAPE = (128, 128) if QUICK else (256, 256)  # synthetic images for the style vectors
STYLE_DIAMETERS = (8.0, 12.0, 18.0, 27.0) if QUICK else (8.0, 11.0, 15.0, 20.0, 27.0, 36.0)
STYLE_COVERS = (0.25, 0.5)  # fraction of the image covered by cells: sparse, dense
STYLE_REPEATS = 1 if QUICK else 3  # images per (diameter, cover)

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display
from matplotlib.patches import Rectangle
from torch import nn

from cellpose_nb import data, model, plot
from cellpose_nb.model import CellposeUNet, ModelConfig, count_parameters, feature_map_shapes
from cellpose_nb.normalize import to_network_input

torch.manual_seed(SEED)
if THREADS is not None:
    torch.set_num_threads(THREADS)

plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 step', '4 steps', '1 nucleus', '2 nuclei': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def randomize_batchnorm(net, seed=SEED):
    """Random BatchNorm scales, shifts and running statistics (in place).

    A fresh BatchNorm in eval mode is the identity (scale 1, shift 0, mean 0,
    variance 1): a comparison of two networks would not notice a BatchNorm
    applied in the wrong place. Random values make every layer count.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.5, 0.5, generator=g)
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return net


def same_outputs(mine, theirs, *inputs):
    """Copy the weights of `theirs` into `mine`, run both in eval mode, compare."""
    mine.load_state_dict(theirs.state_dict())  # strict: every name and shape must match
    mine.eval()
    theirs.eval()
    with torch.no_grad():
        a, b = mine(*inputs), theirs(*inputs)
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    return all(torch.allclose(u, v, atol=1e-5, rtol=1e-4) for u, v in zip(a, b))


# %% [markdown]
# ## 1. The unit of everything: BatchNorm -> ReLU -> convolution
#
# Every convolution of the network is wrapped the same way, *pre-activation*
# style (He et al. 2016): normalise the input with BatchNorm, apply a ReLU,
# then convolve. A 3x3 convolution with one pixel of zero padding keeps the
# image size. Cellpose's BatchNorm uses `eps=1e-5` and a running-statistics
# momentum of 0.05 (PyTorch's default is 0.1).
#
# We write it in plain torch. The attribute names (`norm`, `conv`) are the
# package's, so that the two can exchange weights with `load_state_dict`.

# %%
class BNReLUConv(nn.Module):
    """BatchNorm -> ReLU (optional) -> Conv2d; (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in, c_out, k, relu=True):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in, eps=1e-5, momentum=0.05)
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)  # "same" size for odd k
        self.relu = relu

    def forward(self, x):
        x = self.norm(x)
        return self.conv(F.relu(x) if self.relu else x)


x = torch.randn(CHECK_INPUT)
mine = BNReLUConv(2, 8, KERNEL)
theirs = randomize_batchnorm(model.ConvBlock(2, 8, KERNEL))
print("output:", tuple(mine(x).shape))
assert same_outputs(mine, theirs, x)

# %% [markdown]
# ## 2. The residual down block
#
# One scale of the encoder holds two *residual units*, each two of those
# convolutions with the input added back to the output (`x + f(x)`). The first
# unit changes the number of channels (e.g. 2 -> 32), so its input cannot be
# added as it is: it goes through a **1x1 convolution** (BatchNorm, no ReLU)
# that maps it to the new width, the *projection shortcut*.
#
# ```
# x ──┬── BN-ReLU-conv ── BN-ReLU-conv ──(+)──┬── BN-ReLU-conv ── BN-ReLU-conv ──(+)──> out
#     └────────── BN-conv 1x1 ─────────────┘  └──────────────────────────────────┘
# ```
#
# Between the scales a 2x2 max-pool halves the image (that happens in the
# network, before every block but the first).

# %%
class ResDown(nn.Module):
    """Two residual units; the first has a 1x1 projection shortcut."""

    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.shortcut = BNReLUConv(c_in, c_out, 1, relu=False)
        self.convs = nn.ModuleList([BNReLUConv(c_in, c_out, k)] + [BNReLUConv(c_out, c_out, k) for _ in range(3)])

    def forward(self, x):
        x = self.shortcut(x) + self.convs[1](self.convs[0](x))  # unit 1: projected input + f(x)
        return x + self.convs[3](self.convs[2](x))  # unit 2: identity + f(x)


mine = ResDown(2, 8, KERNEL)
theirs = randomize_batchnorm(model.DownBlock(2, 8, KERNEL))
print("output:", tuple(mine(x).shape))
assert same_outputs(mine, theirs, x)

# %% [markdown]
# ## 3. The style vector
#
# At the bottom of the U (the coarsest scale, 256 channels in Cellpose) the
# features are averaged over all pixels: one number per channel, a summary of
# the whole image. Divided by its Euclidean length it becomes the **style
# vector**, a unit vector of 256 numbers. It is used twice: inside the network
# (section 4) and outside, to guess the cell size of an image (notebook 05
# trains that size model; section 9 has a first look).

# %%
def make_style(features):
    """(B, C, H, W) -> (B, C): global average, divided by its L2 norm."""
    style = features.mean(dim=(2, 3))
    return style / style.norm(dim=1, keepdim=True)


deep = torch.randn(2, 16, 7, 9)
style = make_style(deep)
assert torch.allclose(style, model.StyleVector()(deep), atol=1e-6)
assert torch.allclose(style.norm(dim=1), torch.ones(2), atol=1e-6)
print("style:", tuple(style.shape), "norms:", style.norm(dim=1).tolist())

# %% [markdown]
# ## 4. The up block: the skip and the style are *added*
#
# The decoder mirrors the encoder: at each scale a residual block like the
# down block, after a 2x nearest-neighbour upsampling (each pixel becomes a
# 2x2 square). Two things are added on the way:
#
# - the **skip connection**: the encoder's output at the same scale is *added*
#   to the output of the block's first convolution. Many U-Nets concatenate
#   instead (doubling the channels); Cellpose adds, which keeps the widths and
#   the parameter count down;
# - the **style**: a linear projection of the style vector (one number per
#   channel) is added to every pixel before each of the three other
#   convolutions. Every pixel of the output thus knows something about the
#   whole image.

# %%
class StyleConv(nn.Module):
    """Add Linear(style) to every pixel, then BN-ReLU-conv."""

    def __init__(self, channels, style_channels, k):
        super().__init__()
        self.style_proj = nn.Linear(style_channels, channels)
        self.block = BNReLUConv(channels, channels, k)

    def forward(self, x, style):
        return self.block(x + self.style_proj(style)[:, :, None, None])  # (B, C) -> (B, C, 1, 1)


class ResUp(nn.Module):
    """Like ResDown; the skip is added after the first conv, the style before the others."""

    def __init__(self, c_in, c_out, style_channels, k):
        super().__init__()
        self.shortcut = BNReLUConv(c_in, c_out, 1, relu=False)
        self.convs = nn.ModuleList([BNReLUConv(c_in, c_out, k)] + [StyleConv(c_out, style_channels, k) for _ in range(3)])

    def forward(self, x, skip, style):
        x = self.shortcut(x) + self.convs[1](self.convs[0](x) + skip, style)
        return x + self.convs[3](self.convs[2](x, style), style)


skip, style16 = torch.randn(CHECK_INPUT[0], 8, *CHECK_INPUT[2:]), torch.randn(CHECK_INPUT[0], 16)
up_in = torch.randn(CHECK_INPUT[0], 16, *CHECK_INPUT[2:])
mine = ResUp(16, 8, 16, KERNEL)
theirs = randomize_batchnorm(model.UpBlock(16, 8, 16, KERNEL))
print("output:", tuple(mine(up_in, skip, style16).shape))
assert same_outputs(mine, theirs, up_in, skip, style16)

# %% [markdown]
# ## 5. The whole U-Net
#
# Four scales with 32, 64, 128 and 256 channels. Going down: a down block per
# scale, 2x2 max-pool in between. At the bottom: the style. Going up: the
# deepest up block takes the deepest features both as input and as skip (it
# keeps 256 channels), then upsample, up block, ... back to full resolution.
# Last, a 1x1 BN-ReLU-conv maps 32 channels to the 3 outputs: `FLOW_SCALE *
# d_row`, `FLOW_SCALE * d_col` and the cell-probability logit.

# %%
class UNet(nn.Module):
    def __init__(self, features=FEATURES, n_channels=2, n_out=3, k=KERNEL):
        super().__init__()
        widths = (n_channels, *features)
        self.encoder = nn.ModuleList(ResDown(widths[i], widths[i + 1], k) for i in range(len(features)))
        widths_up = (*features, features[-1])  # the deepest up block keeps its width
        self.decoder = nn.ModuleList(
            ResUp(widths_up[i + 1], widths_up[i], features[-1], k) for i in range(len(features)))
        self.head = BNReLUConv(features[0], n_out, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        style = make_style(skips[-1])
        x = self.decoder[-1](skips[-1], skips[-1], style)
        for i in reversed(range(len(self.decoder) - 1)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.decoder[i](x, skips[i], style)
        return self.head(x), style


ours = UNet(FEATURES)
package_net = randomize_batchnorm(CellposeUNet(ModelConfig(features=FEATURES, kernel_size=KERNEL)))
ours.load_state_dict(package_net.state_dict())  # strict: raises on any missing, extra or misshaped weight
ours.eval()
package_net.eval()
x = torch.randn(CHECK_INPUT)
with torch.no_grad():
    y_ours, style_ours = ours(x)
    y_pkg, style_pkg = package_net(x)
print("input", tuple(x.shape), "-> output", tuple(y_ours.shape), "+ style", tuple(style_ours.shape))
print(f"largest difference: {(y_ours - y_pkg).abs().max():.2e} (outputs up to {y_pkg.abs().max():.1f})")
assert torch.allclose(y_ours, y_pkg, atol=1e-4, rtol=1e-4) and torch.allclose(style_ours, style_pkg, atol=1e-6)

# and the other way round, in training mode (BatchNorm uses the batch statistics)
back = CellposeUNet(ModelConfig(features=FEATURES))
back.load_state_dict(ours.state_dict())
ours.train()
back.train()
with torch.no_grad():
    assert torch.allclose(ours(x)[0], back(x)[0], atol=1e-4, rtol=1e-4)
ours.eval()

# %% [markdown]
# Same weights, same outputs: the network written above *is* the package's
# `CellposeUNet`, which is Cellpose's `CPnet`. Only the names differ from
# Cellpose's; `to_cellpose_keys` translates them, and that is how
# `load_cellpose_weights` reads the official Cellpose weight files into this
# network (and `export_cellpose_weights` writes files Cellpose reads):

# %%
names = list(package_net.state_dict())
cpnet_names = list(model.to_cellpose_keys(package_net.state_dict()))
for k in (0, 5, len(names) - 1):
    print(f"{names[k]:40s} <-> {cpnet_names[k]}")
assert model.from_cellpose_keys(dict.fromkeys(cpnet_names)).keys() == dict.fromkeys(names).keys()

# %% [markdown]
# ## 6. Feature-map shapes, and why inputs are padded
#
# Each max-pool halves the height and the width; each upsampling doubles them
# back. By hand, for an input of H x W pixels: scale `i` has
# `H // 2**i x W // 2**i` pixels. Here is the table for a 224 x 224 tile (the
# tile size of Cellpose), as `C x H x W` per stage, computed by hand and by
# `feature_map_shapes`, which runs the package network on PyTorch's `meta`
# device (shapes only, no memory, no arithmetic).

# %%
def shapes_by_hand(features, size, n_channels=2, n_out=3):
    """[(stage, (C, H, W) or (C,), problem)] in execution order; floor halving, 2x upsampling."""
    h, w = size
    rows, skips = [("input", (n_channels, h, w), "")], []
    for i, f in enumerate(features):
        if i:
            h, w = h // 2, w // 2  # 2x2 max-pool (floor: an odd row is dropped)
        rows.append((f"encoder.{i}", (f, h, w), ""))
        skips.append((h, w))
    rows.append(("style", (features[-1],), ""))
    rows.append((f"decoder.{len(features) - 1}", (features[-1], h, w), ""))
    broken = False
    for i in reversed(range(len(features) - 1)):
        h, w = 2 * h, 2 * w  # nearest upsampling
        problem = "" if (h, w) == skips[i] else f"cannot add skip {skips[i][0]}x{skips[i][1]}"
        broken = broken or bool(problem)
        rows.append((f"decoder.{i}", (features[i], h, w), problem))
    rows.append(("head", (n_out, h, w), ""))
    return rows, broken


def padded(size, multiple):
    return tuple(-(-s // multiple) * multiple for s in size)  # round up to the multiple


by_hand, _ = shapes_by_hand(FEATURES, TABLE_SIZE)
package_shapes = feature_map_shapes(ModelConfig(features=FEATURES), (1, 2, *TABLE_SIZE))
assert [(name, (1, *shape)) for name, shape, _ in by_hand] == package_shapes

sizes = {"no padding": ODD_SIZE, **{f"padded to {m}": padded(ODD_SIZE, m) for m in PAD_MULTIPLES}}
columns = {f"{TABLE_SIZE[0]}x{TABLE_SIZE[1]} tile": by_hand}
for title, size in sizes.items():
    rows, broken = shapes_by_hand(FEATURES, size)
    columns[f"{size[0]}x{size[1]} ({title})"] = rows
    if not broken:  # the package agrees wherever the network can run
        assert [(n, (1, *s)) for n, s, _ in rows] == feature_map_shapes(ModelConfig(features=FEATURES), (1, 2, *size))


def cell(shape, problem, dead):
    if dead:
        return "-"
    return problem or " x ".join(str(s) for s in shape)


print(f"{'stage':11s}" + "".join(f"{t:>28s}" for t in columns))
for k, (name, *_rest) in enumerate(by_hand):
    line = f"{name:11s}"
    for title, rows in columns.items():
        dead = any(p for _, _, p in rows[:k])  # after a failed addition nothing more runs
        line += f"{cell(rows[k][1], rows[k][2], dead):>28s}"
    print(line)

# %% [markdown]
# With 250 x 310 pixels the second max-pool drops a row (125 -> 62 -> 31), and
# on the way back up 31 -> 62 -> **124** does not match the encoder's 125: the
# skip cannot be added. An input must be a multiple of `2**3 = 8` (three
# halvings; `ModelConfig.size_multiple`). The package checks and says so; our
# notebook version meets the problem one step later, in the addition:

# %%
tiny_net = CellposeUNet(ModelConfig(features=TINY)).eval()
odd = torch.randn(1, 2, *ODD_SIZE)
try:
    tiny_net(odd)
except ValueError as err:
    print("package:", err)
else:
    raise AssertionError("the package should refuse this size")
try:
    UNet(TINY).eval()(odd)
except RuntimeError as err:
    print("notebook:", str(err).splitlines()[0])
else:
    raise AssertionError("the additive skip should fail")

# pad (zeros, split evenly on both sides), run, crop the output back
target = padded(ODD_SIZE, 16)
ph, pw = target[0] - ODD_SIZE[0], target[1] - ODD_SIZE[1]
with torch.no_grad():
    y = tiny_net(F.pad(odd, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))[0]
y = y[..., ph // 2 : ph // 2 + ODD_SIZE[0], pw // 2 : pw // 2 + ODD_SIZE[1]]
print("padded to", target, "-> output cropped back to", tuple(y.shape[-2:]))
assert y.shape[-2:] == ODD_SIZE

# %% [markdown]
# Cellpose pads to a multiple of **16** (with a margin), more than the 8 this
# network needs; `predict.run_net` does the same, so that its outputs equal
# Cellpose's. Note that the padded zeros are part of what the network sees:
# near the image border the outputs differ a little from those of a bigger
# image, and the style vector is an average over the padding too.
#
# ## 7. How many parameters?
#
# Count them by hand. A BN-ReLU-conv from `c_in` to `c_out` channels with a
# `k x k` kernel has `2 c_in` BatchNorm parameters (scale and shift; the
# running statistics are buffers, not parameters), `c_in c_out k^2` weights
# and `c_out` biases. A style projection is a `Linear(256, c)`: `256 c + c`.

# %%
def conv_params(c_in, c_out, k):
    return 2 * c_in + c_in * c_out * k * k + c_out


def down_params(c_in, c_out, k):
    return conv_params(c_in, c_out, 1) + conv_params(c_in, c_out, k) + 3 * conv_params(c_out, c_out, k)


def up_params(c_in, c_out, s, k):
    return conv_params(c_in, c_out, 1) + conv_params(c_in, c_out, k) + 3 * (s * c_out + c_out + conv_params(c_out, c_out, k))


def params_by_hand(features, k=KERNEL, n_channels=2, n_out=3):
    """{stage: parameters}, stage names as in the package."""
    widths, widths_up = (n_channels, *features), (*features, features[-1])
    out = {f"encoder.{i}": down_params(widths[i], widths[i + 1], k) for i in range(len(features))}
    out.update({f"decoder.{i}": up_params(widths_up[i + 1], widths_up[i], features[-1], k) for i in range(len(features))})
    out["head"] = conv_params(features[0], n_out, 1)
    return out


stages = params_by_hand(FEATURES)
net = CellposeUNet(ModelConfig(features=FEATURES))
print(f"{'stage':11s}{'by hand':>12s}{'package':>12s}")
for name, n in stages.items():
    n_pkg = count_parameters(net.get_submodule(name))
    print(f"{name:11s}{n:12,d}{n_pkg:12,d}")
    assert n == n_pkg
total = sum(stages.values())
assert total == count_parameters(net)
print(f"{'total':11s}{total:12,d}  = {4 * total / 2**20:.1f} MiB of float32")

# %% [markdown]
# The deepest scale holds most of them: a 3x3 conv from 256 to 256 channels
# alone has 590 000 weights. Parameters grow with the *square* of the width,
# so halving every width divides the count by about 4:

# %%
widths_table = {"Cellpose": FEATURES, "narrow": NARROW, "tiny": TINY}
counts = {}
for name, feats in widths_table.items():
    counts[name] = count_parameters(CellposeUNet(ModelConfig(features=feats)))
    assert counts[name] == sum(params_by_hand(feats).values())
    print(f"{name:9s} features {str(feats):20s} {counts[name]:10,d} parameters, "
          f"{counts['Cellpose'] / counts[name]:5.1f}x fewer than Cellpose's")
assert 3.5 < counts["Cellpose"] / counts["narrow"] < 4.1

# %% [markdown]
# Width is not the whole cost, though: the activations of a 224 x 224 tile
# (saved for the backward pass during training) scale with the width too, and
# the compute of each layer with width squared times pixels. The narrow and
# tiny networks are what we train on a CPU in notebook 05.
#
# ## 8. Receptive field: how far can an output pixel see?
#
# An output pixel depends on a square of input pixels, its *receptive field*.
# Walk the longest path through the network and keep two numbers: the field
# size `r` and the *jump* `j`, the distance in input pixels between two
# neighbouring pixels of the current feature map:
#
# - a `k x k` convolution adds `(k - 1) j` to `r`;
# - a 2x2 max-pool adds `j` to `r`, then doubles `j`;
# - a nearest-neighbour upsampling halves `j` and adds nothing (each output
#   pixel copies one coarse pixel).
#
# The longest path goes through all four 3x3 convolutions of every block
# (two residual units of two), down and up.

# %%
def receptive_field(n_scales, k=KERNEL, convs_per_block=4):
    """Theoretical receptive field (pixels) after every stage: [(stage, jump, field)]."""
    r, j, rows = 1, 1, []
    for i in range(n_scales):
        if i:
            r, j = r + j, 2 * j  # max-pool
        r += convs_per_block * (k - 1) * j
        rows.append((f"encoder.{i}", j, r))
    r += convs_per_block * (k - 1) * j
    rows.append((f"decoder.{n_scales - 1}", j, r))
    for i in reversed(range(n_scales - 1)):
        j //= 2  # upsampling
        r += convs_per_block * (k - 1) * j
        rows.append((f"decoder.{i}", j, r))
    return rows


rf_rows = receptive_field(len(FEATURES))
for stage, jump, field in rf_rows:
    print(f"{stage:10s} jump {jump:2d}  field {field:4d} px")
RF = rf_rows[-1][2]

# %% [markdown]
# About 248 pixels: a cell of Cellpose's mean diameter (30 px) is seen with
# plenty of context around it, which is why images are rescaled so that cells
# have about that size, and why cells much bigger than ~100 px are segmented
# badly without rescaling.
#
# Now measure it. Take a small random network, pick one output pixel, and
# ask torch for the gradient of its value with respect to every input pixel:
# wherever the gradient is not zero, the input influences that output. We do it
# twice: with the network as it is, and with the style vector *detached*
# (treated as a constant), so that only the convolutions carry gradients.

# %%
class DetachedStyle(nn.Module):
    """The style vector, without gradient: only the convolutional paths remain."""

    def forward(self, features):
        return model.StyleVector()(features).detach()


def input_gradient(net, size, pixel, seed=SEED):
    x = torch.randn(1, 2, size, size, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    y, _ = net(x)
    y[0, 2, pixel[0], pixel[1]].backward()  # cell probability at one pixel
    return x.grad[0].abs().sum(dim=0).numpy()  # |d output / d input|, summed over channels


rf_net = CellposeUNet(ModelConfig(features=TINY)).eval()
centre = (RF_SIZE // 2, RF_SIZE // 2)
grad_style = input_gradient(rf_net, RF_SIZE, centre)
rf_net.style = DetachedStyle()
grad_conv = input_gradient(rf_net, RF_SIZE, centre)

support = np.argwhere(grad_conv > 0)
lo, hi = support.min(axis=0), support.max(axis=0)
extent = hi - lo + 1
print(f"theoretical field {RF} px; measured without the style: rows {lo[0]}..{hi[0]}, "
      f"cols {lo[1]}..{hi[1]} -> {extent[0]} x {extent[1]} px")
print(f"with the style: {np.mean(grad_style > 0):.0%} of the input pixels influence the centre pixel")
assert (extent <= RF).all() and (extent >= RF - 16).all()
assert (grad_style > 0).all()

# the *effective* field is much smaller: the radius holding 90 % of the gradient
rr, cc = np.indices(grad_conv.shape)
radius = np.hypot(rr - centre[0], cc - centre[1])
order = np.argsort(radius.ravel())
mass = np.cumsum(grad_conv.ravel()[order]) / grad_conv.sum()
r90 = radius.ravel()[order][np.searchsorted(mass, 0.9)]
print(f"90 % of the gradient lies within {r90:.0f} px of the pixel")

fig, axes = plt.subplots(1, 2, figsize=(11, 5))
for ax, g, title in zip(axes, (grad_style, grad_conv), ("with the style", "style detached")):
    im = ax.imshow(np.log10(g + 1e-30), cmap="magma", vmin=np.log10(g.max()) - 8, vmax=np.log10(g.max()))
    half = RF / 2
    ax.add_patch(Rectangle((centre[1] - half, centre[0] - half), RF, RF, fill=False, ec="c", lw=1, ls="--"))
    ax.plot(centre[1], centre[0], "c+", ms=10)
    ax.set_title(f"log10 |d y[cellprob, centre] / d x|, {title}")
    ax.set_axis_off()
fig.colorbar(im, ax=axes, shrink=0.8)
show(fig)

# %% [markdown]
# Left: through the style, *every* input pixel reaches the output, but
# weakly (the style is an average over thousands of pixels). Right: the
# convolutions alone see a 248-pixel square (dashed: the theory), and most of
# the weight sits in the middle; the theoretical field is an upper bound on
# what matters. The square is a little off-centre: the 2x2 max-pools do not
# sit symmetrically around every pixel.
#
# ## 9. The style vector as a summary of the image
#
# **Why a style vector at all?** Cellpose is a *generalist*: one network for
# fluorescence and brightfield, cytoplasm and nuclei, sparse and crowded
# fields. The style vector is how that one network adapts to the kind of image
# it is looking at: it is computed from the image itself and added, through a
# learned linear projection, to the features of every upsampling convolution
# (section 4), so the same weights can decode differently for different image
# types. Stringer et al. (2021) introduced it for this reason and showed that
# the styles of their images group by image type.
#
# The style is an average over the whole image of the deepest features, so
# images that look alike should have similar styles. Cellpose also uses it to
# estimate the cell diameter of a new image (a linear regression from the
# style to the log diameter, notebook 05). Let us look at the styles that the
# **trained** nuclei model shipped with the package gives to synthetic images
# with cells of different diameters, sparse and dense.

# %%
style_net = model.load_pretrained("nuclei", device="cpu")
style_source = "trained nuclei model"

inputs, diameters, covers = [], [], []
for d in STYLE_DIAMETERS:
    for cover in STYLE_COVERS:
        for rep in range(STYLE_REPEATS):
            n_cells = max(1, int(cover * STYLE_SHAPE[0] * STYLE_SHAPE[1] / (np.pi * d**2 / 4)))
            s = data.make_synthetic(STYLE_SHAPE, n_cells=n_cells, diameter=d, kind="nuclei",
                                    seed=np.random.SeedSequence([SEED, int(d), int(100 * cover), rep]))
            inputs.append(to_network_input(s.image, channels=(0, None)))
            diameters.append(d)
            covers.append(cover)
diameters, covers = np.array(diameters), np.array(covers)

with torch.no_grad():
    styles = np.concatenate([style_net(torch.from_numpy(np.stack(inputs[k : k + 8])))[1].numpy()
                             for k in range(0, len(inputs), 8)])
print("styles:", styles.shape, "norms", np.linalg.norm(styles, axis=1).min().round(4), "to",
      np.linalg.norm(styles, axis=1).max().round(4))
assert np.allclose(np.linalg.norm(styles, axis=1), 1, atol=1e-4)

# %% [markdown]
# Principal component analysis by hand: centre the styles, take the singular
# value decomposition `S - mean = U diag(s) V^T`; the rows of `V^T` are the
# principal directions and `s**2 / sum(s**2)` the share of the variance each
# explains. Project on the first two.

# %%
centred = styles - styles.mean(axis=0)
U, s, Vt = np.linalg.svd(centred, full_matrices=False)
pcs = centred @ Vt[:2].T
explained = s**2 / np.sum(s**2)
assert np.allclose(np.abs(pcs), np.abs(U[:, :2] * s[:2]), atol=1e-4)  # the same projection, two ways
print(f"variance explained by PC1, PC2: {explained[0]:.0%}, {explained[1]:.0%}")
for what, values in (("log(diameter)", np.log(diameters)), ("cover", covers)):
    corr = [np.corrcoef(pcs[:, k], values)[0, 1] for k in range(2)]
    print(f"correlation with {what:13s}: PC1 {corr[0]:+.2f}, PC2 {corr[1]:+.2f}")

# a first size model: least squares from the two components to log(diameter)
design = np.column_stack([np.ones(len(pcs)), pcs])
coef, *_ = np.linalg.lstsq(design, np.log(diameters), rcond=None)
residual = np.log(diameters) - design @ coef
r2 = 1 - residual.var() / np.log(diameters).var()
print(f"log(diameter) from PC1 and PC2: R^2 = {r2:.2f}")

fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.4, 1, 1]})
for cover, marker in zip(STYLE_COVERS, ("o", "s")):
    pick = covers == cover
    sc = axes[0].scatter(pcs[pick, 0], pcs[pick, 1], c=np.log(diameters[pick]), cmap="viridis",
                         vmin=np.log(diameters.min()), vmax=np.log(diameters.max()), marker=marker,
                         s=50, edgecolor="k")
    axes[0].scatter([], [], marker=marker, color="0.8", edgecolor="k", label=f"{cover:.0%} covered")
cbar = fig.colorbar(sc, ax=axes[0])
cbar.set_ticks(np.log(STYLE_DIAMETERS), labels=[f"{d:g}" for d in STYLE_DIAMETERS])
cbar.set_label("cell diameter (px)")
axes[0].set_xlabel(f"PC1 ({explained[0]:.0%})")
axes[0].set_ylabel(f"PC2 ({explained[1]:.0%})")
axes[0].legend(fontsize=8)
axes[0].set_title(f"styles of {plural(len(styles), 'image')}, {style_source}")
for ax, k in zip(axes[1:], (0, len(inputs) - 1)):
    plot.show_image(inputs[k][0], ax=ax, title=f"diameter {diameters[k]:g} px, {covers[k]:.0%} covered")
show(fig)

# %% [markdown]
# The trained network's styles are organised: the first two principal
# components follow the cell size and how much of the image is covered (the
# printed correlations say which component follows which; that depends on the
# images and the weights). This is the summary of "what kind of image is this"
# that the upsampling path receives. A linear fit from the styles to the log
# diameter is Cellpose's *size model*; Cellpose's is a ridge regression on
# all 256 dimensions, fitted on real images (notebook 05 fits one).

# %% [markdown]
# > **Cellpose 1.0 or 3?** The architecture is Cellpose 1.0's, and `cellpose`
# > 3.1.1.2's `CPnet` (`resnet_torch.py`) keeps it, which is why this package
# > can load Cellpose's weights: widths `nbase = [32, 64, 128, 256]` after the
# > input channels, residual blocks of BatchNorm -> ReLU -> 3x3 convolution,
# > additive skips, and the style vector (`make_style`: global average pool of
# > the deepest features, divided by its L2 norm) projected and added in the
# > upsampling blocks. The size model from the styles (section 9, notebook 05)
# > is also Cellpose 1.0's. What Cellpose 3 adds on top (image-restoration
# > networks in front of the segmentation network) is not used in this course.

# %% [markdown]
# ## In practice
#
# - **Sizes.** Inputs must be multiples of 8 (`ModelConfig.size_multiple`);
#   `predict.run_net` pads to multiples of 16 and cuts big images into
#   224 x 224 tiles, and training uses 224 x 224 crops. Padding and tiling
#   change what the network sees near the borders.
# - **The style depends on the field of view.** It averages over the whole
#   input (padding included): for a tiled image Cellpose averages the tile
#   styles. An image with a few cells in a large empty field has a different
#   style than a crop around them.
# - **Receptive field.** About 248 px in theory, much less in effect: cells
#   should be a few tens of pixels across, hence the rescaling to the model's
#   `diam_mean` (30 px for cells, 17 for nuclei) before the network runs.
# - **BatchNorm.** In `train()` mode it normalises with the statistics of the
#   batch and updates its running averages; in `eval()` mode it uses those
#   averages. Always call `net.eval()` before predicting (the package does),
#   and remember that a batch of one image trains badly.
# - **Size.** 6.6 million parameters, 25 MiB in float32. On a CPU the narrow
#   (16, 32, 64, 128) network is four times cheaper and good enough for
#   teaching; on a GPU use Cellpose's widths.
# - **Weights.** `model.save`/`model.load` keep our folder format
#   (safetensors + config.json); `load_cellpose_weights` and
#   `export_cellpose_weights` read and write Cellpose's own files.
#
# ## Exercises
#
# 1. **Concatenated skips.** A classic U-Net concatenates the skip instead of
#    adding it, so the first convolution of each up block sees twice the
#    channels. Change `params_by_hand` (or write a variant) and compute how many
#    parameters Cellpose's network would have with concatenated skips. What
#    fraction more is that?

# %% tags=["solution"]
def up_params_concat(c_in, c_out, s, k):
    # input and skip concatenated (c_in + c_out channels) into the first convolution; the rest as before
    return (conv_params(c_in, c_out, 1) + conv_params(c_in + c_out, c_out, k)
            + 3 * (s * c_out + c_out + conv_params(c_out, c_out, k)))


widths_up = (*FEATURES, FEATURES[-1])
concat_total = total - sum(stages[f"decoder.{i}"] for i in range(len(FEATURES))) + sum(
    up_params_concat(widths_up[i + 1], widths_up[i], FEATURES[-1], KERNEL) for i in range(len(FEATURES)))
print(f"added skips: {total:,d}; concatenated: {concat_total:,d} ({concat_total / total - 1:+.1%})")
assert concat_total > total
# Only the first conv of each up block grows, by c_out * c_out * 9 weights (and 2 c_out BatchNorm
# parameters): about 12 % more parameters, and twice the input channels at that layer.

# %% [markdown]
# 2. **A bigger kernel.** Compute the theoretical receptive field and the
#    parameter count with 5x5 kernels (`ModelConfig(kernel_size=5)`), and
#    check the count with `count_parameters`.

# %% tags=["solution"]
rf5 = receptive_field(len(FEATURES), k=5)[-1][2]
p5 = count_parameters(CellposeUNet(ModelConfig(kernel_size=5)))
assert p5 == sum(params_by_hand(FEATURES, k=5).values())
print(f"5x5: receptive field {rf5} px (3x3: {RF}), {p5:,d} parameters ({p5 / total:.1f}x)")
# The field roughly doubles (each conv adds 4 j instead of 2 j) and the parameters grow 2.6-fold
# (25 / 9 for every 3x3 conv; 1x1 convs, biases and BatchNorm stay): a wider view is cheaper
# through depth (more scales) than through bigger kernels.

# %% [markdown]
# 3. **Three scales.** Build a network with three scales,
#    `ModelConfig(features=(32, 64, 128))`. What input sizes does it accept,
#    what is its receptive field, and how many parameters does it have?

# %% tags=["solution"]
cfg3 = ModelConfig(features=(32, 64, 128))
rf3 = receptive_field(3)[-1][2]
p3 = count_parameters(CellposeUNet(cfg3))
print(f"3 scales: inputs multiple of {cfg3.size_multiple}, field {rf3} px, {p3:,d} parameters")
with torch.no_grad():
    y3, style3 = CellposeUNet(cfg3).eval()(torch.zeros(1, 2, 100, 100))
assert cfg3.size_multiple == 4 and y3.shape[-2:] == (100, 100) and style3.shape == (1, 128)
# 100 x 100 is fine now (a multiple of 4), the field shrinks to about half (116 px), and dropping
# the 256-channel scale removes most of the parameters: the deepest scale is the expensive one.


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) The network: residual U-Net, additive skips, the style vector and why it is there; the size model.
# - Stringer, C. & Pachitariu, M. Cellpose3: one-click image restoration for improved cellular segmentation. *Nature Methods* 22, 592-599 (2025). [doi:10.1038/s41592-025-02595-5](https://doi.org/10.1038/s41592-025-02595-5) Cellpose 3, whose code (`cellpose` 3.1.1.2, `resnet_torch.CPnet`) is the reference checked here.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.

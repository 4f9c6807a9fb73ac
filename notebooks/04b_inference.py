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
# # 04b · Inference, opened up
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/04b_inference.ipynb) (replace OWNER with the repository's owner once it is published)
#
# Notebook 04 built the network; notebook 03 turned flows into masks. Between
# the two sits everything `predict.segment` does to run a network trained on
# 224-pixel crops of cells of one size on an image of any size with cells of
# any size. This notebook takes that call apart and rebuilds it step by step
# in NumPy (torch only to call the network), checking every step against the
# package: `run_net` for the network's outputs, `segment` for the masks and
# the diameter.
#
# **What you will learn**
#
# - why and how the image is zoomed to the model's diameter
#   (`diam_mean / diameter`, bilinear) and padded (to a multiple of 16, plus
#   8 pixels on each side);
# - how a large input is cut into overlapping tiles, and how the tile outputs
#   are blended with a taper so that no seams show (`run_net`);
# - flip test-time augmentation, and why a flipped tile's flows must change
#   sign as well as place;
# - how the outputs go back to the original size, and why the number of Euler
#   steps grows with the diameter (`n_iter_for`);
# - how the diameter is estimated when nobody gives it: the size model's guess
#   from the style, one segmentation, the median diameter of its masks.
#
# **What you need**: notebooks 03 (masks from flows) and 04 (the network).
# PyTorch (the CPU build is enough), NumPy, matplotlib. No GPU, no data
# download: the shipped nuclei model and a bundled sample image.

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

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: a crop of the sample, small tiles
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default); small tiles run best on one
DEVICE = "cpu"  # the by-hand runs and the package's on one device, so that they agree to round-off
MODEL = "nuclei"  # the model shipped with the package (diam_mean 17 px)
SAMPLE = "fluorescence"  # bundled DSB2018 sample: 256 x 256, 36 annotated nuclei
CROP = 128 if QUICK else None  # side of the top-left crop of the sample (None: the whole image)
DIAMETER = None  # sections 1-4: nuclei diameter (px); None: the annotation's median diameter
TILE = 64 if QUICK else 224  # tile side, a multiple of 16; 224 is the package's TILE_SIZE (QUICK: small, for many tiles)
BATCH = 2  # tiles per forward pass in the by-hand runs (the package's CPU default)
ATOL = 1e-3  # outputs by hand vs the package: round-off (inputs differ by ~1e-5, the network amplifies it)
FLIP_WINDOW = 48  # section 3: side of the window (zoomed pixels) where the flipped flows are drawn
ZOOMS = (0.6, 1.5)  # section 5: the image is also zoomed by these factors to test the diameter estimate

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.patches import Rectangle

from cellpose_nb import data, masks, metrics, model, plot, predict
from cellpose_nb.flows import FLOW_SCALE, flows_to_rgb
from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict.net import _resize as package_resize  # the package's (private) bilinear resize

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


def max_diff(a, b):
    """Largest absolute difference of two arrays (printed next to every assert)."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# %% [markdown]
# ## 1. Zoom to the model's diameter, then pad
#
# The network was trained on cells of one size, its `diam_mean` (17 px for the
# shipped nuclei model, 30 px for Cellpose's cell models). An image whose cells
# are `d` pixels across is zoomed by
#
# $$
# s = \frac{d_\text{mean}}{d}, \qquad H' = \lfloor s H \rfloor, \quad W' = \lfloor s W \rfloor,
# $$
#
# so that its cells have the size the network knows. The zoom is **bilinear**
# with pixel centres aligned (torch's `align_corners=False`, OpenCV's
# `INTER_LINEAR`, which Cellpose uses): output pixel $i$ sits at the input
# position $u_i = (i + \tfrac12)\,H / H' - \tfrac12$ (clipped at 0) and takes
#
# $$
# x'_i = (1 - w_i)\, x_{\lfloor u_i \rfloor} + w_i\, x_{\lfloor u_i \rfloor + 1}, \qquad w_i = u_i - \lfloor u_i \rfloor,
# $$
#
# along rows, then the same along columns. Each axis is one matrix: the zoom
# is `R @ x @ C.T`, with `R` (H' x H) and `C` (W' x W) holding two weights per
# row.
#
# The image is the bundled fluorescence sample (in QUICK mode its top-left
# corner). It was part of the model's training data: the masks found here are
# a sanity check, not a score.

# %%
net = model.load_pretrained(MODEL, device=DEVICE)
diam_mean = float(net.config.diam_mean)
sample = data.load_sample(SAMPLE)
image = sample.image if CROP is None else sample.image[:CROP, :CROP]
truth = sample.labels if CROP is None else masks.renumber(sample.labels[:CROP, :CROP])
d = predict.median_diameter(truth) if DIAMETER is None else float(DIAMETER)

channels, invert = predict.input_knobs(net)  # the model's recipe: ("gray", None), invert="auto"
x = to_network_input(image, channels=channels, invert=invert)  # (2, H, W): normalised image, zeros
scale = diam_mean / d
zoomed_shape = tuple(max(1, int(n * scale)) for n in x.shape[1:])
print(f"image {image.shape}, {plural(int(truth.max()), 'annotated nucleus', 'annotated nuclei')}, "
      f"median diameter d = {d:.2f} px; diam_mean {diam_mean:g} px -> zoom s = {scale:.3f}, "
      f"{x.shape[1:]} -> {zoomed_shape}")


def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) weights of a bilinear zoom along one axis, pixel centres aligned."""
    u = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(u).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = u - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - w)
    np.add.at(m, (np.arange(n_out), hi), w)
    return m


def zoom(a, shape):
    """Bilinear zoom of a (C, H, W) array to (C, *shape): rows, then columns."""
    rows, cols = bilinear_matrix(a.shape[-2], shape[0]), bilinear_matrix(a.shape[-1], shape[1])
    return (rows @ a @ cols.T).astype(np.float32)


xs = zoom(x, zoomed_shape)
xs_package = package_resize(x, zoomed_shape)
print(f"zoom: largest difference from the package's {max_diff(xs, xs_package):.1e}")
assert xs.shape == xs_package.shape and np.allclose(xs, xs_package, atol=1e-5)
assert np.allclose(bilinear_matrix(7, 11).sum(axis=1), 1)  # every output pixel: weights summing to 1

# %% [markdown]
# The network halves the image three times (four scales, notebook 04), so its
# input must be a multiple of 8; Cellpose pads to a multiple of 16, and adds
# 8 zero pixels on each side so that cells at the border have some context:
#
# $$
# p = 16 \left\lceil H' / 16 \right\rceil - H', \qquad
# \text{top} = 8 + \lfloor p/2 \rfloor, \quad \text{bottom} = 8 + p - \lfloor p/2 \rfloor,
# $$
#
# and the same for the columns. The package's `tile_layout` says where the
# padded image starts and how big it is.

# %%
MULTIPLE = math.lcm(predict.PAD_MULTIPLE, net.config.size_multiple)  # 16 (the network needs 8)


def padding(n, multiple=MULTIPLE, extra=predict.PAD_EXTRA):
    """(before, after) zeros along an axis of n pixels."""
    p = -(-n // multiple) * multiple - n  # ceil(n / multiple) * multiple - n
    return extra + p // 2, extra + p - p // 2


pads = [padding(n) for n in zoomed_shape]
padded_shape = tuple(n + a + b for n, (a, b) in zip(zoomed_shape, pads))
layout = predict.tile_layout(zoomed_shape, tile_size=TILE)
print(f"zoomed {zoomed_shape} -> padded {padded_shape}: rows {pads[0]}, cols {pads[1]} zeros before/after")
assert padded_shape == layout.shape and (pads[0][0], pads[1][0]) == layout.pad
assert all(n % MULTIPLE == 0 for n in padded_shape)

xp = np.zeros((x.shape[0], *padded_shape), np.float32)  # the padded network input
xp[:, pads[0][0]:pads[0][0] + zoomed_shape[0], pads[1][0]:pads[1][0] + zoomed_shape[1]] = xs

fig, axes = plt.subplots(1, 3, figsize=(15, 5))
plot.show_image(image, ax=axes[0], title=f"the image {image.shape}, nuclei ~{d:.0f} px")
plot.show_image(xs[0], ax=axes[1], title=f"zoomed by {scale:.2f}: {zoomed_shape}, nuclei ~{diam_mean:g} px")
plot.show_image(xp[0], ax=axes[2], title=f"padded to {padded_shape}")
axes[2].add_patch(Rectangle((pads[1][0] - 0.5, pads[0][0] - 0.5), zoomed_shape[1], zoomed_shape[0],
                            fill=False, ec="c", lw=1, ls="--"))
show(fig)

# %% [markdown]
# ## 2. Overlapping tiles, blended with a taper
#
# The network could run on the whole padded image at once: it is fully
# convolutional (the style aside). Cellpose cuts it into tiles of 224 x 224
# instead, the size it was trained on, which also bounds the memory. Along an
# axis of $L$ padded pixels there are
#
# $$
# n = \left\lceil (1 + 2\,\text{overlap})\, \frac{L}{T} \right\rceil
# $$
#
# tiles of side $T$ (one tile of side $L$ if $L \le T$), evenly spaced from 0
# to $L - T$ (`np.linspace`, truncated), with `overlap = 0.1`: neighbours
# share at least a tenth of a tile. Predictions near a tile's edge are worse
# (the network sees zeros, or nothing, beyond it), so each tile's output is
# weighted by a **taper**, a sigmoid that is about 1 in the middle and falls
# to 1/2 at 20 px from the edge:
#
# $$
# w(i) = \frac{1}{1 + \exp\!\big((|i - \tfrac{T-1}{2}| - (\tfrac{T}{2} - 20)) / 7.5\big)}, \qquad
# W(r, c) = w(r)\, w(c),
# $$
#
# and the blended output is the weighted mean over the tiles $t$ that cover a
# pixel $p$:
#
# $$
# y(p) = \frac{\sum_t W_t(p)\, y_t(p)}{\sum_t W_t(p)}.
# $$
#
# (Along an axis with a single tile the package takes $w = 1$: the factor is
# the same for every term and cancels.) In QUICK mode the tiles are
# 64 px instead of 224, so that even a small image has several.

# %%
def tile_grid(shape, tile, overlap=predict.TILE_OVERLAP):
    """Tile size and start positions (padded coordinates) along each axis of the padded image."""
    lo, hi = predict.OVERLAP_RANGE
    overlap = min(hi, max(lo, overlap))
    sizes = [min(tile, n) for n in shape]
    counts = [1 if n <= tile else math.ceil((1 + 2 * overlap) * n / tile) for n in shape]
    return tuple(sizes), [np.linspace(0, n - t, k).astype(int) for n, t, k in zip(shape, sizes, counts)]


def taper(n, margin=predict.TAPER_MARGIN, sigma=predict.TAPER_SIGMA):
    """Blending weight along one axis of a tile of n pixels."""
    dist = np.abs(np.arange(n) - (n - 1) / 2)
    return 1 / (1 + np.exp((dist - (n / 2 - margin)) / sigma))


tile_shape, (rows, cols) = tile_grid(padded_shape, TILE)
assert tile_shape == layout.tile and np.array_equal(rows, layout.rows) and np.array_equal(cols, layout.cols)
weight_tile = np.outer(*[taper(t) if len(s) > 1 else np.ones(t) for t, s in zip(tile_shape, (rows, cols))])
assert np.allclose(np.outer(taper(TILE), taper(TILE)), predict.taper_mask((TILE, TILE)), atol=1e-6)
print(f"{plural(len(rows) * len(cols), 'tile')} of {tile_shape}: rows start at {rows.tolist()}, "
      f"cols at {cols.tolist()}")

# %% [markdown]
# Now run the network on every tile ourselves (in batches of `BATCH` tiles,
# in eval mode, without gradients), add the weighted outputs into one sum and
# the weights into another, divide, and cut the padding away. The network
# also returns a style vector per tile (unit length); the image's style is
# their sum, made unit length again.

# %%
def run_network(tiles, batch=BATCH):
    """The network on a stack of tiles (N, C, h, w): outputs (N, 3, h, w) and styles (N, S)."""
    ys, styles = [], []
    net.eval()
    with torch.inference_mode():
        for k in range(0, len(tiles), batch):
            y, style = net(torch.from_numpy(np.ascontiguousarray(tiles[k:k + batch])))
            ys.append(y.numpy())
            styles.append(style.numpy())
    return np.concatenate(ys), np.concatenate(styles)


def blend(outputs, starts, tile_shape, padded_shape, weight):
    """Weighted mean of tile outputs (N, C, h, w) placed at starts [(row, col)] in the padded image."""
    total = np.zeros((outputs.shape[1], *padded_shape))
    weights = np.zeros(padded_shape)
    for y, (r, c) in zip(outputs, starts):
        total[:, r:r + tile_shape[0], c:c + tile_shape[1]] += weight * y
        weights[r:r + tile_shape[0], c:c + tile_shape[1]] += weight
    return (total / weights).astype(np.float32), weights


def unit(v):
    return v / np.sqrt((v.astype(np.float64) ** 2).sum())


def crop(a, pads, shape):
    """The image's part of a padded (C, H, W) array."""
    return a[:, pads[0][0]:pads[0][0] + shape[0], pads[1][0]:pads[1][0] + shape[1]]


starts = [(r, c) for r in rows for c in cols]
tiles = np.stack([xp[:, r:r + tile_shape[0], c:c + tile_shape[1]] for r, c in starts])
tile_out, tile_styles = run_network(tiles)
blended, weight_sum = blend(tile_out, starts, tile_shape, padded_shape, weight_tile)
y_hand = crop(blended, pads, zoomed_shape)
style_hand = unit(tile_styles.sum(axis=0))

out = predict.run_net(xs, net, tile_size=TILE)
print(f"tiles {tiles.shape} -> outputs {tile_out.shape} -> blended {y_hand.shape}")
print(f"largest difference from run_net: outputs {max_diff(y_hand, out.y):.1e} "
      f"(outputs up to {np.abs(out.y).max():.1f}), style {max_diff(style_hand, out.style):.1e}")
assert y_hand.shape == out.y.shape and np.allclose(y_hand, out.y, atol=ATOL)
assert np.allclose(style_hand, out.style, atol=1e-5)

# %% [markdown]
# The taper of one tile, and what it does over the whole image: the tile grid
# on the padded input, and the sum of the weights (dark where only the edges
# of tiles cover a pixel: along the border of the padded image and, for small
# tiles, between the tile centres; dividing by this sum makes the blend a
# weighted mean everywhere).

# %%
fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1, 1.2, 1, 1]})
for t in sorted({TILE, predict.TILE_SIZE}):
    axes[0].plot(np.arange(t) - t // 2, taper(t), label=f"tile of {t} px")
axes[0].axhline(0.5, color="k", lw=0.5, ls=":")
axes[0].set_xlabel("position from the tile centre (px)")
axes[0].set_title("taper along one axis: 1/2 at 20 px from the edge")
axes[0].legend(fontsize=8)
im = axes[1].imshow(weight_tile, cmap="viridis", vmin=0, vmax=1)
axes[1].set_title(f"weight of one {tile_shape[0]} x {tile_shape[1]} tile")
fig.colorbar(im, ax=axes[1], shrink=0.8)
plot.show_image(xp[0], ax=axes[2], title=f"{plural(len(starts), 'tile')} on the padded input")
for k, (r, c) in enumerate(starts):
    colour = plt.cm.tab10(k % 10)
    axes[2].add_patch(Rectangle((c - 0.5, r - 0.5), tile_shape[1], tile_shape[0], fc=(*colour[:3], 0.12),
                                ec=colour, lw=1.5))
im = axes[3].imshow(weight_sum, cmap="magma")
axes[3].set_title("sum of the weights over the tiles")
fig.colorbar(im, ax=axes[3], shrink=0.8)
for ax in axes[1:]:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# ## 3. Flip test-time augmentation
#
# A trained network is nearly, not exactly, symmetric: the same cells seen
# upside down give slightly different outputs. `augment=True` averages over
# orientations. The tiles overlap by half (at least two per axis, the padded
# image at least one tile large), so every pixel is seen by about four tiles,
# and tile $(j, i)$ (row $j$, column $i$ of the grid) is flipped up-down when
# $i$ is odd and left-right when $j$ is odd (both when both are), Cellpose's
# convention. Its output is flipped back before blending.
#
# Flipping the output back puts every value in its place, but a flow is a
# **vector**. Flip an image up-down, $\tilde x(r, c) = x(H - 1 - r, c)$: a
# cell's centre that was below a pixel is now above it, so a flow that pointed
# down points up. If the network is flip-equivariant, its flows on the flipped
# image are
#
# $$
# \tilde u(r, c) = \big(-u_\text{row}(H - 1 - r, c),\; u_\text{col}(H - 1 - r, c)\big):
# $$
#
# flipping back restores the positions, and the component along the flipped
# axis must also change sign. The cell probability, a scalar, is only flipped
# back. First the whole image, flipped up-down:

# %%
flows_plain = out.y[:2] / FLOW_SCALE
flipped_back = predict.run_net(xs[:, ::-1].copy(), net, tile_size=TILE).y[:, ::-1]  # flipped back, sign kept
fixed = flipped_back.copy()
fixed[0] *= -1  # ... and d_row negated
inside = out.y[2] > 0
for name, y in (("flipped back", flipped_back), ("flipped back, d_row negated", fixed)):
    corr = [np.corrcoef(y[k][inside], out.y[k][inside])[0, 1] for k in range(3)]
    print(f"{name:28s}: correlation with the plain output inside cells: "
          f"d_row {corr[0]:+.2f}, d_col {corr[1]:+.2f}, cellprob {corr[2]:+.2f}")
assert np.corrcoef(flipped_back[0][inside], out.y[0][inside])[0, 1] < -0.5
assert np.corrcoef(fixed[0][inside], out.y[0][inside])[0, 1] > 0.5

# %% [markdown]
# Now the augmented tiling by hand: the layout, the flips, the network, the
# flips undone (with and without the sign change), the blend.

# %%
def tta_grid(shape, tile):
    """Padded shape, tile size and starts of the augmented tiling (half overlap, >= 2 tiles per axis)."""
    shape = tuple(max(n, tile) for n in shape)
    counts = [max(2, math.ceil(2 * n / tile)) for n in shape]
    return shape, (tile, tile), [np.linspace(0, n - tile, k).astype(int) for n, k in zip(shape, counts)]


def flips_of(j, i):
    """Axes of a (C, h, w) tile flipped for tile (j, i): rows when i is odd, cols when j is odd."""
    return tuple(ax for ax, odd in ((1, i % 2), (2, j % 2)) if odd)


def unflip(y, axes, negate=True):
    """Undo a tile's flips on its (3, h, w) output; negate the flow along each flipped axis."""
    y = np.flip(y, axes).copy()
    if negate:
        for ax in axes:
            y[ax - 1] *= -1  # axis 1 (rows) -> d_row, channel 0; axis 2 (cols) -> d_col, channel 1
    return y


tta_shape, tta_tile, (tta_rows, tta_cols) = tta_grid(padded_shape, TILE)
tta_layout = predict.tile_layout(zoomed_shape, tile_size=TILE, augment=True)
assert tta_shape == tta_layout.shape and tta_tile == tta_layout.tile
assert np.array_equal(tta_rows, tta_layout.rows) and np.array_equal(tta_cols, tta_layout.cols)

xp_tta = np.zeros((x.shape[0], *tta_shape), np.float32)  # padding as before, plus zeros after
xp_tta[:, :padded_shape[0], :padded_shape[1]] = xp
grid = [(j, i) for j in range(len(tta_rows)) for i in range(len(tta_cols))]
tta_starts = [(tta_rows[j], tta_cols[i]) for j, i in grid]
tta_tiles = np.stack([np.flip(xp_tta[:, r:r + TILE, c:c + TILE], flips_of(j, i))
                      for (j, i), (r, c) in zip(grid, tta_starts)])
tta_out, tta_styles = run_network(tta_tiles)
tta_weight = np.outer(taper(TILE), taper(TILE))

results = {}
for negate in (True, False):
    undone = np.stack([unflip(y, flips_of(j, i), negate) for y, (j, i) in zip(tta_out, grid)])
    results[negate] = crop(blend(undone, tta_starts, tta_tile, tta_shape, tta_weight)[0], pads, zoomed_shape)
y_tta = results[True]

out_tta = predict.run_net(xs, net, tile_size=TILE, augment=True)
n_flipped = sum(bool(flips_of(j, i)) for j, i in grid)
print(f"augment: {plural(len(grid), 'tile')} ({n_flipped} flipped), largest difference from "
      f"run_net(augment=True): outputs {max_diff(y_tta, out_tta.y):.1e}, "
      f"style {max_diff(unit(tta_styles.sum(axis=0)), out_tta.style):.1e}")
print(f"augmented vs plain output: largest difference {max_diff(y_tta, out.y):.2f} "
      f"(in units of FLOW_SCALE x flow and logits)")
assert np.allclose(y_tta, out_tta.y, atol=ATOL)
assert np.allclose(unit(tta_styles.sum(axis=0)), out_tta.style, atol=1e-5)

# %% [markdown]
# What the sign change is for: the flows of the flipped image, flipped back
# with and without it, and the masks of an augmented prediction whose flipped
# tiles kept their sign (section 4 shows how masks come out of these outputs;
# here we only call the package).

# %%
def quick_masks(y):
    """Masks of a (3, H', W') output at the zoomed size, with the model's thresholds."""
    th = net.record.thresholds
    return masks.compute_masks(y[:2] / FLOW_SCALE, y[2], cellprob_threshold=th["cellprob_threshold"],
                               flow_threshold=th["flow_threshold"])


good, bad = quick_masks(y_tta), quick_masks(results[False])
print(f"masks at the zoomed size: augmented {good.max()}, augmented without the sign change {bad.max()}")
assert bad.max() < good.max()

# a window around the nucleus nearest the middle, with arrows, so that the directions can be read
centres = np.array([np.argwhere(good == k).mean(axis=0) for k in range(1, good.max() + 1)])
mid = centres[np.argmin(np.hypot(*(centres - np.array(good.shape) / 2).T))].astype(int)
half = min(FLIP_WINDOW, *good.shape) // 2
r0, c0 = (int(np.clip(m - half, 0, n - 2 * half)) for m, n in zip(mid, good.shape))
window = (slice(None), slice(r0, r0 + 2 * half), slice(c0, c0 + 2 * half))

fig, axes = plt.subplots(1, 5, figsize=(22, 4.8))
for ax, (title, y) in zip(axes, (("network on the image", out.y),
                                 ("on the flipped image, flipped back", flipped_back),
                                 ("... and d_row negated", fixed))):
    f, inside_w = y[window][:2] / FLOW_SCALE, y[window][2] > 0
    ax.imshow(flows_to_rgb(f, mask=inside_w))
    plot.quiver_flows(ax, f, step=4, mask=inside_w)
    ax.set_title(f"{title}\n(a {2 * half} x {2 * half} window)")
    ax.set_axis_off()
plot.show_flow_key(axes[0], inset=True)
plot.overlay_labels(xs[0], good, ax=axes[3], title=f"augment: {plural(int(good.max()), 'mask')}")
plot.overlay_labels(xs[0], bad, ax=axes[4], title=f"augment, no sign change: {plural(int(bad.max()), 'mask')}")
show(fig)

# %% [markdown]
# In the middle panel the up/down colours are swapped: the flows point away
# from the cell centres along the rows. Blended with the unflipped tiles, such
# outputs cancel the true flows where tiles overlap, particles stall, and
# cells are lost or cut up.
#
# ## 4. Back to the original size, and the masks
#
# The network's outputs live at the zoomed size. `segment` zooms them back to
# the image's size (bilinear again, now $H' \to H$), divides the flows by
# `FLOW_SCALE` (the network predicts $5\times$ the unit flows, notebook 02),
# and follows them there. At the original size the cells are $1/s$ times the
# size the network saw, and a particle moves at most one pixel per Euler step
# (notebook 03), so the number of steps grows by the same factor:
#
# $$
# n_\text{iter} = \left\lfloor \frac{200}{s} \right\rfloor = \left\lfloor 200\, \frac{d}{d_\text{mean}} \right\rfloor .
# $$
#
# The thresholds are the model's tuned ones (`thresholds.json`), as `segment`
# takes them when none are given.

# %%
y_back = zoom(y_hand, x.shape[1:])
flows, cellprob = y_back[:2] / FLOW_SCALE, y_back[2]
n_iter = max(1, int(masks.N_ITER / scale))
th = {k: net.record.thresholds[k] for k in ("cellprob_threshold", "flow_threshold")}
labels = masks.compute_masks(flows, cellprob, **th, n_iter=n_iter, min_size=masks.MIN_SIZE)

seg = predict.segment(image, net, diameter=d, tile_size=TILE)
print(f"zoom {scale:.3f}: {n_iter} Euler steps (200 x {d:.2f} / {diam_mean:g}); thresholds {th}")
print(f"largest difference from segment: flows {max_diff(flows, seg.flows):.1e}, "
      f"cellprob {max_diff(cellprob, seg.cellprob):.1e}; "
      f"{plural(int(labels.max()), 'mask')}, {int((labels != seg.labels).sum())} pixels labelled differently")
assert n_iter == predict.n_iter_for(scale)
assert np.allclose(flows, seg.flows, atol=ATOL) and np.allclose(cellprob, seg.cellprob, atol=ATOL)
assert np.array_equal(labels, seg.labels)

ap = metrics.average_precision(truth, labels, thresholds=[0.5, 0.75])[0]
print(f"against the annotation (a training image): AP@0.5 {ap[0]:.2f}, AP@0.75 {ap[1]:.2f}")

fig, axes = plt.subplots(1, 3, figsize=(15, 5))
axes[0].imshow(flows_to_rgb(flows, mask=cellprob > th["cellprob_threshold"]))
axes[0].set_title("flows at the original size")
axes[0].set_axis_off()
plot.show_flow_key(axes[0], inset=True)
im = axes[1].imshow(cellprob, cmap="RdBu_r", vmin=-10, vmax=10)
axes[1].set_title("cell probability (logits)")
axes[1].set_axis_off()
fig.colorbar(im, ax=axes[1], shrink=0.8)
plot.overlay_labels(image, labels, ax=axes[2], title=f"{plural(int(labels.max()), 'mask')}, "
                    f"{n_iter} steps: equal to segment(image, net, diameter={d:.1f})")
show(fig)

# %% [markdown]
# Sections 1-4 are the whole of `segment` at a given diameter. As one
# function, to reuse below:

# %%
def segment_by_hand(x, diameter):
    """Labels of a (C, H, W) network input at a diameter: zoom, pad, tiles, blend, zoom back, masks."""
    s = diam_mean / diameter
    shape = tuple(max(1, int(n * s)) for n in x.shape[1:])
    pads = [padding(n) for n in shape]
    padded = tuple(n + a + b for n, (a, b) in zip(shape, pads))
    xp = np.zeros((x.shape[0], *padded), np.float32)
    xp[:, pads[0][0]:pads[0][0] + shape[0], pads[1][0]:pads[1][0] + shape[1]] = zoom(x, shape)
    size, (rows, cols) = tile_grid(padded, TILE)
    weight = np.outer(*[taper(t) if len(g) > 1 else np.ones(t) for t, g in zip(size, (rows, cols))])
    starts = [(r, c) for r in rows for c in cols]
    outputs, _ = run_network(np.stack([xp[:, r:r + size[0], c:c + size[1]] for r, c in starts]))
    y = zoom(crop(blend(outputs, starts, size, padded, weight)[0], pads, shape), x.shape[1:])
    return masks.compute_masks(y[:2] / FLOW_SCALE, y[2], **th, n_iter=max(1, int(masks.N_ITER / s)),
                               min_size=masks.MIN_SIZE)


assert np.array_equal(segment_by_hand(x, d), seg.labels)

# %% [markdown]
# ## 5. When nobody gives the diameter: two stages
#
# `segment(image, net)` without a diameter estimates it, as Cellpose does, in
# two stages.
#
# 1. **The size model's guess.** The style vector (notebook 04) summarises the
#    image, and cell size is part of that summary. The image is tiled *as it
#    is* (no zoom), and only the encoder runs, on at most 2 x 2 tiles (all of
#    them along an axis with at most 2, else those at a quarter and three
#    quarters of the row, `style_tiles`): their styles summed and made unit
#    length give $s$. The size model, a ridge regression fitted when the model
#    was trained (notebook 05), maps it to a diameter:
#
#    $$
#    \hat d_\text{style} = \max\!\Big(5,\; d_\text{mean} \exp\big(a^\top (s - \bar s) + \bar y\big)\Big),
#    $$
#
#    with $a$ the weights, $\bar s$ the mean training style and $\bar y$ the
#    mean of $\log(d / d_\text{mean})$ over the training crops.
# 2. **Measure the masks.** Segment the image at the guess (sections 1-4) and
#    take the median diameter of the masks, each mask's diameter being that of
#    the disc of the same area, $\sqrt{4A/\pi}$. That is the estimate. The
#    guess is rough; masks found at a roughly right zoom measure the cells
#    directly.
#
# Cellpose then segments again at the estimate. The package does so only when
# the estimate is more than `REUSE_TOLERANCE` (40 %) away from the guess; when
# it is closer the first segmentation is kept (measured on the shipped models'
# validation images zoomed 0.5-2x, a second pass within 40 % did not change
# their AP by more than 0.005: `benchmarks/README.md`).

# %%
size_model = predict.SizeModel.from_dict(net.record.size_model)


def pick_tiles(n, grid=predict.STYLE_GRID):
    """The tiles (along an axis of n) that the style is computed on."""
    if n <= grid:
        return list(range(n))
    return sorted({int(math.floor((n - 1) * q + 0.5)) for q in np.linspace(*predict.STYLE_QUANTILES, grid)})


def style_by_hand(x):
    """Unit style of a (C, H, W) input at its own scale: the encoder on a few tiles."""
    pads = [padding(n) for n in x.shape[1:]]
    padded = tuple(n + a + b for n, (a, b) in zip(x.shape[1:], pads))
    xp = np.zeros((x.shape[0], *padded), np.float32)
    xp[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2]] = x
    size, (rows, cols) = tile_grid(padded, TILE)
    tiles = np.stack([xp[:, rows[j]:rows[j] + size[0], cols[i]:cols[i] + size[1]]
                      for j in pick_tiles(len(rows)) for i in pick_tiles(len(cols))])
    with torch.inference_mode():
        styles = net.encode_style(torch.from_numpy(tiles)).numpy()  # the encoder only: cheaper
    return unit(styles.sum(axis=0)), len(tiles)


def guess_by_hand(style):
    log_ratio = size_model.coef @ (style - size_model.style_mean) + size_model.target_mean
    return max(predict.MIN_DIAMETER, diam_mean * math.exp(log_ratio))


def median_diameter_by_hand(labels):
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4 * areas / np.pi))) if areas.size else 0.0


def estimate_by_hand(x):
    """(guess, estimate, passes, labels) of segment without a diameter."""
    style, _ = style_by_hand(x)
    guess = guess_by_hand(style)
    labels = segment_by_hand(x, guess)
    estimate = median_diameter_by_hand(labels) or guess
    if abs(estimate / guess - 1) > predict.REUSE_TOLERANCE:
        return guess, estimate, 2, segment_by_hand(x, estimate)
    return guess, estimate, 1, labels


style, n_style_tiles = style_by_hand(x)
assert np.allclose(style, predict.predict_style(x, net, tile_size=TILE), atol=1e-5)
guess = guess_by_hand(style)
assert math.isclose(guess, predict.style_diameter(x, net, tile_size=TILE), rel_tol=1e-5)
assert math.isclose(median_diameter_by_hand(truth), predict.median_diameter(truth), rel_tol=1e-12)
print(f"style from {plural(n_style_tiles, 'tile')}; size model's guess {guess:.2f} px "
      f"(the annotation's median diameter {d:.2f} px)")

guess, estimate, passes, labels_est = estimate_by_hand(x)
seg_est = predict.segment(image, net, tile_size=TILE)
print(f"estimate {estimate:.2f} px ({plural(passes, 'pass', 'passes')}); segment: {seg_est.diameter:.2f} px, "
      f"notes: {seg_est.notes[-1]}")
assert math.isclose(estimate, seg_est.diameter, rel_tol=1e-9)
assert np.array_equal(labels_est, seg_est.labels)

# %% [markdown]
# A harder test: the same image zoomed out and in (bilinear, by `ZOOMS`), so
# that its nuclei are smaller and larger than the model's 17 px. The truth is
# the median diameter of the annotation zoomed the same way (nearest
# neighbour).

# %%
rows_ = []
for z in (1.0, *ZOOMS):
    shape_z = tuple(int(round(n * z)) for n in image.shape)
    image_z = zoom(image.astype(np.float32)[None], shape_z)[0]
    nearest = [np.minimum((np.arange(m) / z).astype(int), n - 1) for m, n in zip(shape_z, image.shape)]
    truth_z = truth[np.ix_(*nearest)]
    x_z = to_network_input(image_z, channels=channels, invert=invert)
    g, e, p, lab = estimate_by_hand(x_z)
    seg_z = predict.segment(image_z, net, tile_size=TILE)
    assert math.isclose(e, seg_z.diameter, rel_tol=1e-9) and np.array_equal(lab, seg_z.labels)
    rows_.append(dict(zoom=z, image=image_z, labels=lab, truth=predict.median_diameter(truth_z),
                      guess=g, estimate=e, passes=p))
    print(f"zoom {z:.1f} {shape_z}: truth {rows_[-1]['truth']:5.2f} px, guess {g:5.2f} px, "
          f"estimate {e:5.2f} px ({plural(p, 'pass', 'passes')}), {plural(int(lab.max()), 'mask')}")
for r in rows_:  # the masks measure the cells better than the style guesses them
    assert abs(r["estimate"] / r["truth"] - 1) < 0.25, r
    assert abs(math.log(r["estimate"] / r["truth"])) <= abs(math.log(r["guess"] / r["truth"])), r

fig, axes = plt.subplots(1, len(rows_) + 1, figsize=(5 * (len(rows_) + 1), 5))
for ax, r in zip(axes, rows_):
    plot.overlay_labels(r["image"], r["labels"], ax=ax,
                        title=f"zoom {r['zoom']:g}: truth {r['truth']:.1f}, guess {r['guess']:.1f},\n"
                              f"estimate {r['estimate']:.1f} px ({plural(r['passes'], 'pass', 'passes')})")
truths = [r["truth"] for r in rows_]
axes[-1].plot(truths, [r["guess"] for r in rows_], "o", label="size model's guess (style)")
axes[-1].plot(truths, [r["estimate"] for r in rows_], "s", label="estimate (median of the masks)")
lim = [0, 1.2 * max(max(truths), max(r["guess"] for r in rows_))]
axes[-1].plot(lim, lim, "k:", lw=0.8, label="truth")
axes[-1].set_xlabel("true median diameter (px)")
axes[-1].set_ylabel("diameter (px)")
axes[-1].set_title("guess and estimate against the truth")
axes[-1].legend(fontsize=8)
show(fig)

# %% [markdown]
# > **Cellpose 1.0 or 3?** The zoom to the model's diameter, the 224-pixel
# > tiles blended with a taper, the flip augmentation and the two-stage size
# > estimate (the style's guess, then the masks' median diameter) are
# > Cellpose 1.0's. The details here are those of `cellpose` 3.1.1.2, checked
# > in its code: `transforms.resize_image` (bilinear, to `int(L * rescale)`
# > pixels), `get_pad_yx` (a multiple of `div = 16`, plus `extra * div // 2 =
# > 8` pixels on each side), `make_tiles` (`bsize = 224`, `tile_overlap = 0.1`
# > clipped to 0.05-0.5; with `augment`, half-overlapping tiles flipped by the
# > parity of their row and column), `unaugment_tiles` (flip back, negate the
# > flow along each flipped axis), `average_tiles` with `_taper_mask`
# > (`sig = 7.5`, weight 1/2 at 20 px from the edge), `niter = 200 / rescale`
# > (`CellposeModel.eval`) and `SizeModel.eval`. Where the package differs:
# > for tiles other than 224 px, Cellpose cuts the middle out of its 224-pixel
# > taper, the package keeps the 20-pixel margin at every tile size (so QUICK's
# > 64-pixel tiles are blended unlike Cellpose's); Cellpose's size model reads
# > the style of a full network pass over every tile, the package runs the
# > encoder on at most 2 x 2 tiles; Cellpose's refinement pass follows the
# > flows at the zoomed size without interpolation (`resample=False`,
# > `interp=False`), the package's at the original size, as the final pass;
# > and Cellpose always segments a second time at the estimate, the package
# > only when it is more than `REUSE_TOLERANCE` from the guess.

# %% [markdown]
# ## In practice
#
# - **Give the diameter when you know it.** The estimate costs a style pass
#   and a whole segmentation, sometimes two. It depends on the tiling
#   (`tile_size` changes which tiles the style sees) and on the thresholds:
#   `estimate_diameter(x, net)`, like `segment`, uses the model's tuned ones
#   (`predict.model_thresholds(net)`) unless you pass others.
# - **The diameter is the biggest knob.** It decides the zoom, and so what the
#   network sees; the number of Euler steps follows it (`n_iter_for`). A zoom
#   above 10 (`MAX_ZOOM`) or a diameter larger than the image is refused.
# - **Tiles.** 224 px is what the network was trained on; larger tiles mean
#   fewer seams and more memory per batch. `tile_overlap` (0.1 by default)
#   buys smoother seams for more tiles. The blended output is the same for any
#   `batch_size`, up to float round-off: set it for your memory (the package
#   streams the tiles, so only a batch of them exists at a time; the by-hand
#   version above keeps them all).
# - **`augment=True`** runs about four times as many tile pixels (half
#   overlap) for a small gain in smoothness; worth trying on hard images, not
#   a default.
# - **Same numbers, not the same bits.** CPU and GPU, different batch sizes,
#   `precision="bfloat16"`: the outputs agree to round-off (or, for bfloat16,
#   a little more), and masks can differ by a few border pixels.
#
# ## Exercises
#
# 1. **Seams.** Run the network on the zoomed input `xs` as *one* tile
#    (`run_net` with a `tile_size` at least the padded size) and compare it
#    with the tiled outputs blended with the taper (`y_hand`) and with flat
#    weights (all ones). Where are the differences, and which blend is closer
#    to the one-tile output?

# %% tags=["solution"]
one_tile = predict.run_net(xs, net, tile_size=-(-max(padded_shape) // MULTIPLE) * MULTIPLE).y
flat = crop(blend(tile_out, starts, tile_shape, padded_shape, np.ones(tile_shape))[0], pads, zoomed_shape)
err_taper, err_flat = np.abs(y_hand - one_tile).mean(), np.abs(flat - one_tile).mean()
print(f"mean |difference| from the one-tile output: taper {err_taper:.4f}, flat {err_flat:.4f}")
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, y, name in zip(axes, (y_hand, flat), ("taper", "flat weights")):
    ax.imshow(np.abs(y - one_tile).sum(axis=0), cmap="magma", vmax=np.abs(flat - one_tile).sum(axis=0).max())
    ax.set_title(f"|tiled - one tile|, {name}")
    ax.set_axis_off()
show(fig)
assert err_taper < err_flat
# With flat weights the differences jump at the tile borders: there a tile sees zeros (or nothing)
# beyond its edge, and its poor predictions count as much as those of a tile that sees the pixel from
# its middle. The taper gives them little weight, and the seams fade. Not every difference is a seam:
# each tile computes its own style vector (notebook 04) from what it sees, so even tile centres differ
# a little from the one-tile run, whose style summarises the whole image.

# %% [markdown]
# 2. **A wrong diameter.** Segment the image at a quarter of and at three
#    times the true diameter `d` (`segment(image, net, diameter=...)`) and
#    compare the number of masks, their total area and AP@0.5 / AP@0.75
#    against the annotation. What goes wrong each way?

# %% tags=["solution"]
ap75 = {}
for factor in (0.25, 1.0, 3.0):
    lab = predict.segment(image, net, diameter=factor * d, tile_size=TILE).labels
    ap5, ap75[factor] = metrics.average_precision(truth, lab, thresholds=[0.5, 0.75])[0]
    print(f"diameter {factor:4g} x d = {factor * d:5.1f} px: {plural(int(lab.max()), 'mask'):>8s} "
          f"({int(truth.max())} annotated), area {int((lab > 0).sum())} (annotated {int((truth > 0).sum())}), "
          f"AP@0.5 {ap5:.2f}, AP@0.75 {ap75[factor]:.2f}")
assert ap75[1.0] > max(ap75[0.25], ap75[3.0])
# Three times the diameter zooms the image out: nuclei of about 6 px, at the limit of what the network
# resolves; its coarse outputs, zoomed back up, give masks that spill over their nuclei (too much area)
# and AP@0.75 collapses first. A quarter of the diameter zooms in by about 5: nuclei four times the size
# the network knows, far beyond its training; flows and probabilities break up, and only a few small
# masks survive. The network tolerates a factor of about 2 either way (try 0.5 and 2).

# %% [markdown]
# 3. **Does augmentation help here?** Segment with and without `augment=True`
#    at the true diameter: time both, and compare AP@0.5 and AP@0.75.

# %% tags=["solution"]
import time

for aug in (False, True):
    t0 = time.perf_counter()
    lab = predict.segment(image, net, diameter=d, tile_size=TILE, augment=aug).labels
    seconds = time.perf_counter() - t0
    ap5, ap75 = metrics.average_precision(truth, lab, thresholds=[0.5, 0.75])[0]
    print(f"augment={aug!s:5s}: {seconds:.2f} s, {plural(int(lab.max()), 'mask')}, AP@0.5 {ap5:.2f}, AP@0.75 {ap75:.2f}")
# Slower (about four times the tile pixels in half-overlapping tiles, though the flows take part of the
# time either way) for a change in the second decimal, if any: on an easy image like this one the
# network is nearly flip-symmetric already.


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) Inference: the zoom to the model's diameter, tiles blended with a taper, flip augmentation, the size model and the two-stage diameter estimate.
# - Stringer, C. & Pachitariu, M. Cellpose3: one-click image restoration for improved cellular segmentation. *Nature Methods* 22, 592-599 (2025). [doi:10.1038/s41592-025-02595-5](https://doi.org/10.1038/s41592-025-02595-5) Cellpose 3, whose code (`cellpose` 3.1.1.2: `transforms.py`, `core.run_net`, `models.py`) fixes the details listed in the box above.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.
# - Caicedo, J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. *Nature Methods* 16, 1247-1253 (2019). [doi:10.1038/s41592-019-0612-7](https://doi.org/10.1038/s41592-019-0612-7) The sample image (DSB2018, CC0) and the shipped model's training data.

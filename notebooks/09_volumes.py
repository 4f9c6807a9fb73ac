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
# # 09 · Volumes
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/09_volumes.ipynb) (replace OWNER with the repository's owner once it is published)
#
# A confocal or light-sheet stack is a volume, (Z, Y, X), and its cells are
# 3D objects. Cellpose segments volumes with the same **2D** network, in one
# of two ways: run it on the slices of all three orientations and combine
# their 2D flows into a 3D flow field, followed in 3D ("2.5D", `do_3D`), or
# segment every YX slice in 2D and link the masks of consecutive slices
# ("stitching"). This notebook builds the 3D flows by hand, shows why the
# 2.5D combination works, what the anisotropy (Z sampled more coarsely than
# X and Y) does to it, and how the two ways compare on touching cells.
#
# **What you will learn**
#
# - the flows of a volume: heat diffusion in 3D (a 7-point stencil, one
#   iteration count for all cells), written in NumPy and checked bit for bit
#   against `masks_to_flows`;
# - why 2.5D works: the 2D flows of a YX slice are the (d_row, d_col) of the
#   volume, a ZX slice gives (d_z, d_col), a ZY slice (d_z, d_row); combined
#   the 2.5D way with exact slice flows (an "oracle" in place of the network,
#   checked against `predict_flows_3d`), compared with the true 3D flows and
#   followed in 3D; and what following their *sum*, as Cellpose does, costs;
# - anisotropy: what resampling Z changes for the network, the units of d_z
#   once the flows are brought back to the stored slices, and what we measured
#   with the shipped model (right, wrong and resampled-by-hand anisotropy);
# - stitching against 3D flows on touching cells (where stitching adds or
#   merges masks) and what an empty slice does to each;
# - the `VolumeExplorer`: three orthogonal cuts, with a static figure where
#   widgets are not available.
#
# **What you need**: notebooks 02 (flows) and 03 (masks from flows); 00 for
# `segment` and the shipped model. NumPy, SciPy, matplotlib and torch; a CPU
# is enough (the volumes are small).

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

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: small volumes, few cells
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default)
# idle OpenMP threads sleep instead of spinning: numba's parallel 3D kernels and torch share the
# CPU cores, and on a busy 2-core machine spinning made one segment() call take 7-60 s instead of 2-3 s.
# It only takes effect before numba and torch are first imported (the next cell).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
DEVICE = None  # None: cuda -> mps -> cpu, whichever is there; or "cpu", "cuda:0", "mps"
MODEL = "nuclei"  # the model shipped with the package

SEED = 0  # seed of every synthetic volume
TOY_SHAPE = (20, 40, 40)  # (Z, Y, X) of the two hand-made touching cells of section 1
TOY_CELLS = (((9.5, 19.0, 13.0), (7.0, 9.0, 10.0)),  # (centre, semi-axes) of each ellipsoid, voxels
             ((10.0, 20.0, 27.0), (8.0, 11.0, 8.0)))
SHAPE = (24, 64, 64) if QUICK else (40, 128, 128)  # (Z, Y, X) of the isotropic synthetic volume
N_CELLS = 6 if QUICK else 24  # cells drawn in each synthetic volume
DIAMETER = 24.0 if QUICK else 30.0  # cell diameter, in-plane pixels
ANISOTROPY = 3  # Z step / XY pixel size of the volume of section 3 (an integer: Z is resampled by repeating slices)
ANISO_SHAPE = (12, 64, 64) if QUICK else (16, 128, 128)  # (Z, Y, X) of that volume: 36 x 64 x 64 (48 x 128 x 128) pixels of space
STITCH_THRESHOLD = 0.25  # IoU to link masks of consecutive slices (a common Cellpose choice)
EMPTY_SLICE = SHAPE[0] // 2  # the slice blanked in section 4 and exercise 3
IOU_THRESHOLDS = (0.5, 0.75, 0.9)  # AP is reported at these IoUs
ATOL = 1e-5  # tolerance of comparisons that go through float32 network outputs

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from scipy import ndimage

from cellpose_nb import data, metrics, plot
from cellpose_nb.flows import FLOW_SCALE, masks_to_flows
from cellpose_nb.flows3d import heat_map_3d, object_centers_3d
from cellpose_nb.masks import compute_masks
from cellpose_nb.masks3d import cluster_endpoints_3d, compute_masks_3d, follow_flows_3d
from cellpose_nb.model import load_pretrained
from cellpose_nb.predict import (
    FLOW_GAIN_3D,
    input_knobs,
    n_iter_for,
    predict_flows_3d,
    segment,
    volume_input,
)
from cellpose_nb.stitch import stitch_slices
from cellpose_nb.widgets import VolumeExplorer

if THREADS is not None:
    torch.set_num_threads(THREADS)
plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 cell', '4 cells', '1 slice': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def ap3d(truth, pred, thresholds=IOU_THRESHOLDS):
    """AP of one volume at each IoU threshold.

    `average_precision` takes 2D label images; IoU only counts voxels, so a
    (Z, Y, X) volume viewed as a (Z, Y * X) image has the same IoUs, the same
    matching and the same AP.
    """
    z = truth.shape[0]
    return metrics.average_precision(truth.reshape(z, -1), pred.reshape(z, -1), thresholds=thresholds)[0]


def ap_text(ap):
    return " / ".join(f"{a:.2f}" for a in ap)


def cut(a, view, index):
    """A 2D cut of a (..., Z, Y, X) array: 'yx' at z, 'zx' at y, 'zy' at x."""
    return {"yx": lambda: a[..., index, :, :], "zx": lambda: a[..., :, index, :],
            "zy": lambda: a[..., :, :, index]}[view]()


def draw_cut(ax, image, labels, title, *, stretch=1, colours=False):
    """An image cut with its label outlines (or colours); Z rows repeated `stretch` times."""
    rgb = plot.image_to_rgb(np.repeat(image, stretch, axis=0))
    lab = np.repeat(labels, stretch, axis=0)
    ax.imshow(plot.overlay_rgb(rgb, lab, alpha=0.35 if colours else 0.0), interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()


# %% [markdown]
# ## 1. Heat diffusion in 3D, by hand
#
# Notebook 02 built the flows of a 2D cell: heat injected at its centre
# pixel, diffused inside the cell, its normalised gradient. The 3D version,
# as Cellpose's `masks_to_flows_gpu_3d` does it (the package follows
# `cellpose` 3.1.1.2, see `cellpose_nb/flows3d.py`), differs in three
# details:
#
# 1. **The centre** is still the voxel of the cell nearest the mean of its
#    voxels (the first one in raster order on a tie).
# 2. **The stencil** has 7 points, not 9: a voxel becomes the mean of itself
#    and its 6 face neighbours, neighbours outside the cell counting as 0.
#    With $T^{(t)}$ the heat, $c$ the centre and $\Omega$ the cell,
#    $$
#    T^{(t+1)}(v) = \frac{1}{7}\Big(\tilde T(v) + \sum_{u \in N_6(v)} \tilde T(u)\Big)\ \text{ for } v \in \Omega, \qquad
#    T^{(t+1)}(v) = 0 \ \text{ outside}, \qquad \tilde T = T^{(t)} + \delta_c .
#    $$
# 3. **One iteration count for every cell**, `6 * max(lz + ly + lx + 3)` over
#    the cells' bounding boxes (Cellpose diffuses the whole volume at once).
#
# The gradient is the central difference of the heat on the whole volume, so
# a voxel on a face shared with another cell reads that cell's heat too (also
# as Cellpose's 3D code; its 2D code reads 0 there). Then each vector is
# divided by its length.
#
# Two touching ellipsoids, drawn by hand (a voxel shared by both goes to the
# one whose normalised radius is smaller):

# %%
zz, yy, xx = np.indices(TOY_SHAPE, dtype=float)
rho = np.stack([np.sqrt(((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2)
                for c, r in TOY_CELLS])  # normalised radius: < 1 inside each ellipsoid
toy = np.where(rho.min(axis=0) < 1, rho.argmin(axis=0) + 1, 0).astype(np.int32)
print(f"{plural(int(toy.max()), 'cell')} of {np.bincount(toy.ravel())[1:].tolist()} voxels, "
      f"{int((ndimage.binary_dilation(toy == 1) & (toy == 2)).sum())} voxels of cell 2 touch cell 1")

# bounding boxes, as (z0, z1, y0, y1, x0, x1), and Cellpose's one iteration count
boxes = []
for k in (1, 2):
    idx = np.nonzero(toy == k)
    boxes.append([v for axis in idx for v in (axis.min(), axis.max() + 1)])
boxes = np.array(boxes)
n_iter = 6 * max((b[1] - b[0]) + (b[3] - b[2]) + (b[5] - b[4]) + 3 for b in boxes)

heat = np.zeros(TOY_SHAPE)  # float64, as the package
centres = []
for k, b in zip((1, 2), boxes):
    box = tuple(slice(b[2 * i], b[2 * i + 1]) for i in range(3))
    inside = np.pad(toy[box] == k, 1)  # the box padded by one voxel: every cell voxel has 6 neighbours
    zs, ys, xs = np.nonzero(inside)  # raster order: argmin takes the first tie
    j = np.argmin((zs - zs.mean()) ** 2 + (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    centre = (zs[j], ys[j], xs[j])
    centres.append([int(b[0] + zs[j] - 1), int(b[2] + ys[j] - 1), int(b[4] + xs[j] - 1)])
    t = np.zeros(inside.shape)
    for _ in range(n_iter):
        t[centre] += 1.0  # the source
        p = np.pad(t, 1)
        # the voxel and its 6 face neighbours, summed in the package's order, times 1/7
        s = (p[1:-1, 1:-1, 1:-1] + p[2:, 1:-1, 1:-1] + p[:-2, 1:-1, 1:-1] + p[1:-1, 2:, 1:-1]
             + p[1:-1, :-2, 1:-1] + p[1:-1, 1:-1, 2:] + p[1:-1, 1:-1, :-2])
        t = inside * (s * (1.0 / 7.0))  # 0 outside the cell: an absorbing border
    own = toy[box] == k
    heat[box][own] = t[1:-1, 1:-1, 1:-1][own]

# central differences over the whole volume (0 beyond it), then unit length
p = np.pad(heat, 1)
grad = np.stack([p[2:, 1:-1, 1:-1] - p[:-2, 1:-1, 1:-1],   # d_z
                 p[1:-1, 2:, 1:-1] - p[1:-1, :-2, 1:-1],   # d_row
                 p[1:-1, 1:-1, 2:] - p[1:-1, 1:-1, :-2]])  # d_col
toy_flows = np.where(toy > 0, grad / (1e-60 + np.sqrt((grad ** 2).sum(axis=0))), 0.0).astype(np.float32)

ids, pkg_centres = object_centers_3d(toy)
assert np.array_equal(pkg_centres, centres)
assert np.array_equal(heat, heat_map_3d(toy))  # the same heat, to the last bit
assert np.array_equal(toy_flows, masks_to_flows(toy))  # masks_to_flows sees a volume and diffuses in 3D
print(f"n_iter = {n_iter}; centres {centres}; heat and flows identical to the package's")

# the 2D rule (a neighbour of another cell counts as 0) would differ on the shared face only
p_own = [np.pad(np.where(toy == k, heat, 0.0), 1) for k in (1, 2)]
grad_own = sum(np.where(toy == k, np.stack([q[2:, 1:-1, 1:-1] - q[:-2, 1:-1, 1:-1], q[1:-1, 2:, 1:-1] - q[1:-1, :-2, 1:-1],
                                            q[1:-1, 1:-1, 2:] - q[1:-1, 1:-1, :-2]]), 0.0)
               for k, q in zip((1, 2), p_own))
flows_own = np.where(toy > 0, grad_own / (1e-60 + np.sqrt((grad_own ** 2).sum(axis=0))), 0.0)
differ = (np.abs(flows_own - toy_flows).max(axis=0) > 1e-3) & (toy > 0)
face = ndimage.binary_dilation(toy == 1) & (toy == 2) | ndimage.binary_dilation(toy == 2) & (toy == 1)
assert not (differ & ~face).any()  # only voxels with a face neighbour in the other cell
print(f"reading the neighbour's heat changes the flow of {differ.sum()} voxels "
      f"({differ.sum() / (toy > 0).sum():.1%} of the cells), all next to the shared face")

# %% [markdown]
# The three components on a YX slice and a ZX cut through the first
# centre. Each is the share of the unit vector along its axis: red where the
# centre lies further along that axis, blue where it lies before.

# %%
cz, cy, cx = centres[0]
fig, axes = plt.subplots(2, 4, figsize=(14, 6.2))
for row, (view, index) in enumerate((("yx", cz), ("zx", cy))):
    lab = cut(toy, view, index)
    h = cut(heat, view, index)
    axes[row, 0].imshow(np.log10(np.where(h > 0, h, np.nan)), cmap="magma")
    axes[row, 0].set_title(f"log10(heat), {view.upper()} at {'z' if view == 'yx' else 'y'}={index}")
    for k, name in enumerate(("d_z", "d_row", "d_col")):
        axes[row, k + 1].imshow(np.where(lab > 0, cut(toy_flows[k], view, index), np.nan), cmap="RdBu_r", vmin=-1, vmax=1)
        axes[row, k + 1].set_title(f"{name}, {view.upper()}")
    for ax in axes[row]:
        ax.contour(lab, levels=[0.5, 1.5], colors="0.4", linewidths=0.6)
        ax.set_axis_off()
fig.suptitle("two touching cells: heat and flow components (rows of the ZX cut are z)")
show(fig)

# %% [markdown]
# On the YX slice through the centre, d_z is close to 0 (the centre is in
# this plane) and (d_row, d_col) are a 2D flow field. On the ZX cut d_row is
# close to 0 and (d_z, d_col) point to the centre. That is the observation
# behind 2.5D.
#
# ## 2. Why 2.5D works
#
# A 2D network cannot see a volume, but it can see its slices, in three
# orientations. A cut through a convex 3D cell is a 2D cell, and the 2D
# flows of that cut point to *its* centre, which lies near the 3D centre's
# projection onto the cut. So:
#
# | slice | its rows, cols | its 2D flows estimate |
# |---|---|---|
# | YX (one per z) | y, x | d_row, d_col |
# | ZX (one per y) | z, x | d_z, d_col |
# | ZY (one per x) | z, y | d_z, d_row |
#
# Every component is estimated twice; Cellpose adds the two estimates
# (`predict_flows_3d` returns their mean, and `segment` follows
# `FLOW_GAIN_3D = 2` times the mean, which is Cellpose's sum). Here the
# slices' flows are the exact 2D flows of the label slices: no network, so
# what we measure is the combination itself.
#
# The synthetic volume first, in its three orientations:

# %%
iso = data.make_synthetic_volume(SHAPE, n_cells=N_CELLS, diameter=DIAMETER, anisotropy=1.0, seed=SEED)
labels = iso.labels
cellprob = np.where(labels > 0, 5.0, -5.0).astype(np.float32)  # a perfect cell probability (logits)
flows3d = masks_to_flows(labels)  # the true 3D flows
ids, iso_centres = object_centers_3d(labels)
c0 = iso_centres[np.argmax(np.bincount(labels.ravel())[1:])]  # centre of the largest cell
print(f"volume {SHAPE}, {plural(int(labels.max()), 'cell')}, largest cell's centre {tuple(int(v) for v in c0)}")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), gridspec_kw={"width_ratios": [SHAPE[2], SHAPE[2], SHAPE[1]]})
for ax, view, index, name in zip(axes, ("yx", "zx", "zy"), (c0[0], c0[1], c0[2]), ("z", "y", "x")):
    draw_cut(ax, cut(iso.image[..., 0], view, index), cut(labels, view, index),
             f"{view.upper()} slice at {name}={index}")
fig.suptitle("cytoplasm channel and true outlines; in the ZX and ZY slices the rows are z")
show(fig)


# %% [markdown]
# The 2D flows of every slice, in every orientation, put in place. Loops
# over slices are fine here: each call is one 2D `masks_to_flows`.

# %%
def slice_flows(labels):
    """Exact 2D flows of every YX, ZX and ZY slice: (3 components, 2 estimates, Z, Y, X).

    Component 0 (d_z) comes from the ZX and ZY slices, 1 (d_row) from the YX
    and ZY slices, 2 (d_col) from the YX and ZX slices.
    """
    est = np.zeros((3, 2) + labels.shape, np.float32)
    for z in range(labels.shape[0]):  # YX slices: (d_row, d_col)
        est[1, 0, z], est[2, 0, z] = masks_to_flows(labels[z])
    for y in range(labels.shape[1]):  # ZX slices: (d_z, d_col)
        est[0, 0, :, y], est[2, 1, :, y] = masks_to_flows(labels[:, y])
    for x in range(labels.shape[2]):  # ZY slices: (d_z, d_row)
        est[0, 1, :, :, x], est[1, 1, :, :, x] = masks_to_flows(labels[:, :, x])
    return est


estimates = slice_flows(labels)
flows25 = estimates.mean(axis=1)  # each component: the mean of its two estimates

cells = labels > 0
cosine = (flows25 * flows3d).sum(axis=0)[cells] / np.maximum(np.linalg.norm(flows25, axis=0)[cells], 1e-12)
length = np.linalg.norm(flows25, axis=0)[cells]
print(f"2.5D vs true 3D flows over {cells.sum()} cell voxels: mean cosine {cosine.mean():.3f}, "
      f"{(cosine > 0.9).mean():.1%} of voxels above 0.9; mean length of the 2.5D vector {length.mean():.2f}")
assert cosine.mean() > 0.9


# %% [markdown]
# The same combination, done by the package: `predict_flows_3d` runs "the
# network" on every slice of the three orientations and combines the outputs.
# Give it an *oracle*, a module that answers every slice with the exact 2D
# flows of the labels it is shown (the labels travel in channel 0 of the
# input), and it must return our `flows25`.

# %%
class ExactSliceFlows(torch.nn.Module):
    """A stand-in for the network: the exact 2D flows (x FLOW_SCALE) of the label slice in channel 0."""

    def forward(self, x):
        lab = x[:, 0].round().long().cpu().numpy()
        y = np.zeros((x.shape[0], 3, *x.shape[2:]), np.float32)
        for b in range(x.shape[0]):
            y[b, :2] = FLOW_SCALE * masks_to_flows(lab[b])  # what the network is trained to predict
            y[b, 2] = np.where(lab[b] > 0, 5.0, -5.0)
        return torch.from_numpy(y), torch.zeros(x.shape[0], 1)


x_labels = np.stack([labels, np.zeros_like(labels)]).astype(np.float32)  # the "image": labels and an empty channel
oracle_flows, oracle_prob, _ = predict_flows_3d(x_labels, ExactSliceFlows(), scale=1.0, anisotropy=1.0)
assert np.allclose(oracle_flows, flows25, atol=ATOL)
assert np.allclose(oracle_prob, cellprob, atol=ATOL)
print("predict_flows_3d with the oracle = our combination; largest difference",
      f"{np.abs(oracle_flows - flows25).max():.1e}")

# %% [markdown]
# Where do the 2.5D flows and the true ones differ? The components on the
# YX slice through the largest cell's centre, and the cosine between the two
# vectors:

# %%
fig, axes = plt.subplots(2, 4, figsize=(14, 7))
for row, (name, f) in enumerate((("true 3D", flows3d), ("2.5D (mean of slice flows)", flows25))):
    for k, comp in enumerate(("d_z", "d_row", "d_col")):
        axes[row, k].imshow(np.where(labels[c0[0]] > 0, f[k, c0[0]], np.nan), cmap="RdBu_r", vmin=-1, vmax=1)
        axes[row, k].set_title(f"{name}: {comp}")
cos_map = np.full(labels.shape, np.nan)
cos_map[cells] = cosine
im = axes[0, 3].imshow(cos_map[c0[0]], cmap="viridis", vmin=0, vmax=1)
axes[0, 3].set_title("cosine(2.5D, 3D)")
fig.colorbar(im, ax=axes[0, 3], shrink=0.8)
axes[1, 3].hist(cosine, bins=50, range=(-1, 1), color="0.4")
axes[1, 3].set_yscale("log")
axes[1, 3].set_title("cosine over all cell voxels")
for ax in axes.ravel()[:7]:
    ax.contour(labels[c0[0]], levels=np.arange(labels.max()) + 0.5, colors="0.5", linewidths=0.4)
    ax.set_axis_off()
show(fig)

# %% [markdown]
# The two fields agree almost everywhere. They differ along lines through
# the centres (a slice that misses the 3D centre has its own centre, and its
# flows turn there) and at borders between touching cells. A cosine near 1
# is what matters for following: particles still reach the right centre. Follow both, 200 steps in 3D
# (`compute_masks_3d`), once at the mean (gain 1) and once at Cellpose's sum
# (gain `FLOW_GAIN_3D`):

# %%
rows = []
for name, f in (("true 3D flows", flows3d), ("2.5D, mean", flows25), ("2.5D, sum (gain 2)", FLOW_GAIN_3D * flows25)):
    pred = compute_masks_3d(f, cellprob)
    rows.append((name, pred, ap3d(labels, pred), (pred > 0).sum() / cells.sum()))
    print(f"{name:>19s}: {plural(int(pred.max()), 'mask'):>9s}, {rows[-1][3]:.0%} of the cell voxels in a mask, "
          f"AP@{'/'.join(map(str, IOU_THRESHOLDS))} {ap_text(rows[-1][2])}")
assert rows[0][2][-1] == 1.0 and rows[1][2][-1] == 1.0  # exact 3D flows and the mean of exact slice flows: perfect
ap25_mean, ap25_sum = rows[1][2], rows[2][2]

# why the sum loses voxels: the histogram bins (truncated end points) of each cell's particles
for gain in (1.0, FLOW_GAIN_3D):
    res = follow_flows_3d(gain * flows25 * cells, cells)
    owner = labels[tuple(res.starts)]  # the true cell of each particle
    got = cluster_endpoints_3d(res.ends, res.starts, SHAPE)[tuple(res.starts)]  # its label after clustering
    bins = res.ends.astype(np.int64)  # the histogram bin of each end point
    n_bins = [len(np.unique(bins[:, owner == k], axis=1).T) for k in ids]
    print(f"gain {gain:.0f}: bins per cell {n_bins}")
worst = ids[np.argmax([(got[owner == k] == 0).mean() for k in ids])]  # the cell that loses most, at gain 2
b, inverse, counts = np.unique(bins[:, owner == worst].T, axis=0, return_inverse=True, return_counts=True)
print(f"gain {FLOW_GAIN_3D:.0f}, cell {worst}: " + ", ".join(
    f"bin {tuple(x)} x{n} {'labelled' if got[owner == worst][inverse.ravel() == i].all() else 'no label'}"
    for i, (x, n) in enumerate(zip(b.tolist(), counts))))
assert (got[owner == worst] == 0).any() and len(b) > 1

# %% [markdown]
# The mean of exact slice flows segments the volume perfectly: the 2.5D
# combination itself is sound. Their *sum* does not. Exact flows keep a
# length of about 1 right up to the centre, where they flip direction; steps
# twice as long jump over the fixed point and settle into a 2-cycle, back and
# forth between two positions 2 voxels apart. After 200 steps a cell's end
# points sit in 2 to 4 bins with an empty bin between them. Notebook 03's
# clustering then keeps only one of them: the others are not seeds (a seed
# is the maximum of its 5x5x5 neighbourhood) and the seed's growth moves only
# through bins holding more than 2 end points, so it cannot cross the empty
# one. Their voxels get no label.
#
# That is not a bug of this package: `cellpose` 3.1.1.2's own
# `dynamics.compute_masks(..., do_3D=True)` on the same summed flows (x 5,
# its network scale) drops about the same share of voxels (on the QUICK-mode
# volume it kept 61 % of the cell voxels, this package 62 %); we checked it
# once, it is not run here, to keep `cellpose` optional. A network's flows are
# shorter near the centres (section 4 measures it), so its steps shrink
# there; on the isotropic volume of section 4, `segment(..., do_3d=True)`
# kept every cell whole (AP 1 at IoU 0.9 in both QUICK and full mode).
#
# ## 3. Anisotropy
#
# Most stacks sample Z more coarsely than X and Y: the **anisotropy** is the
# Z step over the pixel size, e.g. 3 for 0.33 µm pixels and 1 µm slices.
# A cell then spans 3 times fewer slices than pixels, and in the ZX and ZY
# slices it looks flattened. `segment(..., do_3d=True, anisotropy=A)` does
# what Cellpose 3 does: it stretches Z by `A` (trilinear), so that the
# network sees round cells of the size it knows in all three orientations,
# then resizes its outputs back to the stored slices and follows them there,
# with one difference that this section explains: it divides d_z by `A`.

# %%
aniso = data.make_synthetic_volume(ANISO_SHAPE, n_cells=N_CELLS, diameter=DIAMETER, anisotropy=ANISOTROPY, seed=SEED)
a_labels = aniso.labels
a_image = aniso.image[..., 0]  # the cytoplasm channel
a_prob = np.where(a_labels > 0, 5.0, -5.0).astype(np.float32)
ya = int(np.argmax([len(np.unique(a_labels[:, y])) for y in range(ANISO_SHAPE[1])]))  # the ZX cut through the most cells
print(f"volume {ANISO_SHAPE} at anisotropy {ANISOTROPY}: {plural(int(a_labels.max()), 'cell')}, "
      f"a cell spans about {DIAMETER / ANISOTROPY:.0f} slices")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
draw_cut(axes[0], a_image[:, ya], a_labels[:, ya], f"ZX cut at y={ya}, as stored ({ANISO_SHAPE[0]} slices)")
draw_cut(axes[1], a_image[:, ya], a_labels[:, ya], f"the same cut, Z stretched x{ANISOTROPY}: round cells",
         stretch=ANISOTROPY)
show(fig)


# %% [markdown]
# **The units of d_z.** In the stretched volume a flow of d_z = 1 means "one
# stretched voxel", that is 1 / A of a stored slice. Resized back to the
# stored slices, the flows keep their values: a particle following them
# moves A times too fast along Z. With exact flows we can see what this
# does. Stretch the labels (repeat each slice A times), take the exact
# slice flows there, keep the middle copy of each slice (what resizing back
# gives for repeated slices), and follow them at Cellpose's gain, as they
# are and with d_z divided by A:

# %%
stretched = np.repeat(a_labels, ANISOTROPY, axis=0)
back = slice_flows(stretched).mean(axis=1)[:, ANISOTROPY // 2 :: ANISOTROPY]  # (3, Z, Y, X) at the stored slices
back_dz = back.copy()
back_dz[0] /= ANISOTROPY  # d_z in stored slices

kept = {}
for name, f in (("stored slices, no resampling", slice_flows(a_labels).mean(axis=1)),
                ("stretched, back as is", back), ("stretched, back, d_z / A", back_dz)):
    for gain in (1.0, FLOW_GAIN_3D):
        pred = compute_masks_3d(gain * f, a_prob)
        kept[name, gain] = (pred > 0).sum() / (a_labels > 0).sum()
        print(f"{name:>29s}, gain {gain:.0f}: {kept[name, gain]:4.0%} of the cell voxels in a mask, "
              f"AP {ap_text(ap3d(a_labels, pred))}")
assert all(kept[name, 1.0] > 0.99 for name in ("stored slices, no resampling", "stretched, back as is"))
assert kept["stretched, back, d_z / A", FLOW_GAIN_3D] > kept["stretched, back as is", FLOW_GAIN_3D]

# %% [markdown]
# With exact flows at gain 1 the anisotropy does not matter at all: exact
# flows point to the centre in any grid, squashed or not. At Cellpose's gain
# the steps overshoot (section 2), and along Z they overshoot A times more
# when d_z is left in stretched units; dividing it by A puts most voxels back
# into their masks.
#
# That is why `predict_flows_3d` divides d_z by `A` when it resizes the
# flows back. `cellpose` 3.1.1.2 does not (we read its `_run_net`): its
# particles move `A` times too far along Z at every step.
#
# Now the shipped model. It is a 2D nuclei model trained on DSB2018; we give
# it the cytoplasm channel of the synthetic volume (bright, touching blobs).
# Four ways to handle the anisotropy:
#
# - (a) `segment(..., do_3d=True, anisotropy=A)`, the package's way (d_z / A);
# - (b) `anisotropy=1`: ignore it, the network sees flattened cells in ZX and ZY;
# - (c) Cellpose 3.1.1.2's way: the flows of (a), `predict_flows_3d`, with
#   d_z multiplied back by A (left in stretched units), then followed
#   exactly as `segment` does;
# - (d) stretch Z ourselves (linear interpolation), segment the stretched
#   volume as isotropic, and take the masks back at the stored slices
#   (nearest neighbour).

# %%
net = load_pretrained(MODEL, device=DEVICE)
scale = net.config.diam_mean / DIAMETER  # the model's cell size over ours
knobs = input_knobs(net, None, None)  # the model's input recipe (a gray channel, inverted only if dark cells)
cp_threshold = net.record.thresholds["cellprob_threshold"]  # the model's tuned threshold, as segment uses
print(f"model {MODEL!r}: diam_mean {net.config.diam_mean:g}, our cells {DIAMETER:g} px -> scale {scale:.2f}; "
      f"cellprob threshold {cp_threshold:g}")

variants = {}
variants["(a) anisotropy=A"] = segment(a_image, net, do_3d=True, anisotropy=ANISOTROPY, diameter=DIAMETER).labels
variants["(b) anisotropy=1"] = segment(a_image, net, do_3d=True, anisotropy=1.0, diameter=DIAMETER).labels

x = volume_input(a_image, channels=knobs.channels, invert=knobs.invert)
f_a, prob_a, _ = predict_flows_3d(x, net, scale=scale, anisotropy=ANISOTROPY)
follow = dict(cellprob_threshold=cp_threshold, n_iter=n_iter_for(scale))  # segment's settings
same_as_a = compute_masks_3d(FLOW_GAIN_3D * f_a, prob_a, **follow)
assert np.array_equal(same_as_a, variants["(a) anisotropy=A"])  # (a), rebuilt from its parts
f_c = f_a.copy()
f_c[0] *= ANISOTROPY  # d_z back in stretched units, as cellpose 3.1.1.2 leaves it
variants["(c) d_z not divided"] = compute_masks_3d(FLOW_GAIN_3D * f_c, prob_a, **follow)

stretched_image = ndimage.zoom(a_image, (ANISOTROPY, 1, 1), order=1, mode="nearest", grid_mode=True)
up = segment(stretched_image, net, do_3d=True, anisotropy=1.0, diameter=DIAMETER).labels
middle = np.minimum(((np.arange(ANISO_SHAPE[0]) + 0.5) * ANISOTROPY).astype(int), up.shape[0] - 1)
variants["(d) stretched by hand"] = up[middle]  # the stretched slice at the middle of each stored slice

a_ap = {}
for name, pred in variants.items():
    a_ap[name] = ap3d(a_labels, pred)
    print(f"{name:>22s}: {plural(int(pred.max()), 'mask'):>9s} ({int(a_labels.max())} cells), "
          f"{(pred > 0).sum() / (a_labels > 0).sum():4.0%} of the cell volume, AP {ap_text(a_ap[name])}")
assert a_ap["(d) stretched by hand"][0] >= 0.8 and a_ap["(a) anisotropy=A"][0] >= 0.8
assert a_ap["(a) anisotropy=A"][1] >= a_ap["(c) d_z not divided"][1]

# %%
fig, axes = plt.subplots(1, 1 + len(variants), figsize=(4 * (1 + len(variants)), 3.2))
draw_cut(axes[0], a_image[:, ya], a_labels[:, ya], "truth", stretch=ANISOTROPY, colours=True)
for ax, (name, pred) in zip(axes[1:], variants.items()):
    draw_cut(ax, a_image[:, ya], pred[:, ya], f"{name}\nAP@0.75 {a_ap[name][1]:.2f}", stretch=ANISOTROPY, colours=True)
fig.suptitle(f"ZX cut at y={ya}, Z stretched x{ANISOTROPY} for display")
show(fig)

# %% [markdown]
# Read these numbers for what they are: one small synthetic volume, a
# model that has only seen 2D nuclei images, AP of one volume's matching.
# What they show here:
#
# - (a), the package's way, and (d), stretching Z by hand and following the
#   flows in the stretched volume where all three axes have the same unit,
#   gave the same, complete masks (AP 1 at IoU 0.9 in QUICK and in full mode).
# - (c), d_z left in stretched units as `cellpose` 3.1.1.2 leaves it, loses
#   voxels: its masks come out too small (69 % of the cell volume in QUICK
#   mode, AP 0.71 / 0.20 / 0.20; 96 % and 1.00 / 0.77 / 0.77 in full mode).
#   Same network outputs as (a): the loss comes from the unit of d_z alone.
# - ignoring the anisotropy, (b), still found every cell here: at
#   anisotropy 3 a cell is still 8-10 slices thick, and the 2D flows of a
#   flattened blob point across its short axis, which is Z. Its masks were
#   less exact at IoU 0.9 (0.50 in QUICK mode, 0.64 in full mode).
#
# ## 4. Stitching against 3D flows on touching cells
#
# The other way: segment every YX slice in 2D, then link masks of
# consecutive slices when their IoU is at least `stitch_threshold`
# (`stitch_slices`, after `cellpose.utils.stitch3D`). With exact 2D flows per
# slice the 2D masks are (nearly) the true cuts, so what goes wrong is the
# linking alone:
#
# - the **cap** of a cell, its first or last slice, can be much smaller than
#   the slice next to it: IoU below the threshold, and the cap becomes a mask
#   of its own (a false positive);
# - a cell whose top face touches the bottom face of another, with
#   overlapping footprints, can be linked to it: one mask for two cells.
#
# 3D flows have neither problem: every voxel flows to its own cell's centre.

# %%
per_slice = np.stack([compute_masks(masks_to_flows(labels[z]), cellprob[z], min_size=-1)
                      for z in range(SHAPE[0])])  # 2D masks of each slice from exact 2D flows
stitched = stitch_slices(per_slice, STITCH_THRESHOLD)
in3d = compute_masks_3d(flows3d, cellprob)  # exact 3D flows, followed in 3D
ap_stitched, ap_3d = ap3d(labels, stitched), ap3d(labels, in3d)
print(f"exact flows, stitched 2D masks: {plural(int(stitched.max()), 'mask')} for {int(labels.max())} cells, "
      f"AP {ap_text(ap_stitched)}")
print(f"exact flows, 3D:                {plural(int(in3d.max()), 'mask')}, AP {ap_text(ap_3d)}")
assert ap_3d[-1] == 1.0 and ap_stitched[0] <= ap_3d[0]


def stitch_errors(truth, pred):
    """(fragments, merges): predicted masks that overlap no true cell by IoU >= 0.5, and
    predicted masks that hold over half of two or more true cells."""
    t, p = truth.ravel(), pred.ravel()
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
    t_size, p_size = np.bincount(t), np.bincount(p)
    iou = inter / (t_size[pairs[0]] + p_size[pairs[1]] - inter)
    matched = set(pairs[1][iou >= 0.5].tolist())
    fragments = [int(k) for k in np.unique(p[p > 0]) if k not in matched]
    holds = pairs[1][inter > 0.5 * t_size[pairs[0]]]
    merges = [int(k) for k in np.unique(holds) if (holds == k).sum() > 1]
    return fragments, merges


fragments, merges = stitch_errors(labels, stitched)
print(f"stitching: {plural(len(fragments), 'fragment')} (masks matching no cell), "
      f"{plural(len(merges), 'merged mask')} (one mask over two or more cells)")

# a ZX cut through the first error, if any
worst = (merges or fragments or [1])[0]
_, st_centres = object_centers_3d(np.where(stitched == worst, 1, 0))
ye = int(st_centres[0][1])
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for ax, (name, lab) in zip(axes, (("truth", labels), (f"stitched (mask {worst} is wrong)", stitched), ("3D flows", in3d))):
    draw_cut(ax, iso.image[:, ye, :, 0], lab[:, ye], f"{name}, ZX at y={ye}", colours=True)
for k in (worst,):
    axes[1].contour(stitched[:, ye] == k, levels=[0.5], colors="red", linewidths=1.2)
show(fig)

# %% [markdown]
# The shipped model, on the cytoplasm channel of the same (isotropic)
# volume, both ways. Here the 2D masks come from the network and carry its
# errors, so stitching has more to go wrong with:

# %%
seg3d = segment(iso.image[..., 0], net, do_3d=True, diameter=DIAMETER)
segst = segment(iso.image[..., 0], net, stitch_threshold=STITCH_THRESHOLD, diameter=DIAMETER)
net_ap = {"do_3d": ap3d(labels, seg3d.labels), "stitched": ap3d(labels, segst.labels)}
for name, seg in (("do_3d", seg3d), ("stitched", segst)):
    fr, mg = stitch_errors(labels, seg.labels)
    print(f"model, {name:>8s}: {plural(int(seg.labels.max()), 'mask'):>9s}, AP {ap_text(net_ap[name])}; "
          f"{plural(len(fr), 'fragment')}, {plural(len(mg), 'merged mask')}")

# the network's flows near the centres: shorter than in the cells' bodies
flow_len = np.linalg.norm(seg3d.flows, axis=0)
near = np.zeros(SHAPE, bool)
near[tuple(iso_centres.T)] = True
near = ndimage.binary_dilation(near, iterations=1) & cells
print(f"length of the model's (mean) 3D flows: {flow_len[cells & ~near].mean():.2f} in the cells, "
      f"{flow_len[near].mean():.2f} next to the centres")
assert flow_len[near].mean() < flow_len[cells & ~near].mean()

# %% [markdown]
# **An empty slice.** A slice can be blank (a dropped frame, a bubble). For
# stitching this means a slice without masks: nothing links across it, so
# every cell that crosses it comes out as two masks, one above and one below.
# The package handles the blank slice; `cellpose.utils.stitch3D` of 3.1.1.2,
# after an empty slice that comes before any stitching, forgets its label
# count and can reuse labels (see `cellpose_nb/stitch.py`).

# %%
gap = per_slice.copy()
gap[EMPTY_SLICE] = 0
stitched_gap = stitch_slices(gap, STITCH_THRESHOLD)
crossing = np.intersect1d(labels[EMPTY_SLICE - 1], labels[EMPTY_SLICE + 1])
crossing = crossing[crossing > 0]  # cells present on both sides of the blank slice
extra = int(stitched_gap.max() - stitched.max())
print(f"blank slice {EMPTY_SLICE}: {plural(len(crossing), 'cell')} cross it; "
      f"stitching now gives {plural(int(stitched_gap.max()), 'mask')} ({extra:+d})")
for c in crossing:  # the mask above and the mask below the blank slice are different
    above = np.unique(stitched_gap[EMPTY_SLICE - 1][labels[EMPTY_SLICE - 1] == c])
    below = np.unique(stitched_gap[EMPTY_SLICE + 1][labels[EMPTY_SLICE + 1] == c])
    assert not set(above[above > 0]) & set(below[below > 0])
assert extra == len(crossing)
assert len(np.unique(stitched_gap[stitched_gap > 0])) == stitched_gap.max()  # no label used twice

# %% [markdown]
# ## 5. The explorer
#
# `VolumeExplorer` shows three orthogonal cuts (XY at z, XZ at y, YZ at x),
# with Z stretched by the anisotropy so that cells look round. Sliders move
# the cuts; a click on a cell (with `ipyevents`) or `pick(view, row, col)`
# highlights it in all three views and moves the cuts through its centre;
# the background can be the image or the flows. Here: the anisotropic volume
# and the masks of (d).

# %%
explorer = VolumeExplorer(aniso.image, variants["(d) stretched by hand"], anisotropy=ANISOTROPY, channel_axis=-1)
z_mid = explorer.position[0]
plane = explorer.labels[z_mid]
row, col = np.argwhere(plane == np.bincount(plane.ravel())[1:].argmax() + 1)[0]  # a voxel of the biggest cut
cell = explorer.pick("xy", row, col)
print(f"picked mask {cell}; the cuts now go through its centre voxel {tuple(explorer.position)}")
assert cell > 0 and explorer.labels[tuple(explorer.position)] == cell

# %% [markdown]
# In Jupyter the next cell is the interactive explorer; on a static page
# (nbviewer, or without `ipywidgets`) the figure after it shows the same
# three views. `explore_volume(...)` returns the explorer, or that static
# figure with a warning when `ipywidgets` is missing.

# %%
explorer

# %%
show(explorer.static(overlay="colours", cell=cell))

# %% [markdown]
# > **Cellpose 1.0 or 3?** 2.5D (2D flows of the YX, ZY and ZX slices
# > combined and followed in 3D) is Cellpose 1.0's method for volumes, and
# > stitching by IoU is its alternative for coarse stacks. The details here
# > follow `cellpose` 3.1.1.2: `CellposeModel.eval(x, do_3D=True,
# > anisotropy=A)` resizes Z by `A` (and every axis by the diameter scale),
# > `core.run_3D` *adds* the two estimates of each flow component and the
# > three cell probabilities, the outputs are resized back to the stored size
# > (`resample=True`, the default) and `dynamics.compute_masks(..., do_3D=True)`
# > follows them in 3D without the flow check. `eval(x, stitch_threshold=t)`
# > segments the slices in 2D and calls `utils.stitch3D`. The 3D heat
# > diffusion of the training flows (7-point stencil, one iteration count) is
# > its `masks_to_flows_gpu_3d`. The package returns the mean of the
# > estimates (so that they read as 2D flows) and follows twice the mean,
# > which gives Cellpose's masks; unlike Cellpose it divides d_z by the
# > anisotropy when it resizes the flows back (section 3), so the two agree
# > at anisotropy 1 only.

# %% [markdown]
# ## In practice
#
# - **The call.** `segment(volume, net, do_3d=True, anisotropy=A,
#   diameter=d)` for 2.5D, `segment(volume, net, stitch_threshold=0.25,
#   diameter=d)` for stitching; `z_axis=` and `channel_axis=` say where Z and
#   the channels are. The command line has the same switches:
#   `cellpose-nb segment stack.tif --out masks/ --3d --z-axis 0 --anisotropy 3`
#   or `--stitch-threshold 0.25` (and `--voxel-size DZ DY DX`, from which the
#   anisotropy is dz / dy).
# - **Which one.** 3D flows use all three orientations and keep a cell whole
#   across a poor slice; they cost three network passes (over Z + Y + X
#   slices of the resampled volume) and a 3D flow following. Stitching costs
#   one pass over the YX slices and works when Z is so coarse that cells span
#   only a few slices, or when slices are not aligned; Cellpose's docs suggest
#   it when 3D segmentation suffers from inhomogeneity along Z.
# - **Anisotropy.** Pass the real one (dz / dy from the microscope's voxel
#   size). `segment(..., anisotropy=A)` divides d_z by `A` when it brings the
#   flows back to the stored slices; `cellpose` 3.1.1.2 does not, and its
#   masks lose voxels along Z at large anisotropies (section 3). Check a few
#   of your own cells in the explorer before trusting either.
# - **Diameter** is the in-plane diameter; `segment` estimates it on the
#   middle slice when the model has a size model and none is given.
# - **No flow check in 3D** (Cellpose skips it); pass `flow_threshold=` to
#   have one, at the price of a 3D `masks_to_flows` of the masks.
# - **Memory.** The network input (2 channels) and one (4, Z, Y, X) float32
#   sum of outputs at the resampled size, a few copies of the volume; volumes
#   beyond memory go block by block (`--dask`, 2D only for now). More in
#   `docs/volumes.md`.
#
# ## Exercises
#
# 1. **Fewer diffusion steps.** `masks_to_flows(labels, n_iter=k)` for a few
#    `k` well below the default: what fraction of the cell voxels get a zero
#    flow (heat has not reached them), and what does that do to
#    `compute_masks_3d`?

# %% tags=["solution"]
results = {}
for k in (5, 10, 20, None):
    f = masks_to_flows(labels, n_iter=k)
    zero = (np.linalg.norm(f, axis=0)[cells] == 0).mean()
    pred = compute_masks_3d(f, cellprob)
    results[k] = (zero, ap3d(labels, pred))
    print(f"n_iter {k if k else 'default'}: {zero:.1%} of the cell voxels with zero flow, AP {ap_text(results[k][1])}")
# After k steps heat has travelled at most k voxels from the centre: farther voxels have no heat, no
# gradient and no flow, stay where they are and end alone in their bin. They get no mask (or tiny ones).
assert results[5][0] > 0.1 and results[None][0] == 0 and results[5][1][-1] < results[None][1][-1] == 1

# %% [markdown]
# 2. **The stitching threshold.** Stitch the per-slice masks of section 4
#    with `stitch_threshold` from 0.05 to 0.9. How do the number of masks and
#    the AP change? Why can the number of masks only go up with the threshold?

# %% tags=["solution"]
counts = []
for t in (0.05, 0.1, 0.25, 0.5, 0.75, 0.9):
    st = stitch_slices(per_slice, t)
    counts.append(int(st.max()))
    print(f"stitch_threshold {t:4.2f}: {plural(counts[-1], 'mask'):>9s}, AP {ap_text(ap3d(labels, st))}")
# A link at a high threshold is also a link at a lower one (its IoU passes both, and it is the best
# partner either way), so raising the threshold only removes links: more, smaller masks (caps and
# slices cut off). Lowering it links more: fewer masks, and touching cells stacked in Z merge.
assert counts == sorted(counts)

# %% [markdown]
# 3. **An empty slice in 3D.** Blank the slice `EMPTY_SLICE` of the cell
#    probability (logits -5) and follow the exact 3D flows with
#    `compute_masks_3d`. How many cells are split in two, compared with
#    stitching in section 4?

# %% tags=["solution"]
prob_gap = cellprob.copy()
prob_gap[EMPTY_SLICE] = -5.0
pred_gap = compute_masks_3d(flows3d, prob_gap)
split = 0
for c in crossing:
    above = np.unique(pred_gap[EMPTY_SLICE - 1][labels[EMPTY_SLICE - 1] == c])
    below = np.unique(pred_gap[EMPTY_SLICE + 1][labels[EMPTY_SLICE + 1] == c])
    split += not (set(above[above > 0]) & set(below[below > 0]))
print(f"3D flows: {plural(split, 'cell')} of {len(crossing)} split by the blank slice (stitching: {len(crossing)})")
# The voxels above and below the gap still flow to their own cell's centre and end in its bin: one
# mask, missing one slice. (A cell whose centre is on the blank slice can split: the flows are zero
# off the foreground, so its particles stop on either side of the gap.)
assert split < len(crossing)

# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) 3D segmentation with a 2D network: flows of the YX, ZY and ZX slices combined, and stitching.
# - Cellpose documentation, 3D segmentation: https://cellpose.readthedocs.io/en/latest/do3d.html (`do_3D`, `anisotropy`, `stitch_threshold`).
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): `models.CellposeModel.eval` / `_run_net`, `core.run_3D`, `dynamics.masks_to_flows_gpu_3d` and `compute_masks`, `utils.stitch3D`; the details marked "Cellpose 3" in this notebook were checked in its code.

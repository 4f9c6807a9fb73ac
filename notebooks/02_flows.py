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
# # 02 · Flows: from labels to a vector field
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/02_flows.ipynb) (replace OWNER with the repository's owner once it is published)
#
# A network cannot output "object 17" directly: numbers of objects change from
# image to image and their order means nothing. Cellpose's trick is to ask
# instead, at every pixel, **which way is the centre of my cell?** The answer
# is a smooth vector field, the *flows*, which a network can learn and from
# which the labels can be recovered (notebook 03).
#
# **What you will learn**
#
# - how Cellpose builds the flows of one cell: find its centre pixel, diffuse
#   heat from it inside the cell, take the gradient, normalise it; derived step
#   by step in NumPy and checked against `masks_to_flows` and `heat_map`;
# - the geodesic (fast-marching style) variant described in the Cellpose method
#   slides: a distance map from the centre, flows = normalised `-grad(distance)`;
#   derived by hand (Dijkstra) and checked against `geodesic_distance` and
#   `masks_to_flows(..., method="fmm")`;
# - how the two compare on awkward shapes (a concave C, an elongated cell,
#   touching cells): colour and arrow plots, the cosine agreement, and what
#   happens when you follow each field;
# - `FLOW_SCALE` and the three maps the network actually predicts.
#
# **What you need**: notebook 01 (label images). NumPy, SciPy, matplotlib; no
# GPU, no torch.

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

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: small images, few objects
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

SEED = 0  # seed of the synthetic image
SHAPE = (96, 96) if QUICK else (192, 192)  # synthetic image size (rows, cols)
N_CELLS = 6 if QUICK else 20  # synthetic cells to draw
DIAMETER = 28.0 if QUICK else 36.0  # synthetic cell diameter, pixels
SNAPSHOTS = (1, 4, 16, 48)  # diffusion iterations to draw (the last panel is the full run)
AWKWARD_SIZE = 48 if QUICK else 72  # side of the canvas of the hand-made awkward shapes
QUIVER_STEP = 3  # draw one arrow every QUIVER_STEP pixels
N_ITER_FOLLOW = 200  # Euler steps when we follow the flows (Cellpose's default)
ATOL = 1e-5  # tolerance of the hand-made vs package comparisons (float32 flows)

# %%
import heapq

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from cellpose_nb import data, masks, metrics, plot
from cellpose_nb.fmm import geodesic_distance
from cellpose_nb.flows import FLOW_SCALE, flows_to_rgb, heat_map, masks_to_flows, object_centers

plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 step', '4 steps', '1 nucleus', '2 nuclei': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def draw_flows(ax, flows, *, step=QUIVER_STEP, title=None, key=True):
    """Flows as colour (direction -> hue) with arrows on top, one every `step` pixels; a colour key in the corner."""
    ax.imshow(flows_to_rgb(flows))
    rows, cols = np.mgrid[: flows.shape[1] : step, : flows.shape[2] : step]
    d_row, d_col = flows[0, ::step, ::step], flows[1, ::step, ::step]
    keep = np.hypot(d_row, d_col) > 0
    # imshow puts row 0 at the top; with angles="xy" an arrow (d_col, d_row) points the same way
    ax.quiver(cols[keep], rows[keep], d_col[keep], d_row[keep], angles="xy", scale_units="xy",
              scale=1.0 / (0.8 * step), width=0.004, color="white")
    if title:
        ax.set_title(title)
    ax.set_axis_off()
    if key:
        plot.show_flow_key(ax, inset=True)  # the colour of a flow pointing from the disc's middle to that point


# %% [markdown]
# ## 1. One cell and its centre
#
# We draw a synthetic image and pick its largest cell. Cellpose's centre is
# the pixel **of the cell** nearest to the mean of its pixel coordinates (the
# mean itself can fall outside a concave cell).
#
# > **Mean or median?** This is Cellpose 3's centre (`cellpose` 3.1.1.2,
# > `dynamics.masks_to_flows_cpu`: `ymed = y.mean()`, then the cell pixel
# > nearest to it). Cellpose 1.0 and 2.0 took the pixel nearest to the
# > **median** of the coordinates (3.1.1.2's own docstring still says
# > "closest to median"). The two rules can pick different pixels, most of
# > all on lopsided cells, and then the flows differ near the centre: flows
# > computed with one rule are not identical to the other's. Everything happens in the
# cell's bounding box padded by one pixel, so that every cell pixel has all
# eight neighbours.

# %%
sample = data.make_synthetic(SHAPE, n_cells=N_CELLS, diameter=DIAMETER, seed=SEED)
labels = sample.labels
cell_id = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1  # the largest cell

rows, cols = np.nonzero(labels == cell_id)
r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
inside = np.pad(labels[r0:r1, c0:c1] == cell_id, 1)  # the padded crop, True on the cell

# nearest pixel to the mean; np.nonzero lists pixels in raster order, argmin takes the first tie
ys, xs = np.nonzero(inside)
k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
centre = (ys[k], xs[k])  # in crop coordinates



def padded_crop(arr):
    """The same padded box cut out of a full-image (..., H, W) array (zeros beyond the image)."""
    pad = [(0, 0)] * (arr.ndim - 2) + [(1, 1), (1, 1)]
    return np.pad(arr, pad)[..., r0 : r1 + 2, c0 : c1 + 2]


ids, centers = object_centers(labels)
assert tuple(centers[ids == cell_id][0]) == (centre[0] + r0 - 1, centre[1] + c0 - 1)
print(f"cell {cell_id}: {inside.sum()} pixels, bounding box {r1 - r0} x {c1 - c0}, centre pixel "
      f"{tuple(int(v) for v in centers[ids == cell_id][0])} in the image")

# %% [markdown]
# ## 2. Heat diffusion, by hand
#
# Put one unit of heat on the centre pixel, then repeat, `n_iter` times:
#
# 1. add 1 to the centre pixel (a constant source);
# 2. replace every pixel by the average of its 3x3 neighbourhood (a Jacobi
#    step of the heat equation);
# 3. set every pixel outside the cell back to 0 (the cell's border absorbs heat).
#
# With $T^{(t)}$ the heat after $t$ steps, $c$ the centre pixel, $\Omega$ the
# cell's pixels and $\delta_c$ one unit of heat on $c$:
#
# $$
# T^{(t+1)}(p) =
# \begin{cases}
# \dfrac{1}{9} \displaystyle\sum_{q \in N_3(p)} \left(T^{(t)} + \delta_c\right)(q) & p \in \Omega, \\
# 0 & p \notin \Omega,
# \end{cases}
# $$
#
# where $N_3(p)$ is the 3x3 box around $p$ (the pixel and its eight
# neighbours) and $T^{(0)} = 0$.
#
# Cellpose runs `n_iter = 2 * (rows + cols)` of the padded box, enough for heat
# to reach every corner of a compact cell.
#
# > **Write it yourself ★: `diffuse`.** In the exercise version of this
# > notebook (`make exercises`) the body of `diffuse` is a TODO: its signature,
# > docstring and hint are given, and the cell after it checks your function
# > against the package's `heat_map`. Difficulty: ★ a few lines straight from
# > the formula, ★★ some care with indices, ★★★ an algorithm to design.

# %% tags=["skeleton"]
def diffuse(inside, centre, n_iter, snapshots=()):
    """Heat diffused from `centre` inside the boolean `inside` (padded crop). Loops are fine.

    Returns the heat after `n_iter` steps and a dict {step: copy of the heat after that step} for
    the steps listed in `snapshots`.
    """
    # Hint: start from np.zeros(inside.shape). Each step: heat[centre] += 1; the 3x3 box sum is
    #   the sum of the nine shifted windows of np.pad(heat, 1); then np.where(inside, box / 9, 0).
    heat = np.zeros(inside.shape)
    kept = {}
    for it in range(1, n_iter + 1):
        heat[centre] += 1.0
        padded = np.pad(heat, 1)
        box = sum(padded[1 + dr : 1 + dr + heat.shape[0], 1 + dc : 1 + dc + heat.shape[1]]
                  for dr in (-1, 0, 1) for dc in (-1, 0, 1))
        heat = np.where(inside, box / 9.0, 0.0)
        if it in snapshots:
            kept[it] = heat.copy()
    return heat, kept


# %%
n_iter = 2 * (inside.shape[0] + inside.shape[1])
heat, snaps = diffuse(inside, centre, n_iter, snapshots=SNAPSHOTS)
print("n_iter =", n_iter)

# the package, on the whole image at once: every cell diffuses on its own
heat_pkg = padded_crop(heat_map(labels))
assert np.allclose(heat[inside], heat_pkg[inside], rtol=1e-9, atol=0)

# %% [markdown]
# Watch the heat spread from the centre (log colour scale: the values span
# many orders of magnitude). After a few dozen steps the field stops changing
# much: heat flows out through the border as fast as it is put in.

# %%
panels = [(f"after {plural(it, 'step')}", snaps[it]) for it in SNAPSHOTS if it in snaps]
panels.append((f"after {plural(n_iter, 'step')}", heat))
fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
for ax, (title, h) in zip(axes, panels):
    ax.imshow(np.log10(np.where(h > 0, h, np.nan)), cmap="magma")
    ax.contour(inside, levels=[0.5], colors="0.5", linewidths=0.8)
    ax.plot(centre[1], centre[0], "c+", ms=10)
    ax.set_title(title)
    ax.set_axis_off()
fig.suptitle("log10(heat)")
show(fig)

# %% [markdown]
# ## 3. Gradient and normalisation
#
# Heat is highest at the centre, so its gradient points toward it. Central
# differences on the padded crop (zero outside the cell) give the two
# components, `d_row = T[r+1, c] - T[r-1, c]` and `d_col = T[r, c+1] - T[r, c-1]`.
# Only the direction matters: we divide by the length, so that the flows are
# unit vectors everywhere inside the cell (the tiny `1e-60` avoids 0/0):
#
# $$
# g(r, c) = \begin{pmatrix} T(r+1, c) - T(r-1, c) \\ T(r, c+1) - T(r, c-1) \end{pmatrix},
# \qquad
# \text{flows}(r, c) = \frac{g(r, c)}{10^{-60} + \lVert g(r, c) \rVert}
# \quad \text{for } (r, c) \in \Omega,
# $$
#
# and 0 outside the cell. (The geodesic version of section 4 uses
# $-\nabla D / \lVert \nabla D \rVert$ with $D$ the distance to the centre.)
#
# > **Write it yourself ★★: `heat_flows`**, checked against `masks_to_flows`
# > in the next cell.

# %% tags=["skeleton"]
def heat_flows(heat, inside):
    """Unit flows (2, H, W) of a padded heat crop; zero outside `inside` and on the padding."""
    # Hint: loop over the pixels (r, c) inside the cell, away from the padding (1 .. H - 2,
    #   1 .. W - 2); d_row = heat[r + 1, c] - heat[r - 1, c], d_col likewise along the row; divide
    #   both by 1e-60 + np.hypot(d_row, d_col).
    flows = np.zeros((2,) + heat.shape)
    for r in range(1, heat.shape[0] - 1):
        for c in range(1, heat.shape[1] - 1):
            if inside[r, c]:
                d_row = heat[r + 1, c] - heat[r - 1, c]
                d_col = heat[r, c + 1] - heat[r, c - 1]
                norm = 1e-60 + np.hypot(d_row, d_col)
                flows[:, r, c] = d_row / norm, d_col / norm
    return flows


# %%
flows_hand = heat_flows(heat, inside)
flows_pkg = masks_to_flows(labels)  # all cells, (2, H, W) float32
crop = padded_crop(flows_pkg) * inside  # this cell only, same padded crop
assert np.allclose(flows_hand, crop, atol=ATOL)
print("largest difference, by hand vs masks_to_flows:", float(np.abs(flows_hand - crop).max()))

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
axes[0].imshow(heat, cmap="magma")
axes[0].plot(centre[1], centre[0], "c+", ms=10)
axes[0].set_title("heat (linear scale)")
axes[0].set_axis_off()
draw_flows(axes[1], flows_hand, step=2, title="flows: colour = direction, arrows")
show(fig)

# %% [markdown]
# > **Checkpoint (discuss in pairs):** why does the gradient of the heat point
# > toward the centre pixel, and why must the cell's border absorb heat (set
# > it to 0) for that to hold everywhere? What would the flows of a cell look
# > like if the heat were never reset outside it?
#
# Whole image: every cell gets its own field; where two cells touch, the
# arrows on either side of the shared border point away from each other, each
# toward its own centre. The flows are unit vectors inside the cells and 0 on
# the background.

# %%
norm = np.hypot(*flows_pkg)
assert np.allclose(norm[labels > 0], 1, atol=ATOL) and not flows_pkg[:, labels == 0].any()

fig, axes = plt.subplots(1, 3, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1, 1, 0.35]})
axes[0].imshow(sample.image[..., 0], cmap="gray")
axes[0].set_title("cytoplasm channel")
axes[0].set_axis_off()
draw_flows(axes[1], flows_pkg, step=2 * QUIVER_STEP, title="masks_to_flows(labels)", key=False)
plot.show_flow_key(axes[2], title="colour key: a flow pointing\nfrom the middle to here")
show(fig)

# %% [markdown]
# ## 4. The geodesic version (what the method slides describe)
#
# The Cellpose slides describe the centre-out field as a **distance map**
# computed with a fast-marching method: how far is each pixel from the centre,
# travelling only through the cell? The flows are then the normalised gradient
# of **minus** that distance (downhill toward the centre).
#
# On a pixel grid, "travelling through the cell" means steps to the 8
# neighbours: 1 for a side step, sqrt(2) for a diagonal one. The shortest such
# path from the centre is Dijkstra's algorithm; the package's
# `geodesic_distance` uses scikit-image's minimum-cost-path solver,
# `skimage.graph.MCP_Geometric` (Dijkstra on the pixel graph), which computes
# the same thing.
#
# So the package's `method="fmm"` is **not** a fast-marching solver of the
# eikonal equation: it is Dijkstra on the 8-connected pixel graph, whose
# distances are path lengths made of side and diagonal steps (section 5 shows
# what that does to the field). The name follows the slides.
#
# > **Write it yourself ★★★: `dijkstra`**, checked against `geodesic_distance`
# > in the next cell.

# %% tags=["skeleton"]
def dijkstra(inside, start):
    """8-connected geodesic distance from `start`, through `inside` only (inf elsewhere)."""
    # Hint: a priority queue (heapq) of (distance, (r, c)) entries, starting with (0.0, start).
    #   Pop the nearest; skip it if a shorter distance is known already; otherwise try its eight
    #   neighbours inside the cell, at 1 (side) or np.sqrt(2.0) (diagonal) further, and push
    #   every neighbour whose distance that shortens.
    dist = np.full(inside.shape, np.inf)
    dist[start] = 0.0
    queue = [(0.0, start)]
    while queue:
        d, (r, c) = heapq.heappop(queue)
        if d > dist[r, c]:
            continue  # an outdated entry
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr or dc) and 0 <= rr < inside.shape[0] and 0 <= cc < inside.shape[1] and inside[rr, cc]:
                    step = np.sqrt(2.0) if dr and dc else 1.0
                    if d + step < dist[rr, cc]:
                        dist[rr, cc] = d + step
                        heapq.heappush(queue, (d + step, (rr, cc)))
    return dist


# %%
dist = dijkstra(inside, centre)
assert np.allclose(dist[inside], geodesic_distance(inside, centre)[inside])
print(f"farthest pixel: {dist[inside].max():.1f} px from the centre, along the cell")

# %% [markdown]
# The gradient must not look across the border (outside, the distance is
# infinite): use central differences where both neighbours are in the cell,
# a one-sided difference where only one is, and 0 where neither is.

# %%
def distance_flows(dist, inside):
    """Unit flows (2, H, W) = normalised -grad(dist), differences taken inside the cell only."""
    flows = np.zeros((2,) + dist.shape)
    for r, c in zip(*np.nonzero(inside)):
        grad = []
        for dr, dc in ((1, 0), (0, 1)):
            fwd = inside[r + dr, c + dc]
            bwd = inside[r - dr, c - dc]
            if fwd and bwd:
                grad.append(0.5 * (dist[r + dr, c + dc] - dist[r - dr, c - dc]))
            elif fwd:
                grad.append(dist[r + dr, c + dc] - dist[r, c])
            elif bwd:
                grad.append(dist[r, c] - dist[r - dr, c - dc])
            else:
                grad.append(0.0)
        norm = np.hypot(*grad)
        if norm > 0:
            flows[:, r, c] = -grad[0] / norm, -grad[1] / norm
    return flows


fmm_hand = distance_flows(dist, inside)
fmm_pkg = masks_to_flows(labels, method="fmm")
fmm_crop = padded_crop(fmm_pkg) * inside
assert np.allclose(fmm_hand, fmm_crop, atol=ATOL)

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
axes[0].imshow(np.where(inside, dist, np.nan), cmap="viridis")
axes[0].plot(centre[1], centre[0], "r+", ms=10)
axes[0].set_title("geodesic distance from the centre")
axes[0].set_axis_off()
draw_flows(axes[1], fmm_hand, step=2, title="geodesic flows, -grad(distance)")
draw_flows(axes[2], flows_hand, step=2, title="heat flows (section 3)")
show(fig)

# %% [markdown]
# On a compact, roundish cell the two fields look alike: both point to the
# same centre pixel. The differences show on harder shapes.
#
# ## 5. Side by side on awkward shapes
#
# Three hand-made label images: a concave **C** (its mean lies in the hole, so
# its centre pixel sits on the inner edge), a long thin **elongated** cell, and
# two **touching** cells. For each we compute both fields and the cosine of the
# angle between them at every pixel (1 = same direction, -1 = opposite).

# %%
def c_shape(size):
    """An annulus with a 70-degree gap on the right: a concave, C-shaped cell."""
    r, c = np.mgrid[:size, :size] - (size - 1) / 2
    radius, angle = np.hypot(r, c), np.degrees(np.arctan2(r, c))
    return ((radius <= 0.42 * size) & (radius >= 0.22 * size) & (np.abs(angle) > 35)).astype(np.int32)


def elongated(size):
    """A thin tilted ellipse, about 9 times longer than wide."""
    r, c = np.mgrid[: size // 2, :size].astype(float)
    r, c = r - (size // 2 - 1) / 2, c - (size - 1) / 2
    theta = 0.3
    along, across = c * np.cos(theta) + r * np.sin(theta), -c * np.sin(theta) + r * np.cos(theta)
    return ((along / (0.45 * size)) ** 2 + (across / (0.05 * size + 1)) ** 2 <= 1).astype(np.int32)


def touching(size):
    """Two discs pressed together: they share a straight border."""
    r, c = np.mgrid[: size * 2 // 3, : size + size // 4]
    d1, d2 = np.hypot(r - size / 3, c - size * 0.33), np.hypot(r - size / 3, c - size * 0.92)
    lab = np.zeros(r.shape, np.int32)
    lab[d1 <= size * 0.3] = 1
    lab[(d2 <= size * 0.3) & (d2 < d1)] = 2
    return lab


shapes = {"C (concave)": c_shape(AWKWARD_SIZE), "elongated": elongated(AWKWARD_SIZE), "touching": touching(AWKWARD_SIZE)}
results = {}
for name, lab in shapes.items():
    heat_f, fmm_f = masks_to_flows(lab), masks_to_flows(lab, method="fmm")
    cos = (heat_f * fmm_f).sum(axis=0)  # both are unit vectors: the dot product is the cosine
    results[name] = dict(lab=lab, heat=heat_f, fmm=fmm_f, cos=cos, centers=object_centers(lab)[1])

fig, axes = plt.subplots(len(shapes), 4, figsize=(15, 3.6 * len(shapes)))
for row, (name, res) in zip(axes, results.items()):
    lab, cell = res["lab"], res["lab"] > 0
    row[0].imshow(np.log10(np.where(cell, heat_map(lab), np.nan)), cmap="magma")
    row[0].set_title(f"{name}: log10(heat)")
    draw_flows(row[1], res["heat"], title="heat flows")
    draw_flows(row[2], res["fmm"], title="geodesic (fmm) flows")
    im = row[3].imshow(np.where(cell, res["cos"], np.nan), cmap="RdBu", vmin=-1, vmax=1)
    row[3].set_title(f"cosine agreement, mean {res['cos'][cell].mean():.2f}")
    fig.colorbar(im, ax=row[3], shrink=0.8)
    for ax in (row[0], row[3]):
        ax.plot(res["centers"][:, 1], res["centers"][:, 0], "k+", ms=10, mew=2)
        ax.set_axis_off()
fig.tight_layout()
show(fig)

# %% [markdown]
# The agreement in numbers: the mean cosine, and the share of pixels where the
# two fields differ by more than about 25 degrees (cosine below 0.9).

# %%
print(f"{'shape':<14} {'mean cos':>9} {'cos < 0.9':>10}")
for name, res in results.items():
    c = res["cos"][res["lab"] > 0]
    res["mean_cos"] = c.mean()
    print(f"{name:<14} {c.mean():9.3f} {np.mean(c < 0.9):10.1%}")

assert results["touching"]["mean_cos"] > 0.95  # compact cells: nearly the same field
assert results["C (concave)"]["mean_cos"] < results["touching"]["mean_cos"]
assert results["elongated"]["mean_cos"] < results["touching"]["mean_cos"]

# %% [markdown]
# Where do they differ?
#
# - **Near the border.** Heat is 0 on the border, so the heat gradient always
#   has a component pointing *away from the border*, into the cell. The
#   geodesic distance does not care about the border: its flows point straight
#   along the shortest path, which hugs walls and cuts corners.
# - **Elongated cell.** Heat flows first turn toward the midline of the cell
#   and then run along it; geodesic flows point straight at the centre. Both
#   reach the centre.
# - **Concave cell.** The centre pixel sits on the inner edge of the C. The
#   geodesic paths run tight along the inner wall around the hole; heat flows
#   curve through the middle of the arms.
# - **Sectors.** Path lengths made of side and diagonal steps only give the
#   geodesic flows a handful of directions, in wedges (look at the discs);
#   heat flows turn smoothly.
#
# > **Checkpoint (discuss in pairs):** before running the next cell, predict
# > for each of the three shapes whether following the heat flows and the
# > geodesic flows gives back one mask per cell. Which shape worries you, and
# > why?
#
# Does it matter? Follow both fields from every pixel for 200 steps (the
# dynamics of notebook 03) and group the end points into masks.

# %%
print(f"{'shape':<14} {'true':>5} {'heat masks':>11} {'heat AP@0.9':>12} {'fmm masks':>10} {'fmm AP@0.9':>11}")
for name, res in results.items():
    lab = res["lab"]
    prob = np.where(lab > 0, 5.0, -5.0)  # a perfect cell probability (logits)
    row = []
    for method in ("heat", "fmm"):
        # flow_threshold=0: the flow-error check recomputes *heat* flows, unfair to fmm flows
        found = masks.compute_masks(res[method], prob, flow_threshold=0, n_iter=N_ITER_FOLLOW)
        res[f"{method}_masks"] = found
        res[f"{method}_ap"] = metrics.average_precision(lab, found, thresholds=[0.9])[0, 0]
        row += [int(found.max()), res[f"{method}_ap"]]
    print(f"{name:<14} {lab.max():5d} {row[0]:11d} {row[1]:12.2f} {row[2]:10d} {row[3]:11.2f}")

assert all(res["heat_ap"] == 1.0 for res in results.values())  # heat flows give back every shape
assert results["C (concave)"]["fmm_masks"].max() > 1  # the geodesic field breaks the C apart

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
for ax, method in zip(axes, ("heat", "fmm")):
    found = results["C (concave)"][f"{method}_masks"]
    ax.imshow(np.random.default_rng(SEED).uniform(0.2, 1, (int(found.max()) + 1, 3))[found] * (found > 0)[..., None])
    ax.set_title(f"C shape, {method} flows: {plural(int(found.max()), 'mask')}")
    ax.set_axis_off()
show(fig)

# %% [markdown]
# The heat field recovers all three shapes exactly. The geodesic field breaks
# the C into pieces: a pixel stepping along the inner wall, with no push away
# from it, cuts the corner into the hole, where the flow is 0, and stops there
# (even the centre pixel, on the inner edge, gets a one-sided gradient that
# points into the hole). Heat's push away from the border keeps particles
# inside the cell: a good reason to keep it as the default. The distance
# idea is not wrong: smoother distance fields (a true eikonal solver, with the
# centre replaced by the whole skeleton, as in Omnipose) work well for long,
# bent bacteria; this course keeps heat as the default, for compatibility with
# Cellpose models.
#
# ## 6. FLOW_SCALE and what the network predicts
#
# The network outputs three maps per pixel: the two flow components and a
# cell probability (a logit; `> 0` means "inside a cell"). The flow targets are
# the unit flows **times `FLOW_SCALE`** (5.0); the cell-probability target is
# simply `labels > 0`. The scale makes the flow part of the loss (a mean squared
# error) large enough next to the binary cross-entropy of the cell probability.
# Before following predicted flows, divide by `FLOW_SCALE` again.
#
# > **Checkpoint (discuss in pairs):** the network is trained to predict
# > these three maps. Which of them could it get roughly right without ever
# > looking beyond a few pixels, and which needs it to "see" a whole cell?

# %%
target = np.concatenate([FLOW_SCALE * flows_pkg, (labels > 0)[None].astype(np.float32)])
print("training target:", target.shape, target.dtype, "| FLOW_SCALE =", FLOW_SCALE)
length = np.hypot(target[0], target[1])
assert np.allclose(length[labels > 0], FLOW_SCALE, atol=1e-4)
assert np.allclose(target[:2] / FLOW_SCALE, flows_pkg)

fig, axes = plt.subplots(1, 3, figsize=(13, 4))
for ax, k, title in zip(axes, range(3), ("FLOW_SCALE x d_row", "FLOW_SCALE x d_col", "cell probability target")):
    im = ax.imshow(target[k], cmap="RdBu_r" if k < 2 else "gray", vmin=-FLOW_SCALE if k < 2 else 0,
                   vmax=FLOW_SCALE if k < 2 else 1)
    ax.set_title(title)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, shrink=0.8)
show(fig)

# %% [markdown]
# > **Cellpose 1.0 or 3?** Heat diffusion from a centre pixel, the 3x3 box
# > average and the normalised gradient are Cellpose 1.0's method. The details
# > checked in `cellpose` 3.1.1.2 (`dynamics.masks_to_flows_cpu` and
# > `_extend_centers`): the centre is the cell pixel nearest the **mean** (1.0
# > and 2.0: the median, see section 1); each step adds 1 at the centre and
# > averages the 3x3 box (`1 / 9.` times the nine pixels) on the cell's pixels
# > only; `n_iter = 2 * (rows + cols)` of the box padded by one pixel; the
# > gradient is a central difference, normalised with `1e-60`. `FLOW_SCALE = 5`
# > (the network predicts 5 x the unit flows) is 3.1.1.2's training target
# > (`train._loss_fn_seg`). The geodesic (`"fmm"`) flows are this package's, after the method
# > slides; Cellpose does not compute them.

# %% [markdown]
# ## In practice
#
# - **Iterations.** Heat needs about as many steps as the cell is long to reach
#   its far end; Cellpose's `2 * (rows + cols)` of the bounding box is enough
#   for compact and moderately bent cells. Pixels the heat never reaches get a
#   zero flow (exercise 1). `masks_to_flows(labels, n_iter=...)` overrides it.
# - **Cost.** Flows are computed once per training image, not per epoch: the
#   package runs cells in parallel with numba; Cellpose also has a GPU version.
#   Augmentation rotates and flips images *and* flows, and flows are vectors,
#   so rotating them means rotating each arrow too (exercise 2), or recomputing
#   them from the rotated labels.
# - **The centre.** Cellpose uses the cell pixel nearest the mean. For very
#   concave cells this is on the edge (section 5); the flows still converge
#   there, which is all the method needs. Changing the definition changes
#   the flows a Cellpose model was trained on.
# - **Geodesic flows** here use the 8-neighbour path length (Dijkstra) rather
#   than a true fast-marching eikonal solver; it is there to teach the idea
#   of the slides, not as a replacement for the heat default.
# - **Touching cells never share heat**: each is diffused on its own pixels
#   only, which is why a shared border gives arrows in opposite directions,
#   exactly the cue the network learns to separate touching cells.
#
# ## Exercises
#
# 1. **Too few iterations.** Compute the heat flows of the elongated cell with
#    `n_iter=10`. How many of its pixels get a zero flow, and where are they?
#    Why?

# %% tags=["solution"]
lab = shapes["elongated"]
short = masks_to_flows(lab, n_iter=10)
dead = (lab > 0) & (np.hypot(*short) == 0)
print(f"{dead.sum()} of {(lab > 0).sum()} pixels have no flow after 10 steps")
assert dead.sum() > 0 and not ((lab > 0) & (np.hypot(*masks_to_flows(lab)) == 0)).any()
fig, ax = plt.subplots(figsize=(6, 3))
ax.imshow(lab + dead, cmap="viridis")
ax.set_title("yellow: heat has not arrived (more than ~10 px from the centre)")
ax.set_axis_off()
show(fig)

# %% [markdown]
# 2. **Flows are vectors.** Rotate `labels` by 90 degrees with `np.rot90` and
#    compute its flows. Show that they equal the original flows rotated: the
#    arrays move with `np.rot90`, *and* each arrow turns by 90 degrees, so
#    `(d_row, d_col)` becomes `(-d_col, d_row)`.

# %% tags=["solution"]
rotated = masks_to_flows(np.rot90(labels))
moved = np.stack([np.rot90(flows_pkg[0]), np.rot90(flows_pkg[1])])
turned = np.stack([-moved[1], moved[0]])
cos = (rotated * turned).sum(axis=0)[np.rot90(labels) > 0]
print(f"mean cosine: {cos.mean():.4f}, only moved (not turned): {(rotated * moved).sum(axis=0)[np.rot90(labels) > 0].mean():.2f}")
assert cos.mean() > 0.99  # equal, except where a tie moves the centre pixel

# %% [markdown]
# 3. **Another centre.** Diffuse heat in the C shape from its *deepest* pixel
#    (the maximum of `scipy.ndimage.distance_transform_edt`) instead of the
#    pixel nearest the mean, with the `diffuse` and `heat_flows` functions of
#    sections 2-3. Do the flows still give back one mask?

# %% tags=["solution"]
from scipy import ndimage

lab = shapes["C (concave)"]
pad = np.pad(lab > 0, 1)
deep = np.unravel_index(np.argmax(ndimage.distance_transform_edt(pad)), pad.shape)
h, _ = diffuse(pad, deep, 2 * (pad.shape[0] + pad.shape[1]))
f = heat_flows(h, pad)[:, 1:-1, 1:-1].astype(np.float32)
found = masks.compute_masks(f, np.where(lab > 0, 5.0, -5.0), flow_threshold=0)
print("deepest pixel:", deep, "masks found:", found.max())
assert found.max() == 1
fig, ax = plt.subplots(figsize=(4, 4))
draw_flows(ax, f, title="heat from the deepest pixel")
ax.plot(deep[1] - 1, deep[0] - 1, "w+", ms=12, mew=2)
show(fig)


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) The flows: a simulated heat diffusion from the centre of each cell, and its normalised gradient.
# - Stringer, C. & Pachitariu, M. Cellpose3: one-click image restoration for improved cellular segmentation. *Nature Methods* 22, 592-599 (2025). [doi:10.1038/s41592-025-02595-5](https://doi.org/10.1038/s41592-025-02595-5) Cellpose 3, whose code fixes the centre (nearest the mean) and the iteration count shown here.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.

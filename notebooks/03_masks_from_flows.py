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
# # 03 · Masks from flows
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/03_masks_from_flows.ipynb) (replace OWNER with the repository's owner once it is published)
#
# Notebook 02 turned labels into flows. This one goes back: given flows (and a
# cell probability), recover one mask per cell. The idea is physical: drop a
# particle on every cell pixel, let the flows carry it, and see where it ends.
# Particles from the same cell all end at the same place, its centre.
#
# **What you will learn**
#
# - the dynamics: Euler steps with bilinear interpolation of the flows, written
#   in NumPy for a few pixels and checked against `trace_points` and
#   `follow_flows`; trajectories drawn over the image;
# - how end points become masks: a histogram of end points, seeds at its local
#   maxima, a little growth (checked against `cluster_endpoints`);
# - the flow-error check: a deliberately wrong mask has flows unlike a cell's,
#   and `remove_bad_flow_masks` removes it;
# - the round trip labels -> flows -> labels, scored with average precision;
# - what noise in the flows does, and what `flow_threshold` does about it.
#
# **What you need**: notebook 02 (flows). NumPy, SciPy, matplotlib; no GPU, no
# torch.

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

SEED = 0  # seed of the synthetic images and of the noise
SHAPE = (96, 96) if QUICK else (256, 256)  # synthetic image size (rows, cols)
N_CELLS = 8 if QUICK else 30  # synthetic cells per image
DIAMETER = 24.0 if QUICK else 30.0  # synthetic cell diameter, pixels
TOUCHING = 0.6  # fraction of cells that touch a neighbour
N_ITER = 200  # Euler steps (Cellpose's default)
N_BY_HAND = 5  # pixels followed by the NumPy implementation
TRACE_STEP = 4 if QUICK else 6  # draw the trajectory of one pixel in TRACE_STEP x TRACE_STEP
N_ROUND_TRIP = 2 if QUICK else 5  # synthetic images in the round-trip test
NOISE_SIGMAS = (0.0, 0.2, 0.4, 0.6, 0.8) if QUICK else (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
NOISE_SMOOTH = 2.0  # sigma (pixels) of the Gaussian that smooths the noise
FLOW_THRESHOLDS = (0.0, 0.4, 0.8)  # 0 switches the flow-error check off; 0.4 is Cellpose's default
EXAMPLE_SIGMA = 0.5  # noise level of the worked example
CLUSTER_SIGMA = 0.4  # noise on the flows when we look at how end points spread

# %%
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display
from scipy import ndimage

from cellpose_nb import data, masks, metrics, plot
from cellpose_nb.flows import flows_to_rgb, masks_to_flows, object_centers

plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 step', '4 steps', '1 nucleus', '2 nuclei': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def label_rgb(labels, seed=SEED):
    """Random colours for labels 1..N, black for the background 0."""
    colours = np.vstack([[0, 0, 0], np.random.default_rng(seed).uniform(0.2, 1.0, (int(labels.max()), 3))])
    return colours[labels]


# %% [markdown]
# ## 1. The starting point
#
# A synthetic image with touching cells, its true labels, their flows, and a
# perfect cell probability (logits: +5 inside, -5 outside). In real use the
# flows and the probability come from the network; here they come from the
# truth, so we can check that the way back is exact.

# %%
sample = data.make_synthetic(SHAPE, n_cells=N_CELLS, diameter=DIAMETER, touching=TOUCHING, seed=SEED)
labels = sample.labels
flows = masks_to_flows(labels)
cellprob = np.where(labels > 0, 5.0, -5.0).astype(np.float32)
foreground = cellprob > 0  # the pixels that will move
flows_fg = flows * foreground  # as compute_masks does: no flow outside the cells
print(f"{plural(int(labels.max()), 'cell')}, {foreground.sum()} foreground pixels")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
axes[0].imshow(sample.image[..., 0], cmap="gray")
axes[0].set_title("image (cytoplasm)")
axes[1].imshow(label_rgb(labels))
axes[1].set_title("true labels")
axes[2].imshow(flows_to_rgb(flows))
axes[2].set_title("flows (colour = direction, key in the corner)")
for ax in axes:
    ax.set_axis_off()
plot.show_flow_key(axes[2], inset=True)
show(fig)

# %% [markdown]
# ## 2. Following the flows, by hand
#
# A particle at position `(y, x)` (real numbers, not just pixel centres) moves
# by the flow *at that position*. The flow is known only at pixel centres, so
# it is interpolated **bilinearly** from the four surrounding pixels. One Euler
# step is
#
# ```
# (y, x) <- clip((y, x) + flow(y, x), 0, (H - 1, W - 1))
# ```
#
# In symbols: with $u$ the flow field, known at the integer pixels, and
# $p_t = (y_t, x_t)$ the particle's position after $t$ steps, starting at its
# pixel $p_0$,
#
# $$
# p_{t+1} = \operatorname{clip}\big(p_t + \tilde u(p_t)\big), \qquad
# \tilde u(y, x) = \sum_{i, j \in \{0, 1\}} w_i(y)\, w_j(x)\; u\big(\lfloor y \rfloor + i, \lfloor x \rfloor + j\big),
# $$
#
# with the bilinear weights $w_0(s) = 1 - (s - \lfloor s \rfloor)$ and
# $w_1(s) = s - \lfloor s \rfloor$ (they sum to 1), corner indices clipped to
# the image, and $\operatorname{clip}$ keeping $p$ inside
# $[0, H - 1] \times [0, W - 1]$.
#
# Cellpose takes 200 of them. Flows have length 1, so a particle moves at
# most one pixel per step: 200 steps cross any cell. Written in float32, in the
# same order of operations as the package, so that the two agree to the last bit.
#
# > **Write it yourself ★★: `bilinear`, then ★: `follow_by_hand`.** In the
# > exercise version of this notebook (`make exercises`) their bodies are
# > TODOs: signature, docstring and hint are given, and the cell after them
# > checks your particles against the package's `trace_points` and
# > `follow_flows`. Difficulty: ★ a few lines straight from the formula, ★★
# > some care with indices, ★★★ an algorithm to design.

# %% tags=["skeleton"]
def bilinear(flows, y, x):
    """The two flow components at real position (y, x): weights of the 4 corner pixels.

    `flows` is (2, H, W); returns [d_row, d_col], in float32 when `y`, `x` are np.float32.
    """
    # Hint: corner (y0, x0) is (int(y), int(x)) clipped to the image, (y1, x1) one pixel further,
    #   clipped too; with the fractional parts wy = y - int(y) and wx = x - int(x), the four weights
    #   are (1 - wy)(1 - wx), (1 - wy) wx, wy (1 - wx) and wy wx. Use np.float32(1), not 1.0.
    H, W = flows.shape[1:]
    y0, x0 = min(H - 1, max(0, int(y))), min(W - 1, max(0, int(x)))
    y1, x1 = min(H - 1, y0 + 1), min(W - 1, x0 + 1)
    one = np.float32(1)
    wy, wx = y - np.float32(int(y)), x - np.float32(int(x))
    w00, w01, w10, w11 = (one - wy) * (one - wx), (one - wy) * wx, wy * (one - wx), wy * wx
    return [f[y0, x0] * w00 + f[y0, x1] * w01 + f[y1, x0] * w10 + f[y1, x1] * w11 for f in flows]


def follow_by_hand(flows, start, n_iter):
    """Trajectory (n_iter + 1, 2) of one particle: Euler steps, clipped to the image."""
    # Hint: start at (np.float32(start[0]), np.float32(start[1])); n_iter times add
    #   bilinear(flows, y, x) and clip y to [0, H - 1] and x to [0, W - 1] (as np.float32);
    #   keep every position, the start included, in a float32 array.
    H, W = flows.shape[1:]
    y, x = np.float32(start[0]), np.float32(start[1])
    path = [(y, x)]
    for _ in range(n_iter):
        dy, dx = bilinear(flows, y, x)
        y = min(np.float32(H - 1), max(np.float32(0), y + dy))
        x = min(np.float32(W - 1), max(np.float32(0), x + dx))
        path.append((y, x))
    return np.array(path, np.float32)


# %%
rng = np.random.default_rng(SEED)
fg_pixels = np.argwhere(foreground)
chosen = fg_pixels[rng.choice(len(fg_pixels), N_BY_HAND, replace=False)]
by_hand = np.stack([follow_by_hand(flows_fg, p, N_ITER) for p in chosen], axis=-1)  # (n_iter + 1, 2, N)

traced = masks.trace_points(flows_fg, chosen, n_iter=N_ITER)  # the package, (n_iter + 1, 2, N)
assert traced.shape == by_hand.shape
assert np.allclose(traced, by_hand, atol=1e-4)

# follow_flows moves every foreground pixel at once and keeps only the end points
result = masks.follow_flows(flows_fg, foreground, n_iter=N_ITER)
index = {tuple(p): k for k, p in enumerate(result.starts.T)}
ends_pkg = result.ends[:, [index[tuple(p)] for p in chosen]]
assert np.allclose(ends_pkg, by_hand[-1], atol=1e-4)
print("start -> end, by hand:")
for p, e in zip(chosen, by_hand[-1].T):
    print(f"  {tuple(int(v) for v in p)} -> ({e[0]:.2f}, {e[1]:.2f})")

# %% [markdown]
# Trajectories of a sample of pixels over the image, and where *all*
# foreground pixels end after 200 steps (red): each cell's particles pile up
# at one point, its centre pixel (`object_centers`, the white crosses).
#
# > **Checkpoint (discuss in pairs):** why do all the particles of one cell
# > end at the same pixel, even those that start right next to a touching
# > cell? What would happen to a particle dropped on the background, if we
# > let it move?

# %%
grid = fg_pixels[(fg_pixels[:, 0] % TRACE_STEP == 0) & (fg_pixels[:, 1] % TRACE_STEP == 0)]
paths = masks.trace_points(flows_fg, grid, n_iter=N_ITER)
_, centres = object_centers(labels)

fig, axes = plt.subplots(1, 2, figsize=(12, 6))
axes[0].imshow(sample.image[..., 0], cmap="gray")
for k in range(paths.shape[2]):
    axes[0].plot(paths[:, 1, k], paths[:, 0, k], lw=0.8, color=plt.cm.viridis(k / paths.shape[2]))
axes[0].plot(grid[:, 1], grid[:, 0], "w.", ms=2)
axes[0].set_title("trajectories from a grid of pixels")
axes[1].imshow(sample.image[..., 0], cmap="gray")
axes[1].plot(result.ends[1], result.ends[0], "r.", ms=3, alpha=0.3)
axes[1].plot(centres[:, 1], centres[:, 0], "w+", ms=10, mew=1.5)
axes[1].set_title("end points of all pixels (red), centre pixels (white)")
for ax in axes:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# ## 3. From end points to masks
#
# End points of one cell sit within a pixel or so of each other, far from
# those of the next cell. Cellpose groups them with a histogram:
#
# 1. count end points per pixel (truncated to integers) in an image padded by
#    20 pixels (particles may stop at the image border);
# 2. **seeds**: bins that are the maximum of their 5x5 neighbourhood and hold
#    more than 10 end points;
# 3. **grow** each seed 5 times by one pixel (3x3), within an 11x11 box, over
#    bins holding more than 2 end points; seeds are processed from the smallest
#    count to the largest, and a later one overwrites an earlier one;
# 4. every pixel takes the label of the bin where it ended; masks larger than
#    40 % of the image are dropped, and labels are renumbered 1..N.
#
# > **Write it yourself ★★★: `cluster_by_hand`**, checked against
# > `cluster_endpoints` in the next cell, on exact and on noisy flows.

# %% tags=["skeleton"]
PAD, SEED_MIN, GROW_MIN, GROW_STEPS, GROW_BOX = 20, 10, 2, 5, 5


def cluster_by_hand(ends, starts, shape):
    """(masks, hist, seeds): the masks (`shape`, labels 1..N) of the pixels `starts` (2, N, ints)
    whose particles ended at `ends` (2, N), by steps 1-4 above; the end-point histogram (padded by
    PAD) and the seeds (n, 2), in the order they were grown."""
    # Hint: np.add.at(hist, (rows, cols), 1) counts end points per bin (truncate, add PAD, clip).
    #   Seeds: bins equal to ndimage.maximum_filter(hist, size=5, mode="constant") holding more
    #   than SEED_MIN, sorted by count with np.argsort(..., kind="stable"). Grow each from its
    #   centre with ndimage.binary_dilation inside its 11x11 box, GROW_STEPS times, over bins
    #   holding more than GROW_MIN. Finish with masks.renumber.
    padded_shape = (shape[0] + 2 * PAD, shape[1] + 2 * PAD)
    pts = ends.astype(np.int64) + PAD
    for ax in range(2):
        pts[ax] = np.clip(pts[ax], 0, padded_shape[ax] - PAD - 1)
    hist = np.zeros(padded_shape, np.int64)
    np.add.at(hist, (pts[0], pts[1]), 1)  # step 1: the histogram

    local_max = ndimage.maximum_filter(hist, size=5, mode="constant") == hist
    seeds = np.argwhere(local_max & (hist > SEED_MIN))  # step 2
    seeds = seeds[np.argsort(hist[seeds[:, 0], seeds[:, 1]], kind="stable")]

    grown = np.zeros(padded_shape, np.int64)
    for k, (sr, sc) in enumerate(seeds):  # step 3
        box = (slice(sr - GROW_BOX, sr + GROW_BOX + 1), slice(sc - GROW_BOX, sc + GROW_BOX + 1))
        region = np.zeros((2 * GROW_BOX + 1,) * 2, bool)
        region[GROW_BOX, GROW_BOX] = True
        for _ in range(GROW_STEPS):
            region = ndimage.binary_dilation(region, np.ones((3, 3))) & (hist[box] > GROW_MIN)
        grown[box][region] = k + 1

    out = np.zeros(shape, np.int64)  # step 4
    out[starts[0], starts[1]] = grown[pts[0], pts[1]]
    sizes = np.bincount(out.ravel())
    too_big = np.nonzero(sizes > 0.4 * out.size)[0]
    out[np.isin(out, too_big[too_big > 0])] = 0
    return masks.renumber(out), hist, seeds


# %%
found_hand, hist, seeds = cluster_by_hand(result.ends, result.starts, labels.shape)
found = masks.cluster_endpoints(result.ends, result.starts, labels.shape)
assert np.array_equal(found, found_hand)
print(f"exact flows: {plural(len(seeds), 'seed')}, {plural(int(found.max()), 'mask')}, {plural(int(labels.max()), 'true cell')}")

# with slightly noisy flows the end points of a cell spread over a few bins: the growth matters
jitter = CLUSTER_SIGMA * np.random.default_rng(SEED).standard_normal(flows.shape).astype(np.float32)
noisy_result = masks.follow_flows((flows + jitter) * foreground, foreground, n_iter=N_ITER)
noisy_found, noisy_hist, noisy_seeds = cluster_by_hand(noisy_result.ends, noisy_result.starts, labels.shape)
assert np.array_equal(noisy_found, masks.cluster_endpoints(noisy_result.ends, noisy_result.starts, labels.shape))
print(f"noisy flows (sigma {CLUSTER_SIGMA}): {plural(len(noisy_seeds), 'seed')}, {plural(int(noisy_found.max()), 'mask')}")

def around(hist, seed):
    return hist[seed[0] - GROW_BOX : seed[0] + GROW_BOX + 1, seed[1] - GROW_BOX : seed[1] + GROW_BOX + 1]


spread = max(noisy_seeds, key=lambda seed: np.count_nonzero(around(noisy_hist, seed)))
zoom = around(noisy_hist, spread)  # the seed whose end points are most spread out

fig, axes = plt.subplots(1, 3, figsize=(16, 5.3))
axes[0].imshow(np.log1p(ndimage.maximum_filter(hist, size=3)), cmap="magma")  # dilated: single bins show
axes[0].plot(seeds[:, 1], seeds[:, 0], "c+", ms=10, mew=1.5)
axes[0].set_title("exact flows: end points per bin (log, dilated\nfor display), padded by 20; seeds (cyan)")
axes[1].imshow(np.log1p(zoom), cmap="magma")
for (r, c), n in np.ndenumerate(zoom):
    if n:
        axes[1].text(c, r, n, ha="center", va="center", fontsize=7, color="c")
axes[1].set_title(f"noisy flows (sigma {CLUSTER_SIGMA}): end points around one seed\n(11x11 box, counts per bin)")
axes[2].imshow(label_rgb(found))
axes[2].set_title(f"masks from the exact flows: {found.max()}")
for ax in axes:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# With exact flows every particle of a cell ends in one and the same bin (the
# seed): nothing to grow. With predicted, imperfect flows the end points
# spread over a few neighbouring bins, and the growth step gathers them back
# into one mask.
#
# > **Checkpoint (discuss in pairs):** what would go wrong if seeds needed
# > only 1 end point instead of more than 10, or if the growth were not
# > limited to an 11x11 box around each seed?

# %% [markdown]
# ## 4. The flow-error check
#
# Any grouping of pixels makes *some* mask. Cellpose asks whether the mask is
# plausible: recompute the flows that this mask *would* have (notebook 02) and
# compare them with the flows we were given. For a real cell they agree; for a
# mask that glues two cells together, or cuts one in half, they do not. The
# error is the mean, over the mask's pixels, of the squared difference of the
# two flow vectors; masks above `flow_threshold` (0.4 by default) are removed.
#
# We make two deliberately wrong masks: two touching cells merged into one,
# and a cell cut in half (the other half becomes background).

# %%
def touching_pair(labels):
    """Two labels that share a border (the first such pair found)."""
    for k in range(1, labels.max() + 1):
        ring = ndimage.binary_dilation(labels == k) & (labels != k) & (labels > 0)
        if ring.any():
            return k, int(np.bincount(labels[ring]).argmax())
    raise ValueError("no touching cells in this image: raise TOUCHING or N_CELLS")


a, b = touching_pair(labels)
wrong = labels.copy()
wrong[wrong == b] = a  # merged: one mask over two cells
c = next(k for k in range(1, labels.max() + 1) if k not in (a, b))
rows = np.nonzero(labels == c)[0]
wrong[(labels == c) & (np.arange(labels.shape[0])[:, None] > np.median(rows))] = 0  # cut in half

own = masks_to_flows(wrong)  # the flows each (possibly wrong) mask would have
sq = ((own - flows) ** 2).sum(axis=0)
err_hand = np.array([sq[wrong == k].mean() if (wrong == k).any() else np.nan for k in range(1, wrong.max() + 1)])
err = masks.flow_errors(wrong, flows)
assert np.allclose(err, err_hand, equal_nan=True, atol=1e-6)

untouched = [k for k in np.unique(wrong) if k not in (0, a, c)]
print(f"merged mask {a}+{b}: error {err[a - 1]:.3f} | half cell {c}: error {err[c - 1]:.3f} | "
      f"largest error of the untouched cells: {max(err[k - 1] for k in untouched):.1e}")
kept = masks.remove_bad_flow_masks(wrong, flows, threshold=0.4)
assert err[a - 1] > 0.4 and not (kept == a).any()  # the merged mask is removed
assert all((kept == k).any() for k in untouched)  # real cells are kept
print("half cell", "removed" if not (kept == c).any() else "kept", "at threshold 0.4")

fig, axes = plt.subplots(1, 3, figsize=(15, 5))
axes[0].imshow(label_rgb(wrong))
axes[0].set_title("labels with a merged and a halved mask")
im = axes[1].imshow(np.where(wrong > 0, sq, np.nan), cmap="inferno", vmin=0, vmax=4)
axes[1].set_title("squared flow difference per pixel (0..4)")
fig.colorbar(im, ax=axes[1], shrink=0.8)
axes[2].imshow(label_rgb(kept))
axes[2].set_title("after remove_bad_flow_masks(threshold=0.4)")
for ax in axes:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# The merged mask's own flows point to one centre between the two cells,
# while the given flows point to two centres, in opposite directions along
# the shared border: a large error. Half a cell has its own centre a few pixels
# away from the true one: its error is smaller and may or may not pass the
# threshold, depending on how much of the cell is missing.
#
# > **Checkpoint (discuss in pairs):** the check compares the given flows
# > with the flows of the mask itself. Which errors of a segmentation can it
# > catch, and which can it never see (think of a mask that misses a whole
# > cell, or one that is one pixel too small all round)?
#
# ## 5. The round trip: labels -> flows -> labels
#
# `compute_masks` chains everything: follow the flows from the pixels with
# `cellprob > cellprob_threshold`, cluster the end points, drop masks with a
# flow error above `flow_threshold`, fill holes and drop masks smaller than
# `min_size`. From exact flows and a perfect probability it should give back
# the labels, up to renumbering. Score: average precision,
# `AP = TP / (TP + FP + FN)`, where a predicted and a true mask count as a true
# positive when they are paired one-to-one and their intersection over union
# is at least the threshold (0.9: nearly pixel-perfect).

# %%
dataset = data.make_synthetic_dataset(
    N_ROUND_TRIP, shape=SHAPE, n_cells=N_CELLS, diameter=DIAMETER, touching=TOUCHING, seed=SEED + 1
)
truths, preds = [], []
for s in dataset:
    prob = np.where(s.labels > 0, 5.0, -5.0)
    truths.append(s.labels)
    preds.append(masks.compute_masks(masks_to_flows(s.labels), prob, n_iter=N_ITER))
ap = metrics.average_precision(truths, preds, thresholds=[0.5, 0.75, 0.9])
print("AP at IoU 0.5 / 0.75 / 0.9, per image:")
print(ap.round(3))
assert (ap[:, 2] >= 0.99).all()

# %% [markdown]
# ## 6. Noisy flows and the flow threshold
#
# A network never predicts the flows exactly. To see how the method copes, add
# Gaussian noise of standard deviation `sigma` to each flow component: once
# white (independent per pixel) and once smoothed over a few pixels (closer to
# a network's errors, which are spatially correlated), rescaled to the same
# `sigma`. The cell probability stays perfect, so every loss comes from the
# flows.
#
# One prediction first: for a *correct* mask the flow error is the mean
# squared noise, `2 sigma^2` (two components). So a threshold `t` removes even
# correct masks once `sigma > sqrt(t / 2)`: 0.45 for the default 0.4.

# %%
noise_rng = np.random.default_rng(SEED)
white = noise_rng.standard_normal(flows.shape).astype(np.float32)
smooth = np.stack([ndimage.gaussian_filter(w, NOISE_SMOOTH) for w in white])
smooth /= smooth.std()
noises = {"white": white, "smoothed": smooth}

for name, noise in noises.items():
    err = masks.flow_errors(labels, flows + 0.3 * noise)
    print(f"{name} noise, sigma 0.3: mean flow error of the true masks {np.nanmean(err):.3f} "
          f"(2 sigma^2 = {2 * 0.3**2:.3f})")
    assert abs(np.nanmean(err) - 2 * 0.3**2) < 0.05

ap_curves = {}  # (noise, threshold) -> AP@0.5 and AP@0.9 per sigma
for name, noise in noises.items():
    for th in FLOW_THRESHOLDS:
        scores = []
        for sigma in NOISE_SIGMAS:
            pred = masks.compute_masks(flows + sigma * noise, cellprob, flow_threshold=th, n_iter=N_ITER)
            scores.append(metrics.average_precision(labels, pred, thresholds=[0.5, 0.9])[0])
        ap_curves[name, th] = np.array(scores)

fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, name in zip(axes, noises):
    for th, colour in zip(FLOW_THRESHOLDS, ("0.3", "tab:blue", "tab:orange")):
        label = "no flow check" if th == 0 else f"flow_threshold {th}"
        ax.plot(NOISE_SIGMAS, ap_curves[name, th][:, 0], "o-", color=colour, label=f"{label}, AP@0.5")
        ax.plot(NOISE_SIGMAS, ap_curves[name, th][:, 1], "s--", color=colour, alpha=0.6, label=f"{label}, AP@0.9")
    for th in FLOW_THRESHOLDS[1:]:
        ax.axvline(np.sqrt(th / 2), color="k", lw=0.6, ls=":")
    ax.set_title(f"{name} noise")
    ax.set_xlabel("noise sigma per flow component")
axes[0].set_ylabel("average precision")
axes[1].legend(fontsize=7)
show(fig)

no_check = ap_curves["smoothed", 0.0]
assert no_check[0, 1] == 1.0 and no_check[-1, 0] < no_check[0, 0]  # exact without noise, worse with it
for th in FLOW_THRESHOLDS[1:]:  # far past sqrt(t / 2) the check removes (almost) every mask
    assert all(ap_curves[n, th][-1, 0] < 0.1 for n in noises if NOISE_SIGMAS[-1] > 1.5 * np.sqrt(th / 2))

# %% [markdown]
# The dotted lines mark `sigma = sqrt(t / 2)`. Reading the curves:
#
# - **Small noise costs nothing.** Particles average the noise along their
#   path; white noise averages out a little faster than smoothed noise, which pushes
#   whole groups of pixels the same wrong way.
# - **Without the check**, large noise splits cells into fragments (more
#   masks than cells): AP falls, at IoU 0.9 first.
# - **With the check**, fragments are removed (their flows do not look like a
#   cell's), but past `sqrt(t / 2)` every mask fails it, good ones included,
#   and AP drops to 0. `flow_threshold` is a bet on how good the predicted
#   flows are: raise it (or switch it off) when the model is less sure, lower
#   it to reject doubtful masks.
#
# A worked example at one noise level:

# %%
noisy = flows + EXAMPLE_SIGMA * smooth
fig, axes = plt.subplots(1, 1 + len(FLOW_THRESHOLDS), figsize=(4 * (1 + len(FLOW_THRESHOLDS)), 4.3))
axes[0].imshow(flows_to_rgb(noisy, mask=foreground))
axes[0].set_title(f"flows + smoothed noise, sigma {EXAMPLE_SIGMA}")
plot.show_flow_key(axes[0], inset=True)
for ax, th in zip(axes[1:], FLOW_THRESHOLDS):
    pred = masks.compute_masks(noisy, cellprob, flow_threshold=th, n_iter=N_ITER)
    ap5, ap9 = metrics.average_precision(labels, pred, thresholds=[0.5, 0.9])[0]
    ax.imshow(label_rgb(pred))
    ax.set_title(f"flow_threshold {th}: {plural(int(pred.max()), 'mask')} ({plural(int(labels.max()), 'cell')})\nAP@0.5 {ap5:.2f}, AP@0.9 {ap9:.2f}")
for ax in axes:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# > **Cellpose 1.0 or 3?** Following the flows with Euler steps and grouping
# > the end points is Cellpose 1.0's method. The details shown here are those
# > of `cellpose` 3.1.1.2 (checked in `dynamics.py` and `models.py`): bilinear
# > interpolation of the flows (`steps_interp`, with `grid_sample`); 200 steps,
# > or `200 / rescale` when the image is zoomed (`CellposeModel.eval`); the
# > histogram padded by `rpad = 20`, seeds at maxima of a 5x5 neighbourhood
# > with more than 10 end points, grown within an 11x11 box
# > (`get_masks_torch`); masks above `max_size_fraction = 0.4` of the image
# > and below `min_size = 15` pixels dropped; and the flow check
# > (`metrics.flow_error`: mean squared difference with the predicted flows
# > divided by 5, `flow_threshold = 0.4`). The network's flows are 5 x the
# > unit flows in all of this.

# %% [markdown]
# ## In practice
#
# - **Scale.** The network predicts `FLOW_SCALE * flows`; divide by
#   `FLOW_SCALE` before following them. Everything here is at unit scale.
# - **Which pixels move** is decided by `cellprob > cellprob_threshold` (a
#   logit; 0 means probability 0.5). Lower it to grow masks and find dim cells,
#   raise it to shrink them. The flows outside the foreground are set to 0, so
#   particles cannot wander through the background.
# - **Iterations.** 200 steps of length at most 1 cross cells up to ~200 px;
#   bigger cells need more. Cellpose rescales images so that cells have the
#   model's diameter, and when it follows the flows at the original size it
#   uses `200 / rescale` steps.
# - **The flow check costs a second `masks_to_flows`** over the found masks;
#   `flow_threshold=0` (or None) skips it. It is compared against *heat* flows,
#   so switch it off for flows made another way (the geodesic flows of
#   notebook 02).
# - **Clean-up.** Holes inside masks are filled and masks under `min_size`
#   pixels (15 by default) are dropped; masks over 40 % of the image are
#   dropped as "background swallowed by one mask".
# - **Speed.** Following the flows is the slow part on the CPU: the package
#   runs it with numba in parallel and stops a particle once it is stuck on a
#   fixed point or a 2-cycle; Cellpose can do it on the GPU.
#
# ## Exercises
#
# 1. **Fewer steps.** Run `compute_masks` on the exact flows with `n_iter`
#    of 5, 20 and 200. How does AP@0.9 change, and why?

# %% tags=["solution"]
ap_by_steps = {}
for n in (5, 20, N_ITER):
    pred = masks.compute_masks(flows, cellprob, n_iter=n)
    ap_by_steps[n] = metrics.average_precision(labels, pred, thresholds=[0.5, 0.9])[0]
    print(f"n_iter {n:3d}: {plural(int(pred.max()), 'mask'):>9s}, area {(pred > 0).sum()} of {(labels > 0).sum()}, "
          f"AP@0.5 {ap_by_steps[n][0]:.2f}, AP@0.9 {ap_by_steps[n][1]:.2f}")
# After 5 steps only the particles that started near a centre have arrived: the seed and its small
# grown region (5 bins around it) hold those, and the others end in sparse bins that belong to no
# seed, so they get no label. Masks shrink to their cores: found at IoU 0.5 perhaps, not at 0.9.
assert ap_by_steps[5][1] < ap_by_steps[N_ITER][1] == 1

# %% [markdown]
# 2. **The cell probability threshold.** Make the cell probability imperfect:
#    `prob = ndimage.gaussian_filter(cellprob, 2)`, which blurs the logits
#    across the cell borders. Compare the masks at `cellprob_threshold` -2, 0
#    and 2: total mask area against the true area, and AP@0.9.

# %% tags=["solution"]
prob = ndimage.gaussian_filter(cellprob, 2)
areas = []
for t in (-2.0, 0.0, 2.0):
    pred = masks.compute_masks(flows, prob, cellprob_threshold=t)
    areas.append((pred > 0).sum())
    ap9 = metrics.average_precision(labels, pred, thresholds=[0.9])[0, 0]
    print(f"cellprob_threshold {t:+.0f}: mask area {areas[-1]} (true {(labels > 0).sum()}), AP@0.9 {ap9:.2f}")
assert areas[0] >= areas[1] >= areas[2]  # a lower threshold lets more pixels move: bigger masks
# Raising the threshold shrinks the masks. Lowering it does not grow them past the true cells here:
# the extra pixels outside have zero flow, stay where they are, and end alone in their bin, far from
# any seed. (A network's flows do reach a little beyond the cells, so there masks do grow.)

# %% [markdown]
# 3. **Reversed flows.** What happens if the sign of the flows is wrong (a bug
#    in a data loader: `-flows`)? Follow them and look at the end points, then
#    run `compute_masks` with and without the flow check.

# %% tags=["solution"]
res = masks.follow_flows(-flows_fg, foreground, n_iter=N_ITER)
print("fraction of particles ending on the background:",
      np.mean(labels[res.ends[0].round().astype(int), res.ends[1].round().astype(int)] == 0).round(2))
for th in (0.0, 0.4):
    pred = masks.compute_masks(-flows, cellprob, flow_threshold=th)
    print(f"flow_threshold {th}: {plural(int(pred.max()), 'mask')}")
# Particles run to the cell borders and stop there (no flow outside the foreground); the border
# pixels become many thin masks, and the flow check, seeing flows opposite to a cell's, removes them.
assert masks.compute_masks(-flows, cellprob, flow_threshold=0.4).max() == 0


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) The dynamics (Euler steps, end-point clustering) and the flow-error check.
# - Stringer, C. & Pachitariu, M. Cellpose3: one-click image restoration for improved cellular segmentation. *Nature Methods* 22, 592-599 (2025). [doi:10.1038/s41592-025-02595-5](https://doi.org/10.1038/s41592-025-02595-5) Cellpose 3, whose code (`cellpose` 3.1.1.2) fixes the details listed in the box above.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.

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
# # 00 · Quickstart: nuclei in a few cells
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/00_quickstart.ipynb) (replace OWNER with the repository's owner once it is published)
#
# Before the course takes Cellpose apart (notebooks 01-05), this notebook
# uses it: it segments an image of nuclei (a stained tissue section) with the model shipped
# with the package, looks at what came out (masks, flows, cell probability, a
# table of measurements), and opens two interactive explorers that show how
# the masks depend on the flows and on two thresholds.
#
# **What you will learn**
#
# - how to load the shipped nuclei model (`model.load_pretrained`) and a
#   sample image (`data.load_sample`);
# - one call from image to masks: `predict.segment`, and what its result
#   holds (`labels`, `flows`, `cellprob`, `style`, `diameter`);
# - how to look at the result: masks over the image, the flows as colours,
#   the cell probability, and a check against the sample's annotation;
# - a table of per-cell measurements (`export.cell_table`);
# - the explorers: `ThresholdExplorer` (cell-probability and flow thresholds)
#   and `FlowExplorer` (where every pixel flows).
#
# **What you need**: nothing but this package (it brings the model and the
# sample image). No GPU, no data download; a laptop CPU segments the
# 256 x 320 sample in a second or two.

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

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: the same steps (this notebook is small anyway)

THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default); a small image runs well on one
DEVICE = None  # None: cuda -> mps -> cpu, whichever is there; or "cpu", "cuda:0", "mps"
MODEL = "nuclei"  # the model shipped with the package
SAMPLE = "histology"  # bundled sample: "histology" (H&E, some errors to look at) or "fluorescence" (easy, exercise 1)
DIAMETER = None  # nuclei diameter in pixels; None: the model estimates it (its diam_mean if it cannot)
TABLE_ROWS = 5  # rows of the cell table to print
TITLE_SIZE = 10  # one title size for every figure

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from cellpose_nb import data, export, metrics, model, plot, predict
from cellpose_nb.widgets import FlowExplorer, ThresholdExplorer

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


# %% [markdown]
# ## 1. A model and an image
#
# The shipped model was trained on the nuclei of the 2018 Data Science Bowl
# (DSB2018). It sees one grayscale channel with **bright nuclei**:
# fluorescence as it is, histology converted with `data.histology_to_gray`,
# brightfield inverted (`invert=True`). Its `diam_mean` is the nucleus
# diameter, in pixels, that it was trained at: every image is zoomed so that
# its nuclei have that size.
#
# The sample is a 256 x 320 DSB2018 histology image (H&E, CC0) with its
# annotation, which we use only to check the result. It is not an easy one:
# the nuclei are crowded and their edges fuzzy, so the check below finds
# mistakes to look at (the bundled fluorescence sample, exercise 1, is so
# easy that every nucleus is found). Both samples were in the model's
# training data: what we measure here is a sanity check, not a score.

# %%
net = model.load_pretrained(MODEL, device=DEVICE)
sample = data.load_sample(SAMPLE)
image = sample.image if sample.image.ndim == 2 else data.histology_to_gray(sample.image)
truth = sample.labels

print(f"model {MODEL!r}: widths {net.config.features}, diam_mean {net.config.diam_mean:g} px, "
      f"{sum(p.numel() for p in net.parameters()):,} parameters")
print(f"sample {sample.name}: {sample.image.shape} {sample.image.dtype}, "
      f"{len(np.unique(truth)) - 1} annotated nuclei")

fig, axes = plt.subplots(1, 2, figsize=(10, 5))
plot.show_image(image, ax=axes[0], title="the image")
plot.overlay_labels(image, truth, ax=axes[1], title="its annotation")
show(fig)

# %% [markdown]
# ## 2. Segment: one call
#
# `predict.segment` normalises the image (1st percentile -> 0, 99th -> 1),
# zooms it by `diam_mean / diameter`, runs the network in overlapping tiles,
# zooms the outputs back and turns them into masks by following the flows.
# With `diameter=None` the model estimates the size from the image (or, for a
# model without a size model, warns and takes its own `diam_mean`).

# %%
t0 = time.perf_counter()
seg = predict.segment(image, net, diameter=DIAMETER, channels=(0, None), device=DEVICE)
seconds = time.perf_counter() - t0

n_cells = int(seg.labels.max())
n_true = len(np.unique(truth)) - 1
print(f"{plural(n_cells, 'nucleus', 'nuclei')} found in {seconds:.2f} s at a diameter of {seg.diameter:.1f} px")
print("labels  ", seg.labels.shape, seg.labels.dtype, "| flows", seg.flows.shape, seg.flows.dtype,
      "| cellprob", seg.cellprob.shape, "| style", seg.style.shape)

assert seg.labels.shape == image.shape[:2] and seg.flows.shape == (2, *image.shape[:2])
assert seg.cellprob.shape == image.shape[:2] and np.isfinite(seg.flows).all()
assert n_cells > 0, "no cells found in the sample"
assert sorted(np.unique(seg.labels)) == list(range(n_cells + 1)), "labels are 0..N"
assert n_true / 2 <= n_cells <= 2 * n_true, (n_cells, n_true)

# %% [markdown]
# ## 3. The masks
#
# `seg.labels` is the label image: 0 is background, 1..N one nucleus each.
# Drawn over the image, each nucleus gets its own colour. Against the
# annotation, a predicted nucleus is a hit (true positive, green) when it
# overlaps one annotated nucleus with an intersection over union (IoU) of at
# least 0.5; unmatched predictions are false positives (red), unmatched
# annotations false negatives (blue). The score is
# **AP = TP / (TP + FP + FN)** (notebook 06 derives it). The error panel
# colours the outline of each prediction or annotation by what it is.

# %%
ap = metrics.matching(truth, seg.labels, thresholds=[0.5, 0.75])
print("  ".join(f"AP@{m.threshold:g} = {m.ap:.3f} (TP {m.tp}, FP {m.fp}, FN {m.fn})" for m in ap))

fig, axes = plt.subplots(1, 3, figsize=(15, 5))
plot.overlay_labels(image, seg.labels, ax=axes[0], title=f"{plural(n_cells, 'predicted nucleus', 'predicted nuclei')}")
plot.show_labels(seg.labels, ax=axes[1], title="the label image")
plot.show_errors(truth, seg.labels, ax=axes[2], image=image,
                 title=f"errors at IoU 0.5: green TP {ap[0].tp}, red FP {ap[0].fp}, blue FN {ap[0].fn}")
show(fig)

# the sample was part of the model's training data, so this is a sanity check, not a score
assert ap[0].ap > 0.5, f"AP@0.5 = {ap[0].ap:.2f} on the bundled sample"
assert ap[0].fp + ap[0].fn > 0, "the sample was chosen to show some errors"

# %% [markdown]
# ## 4. What the network predicts: flows and cell probability
#
# The network does not draw masks. It predicts, for every pixel, a **flow**:
# a unit vector pointing towards the centre of the nucleus the pixel belongs
# to (shown as a colour: the hue is the direction, the brightness the
# length; the disc in the corner is the key: a flow has the colour of the
# point of the disc it points to, seen from the disc's middle), and a **cell probability** (a logit:
# above 0 means "inside a nucleus"). Masks are the groups of pixels whose
# flows lead to the same centre (notebook 03). The middle panel zooms into a
# few nuclei and draws the flows as arrows, a few per nucleus.

# %%
# a close-up of about four nuclei across, around the median nucleus; arrows a quarter diameter apart
half = int(2 * seg.diameter)
centre_row, centre_col = (int(v) for v in np.median(np.argwhere(seg.labels > 0), axis=0))
r0 = int(np.clip(centre_row - half, 0, image.shape[0] - 2 * half))
c0 = int(np.clip(centre_col - half, 0, image.shape[1] - 2 * half))
crop = np.s_[r0:r0 + 2 * half, c0:c0 + 2 * half]
arrow_step = max(2, round(seg.diameter / 4))

fig, axes = plt.subplots(1, 3, figsize=(15, 5))
plot.show_flows(seg.flows, ax=axes[0], title="predicted flows (colour = direction)")
plot.show_flow_key(axes[0], inset=True)
axes[0].add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), 2 * half, 2 * half, fill=False, color="white"))
plot.show_flows(seg.flows[(slice(None), *crop)], ax=axes[1], arrows=True, step=arrow_step,
                mask=seg.cellprob[crop] > 0, title=f"close-up (white box), an arrow every {arrow_step} px")
logit = axes[2].imshow(seg.cellprob, cmap="RdBu_r", vmin=-np.abs(seg.cellprob).max(),
                       vmax=np.abs(seg.cellprob).max(), interpolation="nearest")
axes[2].set_axis_off()
axes[2].set_title("cell probability (logit; > 0: inside)")
fig.colorbar(logit, ax=axes[2], shrink=0.8, label="logit")
show(fig)

inside = seg.labels > 0
length = np.sqrt((seg.flows**2).sum(axis=0))
print(f"mean flow length inside the masks {length[inside].mean():.2f}, outside {length[~inside].mean():.2f}")
print(f"cell probability > 0 on {(seg.cellprob > 0).mean():.1%} of the pixels, "
      f"masks cover {inside.mean():.1%}")
assert length[inside].mean() > length[~inside].mean()
assert seg.cellprob[inside].mean() > seg.cellprob[~inside].mean()

# %% [markdown]
# ## 5. A table of measurements
#
# `export.cell_table` measures every mask: area (pixels), centroid
# (row, column), the diameter of the disc of the same area and, given the
# image, the mean intensity. `export.write_cells_csv` writes the same table
# as CSV (notebooks 06 and 07 export everything).

# %%
table = export.cell_table(seg.labels, image)
columns = list(table[0])
print("  ".join(f"{c:>20s}" for c in columns))
for row in table[:TABLE_ROWS]:
    print("  ".join(f"{row[c]:20.4g}" for c in columns))
print(f"... {len(table)} rows")

diameters = np.array([row["equivalent_diameter"] for row in table])
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(diameters, bins=15, color="tab:gray")
ax.axvline(seg.diameter, color="tab:red", label=f"diameter used ({seg.diameter:.1f} px)")
ax.set_xlabel("equivalent diameter (px)")
ax.set_ylabel("nuclei")
ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False)  # above the bars, not on them
show(fig)

assert len(table) == n_cells and [row["label"] for row in table] == list(range(1, n_cells + 1))
assert sum(row["area"] for row in table) == inside.sum()

# %% [markdown]
# ## 6. Explore the thresholds
#
# Two numbers turn the network's output into masks:
#
# - `cellprob_threshold`: pixels with a cell probability (logit) above it
#   take part; raise it and masks shrink, lower it and they grow (and faint
#   nuclei appear);
# - `flow_threshold`: a mask is dropped when the flows recomputed from its
#   shape disagree with the predicted ones by more than this (mean squared
#   error); lower it to drop more doubtful masks, 0 turns the check off.
#
# The `ThresholdExplorer` follows the flows once and then recomputes the
# masks for every slider position in milliseconds. With the annotation as
# `truth` it also shows the AP. At the thresholds `segment` used it gives
# exactly `seg.labels`.

# %%
tuned = net.record.thresholds or {}  # a model may carry tuned thresholds (thresholds.json)
used = {"cellprob_threshold": float(tuned.get("cellprob_threshold", predict.CELLPROB_THRESHOLD)),
        "flow_threshold": float(tuned.get("flow_threshold", predict.FLOW_THRESHOLD))}
explorer = ThresholdExplorer.from_segmentation(image, seg, truth=truth, **used)

same = explorer.update(**used)
assert np.array_equal(same, seg.labels), "the explorer reproduces segment's masks"

areas = {}
for t in (-2.0, 0.0, 2.0, 4.0):
    labels_t = explorer.update(cellprob_threshold=t)
    areas[t] = int((labels_t > 0).sum())
    print(f"cellprob_threshold {t:+.0f}: {plural(explorer.n_cells, 'nucleus', 'nuclei'):>10s}, {areas[t]:6d} mask pixels, "
          f"AP@0.5 {explorer.ap[0.5]:.3f}")
explorer.update(**used)  # back to where we started
assert areas[-2.0] > areas[2.0] > areas[4.0], "a higher threshold gives smaller masks"
assert explorer.n_cells == n_cells

# %% [markdown]
# Move the sliders (in Jupyter; on a static page such as nbviewer, the next
# cell shows nothing and the one after it a fixed picture).

# %%
explorer

# %%
show(explorer.static(cellprob_threshold=2.0))

# %% [markdown]
# ## 7. Explore the flows
#
# The `FlowExplorer` shows the image with the mask outlines, the flow field,
# and a close-up of one nucleus. Click any pixel on any of the three panels
# (or pick a nucleus from the list, or a pixel with the row and column
# sliders): the path that pixel takes through the field, 200 small steps, is
# drawn to its end, the nucleus' centre.

# %%
# the same foreground as segment (the model's tuned cellprob_threshold), arrows half a diameter apart
flow_explorer = FlowExplorer.from_segmentation(image, seg, cellprob_threshold=used["cellprob_threshold"],
                                               arrow_step=max(3, round(seg.diameter / 2)))
cell = int(flow_explorer.cell_ids[len(flow_explorer.cell_ids) // 2])
flow_explorer.pick_cell(cell)  # traces the nucleus' pixel farthest from its centre
path = flow_explorer.trajectory
end, centre = path[-1], np.array(flow_explorer.center_of(cell))
print(f"nucleus {cell}: pixel {flow_explorer.pixel} flows in {plural(len(path) - 1, 'step')} to "
      f"({end[0]:.1f}, {end[1]:.1f}); the centre is {tuple(centre.tolist())}")
assert path.shape == (201, 2)
assert np.hypot(*(end - centre)) < seg.diameter / 2, "the path ends near the nucleus' centre"
flow_explorer

# %%
fig = flow_explorer.static(cell=cell, arrows=True)
plot.show_flow_key(fig.axes[1], inset=True)  # the middle panel is the flow field
show(fig)

# %% [markdown]
# > **Cellpose 1.0 or 3?** The method shown here (flows towards the centre, a
# > U-Net that predicts them, masks from following them) is Cellpose 1.0's. The
# > knobs and their defaults are Cellpose 3's, as in `cellpose` 3.1.1.2's
# > `CellposeModel.eval`: `cellprob_threshold=0.0`, `flow_threshold=0.4`,
# > `min_size=15`, 200 Euler steps scaled by the zoom (`200 / rescale`),
# > normalisation from the 1st to the 99th percentile, 224-px tiles overlapping
# > by 10 %. The shipped nuclei model is this package's own, trained the
# > Cellpose 1.0 way on DSB2018; it is not one of Cellpose's models.

# %% [markdown]
# ## In practice
#
# - **Diameter first.** The model works best when nuclei come out near its
#   `diam_mean` after zooming; a wrong `diameter` is the most common cause of
#   split or merged nuclei (exercise 2). Measure a few nuclei (in pixels, not
#   microns) or let the size model estimate it, and check.
# - **Channels.** The shipped model takes one channel with bright nuclei:
#   `channels=(0, None)` for a grayscale image; for a multi-channel image
#   pick the nuclear channel (`channels=(2, None)` for DAPI in blue, with
#   `channel_axis`); `invert=True` for dark nuclei on a light background;
#   `data.histology_to_gray` for H&E.
# - **Big images** are cut into 224 x 224 tiles, so memory does not grow with
#   the image; `augment=True` averages flipped tiles (slower, a little more
#   accurate).
# - **GPU.** `device=None` uses CUDA or Apple's MPS when there is one; the CPU
#   is fine for a few images.
# - **Many files**: `cellpose-nb segment my_images/ --out results/` writes
#   masks, outlines, a CSV table, ImageJ ROIs and a Cellpose `_seg.npy` for
#   each image (notebook 07).
# - **Other models.** Cellpose's own weights (cytoplasm models such as
#   `cyto3`) load with `model.load_cellpose_weights("cyto3")` (a download).
#
# ## Exercises
#
# 1. **Two ways to gray, and an easy image.** Segment the raw RGB histology
#    image's first (red) channel, inverted
#    (`channels=(0, None), channel_axis=-1, invert=True`), and compare its
#    AP@0.5 and AP@0.75 with those of `data.histology_to_gray` (section 3).
#    Then segment the bundled `"fluorescence"` sample: what changes?
#    (Without `channels`, `segment` applies the model's own recipe to an RGB
#    image, here the same gray conversion: pass `channels` to choose.)

# %% tags=["solution"]
he = data.load_sample("histology")
fl = data.load_sample("fluorescence")
runs = {}
for name, sample_k, img_k, kwargs in (
        ("H&E, histology_to_gray", he, data.histology_to_gray(he.image), {"channels": (0, None)}),
        ("H&E, red inverted", he, he.image, {"channels": (0, None), "channel_axis": -1, "invert": True}),
        ("fluorescence", fl, fl.image, {"channels": (0, None)})):
    seg_k = predict.segment(img_k, net, diameter=DIAMETER, device=DEVICE, **kwargs)
    runs[name] = seg_k.labels
    m50, m75 = metrics.matching(sample_k.labels, seg_k.labels, thresholds=[0.5, 0.75])
    print(f"{name:23s}: {plural(int(seg_k.labels.max()), 'nucleus', 'nuclei'):>10s} for {m50.n_true:3d} annotated, "
          f"AP@0.5 {m50.ap:.3f}, AP@0.75 {m75.ap:.3f}")
    assert seg_k.labels.shape == sample_k.labels.shape
assert not np.array_equal(runs["H&E, histology_to_gray"], runs["H&E, red inverted"]), "the two inputs differ"
# The two gray versions of the H&E image give different masks: about as many nuclei found at
# IoU 0.5, but at 0.75 (the outlines must fit) the gray conversion is ahead on this image. It
# uses all three colours (haematoxylin is dark in all of them), the red channel alone less.
# The fluorescence image is the easy case: bright, well separated nuclei on a dark background,
# the kind of image that dominates DSB2018. Histology is harder: crowded nuclei, fuzzy edges,
# and fewer H&E images in the training data.

# %% [markdown]
# 2. **The diameter matters.** Measure the median diameter of the annotated
#    nuclei (`train.median_diameter(truth)`), then segment the sample
#    with a third of it, with it, and with three times it. How many
#    nuclei come out, and what happens to the AP@0.5? Why?

# %% tags=["solution"]
from cellpose_nb.train import median_diameter

measured = median_diameter(truth)
counts = {}
for factor in (1 / 3, 1.0, 3.0):
    d = factor * measured
    s = predict.segment(image, net, diameter=d, device=DEVICE)
    counts[factor] = int(s.labels.max())
    m = metrics.matching(truth, s.labels, thresholds=[0.5])[0]
    print(f"diameter {d:5.1f} px (x{factor:.2f}): {plural(counts[factor], 'nucleus', 'nuclei'):>10s}, AP@0.5 {m.ap:.3f}")
# A diameter that is too small zooms the image up: each nucleus looks too big to the network,
# which tends to split it or cut it short (its flows only reach so far). A diameter that is too
# large shrinks the image: small nuclei vanish below min_size and neighbours merge. Cellpose
# models are trained with random zooms of +-25%, so a rough estimate is enough; a factor of 3 is not.
assert counts[1.0] > 0

# %% [markdown]
# 3. **The best threshold for this image.** With `explorer.compute(...)`
#    (which does not move the sliders), try `cellprob_threshold` from -3 to 3
#    in steps of 0.5 and find the value with the highest AP@0.5 on this
#    image. Is it worth tuning on one image?

# %% tags=["solution"]
grid = np.arange(-3.0, 3.01, 0.5)
ap_grid = [metrics.matching(truth, explorer.compute(cellprob_threshold=t), thresholds=[0.5])[0].ap
           for t in grid]
best = grid[int(np.argmax(ap_grid))]
print("AP@0.5 by threshold:", dict(zip(grid.round(1).tolist(), np.round(ap_grid, 3).tolist())))
print(f"best on this image: {best:+.1f}")
# On this H&E image the AP rises as the threshold falls to about -2: the model's masks of these
# fuzzy nuclei are a little small, and a lower threshold lets them grow to the annotated size.
# (On the crisp fluorescence sample the AP is flat over a wide range: the logits are far from 0
# almost everywhere.) But one image is too little to tune on, and this one was in the training
# set: the model's own tuned threshold was chosen on held-out DSB2018 images of all kinds. Tune
# on a few annotated images of your own, held out from training (notebook 06).
assert len(ap_grid) == len(grid) and all(0 <= a <= 1 for a in ap_grid)


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) The method, the nuclei (DSB2018) results and AP = TP / (TP + FP + FN).
# - Stringer, C. & Pachitariu, M. Cellpose3: one-click image restoration for improved cellular segmentation. *Nature Methods* 22, 592-599 (2025). [doi:10.1038/s41592-025-02595-5](https://doi.org/10.1038/s41592-025-02595-5) Cellpose 3, whose code (`cellpose` 3.1.1.2) fixes the defaults used here.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.
# - Caicedo, J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. *Nature Methods* 16, 1247-1253 (2019). [doi:10.1038/s41592-019-0612-7](https://doi.org/10.1038/s41592-019-0612-7) The sample images (DSB2018, CC0) and the shipped model's training data.

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
# # 06 · Evaluation: how good are the masks?
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/06_evaluation.ipynb) (replace OWNER with the repository's owner once it is published)
#
# A segmentation is only as useful as the trust we can put in it. This
# notebook measures it the way Cellpose (and the 2018 Data Science Bowl) do:
# predicted and annotated objects are paired one to one by their overlap, and
# the pairs, the leftovers on either side, and a threshold on the overlap give
# one number, the average precision. It derives that by hand, applies it to
# the shipped nuclei model on images it did not train on, looks at the
# errors, tunes the two mask thresholds, measures and exports the cells, and
# checks that the reference package `cellpose` gets the same masks from the
# same weights.
#
# **What you will learn**
#
# - the intersection over union (IoU) of every pair of objects, by loops, and
#   `metrics.iou_matrix`;
# - one-to-one matching (why pairs above IoU 0.5 are unique; the Hungarian
#   assignment below 0.5), true and false positives, false negatives, and
#   **AP = TP / (TP + FP + FN)**, by hand and with `metrics.matching`;
# - AP against the IoU threshold (`plot.plot_ap_curve`), per image and
#   pooled over a data set (`average_precision`, `matching_dataset`), on a
#   fair evaluation set (images the model never trained on);
# - an error gallery (`plot.show_errors`) and what kind of errors they are;
# - tuning `cellprob_threshold` and `flow_threshold` on some images and
#   checking on others (by hand with the `ThresholdExplorer`, and with
#   `train.optimize_thresholds`);
# - per-cell measurements, and every export format (TIFF masks, outline PNG,
#   CSV, ImageJ ROIs, Cellpose `_seg.npy`), read back and checked;
# - a side-by-side run of the same weights in the reference `cellpose`
#   package (when it is installed).
#
# **What you need**: notebook 00 (segmenting with the shipped model);
# notebook 03 helps for the thresholds. No GPU. The DSB2018 data (under
# `data_root()`) are optional: without them the held-out images are
# synthetic nuclei. The reference package `cellpose` is optional too.

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

import numpy as np

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: a handful of small held-out images
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

SEED = 0  # seeds the synthetic images (used when the DSB2018 data are not there)
THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default); small images run best on one
DEVICE = None  # None: cuda -> mps -> cpu, whichever is there; or "cpu", "cuda:0", "mps"
MODEL = "nuclei"  # the shipped model under evaluation
USE_DSB = True  # held-out DSB2018 images when data_root() finds them (else synthetic nuclei)
PER_MODALITY = {"fluorescence": 3, "histology": 1, "brightfield": 0} if QUICK else None  # None: all held out
MAX_SIDE = 400 if QUICK else None  # skip held-out images larger than this (px), None: keep all
N_SYNTHETIC = 4 if QUICK else 12  # synthetic held-out images when there are no DSB data
IOU_THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)  # the AP curve (0.5 ... 0.95, as the DSB)
TUNE_FRACTION = 0.5  # share of the held-out images used to tune the thresholds (the rest tests them)
# threshold grids wide enough that the AP falls off on every side (too few or too many pixels, too strict a check)
CELLPROB_GRID = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0) if QUICK else tuple(np.arange(-4.0, 4.01, 0.5))
FLOW_GRID = (0.1, 0.2, 0.4, 0.6, 0.8, 1.2) if QUICK else (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5)
GALLERY = 4 if QUICK else 8  # zoomed crops in the error gallery (held-out images, worst first)
GALLERY_PER_IMAGE = 2  # at most this many crops from one image
CROP_DIAMETERS = 4  # side of a gallery crop, in nucleus diameters (at least CROP_MIN px)
CROP_MIN = 40
N_COMPARE = 2 if QUICK else 6  # images segmented by both packages (section 7)
N_AUGMENT = 1 if QUICK else None  # held-out images of exercise 3 (None: all)

# %%
import csv
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import roifile
import torch
from IPython.display import display
from matplotlib.patches import Patch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.draw import polygon as fill_polygon

from cellpose_nb import data, export, metrics, model, plot, predict, train
from cellpose_nb.widgets import ThresholdExplorer

if THREADS is not None:
    torch.set_num_threads(THREADS)
WORKDIR = Path(tempfile.mkdtemp(prefix="cellpose_nb_06_"))  # every file this notebook writes
print("outputs go to", WORKDIR)

plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 step', '4 steps', '1 nucleus', '2 nuclei': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def object_ids(labels):
    return np.unique(labels[labels > 0])


# %% [markdown]
# ## 1. Matching by hand
#
# A tiny example, small enough to check with a pencil: four annotated
# objects (`true`) and five predicted ones (`pred`, with ids that are not
# 1..N, as happens after editing). Prediction 7 is a good but slightly small
# copy of object 1; object 2 is split into predictions 3 and 5; objects 3
# and 4 are merged into prediction 9; prediction 2 is a false alarm.

# %%
true = np.zeros((13, 16), int)
true[1:5, 1:6] = 1  # 4 x 5
true[1:5, 8:15] = 2  # 4 x 7
true[7:11, 2:7] = 3  # 4 x 5
true[7:11, 10:15] = 4  # 4 x 5
pred = np.zeros_like(true)
pred[1:5, 1:5] = 7  # object 1, one column short
pred[1:5, 8:11] = 3  # the left 3 columns of object 2 ...
pred[1:5, 11:15] = 5  # ... and the right 4
pred[7:11, 2:15] = 9  # objects 3 and 4 and the gap between them
pred[11:13, 13:16] = 2  # nothing there

for name, lab in (("true", true), ("pred", pred)):
    print(name)
    print("\n".join("  " + " ".join(str(v) if v else "." for v in row) for row in lab))

# %% [markdown]
# **IoU.** For a true object $A$ and a predicted object $B$ (sets of
# pixels), the intersection over union is
#
# $$
# \operatorname{IoU}(A, B) = \frac{|A \cap B|}{|A \cup B|} = \frac{|A \cap B|}{|A| + |B| - |A \cap B|}:
# $$
#
# 1 for a perfect copy, 0 without overlap. Every pair, by two loops:
#
# > **Write it yourself ★: `iou_by_hand`.** In the exercise version of this
# > notebook (`make exercises`) its body is a TODO: signature, docstring and
# > hint are given, and the cell after it checks your matrix against the
# > package's `metrics.iou_matrix`. Difficulty: ★ a few lines straight from
# > the formula, ★★ some care with indices, ★★★ an algorithm to design.

# %% tags=["skeleton"]
def iou_by_hand(true, pred):
    """IoU of every (true, predicted) pair: rows follow the true ids, columns the predicted ids.

    Returns (iou, true ids, predicted ids), the ids as `object_ids` lists them.
    """
    # Hint: two loops over object_ids(true) and object_ids(pred); with the boolean masks
    #   a = true == i and b = pred == j, the IoU is (a & b).sum() / (a | b).sum().
    t_ids, p_ids = object_ids(true), object_ids(pred)
    iou = np.zeros((len(t_ids), len(p_ids)))
    for r, i in enumerate(t_ids):
        for c, j in enumerate(p_ids):
            a, b = true == i, pred == j
            iou[r, c] = (a & b).sum() / (a | b).sum()
    return iou, t_ids, p_ids


# %%
iou, t_ids, p_ids = iou_by_hand(true, pred)
print("      pred " + " ".join(f"{j:6d}" for j in p_ids))
for i, row in zip(t_ids, iou):
    print(f"true {i:4d}  " + " ".join(f"{v:6.3f}" for v in row))

iou_pkg, t_pkg, p_pkg = metrics.iou_matrix(true, pred)
assert np.array_equal(t_pkg, t_ids) and np.array_equal(p_pkg, p_ids)
assert np.allclose(iou_pkg, iou)
assert np.isclose(iou[0, list(p_ids).index(7)], 16 / 20)  # 16 shared pixels, 20 in the union

# %% [markdown]
# **Matching.** Each object may be used once: a pair is a true positive
# (TP) when its IoU is at least the threshold `t`. What is left over is a
# false positive (FP, a prediction without a partner) or a false negative
# (FN, an annotated object without one). Then
#
# $$
# \mathrm{AP}(t) = \frac{\mathrm{TP}(t)}{\mathrm{TP}(t) + \mathrm{FP}(t) + \mathrm{FN}(t)}, \qquad
# \text{precision} = \frac{\mathrm{TP}}{\mathrm{TP} + \mathrm{FP}}, \qquad
# \text{recall} = \frac{\mathrm{TP}}{\mathrm{TP} + \mathrm{FN}},
# $$
#
# where $\mathrm{TP}(t)$ counts the matched pairs with
# $\operatorname{IoU} \ge t$, $\mathrm{FP}(t) = N_\text{pred} - \mathrm{TP}(t)$ and
# $\mathrm{FN}(t) = N_\text{true} - \mathrm{TP}(t)$. Over a data set of
# images $i$, Cellpose reports the mean over images,
# $\frac{1}{n}\sum_i \mathrm{AP}_i(t)$ (section 3).
#
# (Cellpose and the Data Science Bowl call this ratio "average precision";
# it is the precision-recall area of object detection only in name.)
#
# For `t > 0.5` the pairing is forced: if `A` and `B` have IoU above 0.5,
# they share more than half of `A`, so no other prediction (disjoint from
# `B`) can share more than half of `A` too. Every object has at most one
# partner, and the pairs are simply the entries above `t`. Below 0.5 one
# object may have several candidates (object 2 and predictions 3 and 5 at
# `t = 0.4`), and an assignment must choose. Cellpose solves one with the
# Hungarian algorithm (`scipy.optimize.linear_sum_assignment`) on the cost
# `-(iou >= t) - iou / (2 n_min)`: as many pairs as possible first, then the
# largest IoUs.
#
# > **Write it yourself ★★: `match_by_hand`**, checked against
# > `metrics.matching` at six thresholds in the next cell.

# %% tags=["skeleton"]
def match_by_hand(iou, t):
    """(TP, FP, FN, AP) of the one-to-one matching at IoU threshold t."""
    # Hint: for t > 0.5, TP is the number of entries of `iou` at least t. Otherwise solve the
    #   assignment with linear_sum_assignment on the cost -(iou >= t) - iou / (2 n_min), with
    #   n_min = min(n_true, n_pred), and count the assigned pairs whose IoU is at least t.
    #   FP = n_pred - TP, FN = n_true - TP.
    n_true, n_pred = iou.shape
    if t > 0.5:
        tp = int((iou >= t).sum())  # each object has at most one partner above 0.5
    else:
        cost = -(iou >= t).astype(float) - iou / (2 * min(n_true, n_pred))
        rows, cols = linear_sum_assignment(cost)
        tp = int((iou[rows, cols] >= t).sum())
    fp, fn = n_pred - tp, n_true - tp
    return tp, fp, fn, tp / (tp + fp + fn)


# %%
print(" IoU t    TP  FP  FN     AP   precision  recall")
for t in (0.3, 0.4, 0.5, 0.6, 0.75, 0.9):
    tp, fp, fn, ap = match_by_hand(iou, t)
    (m,) = metrics.matching(true, pred, thresholds=[t])
    print(f"  {t:4.2f}  {tp:4d} {fp:3d} {fn:3d}  {ap:6.3f}  {m.precision:9.3f}  {m.recall:6.3f}")
    assert (m.tp, m.fp, m.fn) == (tp, fp, fn) and np.isclose(m.ap, ap)

fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
plot.show_labels(true, ax=axes[0], title="true")
plot.show_labels(pred, ax=axes[1], title="pred")
plot.show_errors(true, pred, ax=axes[2], threshold=0.5)
show(fig)

# %% [markdown]
# At IoU 0.5 only prediction 7 (IoU 0.8) and prediction 5 (0.57) count: the
# split half 3 and the merger 9 are false positives, objects 3 and 4 false
# negatives. At 0.3 the merger pairs with one of the two objects it covers.
# A split or a merger costs two or three errors, a missed object one.
#
# > **Checkpoint (discuss in pairs):** a model that splits one nucleus in two
# > and a model that misses it entirely: which scores the higher AP at 0.5,
# > and which error would you rather have in your own experiment?
#
# ## 2. A fair evaluation set
#
# A model must be scored on images it did not train on. The shipped model
# was trained on the DSB2018 training images **except a validation split**
# (10 %, stratified by modality, seed 0) that it only ever saw for
# validation: those are our held-out images. The model's training record
# lists them when it has one; otherwise we redo the split of
# `scripts/dsb2018_split.py`. (Not quite untouched: the model's tuned
# thresholds and its size model's penalty were chosen on them. The DSB's own
# held-back test images would be the cleaner test.) The two bundled samples
# were in the training set: they are shown separately, as a sanity check,
# not a score.
#
# The shipped model wants one channel with bright nuclei, so each image is
# turned into that according to its modality. Every image is segmented at
# its true median nucleus diameter (from the annotation), so that the score
# measures the segmentation, not the size estimate (section 3b measures the
# size model, when there is one).

# %%
net = model.load_pretrained(MODEL, device=DEVICE)
record = net.record.training or {}


def nuclei_input(image, modality):
    """(image, invert) in the shipped model's convention: one channel, bright nuclei."""
    if modality == "histology":
        return data.histology_to_gray(image), False
    return image, modality == "brightfield"


def held_out_dsb():
    """The model's validation images: (name, modality, image, labels)."""
    rows = data.dataset_index("dsb2018")
    modality = {r["id"]: r["modality"] for r in rows}
    size = {r["id"]: max(r["h"], r["w"]) for r in rows}
    names = record.get("val_names")
    if not names:  # redo the split of scripts/dsb2018_split.py
        ids = sorted(modality)
        _, val_idx = train.split_train_val(len(ids), val_fraction=0.1, seed=0,
                                           strata=[modality[i] for i in ids])
        names = [ids[k] for k in val_idx]
    names = [n for n in names if MAX_SIDE is None or size[n] <= MAX_SIDE]
    if PER_MODALITY is not None:  # the first few of each modality
        by_modality = {m: [n for n in names if modality[n] == m][:k] for m, k in PER_MODALITY.items()}
        names = [n for group in by_modality.values() for n in group]
    folder = data.data_root() / "dsb2018" / "train"
    return [(n, modality[n], data.read_image(folder / f"{n}_img.tif"),
             data.read_labels(folder / f"{n}_masks.tif").astype(np.int32)) for n in names]


root = data.data_root() if USE_DSB else None
if root is not None and (root / "dsb2018" / "index.csv").is_file():
    held_out = held_out_dsb()
    source = "DSB2018 validation split"
else:
    synthetic = data.make_synthetic_dataset(N_SYNTHETIC, shape=(256, 256), n_cells=30, diameter=17.0,
                                            kind="nuclei", seed=SEED)
    held_out = [(f"synthetic_{k}", "synthetic", s.image, s.labels) for k, s in enumerate(synthetic)]
    source = "synthetic nuclei"
bundled = []
for name in ("fluorescence", "histology"):
    s = data.load_sample(name)
    bundled.append((s.name, name, s.image, s.labels.astype(np.int32)))

evaluation = [dict(name=n, modality=m, image=img, truth=lab, held_out=k >= len(bundled))
              for k, (n, m, img, lab) in enumerate(bundled + held_out)]
t0 = time.perf_counter()
for item in evaluation:
    gray, invert = nuclei_input(item["image"], item["modality"])
    item["input"], item["invert"] = gray, invert
    item["diameter"] = train.median_diameter(item["truth"])
    item["seg"] = predict.segment(gray, net, diameter=item["diameter"], invert=invert, device=DEVICE)
print(f"{plural(len(held_out), 'held-out image')} ({source}) and {plural(len(bundled), 'bundled sample')} "
      f"segmented in {time.perf_counter() - t0:.1f} s")
assert len(held_out) > 0 and all(e["seg"].labels.shape == e["truth"].shape for e in evaluation)

# %% [markdown]
# ## 3. AP against the IoU threshold
#
# One AP per image and threshold (`metrics.average_precision`, an
# (images x thresholds) array). At IoU 0.5 it counts the nuclei found; at
# 0.9 it asks for nearly pixel-perfect outlines, which even two human
# annotators rarely agree on. Two ways to summarise a data set:
#
# - **mean over images** (Cellpose's papers): every image weighs the same;
# - **pooled** (`metrics.matching_dataset`, StarDist's convention): TP, FP
#   and FN are summed over all images first, so crowded images weigh more.

# %%
truths = [e["truth"] for e in evaluation]
preds = [e["seg"].labels for e in evaluation]
ap = metrics.average_precision(truths, preds, thresholds=IOU_THRESHOLDS)
is_held = np.array([e["held_out"] for e in evaluation])
pooled = metrics.matching_dataset([t for t, h in zip(truths, is_held) if h],
                                  [p for p, h in zip(preds, is_held) if h], thresholds=IOU_THRESHOLDS)

print(f"{'image':18s} {'modality':12s} {'diam':>5s} {'true':>5s} {'pred':>5s}   AP@0.5  AP@0.75  AP@0.9")
col = {t: int(np.argmin(np.abs(IOU_THRESHOLDS - t))) for t in (0.5, 0.75, 0.9)}
for e, row in zip(evaluation, ap):
    tag = "" if e["held_out"] else " (trained on)"
    print(f"{e['name'][:18]:18s} {e['modality']:12s} {e['diameter']:5.1f} {len(object_ids(e['truth'])):5d} "
          f"{int(e['seg'].labels.max()):5d}   {row[col[0.5]]:6.3f}  {row[col[0.75]]:7.3f}  {row[col[0.9]]:6.3f}{tag}")
mean_held = np.nanmean(ap[is_held], axis=0)
pooled_ap = np.array([m.ap for m in pooled])
print(f"held out, mean over images: AP@0.5 {mean_held[col[0.5]]:.3f}; pooled: {pooled_ap[col[0.5]]:.3f}")

fig, ax = plt.subplots(figsize=(6, 4))
plot.plot_ap_curve(IOU_THRESHOLDS, [mean_held, pooled_ap, np.nanmean(ap[~is_held], axis=0)], ax=ax,
                   label=[f"held out ({plural(int(is_held.sum()), 'image')}), mean", "held out, pooled",
                          "bundled samples (trained on)"])
ax.set_title(f"shipped model '{MODEL}' on {source}")
show(fig)

# AP can only fall as the threshold rises: a pair that passes a high threshold passes a lower one
finite = np.isfinite(ap).all(axis=1)
assert (np.diff(ap[finite], axis=1) <= 1e-12).all() and (np.diff(pooled_ap) <= 1e-12).all()
assert ap[0, col[0.5]] > 0.5, "AP@0.5 on the bundled fluorescence sample"
assert mean_held[col[0.5]] > 0.3, "a nuclei model should find most held-out nuclei"

# %% [markdown]
# ### 3b. And with the size model's diameter?
#
# In practice nobody hands us the true diameter. When the model carries a
# size model (`diameter=None` then estimates it from the style vector and a
# first segmentation), compare the AP with estimated and with true
# diameters; the gap is what the size estimate costs.

# %%
has_size_model = net.record.size_model is not None or bool(record.get("size_model"))
if has_size_model:
    for e in evaluation:
        e["seg_est"] = predict.segment(e["input"], net, diameter=None, invert=e["invert"], device=DEVICE)
    ap_est = metrics.average_precision(truths, [e["seg_est"].labels for e in evaluation], thresholds=[0.5])[:, 0]
    for e, a_true, a_est in zip(evaluation, ap[:, col[0.5]], ap_est):
        print(f"{e['name'][:18]:18s} diameter true {e['diameter']:5.1f}, estimated "
              f"{e['seg_est'].diameter:5.1f} px; AP@0.5 {a_true:.3f} -> {a_est:.3f}")
    assert all(np.isfinite(e["seg_est"].diameter) and e["seg_est"].diameter > 0 for e in evaluation)
else:
    print("this model has no size model: pass the diameter (or fit one, notebook 05)")

# %% [markdown]
# ## 4. An error gallery
#
# Numbers say how many errors, pictures say which. Green: matched at IoU
# 0.5; red: predicted but unmatched (FP); blue: annotated but unmatched
# (FN). A false negative that overlaps no prediction at all was *missed*; one
# that overlaps something was *badly delineated* (split, merged, or cut too
# small or too big).
#
# Whole images hide the errors (a 1-px outline on a 500-px image is a hair),
# so the gallery zooms in: matching is done on the whole held-out image, then
# crops of about four nucleus diameters are shown around the places with the
# most errors, worst images first. Bundled samples (trained on) are left out.

# %%
def error_windows(e, side, n):
    """Up to `n` crop corners (row, col) of `side` px, each around as many error objects as possible."""
    _, fp_ids, fn_ids = plot.error_outlines(e["truth"], e["seg"].labels, threshold=0.5)
    centres = [c for lab, ids in ((e["seg"].labels, fp_ids), (e["truth"], fn_ids)) if len(ids)
               for c in ndimage.center_of_mass(np.ones_like(lab), lab, ids)]
    centres = np.array(centres).reshape(-1, 2)
    shape = np.array(e["truth"].shape)
    windows = []
    while len(centres) and len(windows) < n:
        corners = np.clip(np.round(centres - side / 2).astype(int), 0, np.maximum(shape - side, 0))
        inside = [((centres >= c) & (centres < c + side)).all(axis=1) for c in corners]
        best = int(np.argmax([w.sum() for w in inside]))  # the crop that shows the most errors
        windows.append((*corners[best].tolist(), int(inside[best].sum())))
        centres = centres[~inside[best]]
    return windows


held = [e for e in evaluation if e["held_out"]]
crops = []
for e in sorted(held, key=lambda e: metrics.matching(e["truth"], e["seg"].labels, thresholds=[0.5])[0].ap):
    side = int(min(max(CROP_MIN, CROP_DIAMETERS * e["diameter"]), *e["truth"].shape))
    crops += [(e, r0, c0, side, n_err) for r0, c0, n_err in error_windows(e, side, GALLERY_PER_IMAGE)]
crops = crops[:GALLERY]

if crops:
    n_cols = min(4, len(crops))
    n_rows = -(-len(crops) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.7 * n_rows + 0.4), squeeze=False)
    for ax, (e, r0, c0, side, n_err) in zip(axes.flat, crops):
        whole = metrics.matching(e["truth"], e["seg"].labels, thresholds=[0.5])[0]
        plot.show_errors(e["truth"], e["seg"].labels, ax=ax, image=e["input"])  # matched on the whole image
        ax.set_xlim(c0 - 0.5, c0 + side - 0.5)
        ax.set_ylim(r0 + side - 0.5, r0 - 0.5)  # rows grow downwards
        ax.set_title(f"{e['name'][:8]} ({e['modality'][:5]}.), AP {whole.ap:.2f}\n"
                     f"{plural(n_err, 'error')} in this {side}-px crop")
    for ax in axes.flat[len(crops):]:
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=plot.TP_COLOR, label="matched (TP)"),
                        Patch(color=plot.FP_COLOR, label="predicted only (FP)"),
                        Patch(color=plot.FN_COLOR, label="annotated only (FN)")],
               loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    show(fig)
else:
    print("no errors at IoU 0.5 on the held-out images")

kinds = {"missed": 0, "badly delineated": 0, "false positives": 0}
for e in held:
    _, fp_ids, fn_ids = plot.error_outlines(e["truth"], e["seg"].labels, threshold=0.5)
    iou_e, t_e, _ = metrics.iou_matrix(e["truth"], e["seg"].labels)
    best = iou_e.max(axis=1) if iou_e.shape[1] else np.zeros(len(t_e))
    fn_best = best[np.isin(t_e, fn_ids)]
    kinds["missed"] += int((fn_best == 0).sum())
    kinds["badly delineated"] += int((fn_best > 0).sum())
    kinds["false positives"] += len(fp_ids)
print(f"errors at IoU 0.5 over the {plural(len(held), 'held-out image')}:", kinds)
n_errors = sum(m.fp + m.fn for m in (metrics.matching(e["truth"], e["seg"].labels, thresholds=[0.5])[0]
                                     for e in held))
assert kinds["missed"] + kinds["badly delineated"] + kinds["false positives"] == n_errors
assert all(0 <= r0 and 0 <= c0 and r0 + s <= e["truth"].shape[0] and c0 + s <= e["truth"].shape[1]
           for e, r0, c0, s, _ in crops)

# %% [markdown]
# > **Checkpoint (discuss in pairs):** which kind of error dominates the
# > gallery: missed nuclei, bad outlines or false alarms? For each kind, would
# > you rather change a threshold, retrain, or look again at the annotation?
#
# ## 5. Tuning the thresholds
#
# `cellprob_threshold` and `flow_threshold` (notebook 03) have defaults
# (0 and 0.4) that suit most images, but a data set may prefer others. Tune
# them like any hyper-parameter: on some annotated images (here part of the
# held-out set), and check the choice on **other** images; tuned and scored
# on the same images, the AP flatters.
#
# By hand: the `ThresholdExplorer` of each tuning image follows the flows
# once, after which any threshold pair costs milliseconds; the mean AP@0.5
# over the grid gives the best pair.

# %%
# every other held-out image (they are grouped by modality): both halves get some of each
step = max(1, round(1 / TUNE_FRACTION))
tune = held[::step]
test = [e for e in held if not any(e is t for t in tune)] or held  # with one image, test on it too (and say so)


def explorer_of(e):
    """A ThresholdExplorer of one held-out image (its caches hold every pixel's path: build one at a time)."""
    return ThresholdExplorer.from_segmentation(e["input"], e["seg"], truth=e["truth"])


t0 = time.perf_counter()
grid = np.zeros((len(tune), len(CELLPROB_GRID), len(FLOW_GRID)))
for k, e in enumerate(tune):
    explorer = explorer_of(e)
    for i, c in enumerate(CELLPROB_GRID):
        for j, f in enumerate(FLOW_GRID):
            labels_cf = explorer.compute(cellprob_threshold=c, flow_threshold=f)
            grid[k, i, j] = metrics.matching(e["truth"], labels_cf, thresholds=[0.5])[0].ap
    del explorer  # keep at most one image's caches in memory (Binder gives 2 GB)
mean_grid = np.nanmean(grid, axis=0)
i, j = np.unravel_index(np.nanargmax(mean_grid), mean_grid.shape)
tuned = {"cellprob_threshold": float(CELLPROB_GRID[i]), "flow_threshold": float(FLOW_GRID[j])}
print(f"{grid.size} threshold pairs x images in {time.perf_counter() - t0:.1f} s; best on "
      f"{plural(len(tune), 'tuning image')} ({sum(len(object_ids(e['truth'])) for e in tune)} nuclei): "
      f"{tuned}, mean AP@0.5 {mean_grid[i, j]:.3f}")
print(f"mean AP@0.5 over the grid: from {mean_grid.min():.3f} to {mean_grid.max():.3f}")

fig, ax = plt.subplots(figsize=(6, 4))
im = ax.imshow(mean_grid, cmap="viridis", aspect="auto", origin="lower")
ax.set_xticks(range(len(FLOW_GRID)), [f"{f:g}" for f in FLOW_GRID])
ax.set_yticks(range(len(CELLPROB_GRID)), [f"{c:g}" for c in CELLPROB_GRID])
ax.set_xlabel("flow_threshold")
ax.set_ylabel("cellprob_threshold")
ax.plot(j, i, "r*", ms=14)
fig.colorbar(im, ax=ax, label="mean AP@0.5 (tuning images)")
show(fig)

default = {"cellprob_threshold": 0.0, "flow_threshold": 0.4}
per_image = []
for e in test:
    explorer = explorer_of(e)
    per_image.append([metrics.matching(e["truth"], explorer.compute(**th), thresholds=[0.5])[0].ap
                      for th in (default, tuned)])
    del explorer
scores = dict(zip(("defaults", "tuned"), np.nanmean(np.array(per_image, float), axis=0)))
print(f"test images ({len(test)}{', the same as the tuning images!' if test is held else ''}): "
      f"mean AP@0.5 with the defaults {scores['defaults']:.3f}, with the tuned thresholds {scores['tuned']:.3f}")
assert np.isfinite(mean_grid).all() and 0 <= mean_grid.max() <= 1
assert mean_grid.max() - mean_grid.min() > 0.05, "a grid that is flat says nothing: widen it"

# %% [markdown]
# The grid has a ridge, not a peak: a `cellprob_threshold` too low lets
# background in and glues nuclei together (the flow check then drops the
# glued masks, most of all at a strict `flow_threshold`), one too high
# shrinks the masks below IoU 0.5, and above some `flow_threshold` the check
# no longer drops anything, so the AP stops changing. The star is the first
# best pair found. With a handful of images the tuned pair is noisy: one that
# wins on a few images may lose on others (compare the test scores above).
# Tune on as many annotated images as you can spare.
#
# The explorer on the first test image, starting at the tuned thresholds:
# its AP@0.5 is the grid's number for that image.

# %%
explorer = explorer_of(test[0])
explorer.update(**tuned)
print(f"{test[0]['name']}: {plural(explorer.n_cells, 'nucleus', 'nuclei')}, AP@0.5 {explorer.ap[0.5]:.3f}")
assert np.isclose(explorer.ap[0.5], metrics.matching(test[0]["truth"], explorer.compute(**tuned),
                                                     thresholds=[0.5])[0].ap)
explorer

# %% [markdown]
# Move the sliders (in Jupyter; on a static page such as nbviewer, the cell
# above shows nothing and the next one a fixed picture, at the tuned
# thresholds).

# %%
show(explorer.static(**tuned))

# %% [markdown]
# The package does the same search in one call: `train.optimize_thresholds`
# (which `train.finish_model` runs on the validation images after training
# and saves as `thresholds.json` next to the weights; `segment` then uses
# those instead of the defaults). It runs the network once per image on the
# whole zoomed image and follows the flows for `200 / zoom` steps, as
# Cellpose's `eval` does, so its numbers differ a little from the tiled
# `segment` above.

# %%
tune_inputs = [train.prepare_images([e["input"]], invert=e["invert"])[0] for e in tune]  # (2, H, W) each
best = train.optimize_thresholds(tune_inputs, [e["truth"] for e in tune], net,
                                 diameters=[e["diameter"] for e in tune],
                                 cellprob_grid=CELLPROB_GRID, flow_grid=FLOW_GRID)
print(best.thresholds, "mean AP", round(best.mean_ap, 3))
assert best.cellprob_threshold in CELLPROB_GRID and best.flow_threshold in FLOW_GRID
assert 0 <= best.mean_ap <= 1

# %% [markdown]
# ## 6. Measure and export
#
# Counting nuclei is one use; measuring them is another. `export.cell_table`
# gives area, centroid, equivalent diameter and mean intensity per mask.
# Are the predicted nuclei the right size? For the matched pairs of the
# held-out images, compare the equivalent diameters of prediction and
# annotation.

# %%
pairs = []
for e in held:
    iou_e, t_e, p_e = metrics.iou_matrix(e["truth"], e["seg"].labels)
    rows, cols = np.nonzero(iou_e >= 0.5)  # unique above 0.5 (section 1)
    d_true = {r["label"]: r["equivalent_diameter"] for r in export.cell_table(e["truth"])}
    d_pred = {r["label"]: r["equivalent_diameter"] for r in export.cell_table(e["seg"].labels)}
    pairs += [(d_true[int(t_e[r])], d_pred[int(p_e[c])]) for r, c in zip(rows, cols)]
pairs = np.array(pairs)
ratio = np.median(pairs[:, 1] / pairs[:, 0])
r_corr = np.corrcoef(pairs.T)[0, 1] if len(pairs) > 2 else np.nan
print(f"{len(pairs)} matched nuclei: predicted / true diameter, median {ratio:.3f}; correlation {r_corr:.3f}")

fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.plot(pairs[:, 0], pairs[:, 1], ".", alpha=0.6)
top = pairs.max() * 1.05
ax.plot([0, top], [0, top], "k--", lw=1)
ax.set_xlabel("annotated diameter (px)")
ax.set_ylabel("predicted diameter (px)")
ax.set_aspect("equal")
show(fig)
assert len(pairs) > 0 and 0.5 < ratio < 2

# %% [markdown]
# Every format, for one image, into a temporary folder, and read back:
#
# - `_masks.tif`: the label image (uint16), for Fiji, napari, CellProfiler, Python;
# - `_outlines.png`: the image with red outlines, to look at;
# - `_cells.csv`: the table above;
# - `_rois.zip`: an ImageJ/Fiji ROI set (ROI Manager > More > Open), one
#   polygon per nucleus, named by its label;
# - `_seg.npy`: the Cellpose GUI's file (opened with the image, for manual
#   corrections; `data.read_folder` reads it as labels).

# %%
e = held[0]
labels, image = e["seg"].labels, e["image"]
stem = WORKDIR / e["name"]
written = [
    export.write_masks_tif(f"{stem}_masks.tif", labels),
    export.write_outlines_png(f"{stem}_outlines.png", e["input"], labels),
    export.write_cells_csv(f"{stem}_cells.csv", labels, image),
    export.write_imagej_rois(f"{stem}_rois.zip", labels),
    export.write_seg_npy(f"{stem}_seg.npy", image, labels, e["seg"].flows, cellprob=e["seg"].cellprob,
                         diameter=e["seg"].diameter),
]
for path in written:
    print(f"{path.name:40s} {path.stat().st_size:>9,d} bytes")

assert np.array_equal(data.read_labels(written[0]), labels)  # lossless
outlines = data.read_image(written[1])
assert outlines.shape == (*labels.shape, 3)
with open(written[2], newline="") as fh:
    rows = list(csv.DictReader(fh))
assert [int(r["label"]) for r in rows] == list(range(1, labels.max() + 1))
assert np.allclose([float(r["area"]) for r in rows], np.bincount(labels.ravel())[1:])
rois = roifile.roiread(written[3])
assert [r.name for r in rois] == [str(k) for k in range(1, labels.max() + 1)]
seg_file = np.load(written[4], allow_pickle=True).item()  # pickle: only for files you trust
assert np.array_equal(seg_file["masks"], labels) and np.array_equal(data.read_labels(written[4]), labels)

# the ROI polygons, filled again, cover their masks (they run through the boundary pixels' centres)
roi_iou = []
for roi in rois:
    xy = roi.coordinates() - export.IMAGEJ_PIXEL_CENTRE
    rr, cc = fill_polygon(xy[:, 1], xy[:, 0], shape=labels.shape)
    filled = np.zeros(labels.shape, bool)
    filled[rr, cc] = True
    mask = labels == int(roi.name)
    roi_iou.append((filled & mask).sum() / (filled | mask).sum())
print(f"ROI polygons filled back: IoU with their masks, median {np.median(roi_iou):.3f}, min {min(roi_iou):.3f}")
assert np.median(roi_iou) > 0.9

try:  # nothing is overwritten unless asked
    export.write_masks_tif(written[0], labels)
except FileExistsError as err:
    print("refused:", err)
else:
    raise AssertionError("an existing file was overwritten")

# %% [markdown]
# `export.export_all` writes all five for one image after checking that
# none of the targets exists (what `cellpose-nb segment` does per image):

# %%
paths = export.export_all(WORKDIR / "all", e["name"], image, e["seg"])
print([p.name for p in paths])
assert [p.name[len(e["name"]):] for p in paths] == list(export.SUFFIXES.values())

# %% [markdown]
# ## 7. The same weights in the reference package
#
# `model.export_cellpose_weights` writes the network as a state dict of
# Cellpose's `CPnet`. If the reference package `cellpose` is installed, we
# can run *its* whole pipeline on our weights (normalisation, zoom, tiles,
# flow following, flow-error check) and compare the masks.
#
# Two details. Cellpose's `CellposeModel` builds a network of widths 32..256
# while the shipped model is narrower (see `net.config.features`), so we
# `model.cellpose_reference_model` builds a `CPnet` of our widths, loads the
# exported file with Cellpose's own `load_model`, and puts it into a
# `CellposeModel` as `.net`. And Cellpose's tiled pass keeps 256 style
# values per tile; a narrower network has fewer, so it pads the style with
# zeros (the style does not enter the masks). Cellpose follows the flows `200 / zoom` steps (with
# `zoom = diam_mean / diameter`); we pass the same `n_iter` to `segment`.

# %%
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference package's import-time noise
        import cellpose.models  # noqa: F401
    HAVE_CELLPOSE = True
except ImportError:
    HAVE_CELLPOSE = False
    print("the reference package cellpose is not installed (pip install cellpose); skipping")

if HAVE_CELLPOSE:
    weights = model.export_cellpose_weights(net, WORKDIR / "cellpose_model" / "nuclei_nb")
    reference = model.cellpose_reference_model(weights, mkldnn=False)
    net_cpu = model.load_pretrained(MODEL, device="cpu")
    th = {"cellprob_threshold": float((net.record.thresholds or {}).get("cellprob_threshold", 0.0)),
          "flow_threshold": float((net.record.thresholds or {}).get("flow_threshold", 0.4))}

    compare = bundled[:1] + [(e["name"], e["modality"], e["image"], e["truth"]) for e in held]
    print(f"{'image':18s} {'cellpose':>9s} {'ours':>6s}   AP@0.5 vs truth (cellpose, ours)   agreement")
    agreement = []
    for name, modality, img, lab in compare[:N_COMPARE]:
        gray, invert = nuclei_input(img, modality)
        d = train.median_diameter(lab)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cp_masks, cp_flows, _ = reference.eval(gray, channels=[0, 0], diameter=d, invert=invert, **th)
        n_iter = int(np.uint32(1 / (reference.diam_mean / d) * 200))  # Cellpose's rule, its rounding
        ours = predict.segment(gray, net_cpu, diameter=d, invert=invert, n_iter=n_iter, device="cpu", **th)
        a_cp, a_ours = metrics.average_precision([lab, lab], [cp_masks, ours.labels], thresholds=[0.5])[:, 0]
        same = metrics.matching(cp_masks, ours.labels, thresholds=[0.5])[0].ap
        agreement.append(same)
        flow_gap = np.abs(cp_flows[1] - predict.FLOW_SCALE * ours.flows).max()
        print(f"{name[:18]:18s} {int(cp_masks.max()):9d} {int(ours.labels.max()):6d}   "
              f"{a_cp:8.3f} {a_ours:8.3f}                    AP@0.5 {same:.3f} (flows differ by {flow_gap:.1e})")
    assert min(agreement) > 0.95, "the two packages should find the same masks"

# %% [markdown]
# The same weights give the same masks, to the pixel or nearly: the network
# outputs agree to about 1e-4 (float32 sums in another order), and a pixel
# whose cell probability sits exactly at the threshold may go either way.

# %% [markdown]
# > **Cellpose 1.0 or 3?** The score is Cellpose 1.0's (and the Data Science
# > Bowl's): one-to-one matching, AP = TP / (TP + FP + FN), the mean over
# > images. `cellpose` 3.1.1.2 computes the same: `metrics.average_precision`
# > sets `ap = tp / (tp + fp + fn)`, and `_true_positive` matches with
# > `linear_sum_assignment` on the cost `-(iou >= th) - iou / (2 * n_min)`, as
# > in section 1. The defaults that tuning starts from (`cellprob_threshold=0.0`,
# > `flow_threshold=0.4`) are 3.1.1.2's `CellposeModel.eval` defaults. Tuning
# > them on held-out images and saving them as `thresholds.json`
# > (`train.optimize_thresholds`, `finish_model`) is this package's: 3.1.1.2
# > has no such step. The `_seg.npy` and ImageJ ROI exports follow Cellpose's
# > GUI (Cellpose 2.0 made the GUI the place to correct and retrain).

# %% [markdown]
# ## In practice
#
# - **Held-out data, always.** Score a model on images it never trained on,
#   and tune thresholds on yet other images (or on the validation split, as
#   `finish_model` does) before the final test. Scores on training images
#   (like the bundled samples here) say little.
# - **Report the threshold.** AP@0.5 (the Cellpose papers' headline) counts
#   objects; AP@0.75 and AP@0.9 grade outlines. Quote the curve, or at least
#   0.5 and 0.75, and say whether the mean is over images or pooled.
# - **Annotations disagree.** Two people outlining the same nuclei rarely
#   agree to IoU 0.9: a model cannot be measured more precisely than its
#   ground truth. Look at the error gallery before trusting a number.
# - **Errors have kinds.** Mergers and splits cost more than misses (section
#   1); a wrong diameter causes both, so check it first.
# - **The command line.** `cellpose-nb evaluate TRUE_DIR PRED_DIR --csv ap.csv`
#   matches `<name>_masks.tif` files in two folders and prints the AP per
#   image, their mean and the pooled AP (`--thresholds 0.5 0.75 0.9`).
# - **Exports.** Every writer refuses to overwrite (`overwrite=True` to
#   replace) and writes to a temporary file first, so a crash never leaves
#   half a file. `_seg.npy` is a pickle: load it only from sources you trust.
#
# ## Exercises
#
# 1. **AP and F1.** Show that at any threshold `AP = F1 / (2 - F1)` (with
#    `F1 = 2 TP / (2 TP + FP + FN)`), and check it on the evaluation set.
#    Why is AP always the smaller of the two?

# %% tags=["solution"]
for e in evaluation:
    for m in metrics.matching(e["truth"], e["seg"].labels, thresholds=[0.5, 0.75]):
        if m.tp + m.fp + m.fn:
            assert np.isclose(m.ap, m.f1 / (2 - m.f1))
m = metrics.matching(evaluation[0]["truth"], evaluation[0]["seg"].labels, thresholds=[0.5])[0]
print(f"{evaluation[0]['name']}: F1 {m.f1:.3f}, AP {m.ap:.3f} = F1 / (2 - F1) = {m.f1 / (2 - m.f1):.3f}")
# With E = FP + FN: F1 = 2 TP / (2 TP + E) and AP = TP / (TP + E). Then F1 / (2 - F1) =
# 2 TP / (2 (2 TP + E) - 2 TP) = TP / (TP + E) = AP. Since 2 - F1 >= 1, AP <= F1, equal only at 0 and 1:
# AP charges each error against TP once, F1 against 2 TP.

# %% [markdown]
# 2. **Mean or pooled?** Build a toy data set of two images: one with 100
#    nuclei all found, one with 2 nuclei both missed. Compute the mean AP
#    over images and the pooled AP. Which one would you report for a screen
#    where most wells are crowded and a few nearly empty?

# %% tags=["solution"]
crowded = np.zeros((100, 100), int)
for k in range(100):
    r, c = divmod(k, 10)
    crowded[10 * r + 2: 10 * r + 8, 10 * c + 2: 10 * c + 8] = k + 1
sparse = np.zeros((100, 100), int)
sparse[10:20, 10:20], sparse[50:60, 50:60] = 1, 2
toy_true, toy_pred = [crowded, sparse], [crowded, np.zeros_like(sparse)]
mean_ap = metrics.average_precision(toy_true, toy_pred, thresholds=[0.5]).mean()
pooled_toy = metrics.matching_dataset(toy_true, toy_pred, thresholds=[0.5])[0].ap
print(f"mean over images {mean_ap:.3f}, pooled {pooled_toy:.3f}")
assert np.isclose(mean_ap, 0.5) and np.isclose(pooled_toy, 100 / 102)
# The mean says "half the images fail"; the pooled AP says "2 % of the nuclei are missed". For
# per-nucleus measurements in a crowded screen the pooled number is the relevant one, but an
# empty-looking well where everything is missed is worth knowing about: report both.

# %% [markdown]
# 3. **Test-time augmentation.** Segment the held-out images (the first
#    `N_AUGMENT`) again with `augment=True` (each tile also seen flipped,
#    outputs averaged). Does the mean AP@0.5 and AP@0.75 change? What does it
#    cost?

# %% tags=["solution"]
some = held[:N_AUGMENT]
t0 = time.perf_counter()
aug = [predict.segment(e["input"], net, diameter=e["diameter"], invert=e["invert"], augment=True,
                       device=DEVICE).labels for e in some]
seconds = time.perf_counter() - t0
plain = metrics.average_precision([e["truth"] for e in some], [e["seg"].labels for e in some],
                                  thresholds=[0.5, 0.75])
flipped = metrics.average_precision([e["truth"] for e in some], aug, thresholds=[0.5, 0.75])
print(f"AP@0.5 / AP@0.75 without augmentation {np.nanmean(plain, 0).round(3)}, "
      f"with {np.nanmean(flipped, 0).round(3)} ({seconds:.1f} s for {plural(len(some), 'image')})")
# Averaging flipped predictions smooths the flows and the cell probability; the gain is usually
# small (a point or two, more at high IoU), and the network runs on about 4 times as many tiles.
assert flipped.shape == plain.shape


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) AP with one-to-one matching, mean over images; the evaluation on held-out images.
# - Pachitariu, M. & Stringer, C. Cellpose 2.0: how to train your own model. *Nature Methods* 19, 1634-1641 (2022). [doi:10.1038/s41592-022-01663-4](https://doi.org/10.1038/s41592-022-01663-4) Cellpose 2.0: the GUI and its `_seg.npy` files, human-in-the-loop corrections.
# - Stringer, C. & Pachitariu, M. Cellpose3: one-click image restoration for improved cellular segmentation. *Nature Methods* 22, 592-599 (2025). [doi:10.1038/s41592-025-02595-5](https://doi.org/10.1038/s41592-025-02595-5) Cellpose 3, whose code (`cellpose` 3.1.1.2) is run side by side in section 7.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.
# - Caicedo, J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. *Nature Methods* 16, 1247-1253 (2019). [doi:10.1038/s41592-019-0612-7](https://doi.org/10.1038/s41592-019-0612-7) The DSB2018 images and the AP it uses (mean over IoU 0.5-0.95 in the competition).

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
# # 08 · Whole cells, specialists and generalists
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/08_whole_cells.ipynb) (replace OWNER with the repository's owner once it is published)
#
# Nuclei are compact, bright and mostly apart; whole cells touch along long,
# faint borders, and their shapes are anything but round. Cellpose meets them
# with a second input channel: the network reads a cytoplasm stain *and* a
# nuclear stain, and the nuclei tell it where each cell is while the cytoplasm
# tells it where the cell ends. This notebook works on real fields of the
# Cell Image Library's MP6843 cells (phalloidin + DAPI) and on the DSB2018
# nuclei, and measures what the nuclear channel adds, what a specialist
# model does outside its speciality, what training on several kinds of
# image buys, and how the style vector sorts images by kind.
#
# **What you will learn**
#
# - the two-channel input: cytoplasm first, nuclei second, zeros when there
#   is no nuclear stain; built by hand in NumPy and checked against
#   `to_network_input`;
# - what the nuclear channel adds, measured: the shipped whole-cell model
#   `cyto_cil` on its validation fields with the DAPI channel and with it
#   zeroed, AP at IoU 0.5, 0.75 and 0.9;
# - specialists against generalists: the whole-cell model on nuclei, the
#   nuclei model on whole cells, and two models that you train here, one on
#   DSB2018 fluorescence images only and one on all its modalities, each
#   tested on fluorescence, histology and brightfield;
# - the style vectors of real images, projected to 2D: they group by kind of
#   image, and swapping the style of an image for another kind's changes the
#   masks, which is why the network has a style vector at all;
# - the benchmark curves, AP against IoU from 0.5 to 0.95.
#
# **What you need**: notebooks 00 (`segment`), 01 (normalisation and the
# 2-channel input), 04 (the network and its style vector), 05 (training) and
# 06 (AP and matching). PyTorch (the CPU build is enough), NumPy, matplotlib.
# The course data (`CELLPOSE_NB_DATA`, see `docs/data.md`) for real
# figures; without them the notebook runs on the bundled samples and
# synthetic stand-ins, and its numbers then say little. In full mode the
# notebook needs about 35 CPU-minutes, most of them for the two training
# runs of section 2 (half an hour or so on a 2-core CPU of its own; a GPU
# is much faster), and 3.3 GB of memory; QUICK mode takes a minute or two.

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

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: crops of 2 fields, a few images, 2-epoch training runs
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default)
DEVICE = None  # None: cuda -> mps -> cpu, whichever is there; or "cpu", "cuda:0", "mps"
SEED = 0  # seeds the choice of images, the synthetic stand-ins and the training runs
USE_DATA = True  # the course data when data_root() finds them (else bundled samples + synthetic stand-ins)

# section 1: the whole-cell validation fields (cyto_cil's own split, 10 fields)
N_CIL = 2 if QUICK else None  # fields used (None: all of the split)
CIL_CROP = (256, 352) if QUICK else None  # (rows, cols) of the top-left crop of each field (None: whole 520 x 696)
NUCLEI_INPUT = dict(channels=("gray", None), invert="auto")  # one gray channel, dark nuclei inverted: the nuclei model's recipe

# section 2: nuclei images, tested per modality (the nuclei model's validation split: 47 / 9 / 1)
N_TEST = {"fluorescence": 2, "histology": 1, "brightfield": 1} if QUICK else None  # per modality (None: all)
MAX_SIDE = 320 if QUICK else None  # QUICK: larger images are cropped to their top-left MAX_SIDE x MAX_SIDE (px)
N_TRAIN = {"fluorescence": 4, "histology": 2, "brightfield": 2} if QUICK else None  # training images per modality (None: all)
TRAIN_FEATURES = (16, 32, 64, 128)  # widths of the two networks trained here (as the shipped nuclei model)
TRAIN_DIAM_MEAN = 17.0  # px: nuclei are zoomed to this diameter (as the shipped nuclei model)
TRAIN_EPOCHS = 2 if QUICK else 120  # epochs of each training run (QUICK: the code path only)
CROPS_PER_EPOCH = 8 if QUICK else 64  # random crops per epoch, the same for both runs
CROP = 112  # side of the training crops (px)
BATCH = 8  # crops per optimisation step

# section 3: style vectors
N_STYLE = 4 if QUICK else 40  # images per group in the style plot
N_SWAP = 1 if QUICK else 6  # test images per modality whose style is swapped

# section 4 and everywhere
IOU_THRESHOLDS = (0.5, 0.75, 0.9)  # AP is reported at these IoUs
IOU_CURVE = np.round(np.arange(0.5, 0.96, 0.05), 2)  # the benchmark curve, 0.5 ... 0.95
BENCHMARK_JSON = "benchmarks/results/specialist_cil.json"  # written by benchmarks/specialist_cil.py (repository root)
N_SYNTHETIC = 3 if QUICK else 6  # synthetic stand-ins per group when the data are not there

# %%
import contextlib
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display

import cellpose_nb
from cellpose_nb import data, metrics, model, plot, predict, train
from cellpose_nb.labels import renumber
from cellpose_nb.normalize import to_network_input

if THREADS is not None:
    torch.set_num_threads(THREADS)
plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})
REPO = Path(cellpose_nb.__file__).resolve().parents[1]  # the repository, in an editable install
WORKDIR = Path(tempfile.mkdtemp(prefix="cellpose_nb_08_"))  # every file this notebook writes
AT = [list(IOU_CURVE).index(t) for t in IOU_THRESHOLDS]  # columns of IOU_CURVE that are IOU_THRESHOLDS
T_START = time.perf_counter()


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 field', '4 fields', '1 nucleus', '2 nuclei': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def ap_curve(truths, preds):
    """Per-image AP at every IoU of IOU_CURVE, (n_images, n_thresholds), Cellpose's convention."""
    return metrics.average_precision(list(truths), list(preds), thresholds=IOU_CURVE)


def ap_text(ap):
    """'0.88 / 0.77 / 0.41': the mean over images of the AP at IOU_THRESHOLDS."""
    mean = np.nanmean(np.atleast_2d(ap), axis=0)
    return " / ".join(f"{a:.2f}" for a in (mean[AT] if len(mean) == len(IOU_CURVE) else mean))


def item(name, source, kind, image, labels):
    """One image with its truth: a dict, with the true median diameter (px)."""
    labels = renumber(np.asarray(labels).astype(np.int32))
    return dict(name=name, source=source, kind=kind, image=image, labels=labels,
                diameter=float(predict.median_diameter(labels)))


def quadrants(image, labels):
    """The four quadrant crops of an image and its labels (to make a group out of one sample)."""
    h, w = labels.shape[0] // 2, labels.shape[1] // 2
    return [(image[r:r + h, c:c + w], labels[r:r + h, c:c + w]) for r in (0, h) for c in (0, w)]


# %% [markdown]
# ## 1. Two channels: cytoplasm first, nuclei second
#
# The CIL MP6843 fields (Cell Image Library, CCDB:6843) are 520 x 696 pixels
# with two channels: **channel 0 phalloidin**, which stains F-actin and so
# the cell's cortex and cytoplasm, and **channel 1 DAPI**, the nuclei. The
# labels are whole cells. The shipped model `cyto_cil` was trained on 79 of
# the 89 fields; the other 10 are its validation split (in its training
# record, and in `scripts/cil_val.txt`), and they are the fields of this
# section. In QUICK mode only the top-left corner of two of them is used.
#
# The truth's median diameter is given to `segment` throughout this
# notebook, so that what differs between two runs is the input or the
# network, never the size model's guess (`segment(image, model)` without a
# diameter would estimate it from the style, and the style changes with the
# input too).

# %%
cyto = model.load_pretrained("cyto_cil", device=DEVICE)
nuc = model.load_pretrained("nuclei", device=DEVICE)
root = data.data_root() if USE_DATA else None
have_cil = root is not None and (root / "cil_mp6843" / "index.csv").is_file()
have_dsb = root is not None and (root / "dsb2018" / "index.csv").is_file()

cil_val_names = list(cyto.record.training["val_names"])  # the model's own validation split
split_file = REPO / "scripts" / "cil_val.txt"
if split_file.is_file():  # in the repository: the same list
    assert sorted(split_file.read_text().split()) == sorted(cil_val_names)


def crop(image, labels):
    if CIL_CROP is None:
        return image, labels
    return image[:CIL_CROP[0], :CIL_CROP[1]], labels[:CIL_CROP[0], :CIL_CROP[1]]


if have_cil:
    folder = root / "cil_mp6843" / "train"
    cil = [item(n, "CIL", "whole cells", *crop(data.read_image(folder / f"{n}_img.tif"),
                                               data.read_labels(folder / f"{n}_masks.tif")))
           for n in cil_val_names[:N_CIL]]
    cil_source = f"CIL MP6843, {plural(len(cil), 'validation field')} of cyto_cil"
else:  # the bundled field (in the validation split) and synthetic two-channel cells
    s = data.load_sample("whole_cells")
    cil = [item(s.name, "CIL", "whole cells", *crop(s.image, s.labels))]
    for k in range(N_SYNTHETIC):
        syn = data.make_synthetic((256, 256), n_cells=14, diameter=45.0, kind="cyto", touching=0.8,
                                  seed=np.random.SeedSequence([SEED, 1, k]))
        cil.append(item(f"synthetic_cells_{k}", "synthetic", "whole cells", syn.image, syn.labels))
    cil_source = "bundled CIL field + synthetic cells (no course data found)"
field = cil[0]
diameters = ", ".join(f"{it['diameter']:.0f}" for it in cil)
print(f"{cil_source}: {plural(len(cil), 'image')}, "
      f"{sum(int(it['labels'].max()) for it in cil)} cells; median diameters {diameters} px")
print(f"{field['name']}: {field['image'].shape} {field['image'].dtype}, channel 0 phalloidin, channel 1 DAPI")

# %% [markdown]
# **The network input by hand.** The network always takes two channels.
# Cellpose's rule (its `channels=[cyto, nuclei]` argument; here
# `channels=(0, 1)`): the first is the cytoplasm stain (or the only stain),
# the second the nuclear stain, and when there is no nuclear stain the
# second channel is **zeros**. Each channel is normalised on its own, its
# 1st percentile to 0 and its 99th to 1; the package adds one rule (notebook
# 01): a *sparse* channel, whose 99.9th percentile lies more than 5 times the
# 1st-99th range above its 1st percentile, is normalised to its 99.9th
# percentile instead, so that a few bright objects on a dark field are not
# blown up tens of times.

# %%
def network_input_by_hand(image, cyto_channel, nuclear_channel):
    """(2, H, W) float32: the cytoplasm channel, then the nuclear channel (None: zeros)."""
    out = np.zeros((2, *image.shape[:2]), np.float32)
    for k, c in enumerate((cyto_channel, nuclear_channel)):
        if c is None:
            continue  # no nuclear stain: the second channel stays zeros
        x = image[..., c].astype(np.float32)
        lo, hi, top = np.percentile(x, [1.0, 99.0, 99.9])
        if (top - lo) > 5.0 * (hi - lo):  # sparse: normalise to the 99.9th percentile
            hi = top
        if hi - lo >= 1e-12:  # a flat channel stays zeros
            out[k] = (x - np.float32(lo)) / np.float32(hi - lo)
    return out


image = field["image"]
x_both = network_input_by_hand(image, 0, 1)
x_cyto = network_input_by_hand(image, 0, None)
assert np.array_equal(x_both, to_network_input(image, channels=(0, 1)))
assert np.array_equal(x_cyto, to_network_input(image, channels=(0, None)))
no_dapi = image.copy()
no_dapi[..., 1] = 0  # a blank DAPI channel: flat, so it normalises to zeros, as if it were absent
assert np.array_equal(to_network_input(no_dapi, channels=(0, 1)), x_cyto) and not x_cyto[1].any()
for k, name in enumerate(("phalloidin", "DAPI")):
    lo, hi = np.percentile(image[..., k], [1, 99])
    print(f"channel {k} ({name}): 1st percentile {lo:.0f}, 99th {hi:.0f} -> input range "
          f"{x_both[k].min():.2f} .. {x_both[k].max():.2f}")
print("by hand == to_network_input(image, channels=(0, 1)) and (0, None), bit for bit")

fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
plot.show_image(image, ax=axes[0], title="phalloidin (green) + DAPI (blue)")
axes[1].imshow(x_both[0], cmap="gray", vmin=0, vmax=1)
axes[1].set_title("input channel 0: cytoplasm")
axes[2].imshow(x_both[1], cmap="gray", vmin=0, vmax=1)
axes[2].set_title("input channel 1: nuclei")
plot.overlay_labels(image, field["labels"], ax=axes[3])
axes[3].set_title(f"truth: {plural(int(field['labels'].max()), 'cell')}")
for ax in axes:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# **What the nuclear channel adds, measured.** Every field is segmented twice
# with the same weights: with the DAPI channel (`channels=(0, 1)`, the model's
# recipe) and with it zeroed (`channels=(0, None)`), which is what the model
# sees on an image without a nuclear stain. AP = TP / (TP + FP + FN) at each
# IoU threshold, per image, then the mean over images (Cellpose's
# convention; StarDist sums TP, FP and FN over the data set instead).

# %%
t0 = time.perf_counter()
seg_with = [predict.segment(it["image"], cyto, diameter=it["diameter"], channels=(0, 1), device=DEVICE)
            for it in cil]
seg_without = [predict.segment(it["image"], cyto, diameter=it["diameter"], channels=(0, None), device=DEVICE)
               for it in cil]
truth_cil = [it["labels"] for it in cil]
ap_with = ap_curve(truth_cil, [s.labels for s in seg_with])
ap_without = ap_curve(truth_cil, [s.labels for s in seg_without])
n_true = sum(int(t.max()) for t in truth_cil)
print(f"cyto_cil on {plural(len(cil), 'image')} ({cil_source}), {time.perf_counter() - t0:.0f} s; "
      f"per-image mean AP at IoU {' / '.join(map(str, IOU_THRESHOLDS))}:")
for name, ap, segs in (("with DAPI", ap_with, seg_with), ("DAPI zeroed", ap_without, seg_without)):
    print(f"  {name:12s} AP {ap_text(ap)}   {sum(int(s.labels.max()) for s in segs)} masks for {n_true} cells")
gain = np.nanmean(ap_with, axis=0)[AT] - np.nanmean(ap_without, axis=0)[AT]
print("  the nuclear channel adds " + ", ".join(f"{g:+.2f} at {t}" for g, t in zip(gain, IOU_THRESHOLDS)))
assert np.all((0 <= ap_with) & (ap_with <= 1)) and ap_with.shape == (len(cil), len(IOU_CURVE))

fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
for ax, name, seg in zip(axes, ("with DAPI", "DAPI zeroed"), (seg_with[0], seg_without[0])):
    plot.show_errors(field["labels"], seg.labels, ax=ax, image=image)
    ap = metrics.average_precision(field["labels"], seg.labels, thresholds=[0.5])[0, 0]
    ax.set_title(f"{name}: AP@0.5 {ap:.2f}\ngreen matched, red false positive, blue missed", fontsize="small")
show(fig)

# %% [markdown]
# Two things change when DAPI is gone. The network loses its hint of where a
# cell's middle is: phalloidin marks the whole cell, brightest along its
# edge and in its actin fibres, and where two cells touch it shows no
# line between them; one nucleus per cell is what tells them apart. And the network
# was trained with DAPI on every field: an input that it has never seen
# (channel 1 all zeros) is out of its training distribution. Cellpose's
# generalist was trained on images with and without a nuclear stain, so it
# knows both inputs; this specialist only knows one.
#
# In full mode (all 10 validation fields, 448 cells) the nuclear channel
# added 0.27, 0.32 and 0.22 to the AP at IoU 0.5, 0.75 and 0.9 (0.89 / 0.80
# / 0.47 with DAPI, 0.62 / 0.48 / 0.25 with it zeroed), and without it the
# model returned 285 masks for the 448 cells instead of 437: cells missed,
# touching cells merged. (An earlier, smaller `cyto_cil`, widths 16-128,
# lost less without DAPI: 0.88 / 0.78 / 0.43 against 0.75 / 0.64 / 0.35.
# How much a specialist leans on an input is a property of the trained
# weights, not of the method.)
#
# > **Checkpoint.** Why would zeroing the nuclear channel change the masks
# > even on a field where no two cells touch?
#
# ## 2. Specialists and generalists
#
# A *specialist* is trained on one kind of image (one microscope, one stain,
# one cell line: here `cyto_cil`, on CIL fields only); a *generalist* on many
# (Cellpose's `cyto`, on several hundred images: fluorescence, brightfield,
# histology, and pictures that are not of cells at all). Stringer et al.
# (2021) argue for the generalist: one model for images that no specialist
# was trained on. Two measurements here: first each shipped model on the
# other one's kind of image, then two models trained for this notebook on
# DSB2018, one on its fluorescence images only and one on all three
# modalities.
#
# **The shipped models, each out of its speciality.** The nuclei images are
# the nuclei model's validation split (per modality); both models get the
# same input, the nuclei model's recipe (one gray channel, inverted when the
# nuclei are dark), and the true nucleus diameter, so only the weights
# differ. On the whole-cell fields the nuclei model gets the phalloidin
# channel as its gray channel (its recipe again) and the true cell diameter.

# %%
def dsb_index():
    """{id: modality} of DSB2018 (index.csv)."""
    return {r["id"]: r["modality"] for r in data.dataset_index("dsb2018", root=root)}


def load_dsb(ids, modality):
    """DSB2018 images and labels as items (QUICK: cropped to MAX_SIDE)."""
    folder = root / "dsb2018" / "train"
    cut = slice(None, MAX_SIDE)
    return [item(n, "DSB2018", modality[n], data.read_image(folder / f"{n}_img.tif")[cut, cut],
                 data.read_labels(folder / f"{n}_masks.tif")[cut, cut]) for n in ids]


def pick_per_modality(ids, modality, counts):
    """The ids of each modality (sorted), at most counts[m] of them (None: all)."""
    ids = sorted(ids)
    return [i for m in data.DSB_MODALITIES
            for i in [i for i in ids if modality[i] == m][:None if counts is None else counts[m]]]


def synthetic_nuclei(k, kind, group):
    """A synthetic nuclei image: 'fluorescence' (bright on dark) or 'brightfield' (dark on light)."""
    s = data.make_synthetic((192, 192), n_cells=25, diameter=17.0, kind="nuclei",
                            seed=np.random.SeedSequence([SEED, group, k]))
    img = s.image if kind == "fluorescence" else s.image.max() - s.image
    return item(f"synthetic_{kind}_{group}_{k}", "synthetic", kind, img, s.labels)


nuclei_val_names = list(nuc.record.training["val_names"])
if have_dsb:
    modality = dsb_index()
    val_file = REPO / "scripts" / "dsb2018_val.txt"
    if val_file.is_file():
        assert sorted(val_file.read_text().split()) == sorted(nuclei_val_names)
    test = load_dsb(pick_per_modality(nuclei_val_names, modality, N_TEST), modality)
    dsb_source = "DSB2018, the nuclei model's validation split"
else:  # the bundled samples (part of the nuclei model's TRAINING data: optimistic) + synthetic
    test = [item(data.load_sample(m).name, "bundled", m, data.load_sample(m).image, data.load_sample(m).labels)
            for m in ("fluorescence", "histology")]
    test += [synthetic_nuclei(k, "brightfield", 2) for k in range(N_SYNTHETIC)]
    dsb_source = "bundled samples + synthetic brightfield stand-ins (no course data found)"
kinds = [m for m in data.DSB_MODALITIES if any(it["kind"] == m for it in test)]
print(f"{dsb_source}: " + ", ".join(f"{plural(sum(it['kind'] == m for it in test), m + ' image')}"
                                     for m in kinds))


def segment_nuclei(items, net):
    """Segment nuclei images with the nuclei model's input recipe and the true diameter."""
    return [predict.segment(it["image"], net, diameter=it["diameter"], device=DEVICE, **NUCLEI_INPUT)
            for it in items]


def per_modality(items, segs):
    """{modality: (n_images, per-image AP curves)}."""
    curves = ap_curve([it["labels"] for it in items], [s.labels for s in segs])
    return {m: curves[[it["kind"] == m for it in items]] for m in kinds}


t0 = time.perf_counter()
seg_nuc_dsb = segment_nuclei(test, nuc)
seg_cyto_dsb = segment_nuclei(test, cyto)
seg_nuc_cil = [predict.segment(it["image"][..., 0], nuc, diameter=it["diameter"], device=DEVICE) for it in cil]
results = {"nuclei (shipped)": per_modality(test, seg_nuc_dsb), "cyto_cil (shipped)": per_modality(test, seg_cyto_dsb)}
ap_nuc_cil = ap_curve(truth_cil, [s.labels for s in seg_nuc_cil])
print(f"({time.perf_counter() - t0:.0f} s) per-image mean AP at IoU {' / '.join(map(str, IOU_THRESHOLDS))}")
n_test = {m: sum(it["kind"] == m for it in test) for m in kinds}
column = {m: f"{m} ({n_test[m]})" for m in kinds}
print(f"{'':20s}" + "".join(f"{column[m]:>22s}" for m in kinds) + f"{f'whole cells ({len(cil)})':>22s}")
for name, whole in (("nuclei (shipped)", ap_nuc_cil), ("cyto_cil (shipped)", ap_with)):
    print(f"{name:20s}" + "".join(f"{ap_text(results[name][m]):>22s}" for m in kinds) + f"{ap_text(whole):>22s}")

# %% [markdown]
# Each model is best on its own kind of image, by a wide margin. In full
# mode the nuclei model reached AP@0.5 0.39 on the whole-cell fields,
# against `cyto_cil`'s 0.89, and `cyto_cil` 0.43 on the fluorescence nuclei
# (0.07 at IoU 0.75), against the nuclei model's 0.87; 0.13 on histology
# and 0 on the brightfield image.
#
# - the nuclei model on whole cells finds the brightest cell bodies, which
#   look to it like large blobs, and misses or cuts the dim ones; its
#   outlines are not the cells' (its AP falls to 0.07 at IoU 0.75, section 4);
# - the whole-cell specialist on nuclei finds many fluorescent nuclei at IoU
#   0.5 but outlines them badly: it was trained to draw a cell body around a
#   nucleus, and it never saw a bright blob on black in its *first* channel.
#   On the inverted histology and brightfield images it finds almost nothing.

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
k_fl = next(k for k, it in enumerate(test) if it["kind"] == kinds[0])
plot.show_errors(test[k_fl]["labels"], seg_cyto_dsb[k_fl].labels, ax=axes[0], image=test[k_fl]["image"],
                 title=f"cyto_cil on {test[k_fl]['kind']} nuclei ({test[k_fl]['name'][:8]})")
plot.show_errors(test[k_fl]["labels"], seg_nuc_dsb[k_fl].labels, ax=axes[1], image=test[k_fl]["image"],
                 title="nuclei model on the same image")
plot.show_errors(field["labels"], seg_nuc_cil[0].labels, ax=axes[2], image=field["image"][..., 0],
                 title=f"nuclei model on {field['name']} (phalloidin)")
fig.suptitle("green matched, red false positive, blue missed (IoU 0.5)")
show(fig)
assert np.nanmean(ap_with[:, 0]) > np.nanmean(ap_nuc_cil[:, 0])  # on whole cells the whole-cell model wins

# %% [markdown]
# **Fluorescence only, or every modality?** Now two networks, trained here with
# `cellpose_nb.train.train` from the same random weights (seed `SEED`), with
# the same architecture (the shipped nuclei model's widths 16-32-64-128 and
# `diam_mean` 17 px), the same input recipe, the same number of epochs and
# of random 112-pixel crops per epoch. They differ in one thing: the first
# sees only the fluorescence images of DSB2018's training part, the second
# all of it, fluorescence, histology and brightfield. Both are then tested on
# every modality of the held-out split, and so are the two shipped models
# for reference.
#
# In full mode each run is 120 epochs of 64 crops (7,680 crops; 11 and 13
# minutes on a 2-core CPU shared with other jobs): small, but a real run.
# **In QUICK mode each run is 2 epochs of 8 crops on a few images**, so
# that the code runs in CI: those networks have learned next to nothing,
# and **the QUICK figures of the two trained models mean nothing**; read
# the full-mode figures in the text below.

# %%
if have_dsb:
    train_ids = [i for i in modality if i not in set(nuclei_val_names)]
    pool = load_dsb(pick_per_modality(train_ids, modality, N_TRAIN), modality)
else:  # synthetic stand-ins: "fluorescence" bright on dark, "brightfield" dark on light
    pool = [synthetic_nuclei(k, kind, 3 + g) for g, kind in enumerate(("fluorescence", "brightfield"))
            for k in range(N_SYNTHETIC)]
training_sets = {"trained: fluorescence only": [it for it in pool if it["kind"] == "fluorescence"],
                 "trained: all modalities": pool}
config = train.TrainConfig(n_epochs=TRAIN_EPOCHS, n_images_per_epoch=CROPS_PER_EPOCH, batch_size=BATCH,
                           crop_size=CROP, seed=SEED, device=DEVICE, num_threads=THREADS,
                           val_every=TRAIN_EPOCHS, save_every=TRAIN_EPOCHS)
trained = {}
for name, items in training_sets.items():
    t0 = time.perf_counter()
    inputs = train.prepare_images([it["image"] for it in items], **NUCLEI_INPUT)
    run = train.train(inputs, [it["labels"] for it in items],
                      model.ModelConfig(features=TRAIN_FEATURES, diam_mean=TRAIN_DIAM_MEAN),
                      config=config, progress=False)
    trained[name] = run.model
    counts = {m: sum(it["kind"] == m for it in items) for m in data.DSB_MODALITIES}
    print(f"{name}: {plural(len(items), 'image')} ({', '.join(f'{v} {m}' for m, v in counts.items() if v)}), "
          f"{plural(len(run.history), 'epoch')} of {CROPS_PER_EPOCH} crops in {time.perf_counter() - t0:.0f} s, "
          f"last training loss {run.history[-1]['train_loss']:.3f}")
    assert run.completed and len(run.history) == TRAIN_EPOCHS and np.isfinite(run.history[-1]["train_loss"])
    results[name] = per_modality(test, segment_nuclei(test, run.model))

# %%
print(f"per-image mean AP at IoU {' / '.join(map(str, IOU_THRESHOLDS))} on the held-out images"
      + ("   (QUICK: the trained models' figures are NOT results)" if QUICK else ""))
print(f"{'':28s}" + "".join(f"{column[m]:>22s}" for m in kinds))
for name, res in results.items():
    print(f"{name:28s}" + "".join(f"{ap_text(res[m]):>22s}" for m in kinds))

fig, ax = plt.subplots(figsize=(9, 3.8))
width = 0.8 / len(results)
for j, (name, res) in enumerate(results.items()):
    means = [np.nanmean(res[m][:, 0]) for m in kinds]
    ax.bar(np.arange(len(kinds)) + (j - (len(results) - 1) / 2) * width, means, width, label=name)
ax.set_xticks(range(len(kinds)), [f"{m}\n({plural(n_test[m], 'image')})" for m in kinds])
ax.set_ylabel("AP@0.5 (mean over images)")
ax.set_ylim(0, 1)
ax.legend(fontsize=8, loc="upper right")
ax.set_title("each model on each modality" + (" (QUICK: trained models not meaningful)" if QUICK else ""))
show(fig)
for res in results.values():
    assert all(np.all((0 <= a[~np.isnan(a)]) & (a[~np.isnan(a)] <= 1)) for a in res.values())

# %% [markdown]
# What the full run measured (per-image mean AP at IoU 0.5 / 0.75 / 0.9 on
# the nuclei model's validation split; one brightfield image is an
# anecdote, not a figure):
#
# | model | trained on | fluorescence (47) | histology (9) | brightfield (1) |
# |---|---|---|---|---|
# | trained here | fluorescence only (426 images) | 0.84 / 0.71 / 0.44 | 0.57 / 0.29 / 0.06 | 0.55 / 0.36 / 0.13 |
# | trained here | all modalities (524 images) | 0.85 / 0.71 / 0.40 | 0.69 / 0.41 / 0.08 | 0.60 / 0.47 / 0.24 |
# | shipped `nuclei` | all modalities, 10 times as many crops | 0.87 / 0.73 / 0.38 | 0.75 / 0.47 / 0.10 | 0.73 / 0.54 / 0.28 |
# | shipped `cyto_cil` | CIL whole cells | 0.43 / 0.07 / 0.00 | 0.13 / 0.01 / 0.00 | 0.00 / 0.00 / 0.00 |
#
# With the same number of training crops, the network that saw every
# modality was as good on fluorescence (0.85 against 0.84 at IoU 0.5; at
# IoU 0.9 the fluorescence-only one was a little ahead, 0.44 against 0.40)
# and clearly better on histology (0.69 against 0.57). Being general cost
# little here, probably because fluorescence is still 81 % of the
# all-modality training set. The fluorescence-only network is not helpless
# on histology either: the input recipe inverts dark nuclei, so an H&E
# image reaches it as a textured, fluorescence-like image. The shipped nuclei model, trained on
# all modalities for ten times as long, is the ceiling of this comparison;
# the whole-cell specialist, its floor.
#
# ## 3. The style vector of real images
#
# The style vector (notebook 04) is the global average of the network's
# deepest features, divided by its length: as many numbers as the deepest
# features have channels (128 for the shipped nuclei model, 256 for
# `cyto_cil` and Cellpose's models), a summary of the whole image (or
# tile). It is added, through a learned projection, to every upsampling
# block, so the same weights can decode differently for different kinds of
# image. Stringer et
# al. (2021) showed that the styles of their generalist's training images
# cluster by image type; that is what lets one network be a generalist.
#
# `predict.predict_style(x, net)` runs the encoder alone on at most 2 x 2
# tiles of a network input `x` (the image as it is: this is the style the
# size model reads) and returns the unit style vector. The groups: the three
# DSB2018 modalities and the two channels of the CIL fields, each given to
# the nuclei model as one gray channel; and for the whole-cell model, the DSB
# modalities (gray + zeros) and the CIL fields with and without DAPI.

# %%
rng = np.random.default_rng(SEED)


def style_groups():
    """{group name: [(image as the network input of both models ...)]}: raw images per group."""
    if have_dsb and have_cil:
        groups = {}
        for m in data.DSB_MODALITIES:
            ids = sorted(i for i in modality if modality[i] == m)
            chosen = rng.choice(ids, size=min(N_STYLE, len(ids)), replace=False)
            groups[f"DSB {m}"] = [it["image"] for it in load_dsb(sorted(chosen), modality)]
        names = sorted(r["name"] for r in data.dataset_index("cil_mp6843", root=root))
        chosen = rng.choice(names, size=min(N_STYLE, len(names)), replace=False)
        folder = root / "cil_mp6843" / "train"
        groups["CIL"] = [crop(im, im[..., 0])[0] for im in (data.read_image(folder / f"{n}_img.tif") for n in sorted(chosen))]
        return groups, "course data"
    # without the data: four quadrant crops of each bundled sample, synthetic brightfield
    groups = {f"DSB {m}": [im for im, _ in quadrants(data.load_sample(m).image, data.load_sample(m).labels)]
              for m in ("fluorescence", "histology")}
    groups["DSB brightfield"] = [synthetic_nuclei(k, "brightfield", 4)["image"] for k in range(N_SYNTHETIC)]
    s = data.load_sample("whole_cells")
    groups["CIL"] = [im for im, _ in quadrants(s.image, s.labels)]
    return groups, "bundled samples (four crops each) + synthetic brightfield"


raw_groups, style_source = style_groups()
as_nuclei = {g: ims for g, ims in raw_groups.items() if g != "CIL"}  # nuclei model: one gray channel each
as_nuclei["CIL phalloidin"] = [im[..., 0] for im in raw_groups["CIL"]]
as_nuclei["CIL DAPI"] = [im[..., 1] for im in raw_groups["CIL"]]
inputs_by_model = {
    "nuclei": {g: [to_network_input(im, **NUCLEI_INPUT) for im in ims] for g, ims in as_nuclei.items()},
    "cyto_cil": {**{g: [to_network_input(im, **NUCLEI_INPUT) for im in ims] for g, ims in raw_groups.items()
                    if g != "CIL"},
                 "CIL with DAPI": [to_network_input(im, channels=(0, 1)) for im in raw_groups["CIL"]],
                 "CIL DAPI zeroed": [to_network_input(im, channels=(0, None)) for im in raw_groups["CIL"]]},
}
t0 = time.perf_counter()
styles = {name: {g: np.array([predict.predict_style(x, net, device=DEVICE) for x in xs])
                 for g, xs in inputs_by_model[name].items()}
          for name, net in (("nuclei", nuc), ("cyto_cil", cyto))}
print(f"styles of {style_source}, {time.perf_counter() - t0:.0f} s: "
      + ", ".join(f"{g} {len(v)}" for g, v in styles["nuclei"].items()))
for name, by_group in styles.items():
    norms = np.linalg.norm(np.concatenate(list(by_group.values())), axis=1)
    assert np.allclose(norms, 1, atol=1e-5), name  # unit vectors
    print(f"{name}: {next(iter(by_group.values())).shape[1]} numbers per style")

# %% [markdown]
# **Principal components, by hand.** Stack the styles in a matrix $S$ (one row
# per image), subtract the mean row, take the singular value decomposition
# $S - \bar S = U \Sigma V^\top$. The rows of $V^\top$ are the principal
# directions, the projections on the first two are the 2D coordinates, and
# $\sigma_k^2 / \sum \sigma^2$ is the share of the variance along each. The
# same directions are the eigenvectors of the covariance matrix, with
# eigenvalues $\sigma_k^2 / (n - 1)$: checked below.
#
# How well are the groups apart? A leave-one-out nearest-centroid test: each
# image is given the group whose mean style (computed without it) is nearest.

# %%
def pca_2d(s):
    """(projections on the first two principal components (n, 2), explained variance shares)."""
    centred = s - s.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    evals, evecs = np.linalg.eigh(np.cov(centred, rowvar=False))  # ascending
    assert np.allclose(sv[:2] ** 2 / (len(s) - 1), evals[::-1][:2], rtol=1e-6, atol=1e-9)
    assert np.allclose(np.abs(vt[:2] @ evecs[:, ::-1][:, :2]), np.eye(2), atol=1e-4)  # same directions (up to sign)
    return centred @ vt[:2].T, sv ** 2 / np.sum(sv ** 2)


def nearest_centroid(by_group):
    """Leave-one-out confusion {group: {nearest group mean (the image left out of its own): count}}."""
    confusion = {g: dict.fromkeys(by_group, 0) for g in by_group}
    for g, rows in by_group.items():
        if len(rows) < 2:  # no mean of its own group without it
            continue
        for k in range(len(rows)):
            means = {h: (np.delete(r, k, axis=0) if h == g else r).mean(axis=0) for h, r in by_group.items() if len(r)}
            confusion[g][min(means, key=lambda h: np.linalg.norm(rows[k] - means[h]))] += 1
    return confusion


markers = dict(zip(["DSB fluorescence", "DSB histology", "DSB brightfield", "CIL phalloidin", "CIL DAPI",
                    "CIL with DAPI", "CIL DAPI zeroed"], "osD^v^v"))
fig, axes = plt.subplots(1, 2, figsize=(14, 5.4))
accuracy, confusions = {}, {}
for ax, (name, by_group) in zip(axes, styles.items()):
    groups = list(by_group)
    all_styles = np.concatenate([by_group[g] for g in groups])
    which = np.concatenate([[g] * len(by_group[g]) for g in groups])
    pcs, explained = pca_2d(all_styles)
    confusions[name] = nearest_centroid(by_group)
    accuracy[name] = sum(c[g] for g, c in confusions[name].items()) / sum(sum(c.values()) for c in confusions[name].values())
    for j, g in enumerate(groups):
        ax.scatter(*pcs[which == g].T, s=40, marker=markers.get(g, "^"), color=f"C{j}", edgecolor="k",
                   label=f"{g} ({len(by_group[g])})")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    ax.set_title(f"styles of the {name} model; nearest group mean right for {accuracy[name]:.0%}")
    ax.legend(fontsize=8)
show(fig)


def within_between(by_group):
    """Mean distance between two styles of the same group, and between styles of two different groups."""
    s = np.concatenate(list(by_group.values()))
    group = np.repeat(np.arange(len(by_group)), [len(v) for v in by_group.values()])
    d = np.linalg.norm(s[:, None] - s[None], axis=-1)
    same = group[:, None] == group[None]
    return d[same & ~np.eye(len(s), dtype=bool)].mean(), d[~same].mean()


for name, acc in accuracy.items():
    chance = 1 / len(styles[name])
    within, between = within_between(styles[name])
    print(f"{name} model: distance between two styles {within:.2f} within a group, {between:.2f} across groups; "
          f"nearest group mean (leave-one-out) right for {acc:.0%} of the images (chance {chance:.0%}):")
    for g, row in confusions[name].items():
        print(f"  {g:17s} nearest to " + ", ".join(f"{h} {n}" for h, n in row.items() if n))
    assert within < between and acc > chance  # the styles carry the kind of image

# %% [markdown]
# The styles sort the images by kind without ever being told the kind. In
# full mode (40 images per group, and all 14 brightfield images), the
# nuclei model put every brightfield image, 35 of the 40 histology images
# and 36 of the 40 phalloidin channels nearest to their own group's mean.
# Its mistakes say what the style is: the DSB fluorescence images and the
# CIL DAPI channels were taken for each other (17 of the 40 DAPI channels
# were nearest to the DSB fluorescence mean, 11 fluorescence images to the
# DAPI mean). Both are fluorescent nuclei on a dark background: the style
# describes what an image looks like, not which data set it came from. The
# whole-cell model, which never saw histology or brightfield, still told
# them apart (14 of 14, 32 of 40), and it told its own fields with DAPI
# from the same fields without (34 and 28 of 40): an input with its
# nuclear channel zeroed is, to the network, another kind of image.
#
# **What the style does: swap it.** A style vector is only useful if the
# decoder reads it. To see that it does, segment a test image with the
# nuclei model while the network's style is *replaced* by a fixed vector: the
# mean style of the test images of each modality (a forward hook on the
# network's `style` module, torch's public API; the styles here are those
# that `segment` computed at the network's scale, `Segmentation.style`).
# First a check that the hook does what it says: on an image that fits in
# one tile, replacing the style by the image's own style changes nothing.

# %%
@contextlib.contextmanager
def fixed_style(net, style):
    """Within the block every forward pass of `net` uses `style` (S,) instead of its own."""
    vector = torch.as_tensor(np.asarray(style), dtype=torch.float32)

    def replace(module, inputs, output):
        return vector.to(output.device, output.dtype).expand(output.shape[0], -1)

    handle = net.style.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


small = test[0]["image"][:128, :128]  # at diameter = diam_mean no zoom: one tile
plain = predict.segment(small, nuc, diameter=nuc.config.diam_mean, device=DEVICE, **NUCLEI_INPUT)
with fixed_style(nuc, plain.style):
    same = predict.segment(small, nuc, diameter=nuc.config.diam_mean, device=DEVICE, **NUCLEI_INPUT)
with fixed_style(nuc, -plain.style):
    other = predict.segment(small, nuc, diameter=nuc.config.diam_mean, device=DEVICE, **NUCLEI_INPUT)
after = predict.segment(small, nuc, diameter=nuc.config.diam_mean, device=DEVICE, **NUCLEI_INPUT)
print(f"own style fixed: flows differ by {np.abs(same.flows - plain.flows).max():.1e}; "
      f"style negated: by {np.abs(other.flows - plain.flows).max():.2f}")
assert np.allclose(same.flows, plain.flows, atol=1e-4) and np.allclose(same.cellprob, plain.cellprob, atol=1e-3)
assert np.abs(other.flows - plain.flows).max() > 0.1  # the decoder reads the style
assert np.array_equal(after.flows, plain.flows)  # the hook is gone after the block

# %%
swap = [k for m in kinds for k in [k for k, it in enumerate(test) if it["kind"] == m][:N_SWAP]]
mean_style = {}
for m in kinds:
    s = np.mean([seg_nuc_dsb[k].style for k in swap if test[k]["kind"] == m], axis=0)
    mean_style[m] = s / np.linalg.norm(s)
swapped = {m: {} for m in kinds}  # image modality -> style used -> per-image AP curves
t0 = time.perf_counter()
for m in kinds:
    ks = [k for k in swap if test[k]["kind"] == m]
    truths = [test[k]["labels"] for k in ks]
    swapped[m]["its own, per tile"] = ap_curve(truths, [seg_nuc_dsb[k].labels for k in ks])
    for source in kinds:
        preds = []
        for k in ks:
            with fixed_style(nuc, mean_style[source]):
                preds.append(segment_nuclei([test[k]], nuc)[0].labels)
        swapped[m][f"mean {source}"] = ap_curve(truths, preds)
print(f"({time.perf_counter() - t0:.0f} s) nuclei model, AP@0.5 (mean over images) with the style replaced:")
print(f"{'images':22s}" + "".join(f"{s:>22s}" for s in swapped[kinds[0]]))
for m in kinds:
    n = len(swapped[m]["its own, per tile"])
    print(f"{m + f' ({n})':22s}" + "".join(f"{np.nanmean(a[:, 0]):22.2f}" for a in swapped[m].values()))

# %% [markdown]
# In full mode (6 fluorescence, 6 histology and the one brightfield image)
# the fluorescence images hardly cared which style they got (AP@0.5 0.86
# to 0.90), histology lost a little with the fluorescence style (0.67
# against 0.75 with its own styles), and the brightfield image dropped from
# 0.73 to 0.23 with the fluorescence style: the wrong kind's style costs
# most where the images are least like the others. The same weights, a
# different style vector, different masks: the style is the generalist's
# way of knowing what it is looking at. (The
# first column lets every tile keep its own style, as `segment` does; the
# others impose one vector on all tiles.)
#
# ## 4. AP against IoU: the benchmark curves
#
# AP at one IoU threshold hides how exact the masks are. The paper's
# specialist benchmark on CIL (89 fields for training, 11 for testing) plots
# AP against the IoU threshold from 0.5 to 1: all methods fall towards 0 at
# IoU 1, and the gap between Cellpose and the others (Mask R-CNN, StarDist)
# widens at high IoU, where the outline has to be right, not just the cell.
# The full benchmark of this package is `benchmarks/specialist_cil.py`; when
# it has written its results (`benchmarks/results/specialist_cil.json`,
# method -> IoU thresholds and AP) they are drawn here, with this notebook's
# own curves dashed; otherwise the curves of this notebook alone.

# %%
def read_benchmark(path):
    """AP curves {method: (iou, ap)} from a benchmark JSON file, and a list of what was skipped.

    The file is read defensively: {"methods": {name: {"iou": [...], "ap": [...]}}}; an entry
    whose "ap" is per image (n_images, n_iou) is averaged over images, one marked as a smoke run
    ("smoke": true, a check of the code path) is left out. None when nothing is usable.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return None, [f"{Path(path).name} is unreadable ({exc})"]
    methods = raw.get("methods") if isinstance(raw, dict) else None
    if not isinstance(methods, dict):
        return None, ["no 'methods' mapping"]
    curves, skipped = {}, []
    for name, entry in methods.items():
        if isinstance(entry, dict) and entry.get("smoke"):
            skipped.append(f"{name}: a smoke run, not a result")
            continue
        try:
            iou = np.asarray(entry["iou"], dtype=float)
            ap = np.asarray(entry["ap"], dtype=float)
        except (KeyError, TypeError, ValueError):
            skipped.append(f"{name}: no numeric 'iou' and 'ap'")
            continue
        if ap.ndim == 2 and iou.ndim == 1 and ap.shape[1] == len(iou):
            ap = np.nanmean(ap, axis=0)  # per image -> mean over images
        if iou.ndim != 1 or iou.shape != ap.shape or len(iou) == 0:
            skipped.append(f"{name}: iou {iou.shape} and ap {ap.shape} do not pair up")
            continue
        curves[str(name)] = (iou, ap)
    return (curves or None), skipped


# the reader, on files of our own: a good one, a partly bad one, a broken one
good = {"methods": {"a": {"iou": [0.5, 0.75], "ap": [0.9, 0.6]}, "b": {"iou": [0.5, 0.75], "ap": [[1, 0.5], [0.5, 0.5]]}}}
(WORKDIR / "good.json").write_text(json.dumps(good))
(WORKDIR / "bad.json").write_text(json.dumps({"methods": {"a": {"iou": [0.5]}, "c": {"iou": [0.5, 0.6], "ap": [1.0]},
                                                           "d": {"iou": [0.5], "ap": [0.2], "smoke": True}}}))
(WORKDIR / "broken.json").write_text("{not json")
curves, skipped = read_benchmark(WORKDIR / "good.json")
assert list(curves) == ["a", "b"] and np.allclose(curves["b"][1], [0.75, 0.5]) and not skipped
assert read_benchmark(WORKDIR / "bad.json") == (None, ["a: no numeric 'iou' and 'ap'", "c: iou (2,) and ap (1,) do not pair up",
                                                     "d: a smoke run, not a result"])
assert read_benchmark(WORKDIR / "broken.json")[0] is None

benchmark_path = next((p / BENCHMARK_JSON for p in (REPO, Path.cwd(), Path.cwd().parent)
                       if (p / BENCHMARK_JSON).is_file()), None)
benchmark, skipped = (None, []) if benchmark_path is None else read_benchmark(benchmark_path)
print(f"benchmark results: {benchmark_path if benchmark else 'not found (run benchmarks/specialist_cil.py)'}"
      + (f"; skipped {skipped}" if skipped else ""))
if benchmark and not have_cil:
    print(f"note: the benchmark scored CIL validation fields; this notebook's curves are on {cil_source}")

mine = {"cyto_cil, with DAPI": ap_with, "cyto_cil, DAPI zeroed": ap_without, "nuclei model (phalloidin)": ap_nuc_cil}
fig, ax = plt.subplots(figsize=(7.5, 4.8))
if benchmark:
    for j, (name, (iou, ap)) in enumerate(benchmark.items()):
        ax.plot(iou, ap, "o-", color=f"C{j}", label=f"{name} (benchmark)")
for j, (name, ap) in enumerate(mine.items()):
    mean = np.nanmean(ap, axis=0)
    assert np.all(np.diff(mean) <= 1e-12)  # a match at a higher IoU is a match at a lower one
    ax.plot(IOU_CURVE, mean, "--" if benchmark else "o-", color=f"C{j + (len(benchmark) if benchmark else 0)}",
            label=f"{name}, this notebook")
ax.set_xlabel("IoU threshold")
ax.set_ylabel("AP = TP / (TP + FP + FN), mean over images")
ax.set_ylim(0, 1)
ax.set_xlim(0.5, 0.95)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
ax.set_title(f"whole cells: {cil_source}")
show(fig)
for name, ap in mine.items():
    print(f"{name:28s}" + " ".join(f"{t:.2f}:{a:.2f}" for t, a in zip(IOU_CURVE, np.nanmean(ap, axis=0))))
print(f"notebook so far: {time.perf_counter() - T_START:.0f} s")

# %% [markdown]
# The specialist's curve starts high and falls steeply past IoU 0.8: the
# cells are found, but their outlines along a faint phalloidin border are
# a few pixels off, and at IoU 0.9 that is already too much for a cell of
# 40-50 pixels. Without DAPI the whole curve is lower; the nuclei model's
# curve is below 0.1 from IoU 0.75 on. The model card
# (`cellpose_nb/pretrained/cyto_cil/README.md`) has the table for the 10
# validation fields, with the true and with the estimated diameter; the
# paper's specialist reached AP@0.5 0.88 on its 11 test fields. The
# benchmark file, when there is one, may also hold baselines that are not
# networks at all (a watershed seeded by the DAPI nuclei, for one); compare
# methods on the right half of the plot, where the outline
# has to be right and not only the cell.
#
# ## In practice
#
# - **Channels.** `segment(image, cyto, channels=(CYTO, NUCLEI))` with the
#   indices of *your* stains; `NUCLEI=None` when there is none (zeros, and
#   a note in `Segmentation.notes` when a one-channel image meets a
#   two-channel model). The command line: `--channels 0 1` or `--channels 0 none`.
#   A blank nuclear channel is the same as none (it normalises to zeros).
# - **A specialist without its second channel is not the same model.**
#   `cyto_cil` was trained with DAPI on every field: without it expect the
#   losses measured in section 1. If your images have no nuclear stain,
#   fine-tune on a few of them without it (notebook 07), or train on each
#   image twice, with the nuclear channel and with it zeroed
#   (`prepare_images(..., channels=(0, None))` for the second copy).
# - **Out of its speciality, a model fails quietly.** Nothing in the output
#   says "these are not the cells I know": the masks look like masks. Check
#   a few images against annotations before trusting numbers (notebook 06),
#   and a style far from the model's training styles is a warning sign.
# - **Generalists need variety.** In our full run the network trained on
#   every modality was better on histology (AP@0.5 0.69 against 0.57) and
#   as good on fluorescence as the one trained on fluorescence only (the
#   table in section 2). Cellpose's generalists are trained the same way, on
#   many kinds of images, and the style vector is what lets one network
#   hold them all.
# - **Diameters.** Here the true diameter was given everywhere; in use,
#   `segment(image, model)` estimates it with the model's size model, which
#   reads the style and so is only as good as the style is familiar.
# - **Per-image mean AP** is Cellpose's convention; `metrics.matching_dataset`
#   gives StarDist's (counts summed over the data set). Say which when you
#   compare with a paper.
#
# ## Exercises
#
# 1. **Swap the channels** (★). Segment the whole-cell fields with
#    `channels=(1, 0)`: DAPI in the cytoplasm slot and phalloidin in the
#    nuclear one. What happens to AP, and what do the masks look like?

# %% tags=["solution"]
seg_swapped = [predict.segment(it["image"], cyto, diameter=it["diameter"], channels=(1, 0), device=DEVICE)
               for it in cil]
ap_swapped = ap_curve(truth_cil, [s.labels for s in seg_swapped])
print(f"channels (1, 0): AP {ap_text(ap_swapped)}, against (0, 1): {ap_text(ap_with)}")
print(f"mean mask area {np.mean([np.bincount(s.labels.ravel())[1:].mean() for s in seg_swapped if s.labels.max()]):.0f} px "
      f"against {np.mean([np.bincount(t.ravel())[1:].mean() for t in truth_cil]):.0f} px for the true cells")
# The network looks for cell bodies in channel 0: given the nuclei there, it draws cell-like masks
# around the bright nuclei, smaller than the cells (and misses others), so most match no cell at
# IoU 0.5. The order of the channels is part of the model: check `channels=` before anything else.
assert np.nanmean(ap_swapped[:, 0]) < np.nanmean(ap_with[:, 0])

# %% [markdown]
# 2. **Per image or pooled?** (★) Compute the AP of `seg_with` the StarDist
#    way, `metrics.matching_dataset`, and check that it equals TP / (TP + FP +
#    FN) of the counts of `metrics.matching` summed over the images. Why can
#    it differ from the per-image mean?

# %% tags=["solution"]
pooled = metrics.matching_dataset(truth_cil, [s.labels for s in seg_with], thresholds=IOU_THRESHOLDS)
per_image = [metrics.matching(t, s.labels, thresholds=IOU_THRESHOLDS) for t, s in zip(truth_cil, seg_with)]
for j, m in enumerate(pooled):
    tp, fp, fn = (sum(getattr(p[j], c) for p in per_image) for c in ("tp", "fp", "fn"))
    assert np.isclose(m.ap, tp / (tp + fp + fn))
    print(f"IoU {m.threshold}: pooled AP {m.ap:.3f}, per-image mean {np.nanmean(ap_with[:, AT[j]]):.3f}")
# Pooled AP weights every cell equally, the per-image mean every image equally: a crowded field with
# many errors pulls the pooled figure more. With fields of similar size and crowding they are close.

# %% [markdown]
# 3. **Where does DAPI land?** (★★) For the DAPI channels and the
#    phalloidin channels of the CIL fields of section 3, compute the mean
#    distance of their styles (nuclei model) to the mean style of each
#    DSB2018 modality, and to their own group's mean. Which modality is
#    nearest to each? What does it predict about the nuclei model on each
#    channel?

# %% tags=["solution"]
by_group = styles["nuclei"]
means = {g: s.mean(axis=0) for g, s in by_group.items()}
distance = {c: {g: float(np.linalg.norm(by_group[c] - means[g], axis=1).mean()) for g in means}
            for c in ("CIL DAPI", "CIL phalloidin")}
for c, d in distance.items():
    print(f"{c:15s} mean distance to the mean of " + ", ".join(f"{g} {v:.2f}" for g, v in d.items()))
# DAPI is fluorescent nuclei on black: its styles lie nearer to the DSB fluorescence images than to
# histology (and about as near as to their own mean), and the nuclei model segments DAPI nuclei well.
# Phalloidin is nearest to its own mean and far from every nuclei modality: an input the nuclei
# model has not seen the like of, which is what section 2 measured (AP@0.5 under 0.4).
assert distance["CIL DAPI"]["DSB fluorescence"] < distance["CIL DAPI"]["DSB histology"]
assert distance["CIL phalloidin"]["CIL phalloidin"] < min(v for g, v in distance["CIL phalloidin"].items() if g.startswith("DSB"))

# %% [markdown]
# 4. **A third training set** (★★★, full mode, about 10 minutes on a
#    CPU). Train a third network like those of section 2 on the histology
#    and brightfield images only (no fluorescence). Is it better on histology than the
#    all-modality one? What does that say about the cost of being general?
#    (No solution cell: it is the same loop with a third training set.)

# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) The two-channel input, the style vector and its clusters, the specialist benchmark on CIL and the AP-against-IoU curves.
# - Cell Image Library, CIL/CCDB:6843 (MP6843 cells, phalloidin and DAPI), doi:[10.7295/W9CCDB6843](https://doi.org/10.7295/W9CCDB6843), licensed CC BY 3.0; converted for the course as described in the data's README (`docs/data.md`).
# - Caicedo, J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. *Nature Methods* 16, 1247-1253 (2019). DSB2018 (BBBC038v1), CC0.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): `transforms.convert_image` (the two channels, zeros for a missing one), `resnet_torch.CPnet` (the style vector).

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
# # 07 · Your own data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/07_your_own_data.ipynb) (replace OWNER with the repository's owner once it is published)
#
# The worked path from a folder of your own images to exported results:
# read the folder, pick the channel and the nucleus size, segment, check the
# result against the few images you annotated, fine-tune the shipped model
# on those annotations when it falls short, compare, and export everything
# for Fiji, napari, the Cellpose GUI or a spreadsheet.
#
# Your images are not here, so the notebook first **writes a stand-in
# folder** in the format Cellpose uses (a few DSB2018 fluorescence images of
# one experiment that the shipped model never trained on, or synthetic
# nuclei), stored the way
# microscope software often exports them: as RGB files with the DNA stain in
# the blue channel, one image left unannotated. Set `MY_FOLDER` in the first
# code cell to run the same steps on your folder.
#
# **What you will learn**
#
# - the Cellpose folder format (`<name>_img.tif` + `<name>_masks.tif`) and
#   `data.read_folder`, with or without annotations;
# - how to pick the channel(s) for the model, and `invert` for dark nuclei;
# - how to choose the diameter: the model's size model, or a measurement on
#   your annotations (`train.median_diameter`);
# - how to check a model on your own annotations (AP, error pictures) before
#   trusting it;
# - fine-tuning the shipped model on a few annotated images (`train.train`
#   on a copy, then `train.finish_model`), with a fair before/after test;
# - exporting every image's results with `export.export_all`, and the same
#   steps on the command line.
#
# **What you need**: notebooks 00 and 06 (segmenting, AP); 05 helps for the
# training. No GPU (`QUICK` fine-tunes for 2 epochs on small crops, which
# shows the mechanics, not a better model; a real fine-tuning wants a GPU or
# some patience). The DSB2018 data are optional.

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

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: 2 epochs of fine-tuning on small crops
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

# --- your data
MY_FOLDER = None  # your folder of <name>_img.tif (+ <name>_masks.tif); None: a stand-in is written
IMAGE_SUFFIX = "_img"  # file names: <name><IMAGE_SUFFIX>.tif ...
MASK_SUFFIX = "_masks"  # ... and <name><MASK_SUFFIX>.tif (or a Cellpose GUI <name>_seg.npy)
CHANNELS = None  # (nuclear channel, None) for the nuclei model; None: the channel with the most signal
CHANNEL_AXIS = None  # where the channels are in a 3-D image (None: last)
INVERT = False  # True when nuclei are dark on a light background (brightfield)
DIAMETER = None  # nucleus diameter in px; None: the size model's estimate, else measured on the annotations
OUT_DIR = None  # where results go (nothing there is overwritten); None: a temporary folder
# --- the stand-in folder
SEED = 0  # seeds the split, the synthetic images and the fine-tuning
USE_DSB = True  # DSB2018 images in the stand-in when data_root() finds them (else synthetic nuclei)
N_STANDIN = 6  # images in the stand-in folder (one of them without annotation)
STANDIN_DIAMETER = 48.0  # the stand-in "experiment": held-out images whose nuclei are this size (px) ...
STANDIN_TOLERANCE = 0.2  # ... within this fraction
# --- checking and fine-tuning
MODEL = "nuclei"  # the model to start from
THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default); small crops run best on one
DEVICE = None  # None: cuda -> mps -> cpu, whichever is there; or "cpu", "cuda:0", "mps"
TEST_FRACTION = 0.34  # share of the annotated images kept for the before/after test
EPOCHS = 2 if QUICK else 100  # fine-tuning epochs (Cellpose's recommendation: 100 or so)
CROP = 64 if QUICK else 224  # side of the training crops (Cellpose: 224)
BATCH = 2 if QUICK else 8  # crops per step
LEARNING_RATE = 0.001  # lower than from scratch (0.005): the weights are already good
WARMUP = 0 if QUICK else 5  # epochs of learning-rate warm-up
SIZE_PASSES = 1 if QUICK else 10  # random crops per image for the fine-tuned model's size model
SIZE_CROP = 128 if QUICK else 512  # side of those crops

# %%
import copy
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import tifffile
import torch
from IPython.display import display

from cellpose_nb import data, export, metrics, model, plot, predict, train
from cellpose_nb.train import TrainConfig

if THREADS is not None:
    torch.set_num_threads(THREADS)
WORKDIR = Path(tempfile.mkdtemp(prefix="cellpose_nb_07_"))  # scratch: stand-in folder, training run
OUT = Path(OUT_DIR) if OUT_DIR is not None else WORKDIR / "results"
STAND_IN = MY_FOLDER is None
print("scratch files go to", WORKDIR, "| results to", OUT)

plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 step', '4 steps', '1 nucleus', '2 nuclei': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def n_objects(labels):
    return len(np.unique(labels[labels > 0]))


# %% [markdown]
# ## 1. The folder
#
# Cellpose's folder format is one image file per field of view,
# `<name>_img.tif` (or .png, .jpg), and for the annotated ones a label image
# `<name>_masks.tif` (0 = background, 1..N = one object each; 16-bit
# integers, never JPEG) or the Cellpose GUI's `<name>_seg.npy`. Label images
# come from the Cellpose GUI, from napari's labels layer, from Fiji (ROI
# Manager > Labels, or the LabelMap plugins), or from corrected outputs of a
# model (the `_seg.npy` written in section 6 opens in the Cellpose GUI).
#
# The stand-in is one "experiment": held-out DSB2018 fluorescence images
# (the shipped model's validation split) that share a magnification, with
# large nuclei (about `STANDIN_DIAMETER` = 48 px across, three times the
# model's `diam_mean`). They are saved as RGB with the stain in blue, and one
# is left without its annotation, as in a real project where only some
# images are annotated.

# %%
def synthetic_standin():
    synthetic = data.make_synthetic_dataset(N_STANDIN, shape=(360, 360), n_cells=18,
                                            diameter=STANDIN_DIAMETER, kind="nuclei", seed=SEED)
    return [(f"field_{k:02d}", (255 * np.clip(s.image, 0, 1)).astype(np.uint8), s.labels)
            for k, s in enumerate(synthetic)], "synthetic nuclei"


def standin_images():
    """(name, grayscale image, labels) of one experiment the shipped model did not train on."""
    root = data.data_root() if USE_DSB else None
    if root is None or not (root / "dsb2018" / "index.csv").is_file():
        return synthetic_standin()
    modality = {r["id"]: r["modality"] for r in data.dataset_index("dsb2018")}
    record = model.load_pretrained(MODEL, device="cpu").record.training or {}
    names = record.get("val_names")
    if not names:  # the split of scripts/dsb2018_split.py
        ids = sorted(modality)
        _, val_idx = train.split_train_val(len(ids), val_fraction=0.1, seed=0, strata=[modality[i] for i in ids])
        names = [ids[k] for k in val_idx]
    folder = root / "dsb2018" / "train"
    picked = []
    for n in (n for n in names if modality[n] == "fluorescence"):
        labels = data.read_labels(folder / f"{n}_masks.tif")
        if abs(train.median_diameter(labels) / STANDIN_DIAMETER - 1) <= STANDIN_TOLERANCE:
            picked.append((n, data.read_image(folder / f"{n}_img.tif"), labels))
    if len(picked) < 3:  # too few for an experiment
        return synthetic_standin()
    return picked[:N_STANDIN], "DSB2018 fluorescence, held out"


if STAND_IN:
    folder = WORKDIR / "my_images"
    folder.mkdir()
    images, source = standin_images()
    for k, (name, gray, labels) in enumerate(images):
        rgb = np.zeros((*gray.shape, 3), np.uint8)
        rgb[..., 2] = gray  # DNA stain in blue, as many microscopes export it
        tifffile.imwrite(folder / f"{name}{IMAGE_SUFFIX}.tif", rgb)
        if k < len(images) - 1:  # the last one stays unannotated
            data.write_labels(folder / f"{name}{MASK_SUFFIX}.tif", labels)
    print(f"stand-in folder {folder} ({source}):")
else:
    folder = Path(MY_FOLDER).expanduser()
for path in sorted(folder.iterdir())[:12]:
    print(f"  {path.name}")

# %% [markdown]
# `data.read_folder` pairs every image with its annotation
# (`require_masks=False` keeps images without one; their `labels` are None).

# %%
samples = data.read_folder(folder, image_suffix=IMAGE_SUFFIX, mask_suffix=MASK_SUFFIX, require_masks=False)
annotated = [s for s in samples if s.labels is not None]
print(f"{plural(len(samples), 'image')}, {len(annotated)} annotated")
for s in samples:
    note = f"{n_objects(s.labels):4d} annotated objects" if s.labels is not None else "   not annotated"
    print(f"  {s.name:20s} {str(s.image.shape):16s} {s.image.dtype}  {note}")
assert samples, f"no images in {folder}"
if STAND_IN:
    assert len(samples) == len(images) and len(annotated) == len(images) - 1

# %% [markdown]
# ## 2. The channel
#
# The shipped model reads one channel with bright nuclei. A grayscale image
# is that channel. A multi-channel image needs the index of the nuclear
# stain: look at each channel and, unless `CHANNELS` says otherwise, take the
# one with the most signal (the largest spread between its 1st and 99.9th
# percentiles, over all images). Dark nuclei on a light background need
# `INVERT = True`; H&E histology `data.histology_to_gray` (notebook 00).

# %%
first = samples[0].image
multichannel = first.ndim == 3
if multichannel:
    chan_axis = -1 if CHANNEL_AXIS is None else CHANNEL_AXIS
    n_chan = first.shape[chan_axis]
    spread = np.zeros(n_chan)
    for s in samples:
        planes = np.moveaxis(s.image, chan_axis, -1).astype(np.float64)
        lo, hi = np.percentile(planes.reshape(-1, n_chan), [1, 99.9], axis=0)
        spread += hi - lo
    channels = CHANNELS if CHANNELS is not None else (int(np.argmax(spread)), None)
    print("signal per channel (mean 1st-99.9th percentile spread):", (spread / len(samples)).round(1))

    fig, axes = plt.subplots(1, n_chan, figsize=(4 * n_chan, 4), squeeze=False)
    for c, ax in enumerate(axes[0]):
        plot.show_image(np.take(first, c, axis=chan_axis), ax=ax,
                        title=f"channel {c}" + (" (picked)" if c == channels[0] else ""))
    show(fig)
else:
    chan_axis, channels = None, (0, None)
print(f"channels={channels}, channel_axis={chan_axis}, invert={INVERT}")
if STAND_IN:
    assert channels == (2, None), "the stand-in's stain is in the blue channel"

inputs = train.prepare_images([s.image for s in samples], channels=channels, channel_axis=chan_axis,
                              invert=INVERT)  # what the network reads: (2, H, W), normalised

# %% [markdown]
# ## 3. The diameter
#
# The model zooms every image so that nuclei come out at its `diam_mean`, so
# it needs their diameter in **pixels**. Three ways to get it:
#
# - you know it (`DIAMETER`, for a whole experiment at one magnification);
# - the model's **size model** estimates it per image from the style vector
#   (notebook 05), when the model has one;
# - measure it on your annotations: `train.median_diameter` is the median
#   over objects of `sqrt(4 area / pi)`, Cellpose's definition.

# %%
net = model.load_pretrained(MODEL, device=DEVICE)
record = net.record.training or {}
has_size_model = net.record.size_model is not None or bool(record.get("size_model"))
measured = {s.name: train.median_diameter(s.labels) for s in annotated}
if measured:
    print("measured on the annotations:", {k: round(v, 1) for k, v in measured.items()})
if has_size_model:
    estimated = {s.name: train.estimate_diameter(x, net).diameter for s, x in zip(samples, inputs)}
    print("estimated by the size model:", {k: round(v, 1) for k, v in estimated.items()})

if DIAMETER is not None:
    diameters = [float(DIAMETER)] * len(samples)
    how = "given"
elif has_size_model:
    diameters = [estimated[s.name] for s in samples]
    how = "size model, per image"
elif measured:
    diameters = [float(np.median(list(measured.values())))] * len(samples)
    how = "median of the annotations"
else:
    diameters = [net.config.diam_mean] * len(samples)
    how = "the model's diam_mean (set DIAMETER!)"
print(f"diameters used ({how}):", np.round(diameters, 1))
assert all(np.isfinite(d) and d > 0 for d in diameters)

# %% [markdown]
# ## 4. Segment and check
#
# Every image, annotated or not, is segmented. On the annotated ones the AP
# says how far the model can be trusted on *your* data; the pictures say
# where it fails (green matched, red false positive, blue missed).

# %%
def segment_all(net, indices):
    return {k: predict.segment(samples[k].image, net, diameter=diameters[k], channels=channels,
                               channel_axis=chan_axis, invert=INVERT, device=DEVICE) for k in indices}


t0 = time.perf_counter()
segs = segment_all(net, range(len(samples)))
print(f"{plural(len(samples), 'image')} segmented in {time.perf_counter() - t0:.1f} s")
idx_annotated = [k for k, s in enumerate(samples) if s.labels is not None]
ap_shipped = {k: metrics.matching(samples[k].labels, segs[k].labels, thresholds=[0.5])[0].ap for k in idx_annotated}
for k, s in enumerate(samples):
    line = f"  {s.name:20s} {plural(int(segs[k].labels.max()), 'nucleus', 'nuclei'):>11s}"
    print(line + (f", AP@0.5 {ap_shipped[k]:.3f}" if k in ap_shipped else " (not annotated)"))
if ap_shipped:
    print(f"mean AP@0.5 over {len(ap_shipped)} annotated images: {np.nanmean(list(ap_shipped.values())):.3f}")

shown = list(range(min(4, len(samples))))
fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4.4), squeeze=False)
for ax, k in zip(axes[0], shown):
    s = samples[k]
    if s.labels is not None:
        plot.show_errors(s.labels, segs[k].labels, ax=ax, image=inputs[k][0])
    else:
        plot.overlay_labels(inputs[k][0], segs[k].labels, ax=ax, title=plural(int(segs[k].labels.max()), 'nucleus', 'nuclei'))
    ax.set_title(f"{s.name[:16]}\n" + ax.get_title())
show(fig)

assert all(segs[k].labels.shape == samples[k].image.shape[:2] for k in segs)
if STAND_IN:
    assert all(segs[k].labels.max() > 0 for k in segs)
    assert np.nanmean(list(ap_shipped.values())) > 0.3

# %% [markdown]
# ## 5. Fine-tune on your annotations
#
# If the AP is not good enough, a few annotated images of your own often do
# more than any setting: fine-tuning continues the shipped model's training
# on them, starting from its weights (its `diam_mean` stays, so the zoom
# logic is unchanged). To know whether it helped, **keep some annotated
# images out of the training** and compare on those only.
#
# A copy of the model is trained (`copy.deepcopy`), so the shipped one stays
# as it is for the comparison. `train.train` writes the run folder (history,
# checkpoint, model); `train.finish_model` then fits the fine-tuned model's
# size model and saves the finished model folder.
#
# The loss printed per epoch is Cellpose's (`train.segmentation_loss`,
# derived in notebook 05): with $y$ the network's three output maps, $u$ the
# true unit flows, $m$ the true cell mask and $\sigma$ the logistic function,
# averaged over the $P$ pixels $p$ of a batch,
#
# $$
# L = \frac{1}{2}\cdot\frac{1}{2P}\sum_{p}\sum_{k=1}^{2}\big(y_k(p) - 5\,u_k(p)\big)^2
#     \;-\; \frac{1}{P}\sum_{p}\Big(m(p)\log\sigma\big(y_3(p)\big) + \big(1 - m(p)\big)\log\big(1 - \sigma(y_3(p))\big)\Big),
# $$
#
# half the mean squared error of the flows (at `FLOW_SCALE = 5`) plus the
# binary cross-entropy of the cell-probability logits.

# %%
can_finetune = len(idx_annotated) >= 2
if can_finetune:
    tr_pos, te_pos = train.split_train_val(len(idx_annotated), val_fraction=TEST_FRACTION, seed=SEED)
    train_idx, test_idx = [idx_annotated[k] for k in tr_pos], [idx_annotated[k] for k in te_pos]
    print("fine-tune on", [samples[k].name for k in train_idx], "| test on", [samples[k].name for k in test_idx])

    config = TrainConfig(n_epochs=EPOCHS, batch_size=BATCH, crop_size=CROP, learning_rate=LEARNING_RATE,
                         warmup_epochs=WARMUP, diam_mean=net.config.diam_mean, seed=SEED, device=DEVICE,
                         num_threads=THREADS, save_every=max(1, EPOCHS // 4),
                         size_passes=SIZE_PASSES, size_crop=SIZE_CROP)
    finetuned = copy.deepcopy(net)
    t0 = time.perf_counter()
    result = train.train([inputs[k] for k in train_idx], [samples[k].labels for k in train_idx], finetuned,
                         config=config, out_dir=WORKDIR / "finetune", progress=not QUICK,
                         names=[samples[k].name for k in train_idx])
    model_dir = train.finish_model([inputs[k] for k in train_idx], [samples[k].labels for k in train_idx],
                                   result.model, out_dir=WORKDIR / "finetune", config=config, progress=False)
    print(f"{plural(EPOCHS, 'epoch')} in {time.perf_counter() - t0:.1f} s; losses",
          np.round([h["train_loss"] for h in result.history], 4))
    print("model folder:", sorted(p.name for p in model_dir.iterdir()))
    assert result.completed and all(np.isfinite(h["train_loss"]) for h in result.history)
else:
    print("fine-tuning needs at least two annotated images (one to train on, one to test on)")

# %% [markdown]
# Before and after, on the test images only, at the same diameters:

# %%
if can_finetune:
    tuned_net = model.load(model_dir, device=DEVICE)  # the finished folder, as you would load it later
    segs_tuned = segment_all(tuned_net, test_idx)
    before = np.array([ap_shipped[k] for k in test_idx])
    after = np.array([metrics.matching(samples[k].labels, segs_tuned[k].labels, thresholds=[0.5])[0].ap
                      for k in test_idx])
    for k, a, b in zip(test_idx, before, after):
        print(f"  {samples[k].name:20s} AP@0.5 shipped {a:.3f} -> fine-tuned {b:.3f}")
    print(f"mean over {len(test_idx)} test images: {np.nanmean(before):.3f} -> {np.nanmean(after):.3f}")

    fig, axes = plt.subplots(2, len(test_idx), figsize=(4.2 * len(test_idx), 8.6), squeeze=False)
    for col, k in enumerate(test_idx):
        for row, (what, s) in enumerate((("shipped", segs[k]), ("fine-tuned", segs_tuned[k]))):
            plot.show_errors(samples[k].labels, s.labels, ax=axes[row, col], image=inputs[k][0])
            axes[row, col].set_title(f"{what}: {samples[k].name[:14]}\n" + axes[row, col].get_title())
    show(fig)
    # QUICK trains 2 epochs on 64-pixel crops: expect no gain (or a small loss), only a working pipeline
    assert np.isfinite(after).all() and after.shape == before.shape

# %% [markdown]
# A few annotated images and a handful of test images make a noisy
# comparison: a difference of a few points may be chance. With a real
# fine-tuning (`QUICK` off: 100 epochs on full crops; better on a GPU), the
# gain on images like the training ones is usually clear, and the test
# images tell you whether it carries over.
#
# ## 6. Export everything
#
# The better of the two models (by the mean test AP) segments every image,
# and `export.export_all` writes, per image: `_masks.tif`, `_outlines.png`,
# `_cells.csv`, `_rois.zip` (ImageJ/Fiji) and `_seg.npy` (Cellpose GUI: open
# the image next to it to correct the masks by hand, then use them as new
# annotations).

# %%
use_tuned = can_finetune and np.nanmean(after) > np.nanmean(before)
final = segment_all(tuned_net, range(len(samples))) if use_tuned else segs
print("exporting the", "fine-tuned" if use_tuned else "shipped", "model's results")
written = []
for k, s in enumerate(samples):
    written += export.export_all(OUT, s.name, s.image, final[k], channel_axis=chan_axis)
print(f"{plural(len(written), 'file')} in {OUT}, e.g.:")
for path in written[:5]:
    print(f"  {path.name:40s} {path.stat().st_size:>9,d} bytes")

assert len(written) == len(samples) * len(export.FORMATS)
for k, s in enumerate(samples):
    assert np.array_equal(data.read_labels(OUT / f"{s.name}_masks.tif"), final[k].labels)
# the output folder is itself a Cellpose folder: images elsewhere, masks and _seg.npy here
assert sorted(p.name for p in OUT.glob("*_masks.tif")) == sorted(f"{s.name}_masks.tif" for s in samples)

# %% [markdown]
# > **Cellpose 1.0 or 3?** Fine-tuning a pretrained model on a few of your own
# > annotated images, then correcting its masks and training again, is
# > Cellpose 2.0's human-in-the-loop recipe (Pachitariu & Stringer 2022). The
# > files are Cellpose's: `<name>_masks.tif` folders for training and
# > `<name>_seg.npy` for the GUI. The channels convention (first the channel to
# > segment, then the optional nuclear channel, zeros if none) and the
# > percentile normalisation are Cellpose 1.0's; the segmentation defaults
# > (`cellprob_threshold=0.0`, `flow_threshold=0.4`, `min_size=15`) are those of
# > `cellpose` 3.1.1.2's `CellposeModel.eval`. The training loop itself is this
# > package's (notebook 05 says where it follows Cellpose and where not).

# %% [markdown]
# ## In practice
#
# - **The same on the command line**, for many files or a cluster job:
#
#   ```
#   cellpose-nb segment my_images/ --out results/ --channels 2 none --diameter 48
#   cellpose-nb evaluate my_annotated/ results/ --csv ap.csv
#   cellpose-nb train my_annotated/ --out runs/mine --pretrained nuclei --epochs 100 --learning-rate 0.001
#   cellpose-nb segment my_images/ --out results_tuned/ --model runs/mine/model --channels 2 none
#   ```
#
#   `segment` writes the five files per image (`--formats` to choose) and
#   reports and skips unreadable files; `evaluate` pairs `<name>_masks.tif`
#   files of two folders and prints the AP per image, their mean and the
#   pooled AP; `train` splits off 10 % of the images for validation, tunes the
#   thresholds and fits the size model on them (`train.train_folder` does the
#   same from Python, `model=` to fine-tune), `--resume` continues a stopped
#   run and `--max-minutes` sets a time budget.
# - **Channels.** `--channels 2 none` is `channels=(2, None)`: channel 2 as
#   the only input. A two-channel model (cytoplasm + nuclei, such as
#   Cellpose's `cyto3` via `model.load_cellpose_weights("cyto3")`) takes
#   `(cyto, nuclei)`.
# - **Pixels, not microns.** Diameters are in pixels of the image as stored;
#   a different binning or objective changes them. When the size model's
#   guesses vary a lot within one experiment, measure once and fix it.
# - **How many annotations?** In the Cellpose 2.0 paper, a few hundred
#   annotated objects (a handful of images) were enough to fine-tune a
#   pretrained model to a new kind of image. Annotate *all* objects of an image: unannotated nuclei are taught
#   as background. Images with fewer than `min_train_masks` objects (5 by
#   default) are skipped by `train`.
# - **Correct, don't draw.** Segment with the model, open the `_seg.npy` in
#   the Cellpose GUI, fix the errors, save: `data.read_folder` reads the
#   corrected `_seg.npy` as labels. Iterate: fine-tune, segment, correct.
# - **Keep the test images out** of the training and of the threshold tuning
#   (notebook 06), or the improvement you measure is the one you trained for.
#
# ## Exercises
#
# 1. **A wrong channel.** Segment the first image with the red channel
#    (`channels=(0, None)`) instead of the picked one. What comes out, and why
#    would this be easy to miss on a folder of hundreds of images?

# %% tags=["solution"]
k = 0
if multichannel:
    wrong = [c for c in range(n_chan) if c != channels[0]][0]
    bad = predict.segment(samples[k].image, net, diameter=diameters[k], channels=(wrong, None),
                          channel_axis=chan_axis, invert=INVERT, device=DEVICE)
    print(f"channel {wrong}: {plural(int(bad.labels.max()), 'mask')}; channel {channels[0]}: {segs[k].labels.max()}")
    assert bad.labels.shape == segs[k].labels.shape
else:
    print("a grayscale folder has one channel only")
# An empty channel (here all zeros) normalises to zeros: no nuclei, no error. A channel with some
# other stain gives masks of the wrong things. Nothing fails loudly, so check a few overlays (and the
# cell counts per image, from the CSV files) before analysing a whole screen.

# %% [markdown]
# 2. **How sensitive is the result to the diameter?** Segment the annotated
#    images at 0.7, 1 and 1.4 times the diameter used and compare the mean
#    AP@0.5. How precisely must you know the diameter?

# %% tags=["solution"]
for factor in (0.7, 1.0, 1.4):
    aps = [metrics.matching(samples[k].labels,
                            predict.segment(samples[k].image, net, diameter=factor * diameters[k],
                                            channels=channels, channel_axis=chan_axis, invert=INVERT,
                                            device=DEVICE).labels, thresholds=[0.5])[0].ap
           for k in idx_annotated[:3]]
    print(f"diameter x {factor:.1f}: mean AP@0.5 {np.nanmean(aps):.3f} (first {len(aps)} annotated images)")
# Cellpose models train with random zooms of +-25 %, so a diameter within roughly that range of the
# truth works about as well; beyond it, nuclei are split (too small a diameter) or merged and lost
# (too large). A careful estimate is worth more than any threshold tuning.

# %% [markdown]
# 3. **Annotations from a `_seg.npy`.** In the stand-in folder, take the
#    `_seg.npy` the export wrote for an unannotated image, copy it next to
#    that image, and read the folder again. What does `read_folder` return
#    for that image now, and why is that the start of a correction loop?

# %% tags=["solution"]
import shutil

k = next((k for k, s in enumerate(samples) if s.labels is None), None)
name = samples[k].name if k is not None else None
target = folder / f"{name}{IMAGE_SUFFIX}_seg.npy"
if STAND_IN and k is not None and not target.exists():  # never write into your own folder
    shutil.copy(OUT / f"{name}_seg.npy", target)
    again = {s.name: s for s in data.read_folder(folder, image_suffix=IMAGE_SUFFIX, mask_suffix=MASK_SUFFIX,
                                                 require_masks=False)}
    print(f"{name}: labels now {again[name].labels.shape}, {plural(n_objects(again[name].labels), 'object')} (from the model)")
    assert np.array_equal(again[name].labels, final[k].labels)
# The model's masks now count as the image's annotation. Opened in the Cellpose GUI and corrected
# (the GUI reads and writes the same file), they become real annotations for the next fine-tuning:
# correcting a good segmentation is usually much faster than drawing every outline.


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) The method, the two-channel input and the normalisation.
# - Pachitariu, M. & Stringer, C. Cellpose 2.0: how to train your own model. *Nature Methods* 19, 1634-1641 (2022). [doi:10.1038/s41592-022-01663-4](https://doi.org/10.1038/s41592-022-01663-4) Fine-tuning on your own images and the human-in-the-loop cycle followed here.
# - Stringer, C. & Pachitariu, M. Cellpose3: one-click image restoration for improved cellular segmentation. *Nature Methods* 22, 592-599 (2025). [doi:10.1038/s41592-025-02595-5](https://doi.org/10.1038/s41592-025-02595-5) Cellpose 3, whose code (`cellpose` 3.1.1.2) fixes the segmentation defaults.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.

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
# # 01 · Data and normalisation
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/01_data_and_normalization.ipynb) (replace OWNER with the repository's owner once it is published)
#
# Before any network sees a pixel, Cellpose fixes two conventions: how the
# answer is written down (a **label image**) and how the question is asked
# (a **percentile-normalised, two-channel image**). This notebook builds both by
# hand and then checks the package does the same.
#
# **What you will learn**
#
# - what a label image is (0 = background, 1..N = one object each) and why it is
#   not a binary mask;
# - the Cellpose folder format (`<name>_img.tif` next to `<name>_masks.tif`), by
#   writing a tiny folder and reading it back with `read_folder`;
# - what the course data look like: DSB2018 nuclei (fluorescence, brightfield,
#   histology) and a CIL whole-cell field, or synthetic stand-ins when the data
#   are not on this machine;
# - percentile normalisation (1st percentile -> 0, 99th -> 1), derived with
#   `np.percentile`, and why min/max normalisation breaks on one bright pixel;
# - the network's two-channel input (cytoplasm, nuclei; zeros when there is no
#   nuclear channel; dark-on-light images inverted) with `to_network_input`.
#
# **What you need**: NumPy and matplotlib. No GPU, no torch. The real data are
# optional: set `CELLPOSE_NB_DATA` to the data folder, or put it at
# `../shared/data` beside the repository; otherwise synthetic images are used.

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

SEED = 0  # seed of every random draw below
SHAPE = (128, 128) if QUICK else (256, 256)  # synthetic image size (rows, cols)
N_CELLS = 8 if QUICK else 25  # synthetic objects to draw
DIAMETER = 24.0 if QUICK else 30.0  # synthetic object diameter, pixels
NOISE = 0.05  # synthetic noise strength
N_REAL_PER_MODALITY = 1 if QUICK else 2  # DSB2018 images shown per modality (when the data are here)
LOW, HIGH = 1.0, 99.0  # percentiles mapped to 0 and 1 (Cellpose's defaults)
OUTLIER = 50.0  # value of the one hot pixel in the min/max experiment (image range is ~0..1)
N_BINS = 100  # histogram bins

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import tifffile
from IPython.display import display
from scipy import ndimage
from skimage.segmentation import find_boundaries

from cellpose_nb import data, normalize

plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 step', '4 steps', '1 nucleus', '2 nuclei': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def label_cmap(labels, seed=SEED):
    """Random colours for labels 1..N, black for the background 0."""
    rng = np.random.default_rng(seed)
    colours = np.vstack([[0, 0, 0], rng.uniform(0.2, 1.0, (int(labels.max()), 3))])
    return colours[labels]


# %% [markdown]
# ## 1. A label image
#
# A segmentation is stored as an integer image of the same size as the picture:
# `0` is background and every object gets its own number `1, 2, ..., N`. Here is
# one small enough to print: two objects that touch, and a third apart.

# %%
tiny = np.zeros((6, 10), np.int32)
tiny[1:5, 1:4] = 1
tiny[1:5, 4:7] = 2  # touches object 1 along a whole edge
tiny[2:4, 8:10] = 3
print(tiny)

# %% [markdown]
# A binary mask (`tiny > 0`) would merge objects 1 and 2 into one blob: the
# numbers, not the foreground, carry the segmentation. With labels, per-object
# questions are one `bincount` away.

# %%
areas = np.bincount(tiny.ravel())[1:]  # pixels per object; index 0 is the background
print("areas of objects 1..3:", areas)

n_blobs = ndimage.label(tiny > 0)[1]
print("connected blobs in the binary mask:", n_blobs, "- objects in the labels:", tiny.max())
assert n_blobs == 2 and tiny.max() == 3 and areas.tolist() == [12, 12, 4]

# %% [markdown]
# The synthetic generator of the package draws fluorescence-like cells with
# exact labels: a cytoplasm channel, a nuclear channel, and the labels of the
# cells. Some cells touch, as in real cultures.

# %%
sample = data.make_synthetic(SHAPE, n_cells=N_CELLS, diameter=DIAMETER, kind="cyto", noise=NOISE, seed=SEED)
image, labels = sample.image, sample.labels
print("image", image.shape, image.dtype, "labels", labels.shape, labels.dtype, "objects:", labels.max())

ids = np.unique(labels)
assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, labels.max() + 1))  # 0, then 1..N

fig, axes = plt.subplots(1, 4, figsize=(16, 4))
axes[0].imshow(image[..., 0], cmap="gray")
axes[0].set_title("channel 0: cytoplasm")
axes[1].imshow(image[..., 1], cmap="gray")
axes[1].set_title("channel 1: nuclei")
axes[2].imshow(label_cmap(labels))
axes[2].set_title(f"labels: {plural(int(labels.max()), 'cell')}")
axes[3].imshow(find_boundaries(labels, mode="inner"), cmap="gray")
axes[3].set_title("object boundaries (touching cells stay apart)")
for ax in axes:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# ## 2. The Cellpose folder format
#
# Cellpose reads training data from a folder of pairs: `<name>_img.tif` holds
# the image and `<name>_masks.tif` (or `.png`) holds its labels. Names pair the
# files; nothing else does. We write two images into a temporary folder, with
# tifffile for the images and `data.write_labels` for the labels (a compressed
# uint16 TIFF), and read the folder back.

# %%
second = data.make_synthetic(SHAPE, n_cells=N_CELLS, diameter=DIAMETER, kind="nuclei", noise=NOISE, seed=SEED + 1)
pairs = {"field1": (sample.image, sample.labels), "field2": (second.image, second.labels)}

with tempfile.TemporaryDirectory() as tmp:
    for name, (img, lab) in pairs.items():
        tifffile.imwrite(Path(tmp, f"{name}_img.tif"), img)
        data.write_labels(Path(tmp, f"{name}_masks.tif"), lab)
    print(sorted(p.name for p in Path(tmp).iterdir()))
    samples = data.read_folder(tmp)

for s in samples:
    img, lab = pairs[s.name]
    print(f"{s.name}: image {s.image.shape} {s.image.dtype}, labels {s.labels.shape} {s.labels.dtype}")
    assert np.array_equal(s.image, img) and np.array_equal(s.labels, lab)

# %% [markdown]
# The labels come back as uint16 (enough for 65 535 objects) and equal to what
# was written; the image comes back as written (float32 here).
#
# ## 3. The course data
#
# When the course data are on this machine we look at real images: nuclei from
# the 2018 Data Science Bowl in three modalities, and one field of the CIL
# MP6843 set (phalloidin for the cytoplasm, DAPI for the nuclei). Otherwise the
# gallery is made of synthetic stand-ins, so the rest of the notebook runs the
# same either way.

# %%
root = data.data_root()
print("data root:", root)

gallery = []  # (title, image (H, W) or (H, W, C), labels)
if root is not None:
    for modality in ("fluorescence", "brightfield", "histology"):
        for s in data.load_dsb2018(modality=modality, limit=N_REAL_PER_MODALITY):
            gallery.append((f"DSB {modality}", s.image, s.labels))
    for s in data.load_cil(limit=1):
        gallery.append(("CIL (phalloidin, DAPI)", s.image, s.labels))
else:
    for k, kind in enumerate(("nuclei", "cyto")):
        s = data.make_synthetic(SHAPE, n_cells=N_CELLS, diameter=DIAMETER, kind=kind, seed=SEED + 10 + k)
        gallery.append((f"synthetic {kind}", s.image, s.labels))


def rgb_view(img):
    """Something imshow can draw: gray, RGB, or two channels as (magenta, green)."""
    img = np.asarray(img, np.float32)
    if img.ndim == 3 and img.shape[-1] == 2:
        a, b = (normalize.normalize_percentile(img[..., c]).clip(0, 1) for c in (0, 1))
        return np.stack([a, b, a], axis=-1)
    return normalize.normalize_percentile(img).clip(0, 1)


fig, axes = plt.subplots(2, len(gallery), figsize=(3.2 * len(gallery), 6.4), squeeze=False)
for k, (title, img, lab) in enumerate(gallery):
    axes[0, k].imshow(rgb_view(img), cmap="gray")
    axes[0, k].set_title(f"{title}\n{img.shape} {img.dtype}")
    axes[1, k].imshow(label_cmap(lab))
    axes[1, k].set_title(plural(int(lab.max()), 'object'))
for ax in axes.ravel():
    ax.set_axis_off()
show(fig)

# %% [markdown]
# Notice how different the raw numbers are: uint8 with nuclei bright on black
# (fluorescence), nuclei dark on light (brightfield, histology), RGB colour, two
# channels. The next two sections turn all of them into the same kind of input.
#
# ## 4. Percentile normalisation, by hand
#
# Cellpose rescales every channel of every image on its own: the value below
# which 1 % of the pixels lie goes to 0, the value below which 99 % lie goes to
# 1, linearly in between. Values are not clipped: the darkest and brightest 1 %
# fall a little outside [0, 1].

# %%
x = image[..., 0].astype(np.float64)  # the cytoplasm channel of our synthetic image
lo, hi = np.percentile(x, [LOW, HIGH])
by_hand = (x - lo) / (hi - lo)
print(f"{LOW}th percentile = {lo:.4f}, {HIGH}th percentile = {hi:.4f}")
print(f"fraction below {LOW}th: {np.mean(x < lo):.4f}, above {HIGH}th: {np.mean(x > hi):.4f}")

package = normalize.normalize_percentile(x, low=LOW, high=HIGH)
assert package.dtype == np.float32 and package.shape == x.shape
assert np.allclose(by_hand, package, atol=1e-5)
assert np.isclose(np.percentile(package, LOW), 0, atol=1e-5) and np.isclose(np.percentile(package, HIGH), 1, atol=1e-5)

# %% [markdown]
# For a multi-channel image each channel gets its own percentiles: a dim
# nuclear stain and a bright cytoplasm stain end up on the same scale.

# %%
both = normalize.normalize_percentile(image)  # (H, W, 2), channels last
for c in range(image.shape[-1]):
    ch = image[..., c].astype(np.float64)
    lo_c, hi_c = np.percentile(ch, [LOW, HIGH])
    assert np.allclose(both[..., c], (ch - lo_c) / (hi_c - lo_c), atol=1e-5)
print("raw 99th percentiles per channel:", np.percentile(image, HIGH, axis=(0, 1)).round(3))
print("normalised 99th percentiles:     ", np.percentile(both, HIGH, axis=(0, 1)).round(3))

# %% [markdown]
# ## 5. Why not min/max?
#
# The obvious alternative, `(x - x.min()) / (x.max() - x.min())`, trusts the two
# most extreme pixels of the image. One hot pixel (a cosmic ray, a dust grain, a
# saturated spot) is enough to squash every cell into a sliver of the range.
# Percentiles ignore the extreme 1 % at either end, so the same hot pixel barely
# moves them.

# %%
def minmax(img):
    return (img - img.min()) / (img.max() - img.min())


hot = x.copy()
hot[SHAPE[0] // 3, SHAPE[1] // 3] = OUTLIER  # one pixel, ~50x brighter than any cell

mm_clean, mm_hot = minmax(x), minmax(hot)
pc_clean, pc_hot = (normalize.normalize_percentile(v) for v in (x, hot))
cells = labels > 0
print(f"median cell pixel, min/max:    {np.median(mm_clean[cells]):.3f} clean -> {np.median(mm_hot[cells]):.3f} with the hot pixel")
print(f"median cell pixel, percentile: {np.median(pc_clean[cells]):.3f} clean -> {np.median(pc_hot[cells]):.3f} with the hot pixel")

# one pixel out of thousands: the percentile result moves by a hair, the min/max one by a factor
assert np.median(mm_hot[cells]) < 0.1 * np.median(mm_clean[cells])
assert abs(np.median(pc_hot[cells]) - np.median(pc_clean[cells])) < 0.01

# %% [markdown]
# The histograms tell the same story: raw intensities, then both
# normalisations of the image with the hot pixel (log counts; the hot pixel is
# the lonely bar far right of the raw histogram, off the axis of the percentile one).

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
axes[0].hist(hot.ravel(), bins=N_BINS, log=True, color="0.3")
axes[0].set_title("raw (with one hot pixel)")
axes[1].hist(mm_hot.ravel(), bins=N_BINS, log=True, color="tab:red")
axes[1].set_title("min/max: everything squashed near 0")
axes[2].hist(pc_hot.ravel(), bins=N_BINS, range=(-0.25, 1.5), log=True, color="tab:blue")
axes[2].axvline(0, color="k", lw=0.8)
axes[2].axvline(1, color="k", lw=0.8)
axes[2].set_title(f"percentile {LOW:g}-{HIGH:g}: cells span [0, 1]")
for ax in axes:
    ax.set_xlabel("intensity")
axes[0].set_ylabel("pixels (log)")
show(fig)

# %% [markdown]
# And on the real (or stand-in) images: raw histograms live on very different
# scales; after normalisation background sits near 0 and the bright end near 1
# for all of them. For dark-on-light images the *background* is the bright end:
# that is what the inversion in the next section fixes.

# %%
fig, axes = plt.subplots(2, len(gallery), figsize=(3.2 * len(gallery), 5), squeeze=False)
for k, (title, img, lab) in enumerate(gallery):
    raw = np.asarray(img, np.float32)
    axes[0, k].hist(raw.ravel(), bins=N_BINS, log=True, color="0.3")
    axes[0, k].set_title(title)
    axes[1, k].hist(normalize.normalize_percentile(raw).ravel(), bins=N_BINS, range=(-0.25, 1.5), log=True)
    axes[1, k].axvline(0, color="k", lw=0.8)
    axes[1, k].axvline(1, color="k", lw=0.8)
axes[0, 0].set_ylabel("raw")
axes[1, 0].set_ylabel("normalised")
fig.tight_layout()
show(fig)

# %% [markdown]
# ## 6. The two-channel network input
#
# The Cellpose network always takes two channels, stacked first: `(2, H, W)`.
#
# - channel 0: the cytoplasm stain, or the only channel of a one-channel image;
# - channel 1: the nuclear stain when there is one, **zeros** otherwise.
#
# Each is percentile-normalised on its own. By hand, for our two-channel image
# and for a one-channel nuclei image:

# %%
def network_input_by_hand(img, cyto, nuc):
    """(2, H, W): percentile-normalised channel `cyto`, then `nuc` or zeros."""
    img = img[..., None] if img.ndim == 2 else img
    out = np.zeros((2,) + img.shape[:2], np.float32)
    for k, c in enumerate((cyto, nuc)):
        if c is not None:
            ch = img[..., c].astype(np.float64)
            lo_c, hi_c = np.percentile(ch, [LOW, HIGH])
            out[k] = (ch - lo_c) / (hi_c - lo_c)
    return out


two = normalize.to_network_input(image, channels=(0, 1))
assert two.shape == (2,) + SHAPE and two.dtype == np.float32
assert np.allclose(two, network_input_by_hand(image, 0, 1), atol=1e-5)

one = normalize.to_network_input(second.image, channels=(0, None))  # nuclei only: no second channel
assert np.allclose(one, network_input_by_hand(second.image, 0, None), atol=1e-5)
assert not one[1].any()  # zeros where there is no nuclear stain
print("cyto + nuclei:", two.shape, "| one channel:", one.shape, "second channel all zeros:", not one[1].any())

# %% [markdown]
# ### Sparse fields
#
# Percentile normalisation assumes that the objects cover more than 1 % of
# the image. In a large dark field with two nuclei (0.3 % of the pixels) the
# 99th percentile is **background**: the nuclei come out tens of times
# brighter than 1, far outside anything the network saw in training, and a
# trained model finds nothing (this happens to a few DSB2018 images). The
# package recognises such a channel by its 99.9th percentile lying more than
# `SPARSE_RATIO` (5) times the 1st-99th range above the 1st percentile, and then
# maps the 99.9th percentile to 1 instead (`normalize.upper_percentile`).
# By hand:

# %%
rng_sparse = np.random.default_rng(SEED)
sparse = rng_sparse.normal(12.0, 1.5, (256, 256))  # dim noisy background
yy, xx = np.mgrid[:256, :256]
two_nuclei = ((yy - 70) ** 2 + (xx - 80) ** 2 <= 40) | ((yy - 180) ** 2 + (xx - 170) ** 2 <= 40)
sparse[two_nuclei] = 190.0
p1, p99, p999 = np.percentile(sparse, [LOW, HIGH, 99.9])
fixed = (sparse - p1) / (p99 - p1)
is_sparse = (p999 - p1) > normalize.SPARSE_RATIO * (p99 - p1)
by_hand = (sparse - p1) / (p999 - p1) if is_sparse else fixed
print(f"nuclei cover {two_nuclei.mean():.2%}; fixed 1-99 percentiles put them at {np.median(fixed[two_nuclei]):.1f}, "
      f"the sparse rule ({is_sparse}) at {np.median(by_hand[two_nuclei]):.2f}")
package_sparse = normalize.to_network_input(sparse)[0]
assert is_sparse and normalize.upper_percentile(sparse) == 99.9
assert np.allclose(package_sparse, by_hand, atol=1e-4)
assert np.allclose(normalize.to_network_input(sparse, sparse_aware=False)[0], fixed, atol=1e-4)
assert normalize.upper_percentile(image[..., 0]) == HIGH  # our dense field keeps the 99th percentile

fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
for ax, (title, v) in zip(axes, (("fixed 1st-99th percentiles", fixed), ("sparse-aware (99.9th)", package_sparse))):
    ax.hist(v.ravel(), bins=N_BINS, log=True)
    ax.axvline(1.0, color="k", ls="--")
    ax.set_title(f"{title}: nuclei at {np.median(v[two_nuclei]):.1f}")
show(fig)

# %% [markdown]
# Images where the objects are **dark on a light background** (H&E histology,
# many brightfield images) are inverted, so that objects are bright as in
# fluorescence, which is what the network was trained on. For RGB histology:
# take the luminance (`channels=("gray", None)`), normalise, and compute
# `1 - x` (`invert=True`). `data.histology_to_gray` does the inversion before
# the normalisation; since percentiles flip with the image, both orders agree.

# %%
histology = [(t, img) for t, img, _ in gallery if img.ndim == 3 and img.shape[-1] == 3]
if histology:
    title, rgb = histology[0]
else:  # no real data: a synthetic "stained" image, nuclei dark purple on pink
    title = "synthetic H&E stand-in"
    nuc = normalize.normalize_percentile(second.image).clip(0, 1)
    rgb = (np.array([0.95, 0.85, 0.9]) - nuc[..., None] * np.array([0.55, 0.65, 0.35]))
    rgb = (255 * rgb.clip(0, 1)).astype(np.uint8)

lum = rgb[..., :3].astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])  # the luminance weights
lo_l, hi_l = np.percentile(lum, [LOW, HIGH])
inverted_by_hand = 1 - (lum - lo_l) / (hi_l - lo_l)

net = normalize.to_network_input(rgb, channels=("gray", None), invert=True)
assert np.allclose(net[0], inverted_by_hand, atol=1e-4)
assert np.allclose(net[0], normalize.normalize_percentile(data.histology_to_gray(rgb)), atol=1e-4)
assert not net[1].any()

fig, axes = plt.subplots(1, 3, figsize=(12, 4))
axes[0].imshow(rgb)
axes[0].set_title(title)
axes[1].imshow(normalize.to_network_input(rgb, channels=("gray", None))[0], cmap="gray", vmin=0, vmax=1)
axes[1].set_title("luminance, normalised: nuclei dark")
axes[2].imshow(net[0], cmap="gray", vmin=0, vmax=1)
axes[2].set_title("inverted: nuclei bright, as in fluorescence")
for ax in axes:
    ax.set_axis_off()
show(fig)

# %% [markdown]
# > **Cellpose 1.0 or 3?** Per-image, per-channel percentile normalisation
# > (1st percentile -> 0, 99th -> 1) and the two-channel input (cytoplasm,
# > nuclei or zeros) are Cellpose 1.0's, and Cellpose 3 keeps them:
# > `cellpose` 3.1.1.2's `transforms.normalize99(lower=1, upper=99)` and
# > `normalize_img(percentile=(1., 99.))`. The **sparse-field rule** (99.9th
# > percentile when a channel is mostly background) is this package's, not
# > Cellpose's: 3.1.1.2 has no such rule (it offers tile-wise normalisation,
# > `tile_norm_blocksize`, instead). The `_seg.npy` and `_masks` folder formats
# > are those of Cellpose's GUI and training scripts.

# %% [markdown]
# ## In practice
#
# - **Per image, per channel.** Cellpose normalises every image on its own, so
#   a dim and a bright image of the same sample look alike to the network. Very
#   large images are better normalised tile by tile (or with percentiles over a
#   representative region), because a 1 % tail is a lot of pixels.
# - **Empty images.** In a field with no cells the 99th percentile is just
#   bright background, and normalisation stretches the noise to [0, 1], where
#   it looks like faint cells. Look at such images rather than trusting
#   whatever is segmented in them.
# - **Saturation.** If more than 1 % of the pixels are saturated, the 99th
#   percentile is the saturation value and the brightest cells become flat
#   plateaus. Adjust `high` (e.g. 99.8) or fix the acquisition.
# - **Sparse fields.** When the objects cover less than about 1 % of the
#   field, `to_network_input` normalises to the 99.9th percentile instead of
#   the 99th (`sparse_aware=True`, the default); `sparse_aware=False` is
#   Cellpose's fixed 1st-99th normalisation.
# - **Constant channels** become zeros, and NaN or inf pixels raise an error in
#   `normalize_percentile`: mask or fill them first.
# - **Channels.** The Cellpose GUI and CLI speak of channels as
#   `[cytoplasm, nucleus]` with 0 = gray, 1 = red, 2 = green, 3 = blue; here
#   `to_network_input(image, channels=(c, n))` takes 0-based indices into the
#   channel axis and `None` for "no nuclear channel".
# - **Size matters too.** Besides intensity, Cellpose rescales every image so
#   that the objects have the model's mean diameter (30 px for cells, 17 px for
#   nuclei). That step lives with prediction, not here.
# - **Labels on disk.** Keep labels in a lossless format (TIFF or PNG, never
#   JPEG) and an integer type wide enough for the object count (uint16 up to
#   65 535 objects). `write_labels` refuses to overwrite a file unless asked.
#
# ## Exercises
#
# 1. **Other percentiles.** Normalise the cytoplasm channel `x` with
#    percentiles (0.1, 99.9) and (5, 95). What fraction of the pixels falls
#    outside [0, 1] in each case? Which would you choose for an image with a
#    few very bright cells among many dim ones?

# %% tags=["solution"]
for low, high in [(0.1, 99.9), (LOW, HIGH), (5.0, 95.0)]:
    y = normalize.normalize_percentile(x, low=low, high=high)
    outside = np.mean((y < 0) | (y > 1))
    print(f"percentiles ({low:g}, {high:g}): {100 * outside:.2f} % of the pixels outside [0, 1]")
    assert abs(outside - (low + 100 - high) / 100) < 0.01  # by construction, about low + (100 - high) %
# A wide range (0.1, 99.9) keeps the few bright cells below 1 instead of clipping them flat;
# a narrow one (5, 95) saturates them but stretches the dim ones.

# %% [markdown]
# 2. **A folder with a missing mask.** Write three images into a temporary
#    folder but labels for only two of them. What does `read_folder` do? How
#    do you read the folder anyway, and how do you find the image without labels?

# %% tags=["solution"]
with tempfile.TemporaryDirectory() as tmp:
    for k in range(3):
        tifffile.imwrite(Path(tmp, f"img{k}_img.tif"), sample.image[..., 0])
        if k != 1:
            data.write_labels(Path(tmp, f"img{k}_masks.tif"), sample.labels)
    try:
        data.read_folder(tmp)
    except FileNotFoundError as err:
        print("read_folder refused:", err)
    found = data.read_folder(tmp, require_masks=False)
unlabelled = [s.name for s in found if s.labels is None]
print("images without labels:", unlabelled)
assert unlabelled == ["img1"]

# %% [markdown]
# 3. **Forget to invert.** Take the histology (or stand-in) image and build the
#    network input *without* `invert=True`. Compare the mean of channel 0 inside
#    and outside the nuclei (use the labels of the gallery image, or `second.labels`
#    for the stand-in). What would a network trained on fluorescence "see"?

# %% tags=["solution"]
truth = next((lab for t, img, lab in gallery if img is rgb), second.labels)
plain = normalize.to_network_input(rgb, channels=("gray", None))[0]
inside_plain, outside_plain = plain[truth > 0].mean(), plain[truth == 0].mean()
inside_inv, outside_inv = net[0][truth > 0].mean(), net[0][truth == 0].mean()
print(f"not inverted: nuclei {inside_plain:.2f}, background {outside_plain:.2f}")
print(f"inverted:     nuclei {inside_inv:.2f}, background {outside_inv:.2f}")
assert inside_plain < outside_plain and inside_inv > outside_inv
# Without inversion the nuclei are the dark holes in a bright field: to a fluorescence-trained
# network the background looks like one huge cell.


# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) Percentile normalisation, the two-channel input, and the data sets (CIL cells, DSB2018 nuclei among them).
# - Pachitariu, M. & Stringer, C. Cellpose 2.0: how to train your own model. *Nature Methods* 19, 1634-1641 (2022). [doi:10.1038/s41592-022-01663-4](https://doi.org/10.1038/s41592-022-01663-4) The GUI with human-in-the-loop training, whose `_seg.npy` files this notebook reads.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): the details marked "Cellpose 3" in this notebook were checked in its code.
# - Caicedo, J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. *Nature Methods* 16, 1247-1253 (2019). [doi:10.1038/s41592-019-0612-7](https://doi.org/10.1038/s41592-019-0612-7) The nuclei data (DSB2018, CC0).

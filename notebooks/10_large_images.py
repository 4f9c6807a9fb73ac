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
# # 10 · When your data outgrows one machine
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/10_large_images.ipynb) (replace OWNER with the repository's owner once it is published)
#
# A whole-slide scan or a tiled mosaic can be 50,000 pixels on a side, and
# `segment` holds the image, its flows and its labels in memory at once. The
# way out is to cut the image into **blocks**, segment each block on its own
# (on as many cores, GPUs or machines as you have), and **stitch** the
# blocks' labels so that a cell cut by a block line is still one cell. This
# notebook does that on a synthetic image stored as zarr, with
# `cellpose_nb.distributed.segment_large` on a
# [dask.distributed](https://distributed.dask.org) cluster, and opens up
# every step: the block grid and its halos, a cell before and after
# stitching, the stitching rule written by hand, and why it compares the
# blocks' masks where they overlap instead of checking which labels touch.
#
# **What you will learn**
#
# - why a large image does not fit `segment`: the bytes per pixel it returns;
# - blocks, halos and the network's pixel grid: the block layout by hand,
#   checked against `block_grid`, and drawn over the image;
# - running `segment_large` on a dask `LocalCluster` (the dashboard, dask's
#   progress bar, the memory of each worker);
# - stitching: a cell cut by a block line, in each block's labels and after
#   stitching; the IoU matching in the blocks' overlap and the global ids
#   written by hand, checked against the package label for label; why
#   this beats linking labels that touch across the line after a shrink
#   (Cellpose's `contrib/distributed_segmentation.py`);
# - the outputs: the per-cell table (summed from the blocks) and an OME-Zarr
#   labels image with its pyramid;
# - resuming an interrupted run, and pointing the same code at an existing
#   cluster (`Client(address)`, `--scheduler`, dask-jobqueue on SLURM);
# - how the block-wise masks compare with whole-image `segment`;
# - volumes block by block: halos in Z, the 13 neighbours of a 3-D block.
#
# **What you need**: notebook 00 (segmenting with the shipped model) and 06
# (IoU matching and AP). The `distributed` extra (`pip install
# 'cellpose-nb[distributed]'`: dask, distributed, zarr, ome-zarr). A CPU with
# two cores is enough; the image is small enough to segment whole as well, so
# that the two results can be compared.

# %% [markdown]
# ### Optional: set-up on Google Colab (skip anywhere else)
#
# The next cell does nothing unless it runs on Google Colab. There it installs
# this package with its `distributed` extra from its repository (Colab's own
# numpy, torch, dask and the rest are kept) and turns on Colab's widget manager. Edit
# `REPO_URL` if you work from a fork.

# %%
# Colab set-up: skippable, does nothing outside Colab.
REPO_URL = "https://github.com/OWNER/cellpose_nb"  # placeholder: the repository to install from

try:
    import google.colab  # noqa: F401

    IN_COLAB = True
except ImportError:
    IN_COLAB = False

if IN_COLAB:
    import sys

    from IPython import get_ipython
    from google.colab import output

    # Keep every preinstalled package at Colab's version (numpy, torch, dask, fsspec...): as
    # constraints, they make pip pick versions of the extra's new packages (ome-zarr, s3fs) that fit.
    KEEP = "/tmp/colab-preinstalled.txt"
    get_ipython().system(f"{sys.executable} -m pip freeze | grep -E '^[A-Za-z0-9._-]+==' > {KEEP}")
    get_ipython().run_line_magic("pip", f'install --quiet -c {KEEP} "cellpose-nb[distributed] @ git+{REPO_URL}"')
    output.enable_custom_widget_manager()

# %%
# Every knob of this notebook.
import os

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: a 2048 x 2048 image (full: 4096 x 4096)
TITLE_SIZE = 10  # one title size for every figure (matplotlib points)

MODEL = "nuclei"  # the model shipped with the package (its diam_mean: 17 px)
DIAMETER = 34.0  # nucleus diameter in pixels: the network sees the image at half size
SIZE = 2048 if QUICK else 4096  # side of the large synthetic image, pixels
BLOCK = 512 if QUICK else 1024  # side of a block's core, pixels (the package's default is 1024)
CELLS_PER_MEGAPIXEL = 420  # synthetic nuclei per 1024 x 1024 pixels: about 40 % of the area
SEED = 0  # seed of the synthetic image
N_WORKERS = 2  # dask worker processes of the local cluster
THREADS_PER_WORKER = 1  # each worker segments one block at a time, torch and numba on one core
WORKER_MEMORY = "2GiB"  # memory limit of each worker (a block of 1024 px needs about 1 GB)
KERNEL_THREADS = 1 if QUICK else None  # torch threads of this notebook's own process (None: torch's default)
RESUME_UNDONE = 2  # blocks whose "done" record is erased to play an interrupted run (section 7)
CROP = 512  # side of the small image sent to the cluster by its address (section 8)
IOU_THRESHOLDS = (0.5, 0.9)  # AP is reported at these IoUs
MIN_AP_VS_WHOLE = (0.99, 0.97)  # block-wise masks against whole-image `segment`, at those IoUs
WORK = None  # folder of the zarr stores; None: a temporary folder, removed at the end
VOLUME = (24, 128, 128) if QUICK else (48, 160, 160)  # (Z, Y, X) of the synthetic volume (section 10)
VOLUME_BLOCK = (24, 64, 64) if QUICK else (24, 80, 80)  # its blocks: in-plane only (QUICK) or every axis
ANISOTROPY = 2.0  # its Z step over its pixel size
NUCLEUS_3D = 16.0  # its nuclei's diameter, pixels (cells of 36 px)

# %%
import importlib.util
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import distributed
import matplotlib.pyplot as plt
import numpy as np
import torch
import zarr
from IPython.display import display
from matplotlib.patches import Rectangle
from scipy import ndimage

from cellpose_nb import plot
from cellpose_nb.data import make_synthetic, make_synthetic_volume
from cellpose_nb.distributed import (
    STITCH_IOU,
    block_grid,
    global_labels,
    halo_for,
    match_labels,
    segment_large,
)
from cellpose_nb.distributed.blocks import grid_step, grid_shape, halos, match_region, neighbour_pairs, within
from cellpose_nb.distributed.quality import SPLIT_SHARE, crossing_labels, merged_labels, split_labels
from cellpose_nb.distributed.stitch import STITCH_CONTAINED
from cellpose_nb.distributed.run import work_store_for
from cellpose_nb.export import cell_table
from cellpose_nb.metrics import matching
from cellpose_nb.model import load_pretrained
from cellpose_nb.predict import PAD_MULTIPLE, segment

if KERNEL_THREADS is not None:
    torch.set_num_threads(KERNEL_THREADS)
plt.rcParams.update({"axes.titlesize": TITLE_SIZE, "figure.titlesize": TITLE_SIZE})


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def plural(n, noun, nouns=None):
    """'1 cell', '4 cells': a count with the right form of its noun."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def ap_text(true, pred):
    """AP at IOU_THRESHOLDS of one image, as '0.998 / 0.986'."""
    return " / ".join(f"{m.ap:.3f}" for m in matching(true, pred, thresholds=IOU_THRESHOLDS))


def ids_of(labels):
    """The labels (not 0) present in an array, as a sorted list of ints."""
    return [int(v) for v in np.unique(labels) if v]


def peak_memory_gb():
    """This process's peak resident memory, GB: VmHWM on Linux (a worker spawned by fork and exec
    starts afresh there, while its ru_maxrss starts at its parent's size), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2 ** 20
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return peak / 2 ** (30 if sys.platform == "darwin" else 20)


def draw_labels(ax, image, labels, title, *, alpha=0.35):
    """An image with its labels in colour and outlined."""
    ax.imshow(plot.overlay_rgb(plot.image_to_rgb(image), labels, alpha=alpha), interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()


# %% [markdown]
# ## 1. Why a large image does not fit `segment`
#
# `segment` returns the labels, the flows and the cell probability of the
# whole image, and it needs the image itself. Counted on a small image:

# %%
net = load_pretrained(MODEL)
small = make_synthetic((256, 256), n_cells=25, diameter=DIAMETER, kind="nuclei", seed=SEED)
res_small = segment(small.image, net, diameter=DIAMETER)
arrays = {"image": small.image, "labels": res_small.labels, "flows": res_small.flows, "cellprob": res_small.cellprob}
per_pixel = {name: a.nbytes / small.image.size for name, a in arrays.items()}
print("bytes per pixel:", ", ".join(f"{k} {v:g}" for k, v in per_pixel.items()),
      f"(total {sum(per_pixel.values()):g})")
# float32 image, int32 labels, (2, H, W) float32 flows, float32 cellprob
assert per_pixel == {"image": 4, "labels": 4, "flows": 8, "cellprob": 4}
for side, what in ((SIZE, "this notebook's image"), (16384, "a 16384 x 16384 mosaic"),
                   (50000, "a 50,000 x 50,000 slide")):
    print(f"{what:>26s}: {side * side * sum(per_pixel.values()) / 2 ** 30:7.1f} GiB of results")

# %% [markdown]
# That is only what comes back: while it runs, `segment` also holds the
# network's two-channel input, the image resized to the model's diameter and
# the outputs of its tiles. A slide of 50,000 pixels on a side would need
# about a quarter of a terabyte. Block by block, a worker holds one block
# at a time, and the memory it needs depends on the block size, not on the
# image.
#
# ## 2. A large image, stored as zarr
#
# Large images live in chunked formats, so that a worker can read one region
# without reading the rest: [zarr](https://zarr.dev) and its microscopy
# flavour [OME-Zarr](https://ngff.openmicroscopy.org) (a converter such as
# `bioformats2raw` turns a vendor's slide file into one), or a tiled TIFF.
# Here a synthetic image of nuclei is drawn (we keep it in memory too, to
# check the result against whole-image segmentation at the end) and written
# to a zarr array in chunks of the block size, one strip of chunks at a time,
# as a converter would.

# %%
work = Path(tempfile.mkdtemp(prefix="cpnb_large_")) if WORK is None else Path(WORK)
n_cells = round(CELLS_PER_MEGAPIXEL * SIZE ** 2 / 2 ** 20)
t0 = time.perf_counter()
sample = make_synthetic((SIZE, SIZE), n_cells=n_cells, diameter=DIAMETER, kind="nuclei", seed=SEED)
truth = sample.labels
image_path = work / "image.zarr"
stored = zarr.create_array(store=str(image_path), shape=sample.image.shape, chunks=(BLOCK, BLOCK),
                           dtype=sample.image.dtype, overwrite=True)
for r in range(0, SIZE, BLOCK):
    stored[r:r + BLOCK] = sample.image[r:r + BLOCK]
on_disk = sum(f.stat().st_size for f in image_path.rglob("*") if f.is_file())
print(f"{SIZE} x {SIZE} image, {plural(int(truth.max()), 'nucleus', 'nuclei')}, drawn and written in "
      f"{time.perf_counter() - t0:.0f} s")
print(f"{image_path.name}: {stored.dtype}, chunks {stored.chunks}, {stored.nchunks} chunks, "
      f"{on_disk / 2 ** 20:.1f} MiB on disk ({sample.image.nbytes / 2 ** 20:.0f} MiB in memory)")
reread = zarr.open_array(str(image_path), mode="r")
assert np.array_equal(reread[BLOCK - 7:BLOCK + 9, 100:140], sample.image[BLOCK - 7:BLOCK + 9, 100:140])

# %% [markdown]
# ## 3. Blocks and halos
#
# The image is cut into **cores** of `BLOCK` pixels (the last row and column
# of cores take what is left, so the block size need not divide the image).
# Each core is segmented together with a **halo** on every side, clipped at
# the image border: its **extended region**. The network then sees the
# context of every pixel of the core, and every cell that touches the core
# lies wholly inside the extended region. The block writes only its core.
#
# How wide a halo? Two cell diameters (`HALO_DIAMETERS = 2`), here 68 px.
# The package rounds it up to the network's **pixel grid**: the network sees
# the image rescaled by `diam_mean / diameter` (17 / 34, a half) and is
# translation-equivariant for shifts of 16 of its pixels (`PAD_MULTIPLE`),
# that is 32 image pixels here. When every extended region starts on a
# multiple of 32, each block gets the same network outputs as the whole
# image would, so the blocks agree with each other (and with `segment`)
# where they overlap. 68 px becomes 96 px.
#
# The layout by hand, then the package's:

# %%
diam_mean = float(net.config.diam_mean)
step = PAD_MULTIPLE * DIAMETER / diam_mean  # image pixels per 16 network pixels
halo = int(np.ceil(2 * DIAMETER))  # two diameters
if step == round(step) and BLOCK % round(step) == 0:
    halo = int(np.ceil(halo / step) * step)  # rounded up to the network's grid
by_hand = []
for i, r0 in enumerate(range(0, SIZE, BLOCK)):
    for j, c0 in enumerate(range(0, SIZE, BLOCK)):
        r1, c1 = min(r0 + BLOCK, SIZE), min(c0 + BLOCK, SIZE)
        core = (slice(r0, r1), slice(c0, c1))
        ext = (slice(max(r0 - halo, 0), min(r1 + halo, SIZE)), slice(max(c0 - halo, 0), min(c1 + halo, SIZE)))
        by_hand.append(((i, j), core, ext))
# the pairs of blocks whose extended regions overlap: right, lower-left, lower and lower-right neighbours
where = {index: k for k, (index, _, _) in enumerate(by_hand)}
pairs_by_hand = [(k, where[(i + di, j + dj)]) for k, ((i, j), _, _) in enumerate(by_hand)
                 for di, dj in ((0, 1), (1, -1), (1, 0), (1, 1)) if (i + di, j + dj) in where]

blocks = block_grid((SIZE, SIZE), BLOCK, halo)
assert halo == halo_for(DIAMETER, multiple=grid_step(DIAMETER, diam_mean, PAD_MULTIPLE))
assert [(b.index, b.core, b.ext) for b in blocks] == by_hand
assert sorted(neighbour_pairs(blocks)) == sorted(pairs_by_hand)
segmented = sum((e[0].stop - e[0].start) * (e[1].stop - e[1].start) for _, _, e in by_hand)
print(f"{plural(len(blocks), 'block')} of {BLOCK} px, halo {halo} px ({halo / DIAMETER:.1f} diameters), "
      f"{plural(len(pairs_by_hand), 'pair')} of neighbours; the blocks segment {segmented / SIZE ** 2:.2f}x "
      f"the image's pixels (an inner block {(BLOCK + 2 * halo) ** 2 / BLOCK ** 2:.2f}x its core)")

# %% [markdown]
# Drawn over the image: the core lines (white), one inner block's extended
# region (yellow) and its right neighbour's (cyan). Two neighbours both
# segment the strip where their extended regions overlap, two halos wide;
# stitching compares their labels only in the middle of it, within half a
# halo of the core line (hatched, `blocks.match_region`), where both blocks
# are at least half a halo from the edge of what they segmented.

# %%
a_blk, b_blk = blocks[where[1, 1]], blocks[where[1, 2]]  # an inner block and its right neighbour (a 4 x 4 grid)
margin = max(1, halo // 2)  # the package's: half a halo
band = match_region(a_blk, b_blk, margin)
thumb = max(1, SIZE // 1024)  # the overview shows every thumb-th pixel
fig, axes = plt.subplots(1, 2, figsize=(13, 6.4))
axes[0].imshow(sample.image[::thumb, ::thumb], cmap="gray", extent=(0, SIZE, SIZE, 0))
zoom = (slice(a_blk.core[0].start + BLOCK // 2 - 3 * halo // 2, a_blk.core[0].start + BLOCK // 2 + 3 * halo // 2),
        slice(a_blk.core[1].stop - 3 * halo // 2, a_blk.core[1].stop + 3 * halo // 2))
axes[1].imshow(sample.image[zoom], cmap="gray",
               extent=(zoom[1].start, zoom[1].stop, zoom[0].stop, zoom[0].start))
for ax in axes:
    for line in range(BLOCK, SIZE, BLOCK):
        ax.axhline(line, color="white", lw=0.8)
        ax.axvline(line, color="white", lw=0.8)
    for blk, colour in ((a_blk, "yellow"), (b_blk, "cyan")):
        (r, c) = blk.ext
        ax.add_patch(Rectangle((c.start, r.start), c.stop - c.start, r.stop - r.start, fill=False,
                               ec=colour, lw=1.6, ls="--"))
    ax.add_patch(Rectangle((band[1].start, band[0].start), band[1].stop - band[1].start,
                           band[0].stop - band[0].start, fill=False, ec="orange", hatch="///", lw=0.8))
axes[1].set_xlim(zoom[1].start, zoom[1].stop)
axes[1].set_ylim(zoom[0].stop, zoom[0].start)
axes[0].set_title(f"{SIZE} x {SIZE}: cores of {BLOCK} px, extended regions of blocks {a_blk.index} and {b_blk.index}")
axes[1].set_title(f"zoom on their core line: halos of {halo} px, the compared band of {2 * margin} px (hatched)")
show(fig)

# %% [markdown]
# ## 4. Segmenting on a dask cluster
#
# dask.distributed runs Python functions ("tasks") on **workers**, processes
# that may live on this machine or on others, coordinated by a
# **scheduler**. A `LocalCluster` starts a scheduler and workers here. Each
# worker gets one thread: a block is one task, and blocks run in parallel
# across workers, not inside one. (The `env` below tells numba too: its
# OpenMP threading layer would otherwise set the process's thread count to
# all cores at its first parallel loop, and torch follows it, so that each
# "single-threaded" worker would run torch on every core and the workers
# would fight for them. `segment_large` sets numba's count in each of its
# own tasks as well; the `env` makes it hold for whatever else the workers run.)
#
# The **dashboard** shows the tasks, the workers' memory and a progress bar
# in the browser (it needs the `bokeh` package); dask's text progress bar
# below shows the blocks as they finish.

# %%
cluster = distributed.LocalCluster(n_workers=N_WORKERS, threads_per_worker=THREADS_PER_WORKER, processes=True,
                                   memory_limit=WORKER_MEMORY, dashboard_address=":0",
                                   env={"NUMBA_NUM_THREADS": str(THREADS_PER_WORKER)})
client = distributed.Client(cluster)
print("dashboard:", client.dashboard_link)
if importlib.util.find_spec("bokeh") is None:
    print("  (bokeh is not installed here, so nothing answers at that address: `pip install bokeh` to see it)")
workers = client.scheduler_info()["workers"]
print(f"{plural(len(workers), 'worker')}: {sorted(w['nthreads'] for w in workers.values())} threads, "
      f"{WORKER_MEMORY} each; the scheduler is at {cluster.scheduler_address}")
assert len(workers) == N_WORKERS

# %% [markdown]
# `segment_large` takes the path of the store, the model's name (each worker
# loads the model once) and the output's name, whose ending picks the
# format: `.ome.zarr` here. `keep_work=True` keeps the per-block results
# (the *work store*), which sections 5 and 7 look into.

# %%
out = work / "masks.ome.zarr"
t0 = time.perf_counter()
res = segment_large(image_path, MODEL, out=out, diameter=DIAMETER, block_size=BLOCK, client=client,
                    progress=True, keep_work=True)
t_blocks = time.perf_counter() - t0
peaks = client.run(peak_memory_gb)  # each worker's own peak
print(f"\n{plural(res.n_cells, 'cell')} in {plural(res.n_blocks, 'block')} (halo {res.halo[-1]} px) in {t_blocks:.0f} s "
      f"on {plural(N_WORKERS, 'worker')}; peak memory per worker "
      f"{', '.join(f'{p:.2f}' for p in peaks.values())} GB")
for note in res.notes:
    print("note:", note)
assert res.n_blocks == len(blocks) and res.halo == (halo, halo) and res.n_resumed == 0
assert any("network's grid" in note for note in res.notes)
assert max(peaks.values()) < 2  # one block at a time: far below the whole image's needs
root = zarr.open_group(str(out), mode="r")
levels = [d["path"] for d in root["labels/masks"].attrs["ome"]["multiscales"][0]["datasets"]]
stitched = root[f"labels/masks/{levels[0]}"][:]
assert stitched.shape == (SIZE, SIZE) and stitched.max() == res.n_cells

# %% [markdown]
# ## 5. Inside the stitching
#
# Every block segmented its whole extended region, and numbered its cells
# 1, 2, 3, ... on its own. Those per-block labels are in the work store (its
# layout is the package's business; we peek at it here).

# %%
store = zarr.open_group(str(work_store_for(out)), mode="r")
counts = store["count"][:]  # each block's number of labels: its "done" record


def block_labels(block):
    """The block-local labels that `block` got on its extended region, from the work store."""
    (i, j), (h, w) = block.index, block.ext_shape
    return store["ext"][i, j, :h, :w]


ext_labels = [block_labels(b) for b in blocks]
core_labels = [lab[b.core_in_ext] for lab, b in zip(ext_labels, blocks)]
assert all(lab.max() == counts[b.index] for lab, b in zip(ext_labels, blocks))
print(f"labels per block: {counts.ravel().tolist()}  (sum {counts.sum()}, against {res.n_cells} cells)")

# %% [markdown]
# **A cell cut by a block line.** Take a true nucleus that straddles the
# line between the two blocks drawn above, about half on each side. Each
# block has all of it (it lies within both extended regions), under its own
# number; each core has half of it. Without stitching, the two halves would
# be two labels; after, they are one.

# %%
line = a_blk.core[1].stop  # the core line between the two blocks (a column)
rows = slice(a_blk.core[0].start + int(DIAMETER), a_blk.core[0].stop - int(DIAMETER))  # away from the corners
on_line = set(np.unique(truth[rows, line - 1])) & set(np.unique(truth[rows, line])) - {0}
area = np.bincount(truth.ravel())
left = np.bincount(truth[:, :line].ravel(), minlength=area.size)
cell = min(on_line, key=lambda c: abs(left[c] / area[c] - 0.5) + abs(area[c] / np.median(area[1:]) - 1))
rr, cc = np.nonzero(truth == cell)
view = (slice(rr.min() - 25, rr.max() + 26), slice(cc.min() - 25, cc.max() + 26))


def in_block(block, labels, region):
    """`labels` of `block` (ext coordinates) over the image `region`, 0 outside its extended region."""
    out_ = np.zeros([s.stop - s.start for s in region], labels.dtype)
    inter = [slice(max(r.start, e.start), min(r.stop, e.stop)) for r, e in zip(region, block.ext)]
    out_[tuple(slice(i.start - r.start, i.stop - r.start) for i, r in zip(inter, region))] = \
        labels[tuple(slice(i.start - e.start, i.stop - e.start) for i, e in zip(inter, block.ext))]
    return out_


ka, kb = blocks.index(a_blk), blocks.index(b_blk)
la, lb = in_block(a_blk, ext_labels[ka], view), in_block(b_blk, ext_labels[kb], view)
mine = truth[view] == cell
id_a, id_b = (np.bincount(lab[mine]).argmax() for lab in (la, lb))
luts0, _ = global_labels([counts[b.index] for b in blocks], [], [np.bincount(c.ravel(), minlength=counts[b.index] + 1)
                                                                  for c, b in zip(core_labels, blocks)])
unstitched = np.zeros((SIZE, SIZE), np.int64)  # every block's cells numbered apart, no links
for b, c, lut in zip(blocks, core_labels, luts0):
    unstitched[b.core] = lut[c]
print(f"true nucleus {cell}: label {id_a} in block {a_blk.index}, label {id_b} in block {b_blk.index}; "
      f"without stitching labels {ids_of(unstitched[view][mine])}, stitched: label {ids_of(stitched[view][mine])}")
assert len(ids_of(unstitched[view][mine])) == 2 and len(ids_of(stitched[view][mine])) == 1

fig, axes = plt.subplots(1, 4, figsize=(15, 4.3))
img = sample.image[view]
draw_labels(axes[0], img, np.where(la == id_a, la, 0), f"block {a_blk.index}: label {id_a} (whole)")
draw_labels(axes[1], img, np.where(lb == id_b, lb, 0), f"block {b_blk.index}: label {id_b} (whole)")
draw_labels(axes[2], img, unstitched[view], "cores, not stitched: two labels")
draw_labels(axes[3], img, stitched[view], "stitched: one label")
for ax in axes:
    ax.axvline(line - view[1].start - 0.5, color="white", lw=1, ls=":")
show(fig)

# %% [markdown]
# **The rule, by hand.** For each pair of neighbouring blocks, take both
# blocks' labels over the band where they are compared (half a halo on each
# side of the core line). Two labels are the same cell when the IoU of their
# masks *in that band* is at least `STITCH_IOU` = 0.5, each label used once,
# best pairs first (above 0.5 a label can have only one such partner
# anyway: notebook 06). A cell that crosses the line and is smaller than
# the band lies wholly inside it in both blocks, so its IoU is close to 1.
#
# > **Write it yourself ★★: `match_by_iou`**, checked against the package's
# > `match_labels` on every pair of neighbouring blocks.

# %% tags=["skeleton"]
def match_by_iou(a, b, min_iou=STITCH_IOU):
    """Pairs (label of a, label of b), sorted, of two views `a` and `b` of one region that are one cell.

    A pair is linked when the IoU of the two masks in the region is at least `min_iou`;
    each label is linked at most once, the pairs of largest IoU first.
    """
    # Hint: for each label u of a (not 0), the labels v of b that overlap it are
    #   np.unique(b[a == u]); IoU = |both| / |either|. Collect (iou, u, v) for IoU >= min_iou,
    #   sort by IoU, largest first, and keep a pair only when neither u nor v is used yet.
    found = []
    for u in np.unique(a[a > 0]):
        in_u = a == u
        for v in np.unique(b[in_u & (b > 0)]):
            in_v = b == v
            iou = (in_u & in_v).sum() / (in_u | in_v).sum()
            if iou >= min_iou:
                found.append((iou, int(u), int(v)))
    used_a, used_b, pairs = set(), set(), []
    for iou, u, v in sorted(found, key=lambda t: -t[0]):
        if u not in used_a and v not in used_b:
            used_a.add(u)
            used_b.add(v)
            pairs.append((u, v))
    return sorted(pairs)


# %% [markdown]
# **When the blocks disagree.** Near its edge a block sometimes merges a
# cell with its neighbour, or splits it, where the other block does not.
# Then IoU leaves a label of one block without a partner, and that cell
# would be cut at the line. The package joins such a label to the other
# block's label that holds at least `STITCH_CONTAINED` (half) of it in the
# band: the cell stays whole, merged with its neighbour where one block
# merged them, a merge rather than a cut. Only labels without an IoU partner
# are joined, so a cell that both blocks see alike is matched by IoU alone.

# %%
def join_partnerless(a, b, pairs, share=STITCH_CONTAINED):
    """`pairs` plus (u, v) where the smaller of u (in a) and v (in b) has no partner and lies `share` inside the other."""
    partnered_a, partnered_b = {u for u, _ in pairs}, {v for _, v in pairs}
    out = set(pairs)
    for u in np.unique(a[a > 0]):
        in_u = a == u
        for v in np.unique(b[in_u & (b > 0)]):
            in_v = b == v
            smaller_alone = u not in partnered_a if in_u.sum() <= in_v.sum() else v not in partnered_b
            if smaller_alone and (in_u & in_v).sum() >= share * min(in_u.sum(), in_v.sum()):
                out.add((int(u), int(v)))
    return sorted(out)



def band_by_hand(a, b, margin):
    """Where a and b are compared: both cores grown by `margin`, and both extended regions, intersected."""
    return tuple(slice(max(ca.start - margin, cb.start - margin, ea.start, eb.start),
                       min(ca.stop + margin, cb.stop + margin, ea.stop, eb.stop))
                 for ca, cb, ea, eb in zip(a.core, b.core, a.ext, b.ext))


links, n_joined = {}, 0
for ka_, kb_ in pairs_by_hand:
    a, b = blocks[ka_], blocks[kb_]
    region = band_by_hand(a, b, margin)
    assert region == match_region(a, b, margin)
    va, vb = ext_labels[ka_][within(region, a)], ext_labels[kb_][within(region, b)]
    by_iou = match_by_iou(va, vb)
    links[ka_, kb_] = join_partnerless(va, vb, by_iou)
    n_joined += len(links[ka_, kb_]) - len(by_iou)
    assert np.array_equal(np.array(links[ka_, kb_], np.int64).reshape(-1, 2), match_labels(va, vb))
print(f"{sum(map(len, links.values()))} links over {plural(len(links), 'pair')} of blocks "
      f"({n_joined} of them partnerless labels joined), the same as match_labels for every pair")

# %% [markdown]
# Links chain: a cell at the corner of four blocks is linked across several
# pairs (the diagonal ones too). Every linked group of (block, label) nodes
# is one cell: the connected components of the link graph, here with a
# small union-find. The cells are then numbered 1..N in the order of their
# first (block, label); a group whose labels have no pixel in any core (a
# cell seen only in halos) gets no number. Each core is written through its
# block's look-up table, local label -> global id.

# %%
parent = {}


def find(node):
    """The root of `node`'s group: the first (block, label) of the group, in block order."""
    while parent.get(node, node) != node:
        node = parent[node]
    return node


for (ka_, kb_), prs in links.items():
    for u, v in prs:
        ra, rb = find((ka_, u)), find((kb_, v))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

core_area = {}
for k, (b, c) in enumerate(zip(blocks, core_labels)):
    area_k = np.bincount(c.ravel(), minlength=counts[b.index] + 1)
    for lab in range(1, counts[b.index] + 1):
        core_area[k, lab] = int(area_k[lab])
group_area = {}
for node, px in core_area.items():
    group_area[find(node)] = group_area.get(find(node), 0) + px
new_id = {}
for root_node in sorted(group_area):
    if group_area[root_node] > 0:
        new_id[root_node] = len(new_id) + 1

by_hand_labels = np.zeros((SIZE, SIZE), np.int64)
for k, (b, c) in enumerate(zip(blocks, core_labels)):
    lut = np.array([0] + [new_id.get(find((k, lab)), 0) for lab in range(1, counts[b.index] + 1)], np.int64)
    by_hand_labels[b.core] = lut[c]
print(f"{len(new_id)} cells by hand, {res.n_cells} by the package")
assert np.array_equal(by_hand_labels, stitched)  # label for label, pixel for pixel

# %% [markdown]
# **Why compare masks in the overlap, not labels that touch?** Cellpose's own
# block-wise script (`cellpose/contrib/distributed_segmentation.py`) throws
# each block's halo away after segmenting it, keeps only the core, and
# links two labels when they **touch across the block line**: it takes the
# two facing lines of pixels (the last of one core, the first of the next),
# *shrinks* the labels on each line (zeroes their edge pixels, then what is
# within a pixel of a zero, so that two neighbours on the same line do not
# join), and links what still touches. Written out for 2-D blocks:

# %%
def shrink_face(face):
    """Cellpose's shrink of a line of labels: zero the label edges, then what lies within 1 px of a zero."""
    out_ = face.copy()
    out_[np.abs(np.gradient(face.astype(float))) > 0] = 0
    out_[ndimage.distance_transform_edt(out_) <= 1] = 0
    return out_


def touching_links(face_a, face_b):
    """(label of a, label of b) pairs that face each other across the line after the shrink."""
    sa, sb = shrink_face(face_a), shrink_face(face_b)
    both = (sa > 0) & (sb > 0)
    return sorted(set(zip(sa[both].tolist(), sb[both].tolist())))


# %% [markdown]
# Two things go wrong with touching. A toy with exact per-block labels (each
# block "segments" its extended region perfectly) shows both: nuclei 1 and
# 2 have just divided along a line that happens to be the block line, so
# they touch along it; nucleus 3 crosses the line by only a sliver; nucleus
# 4 crosses it well.

# %%
TOY_SHAPE, TOY_LINE, TOY_HALO = (44, 40), 20, 10
ty, tx = np.indices(TOY_SHAPE)
toy = np.zeros(TOY_SHAPE, np.int64)
disc = (ty - 10) ** 2 + (tx - 19.5) ** 2 <= 7.5 ** 2
toy[disc & (tx < TOY_LINE)], toy[disc & (tx >= TOY_LINE)] = 1, 2  # two daughters, split along the line
toy[(ty - 27) ** 2 + (tx - 14.0) ** 2 <= 6.3 ** 2] = 3  # a sliver beyond the line
toy[(ty - 36) ** 2 / 25 + (tx - 23) ** 2 / 64 <= 1] = 4  # well across it
toy_blocks = block_grid(TOY_SHAPE, (TOY_SHAPE[0], TOY_LINE), TOY_HALO)
toy_ext = [np.unique(toy[b.ext], return_inverse=True)[1].reshape(b.ext_shape) for b in toy_blocks]  # local ids
toy_cores = [e[b.core_in_ext] for e, b in zip(toy_ext, toy_blocks)]
toy_band = match_region(*toy_blocks, TOY_HALO // 2)
rules = {"IoU in the overlap": match_by_iou(*(e[within(toy_band, b)] for e, b in zip(toy_ext, toy_blocks))),
         "touching after a shrink": touching_links(toy_cores[0][:, -1], toy_cores[1][:, 0])}


def stitch_with(pair_links, cores, blks, n_labels):
    """The stitched image of the blocks' `cores`, given the links of each pair of blocks
    ({(a, b): pairs of labels}) and each block's number of labels (the package's global ids)."""
    areas = [np.bincount(c.ravel(), minlength=n + 1) for c, n in zip(cores, n_labels)]
    luts, _ = global_labels(n_labels, [(ka_, kb_, np.array(p, np.int64).reshape(-1, 2))
                                       for (ka_, kb_), p in pair_links.items()], areas)
    img_ = np.zeros((max(b.core[0].stop for b in blks), max(b.core[1].stop for b in blks)), np.int64)
    for b, c, lut in zip(blks, cores, luts):
        img_[b.core] = lut[c]
    return img_


fig, axes = plt.subplots(1, 3, figsize=(11, 4.2))
toy_image = (toy > 0).astype(np.float32)
draw_labels(axes[0], toy_image, toy, "truth (and every block's labels)", alpha=0.6)
toy_out = {}
for ax, (name, prs) in zip(axes[1:], rules.items()):
    toy_out[name] = stitch_with({(0, 1): prs}, toy_cores, toy_blocks, [int(e.max()) for e in toy_ext])
    draw_labels(ax, toy_image, toy_out[name], f"{name}: {plural(len(ids_of(toy_out[name])), 'label')}", alpha=0.6)
    print(f"{name:>24s}: links {prs}; true nucleus -> labels "
          + ", ".join(f"{k}: {ids_of(toy_out[name][toy == k])}" for k in (1, 2, 3, 4)))
for ax in axes:
    ax.axvline(TOY_LINE - 0.5, color="white", lw=1, ls=":")
show(fig)
iou_toy, touch_toy = toy_out["IoU in the overlap"], toy_out["touching after a shrink"]
assert [ids_of(iou_toy[toy == k]) for k in (1, 2, 3, 4)] == [[1], [2], [3], [4]]  # every nucleus right
assert ids_of(touch_toy[toy == 1]) == ids_of(touch_toy[toy == 2])  # the daughters merged
assert len(ids_of(touch_toy[toy == 3])) == 2  # the sliver cut off

# %% [markdown]
# - **Touching merges cells that meet at the line.** Across the line, the
#   two daughters face each other over their whole contact: touching links
#   them, and the shrink cannot help, since it only separates labels that
#   meet *along* the line. In the overlap, each block sees both daughters
#   whole and tells them apart, so their IoUs link daughter to daughter.
# - **Touching cuts off slivers.** Nucleus 3 reaches over the line by a few
#   pixels; the shrink zeroes them, nothing touches, and the sliver becomes
#   a cell of its own. In the overlap both blocks see all of nucleus 3.
# - **One to one.** When the two blocks disagree about a cell (one splits
#   it, or merges it with a neighbour), the labels alone cannot say what is
#   right. Touching links whatever touches, and chains of links can merge
#   several cells into one; the IoU rule links only pairs that mostly agree,
#   each label once, and a label left without a partner joins only the
#   label it lies in (a merge where one block merged, never a cut).
#
# On the real image, from the same per-block labels, the three choices
# (no links, touching after a shrink, IoU in the overlap) against the truth:

# %%
where_blk = {b.index: k for k, b in enumerate(blocks)}
touch_links = {}
for k, b in enumerate(blocks):  # the faces along each axis, as cellpose's script (no diagonal pairs)
    i, j = b.index
    if (i, j + 1) in where_blk:  # the last column of this core, the first of its right neighbour's
        right = where_blk[i, j + 1]
        touch_links[k, right] = touching_links(core_labels[k][:, -1], core_labels[right][:, 0])
    if (i + 1, j) in where_blk:  # the last row, the first of the lower neighbour's
        below = where_blk[i + 1, j]
        touch_links[k, below] = touching_links(core_labels[k][-1, :], core_labels[below][0, :])
n_labels = [int(counts[b.index]) for b in blocks]
touching = stitch_with(touch_links, core_labels, blocks, n_labels)
crossing = crossing_labels(truth, BLOCK)
summary = {}
for name, pred in (("no links", unstitched), ("touching after a shrink", touching), ("IoU in the overlap", stitched)):
    summary[name] = (int(pred.max()), len(split_labels(truth, pred, crossing)), len(merged_labels(truth, pred)))
    print(f"{name:>24s}: {plural(summary[name][0], 'label')}, {summary[name][1]} of "
          f"{len(crossing)} crossing nuclei split, {summary[name][2]} labels over two nuclei; "
          f"AP@{'/'.join(map(str, IOU_THRESHOLDS))} against the truth {ap_text(truth, pred)}")
assert summary["no links"][1] > len(crossing) // 4  # stitching matters
assert summary["IoU in the overlap"][1] <= summary["touching after a shrink"][1]
assert summary["IoU in the overlap"][2] <= summary["touching after a shrink"][2]

# %% [markdown]
# On these synthetic nuclei the two rules differ on only a few cells (the
# counts above): touching nuclei meet exactly at a block line rarely, and
# slivers are small. Packed tissue, where every cell touches its neighbours,
# gives touching many more chances to merge. (Cellpose 3.1.1.2's script does
# not run on 2-D images as it is: its stitching raises on 2-D block faces,
# and once that is fixed it links nothing, so cells on block lines stay cut
# in two. `benchmarks/distributed_vs_cellpose.py` runs it side by side with
# `segment_large`, with both repaired.)
#
# ## 6. The outputs: a cell table and an OME-Zarr labels image
#
# The **per-cell table** is summed from each core's own table (area,
# coordinate sums, bounding box), so it is exact without the label image
# ever being in memory. Here we can check it against the table of the
# stitched image:

# %%
cells = res.cells
columns = ("label", "area", "centroid_row", "centroid_col", "equivalent_diameter", "bbox_min_row", "bbox_max_row")
print("  ".join(f"{c:>14s}" for c in columns))
for k in range(5):
    print("  ".join(f"{cells[c][k]:14.1f}" if cells[c].dtype.kind == "f" else f"{cells[c][k]:14d}" for c in columns))
print(f"... {plural(res.n_cells, 'row')}; median equivalent diameter {np.median(cells['equivalent_diameter']):.1f} px")
ref = cell_table(stitched)
boxes = ndimage.find_objects(stitched)
assert res.n_cells == len(ref) and cells["label"].tolist() == [r["label"] for r in ref]
assert cells["area"].tolist() == [r["area"] for r in ref]
assert np.allclose(cells["centroid_row"], [r["centroid_row"] for r in ref])
assert np.allclose(cells["centroid_col"], [r["centroid_col"] for r in ref])
assert cells["bbox_min_row"].tolist() == [bx[0].start for bx in boxes]
assert cells["bbox_max_col"].tolist() == [bx[1].stop for bx in boxes]

# %% [markdown]
# The **OME-Zarr** output is an NGFF store whose `labels/masks` group is a
# labels image with a pyramid: full size, then halved three times (nearest
# neighbour, so that every level holds valid labels), each level written
# chunk by chunk. napari opens it with the napari-ome-zarr plugin
# (`napari masks.ome.zarr/labels/masks`), and so does any NGFF reader, such as
# `ome_zarr`'s:

# %%
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

logging.getLogger("ome_zarr").setLevel(logging.ERROR)  # "no parent found": the store holds labels, no image
print("labels of the store:", dict(root["labels"].attrs)["ome"]["labels"])
multiscale = root["labels/masks"].attrs["ome"]["multiscales"][0]
for d in multiscale["datasets"]:
    level = root[f"labels/masks/{d['path']}"]
    print(f"  level {d['path']}: {level.shape}, chunks {level.chunks}, {level.dtype}, "
          f"scale {d['coordinateTransformations'][0]['scale']}")
node = next(iter(Reader(parse_url(str(out / "labels" / "masks")))()))
assert [tuple(a.shape) for a in node.data] == [root[f"labels/masks/{p}"].shape for p in levels]
for k, p in enumerate(levels):
    assert np.array_equal(root[f"labels/masks/{p}"][:], stitched[::2 ** k, ::2 ** k])
smallest = root[f"labels/masks/{levels[-1]}"][:]
fig, ax = plt.subplots(figsize=(6, 6))
draw_labels(ax, sample.image[::2 ** (len(levels) - 1), ::2 ** (len(levels) - 1)], smallest,
            f"level {levels[-1]} of the labels ({smallest.shape[0]} x {smallest.shape[1]})", alpha=0.5)
show(fig)

# %% [markdown]
# ## 7. Resuming an interrupted run
#
# Each block writes its labels, its core's table and, last, its label
# count to the work store; the count is the block's "done" record. A run
# that stops (a worker lost, a job out of time, a crash) leaves the blocks
# it finished, and the same call again segments only the others, then
# stitches again (cheap). Here we play an interruption by erasing the done
# records of a few blocks:

# %%
done = zarr.open_group(str(work_store_for(out)), mode="r+")["count"]
undone = [blocks[k].index for k in np.linspace(0, len(blocks) - 1, RESUME_UNDONE).astype(int)]
for index in undone:
    done[index] = -1  # as if the run had stopped before these blocks finished
t0 = time.perf_counter()
again = segment_large(image_path, MODEL, out=out, diameter=DIAMETER, block_size=BLOCK, client=client,
                      progress=True, overwrite=True)
t_again = time.perf_counter() - t0
print(f"\nre-run: {again.n_resumed} of {plural(again.n_blocks, 'block')} found done, "
      f"{plural(again.n_blocks - again.n_resumed, 'block')} ({undone}) segmented, in {t_again:.0f} s "
      f"(the first run: {t_blocks:.0f} s)")
assert again.n_resumed == len(blocks) - RESUME_UNDONE
restitched = zarr.open_group(str(out), mode="r")[f"labels/masks/{levels[0]}"][:]
assert np.array_equal(restitched, stitched)  # the same labels, ids and all
assert not work_store_for(out).exists()  # without keep_work, the work store goes once the output is written

# %% [markdown]
# The work store remembers the settings it was made with (image, model,
# diameter, halo, block size, channels, normalisation, thresholds): a re-run
# with other settings refuses to mix its blocks with these, unless
# `overwrite=True`, which starts afresh. On the command line the same rule
# holds, and a marker file records which outputs are finished.
#
# ## 8. The same code on an existing cluster
#
# Nothing in `segment_large` is specific to where the workers run. A
# scheduler has an address; a `Client(address)` connects to it from any
# Python process that can reach it, and `segment_large(..., scheduler=address)`
# does that for you (or pass `client=` any `Client`). Our local cluster's
# scheduler is a scheduler like any other:

# %%
address = cluster.scheduler_address
with distributed.Client(address) as other:
    print(f"a second client at {address}: {plural(len(other.scheduler_info()['workers']), 'worker')}")
    assert len(other.scheduler_info()["workers"]) == N_WORKERS
crop = sample.image[:CROP, :CROP]  # a small image, held in memory: it is sent to the workers
far = segment_large(crop, MODEL, out=work / "crop_masks.zarr", diameter=DIAMETER, block_size=BLOCK, scheduler=address)
crop_labels = zarr.open_array(str(far.path), mode="r")[:]
crop_whole = segment(crop, net, diameter=DIAMETER).labels
print(f"the {CROP} x {CROP} crop through {address}: {plural(far.n_cells, 'cell')} in {plural(far.n_blocks, 'block')}; "
      f"AP@{'/'.join(map(str, IOU_THRESHOLDS))} against segment of the crop {ap_text(crop_whole, crop_labels)}")
assert far.n_blocks == 1 and all(m.ap >= 0.99 for m in matching(crop_whole, crop_labels, thresholds=IOU_THRESHOLDS))

# %% [markdown]
# On a cluster the scheduler and workers are started by other means, and
# the code stays the same. With [dask-jobqueue](https://jobqueue.dask.org)
# on SLURM (PBS, LSF and SGE alike), from a login node (not run here):
#
# ```python
# from dask_jobqueue import SLURMCluster
# from distributed import Client
# from cellpose_nb.distributed import segment_large
#
# cluster = SLURMCluster(cores=4, processes=4, memory="8GB", walltime="02:00:00",
#                        job_script_prologue=["export NUMBA_NUM_THREADS=1"])
# cluster.scale(jobs=10)  # 10 SLURM jobs of 4 single-threaded workers: 40 blocks at a time
# res = segment_large("/shared/slide.zarr", "/shared/models/mine", out="/shared/out/slide_masks.ome.zarr",
#                     diameter=30, client=Client(cluster))
# ```
#
# Or start a scheduler and its workers yourself (`dask scheduler` on one
# node, `dask worker tcp://HOST:8786 --nthreads 1` on the others, or a
# Kubernetes or Coiled cluster) and give its address, in Python as above or
# on the command line:
#
# ```bash
# cellpose-nb segment /shared/slide.zarr --out /shared/out/ --dask --scheduler tcp://HOST:8786 \
#     --diameter 30 --block-size 1024 --masks-format ome-zarr
# ```
#
# The workers need cellpose_nb installed, and the input, the model folder
# and the output on a file system they all see. Done with our cluster:

# %%
client.close()
cluster.close()

# %% [markdown]
# ## 9. Block by block against the whole image
#
# The image of this notebook fits in memory, so `segment` can do it whole:
# the reference for the block-wise masks. Since the blocks sit on the
# network's grid, they get the network's whole-image outputs, and the only
# differences left come from the network's own tiles, which are placed per
# block, and from stitching.

# %%
t0 = time.perf_counter()
whole = segment(sample.image, net, diameter=DIAMETER).labels
t_whole = time.perf_counter() - t0
aps = [m.ap for m in matching(whole, stitched, thresholds=IOU_THRESHOLDS)]
n_split = {"blocks": len(split_labels(truth, stitched, crossing)), "whole": len(split_labels(truth, whole, crossing))}
print(f"whole-image segment: {plural(int(whole.max()), 'cell')} in {t_whole:.0f} s in this process; "
      f"block-wise: {plural(res.n_cells, 'cell')} in {t_blocks:.0f} s on {plural(N_WORKERS, 'worker')}")
print(f"AP@{'/'.join(map(str, IOU_THRESHOLDS))}: block-wise against whole-image {' / '.join(f'{a:.3f}' for a in aps)}; "
      f"against the truth: block-wise {ap_text(truth, stitched)}, whole-image {ap_text(truth, whole)}")
print(f"{len(crossing)} true nuclei cross a block line; in two or more pieces: block-wise {n_split['blocks']}, "
      f"whole-image {n_split['whole']}")
assert all(a >= m for a, m in zip(aps, MIN_AP_VS_WHOLE)), aps
assert n_split["blocks"] <= n_split["whole"]

# %% [markdown]
# Where do the two disagree? The whole-image cells whose best block-wise
# match has an IoU below 0.9, over the block lines:

# %%
both = (whole > 0) & (stitched > 0)
pair_ids, inter = np.unique(np.stack([whole[both], stitched[both]]), axis=1, return_counts=True)
area_w, area_s = np.bincount(whole.ravel()), np.bincount(stitched.ravel())
iou_pairs = inter / (area_w[pair_ids[0]] + area_s[pair_ids[1]] - inter)
best = np.zeros(area_w.size)
np.maximum.at(best, pair_ids[0], iou_pairs)
poor = np.nonzero(best[1:] < 0.9)[0] + 1
centres = np.array(ndimage.center_of_mass(np.ones_like(whole), whole, poor)).reshape(-1, 2)
lines = np.arange(BLOCK, SIZE, BLOCK)
near_line = np.abs(centres[..., None] - lines).min(axis=(1, 2)) < DIAMETER  # rows or cols near a line
print(f"{plural(len(poor), 'whole-image cell')} with IoU < 0.9 against the block-wise masks, "
      f"{int(near_line.sum())} of them within a diameter of a block line")
fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(sample.image[::thumb, ::thumb], cmap="gray", extent=(0, SIZE, SIZE, 0))
for line_ in range(BLOCK, SIZE, BLOCK):
    ax.axhline(line_, color="white", lw=0.8)
    ax.axvline(line_, color="white", lw=0.8)
ax.scatter(centres[:, 1], centres[:, 0], s=30, facecolors="none", edgecolors="red")
ax.set_title("cells where block-wise and whole-image masks differ (IoU < 0.9)")
ax.set_axis_off()
show(fig)

# %% [markdown]
# Few of them sit on a block line: stitching is not where the two differ.
# The network's own tiles are: a block places its 224-pixel tiles from its
# own corner, so a cell away from any block line can fall on other tile
# seams (and get other blending weights) than in the whole image, and
# move a few pixels.

# %% [markdown]
# ## 10. Volumes, block by block
#
# A light-sheet stack can outgrow memory as a slide does. The same code cuts
# a (Z, Y, X) volume into 3-D blocks and segments each in 2.5D (notebook 09:
# the 2D network on the block's YX, ZX and ZY slices, the flows followed in
# 3D). Two things change. The halo must be as *long* in Z as in-plane, so in
# planes it is the in-plane halo over the anisotropy. And a block has more
# neighbours: every offset in {-1, 0, 1}³ but (0, 0, 0) is one, 26 in all,
# and each pair is matched once, from the block that comes first: 13 offsets
# per block, against 4 in 2-D. By hand, then the package:

# %%
halo_xy = int(np.ceil(2 * NUCLEUS_3D))  # two diameters, as in 2-D
halo_3d = (int(np.ceil(halo_xy / ANISOTROPY)), halo_xy, halo_xy)
offsets = [(dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
           if (dz, dy, dx) > (0, 0, 0)]  # ahead of the block: the first non-zero offset is +1
vol_blocks = block_grid(VOLUME, VOLUME_BLOCK, halo_3d)
print(f"a {' x '.join(map(str, VOLUME))} volume in blocks of {VOLUME_BLOCK}: grid {grid_shape(vol_blocks)}, "
      f"halo {halo_3d} (planes, rows, cols); {len(offsets)} neighbour offsets per block, "
      f"{plural(len(neighbour_pairs(vol_blocks)), 'pair')} to match")
assert halo_3d == halos(NUCLEUS_3D, None, 3, ANISOTROPY) and len(offsets) == 13
n_blocks = len(vol_blocks)
assert len(neighbour_pairs(vol_blocks)) == n_blocks * (n_blocks - 1) // 2  # 2 per axis: all are neighbours

# %% [markdown]
# The nuclei of a synthetic two-channel volume (Z sampled twice as coarsely
# as Y and X), block by block on a local cluster that `segment_large` starts
# itself this time, against the whole volume segmented at once:

# %%
vol = make_synthetic_volume(VOLUME, n_cells=VOLUME[1] * VOLUME[2] // 850, diameter=36.0,
                            anisotropy=ANISOTROPY, seed=SEED)
vol_path = work / "volume.zarr"
zarr.create_array(store=str(vol_path), data=vol.image, chunks=(8, 64, 64, 2))  # (Z, Y, X, C)
t0 = time.perf_counter()
vres = segment_large(vol_path, MODEL, out=work / "volume_masks.ome.zarr", diameter=NUCLEUS_3D,
                     block_size=VOLUME_BLOCK, channels=(1, None), channel_axis=-1, do_3d=True,
                     anisotropy=ANISOTROPY, n_workers=N_WORKERS)
t_vol = time.perf_counter() - t0
vol_root = zarr.open_group(str(vres.path), mode="r")
vol_level = vol_root["labels/masks"].attrs["ome"]["multiscales"][0]["datasets"][0]["path"]
vol_stitched = vol_root[f"labels/masks/{vol_level}"][:]
vol_whole = segment(vol.image, net, diameter=NUCLEUS_3D, channels=(1, None), channel_axis=-1,
                    do_3d=True, anisotropy=ANISOTROPY).labels
flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731  (IoU is the same on a (Z, Y * X) view)
vol_crossing = crossing_labels(vol.nuclei, VOLUME_BLOCK)  # true nuclei cut by a block face
vol_split = len(split_labels(vol.nuclei, vol_stitched, vol_crossing))
print(f"{plural(vres.n_cells, 'nucleus', 'nuclei')} in {plural(vres.n_blocks, 'block')} in {t_vol:.0f} s "
      f"(halo {vres.halo}), {int(vol_whole.max())} in the whole volume, {int(vol.nuclei.max())} true")
print(f"AP@{'/'.join(map(str, IOU_THRESHOLDS))}: block-wise against whole {ap_text(flat(vol_whole), flat(vol_stitched))}; "
      f"against the truth: block-wise {ap_text(flat(vol.nuclei), flat(vol_stitched))}, "
      f"whole {ap_text(flat(vol.nuclei), flat(vol_whole))}")
print(f"{plural(len(vol_crossing), 'true nucleus', 'true nuclei')} cross a block face; "
      f"in two or more pieces: {vol_split}")
ap_truth = [matching(flat(vol.nuclei), flat(p), thresholds=IOU_THRESHOLDS)[0].ap for p in (vol_stitched, vol_whole)]
assert vres.halo == halo_3d and vol_split == 0 and ap_truth[0] >= ap_truth[1] - 0.05, (vol_split, ap_truth)

# %% [markdown]
# Block-wise and whole-volume masks need not be the same here, and not
# because of stitching: the network reads a block's ZX and ZY slices, which
# end at the block's halo, not at the volume's edge, so a nucleus can get
# somewhat different flows (on the small volume of QUICK mode, one nucleus
# came out right block by block and wrong in the whole volume). The truth
# decides: both are scored against it, and no nucleus that crosses a face
# is cut.

# %%
z_mid, row_mid = VOLUME[0] // 2, VOLUME[1] // 2
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [VOLUME[2], VOLUME[2]]})
draw_labels(axes[0], vol.image[z_mid, ..., 1], vol_stitched[z_mid], f"plane {z_mid} (YX), block-wise")
xz = np.repeat(vol.image[:, row_mid, :, 1], int(ANISOTROPY), axis=0)  # Z drawn at its true length
draw_labels(axes[1], xz, np.repeat(vol_stitched[:, row_mid], int(ANISOTROPY), axis=0),
            f"row {row_mid} (XZ, Z stretched {ANISOTROPY:g}x), block-wise")
for b in vol_blocks:
    axes[0].add_patch(Rectangle((b.core[2].start - 0.5, b.core[1].start - 0.5), b.core[2].stop - b.core[2].start,
                                b.core[1].stop - b.core[1].start, fill=False, color="white", lw=1))
    axes[1].add_patch(Rectangle((b.core[2].start - 0.5, b.core[0].start * ANISOTROPY - 0.5),
                                b.core[2].stop - b.core[2].start, (b.core[0].stop - b.core[0].start) * ANISOTROPY,
                                fill=False, color="white", lw=1))
fig.suptitle("a volume in 3-D blocks (white: the cores); each nucleus is one label across them")
show(fig)

# %% [markdown]
# ## In practice
#
# - **The call.** `segment_large("slide.ome.zarr", "nuclei", out="masks.ome.zarr",
#   diameter=34, block_size=1024)` on a local cluster sized from the machine,
#   or with `client=` / `scheduler=` on any cluster; on the command line
#   `cellpose-nb segment slide.zarr --out results/ --dask [--scheduler ADDRESS]`.
#   Inputs: zarr, OME-Zarr, tiled TIFF, dask arrays (2-D, with or without
#   channels). More in `docs/distributed.md`.
# - **Block size.** Memory per worker is one extended block, its network
#   outputs and the model: about 0.5 GB at 512 px, 1 GB at 1024 px,
#   whatever the image size. Smaller blocks waste more on halos (a 512 px
#   block with 96 px halos segments 1.89x its pixels, a 1024 px one 1.41x);
#   larger ones need more memory and give fewer tasks to share out. 1024 is
#   a good start; make the zarr chunks about the block size, or a divisor of it.
# - **The diameter, once.** Give it (or let the size model estimate it
#   once, on a central crop): every block must see the same scale. The
#   percentiles of the normalisation are also taken once, from the whole
#   image (a regular sample of it when it is large), so a block of
#   background is not stretched into noise. (Cellpose's script normalises
#   each block on its own.)
# - **Threads.** One thread per worker, and one for numba too
#   (`segment_large` sees to it in its tasks; `NUMBA_NUM_THREADS=1` in the
#   workers' environment, as above, for anything else): in our
#   run on a 2-core machine shared with other jobs, the same blocks took
#   about 2.5x longer without it. With GPUs, one worker per GPU.
# - **Shared storage.** Workers read their own blocks and write their
#   results: the input, the model folder and the output must be on a file
#   system that every worker sees. A numpy array works too, but is copied
#   to the workers block by block (only for images that fit in memory).
# - **Resuming and overwriting.** An interrupted run resumes from the work
#   store `.<out name>.blocks.zarr` next to the output; other settings are
#   refused; `overwrite=True` replaces both. `keep_work=True` keeps the
#   per-block labels after success (for a look inside, as here).
# - **What stitching cannot fix.** Where one block merged a cell with its
#   neighbour and the other did not, the cell is kept whole by joining it
#   to the merge: a merge error, not a cut. A cell larger than the halo is
#   seen cut in both blocks (pass a larger `halo=`).
# - **Volumes.** `segment_large(stack, model, out=..., do_3d=True,
#   anisotropy=A)`, or `cellpose-nb segment stack.tif --dask --3d
#   --anisotropy A`: 3-D blocks in 2.5D, with a Z halo of as many
#   micrometres; the default block of 1024 keeps up to 1024 planes whole.
# - **Cellpose's own script** (`cellpose/contrib/distributed_segmentation.py`
#   in cellpose 3.1.1.2) stitches by touching after a shrink. With zarr 3 it
#   stops at once (it passes zarr's `mode` positionally); past that, on 2-D
#   images its stitching raises (cellpose issue #1138, fixed in 4.2.1) and,
#   fixed, links nothing (cellpose PR #1480, open), so cells on block lines
#   stay cut. `benchmarks/distributed_vs_cellpose.py` runs it with the same
#   weights and blocks, repaired, beside `segment_large`.
#
# ## Exercises
#
# 1. **The price of halos ★.** For a 16384 x 16384 image and the halo of
#    this notebook, how many times the image's pixels do the blocks segment,
#    for blocks of 256, 512, 1024, 2048 and 4096 pixels? Compute it from
#    the block sizes by hand and check with `block_grid`. Why not take the
#    largest?

# %% tags=["solution"]
overhead = {}
for side in (256, 512, 1024, 2048, 4096):
    n = -(-16384 // side)  # blocks per row
    # per row of blocks: the two border blocks have one halo, the inner ones two
    per_axis = 16384 + (2 * (n - 1)) * halo if n > 1 else 16384
    by_formula = per_axis ** 2 / 16384 ** 2
    grid = block_grid((16384, 16384), side, halo)
    overhead[side] = sum(b.ext_shape[0] * b.ext_shape[1] for b in grid) / 16384 ** 2
    print(f"blocks of {side:4d}: {len(grid):5d} blocks, {overhead[side]:.3f}x the pixels")
    assert np.isclose(by_formula, overhead[side])
# The overhead falls with the block size, but a block's memory grows with its area, and fewer, larger
# blocks leave workers idle at the end of a run (and lose more work when one fails).
assert list(overhead.values()) == sorted(overhead.values(), reverse=True)

# %% [markdown]
# 2. **The stitching threshold ★★.** Stitch the per-block labels of section 5
#    again by IoU alone, `match_labels(..., min_iou=t, min_contained=None)`,
#    for t from 0.1 to 0.9 (and `global_labels` for the ids). How many cells, how many crossing nuclei
#    split, how many labels over two nuclei? Which count can only move one
#    way as t grows, and why?

# %% tags=["solution"]
results = {}
for t in (0.1, 0.3, 0.5, 0.7, 0.9):
    lk = {}
    for ka_, kb_ in pairs_by_hand:
        a, b = blocks[ka_], blocks[kb_]
        region = match_region(a, b, margin)
        lk[ka_, kb_] = match_labels(ext_labels[ka_][within(region, a)], ext_labels[kb_][within(region, b)], min_iou=t,
                                   min_contained=None)
    pred = stitch_with(lk, core_labels, blocks, n_labels)
    results[t] = (len(ids_of(pred)), len(split_labels(truth, pred, crossing)), len(merged_labels(truth, pred)))
    print(f"min_iou {t}: {plural(results[t][0], 'cell')}, {results[t][1]} crossing nuclei split, "
          f"{results[t][2]} labels over two nuclei")
ious = []  # the IoU in the band of every link of section 5
for (ka_, kb_), prs in links.items():
    a, b = blocks[ka_], blocks[kb_]
    region = match_region(a, b, margin)
    va, vb = ext_labels[ka_][within(region, a)], ext_labels[kb_][within(region, b)]
    ious += [((va == u) & (vb == v)).sum() / ((va == u) | (vb == v)).sum() for u, v in prs]
print(f"the links of section 5: median IoU {np.median(ious):.3f}, "
      f"{np.mean(np.array(ious) >= 0.99):.0%} at 0.99 or more")
# The pairs are taken best first, and the decision on a pair depends only on the pairs before it, so
# the links at a threshold include all the links at any higher one. Fewer links can only cut groups
# apart: the number of cells can only grow with t. (Splits and merges usually follow, but need not:
# cutting a label in two can also make a piece too small to count.) Here the threshold hardly matters:
# the blocks sit on the network's grid, so both blocks get the same network outputs in the band and
# draw a nucleus there (almost) identically, IoU 1. Off the grid (a `halo=` that is not a multiple
# of 32 px here) masks differ by a few pixels, and a high threshold starts to cut nuclei apart.
n_cells_at = [results[t][0] for t in sorted(results)]
assert n_cells_at == sorted(n_cells_at)

# %% [markdown]
# 3. **A corner of four blocks ★★.** Find the true nuclei that have pixels in
#    three or four cores (they sit on a corner). Are they one label each? Which
#    pairs of blocks linked their pieces: only direct neighbours, or diagonal
#    ones too?

# %% tags=["solution"]
core_of = np.zeros((SIZE, SIZE), np.int64)
for k, b in enumerate(blocks):
    core_of[b.core] = k
key = np.unique(truth[truth > 0].astype(np.int64) * len(blocks) + core_of[truth > 0])  # (nucleus, core) pairs
on_corner = [int(c) for c in np.nonzero(np.bincount(key // len(blocks)) >= 3)[0]]
for c in on_corner:
    nodes = set()  # the (block, label) of the nucleus in every block whose extended region holds it
    for k, b in enumerate(blocks):
        inside = ext_labels[k][truth[b.ext] == c]
        nodes |= {(k, v) for v in ids_of(inside)}
    used = sorted({(blocks[ka_].index, blocks[kb_].index) for (ka_, kb_), prs in links.items()
                   for u, v in prs if (ka_, u) in nodes and (kb_, v) in nodes})
    ids, n = np.unique(stitched[truth == c], return_counts=True)
    main = [int(i) for i, m in zip(ids, n) if i and m >= SPLIT_SHARE * n.sum()]  # labels covering 20 % of it
    print(f"nucleus {c}, in the cores of {sorted({blocks[k].index for k in np.unique(core_of[truth == c])})}: "
          f"stitched label(s) {main}; linked across {used}")
# A nucleus on a corner is linked across every pair of blocks that see it, diagonal pairs included
# (neighbour_pairs lists them), so it is one label even where two of its pieces only meet at a point.
assert on_corner and len(split_labels(truth, stitched, on_corner)) <= len(split_labels(truth, whole, on_corner))

# %% [markdown]
# Clean up (the temporary folder of the stores):

# %%
if WORK is None:
    shutil.rmtree(work, ignore_errors=True)

# %% [markdown]
# ## Sources
#
# - Stringer, C., Wang, T., Michaelos, M. & Pachitariu, M. Cellpose: a generalist algorithm for cellular segmentation. *Nature Methods* 18, 100-106 (2021). [doi:10.1038/s41592-020-01018-x](https://doi.org/10.1038/s41592-020-01018-x) The method that runs on every block.
# - dask.distributed documentation: https://distributed.dask.org (`LocalCluster`, `Client`, the dashboard, `progress`); dask-jobqueue: https://jobqueue.dask.org (`SLURMCluster` and the other job queues).
# - Moore, J. et al. OME-Zarr: a cloud-optimized bioimaging file format with international community support. *Histochemistry and Cell Biology* 160, 223-251 (2023). [doi:10.1007/s00418-023-02209-1](https://doi.org/10.1007/s00418-023-02209-1) The NGFF labels image and its pyramid; specification: https://ngff.openmicroscopy.org.
# - The reference implementation, `cellpose` 3.1.1.2 (https://github.com/MouseLand/cellpose): `contrib/distributed_segmentation.py` (`distributed_eval`, `block_face_adjacency_graph`, `shrink_labels`); its 2-D problems: issue #1138 and PR #1123 (the structuring element), PR #1480 (`shrink_labels` on 1-D faces).

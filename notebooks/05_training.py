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
# # 05 · Training
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/cellpose_nb/blob/main/notebooks/05_training.ipynb) (replace OWNER with the repository's owner once it is published)
#
# Notebook 04 built the network; here it learns. Training Cellpose is
# ordinary supervised learning with a few particular choices: the targets are
# the flows and the cell mask (notebooks 02 and 01), the loss mixes a squared
# error and a cross-entropy, the learning rate follows a fixed schedule, and
# every image is seen through random flips, rotations, zooms and crops. This
# notebook writes each piece by hand, checks it against `cellpose_nb.train`,
# and runs a short training with checkpoints.
#
# **What you will learn**
#
# - the loss: `0.5 * MSE` on `FLOW_SCALE * flows` plus binary cross-entropy
#   on the cell probability, written in plain torch and checked against
#   `segmentation_loss`;
# - the learning-rate schedule (warm-up, plateau, halvings), by hand and with
#   `learning_rate_schedule`;
# - augmentation with `random_transform`: a gallery, and why cached flows must
#   be *turned* with the image, checked against flows recomputed from the
#   warped labels;
# - the training loop, by hand with a live loss plot, and with `train`, from
#   the same weights to the same losses;
# - checkpoints: stop a run, resume it, get the same result; what
#   `history.csv` and `training.json` record (config, data hash, versions);
# - a first size model (style -> diameter).
#
# **What you need**: notebooks 01-04. PyTorch; a GPU helps but is not needed
# (`QUICK` mode trains a tiny network for a few epochs on the CPU in well
# under a minute). The DSB2018 data are optional: without them (or in `QUICK`
# mode) the notebook trains on synthetic nuclei.

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

QUICK = os.environ.get("CELLPOSE_NB_QUICK", "0") == "1"  # CI: tiny model, few images, 3 epochs

SEED = 0  # seeds the weights, the synthetic images and the training (data order, augmentation)
DEVICE = None  # None: cuda -> mps -> cpu, whichever is there; or "cpu", "cuda:0", "mps"
THREADS = 1 if QUICK else None  # torch CPU threads (None: torch's default); tiny tensors run best on one
USE_DSB = not QUICK  # train on DSB2018 nuclei when data_root() finds them (else synthetic)
DIAM_MEAN = 17.0  # diameter (px) the model sees nuclei at (Cellpose's nuclei model: 17)
FEATURES = (8, 16, 32, 64) if QUICK else (32, 64, 128, 256)  # network widths (notebook 04)
SHAPE = (128, 128) if QUICK else (256, 256)  # synthetic image size
N_CELLS = 14 if QUICK else 50  # synthetic nuclei per image
N_TRAIN = 8 if QUICK else 48  # training images
N_VAL = 2 if QUICK else 8  # validation images
CROP = 64 if QUICK else 224  # side of the training crops (Cellpose: 224)
BATCH = 2 if QUICK else 8  # crops per optimisation step (Cellpose: 8)
N_EPOCHS = 3 if QUICK else 60  # passes over the training set (Cellpose: 500)
WARMUP = 0 if QUICK else 10  # epochs of linear learning-rate warm-up (Cellpose: 10)
LEARNING_RATE = 0.005  # AdamW peak learning rate (Cellpose's train_seg default)
VAL_EVERY = 10  # validate every this many epochs, and after the last
HAND_EPOCHS = N_EPOCHS if QUICK else 3  # epochs of the hand-written loop (section 5)
N_AUG = 4  # augmented draws in the gallery
RESUME_IMAGES = 4  # images of the checkpoint demo (section 7), tiny model
RESUME_EPOCHS = 4  # its full length ...
STOP_AFTER = 2  # ... and where it is interrupted
SIZE_PASSES = 2 if QUICK else 10  # random crops per image for the size model (Cellpose: 10)
SIZE_CROP = 128 if QUICK else 512  # side of those crops (Cellpose: 512)

# %%
import copy
import csv
import dataclasses
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display
from scipy import ndimage
from skimage.segmentation import clear_border

from cellpose_nb import data, metrics, model, plot, predict
from cellpose_nb.augment import random_transform, similarity_matrix, warp_sample
from cellpose_nb.flows import FLOW_SCALE, masks_to_flows
from cellpose_nb.model import CellposeUNet, ModelConfig, count_parameters
from cellpose_nb.normalize import to_network_input
from cellpose_nb.train import (
    TrainConfig,
    cached_flows,
    data_hash,
    fit_size_model,
    learning_rate_schedule,
    median_diameter,
    prepare_images,
    segmentation_loss,
    train,
)

if THREADS is not None:
    torch.set_num_threads(THREADS)
WORKDIR = Path(tempfile.mkdtemp(prefix="cellpose_nb_05_"))  # every file this notebook writes
print("outputs go to", WORKDIR)


def show(fig):
    """Display a figure now and close it, so that figures do not pile up."""
    display(fig)
    plt.close(fig)


def n_objects(labels):
    return len(np.unique(labels[labels > 0]))


# %% [markdown]
# ## 1. The training data
#
# Training pairs are a network input (two channels, percentile-normalised:
# `prepare_images`, notebook 01) and a label image. With the course data on
# this machine (and `QUICK` off) we take DSB2018 fluorescence nuclei; otherwise
# synthetic nuclei. The last few images are kept apart for validation. Images
# with fewer than 5 objects would be dropped by `train` (Cellpose's
# `min_train_masks`), so we drop them here, in the open.

# %%
root = data.data_root() if USE_DSB else None
if root is not None and (root / "dsb2018").is_dir():
    samples = data.load_dsb2018(modality="fluorescence", limit=N_TRAIN + N_VAL)
    raw = [(s.image, s.labels.astype(np.int32)) for s in samples]
    source = "DSB2018 fluorescence"
else:
    samples = data.make_synthetic_dataset(N_TRAIN + N_VAL, shape=SHAPE, n_cells=N_CELLS, diameter=DIAM_MEAN,
                                          kind="nuclei", seed=SEED)
    raw = [(s.image, s.labels) for s in samples]
    source = "synthetic nuclei"
raw = [(img, lab) for img, lab in raw if n_objects(lab) >= 5]
train_raw, val_raw = raw[:-N_VAL], raw[-N_VAL:]
train_inputs = prepare_images([img for img, _ in train_raw], channels=(0, None))
train_labels = [lab for _, lab in train_raw]
val_inputs = prepare_images([img for img, _ in val_raw], channels=(0, None))
val_labels = [lab for _, lab in val_raw]
train_flows = cached_flows(train_labels)  # computed once; augmentation turns them (section 4)
diameters = np.array([median_diameter(lab) for lab in train_labels])
print(f"{source}: {len(train_inputs)} training and {len(val_inputs)} validation images; "
      f"input {train_inputs[0].shape} {train_inputs[0].dtype}; median diameters "
      f"{diameters.min():.1f}-{diameters.max():.1f} px")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
plot.show_image(train_inputs[0][0], ax=axes[0], title="network input, channel 0")
plot.overlay_labels(train_inputs[0][0], train_labels[0], ax=axes[1], title=f"{n_objects(train_labels[0])} labels")
plot.show_flows(train_flows[0], ax=axes[2], title="flows (the target)")
show(fig)

# %% [markdown]
# ## 2. The loss, by hand
#
# The network outputs three maps per pixel (notebook 04): `y[:, 0:2]`, which
# should equal `FLOW_SCALE * flows` (`FLOW_SCALE = 5`), and `y[:, 2]`, the
# logit of the cell probability. The loss adds two terms, each a mean over all
# pixels of the batch:
#
# - **flows**: half the mean squared error against the scaled flows $5\,\mathbf{v}$;
# - **cell probability**: binary cross-entropy of the logit $z$ against the
#   mask $t = [\text{labels} > 0]$, with the sigmoid $\sigma$.
#
# Over the $N$ pixels $p$ of the batch, with the predicted flows
# $\hat{\mathbf{y}}_p$ (two components) and the true unit flows $\mathbf{v}_p$:
#
# $$
# L = \frac{1}{2}\,\frac{1}{2N}\sum_p \big\lVert \hat{\mathbf{y}}_p - 5\,\mathbf{v}_p \big\rVert^2
#   \;-\; \frac{1}{N}\sum_p \Big[t_p \log \sigma(z_p) + (1 - t_p) \log\big(1 - \sigma(z_p)\big)\Big],
# $$
#
# the cross-entropy written in the numerically safe form
# $\max(z, 0) - z\,t + \log(1 + e^{-|z|})$. Why scale the flows by
# `FLOW_SCALE = 5` at all? Exercise 1 asks.
#
# > **Write it yourself ★: `loss_by_hand`.** In the exercise version of this
# > notebook (`make exercises`) its body is a TODO: signature, docstring and
# > hint are given, and the cell after it checks your loss against the
# > package's `segmentation_loss` and torch's
# > `binary_cross_entropy_with_logits`. Difficulty: ★ a few lines straight
# > from the formula, ★★ some care with indices, ★★★ an algorithm to design.

# %% tags=["skeleton"]
def loss_by_hand(y, flows, mask):
    """(flow term, cross-entropy) of the network output `y` (B, 3, H, W) against the unit
    `flows` (B, 2, H, W) and the boolean cell `mask` (B, H, W): two torch scalars."""
    # Hint: the flow term is 0.5 times the mean of (y[:, :2] - FLOW_SCALE * flows) ** 2; the
    #   cross-entropy is the mean of the safe form above, with z = y[:, 2], t = mask.float(),
    #   z.clamp(min=0) and torch.log1p(torch.exp(-z.abs())).
    flow_term = 0.5 * ((y[:, :2] - FLOW_SCALE * flows) ** 2).mean()
    z, t = y[:, 2], mask.float()
    bce = (z.clamp(min=0) - z * t + torch.log1p(torch.exp(-z.abs()))).mean()
    return flow_term, bce


# %%
g = torch.Generator().manual_seed(SEED)
crops = [random_transform(train_inputs[k], train_labels[k], flows=train_flows[k], rng=np.random.default_rng(k),
                          out_size=(CROP, CROP)) for k in range(2)]
f_batch = torch.from_numpy(np.stack([c.flows for c in crops]))
m_batch = torch.from_numpy(np.stack([c.labels > 0 for c in crops]))
y = 3 * torch.randn(2, 3, CROP, CROP, generator=g)  # some network output

flow_term, bce = loss_by_hand(y, f_batch, m_batch)
print(f"random output: flow term {flow_term:.3f} + cross-entropy {bce:.3f} = {flow_term + bce:.3f}")
assert torch.allclose(flow_term + bce, segmentation_loss(y, f_batch, m_batch), rtol=1e-5)
assert torch.allclose(bce, F.binary_cross_entropy_with_logits(y[:, 2], m_batch.float()), rtol=1e-5)

# two outputs whose loss we know in advance
fg = m_batch.float().mean().item()  # fraction of cell pixels
zero = segmentation_loss(torch.zeros_like(y), f_batch, m_batch)  # flows 0, probability 1/2 everywhere
expected = 0.5 * FLOW_SCALE**2 * fg / 2 + np.log(2)  # |flow|^2 = 1 on cells, split over 2 components
perfect = torch.cat([FLOW_SCALE * f_batch, (40 * m_batch.float() - 20)[:, None]], dim=1)  # exact flows, logits +-20
print(f"all-zero output: {zero:.4f} (expected 0.5 * 25 * {fg:.3f} / 2 + ln 2 = {expected:.4f}); "
      f"perfect output: {segmentation_loss(perfect, f_batch, m_batch):.1e}")
assert abs(zero.item() - expected) < 1e-3 and segmentation_loss(perfect, f_batch, m_batch) < 1e-6

# %% [markdown]
# > **Checkpoint (discuss in pairs):** the all-zero output costs exactly
# > ln 2 in cross-entropy, whatever the image. Why? And why does its flow term
# > depend on the fraction of cell pixels, but not on where the cells are?
#
# ## 3. The learning-rate schedule
#
# Cellpose's `train_seg` changes the learning rate once per epoch: a linear
# warm-up from 0 over the first 10 epochs (large steps on random weights make
# BatchNorm statistics and Adam's moment estimates wild), then constant, then
# ten halvings spread over the last 100 epochs (for runs longer than 300
# epochs; 50 for runs longer than 100; none for shorter runs). The warm-up
# keeps the first steps from random weights small, while AdamW's running
# estimates of the gradient scale are still poor; the halvings at the end let
# the weights settle. By hand:
#
# > **Write it yourself ★★: `schedule_by_hand`**, checked against
# > `learning_rate_schedule` in the next cell.

# %% tags=["skeleton"]
def schedule_by_hand(n_epochs, lr, warmup=10, n_halvings=10):
    """The learning rate of every epoch (an array of `n_epochs`): warm-up, plateau, halvings."""
    # Hint: the rate is lr, except in the first `warmup` epochs, lr * epoch / (warmup - 1) (as
    #   np.linspace(0, lr, warmup)), and in the last `decay` epochs (100 if n_epochs > 300, 50 if
    #   n_epochs > 100, else 0), lr / 2**k, where k goes from 1 to n_halvings in equal stretches.
    decay = 100 if n_epochs > 300 else 50 if n_epochs > 100 else 0
    rates = []
    for epoch in range(n_epochs):
        rate = lr
        if epoch < warmup:
            rate = lr * epoch / (warmup - 1) if warmup > 1 else 0.0  # np.linspace(0, lr, warmup)
        if epoch >= n_epochs - decay:
            k = (epoch - (n_epochs - decay)) * n_halvings // decay + 1  # how many halvings so far
            rate = lr / 2**k
        rates.append(rate)
    return np.array(rates)


# %%
fig, ax = plt.subplots(figsize=(9, 3.5))
for n in (500, 200, 100):
    rates = learning_rate_schedule(TrainConfig(n_epochs=n, learning_rate=LEARNING_RATE))
    assert np.allclose(rates, schedule_by_hand(n, LEARNING_RATE))
    ax.plot(np.arange(1, n + 1), rates, label=f"n_epochs={n}")
# amp=False: float32 everywhere, so that the hand-written loop of section 5 gives the same losses
# (the default, amp=None, would train in float16 on a GPU and in bfloat16 on a CPU with AMX)
config = TrainConfig(n_epochs=N_EPOCHS, batch_size=BATCH, crop_size=CROP, learning_rate=LEARNING_RATE,
                     warmup_epochs=WARMUP, val_every=VAL_EVERY, seed=SEED, device=DEVICE, num_threads=THREADS,
                     amp=False)
rates = learning_rate_schedule(config)
assert np.allclose(rates, schedule_by_hand(N_EPOCHS, LEARNING_RATE, warmup=WARMUP))
ax.plot(np.arange(1, N_EPOCHS + 1), rates, "k.-", label=f"this notebook ({N_EPOCHS} epochs)")
ax.set_xlabel("epoch")
ax.set_ylabel("learning rate")
ax.legend(fontsize=8)
show(fig)

# %% [markdown]
# ## 4. Augmentation: the same image, never twice the same crop
#
# Every time an image is used it goes through a random **flip, rotation, zoom
# and crop**, all one affine map (`random_transform`). The zoom is
# `diam_mean / diameter` of the image (cells come out at the model's size)
# times a random factor in [0.75, 1.25]. The labels follow with
# nearest-neighbour interpolation. The flows are computed *once* per image
# (`cached_flows`) and warped with it, but a flow is a vector: moving the
# arrows to their new place is not enough, each must also be *turned* by the
# rotation (and mirrored by the flip).

# %%
rng = np.random.default_rng(SEED)
x0, lab0, flow0 = train_inputs[0], train_labels[0], train_flows[0]
rescale0 = DIAM_MEAN / median_diameter(lab0)
draws = [random_transform(x0, lab0, flows=flow0, rng=rng, out_size=(CROP, CROP), rescale=rescale0)
         for _ in range(N_AUG)]

fig, axes = plt.subplots(3, N_AUG + 1, figsize=(2.8 * (N_AUG + 1), 8.4))
plot.show_image(x0[0], ax=axes[0, 0], title="original")
plot.overlay_labels(x0[0], lab0, ax=axes[1, 0])
plot.show_flows(flow0, ax=axes[2, 0])
for k, aug in enumerate(draws, start=1):
    plot.show_image(aug.image[0], ax=axes[0, k], title=f"draw {k}: zoom {aug.scale:.2f}")
    plot.overlay_labels(aug.image[0], aug.labels, ax=axes[1, k])
    plot.show_flows(aug.flows, ax=axes[2, k], arrows=True, step=max(4, CROP // 12))
for ax, name in zip(axes[:, 0], ("image", "labels", "flows")):
    ax.set_ylabel(name)
fig.tight_layout()
show(fig)

# %% [markdown]
# The turning, by hand, for one fixed map (30 degrees, mirrored, zoom 1.2).
# `similarity_matrix` gives the 3x3 matrix sending input (row, col) to output
# (row, col). `scipy.ndimage.affine_transform` wants the opposite map (for
# every output pixel, where to read in the input), so we pass the inverse.
# Then every warped vector is multiplied by the 2x2 linear part `L` and
# scaled back to unit length on the warped cells, 0 elsewhere.

# %%
OUT = lab0.shape  # a crop as big as the image, so that many cells stay whole
M = similarity_matrix(lab0.shape, out_size=OUT, angle=np.deg2rad(30), scale=1.2, flip=True)
inv = np.linalg.inv(M)
moved = np.stack([ndimage.affine_transform(f_, inv[:2, :2], offset=inv[:2, 2], output_shape=OUT,
                                           order=1, prefilter=False) for f_ in flow0])
labels_w = ndimage.affine_transform(lab0, inv[:2, :2], offset=inv[:2, 2], output_shape=OUT, order=0)
turned = np.einsum("ij,jhw->ihw", M[:2, :2], moved)  # L @ vector, at every pixel
norm = np.sqrt((turned**2).sum(axis=0))
inside = (labels_w > 0) & (norm > 1e-6)
turned_by_hand = np.where(inside, turned / np.where(inside, norm, 1), 0)

aug = warp_sample(x0, lab0, M, flows=flow0, out_size=OUT)
assert np.array_equal(aug.labels, labels_w)
assert np.allclose(aug.flows, turned_by_hand, atol=1e-5)

# does turning the cached flows give the flows of the warped cells? recompute them and compare
fresh = masks_to_flows(aug.labels)
whole = clear_border(aug.labels) > 0  # cells cut by the crop edge point at their *whole* centre
cosine = lambda a, b: float((a * b).sum(axis=0)[whole].mean())  # noqa: E731
moved_unit = np.where(inside, moved / np.maximum(np.sqrt((moved**2).sum(0)), 1e-6), 0)
print(f"mean cosine with the recomputed flows: turned {cosine(aug.flows, fresh):.3f}, "
      f"moved but not turned {cosine(moved_unit, fresh):.3f} (on {whole.sum()} pixels of uncut cells)")
assert whole.sum() > 0 and cosine(aug.flows, fresh) > 0.9 > cosine(moved_unit, fresh)

fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
for ax, fl, title in zip(axes, (aug.flows, fresh, moved_unit), ("cached flows, warped and turned",
                                                                 "recomputed from the warped labels",
                                                                 "warped, NOT turned (wrong)")):
    plot.show_flows(fl, ax=ax, arrows=True, step=OUT[0] // 16, title=title)
show(fig)

# %% [markdown]
# Turning the cached flows costs one 2x2 matrix-vector product per pixel;
# recomputing them would cost a heat diffusion (notebook 02) for every crop of
# every epoch. That is why training computes the flows once per image.
#
# > **Checkpoint (discuss in pairs):** which of the random transforms (flip,
# > rotation, zoom, crop) change the *direction* of the flows, and which only
# > move them? Which one changes their length before the renormalisation?
#
# ## 5. The training loop, by hand, with a live loss plot
#
# An epoch is one pass over the training images in a random order, in
# batches of `BATCH` crops; each batch is one step of the optimiser (AdamW,
# Cellpose's default, with weight decay 1e-5). Two details make a run
# *reproducible* and *resumable*: the initial weights come from
# `torch.manual_seed`, and every epoch draws its data order and augmentations
# from its own random stream, seeded by `(seed, epoch)`: epoch 7 sees the same
# crops whether or not the run was interrupted at epoch 5.
#
# The device is chosen at run time: CUDA if there is an NVIDIA GPU, else MPS
# (Apple silicon), else the CPU (`model.resolve_device`).

# %%
device = model.resolve_device(DEVICE)
model_config = ModelConfig(features=FEATURES, diam_mean=DIAM_MEAN)
torch.manual_seed(SEED)
initial_weights = copy.deepcopy(CellposeUNet(model_config).state_dict())  # both loops start here
print(f"device: {device}; network {FEATURES}: {count_parameters(CellposeUNet(model_config)):,d} parameters")

net = CellposeUNet(model_config)
net.load_state_dict(initial_weights)
net.to(device)
optimizer = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=config.weight_decay)
rescale = [DIAM_MEAN / max(5.0, median_diameter(lab)) for lab in train_labels]  # zoom cells to DIAM_MEAN

fig, ax = plt.subplots(figsize=(8, 3.5))
(batch_line,) = ax.plot([], [], ".-", color="0.6", label="batch")
(epoch_line,) = ax.plot([], [], "o-", color="tab:blue", label="epoch mean")
ax.set_xlabel("epoch")
ax.set_ylabel("loss")
ax.legend()
live = display(fig, display_id=True)  # updated in place below

batch_losses, hand_history = [], []
for epoch in range(HAND_EPOCHS):
    for group in optimizer.param_groups:
        group["lr"] = float(rates[epoch])
    net.train()
    rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(0, epoch)))  # this epoch's stream
    order = rng.permutation(len(train_inputs))
    total = 0.0
    for start in range(0, len(order), BATCH):
        idx = order[start : start + BATCH]
        crops = [random_transform(train_inputs[i], train_labels[i], flows=train_flows[i], rng=rng,
                                  out_size=(CROP, CROP), scale_range=config.scale_range, rescale=rescale[i])
                 for i in idx]
        x = torch.from_numpy(np.stack([c.image for c in crops])).to(device)
        f = torch.from_numpy(np.stack([c.flows for c in crops])).to(device)
        m = torch.from_numpy(np.stack([c.labels > 0 for c in crops])).to(device)
        loss = segmentation_loss(net(x)[0], f, m)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        batch_losses.append((epoch + (start + len(idx)) / len(order), loss.item()))
    hand_history.append(total / len(order))
    batch_line.set_data(*zip(*batch_losses))
    epoch_line.set_data(np.arange(1, epoch + 2), hand_history)
    ax.relim()
    ax.autoscale_view()
    live.update(fig)  # redraw once per epoch (a redraw costs more than a tiny training step)
plt.close(fig)
print("epoch mean losses:", np.round(hand_history, 4))
assert all(np.isfinite(hand_history))

# %% [markdown]
# ## 6. The same with the package: `train`
#
# `train` runs exactly this loop, from the same weights with the same config,
# and adds what a real run needs: validation (loss on fixed crops and AP at
# IoU 0.5 on whole images, every `val_every` epochs and after the last),
# a CSV history, checkpoints, a time budget, a NaN guard and, at the end, the
# model folder. Its epoch losses must equal ours.

# %%
net = CellposeUNet(model_config)
net.load_state_dict(initial_weights)
result = train(train_inputs, train_labels, net, config=config, val_data=(val_inputs, val_labels),
               out_dir=WORKDIR / "run", progress=not QUICK)
history = result.history
assert result.completed and [h["epoch"] for h in history] == list(range(1, N_EPOCHS + 1))
package_losses = np.array([h["train_loss"] for h in history])
tol = 1e-4 if device.type == "cpu" else 1e-2  # GPU kernels are not bit-reproducible
print("package epoch losses:", package_losses[:HAND_EPOCHS].round(4), "| by hand:", np.round(hand_history, 4))
assert np.allclose(package_losses[:HAND_EPOCHS], hand_history, rtol=tol, atol=tol)

epochs = np.array([h["epoch"] for h in history])
val = np.array([(h["epoch"], h["val_loss"], h["val_ap50"]) for h in history if np.isfinite(h["val_loss"])])
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
axes[0].plot(epochs, package_losses, "o-", label="train (package)")
axes[0].plot(np.arange(1, HAND_EPOCHS + 1), hand_history, "x", ms=10, label="train (by hand)")
axes[0].plot(val[:, 0], val[:, 1], "s", label="validation")
axes[0].set_ylabel("loss")
axes[0].legend(fontsize=8)
axes[1].plot(val[:, 0], val[:, 2], "s-", color="tab:green")
axes[1].set_ylabel("validation AP at IoU 0.5")
axes[1].set_ylim(0, 1)
axes[2].plot(epochs, [h["lr"] for h in history], ".-", color="k")
axes[2].set_ylabel("learning rate")
for ax in axes:
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, N_EPOCHS + 0.5)
fig.tight_layout()
show(fig)

# %% [markdown]
# What the model does with a validation image now (at the validation images'
# true diameter). After a few epochs of a tiny network (`QUICK`) expect
# little; the full run gets somewhere.

# %%
val_image, val_truth = val_raw[0]
seg = predict.segment(val_image, result.model, diameter=median_diameter(val_truth), channels=(0, None))
ap50 = metrics.average_precision(val_truth, seg.labels, thresholds=[0.5])[0, 0]
print(f"{seg.labels.max()} masks for {n_objects(val_truth)} nuclei; AP@0.5 = {ap50:.2f}")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
plot.show_flows(seg.flows, ax=axes[0], title="predicted flows")
axes[1].imshow(seg.cellprob, cmap="magma")
axes[1].set_title("predicted cell probability (logit)")
axes[1].set_axis_off()
plot.show_errors(val_truth, seg.labels, ax=axes[2], image=val_image)
show(fig)

# %% [markdown]
# ## 7. Checkpoints and resuming
#
# Long runs get interrupted: a laptop sleeps, a Colab session ends, a cluster
# job hits its time limit. `train` writes `checkpoint.pt` (weights, optimiser
# state, epoch, history, config, data hash) every `save_every` epochs, when
# the time budget `max_minutes` runs out, and on Ctrl-C; `resume=True` picks
# the run up from there.
#
# A small demo with the tiny network: one run of `RESUME_EPOCHS` epochs
# straight through, and one stopped after `STOP_AFTER` epochs and resumed.
# `max_minutes=0` is a budget that is spent after one epoch, a reproducible
# way to stop a run (the budget may change on resume; `n_epochs` may not).

# %%
demo_model = ModelConfig(features=(8, 16, 32, 64), diam_mean=DIAM_MEAN)
demo = TrainConfig(n_epochs=RESUME_EPOCHS, batch_size=BATCH, crop_size=CROP, warmup_epochs=0,
                   seed=SEED, device=DEVICE, num_threads=THREADS, save_every=1, amp=False)
demo_x, demo_y = train_inputs[:RESUME_IMAGES], train_labels[:RESUME_IMAGES]
torch.manual_seed(SEED)
demo_weights = copy.deepcopy(CellposeUNet(demo_model).state_dict())


def fresh_net():
    net = CellposeUNet(demo_model)
    net.load_state_dict(demo_weights)
    return net


straight = train(demo_x, demo_y, fresh_net(), config=demo, out_dir=WORKDIR / "straight", progress=False)

stopped = WORKDIR / "stopped"
budget = dataclasses.replace(demo, max_minutes=0)
for k in range(STOP_AFTER):
    part = train(demo_x, demo_y, fresh_net(), config=budget, out_dir=stopped, resume=k > 0, progress=False)
    print(f"call {k + 1}: completed={part.completed}, epochs so far {[h['epoch'] for h in part.history]}")
assert not part.completed and len(part.history) == STOP_AFTER

saved = torch.load(stopped / "checkpoint.pt", weights_only=True)
print("checkpoint holds:", sorted(saved), "| epoch", saved["epoch"])
print("files:", sorted(p.name for p in stopped.iterdir()))

try:  # the schedule depends on n_epochs: a resumed run may not change it
    train(demo_x, demo_y, fresh_net(), config=dataclasses.replace(demo, n_epochs=2 * RESUME_EPOCHS),
          out_dir=stopped, resume=True, progress=False)
except ValueError as err:
    print("refused:", err)
else:
    raise AssertionError("changing n_epochs on resume should be refused")

# a fresh network with other random weights: resume loads everything from the checkpoint
resumed = train(demo_x, demo_y, CellposeUNet(demo_model), config=demo, out_dir=stopped, resume=True,
                progress=False)
print("resumed: completed", resumed.completed, "epochs", [h["epoch"] for h in resumed.history])
assert resumed.completed and [h["epoch"] for h in resumed.history] == list(range(1, RESUME_EPOCHS + 1))
assert [h["train_loss"] for h in resumed.history[:STOP_AFTER]] == [h["train_loss"] for h in part.history]
a = np.array([h["train_loss"] for h in straight.history])
b = np.array([h["train_loss"] for h in resumed.history])
print("straight:", a.round(5), "\nresumed: ", b.round(5))
assert np.allclose(a, b, rtol=tol, atol=tol)
for (name, w1), w2 in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
    assert torch.allclose(w1.float(), w2.float(), rtol=tol, atol=tol), name

# %% [markdown]
# Interrupted and resumed, the run is the same run: same losses, same final
# weights. (One exception: after Ctrl-C in the *middle* of an epoch, that
# epoch restarts from partly updated weights.)
#
# > **Checkpoint (discuss in pairs):** list what a checkpoint must hold for a
# > resumed run to be *the same* run. Which of these would you forget first,
# > and how would you notice?
#
# ## 8. What a run leaves behind
#
# The run folder of section 6 holds:
#
# - `history.csv`: one row per epoch (rewritten after every epoch, so you can
#   plot it from another notebook while the run goes on);
# - `checkpoint.pt`: for resuming;
# - `flows/`: the cached flows, one `.npy` per label image, named by the hash
#   of the labels (a resumed run reads them instead of computing them again);
# - `model/`: the trained model (`weights.safetensors`, `config.json`) and
#   `training.json`, the record of how it was made.

# %%
run = result.out_dir
for path in sorted(run.rglob("*")):
    if path.is_file():
        print(f"{str(path.relative_to(run)):75s} {path.stat().st_size:>10,d} bytes")

with open(run / "history.csv", newline="") as fh:
    rows = list(csv.DictReader(fh))
print("\n" + " ".join(f"{c:>10s}" for c in rows[0]))
for row in rows:
    print(" ".join(f"{float(v):10.4g}" for v in row.values()))
assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history]
assert np.allclose([float(r["train_loss"]) for r in rows], package_losses)

# %% [markdown]
# `training.json` records what is needed to trust, compare and repeat the
# run: the training config and the model config, a SHA-256 **hash of the
# training data** (images and labels, bytes and shapes: two models trained on
# "the same folder" that was edited in between have different hashes), the
# versions of the software, the history, the seed, the device and the time.

# %%
record = json.loads((result.model_dir / "training.json").read_text())
print("keys:", sorted(record))
print("config:", json.dumps(record["config"]))
print("model config:", record["model_config"])
print("data hash:", record["data_hash"])
print("versions:", record["versions"])
print("device:", record["device"], "| epochs done:", record["epochs_done"], "| finished at:", record["finished_at"])
assert record["data_hash"] == data_hash(train_inputs, train_labels)
assert record["config"] == json.loads(json.dumps(config.to_dict()))

reloaded = model.load(result.model_dir, device=device)
probe = torch.from_numpy(val_inputs[0][None, :, :CROP, :CROP]).to(device)
with torch.no_grad():
    assert torch.allclose(reloaded(probe)[0], result.model(probe)[0], atol=1e-5)
print("reloaded from", result.model_dir.name, "with the same outputs; training record:", reloaded.record.training is not None)

# %% [markdown]
# ## 9. After the loop: the size model
#
# A trained network can also guess the cell size of a new image, from its
# style vector (notebook 04). `fit_size_model` crops the training images at
# random zooms, computes each crop's style and fits a ridge regression from
# the style to the log of the crop's median diameter. The zooms are spread
# evenly (in log) from 1/2.2 to 2.2 times each image's own size, so that the
# regression has seen cells up to twice as large or small as the training
# images' (Cellpose zooms by 0.5-1.5). The style is the one inference uses:
# `predict_style`, the encoder alone on at most 2 x 2 tiles, half the cost
# of the network on every tile. `finish_model` (called by `train_folder` and
# the CLI) also tunes the cell-probability and flow thresholds on the
# validation images and saves everything in the model folder.

# %%
size_model = fit_size_model(train_inputs, train_labels, result.model, n_passes=SIZE_PASSES,
                            crop_size=SIZE_CROP, seed=SEED)
for x, lab in zip(val_inputs, val_labels):
    style = predict.predict_style(x, result.model)  # the encoder on a few tiles of the image as it is
    guess = size_model.predict(style[None])[0]
    print(f"true median diameter {median_diameter(lab):5.1f} px, guessed from the style {guess:5.1f} px")
assert np.isfinite(guess) and guess >= 5

# %% [markdown]
# With a network this small and this short a run, the guesses are rough:
# the style of a network trained for minutes encodes cell size weakly, and
# the regression has only a few hundred crops to learn from. The guess is
# only the first step. Without a diameter, `segment` segments the image at
# the guess and measures the median diameter of the masks it finds (as
# Cellpose does); when that estimate is within `REUSE_TOLERANCE` (40 %) of
# the guess, that segmentation is the result, and only otherwise is the
# image segmented again at the estimate. So a good guess costs one
# segmentation plus the style, and a poor one still ends at the right size.
#
# The shipped nuclei model on a real image, zoomed from half to twice its
# size: the true median diameter, the style's guess, and the estimate.

# %%
shipped = model.load_pretrained("nuclei")
sample = data.load_sample("fluorescence")
rows = []
for zoom in (0.5, 0.7, 1.0, 1.4, 2.0):
    img_z = ndimage.zoom(sample.image.astype(np.float32), zoom, order=1)  # the field at another magnification
    lab_z = ndimage.zoom(sample.labels, zoom, order=0)
    x_z = to_network_input(img_z, channels=("gray", None), invert="auto")  # the model's input recipe
    res_z = predict.segment(img_z, shipped)
    rows.append((zoom, median_diameter(lab_z), predict.style_diameter(x_z, shipped), res_z.diameter))
    print(f"zoom {zoom:3.1f}: true {rows[-1][1]:5.1f} px, guess {rows[-1][2]:5.1f} px, "
          f"estimate {rows[-1][3]:5.1f} px ({res_z.notes[-1]})")
zooms, truth, guess_z, estimate_z = map(np.array, zip(*rows))
fig, ax = plt.subplots(figsize=(5.5, 4))
ax.plot(truth, truth, color="0.6", lw=1, label="truth")
ax.plot(truth, guess_z, "s", mfc="none", label="style's guess")
ax.plot(truth, estimate_z, "o", label="estimate (masks at the guess)")
ax.set(xlabel="true median diameter (px)", ylabel="estimated (px)", xscale="log", yscale="log",
       title="Diameter estimate of the shipped nuclei model")
ax.legend(frameon=False)
show(fig)
# the estimate is within 15 % of the truth at every zoom (benchmarks/diameter.py measures
# the median error over the validation images)
assert np.all(np.abs(estimate_z / truth - 1) < 0.15), estimate_z / truth

# %% [markdown]
# ## In practice
#
# - **Device.** `TrainConfig(device=None)` picks CUDA, then MPS, then the
#   CPU. On a CPU, train small networks on small crops, and set
#   `num_threads` when other jobs share the machine. Precision (float16,
#   bfloat16) and what it gains on which hardware: `docs/hardware.md`.
#   This notebook trains in float32 (`amp=False`), so that its hand-written
#   loop and the package compute the same numbers.
# - **Cellpose's recipe** is 500 epochs, batches of 8 crops of 224 x 224,
#   AdamW at 0.005 with weight decay 1e-5 (`train_seg`), or SGD at 0.2 with
#   momentum 0.9 (the Cellpose 1 paper; `optimizer="sgd"`). Fine-tuning a
#   pretrained model needs far fewer epochs (100 or so) and a lower rate.
# - **Diameters.** Each training image is zoomed by `diam_mean / its median
#   diameter` (from its labels), so that all cells come out at the model's
#   size: labels with the wrong scale (a few huge merged objects) mislead it.
#   Images with fewer than `min_train_masks` (5) objects are left out, with a
#   warning.
# - **Epochs of very different length.** With many images of different sizes,
#   `n_images_per_epoch` fixes the number of crops per epoch (drawn with
#   replacement).
# - **Resuming** needs the same config (`n_epochs` fixes the schedule; only
#   `device`, `num_threads`, `max_minutes`, `save_every`, `amp` and the
#   settings used after the loop, `size_*` and the threshold grids, may change)
#   and the same data (checked by the hash). A checkpoint is never overwritten
#   by a new run: use a new `out_dir` or `resume=True`.
# - **Validation** costs a full segmentation of every validation image; with
#   many images raise `val_every`.
# - **A whole folder** in the Cellpose format: `train_folder` (split, train,
#   size model, thresholds), or `cellpose-nb train FOLDER --out RUN` on the
#   command line (`--resume` to continue, `--max-minutes` for a budget).
#
# > **Cellpose 1.0 or 3?** The loss (flows scaled by 5, half MSE plus
# > cross-entropy) and the SGD recipe (rate 0.2, momentum 0.9) are Cellpose
# > 1.0's; AdamW at 0.005 with weight decay 1e-5, the warm-up and the
# > halvings are the `train_seg` defaults of cellpose 3.1.1.2. The size
# > model is Cellpose's ridge regression from the style, but fitted here on
# > crops zoomed by 1/2.2-2.2, with the style of a few tiles (Cellpose:
# > 0.5-1.5, every tile).
#
# **Sources.** Stringer, Wang, Michaelos & Pachitariu (2021), *Cellpose: a
# generalist algorithm for cellular segmentation*, Nature Methods 18,
# 100-106 (the loss, the augmentation, the size model). Pachitariu &
# Stringer (2022), *Cellpose 2.0: how to train your own model*, Nature
# Methods 19, 1634-1641 (fine-tuning, `train_seg`). Loshchilov & Hutter
# (2019), *Decoupled weight decay regularization*, ICLR (AdamW).
#
# ## Exercises
#
# 1. **Why `FLOW_SCALE`?** For the all-zero output of section 2, compare the
#    two terms of the loss with `FLOW_SCALE = 5` and with 1 (compute the flow
#    term by hand). Which term would dominate the gradient with unit flows?

# %% tags=["solution"]
for scale in (1.0, FLOW_SCALE):
    flow_part = 0.5 * ((0 - scale * f_batch) ** 2).mean().item()
    print(f"FLOW_SCALE {scale:g}: flow term {flow_part:.3f}, cross-entropy {np.log(2):.3f}")
# With unit flows the flow term is 25 times smaller (0.5 * fraction of cell pixels / 2) and the
# cross-entropy dominates: the network would learn where the cells are long before it learns
# which way their centres lie. Scaling by 5 balances the two.
assert 0.5 * ((FLOW_SCALE * f_batch) ** 2).mean() > 0.5 * (f_batch**2).mean()

# %% [markdown]
# 2. **Moved but not turned.** For rotations of 0, 45, 90, 135 and 180
#    degrees (no flip, zoom 1), compute the mean cosine between the warped
#    flows *without* the turning and the flows recomputed from the warped
#    labels. What would a network trained on such flows learn?

# %% tags=["solution"]
for angle in (0, 45, 90, 135, 180):
    Ma = similarity_matrix(lab0.shape, out_size=OUT, angle=np.deg2rad(angle))
    warped = warp_sample(x0, lab0, Ma, out_size=OUT)
    inv_a = np.linalg.inv(Ma)
    moved_a = np.stack([ndimage.affine_transform(f_, inv_a[:2, :2], offset=inv_a[:2, 2], output_shape=OUT,
                                                 order=1, prefilter=False) for f_ in flow0])
    uncut = clear_border(warped.labels) > 0
    c = (moved_a * masks_to_flows(warped.labels)).sum(axis=0)[uncut].mean()
    print(f"{angle:3d} degrees: mean cosine {c:+.2f}, cos(angle) = {np.cos(np.deg2rad(angle)):+.2f}")
    assert abs(c - np.cos(np.deg2rad(angle))) < 0.15
# About cos(angle): 1 at 0 degrees, 0 at 90, -1 at 180 (the arrows point away from the centres).
# A network trained on such targets sees contradictory answers for the same picture and learns
# flows close to zero: the masks fall apart.

# %% [markdown]
# 3. **Resume with other data.** Try to resume the stopped demo run
#    (`WORKDIR / "stopped"`) with one image fewer, and with a batch size of
#    1. What happens, and why is that the right behaviour?

# %% tags=["solution"]
for what, kwargs in (("one image fewer", dict(images=demo_x[:-1], labels=demo_y[:-1], config=demo)),
                     ("batch size 1", dict(images=demo_x, labels=demo_y,
                                           config=dataclasses.replace(demo, batch_size=1)))):
    try:
        train(kwargs["images"], kwargs["labels"], fresh_net(), config=kwargs["config"], out_dir=stopped,
              resume=True, progress=False)
    except ValueError as err:
        print(f"{what}: {err}")
    else:
        raise AssertionError(f"{what} should be refused")
# Both are refused before any training: the checkpoint's weights and optimiser state belong to
# another run (other data, other steps); continuing would silently mix two experiments.

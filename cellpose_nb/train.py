"""Training the Cellpose network: loss, schedule, loop, checkpoints, size model, thresholds.

The recipe is Cellpose's ``train.train_seg``:

* every training image is turned into its flows ONCE (:func:`cached_flows`),
  and every epoch each image is randomly flipped, rotated, zoomed toward the
  model's ``diam_mean`` and cropped to 224 x 224 (:mod:`cellpose_nb.augment`),
  the cached flows being turned as vectors with it;
* the loss is ``0.5 * MSE(y_flows, FLOW_SCALE * flows) + BCE(y_cellprob, labels > 0)``
  (:func:`segmentation_loss`);
* the learning rate ramps up linearly over 10 epochs, stays constant, and is
  halved 10 times over the last epochs (:func:`learning_rate_schedule`);
* AdamW (lr 0.005, weight decay 1e-5) as ``train_seg``'s default, or SGD
  with momentum 0.9 (the Cellpose 1 paper and CLI: lr 0.2).

Around it: a CSV history, resumable checkpoints, a NaN guard, a wall-time
budget, and after training the size model (style -> diameter,
:func:`fit_size_model`) and the post-processing thresholds
(:func:`optimize_thresholds`).  :func:`train_folder` does all of it for a
Cellpose-style folder.

Training inputs are network inputs: (2, H, W) float32 arrays, as returned by
:func:`prepare_images` (a thin loop over
:func:`cellpose_nb.normalize.to_network_input`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cellpose_nb import __version__
from cellpose_nb import model as model_io
from cellpose_nb._alloc import reuse_freed_memory
from cellpose_nb.augment import random_transform
from cellpose_nb.flows import FLOW_SCALE, check_labels, masks_to_flows
from cellpose_nb.masks import (
    MAX_SIZE_FRACTION,
    cluster_endpoints,
    compute_masks,
    fill_holes_and_remove_small_masks,
    flow_errors,
    follow_flows,
)
from cellpose_nb.metrics import average_precision
from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict import n_iter_for, predict_flows

__all__ = [
    "TrainConfig",
    "amp_dtype",
    "cpu_has_bfloat16_units",
    "TrainResult",
    "SizeModel",
    "DiameterEstimate",
    "segmentation_loss",
    "learning_rate_schedule",
    "prepare_images",
    "median_diameter",
    "cached_flows",
    "data_hash",
    "split_train_val",
    "train",
    "fit_size_model",
    "estimate_diameter",
    "load_size_model",
    "optimize_thresholds",
    "finish_model",
    "train_folder",
]

# --- constants, each named once ------------------------------------------------------
MIN_DIAMETER = 5.0  # Cellpose clamps training diameters and size estimates to >= 5 px
DECAY_RULE = ((300, 100), (100, 50))  # Cellpose: > 300 epochs decay over 100, > 100 over 50
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_ap50", "lr", "seconds")
MODEL_DIR = "model"  # out_dir/model: the saved model folder
FLOW_CACHE_DIR = "flows"  # out_dir/flows: cached flows, <sha256 of labels>.npy
SIZE_MODEL_FILE = "size_model.json"
SIZE_CROP = 512  # Cellpose's train_size bsize
SIZE_SCALE_RANGE = 1.0  # Cellpose's train_size scale_range: zoom in [0.5, 1.5]
SIZE_PASSES = 10  # Cellpose's train_size n_epochs
SIZE_L2 = 1.0  # ridge penalty of the size regression (Cellpose)
SIZE_L2_GRID = (1.0, 0.1, 0.01, 0.001)  # penalties finish_model tries on the validation set
CELLPROB_GRID = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
FLOW_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
AP_IOU = 0.5  # IoU threshold of the validation AP
MIN_SIZE = 15  # compute_masks' default minimum mask size
#: Mixed precision: the autocast dtype per device type.  The weights, the loss
#: and the optimizer stay float32.  No autocast on mps.  On the CPU, bfloat16
#: convolutions are fast only where the CPU has bfloat16 matrix units (Intel
#: AMX); there ``TrainConfig(amp=None)`` uses them (see
#: :func:`cpu_has_bfloat16_units`; benchmarks/train_vs_cellpose.py measured
#: 2.2x cellpose's float32 throughput for widths 16-128 at 112 px crops and
#: 3.8-3.9x for 32-256 at 224 px on a Xeon with AMX, and the nuclei recipe
#: trained this way was within run-to-run noise of float32 training: README).
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}
# config fields that may differ between a run and its resumption
_RUNTIME_FIELDS = frozenset({"device", "num_threads", "max_minutes", "save_every", "amp"})
_OPTIMIZERS = ("adamw", "sgd")


# --- configuration -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Knobs of :func:`train` (saved in the training record).

    Examples
    --------
    >>> TrainConfig(n_epochs=3, optimizer="sgd", learning_rate=0.2).momentum
    0.9
    """

    n_epochs: int = 500  # passes over the training set (Cellpose CLI: 500)
    batch_size: int = 8  # crops per optimisation step (Cellpose: 8)
    learning_rate: float = 0.005  # peak learning rate (train_seg: 0.005 AdamW; SGD: 0.2)
    optimizer: str = "adamw"  # "adamw" (train_seg default) or "sgd" (Cellpose 1, CLI)
    momentum: float = 0.9  # SGD momentum (Cellpose: 0.9)
    weight_decay: float = 1e-5  # L2 weight decay (Cellpose: 1e-5)
    warmup_epochs: int = 10  # linear ramp 0 -> learning_rate over these epochs (Cellpose: 10)
    decay_epochs: int | None = None  # last epochs with halvings; None: Cellpose (100/50/0)
    n_halvings: int = 10  # halvings of the learning rate during the decay (Cellpose: 10)
    diam_mean: float | None = None  # mean diameter images are zoomed to; None: the model's
    rescale: bool = True  # zoom each image by diam_mean / its median object diameter
    scale_range: float = 0.5  # random zoom in [1 - r/2, 1 + r/2] (Cellpose: 0.5)
    crop_size: int = 224  # side of the square training crops (Cellpose's bsize)
    n_images_per_epoch: int | None = None  # crops per epoch; None: every image once
    min_train_masks: int = 5  # drop training images with fewer objects (Cellpose: 5)
    seed: int = 0  # seeds the data order and the augmentations
    device: str | None = None  # None: cuda -> mps -> cpu
    amp: bool | None = None  # mixed precision (AMP_DTYPES); None: cuda, and CPUs with AMX (amp_dtype)
    val_every: int = 10  # validate every this many epochs (and after the last)
    save_every: int = 5  # checkpoint every this many epochs (and after the last)
    num_threads: int | None = None  # torch.set_num_threads during training; None: unchanged
    max_minutes: float | None = None  # budget of one call: stop before an epoch that would overrun

    def __post_init__(self):
        positive = ("n_epochs", "batch_size", "crop_size", "val_every", "save_every")
        for name in positive:
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}; got {self.optimizer!r}")
        if not self.learning_rate >= 0:
            raise ValueError(f"learning_rate must be >= 0; got {self.learning_rate!r}")
        if self.warmup_epochs < 0 or self.n_halvings < 0:
            raise ValueError("warmup_epochs and n_halvings must be >= 0")
        if self.decay_epochs is not None and self.decay_epochs < 0:
            raise ValueError(f"decay_epochs must be None or >= 0; got {self.decay_epochs!r}")
        if not 0 <= self.scale_range < 2:
            raise ValueError(f"scale_range must be in [0, 2); got {self.scale_range!r}")
        if self.diam_mean is not None and not self.diam_mean > 0:
            raise ValueError(f"diam_mean must be None or > 0; got {self.diam_mean!r}")
        if self.n_images_per_epoch is not None and self.n_images_per_epoch < 1:
            raise ValueError("n_images_per_epoch must be None or >= 1")
        if self.max_minutes is not None and not self.max_minutes >= 0:
            raise ValueError(f"max_minutes must be None or >= 0; got {self.max_minutes!r}")

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of the fields."""
        return dataclasses.asdict(self)


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes
    ----------
    model : CellposeUNet
        The trained network (eval mode), on the training device.
    history : list of dict
        One dict per epoch with the keys of ``HISTORY_COLUMNS``.
    completed : bool
        False when the call stopped early on ``max_minutes``; call again with
        ``resume=True`` to go on.
    out_dir : Path or None
    model_dir : Path or None
        ``out_dir/model``, where the model was saved.
    """

    model: torch.nn.Module
    history: list
    completed: bool
    out_dir: Path | None
    model_dir: Path | None


# --- loss and schedule ---------------------------------------------------------------
def segmentation_loss(y, flows, cell_mask):
    """Cellpose's training loss (``cellpose.train._loss_fn_seg``).

    ``0.5 * MSE(y[:, :2], FLOW_SCALE * flows) + BCEWithLogits(y[:, 2], cell_mask)``,
    both means over all pixels.

    Parameters
    ----------
    y : torch.Tensor (B, 3, H, W)
        Network output: ``FLOW_SCALE * d_row``, ``FLOW_SCALE * d_col``, cellprob logit.
    flows : torch.Tensor (B, 2, H, W)
        True unit flows.
    cell_mask : torch.Tensor (B, H, W)
        True where a pixel belongs to an object (bool or 0/1).

    Returns
    -------
    torch.Tensor
        Scalar.

    Examples
    --------
    >>> y = torch.zeros(1, 3, 2, 2)
    >>> round(float(segmentation_loss(y, torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2))), 4)
    0.6931
    """
    flow_loss = F.mse_loss(y[:, :2], FLOW_SCALE * flows) / 2
    prob_loss = F.binary_cross_entropy_with_logits(y[:, 2], cell_mask.to(y.dtype))
    return flow_loss + prob_loss


def learning_rate_schedule(config: TrainConfig) -> np.ndarray:
    """Learning rate of every epoch (Cellpose's ``train_seg`` schedule).

    Linear warm-up from 0 over ``warmup_epochs`` (``np.linspace(0, lr, warmup)``),
    then constant, then over the last ``decay_epochs`` epochs ``n_halvings``
    equal steps, each halving the rate.  ``decay_epochs=None`` is Cellpose's
    rule: 100 epochs when ``n_epochs > 300``, 50 when ``> 100``, else none.

    Returns
    -------
    ndarray (n_epochs,) of float64

    Examples
    --------
    >>> learning_rate_schedule(TrainConfig(n_epochs=6, warmup_epochs=3, learning_rate=1.0,
    ...                                    decay_epochs=2, n_halvings=2)).tolist()
    [0.0, 0.5, 1.0, 1.0, 0.5, 0.25]
    """
    n, lr = config.n_epochs, config.learning_rate
    decay = config.decay_epochs
    if decay is None:
        decay = next((d for above, d in DECAY_RULE if n > above), 0)
    rates = np.full(n, lr, dtype=np.float64)
    ramp = np.linspace(0, lr, config.warmup_epochs)
    rates[: min(n, len(ramp))] = ramp[:n]
    decay = min(decay, n)
    if decay and config.n_halvings:
        steps = np.arange(decay) * config.n_halvings // decay + 1
        rates[n - decay:] = rates[n - decay - 1 if n > decay else 0] / 2.0**steps
    return rates


# --- data preparation ----------------------------------------------------------------
def prepare_images(images, *, channels=(0, None), channel_axis=None, invert=False,
                   normalize=True) -> list[np.ndarray]:
    """Turn raw images into network inputs, (2, H, W) float32 each.

    A loop over :func:`cellpose_nb.normalize.to_network_input` (percentile
    normalisation, cytoplasm + nuclear channel).

    Examples
    --------
    >>> [x.shape for x in prepare_images([np.ones((4, 5)), np.ones((3, 3, 2))], channels=(0, 1))]
    [(2, 4, 5), (2, 3, 3)]
    """
    return [to_network_input(im, channels=channels, channel_axis=channel_axis,
                             normalize=normalize, invert=invert) for im in images]


def median_diameter(labels) -> float:
    """Median object diameter, ``sqrt(4 * area / pi)`` (``cellpose.utils.diameters``).

    Returns 0.0 for an image without objects.

    Examples
    --------
    >>> lab = np.zeros((30, 30), int); lab[:10, :10] = 1
    >>> round(median_diameter(lab), 3)   # a 10 x 10 square: 2 * 10 / sqrt(pi)
    11.284
    """
    lab = check_labels(labels)
    counts = np.bincount(lab.ravel())[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    return float(np.median(np.sqrt(counts)) / (np.sqrt(np.pi) / 2))


def _labels_key(labels) -> str:
    lab = check_labels(labels)
    digest = hashlib.sha256(f"heat{lab.shape}{lab.dtype}".encode())
    digest.update(lab.tobytes())
    return digest.hexdigest()


def cached_flows(labels_list, *, cache_dir=None, progress=False) -> list[np.ndarray]:
    """Flows of every label image, computed once and optionally kept on disk.

    Parameters
    ----------
    labels_list : sequence of ndarray (H, W) of int
    cache_dir : path, optional
        Folder of ``<sha256 of the labels>.npy`` files: flows found there are
        read, the others computed and written.
    progress : bool
        tqdm bar over the images.

    Returns
    -------
    list of ndarray (2, H, W) of float32

    Examples
    --------
    >>> lab = np.zeros((9, 9), np.int32); lab[2:7, 2:7] = 1
    >>> cached_flows([lab])[0].shape
    (2, 9, 9)
    """
    folder = None if cache_dir is None else Path(cache_dir)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    out = []
    for labels in tqdm(labels_list, desc="flows", disable=not progress, leave=False):
        path = None if folder is None else folder / f"{_labels_key(labels)}.npy"
        if path is not None and path.is_file():
            out.append(np.load(path))
            continue
        flows = masks_to_flows(labels)
        if path is not None:
            tmp = path.with_name(path.stem + ".tmp.npy")
            np.save(tmp, flows)
            os.replace(tmp, path)
        out.append(flows)
    return out


def data_hash(images, labels) -> str:
    """SHA-256 over the shapes, dtypes and bytes of the images and labels, in order.

    Examples
    --------
    >>> len(data_hash([np.zeros((2, 4, 4), np.float32)], [np.zeros((4, 4), np.int32)]))
    64
    """
    digest = hashlib.sha256()
    for array in (*images, *labels):
        a = np.ascontiguousarray(array)
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def split_train_val(n, *, val_fraction=0.1, seed=0, strata=None):
    """Deterministic train/validation split of ``n`` items, optionally stratified.

    Each stratum (e.g. imaging modality) gives ``round(val_fraction * size)``
    items to validation (at least one when the stratum has two or more items
    and ``val_fraction > 0``), drawn with ``np.random.default_rng(seed)``.

    Returns
    -------
    train_idx, val_idx : ndarray of int
        Sorted indices.

    Examples
    --------
    >>> tr, va = split_train_val(10, val_fraction=0.2, seed=0)
    >>> len(tr), len(va), sorted([*tr, *va]) == list(range(10))
    (8, 2, True)
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    strata = np.zeros(n, int) if strata is None else np.asarray(strata)
    if len(strata) != n:
        raise ValueError(f"strata has {len(strata)} entries for {n} items")
    rng = np.random.default_rng(seed)
    val = []
    for value in sorted(set(strata.tolist()), key=str):
        members = np.flatnonzero(strata == value)
        k = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) >= 2:
            k = max(k, 1)
        val.extend(rng.permutation(members)[:k].tolist())
    val_idx = np.array(sorted(val), dtype=int)
    return np.setdiff1d(np.arange(n), val_idx), val_idx


def _check_inputs(images, labels, n_channels, what):
    if len(images) != len(labels):
        raise ValueError(f"{what}: {len(images)} images but {len(labels)} label images")
    checked_images, checked_labels = [], []
    for k, (image, lab) in enumerate(zip(images, labels)):
        x = np.asarray(image)
        if x.ndim != 3 or x.shape[0] != n_channels:
            raise ValueError(f"{what} image {k} has shape {x.shape}; expected network inputs "
                             f"({n_channels}, H, W): use prepare_images(images, channels=...)")
        lab = check_labels(lab, name=f"{what} labels {k}")
        if lab.shape != x.shape[1:]:
            raise ValueError(f"{what} image {k} is {x.shape[1:]} but its labels are {lab.shape}")
        checked_images.append(np.ascontiguousarray(x, dtype=np.float32))
        checked_labels.append(lab)
    return checked_images, checked_labels


# --- the network on one input: the same path as segmentation --------------------------
def _predict(model, x, *, rescale=1.0):
    """Flows, cellprob and style of one (C, H, W) input zoomed by ``rescale``:
    :func:`cellpose_nb.predict.predict_flows`, the path :func:`~cellpose_nb.predict.segment`
    takes, so that validation AP, the size model and tuned thresholds see the
    outputs that segmentation uses."""
    return predict_flows(model, x, scale=rescale)


def _segment(model, x, *, rescale, cellprob_threshold=0.0, flow_threshold=0.4):
    pred = _predict(model, x, rescale=rescale)
    return compute_masks(pred.flows, pred.cellprob, cellprob_threshold=cellprob_threshold,
                         flow_threshold=flow_threshold, n_iter=n_iter_for(rescale))


# --- checkpoints and history ---------------------------------------------------------
def _atomic_torch_save(obj, path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_history(path, history):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _versions():
    return {"cellpose_nb": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _check_resumable(saved, config, digest):
    current = config.to_dict()
    changed = sorted(k for k in current if k not in _RUNTIME_FIELDS
                     and _jsonable(saved["config"].get(k)) != _jsonable(current[k]))
    if changed:
        raise ValueError(f"cannot resume: the config differs from the checkpoint's in "
                         f"{changed} (only {sorted(_RUNTIME_FIELDS)} may change)")
    if saved["data_hash"] != digest:
        raise ValueError("cannot resume: the training data differ from the checkpoint's "
                         f"(data hash {digest[:12]} vs {saved['data_hash'][:12]})")


def _jsonable(value):
    return json.loads(json.dumps(value))


# --- the training loop ---------------------------------------------------------------
def cpu_has_bfloat16_units() -> bool:
    """True when this CPU has bfloat16 matrix units (Intel AMX tiles).

    Elsewhere (AVX2 laptops, Apple silicon, AMD before Zen 5) bfloat16
    convolutions are emulated and can be slower than float32.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private API: absent in other torch versions
        return False


def amp_dtype(config: TrainConfig, device_type: str):
    """The autocast dtype a training run uses on ``device_type``, None for float32.

    ``config.amp``: True -> ``AMP_DTYPES[device_type]`` (none on mps), False ->
    float32, None -> float16 on cuda, bfloat16 on a CPU with bfloat16 units
    (:func:`cpu_has_bfloat16_units`), float32 otherwise.

    Examples
    --------
    >>> amp_dtype(TrainConfig(), "cuda"), amp_dtype(TrainConfig(), "mps")
    (torch.float16, None)
    >>> amp_dtype(TrainConfig(amp=True), "cpu"), amp_dtype(TrainConfig(amp=False), "cuda")
    (torch.bfloat16, None)
    >>> amp_dtype(TrainConfig(), "cpu") == (torch.bfloat16 if cpu_has_bfloat16_units() else None)
    True
    """
    if config.amp is None:
        amp = device_type == "cuda" or (device_type == "cpu" and cpu_has_bfloat16_units())
    else:
        amp = bool(config.amp)
    return AMP_DTYPES.get(device_type) if amp else None


class _Run:
    """Everything one call of :func:`train` works with (kept out of the public API)."""

    def __init__(self, model, config, images, labels, flows, rescale, device):
        self.model, self.config, self.device = model, config, device
        self.images, self.labels, self.flows, self.rescale = images, labels, flows, rescale
        self.amp_dtype = amp_dtype(config, device.type)
        # float16 needs loss scaling (small gradients underflow); bfloat16 has float32's range
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate,
                                             momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                               weight_decay=config.weight_decay)

    def batch(self, indices, rng, images=None, labels=None, flows=None, rescale=None):
        images = self.images if images is None else images
        labels = self.labels if labels is None else labels
        flows = self.flows if flows is None else flows
        rescale = self.rescale if rescale is None else rescale
        size = (self.config.crop_size, self.config.crop_size)
        crops = [random_transform(images[i], labels[i], flows=flows[i], rng=rng, out_size=size,
                                  scale_range=self.config.scale_range, rescale=rescale[i])
                 for i in indices]
        x = torch.from_numpy(np.stack([c.image for c in crops])).to(self.device)
        f = torch.from_numpy(np.stack([c.flows for c in crops])).to(self.device)
        m = torch.from_numpy(np.stack([c.labels > 0 for c in crops])).to(self.device)
        return x, f, m

    def loss(self, x, f, m):
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float16,
                            enabled=self.amp_dtype is not None):
            y = self.model(x)[0]
        return segmentation_loss(y.float(), f, m)

    def step(self, loss):
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def epoch_order(self, rng):
        n, k = len(self.images), self.config.n_images_per_epoch
        if k is None or k == n:
            return rng.permutation(n)
        return rng.choice(n, size=k, replace=True)


def _epoch_rng(seed, epoch):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, epoch)))


def _validation_rng(seed):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))


def _validate(run, val):
    """Validation loss on fixed random crops and AP@0.5 on the whole images."""
    model, config = run.model, run.config
    model.eval()
    rng, total = _validation_rng(config.seed), 0.0
    order = np.arange(len(val["images"]))
    with torch.no_grad():
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            x, f, m = run.batch(idx, rng, **val)
            total += run.loss(x, f, m).item() * len(idx)
    preds = [_segment(model, x, rescale=r) for x, r in zip(val["images"], val["rescale"])]
    ap = average_precision(val["labels"], preds, thresholds=[AP_IOU])[:, 0]
    model.train()
    return total / len(order), float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def _rescale_factors(labels, diam_mean, rescale):
    diams = np.array([max(MIN_DIAMETER, median_diameter(lab)) for lab in labels])
    return diams, (diam_mean / diams if rescale else np.ones(len(diams)))


def _drop_sparse(images, labels, names, min_masks):
    counts = [len(np.unique(lab)) - (1 if (lab == 0).any() else 0) for lab in labels]
    keep = [k for k, c in enumerate(counts) if c >= min_masks]
    if len(keep) < len(images):
        dropped = [names[k] if names else k for k in range(len(images)) if k not in set(keep)]
        warnings.warn(f"{len(dropped)} training images have fewer than min_train_masks="
                      f"{min_masks} objects and are left out: {dropped[:10]}"
                      f"{' ...' if len(dropped) > 10 else ''}", stacklevel=3)
    if not keep:
        raise ValueError(f"no training image has at least min_train_masks={min_masks} objects")
    return ([images[k] for k in keep], [labels[k] for k in keep],
            [names[k] for k in keep] if names else None, keep)


@contextlib.contextmanager
def _torch_threads(n):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(model, train_images, train_labels, *, config=None, val_images=None,
          val_labels=None, out_dir=None, resume=False, progress=True, train_names=None,
          val_names=None, command=None) -> TrainResult:
    """Train ``model`` (in place) the Cellpose way.

    Parameters
    ----------
    model : CellposeUNet
        Trained in place and moved to ``config.device``.
    train_images : sequence of ndarray (2, H, W) of float32
        Network inputs (see :func:`prepare_images`); sizes may differ.
    train_labels : sequence of ndarray (H, W) of int
    config : TrainConfig, optional
    val_images, val_labels : sequences, optional
        Validation set: loss on fixed random crops and AP@0.5 on the whole
        images (zoomed by ``diam_mean / true median diameter``), every
        ``config.val_every`` epochs and after the last.
    out_dir : path, optional
        Run folder: ``history.csv`` (rewritten every epoch), ``checkpoint.pt``
        (model, optimizer, epoch, history; every ``save_every`` epochs, on
        Ctrl-C and at the end), ``flows/`` (cached flows) and at the end
        ``model/`` (:func:`cellpose_nb.model.save` with the training record).
        An existing checkpoint is never overwritten unless ``resume``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt``.  With the same config and
        data the result equals an uninterrupted run (unless the checkpoint
        was written on Ctrl-C in the middle of an epoch: that epoch restarts
        from the partly updated weights).
    progress : bool
        tqdm bar over the epochs, with the last losses as postfix.
    train_names, val_names : sequence of str, optional
        Recorded in the training record.
    command : str or sequence of str, optional
        The command line, recorded in the training record.

    Returns
    -------
    TrainResult
        ``model`` (eval mode), ``history``, ``completed``, ``out_dir``, ``model_dir``.

    Raises
    ------
    RuntimeError
        If the loss becomes NaN or infinite (names the epoch and batch).
    KeyboardInterrupt
        Re-raised after writing a checkpoint.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> lab = np.zeros((32, 32), np.int32)
    >>> for k in range(5): lab[2 + 6 * k: 6 + 6 * k, 4:12] = k + 1
    >>> x = np.stack([lab > 0, np.zeros_like(lab)]).astype(np.float32)
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=6.0))
    >>> cfg = TrainConfig(n_epochs=2, batch_size=2, crop_size=32, warmup_epochs=0)
    >>> res = train(net, [x, x], [lab, lab], config=cfg, progress=False)
    >>> [sorted(h) for h in res.history][0]
    ['epoch', 'lr', 'seconds', 'train_loss', 'val_ap50', 'val_loss']
    """
    t_call = time.perf_counter()  # max_minutes counts from here (flows included)
    config = TrainConfig() if config is None else config
    n_channels = model.config.n_channels
    images, labels = _check_inputs(train_images, train_labels, n_channels, "training")
    if len(images) == 0:
        raise ValueError("no training images given")
    have_val = val_images is not None and len(val_images) > 0
    if have_val:
        v_images, v_labels = _check_inputs(val_images, val_labels, n_channels, "validation")
    diam_mean = model.config.diam_mean if config.diam_mean is None else float(config.diam_mean)
    if diam_mean != model.config.diam_mean:
        raise ValueError(f"config.diam_mean={config.diam_mean} differs from the model's "
                         f"{model.config.diam_mean}; build the model with "
                         f"ModelConfig(diam_mean={config.diam_mean})")
    digest = data_hash(images, labels)
    # a model that was trained before (fine-tuning, or training in stages): keep its
    # record inside the new one, so that the whole lineage travels with the weights
    previous_record = getattr(model, "training_record", None)
    names = list(train_names) if train_names is not None else None
    images, labels, names, kept = _drop_sparse(images, labels, names, config.min_train_masks)

    out = None if out_dir is None else Path(out_dir)
    checkpoint = None if out is None else out / CHECKPOINT_FILE
    if resume and (checkpoint is None or not checkpoint.is_file()):
        raise FileNotFoundError(f"resume=True but there is no checkpoint {checkpoint}")
    if not resume and checkpoint is not None and checkpoint.exists():
        raise FileExistsError(f"{checkpoint} exists: pass resume=True to continue that run, "
                              f"or choose another out_dir")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    device = model_io.resolve_device(config.device)
    # on the CPU, reuse the heap for the activations of each step (cellpose_nb._alloc)
    with _torch_threads(config.num_threads), reuse_freed_memory(device.type == "cpu"):
        flows = cached_flows(labels, progress=progress,
                             cache_dir=None if out is None else out / FLOW_CACHE_DIR)
        diams, rescale = _rescale_factors(labels, diam_mean, config.rescale)
        model.to(device)
        model.diam_labels = float(diams.mean())
        run = _Run(model, config, images, labels, flows, rescale, device)
        val = None
        if have_val:
            v_flows = cached_flows(v_labels,
                                   cache_dir=None if out is None else out / FLOW_CACHE_DIR)
            val = {"images": v_images, "labels": v_labels, "flows": v_flows,
                   "rescale": _rescale_factors(v_labels, diam_mean, config.rescale)[1]}
        history, start = [], 0
        if resume:
            saved = torch.load(checkpoint, map_location=device, weights_only=True)
            _check_resumable(saved, config, digest)
            model.load_state_dict(saved["model"])
            run.optimizer.load_state_dict(saved["optimizer"])
            if run.scaler is not None and saved.get("scaler"):
                run.scaler.load_state_dict(saved["scaler"])
            history, start = list(saved["history"]), int(saved["epoch"])

        state = {"epoch": start}

        def write_history():
            if out is not None:
                _write_history(out / HISTORY_FILE, history)

        def save_checkpoint():
            if checkpoint is None:
                return
            _atomic_torch_save({
                "model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
                "scaler": run.scaler.state_dict() if run.scaler is not None else {},
                "epoch": state["epoch"], "history": history, "config": config.to_dict(),
                "data_hash": digest, "seed": config.seed,
                "torch_rng": torch.get_rng_state()}, checkpoint)
            write_history()

        completed = _loop(run, val, history, state, start, progress, save_checkpoint,
                          write_history, t_call)
    model.eval()
    if out is not None:
        record = {
            "config": config.to_dict(), "model_config": model.config.to_dict(),
            "data_hash": digest, "versions": _versions(), "history": history,
            "command": command if command is None or isinstance(command, str) else list(command),
            "seed": config.seed, "train_names": names,
            "val_names": list(val_names) if val_names is not None else None,
            "n_train": len(images), "n_val": len(v_images) if have_val else 0,
            "kept_train_indices": kept, "diam_labels": model.diam_labels,
            "epochs_done": state["epoch"], "completed": completed, "device": str(device),
            "precision": str(run.amp_dtype or torch.float32).removeprefix("torch."),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if previous_record:
            record["pretrained"] = previous_record
        model.training_record = record
        model_io.save(model, out / MODEL_DIR, training_record=record,
                      thresholds=model.thresholds, overwrite=True)
    return TrainResult(model, history, completed, out, None if out is None else out / MODEL_DIR)


def _loop(run, val, history, state, start, progress, save_checkpoint, write_history, t_call):
    """The epochs from ``start``; returns False when stopped by the time budget."""
    config, model = run.config, run.model
    rates = learning_rate_schedule(config)
    t_loop = time.perf_counter()
    bar = tqdm(range(start, config.n_epochs), initial=start, total=config.n_epochs,
               desc="train", disable=not progress, unit="epoch")
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            for group in run.optimizer.param_groups:
                group["lr"] = float(rates[epoch])
            model.train()
            rng = _epoch_rng(config.seed, epoch)
            order = run.epoch_order(rng)
            total = 0.0
            for b, begin in enumerate(range(0, len(order), config.batch_size)):
                idx = order[begin:begin + config.batch_size]
                loss = run.loss(*run.batch(idx, rng))
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"the training loss became {loss.item()} at epoch {epoch + 1}, batch "
                        f"{b + 1} (learning rate {rates[epoch]:.3g}); try a lower "
                        f"learning_rate, e.g. TrainConfig(learning_rate={rates.max() / 10:.3g})")
                run.step(loss)
                total += loss.item() * len(idx)
            row = {"epoch": epoch + 1, "train_loss": total / len(order), "val_loss": math.nan,
                   "val_ap50": math.nan, "lr": float(rates[epoch])}
            last = epoch + 1 == config.n_epochs
            if val is not None and ((epoch + 1) % config.val_every == 0 or last):
                row["val_loss"], row["val_ap50"] = _validate(run, val)
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            state["epoch"] = epoch + 1
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_ap50=f"{row['val_ap50']:.3f}")
            spent = time.perf_counter() - t_call
            per_epoch = (time.perf_counter() - t_loop) / (epoch + 1 - start)
            out_of_time = (config.max_minutes is not None and not last
                           and spent + per_epoch > 60 * config.max_minutes)
            if last or out_of_time or (epoch + 1) % config.save_every == 0:
                save_checkpoint()
            else:
                write_history()
            if out_of_time:
                return False
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    finally:
        bar.close()
    return True


# --- size model: style -> diameter ---------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class SizeModel:
    """Ridge regression from the style vector to the log object diameter (Cellpose's
    ``SizeModel``): ``diameter = exp(coef @ (style - style_mean) + target_mean) * diam_mean``.

    Attributes
    ----------
    coef : ndarray (S,)
        Regression weights (Cellpose's ``A``).
    style_mean : ndarray (S,)
        Mean training style (``smean``).
    target_mean : float
        Mean of ``log(diameter / diam_mean)`` over the training crops (``ymean``).
    diam_mean : float
        The model's mean diameter.

    Examples
    --------
    >>> sm = SizeModel(np.zeros(2), np.zeros(2), 0.0, 17.0)
    >>> sm.predict(np.ones((1, 2))).tolist()
    [17.0]
    """

    coef: np.ndarray
    style_mean: np.ndarray
    target_mean: float
    diam_mean: float

    def predict(self, styles) -> np.ndarray:
        """Diameters (px, >= MIN_DIAMETER) for styles of shape (N, S)."""
        styles = np.atleast_2d(np.asarray(styles, np.float64))
        log_ratio = (styles - self.style_mean) @ self.coef + self.target_mean
        return np.maximum(MIN_DIAMETER, np.exp(log_ratio) * self.diam_mean)

    def to_dict(self) -> dict:
        """JSON-ready dict (inverse: :meth:`from_dict`)."""
        return {"coef": self.coef.tolist(), "style_mean": self.style_mean.tolist(),
                "target_mean": float(self.target_mean), "diam_mean": float(self.diam_mean)}

    @classmethod
    def from_dict(cls, d) -> SizeModel:
        """Build from :meth:`to_dict` output."""
        return cls(np.asarray(d["coef"], np.float64), np.asarray(d["style_mean"], np.float64),
                   float(d["target_mean"]), float(d["diam_mean"]))


@torch.no_grad()
def _size_samples(model, images, labels, *, n_passes, crop_size, scale_range, batch_size, seed,
                  progress):
    """Styles of random crops and their targets ``log(diameter in the crop / diam_mean)``."""
    diam_mean = model.config.diam_mean
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    diams = np.array([max(MIN_DIAMETER, median_diameter(lab)) for lab in labels])
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    styles, targets = [], []
    size = (crop_size, crop_size)
    for _ in tqdm(range(n_passes), desc="size model", disable=not progress, leave=False):
        order = rng.permutation(len(images))
        for begin in range(0, len(order), batch_size):
            idx = order[begin:begin + batch_size]
            crops = [random_transform(images[i], labels[i], rng=rng, out_size=size,
                                      scale_range=scale_range) for i in idx]
            x = torch.from_numpy(np.stack([c.image for c in crops])).to(device)
            styles.append(model(x)[1].float().cpu().numpy())
            targets.extend(np.log(diams[i] * c.scale / diam_mean) for i, c in zip(idx, crops))
    model.train(was_training)
    return np.concatenate(styles).astype(np.float64), np.asarray(targets, np.float64)


def _ridge(styles, targets, l2_regularization, diam_mean):
    """Cellpose's closed-form ridge regression on centred styles and targets."""
    style_mean, target_mean = styles.mean(axis=0), targets.mean()
    xc = (styles - style_mean).T
    coef = np.linalg.solve(xc @ xc.T + l2_regularization * np.eye(xc.shape[0]),
                           xc @ (targets - target_mean))
    return SizeModel(coef, style_mean, float(target_mean), float(diam_mean))


def fit_size_model(model, images, labels, *, n_passes=SIZE_PASSES, crop_size=SIZE_CROP,
                   scale_range=SIZE_SCALE_RANGE, l2_regularization=SIZE_L2, batch_size=8,
                   seed=0, progress=False) -> SizeModel:
    """Fit the size model of a trained network (Cellpose's ``train.train_size``).

    Each pass crops every image at a random zoom ``s`` (``scale_range``
    around 1, no zoom toward ``diam_mean``: the styles must see cells of all
    sizes), runs the network and pairs its style with the target
    ``log(s * median_diameter / diam_mean)``; then ridge regression in closed form.

    Parameters
    ----------
    model : CellposeUNet
    images : sequence of ndarray (2, H, W) of float32
    labels : sequence of ndarray (H, W) of int
    n_passes : int
        Random crops per image (Cellpose: 10).
    crop_size : int
        Side of the crops (Cellpose: 512).
    scale_range : float
        Zooms uniform in ``[1 - r/2, 1 + r/2]`` (Cellpose: 1.0).
    l2_regularization : float
        Ridge penalty (Cellpose: 1.0).  Styles are unit vectors that differ
        little between images, especially for small or little-trained
        networks: a smaller penalty (0.01-0.001) may fit much better;
        :func:`finish_model` picks it on the validation images.
    batch_size, seed, progress
        Crops per forward pass; seed of the crops; tqdm bar.

    Returns
    -------
    SizeModel

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> lab = np.zeros((32, 32), np.int32); lab[4:12, 4:12] = 1; lab[16:30, 10:24] = 2
    >>> x = np.stack([lab > 0, lab > 0]).astype(np.float32)
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=10.0))
    >>> sm = fit_size_model(net, [x], [lab], n_passes=4, crop_size=32)
    >>> sm.coef.shape
    (8,)
    """
    images, labels = _check_inputs(images, labels, model.config.n_channels, "size model")
    styles, targets = _size_samples(model, images, labels, n_passes=n_passes,
                                    crop_size=crop_size, scale_range=scale_range,
                                    batch_size=batch_size, seed=seed, progress=progress)
    return _ridge(styles, targets, l2_regularization, model.config.diam_mean)


def load_size_model(folder) -> SizeModel:
    """Read ``size_model.json`` from a model folder.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = Path(tmp, SIZE_MODEL_FILE).write_text(json.dumps(
    ...         SizeModel(np.zeros(2), np.zeros(2), 0.0, 30.0).to_dict()))
    ...     load_size_model(tmp).diam_mean
    30.0
    """
    path = Path(folder) / SIZE_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SIZE_MODEL_FILE} in {folder}: fit one with fit_size_model")
    return SizeModel.from_dict(json.loads(path.read_text()))


def _find_size_model(model, size_model):
    if size_model is not None:
        return size_model
    if getattr(model, "size_model", None) is not None:
        return model.size_model
    record = getattr(model, "training_record", None) or {}
    if record.get("size_model"):
        return SizeModel.from_dict(record["size_model"])
    raise ValueError("this model has no size model: pass size_model=fit_size_model(...) or "
                     "load_size_model(folder), or give the diameter yourself")


class DiameterEstimate(NamedTuple):
    """Result of :func:`estimate_diameter`.

    Attributes
    ----------
    diameter : float
        Final estimate: median diameter of the masks found at the style's
        scale (``refine=True``), else the style estimate.
    diameter_style : float
        Estimate from the style vector alone.
    """

    diameter: float
    diameter_style: float


def estimate_diameter(model, image, *, size_model=None, refine=True, cellprob_threshold=0.0,
                      flow_threshold=0.4) -> DiameterEstimate:
    """Estimate the median object diameter of one image (Cellpose's ``SizeModel.eval``).

    The network runs once on the image as it is; its style gives a first
    estimate.  With ``refine`` the image is then segmented at that scale
    and the median diameter of the masks is returned (Cellpose's second step).

    Parameters
    ----------
    model : CellposeUNet
    image : ndarray (2, H, W) of float32
        A network input.
    size_model : SizeModel, optional
        Default: ``model.size_model`` or the one in ``model.training_record``.
    refine : bool
        Segment at the style's scale and measure the masks.
    cellprob_threshold, flow_threshold : float
        Used by the refinement.

    Returns
    -------
    DiameterEstimate

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=10.0))
    >>> sm = SizeModel(np.zeros(8), np.zeros(8), np.log(2.0), 10.0)
    >>> estimate_diameter(net, np.zeros((2, 16, 16), np.float32), size_model=sm,
    ...                   refine=False).diameter_style
    20.0
    """
    sm = _find_size_model(model, size_model)
    x = np.asarray(image, np.float32)
    if x.ndim != 3 or x.shape[0] != model.config.n_channels:
        raise ValueError(f"image has shape {x.shape}; expected a network input "
                         f"({model.config.n_channels}, H, W)")
    style = _predict(model, x).style
    d_style = float(sm.predict(style[None])[0]) if np.isfinite(style).all() else sm.diam_mean
    if not refine:
        return DiameterEstimate(d_style, d_style)
    masks = _segment(model, x, rescale=sm.diam_mean / d_style,
                     cellprob_threshold=cellprob_threshold, flow_threshold=flow_threshold)
    d = median_diameter(masks)
    return DiameterEstimate(d if d > 0 else d_style, d_style)


# --- post-processing thresholds ------------------------------------------------------
def _masks_over_flow_grid(flows, cellprob, cellprob_threshold, flow_grid, n_iter, min_size):
    """compute_masks for every flow threshold, following the flows only once."""
    fg = cellprob > cellprob_threshold
    if not fg.any():
        return [np.zeros(cellprob.shape, np.int32) for _ in flow_grid]
    res = follow_flows(flows * fg, fg, n_iter=n_iter)
    clusters = cluster_endpoints(res.ends, res.starts, cellprob.shape,
                                 max_size_fraction=MAX_SIZE_FRACTION)
    errors = flow_errors(clusters, flows) if clusters.max() > 0 else np.zeros(0)
    out = []
    for threshold in flow_grid:
        lab = clusters
        if threshold and clusters.max() > 0:
            bad = np.flatnonzero(errors > threshold) + 1
            lab = np.where(np.isin(clusters, bad), 0, clusters) if len(bad) else clusters
        out.append(fill_holes_and_remove_small_masks(lab, min_size=min_size))
    return out


def optimize_thresholds(model, images, labels, *, diameters=None, cellprob_grid=CELLPROB_GRID,
                        flow_grid=FLOW_GRID, iou_threshold=AP_IOU, min_size=MIN_SIZE,
                        folder=None, progress=False) -> dict:
    """Grid-search ``cellprob_threshold`` and ``flow_threshold`` for the best mean AP.

    The network runs once per image (zoomed by ``diam_mean / diameter``);
    for each cellprob threshold the flows are followed once and every flow
    threshold is applied to the same clusters (as :func:`compute_masks`
    would, step by step).

    Parameters
    ----------
    model : CellposeUNet
    images : sequence of ndarray (2, H, W) of float32
        Validation network inputs.
    labels : sequence of ndarray (H, W) of int
    diameters : sequence of float, optional
        Object diameter per image; default the true median diameter.
    cellprob_grid, flow_grid : sequence of float
    iou_threshold : float
        AP is measured at this IoU.
    min_size : int
        As in :func:`compute_masks`.
    folder : path, optional
        Model folder: ``thresholds.json`` is (re)written there and
        ``model.thresholds`` is not touched.
    progress : bool

    Returns
    -------
    dict
        ``cellprob_threshold``, ``flow_threshold`` (the best pair, from the
        grids), ``iou_threshold``, ``mean_ap`` (at the best pair), and
        ``grid``: ``{"cellprob": [...], "flow": [...], "mean_ap": [[...]]}``
        (rows: cellprob).

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> lab = np.zeros((32, 32), np.int32); lab[4:14, 4:14] = 1
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=10.0))
    >>> best = optimize_thresholds(net, [np.zeros((2, 32, 32), np.float32)], [lab],
    ...                            cellprob_grid=(0.0, 1.0), flow_grid=(0.4,))
    >>> best["cellprob_threshold"] in (0.0, 1.0), best["flow_threshold"]
    (True, 0.4)
    """
    images, labels = _check_inputs(images, labels, model.config.n_channels, "threshold")
    if not images:
        raise ValueError("optimize_thresholds needs at least one image")
    cellprob_grid, flow_grid = [float(c) for c in cellprob_grid], [float(f) for f in flow_grid]
    if not cellprob_grid or not flow_grid:
        raise ValueError("cellprob_grid and flow_grid must not be empty")
    if diameters is None:
        diameters = [max(MIN_DIAMETER, median_diameter(lab)) for lab in labels]
    ap = np.full((len(images), len(cellprob_grid), len(flow_grid)), np.nan)
    for k in tqdm(range(len(images)), desc="thresholds", disable=not progress, leave=False):
        rescale = model.config.diam_mean / float(diameters[k])
        pred = _predict(model, images[k], rescale=rescale)
        for i, c in enumerate(cellprob_grid):
            masks = _masks_over_flow_grid(pred.flows, pred.cellprob, c, flow_grid,
                                          n_iter_for(rescale), min_size)
            ap[k, i] = average_precision([labels[k]] * len(masks), masks,
                                         thresholds=[iou_threshold])[:, 0]
    with warnings.catch_warnings():  # an all-NaN column (no objects anywhere) is allowed
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_ap = np.nanmean(ap, axis=0)
    score = np.where(np.isfinite(mean_ap), mean_ap, -np.inf)
    i, j = np.unravel_index(np.argmax(score), score.shape)
    best = {"cellprob_threshold": cellprob_grid[i], "flow_threshold": flow_grid[j],
            "iou_threshold": float(iou_threshold), "mean_ap": float(mean_ap[i, j]),
            "grid": {"cellprob": cellprob_grid, "flow": flow_grid,
                     "mean_ap": np.where(np.isfinite(mean_ap), mean_ap, None).tolist()}}
    if folder is not None:
        path = Path(folder) / model_io.THRESHOLDS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(best, indent=2))
    return best


# --- everything after the loop, and a whole folder -----------------------------------
def _size_error(size_model, styles, diameters):
    """Mean |log(style estimate / true median diameter)|."""
    return float(np.mean(np.abs(np.log(size_model.predict(styles) / diameters))))


def finish_model(model, train_images, train_labels, *, out_dir, val_images=None,
                 val_labels=None, size_passes=SIZE_PASSES, size_crop=SIZE_CROP,
                 size_l2_grid=SIZE_L2_GRID, cellprob_grid=CELLPROB_GRID, flow_grid=FLOW_GRID,
                 seed=0, progress=True):
    """Fit the size model, tune thresholds on the validation set, save everything.

    The size model's ridge penalty is picked from ``size_l2_grid`` by the
    mean absolute log error of the style estimate on the validation images
    (Cellpose's 1.0 when there are none).  Writes ``out_dir/model/`` again
    (weights, config, training.json with ``size_model``, ``size_model_fit`` and
    ``thresholds`` added, thresholds.json) plus ``size_model.json``.  Without
    validation images the thresholds stay at their defaults and no
    thresholds.json is written.

    Returns
    -------
    Path
        The model folder.
    """
    folder = Path(out_dir) / MODEL_DIR
    train_images, train_labels = _check_inputs(train_images, train_labels,
                                               model.config.n_channels, "training")
    have_val = val_images is not None and len(val_images) > 0
    styles, targets = _size_samples(model, train_images, train_labels, n_passes=size_passes,
                                    crop_size=size_crop, scale_range=SIZE_SCALE_RANGE,
                                    batch_size=8, seed=seed, progress=progress)
    grid = list(size_l2_grid) if have_val else [SIZE_L2]
    fits = [_ridge(styles, targets, l2, model.config.diam_mean) for l2 in grid]
    errors = [math.nan]
    if have_val:
        val_styles = np.stack([_predict(model, x).style for x in val_images])
        val_diams = np.array([max(MIN_DIAMETER, median_diameter(lab)) for lab in val_labels])
        errors = [_size_error(f, val_styles, val_diams) for f in fits]
    best = int(np.nanargmin(errors)) if np.isfinite(errors).any() else 0
    size_model = fits[best]
    thresholds = None
    if have_val:
        thresholds = optimize_thresholds(model, val_images, val_labels, progress=progress,
                                         cellprob_grid=cellprob_grid, flow_grid=flow_grid)
    record = dict(model.training_record or {})
    record["size_model"] = size_model.to_dict()
    record["size_model_fit"] = {"l2_regularization": grid[best], "l2_grid": grid,
                                "val_abs_log_error": errors, "n_samples": len(targets)}
    record["thresholds"] = thresholds
    model.training_record, model.thresholds, model.size_model = record, thresholds, size_model
    model_io.save(model, folder, training_record=record, thresholds=thresholds, overwrite=True)
    (folder / SIZE_MODEL_FILE).write_text(json.dumps(size_model.to_dict(), indent=2))
    return folder


def train_folder(folder, *, out_dir, config=None, model=None, model_config=None,
                 channels=(0, None),
                 channel_axis=None, invert=False, val_fraction=0.1, val_names=None, seed=0,
                 resume=False,
                 size_passes=SIZE_PASSES, size_crop=SIZE_CROP, progress=True, command=None,
                 image_suffix="_img", mask_suffix="_masks") -> TrainResult:
    """Train a model on a Cellpose-style folder (``*_img.tif`` + ``*_masks.tif``).

    Reads it with :func:`cellpose_nb.data.read_folder`, splits train/val with
    :func:`split_train_val` (``val_fraction``, ``seed``) or by ``val_names``, builds a
    :class:`~cellpose_nb.model.CellposeUNet` (weights seeded by ``seed``),
    trains it with :func:`train`, then runs :func:`finish_model` (size model, thresholds).

    Parameters
    ----------
    folder : path
    out_dir : path
        Run folder (see :func:`train`); the model ends up in ``out_dir/model``.
    config : TrainConfig, optional
    model : CellposeUNet, optional
        Start from this network (fine-tuning); trained in place.
    model_config : ModelConfig, optional
        Architecture of a new network when ``model`` is None; default
        ``ModelConfig(diam_mean=config.diam_mean or 30)``.
    channels, channel_axis, invert
        How to build the network input, see :func:`prepare_images`; saved with
        the model as its ``input_recipe`` (``input.json``), so that
        :func:`cellpose_nb.predict.segment` builds new inputs the same way.
    val_fraction, seed
        The split, and the seed of the weights.
    val_names : iterable of str, optional
        Image names (file names without ``_img.tif``) that form the validation
        set instead of a random ``val_fraction``; every name must be in the folder.
    resume : bool
        Continue an interrupted run in ``out_dir``.
    size_passes, size_crop : int
        Passes and crop size of :func:`fit_size_model`.
    progress : bool
    command : str or list of str, optional
        Recorded in training.json.
    image_suffix, mask_suffix : str
        File naming, as :func:`cellpose_nb.data.read_folder`.

    Returns
    -------
    TrainResult
        When ``completed`` is False (time budget) the size model and the
        thresholds are not fitted yet; call again with ``resume=True``.
    """
    from cellpose_nb.data import read_folder

    config = TrainConfig(seed=seed) if config is None else config
    if model_config is None:
        model_config = model_io.ModelConfig(diam_mean=config.diam_mean or 30.0)
    samples = read_folder(folder, image_suffix=image_suffix, mask_suffix=mask_suffix)
    if not samples:
        raise ValueError(f"no image/mask pairs in {folder}")
    names = [s.name for s in samples]
    if val_names is not None:
        val_names = set(val_names)
        if missing := sorted(val_names - set(names)):
            raise ValueError(f"{len(missing)} validation names are not in {folder}: "
                             f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
        val_idx = np.array([k for k, n in enumerate(names) if n in val_names], dtype=int)
        train_idx = np.setdiff1d(np.arange(len(names)), val_idx)
    else:
        train_idx, val_idx = split_train_val(len(samples), val_fraction=val_fraction, seed=seed)
    inputs = prepare_images([s.image for s in samples], channels=channels,
                            channel_axis=channel_axis, invert=invert)
    pick = lambda idx, seq: [seq[k] for k in idx]  # noqa: E731
    labels = [s.labels for s in samples]
    net = model
    if net is None:
        torch.manual_seed(seed)
        net = model_io.CellposeUNet(model_config)
    net.input_recipe = {"channels": list(channels), "invert": invert}
    result = train(net, pick(train_idx, inputs), pick(train_idx, labels), config=config,
                   val_images=pick(val_idx, inputs), val_labels=pick(val_idx, labels),
                   out_dir=out_dir, resume=resume, progress=progress,
                   train_names=pick(train_idx, names), val_names=pick(val_idx, names),
                   command=command if command is not None else list(sys.argv))
    if result.completed:
        kept = result.model.training_record["kept_train_indices"]
        finish_model(result.model, pick(kept, pick(train_idx, inputs)),
                     pick(kept, pick(train_idx, labels)), out_dir=out_dir,
                     val_images=pick(val_idx, inputs), val_labels=pick(val_idx, labels),
                     size_passes=size_passes, size_crop=size_crop, seed=seed,
                     progress=progress)
    return result

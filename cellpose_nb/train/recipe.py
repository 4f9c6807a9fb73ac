"""Everything after the loop, and the whole recipe for a Cellpose-style folder.

:func:`finish_model` fits the size model and tunes the thresholds;
:func:`train_folder` reads a folder, splits it, builds and trains a network,
then finishes it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from cellpose_nb import model as model_io
from cellpose_nb.model import DIAM_MEAN
from cellpose_nb.predict import (
    DEFAULT_CHANNELS,
    MIN_DIAMETER,
    SIZE_MODEL_FILE,
    median_diameter,
    predict_flows,
)
from cellpose_nb.train.config import MODEL_DIR, TrainConfig, TrainResult
from cellpose_nb.train.inputs import _check_inputs, prepare_images, split_train_val
from cellpose_nb.train.loop import train
from cellpose_nb.train.size_model import (
    SIZE_BATCH_SIZE,
    SIZE_CROP,
    SIZE_L2,
    SIZE_L2_GRID,
    SIZE_PASSES,
    SIZE_SCALE_RANGE,
    _ridge,
    _size_error,
    _size_samples,
)
from cellpose_nb.train.thresholds import CELLPROB_GRID, FLOW_GRID, optimize_thresholds

__all__ = ["finish_model", "train_folder"]


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
                                    batch_size=SIZE_BATCH_SIZE, seed=seed, progress=progress)
    grid = list(size_l2_grid) if have_val else [SIZE_L2]
    fits = [_ridge(styles, targets, l2, model.config.diam_mean) for l2 in grid]
    errors = [math.nan]
    if have_val:
        val_styles = np.stack([predict_flows(model, x).style for x in val_images])
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
                 channels=DEFAULT_CHANNELS,
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
        ``ModelConfig(diam_mean=config.diam_mean or DIAM_MEAN)``.
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
        Passes and crop size of :func:`~cellpose_nb.train.fit_size_model`.
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
        model_config = model_io.ModelConfig(diam_mean=config.diam_mean or DIAM_MEAN)
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
    if net is None:  # weights seeded by ``seed``, the caller's torch RNG left as it was
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
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

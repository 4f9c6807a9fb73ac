"""Everything after the loop, and the whole recipe for a Cellpose-style folder.

:func:`finish_model` fits the size model and tunes the thresholds;
:func:`train_folder` reads a folder, splits it, builds and trains a network,
then finishes it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from cellpose_nb import model as model_io
from cellpose_nb.train.config import MODEL_DIR, InputRecipe, TrainConfig, TrainResult
from cellpose_nb.train.inputs import _check_inputs, prepare_images, split_train_val
from cellpose_nb.train.loop import _network, _run_folder, _split_val_data, train
from cellpose_nb.train.size_model import select_size_model
from cellpose_nb.train.thresholds import optimize_thresholds

__all__ = ["finish_model", "train_folder"]


def finish_model(images, labels, model, *, out_dir, config=None, val_data=None,
                 progress=True) -> Path:
    """Fit the size model, tune thresholds on the validation set, save everything.

    The size model (``config.size_passes`` crops of ``config.size_crop`` pixels
    per image, seeded by ``config.seed``) takes its ridge penalty from
    ``config.size_l2_grid``, picked by the mean absolute log error of the style
    estimate on the validation images (Cellpose's 1.0 when there are none).
    The thresholds come from ``config.cellprob_grid`` x ``config.flow_grid``.
    Both go into ``model.record`` (and its training record, with
    ``size_model_fit``), which is saved to ``out_dir/model/`` again: weights,
    config, training.json, size_model.json, thresholds.json.  Without
    validation images the thresholds stay at their defaults and no
    thresholds.json is written.

    Parameters
    ----------
    images : sequence of ndarray (2, H, W) of float32
        The training network inputs.
    labels : sequence of ndarray (H, W) of int
    model : CellposeUNet
        The trained network; its record is updated.
    out_dir : path
        Run folder; the model is saved in ``out_dir/model``.
    config : TrainConfig, optional
    val_data : (images, labels), optional
        Validation set (a third element, names, is ignored).
    progress : bool

    Returns
    -------
    Path
        The model folder.
    """
    config = TrainConfig() if config is None else config
    folder = Path(out_dir) / MODEL_DIR
    images, labels = _check_inputs(images, labels, model.config.n_channels, "training")
    val_images, val_labels, _ = _split_val_data(val_data)
    have_val = val_images is not None and len(val_images) > 0
    size_model, size_fit = select_size_model(
        images, labels, model, val_data=(val_images, val_labels) if have_val else None,
        n_passes=config.size_passes, crop_size=config.size_crop, l2_grid=config.size_l2_grid,
        seed=config.seed, progress=progress)
    thresholds = None
    if have_val:
        thresholds = optimize_thresholds(val_images, val_labels, model, progress=progress,
                                         cellprob_grid=config.cellprob_grid,
                                         flow_grid=config.flow_grid).to_dict()
    training = dict(model.record.training or {})
    training["size_model"] = size_model.to_dict()
    training["size_model_fit"] = size_fit
    training["thresholds"] = thresholds
    model.record = model.record.replace(training=training, thresholds=thresholds,
                                        size_model=size_model)
    return model_io.save(model, folder, overwrite=True)


def _read_samples(folder):
    """``folder``'s samples: read with the default file names, or given as they are."""
    if not isinstance(folder, (str, os.PathLike)):
        return list(folder)
    from cellpose_nb.data import read_folder

    return read_folder(folder)


def _network_inputs(samples, recipe):
    """:func:`prepare_images` of each sample; an error names the sample's image file."""
    inputs = []
    for s in samples:
        try:
            inputs += prepare_images([s.image], channels=recipe.channels,
                                     channel_axis=recipe.channel_axis, invert=recipe.invert)
        except (TypeError, ValueError) as exc:  # NaN pixels, a channel the image lacks, ...
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind(f"{getattr(s, 'path', None) or s.name}: {exc}") from exc
    return inputs


def train_folder(folder, *, out_dir, config=None, model=None, input_recipe=None, val_names=None,
                 resume=False, overwrite=False, progress=True, command=None) -> TrainResult:
    """Train a model on a Cellpose-style folder (``*_img.tif`` + ``*_masks.tif``).

    Reads it with :func:`cellpose_nb.data.read_folder`, splits train/val with
    :func:`split_train_val` (``config.val_fraction``, ``config.seed``) or by
    ``val_names``, builds a :class:`~cellpose_nb.model.CellposeUNet` (weights
    seeded by ``config.seed``) unless given one, trains it with :func:`train`,
    then runs :func:`finish_model` (size model, thresholds).

    Parameters
    ----------
    folder : path, or sequence of Sample
        The folder; or its samples, e.g. ``read_folder(path, image_suffix=...)``
        for other file names (anything with ``name``, ``image`` and ``labels``).
    out_dir : path
        Run folder (see :func:`train`); the model ends up in ``out_dir/model``.
    config : TrainConfig, optional
    model : CellposeUNet or ModelConfig, optional
        A network to start from (fine-tuning; trained in place), or the
        architecture of a new one; default
        ``ModelConfig(diam_mean=config.diam_mean or DIAM_MEAN)``.
    input_recipe : InputRecipe or dict, optional
        How to build the network input (see :func:`prepare_images`), or its
        dict form (``ModelRecord.input_recipe``); default ``InputRecipe()``.
        Saved with the model (``input.json``), so that
        :func:`cellpose_nb.predict.segment` builds new inputs the same way.
    val_names : iterable of str, optional
        Image names (file names without ``_img.tif``) that form the validation
        set instead of a random ``config.val_fraction``; every name must be in the folder.
    resume : bool
        Continue an interrupted run in ``out_dir``.
    overwrite : bool
        Start again in an ``out_dir`` that holds an earlier run (see :func:`train`);
        without it or ``resume`` such a folder is refused before anything is read.
    progress : bool
    command : str or list of str, optional
        Recorded in training.json; default ``sys.argv``.

    Returns
    -------
    TrainResult
        When ``completed`` is False (time budget) the size model and the
        thresholds are not fitted yet; call again with ``resume=True``.
    """
    config = TrainConfig() if config is None else config
    _run_folder(out_dir, resume, overwrite)  # refuse an earlier run before reading anything
    if input_recipe is None:
        input_recipe = InputRecipe()
    elif not isinstance(input_recipe, InputRecipe):
        input_recipe = InputRecipe.from_dict(input_recipe)
    samples = _read_samples(folder)
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
        train_idx, val_idx = split_train_val(len(samples), val_fraction=config.val_fraction,
                                             seed=config.seed)
    inputs = _network_inputs(samples, input_recipe)
    pick = lambda idx, seq: [seq[k] for k in idx]  # noqa: E731
    labels = [s.labels for s in samples]
    net = _network(model, config)
    net.record = net.record.replace(input_recipe=input_recipe.to_dict())
    val_data = (pick(val_idx, inputs), pick(val_idx, labels), pick(val_idx, names))
    result = train(pick(train_idx, inputs), pick(train_idx, labels), net, config=config,
                   val_data=val_data, names=pick(train_idx, names), out_dir=out_dir,
                   resume=resume, overwrite=overwrite, progress=progress,
                   command=command if command is not None else list(sys.argv))
    if result.completed:
        kept = result.model.record.training["kept_train_indices"]
        finish_model(pick(kept, pick(train_idx, inputs)), pick(kept, pick(train_idx, labels)),
                     result.model, out_dir=out_dir, config=config, val_data=val_data,
                     progress=progress)
    return result

"""Fitting the size model of a trained network (after Cellpose's ``train.train_size``).

Styles of random crops at random zooms, paired with the log of the objects'
diameter in each crop, and a closed-form ridge regression between them.  The
fitted :class:`~cellpose_nb.predict.SizeModel` is what inference uses.

Two choices differ from Cellpose's, so that the estimate holds for the cell
sizes users bring (``benchmarks/diameter.py`` measures it):

- each crop is zoomed by a factor log-uniform in ``[1 / SIZE_ZOOM_RANGE,
  SIZE_ZOOM_RANGE]`` around the image's own size (Cellpose: uniform in
  0.5-1.5, so a size model has never seen cells twice as large as its
  training images', which users do bring).  Tried on the CIL validation
  fields zoomed by 0.5-2: a range of 2.2 gave a median error of the guess of
  11 %, Cellpose's 0.5-1.5 12 % (29 % at 2x), and zooms that spread the
  crops' diameters evenly over diam_mean / 4 to 4 x diam_mean 17 %;
- each crop's style is computed the way inference computes it,
  :func:`~cellpose_nb.predict.predict_style` (the encoder on a few tiles).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from cellpose_nb.augment import random_transform
from cellpose_nb.predict.diameter import MIN_DIAMETER, SizeModel, median_diameter
from cellpose_nb.predict.net import _resize
from cellpose_nb.predict.style import predict_style
from cellpose_nb.train.inputs import _check_inputs

__all__ = ["fit_size_model", "select_size_model", "SIZE_CROP", "SIZE_ZOOM_RANGE", "SIZE_PASSES", "SIZE_L2",
           "SIZE_L2_GRID", "SIZE_VAL_ZOOMS"]

SIZE_CROP = 512  # Cellpose's train_size bsize
#: each crop is zoomed by a factor log-uniform in [1 / SIZE_ZOOM_RANGE, SIZE_ZOOM_RANGE]
SIZE_ZOOM_RANGE = 2.2
SIZE_PASSES = 10  # Cellpose's train_size n_epochs
SIZE_L2 = 1.0  # ridge penalty of the size regression (Cellpose)
SIZE_L2_GRID = (1.0, 0.1, 0.01, 0.001)  # penalties finish_model tries on the validation set
#: finish_model scores each penalty on the validation images zoomed by these factors
SIZE_VAL_ZOOMS = (0.5, 1.0, 2.0)


@torch.no_grad()
def _size_samples(model, images, labels, *, n_passes, crop_size, zoom_range, seed, progress):
    """Styles of random crops and their targets ``log(diameter in the crop / diam_mean)``."""
    diam_mean = model.config.diam_mean
    diams = np.array([max(MIN_DIAMETER, median_diameter(lab)) for lab in labels])
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    styles, targets = [], []
    size = (crop_size, crop_size)
    log_range = np.log(zoom_range)
    for _ in tqdm(range(n_passes), desc="size model", disable=not progress, leave=False):
        for i in rng.permutation(len(images)):
            zoom = np.exp(rng.uniform(-log_range, log_range))
            crop = random_transform(images[i], labels[i], rng=rng, out_size=size,
                                    scale_range=0.0, rescale=zoom)
            styles.append(predict_style(crop.image, model))
            targets.append(np.log(diams[i] * crop.scale / diam_mean))
    return np.stack(styles).astype(np.float64), np.asarray(targets, np.float64)


def _ridge(styles, targets, l2_regularization, diam_mean):
    """Cellpose's closed-form ridge regression on centred styles and targets."""
    style_mean, target_mean = styles.mean(axis=0), targets.mean()
    xc = (styles - style_mean).T
    coef = np.linalg.solve(xc @ xc.T + l2_regularization * np.eye(xc.shape[0]),
                           xc @ (targets - target_mean))
    return SizeModel(coef, style_mean, float(target_mean), float(diam_mean))


def fit_size_model(images, labels, model, *, n_passes=SIZE_PASSES, crop_size=SIZE_CROP,
                   zoom_range=SIZE_ZOOM_RANGE, l2_regularization=SIZE_L2, seed=0,
                   progress=False) -> SizeModel:
    """Fit the size model of a trained network (after Cellpose's ``train.train_size``).

    Each pass crops every image at a random zoom ``s``, log-uniform in
    ``[1 / zoom_range, zoom_range]``, computes the crop's style with
    :func:`~cellpose_nb.predict.predict_style` and pairs it with the target
    ``log(s * d / diam_mean)`` (``d``: the image's median diameter); then
    ridge regression in closed form.

    Parameters
    ----------
    images : sequence of ndarray (2, H, W) of float32
    labels : sequence of ndarray (H, W) of int
    model : CellposeUNet
    n_passes : int
        Random crops per image (Cellpose: 10).
    crop_size : int
        Side of the crops (Cellpose: 512).
    zoom_range : float
        Range of the zooms, as a factor around each image's own size.
    l2_regularization : float
        Ridge penalty (Cellpose: 1.0).  Styles are unit vectors that differ
        little between images, especially for small or little-trained
        networks: a smaller penalty (0.01-0.001) may fit much better;
        :func:`~cellpose_nb.train.finish_model` picks it on the validation images.
    seed, progress
        Seed of the crops; tqdm bar.

    Returns
    -------
    SizeModel
        ``model`` is not changed: keep it with
        ``model.record = model.record.replace(size_model=sm)``.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> lab = np.zeros((32, 32), np.int32); lab[4:12, 4:12] = 1; lab[16:30, 10:24] = 2
    >>> x = np.stack([lab > 0, lab > 0]).astype(np.float32)
    >>> _ = torch.manual_seed(0)
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=10.0))
    >>> sm = fit_size_model([x], [lab], net, n_passes=4, crop_size=32)
    >>> sm.coef.shape
    (8,)
    """
    images, labels = _check_inputs(images, labels, model.config.n_channels, "size model")
    styles, targets = _size_samples(model, images, labels, n_passes=n_passes,
                                    crop_size=crop_size, zoom_range=zoom_range, seed=seed,
                                    progress=progress)
    return _ridge(styles, targets, l2_regularization, model.config.diam_mean)


def _zoomed_styles(model, images, labels, zooms=SIZE_VAL_ZOOMS):
    """Styles and true median diameters of each image zoomed by each factor of ``zooms``
    (the validation set of the ridge penalty)."""
    styles, diams = [], []
    for x, lab in zip(images, labels):
        d = max(MIN_DIAMETER, median_diameter(lab))
        for zoom in zooms:
            shape = tuple(max(1, int(round(n * zoom))) for n in x.shape[1:])
            styles.append(predict_style(_resize(x, shape) if zoom != 1 else x, model))
            diams.append(d * zoom)
    return np.stack(styles), np.asarray(diams)


def _size_error(size_model, styles, diameters):
    """Mean |log(style estimate / true median diameter)|."""
    return float(np.mean(np.abs(np.log(size_model.predict(styles) / diameters))))


def select_size_model(images, labels, model, *, val_data=None, n_passes=SIZE_PASSES,
                      crop_size=SIZE_CROP, l2_grid=SIZE_L2_GRID, seed=0, progress=False):
    """Fit the size model once per ridge penalty of ``l2_grid`` and keep the one with
    the smallest error on the validation images at ``SIZE_VAL_ZOOMS``
    (:func:`~cellpose_nb.train.finish_model`'s size model; ``scripts/refit_size_model.py``
    refits a saved model's).

    Parameters
    ----------
    images, labels, model
        As :func:`fit_size_model`.
    val_data : (images, labels), optional
        Without it the penalty is ``SIZE_L2``.
    n_passes, crop_size, seed
        As :func:`fit_size_model`.
    l2_grid : sequence of float
        The penalties tried.
    progress : bool

    Returns
    -------
    (SizeModel, dict)
        The chosen model and what was tried (``l2_regularization``, ``l2_grid``,
        ``val_abs_log_error``, ``val_zooms``, ``zoom_range``, ``n_samples``),
        as ``training.json`` keeps it under ``size_model_fit``.
    """
    images, labels = _check_inputs(images, labels, model.config.n_channels, "size model")
    styles, targets = _size_samples(model, images, labels, n_passes=n_passes,
                                    crop_size=crop_size, zoom_range=SIZE_ZOOM_RANGE,
                                    seed=seed, progress=progress)
    grid = list(l2_grid) if val_data is not None else [SIZE_L2]
    fits = [_ridge(styles, targets, l2, model.config.diam_mean) for l2 in grid]
    errors = [math.nan]
    if val_data is not None:
        val_styles, val_diams = _zoomed_styles(model, *val_data[:2])
        errors = [_size_error(f, val_styles, val_diams) for f in fits]
    best = int(np.nanargmin(errors)) if np.isfinite(errors).any() else 0
    return fits[best], {"l2_regularization": grid[best], "l2_grid": grid,
                        "val_abs_log_error": errors, "val_zooms": list(SIZE_VAL_ZOOMS),
                        "zoom_range": SIZE_ZOOM_RANGE, "n_samples": len(targets)}

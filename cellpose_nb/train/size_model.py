"""Fitting the size model of a trained network (Cellpose's ``train.train_size``).

Styles of random crops at random zooms, paired with the log of the objects'
diameter in each crop, and a closed-form ridge regression between them.  The
fitted :class:`~cellpose_nb.predict.SizeModel` is what inference uses.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from cellpose_nb.augment import random_transform
from cellpose_nb.predict.diameter import MIN_DIAMETER, SizeModel, median_diameter
from cellpose_nb.train.inputs import _check_inputs

__all__ = ["fit_size_model", "SIZE_CROP", "SIZE_SCALE_RANGE", "SIZE_PASSES", "SIZE_L2",
           "SIZE_L2_GRID", "SIZE_BATCH_SIZE"]

SIZE_CROP = 512  # Cellpose's train_size bsize
SIZE_SCALE_RANGE = 1.0  # Cellpose's train_size scale_range: zoom in [0.5, 1.5]
SIZE_PASSES = 10  # Cellpose's train_size n_epochs
SIZE_L2 = 1.0  # ridge penalty of the size regression (Cellpose)
SIZE_L2_GRID = (1.0, 0.1, 0.01, 0.001)  # penalties finish_model tries on the validation set
SIZE_BATCH_SIZE = 8  # crops per forward pass while fitting


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


def fit_size_model(images, labels, model, *, n_passes=SIZE_PASSES, crop_size=SIZE_CROP,
                   scale_range=SIZE_SCALE_RANGE, l2_regularization=SIZE_L2,
                   batch_size=SIZE_BATCH_SIZE, seed=0, progress=False) -> SizeModel:
    """Fit the size model of a trained network (Cellpose's ``train.train_size``).

    Each pass crops every image at a random zoom ``s`` (``scale_range``
    around 1, no zoom toward ``diam_mean``: the styles must see cells of all
    sizes), runs the network and pairs its style with the target
    ``log(s * median_diameter / diam_mean)``; then ridge regression in closed form.

    Parameters
    ----------
    images : sequence of ndarray (2, H, W) of float32
    labels : sequence of ndarray (H, W) of int
    model : CellposeUNet
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
        :func:`~cellpose_nb.train.finish_model` picks it on the validation images.
    batch_size, seed, progress
        Crops per forward pass; seed of the crops; tqdm bar.

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
                                    crop_size=crop_size, scale_range=scale_range,
                                    batch_size=batch_size, seed=seed, progress=progress)
    return _ridge(styles, targets, l2_regularization, model.config.diam_mean)


def _size_error(size_model, styles, diameters):
    """Mean |log(style estimate / true median diameter)|."""
    return float(np.mean(np.abs(np.log(size_model.predict(styles) / diameters))))

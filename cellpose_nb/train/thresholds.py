"""Tuning the post-processing thresholds of a trained network on validation images.

A grid search over ``cellprob_threshold`` x ``flow_threshold`` for the best
mean AP; the network runs once per image and the flows are followed once per
cellprob threshold.  The outputs are :func:`~cellpose_nb.predict.predict_flows`',
the ones segmentation uses.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cellpose_nb import model as model_io
from cellpose_nb.masks import (
    MAX_SIZE_FRACTION,
    MIN_SIZE,
    cluster_endpoints,
    fill_holes_and_remove_small_masks,
    flow_errors,
    follow_flows,
)
from cellpose_nb.metrics import average_precision
from cellpose_nb.predict import MIN_DIAMETER, median_diameter, n_iter_for, predict_flows
from cellpose_nb.train.config import AP_IOU
from cellpose_nb.train.inputs import _check_inputs

__all__ = ["optimize_thresholds", "CELLPROB_GRID", "FLOW_GRID"]

CELLPROB_GRID = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
FLOW_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


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
    threshold is applied to the same clusters (as :func:`~cellpose_nb.masks.compute_masks`
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
        As in :func:`~cellpose_nb.masks.compute_masks`.
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
        pred = predict_flows(model, images[k], scale=rescale)
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

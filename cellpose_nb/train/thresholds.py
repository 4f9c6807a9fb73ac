"""Tuning the post-processing thresholds of a trained network on validation images.

A grid search over ``cellprob_threshold`` x ``flow_threshold`` for the best
mean AP; the network runs once per image and the flows are followed once per
cellprob threshold.  The outputs are :func:`~cellpose_nb.predict.predict_flows`',
the ones segmentation uses.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from tqdm.auto import tqdm

from cellpose_nb.masks import (
    MAX_SIZE_FRACTION,
    MIN_SIZE,
    cluster_endpoints,
    flow_errors,
    follow_flows,
    postprocess_masks,
)
from cellpose_nb.metrics import average_precision
from cellpose_nb.predict import MIN_DIAMETER, median_diameter, n_iter_for, predict_flows
from cellpose_nb.train.inputs import _check_inputs

__all__ = ["optimize_thresholds", "ThresholdSearch", "CELLPROB_GRID", "FLOW_GRID", "AP_IOU"]

CELLPROB_GRID = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
FLOW_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
AP_IOU = 0.5  # IoU threshold of the AP: the search's and the training loop's validation AP


def _masks_over_flow_grid(flows, cellprob, cellprob_threshold, flow_grid, n_iter, min_size):
    """compute_masks for every flow threshold, following the flows only once."""
    fg = cellprob > cellprob_threshold
    if not fg.any():
        return [np.zeros(cellprob.shape, np.int32) for _ in flow_grid]
    res = follow_flows(flows * fg, fg, n_iter=n_iter)
    clusters = cluster_endpoints(res.ends, res.starts, cellprob.shape,
                                 max_size_fraction=MAX_SIZE_FRACTION)
    errors = flow_errors(clusters, flows) if clusters.max() > 0 else np.zeros(0)
    return [postprocess_masks(clusters, flows, flow_threshold=threshold, min_size=min_size,
                              errors=errors) for threshold in flow_grid]


@dataclasses.dataclass(frozen=True, eq=False)
class ThresholdSearch:
    """What :func:`optimize_thresholds` found: the best pair, and the whole grid.

    Attributes
    ----------
    cellprob_threshold, flow_threshold : float
        The pair with the best mean AP (values of the grids).
    mean_ap : float
        Mean AP over the images at that pair.
    iou_threshold : float
        The IoU at which AP was measured.
    cellprob_grid, flow_grid : tuple of float
        The values tried.
    grid_ap : ndarray (len(cellprob_grid), len(flow_grid)) of float
        Mean AP of every pair (rows: cellprob); NaN where no image had objects.
    """

    cellprob_threshold: float
    flow_threshold: float
    mean_ap: float
    iou_threshold: float
    cellprob_grid: tuple[float, ...]
    flow_grid: tuple[float, ...]
    grid_ap: np.ndarray

    @property
    def thresholds(self) -> dict:
        """``{"cellprob_threshold": ..., "flow_threshold": ...}``, as segment takes them."""
        return {"cellprob_threshold": self.cellprob_threshold,
                "flow_threshold": self.flow_threshold}

    def to_dict(self) -> dict:
        """The JSON form kept in ``ModelRecord.thresholds`` (thresholds.json): the best
        pair, ``iou_threshold``, ``mean_ap`` and ``grid`` =
        ``{"cellprob": [...], "flow": [...], "mean_ap": [[...]]}`` (NaN as None)."""
        ap = self.grid_ap
        return {**self.thresholds, "iou_threshold": self.iou_threshold,
                "mean_ap": self.mean_ap,
                "grid": {"cellprob": list(self.cellprob_grid), "flow": list(self.flow_grid),
                         "mean_ap": np.where(np.isfinite(ap), ap, None).tolist()}}


def optimize_thresholds(images, labels, model, *, diameters=None, cellprob_grid=CELLPROB_GRID,
                        flow_grid=FLOW_GRID, iou_threshold=AP_IOU, min_size=MIN_SIZE,
                        progress=False) -> ThresholdSearch:
    """Grid-search ``cellprob_threshold`` and ``flow_threshold`` for the best mean AP.

    The network runs once per image (zoomed by ``diam_mean / diameter``);
    for each cellprob threshold the flows are followed once and every flow
    threshold is applied to the same clusters with
    :func:`~cellpose_nb.masks.postprocess_masks` (as
    :func:`~cellpose_nb.masks.compute_masks` would, step by step).  Nothing
    is written and ``model`` is not changed: keep the result with
    ``model.record = model.record.replace(thresholds=search.to_dict())``
    and :func:`cellpose_nb.model.save`.

    Parameters
    ----------
    images : sequence of ndarray (2, H, W) of float32
        Validation network inputs.
    labels : sequence of ndarray (H, W) of int
    model : CellposeUNet
    diameters : sequence of float, optional
        Object diameter per image; default the true median diameter.
    cellprob_grid, flow_grid : sequence of float
    iou_threshold : float
        AP is measured at this IoU.
    min_size : int
        As in :func:`~cellpose_nb.masks.compute_masks`.
    progress : bool

    Returns
    -------
    ThresholdSearch
        The best pair (from the grids), its mean AP, and the mean AP of every pair.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> lab = np.zeros((32, 32), np.int32); lab[4:14, 4:14] = 1
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=10.0))
    >>> best = optimize_thresholds([np.zeros((2, 32, 32), np.float32)], [lab], net,
    ...                            cellprob_grid=(0.0, 1.0), flow_grid=(0.4,))
    >>> best.cellprob_threshold in (0.0, 1.0), best.flow_threshold, best.grid_ap.shape
    (True, 0.4, (2, 1))
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
        pred = predict_flows(images[k], model, scale=rescale)
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
    return ThresholdSearch(cellprob_threshold=cellprob_grid[i], flow_threshold=flow_grid[j],
                           mean_ap=float(mean_ap[i, j]), iou_threshold=float(iou_threshold),
                           cellprob_grid=tuple(cellprob_grid), flow_grid=tuple(flow_grid),
                           grid_ap=mean_ap)

"""Flows + cell probability -> labels.

The steps, each a public function so that the course can show them one by one:

1. :func:`follow_flows`: every pixel with cell probability above threshold
   moves along the flow field (Euler steps, bilinear interpolation) for
   ``n_iter`` steps; optionally the whole trajectories are returned.
2. :func:`cluster_endpoints`: pixels whose end points gather at the same fixed
   point form one mask (histogram of end points, seeds at its local maxima,
   grown over well-populated bins).
3. :func:`remove_bad_flow_masks`: masks whose recomputed flows disagree with
   the given ones (mean squared error above ``flow_threshold``) are removed.
4. :func:`fill_holes_and_remove_small_masks`.

:func:`postprocess_masks` runs steps 3 and 4 (for callers that cluster once
and try several thresholds); :func:`compute_masks` chains all of them, as
``cellpose.dynamics.compute_masks`` does.  The compiled kernels live in
:mod:`cellpose_nb._dynamics`.  ``flows`` here are always at unit scale, exactly what
:func:`cellpose_nb.flows.masks_to_flows` returns (the network output divided
by ``FLOW_SCALE``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

# GROW_*, PARALLEL_MIN_STEPS stay importable from here; threshold_cache takes the
# same bilinear step (_corners, _interp) from here
from cellpose_nb._dynamics import (  # noqa: F401
    GROW_MIN_COUNT,
    GROW_RADIUS,
    GROW_STEPS,
    PARALLEL_MIN_STEPS,
    _corners,
    _grow_seeds,
    _interp,
    _run,
)
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.labels import _fill_holes_and_drop_small, check_labels, renumber
from cellpose_nb.masks3d import compute_masks_3d, follow_flows_3d

__all__ = [
    "FollowResult",
    "compute_masks",
    "follow_flows",
    "trace_points",
    "cluster_endpoints",
    "flow_errors",
    "remove_bad_flow_masks",
    "fill_holes_and_remove_small_masks",
    "postprocess_masks",
    "renumber",
]

#: Euler steps of the flow dynamics (Cellpose's default).
N_ITER = 200
#: Histogram padding, in pixels, around the image for end points (Cellpose: 20).
HIST_PAD = 20
#: A histogram bin is a seed if it is the maximum of its SEED_WINDOW x SEED_WINDOW
#: neighbourhood and holds more than SEED_MIN_COUNT end points.
SEED_WINDOW = 5
SEED_MIN_COUNT = 10
#: Seeds then grow over busy bins: GROW_STEPS, GROW_RADIUS, GROW_MIN_COUNT, named
#: in :mod:`cellpose_nb._dynamics` beside the compiled kernel that reads them.
#: Defaults of the mask step, named once and read by segment, training, the CLI and the widgets.
CELLPROB_THRESHOLD = 0.0  # pixels with cellprob logit above this are followed
FLOW_THRESHOLD = 0.4  # masks whose flow error is above this are dropped (Cellpose: 0.4)
MIN_SIZE = 15  # masks smaller than this many pixels are dropped (Cellpose: 15)
#: the range of ``cellprob_threshold``: it is a logit, and beyond +-20 the float32
#: sigmoid is 0 or 1, so a threshold there keeps every pixel or none
CELLPROB_LIMIT = 20.0
#: the upper end of ``flow_threshold``: the flow error is a mean squared difference of
#: unit vectors' components, so it is at most about 4, and a larger threshold is no
#: check at all (0 says that)
FLOW_LIMIT = 4.0

#: Masks larger than this fraction of the image are dropped (Cellpose: 0.4).
MAX_SIZE_FRACTION = 0.4


class FollowResult(NamedTuple):
    """Where pixels went when they followed the flows.

    Attributes
    ----------
    starts : ndarray (2, N) of int64
        (row, col) start pixel of each followed point.
    ends : ndarray (2, N) of float32
        (row, col) position after ``n_iter`` steps.
    trajectories : ndarray (n_iter + 1, 2, N) of float32 or None
        Every position, start included, when asked for.
    """

    starts: np.ndarray
    ends: np.ndarray
    trajectories: np.ndarray | None


# ----------------------------------------------------------------------------- checks
def _check_flows(flows, shape=None):
    f = np.asarray(flows)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flows must have shape (2, H, W); got {f.shape}")
    if shape is not None and f.shape[1:] != tuple(shape):
        raise ValueError(f"flows shape {f.shape[1:]} does not match image shape {tuple(shape)}")
    if not np.issubdtype(f.dtype, np.floating):
        raise TypeError(f"flows must be a float array; got dtype {f.dtype}")
    if not np.isfinite(f).all():
        raise ValueError("flows contain NaN or inf values")
    return np.ascontiguousarray(f, dtype=np.float32)


# ----------------------------------------------------------------------------- dynamics
def follow_flows(flows, mask, *, n_iter=N_ITER, return_trajectories=False):
    """Move every pixel of ``mask`` along ``flows`` for ``n_iter`` Euler steps.

    Each step adds the bilinearly interpolated flow at the current position
    and clamps the position to the image, as Cellpose does.  Flows outside
    ``mask`` are treated as given: to reproduce Cellpose, pass flows already
    multiplied by the mask (:func:`compute_masks` does).

    Parameters
    ----------
    flows : ndarray (2, H, W) of float
        Unit-scale flows (d_row, d_col).
    mask : ndarray (H, W) of bool
        Pixels to follow (e.g. ``cellprob > cellprob_threshold``).
    n_iter : int
        Number of Euler steps.
    return_trajectories : bool
        Also return every intermediate position, (n_iter + 1, 2, N) float32.
        Memory is ``8 * (n_iter + 1) * N`` bytes: use :func:`trace_points` to
        trace a few chosen pixels instead.

    Returns
    -------
    FollowResult

    Examples
    --------
    >>> flows = np.zeros((2, 5, 5), np.float32); flows[1] = 1.0   # all to the right
    >>> mask = np.zeros((5, 5), bool); mask[2, 0] = True
    >>> follow_flows(flows, mask, n_iter=3).ends[:, 0].tolist()
    [2.0, 3.0]

    (3, Z, Y, X) flows and a (Z, Y, X) mask go to
    :func:`cellpose_nb.masks3d.follow_flows_3d` (trilinear steps; ``starts`` and
    ``ends`` are then (3, N)).
    """
    if np.ndim(flows) == 4:
        return FollowResult(*follow_flows_3d(flows, mask, n_iter=n_iter,
                                             return_trajectories=return_trajectories))
    f = _check_flows(flows)
    m = np.asarray(mask)
    if m.shape != f.shape[1:]:
        raise ValueError(f"mask shape {m.shape} does not match flows shape {f.shape[1:]}")
    starts = np.stack(np.nonzero(m.astype(bool))).astype(np.int64)
    ends, traj = _run(f, starts, n_iter, return_trajectories)
    return FollowResult(starts, ends, traj)


def trace_points(flows, points, *, n_iter=N_ITER):
    """Trajectories of a few points through ``flows``.

    Parameters
    ----------
    flows : ndarray (2, H, W)
    points : array-like (N, 2)
        (row, col) start positions (need not be integers).

    Returns
    -------
    ndarray (n_iter + 1, 2, N) of float32

    Examples
    --------
    >>> flows = np.zeros((2, 5, 5), np.float32); flows[0] = -0.5   # upward
    >>> trace_points(flows, [(4, 1)], n_iter=2)[:, :, 0].tolist()
    [[4.0, 1.0], [3.5, 1.0], [3.0, 1.0]]
    """
    f = _check_flows(flows)
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2).T
    return _run(f, pts, n_iter, True)[1]


# ----------------------------------------------------------------------------- clustering
def cluster_endpoints(ends, starts, shape, *, max_size_fraction=MAX_SIZE_FRACTION):
    """Group followed pixels whose end points gather at the same fixed point.

    A histogram of the (truncated) end points is made; its local maxima
    (5x5) holding more than 10 end points seed the masks, which grow 5 steps
    over bins holding more than 2 end points.  Every start pixel takes the
    label of the bin where it ended.

    Parameters
    ----------
    ends : ndarray (2, N) of float
        End positions (from :func:`follow_flows`).
    starts : ndarray (2, N) of int
        Start pixels of the same points.
    shape : (H, W)
        Image shape.
    max_size_fraction : float
        Masks covering more than this fraction of the image are dropped.

    Returns
    -------
    labels : ndarray (H, W) of int32
        Sequential labels, numbered in raster order of their first pixel.

    Examples
    --------
    >>> ends = np.full((2, 20), 5.0); starts = np.stack(np.divmod(np.arange(20), 10))
    >>> int(cluster_endpoints(ends, starts, (10, 10)).max())
    1
    """
    shape = tuple(int(s) for s in shape)
    labels = np.zeros(shape, np.int32)
    if np.asarray(ends).size == 0:
        return labels
    pts = np.asarray(ends).astype(np.int64) + HIST_PAD
    padded = (shape[0] + 2 * HIST_PAD, shape[1] + 2 * HIST_PAD)
    for ax in range(2):
        np.clip(pts[ax], 0, padded[ax] - HIST_PAD - 1, out=pts[ax])
    flat = pts[0] * padded[1] + pts[1]
    hist = np.bincount(flat, minlength=padded[0] * padded[1]).reshape(padded).astype(np.int32)
    hmax = ndi.maximum_filter(hist, size=SEED_WINDOW, mode="constant", cval=0)
    seeds = np.argwhere((hist >= hmax) & (hist > SEED_MIN_COUNT))
    if len(seeds) == 0:
        return labels
    seeds = seeds[np.argsort(hist[seeds[:, 0], seeds[:, 1]], kind="stable")]
    grown = np.zeros(padded, np.int32)
    _grow_seeds(hist, seeds.astype(np.int64), grown)
    st = np.asarray(starts)
    labels[st[0], st[1]] = grown.ravel()[flat]
    counts = np.bincount(labels.ravel())
    too_big = np.nonzero(counts > max_size_fraction * labels.size)[0]
    too_big = too_big[too_big > 0]
    if len(too_big):
        labels[np.isin(labels, too_big)] = 0
    return renumber(labels)


# ----------------------------------------------------------------------------- QC
def flow_errors(labels, flows):
    """Mean squared error between the flows of each mask and the given flows.

    Parameters
    ----------
    labels : ndarray (H, W) of int
    flows : ndarray (2, H, W)
        Unit-scale flows (e.g. network output / FLOW_SCALE).

    Returns
    -------
    ndarray (labels.max(),) of float64
        Error of label ``i`` at index ``i - 1``; NaN for ids absent from ``labels``.

    Examples
    --------
    >>> lab = np.zeros((9, 9), int); lab[2:7, 2:7] = 1
    >>> from cellpose_nb.flows import masks_to_flows
    >>> flow_errors(lab, masks_to_flows(lab)).tolist()
    [0.0]
    """
    lab = check_labels(labels)
    f = _check_flows(flows, lab.shape)
    own = masks_to_flows(lab)
    sq = ((own.astype(np.float64) - f) ** 2).sum(axis=0)
    n = int(lab.max()) + 1 if lab.size else 1
    sums = np.bincount(lab.ravel(), weights=sq.ravel(), minlength=n)
    counts = np.bincount(lab.ravel(), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[1:]


def remove_bad_flow_masks(labels, flows, *, threshold=FLOW_THRESHOLD, errors=None):
    """Remove masks whose flow error exceeds ``threshold``.

    Returns a new label image (ids not renumbered).  ``errors``, if given, is
    ``flow_errors(labels, flows)`` computed before (it does not depend on the
    threshold).

    Examples
    --------
    >>> lab = np.zeros((9, 9), int); lab[2:7, 2:7] = 1
    >>> int(remove_bad_flow_masks(lab, -masks_to_flows(lab)).max())   # flows reversed
    0
    """
    lab = check_labels(labels)
    if errors is None:
        err = flow_errors(lab, flows)
    else:
        err = np.asarray(errors)
        n = int(lab.max()) if lab.size else 0
        if err.shape != (n,):
            raise ValueError(f"errors must have shape ({n},), one per label id; got {err.shape}")
    bad = np.nonzero(err > threshold)[0] + 1
    out = lab.copy()
    if len(bad):
        out[np.isin(out, bad)] = 0
    return out


def fill_holes_and_remove_small_masks(labels, *, min_size=MIN_SIZE):
    """Fill holes inside each mask and drop masks smaller than ``min_size`` pixels.

    As Cellpose: small masks are removed, holes are filled (a hole takes the
    label of the mask around it), and masks still too small are removed.
    ``min_size <= 0`` only fills holes.  The result is renumbered 1..N.

    Examples
    --------
    >>> lab = np.zeros((7, 7), int); lab[1:6, 1:6] = 4; lab[3, 3] = 0; lab[0, 0] = 9
    >>> out = fill_holes_and_remove_small_masks(lab, min_size=2)
    >>> int(out[3, 3]), int(out[0, 0]), int(out.max())
    (1, 0, 1)
    """
    return renumber(_fill_holes_and_drop_small(check_labels(labels), min_size))


# ----------------------------------------------------------------------------- all steps
def postprocess_masks(labels, flows, *, flow_threshold=FLOW_THRESHOLD, min_size=MIN_SIZE,
                      errors=None):
    """The steps after clustering: flow-error check, holes filled, small masks dropped.

    What :func:`compute_masks` does to the masks of :func:`cluster_endpoints`:
    :func:`remove_bad_flow_masks` (unless ``flow_threshold`` is 0 or None),
    then :func:`fill_holes_and_remove_small_masks`, which renumbers 1..N.

    Parameters
    ----------
    labels : ndarray (H, W) of int
        Masks before the checks (e.g. from :func:`cluster_endpoints`).
    flows : ndarray (2, H, W) of float
        Unit-scale flows the masks came from.
    flow_threshold : float or None
        Maximum flow error of a kept mask; 0 or None turns the check off.
    min_size : int
        Masks smaller than this many pixels are removed (<= 0: keep all).
    errors : ndarray (labels.max(),), optional
        ``flow_errors(labels, flows)``, when already computed (e.g. to try
        several flow thresholds on one clustering).

    Returns
    -------
    labels : ndarray (H, W) of int32

    Examples
    --------
    >>> lab = np.zeros((12, 12), int); lab[1:6, 1:6] = 3; lab[8:10, 8:10] = 7
    >>> int(postprocess_masks(lab, masks_to_flows(lab), min_size=5).max())   # 2x2 is too small
    1
    """
    lab = check_labels(labels)
    if flow_threshold and lab.size and lab.max() > 0:
        lab = remove_bad_flow_masks(lab, flows, threshold=flow_threshold, errors=errors)
    return fill_holes_and_remove_small_masks(lab, min_size=min_size)


def compute_masks(
    flows,
    cellprob,
    *,
    cellprob_threshold=CELLPROB_THRESHOLD,
    flow_threshold=FLOW_THRESHOLD,
    n_iter=N_ITER,
    min_size=MIN_SIZE,
    max_size_fraction=MAX_SIZE_FRACTION,
):
    """Labels from unit-scale flows and cell-probability logits.

    Parameters
    ----------
    flows : ndarray (2, H, W) of float
        Unit-scale flows (network output divided by ``FLOW_SCALE``).
    cellprob : ndarray (H, W) of float
        Cell-probability logits.
    cellprob_threshold : float
        Pixels with ``cellprob > cellprob_threshold`` follow the flows.
    flow_threshold : float or None
        Maximum flow error of a kept mask; 0 or None turns the check off.
    n_iter : int
        Euler steps.
    min_size : int
        Masks smaller than this many pixels are removed (<= 0: keep all).
    max_size_fraction : float
        Masks covering more than this fraction of the image are removed.

    Returns
    -------
    labels : ndarray (H, W) of int32

    Examples
    --------
    >>> from cellpose_nb.flows import masks_to_flows
    >>> lab = np.zeros((40, 40), int); lab[5:20, 5:20] = 1; lab[22:35, 10:30] = 2
    >>> out = compute_masks(masks_to_flows(lab), np.where(lab > 0, 5.0, -5.0))
    >>> int(out.max()), bool(((out > 0) == (lab > 0)).all())
    (2, True)

    (3, Z, Y, X) flows and a (Z, Y, X) cellprob go to
    :func:`cellpose_nb.masks3d.compute_masks_3d`, which, as Cellpose 3.1.1.2
    does for volumes, runs no flow-error check: ``flow_threshold`` is not
    used there (``compute_masks_3d(..., flow_threshold=...)`` turns it on).
    """
    if np.ndim(flows) == 4:
        return compute_masks_3d(flows, cellprob, cellprob_threshold=cellprob_threshold, n_iter=n_iter,
                                min_size=min_size, max_size_fraction=max_size_fraction)
    f = _check_flows(flows)
    prob = np.asarray(cellprob)
    if prob.shape != f.shape[1:]:
        raise ValueError(f"cellprob shape {prob.shape} does not match flows shape {f.shape[1:]}")
    if not np.isfinite(prob).all():
        raise ValueError("cellprob contains NaN or inf values")
    fg = prob > cellprob_threshold
    if not fg.any():
        return np.zeros(prob.shape, np.int32)
    res = follow_flows(f * fg, fg, n_iter=n_iter)
    labels = cluster_endpoints(res.ends, res.starts, prob.shape, max_size_fraction=max_size_fraction)
    return postprocess_masks(labels, f, flow_threshold=flow_threshold, min_size=min_size)

"""Flows + cell probability -> labels, in 3D (Cellpose's ``do_3D`` mask step).

The 3D twins of the steps of :mod:`cellpose_nb.masks`:

1. :func:`follow_flows_3d`: every voxel with cell probability above threshold
   moves along the (3, Z, Y, X) flows for ``n_iter`` Euler steps, with
   trilinear interpolation, clamped to the volume.
2. :func:`cluster_endpoints_3d`: a histogram of the end points, seeds at its
   5x5x5 local maxima holding more than 10 end points, grown 5 steps (3x3x3)
   over bins holding more than 2; every voxel takes the label of its end bin.
3. :func:`remove_bad_flow_masks_3d`: optional.  Cellpose 3.1.1.2 skips the
   flow-error check in 3D (``flow_threshold`` is "not used for 3D"), and so
   does :func:`compute_masks_3d` unless given a ``flow_threshold``.
4. :func:`fill_holes_and_remove_small_masks_3d`: holes filled in 3D (as
   Cellpose's ``fill_voids.fill``), masks under ``min_size`` voxels dropped.

The Euler step reads the flows where Cellpose 3.1.1.2's 3D step does: it
samples them with ``torch.grid_sample(align_corners=False)`` on coordinates
normalised for ``align_corners=True``, i.e. at ``p * n / (n - 1) - 0.5`` along
an axis of ``n`` voxels, up to half a voxel off near the faces, with zeros
beyond them (its 2D step reads at ``p`` itself).  That looks like a slip, but
reading at ``p`` instead (``follow_flows_3d(cellpose_grid=False)``) changed
about a third of the masks of network flows at IoU 0.75 and matched the truth
worse (AP@0.5 0.63-0.76 against 0.76-0.90 on three synthetic volumes;
``benchmarks/volume_vs_cellpose.py``): 2.5D flows are the *sum* of two
estimates, steps of up to 3 voxels, and the points that overshoot the centre
land elsewhere.  ``flows`` are at unit scale (network output divided by
``FLOW_SCALE``).  The defaults equal those of :mod:`cellpose_nb.masks`
(Cellpose uses the same values in 2D and 3D); a test keeps them equal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from cellpose_nb._dynamics import GROW_RADIUS
from cellpose_nb._dynamics3d import _grow_seeds3, _run3
from cellpose_nb.flows3d import masks_to_flows_3d
from cellpose_nb.labels import _fill_holes_and_drop_small, check_labels, renumber

__all__ = [
    "FollowResult3D",
    "compute_masks_3d",
    "follow_flows_3d",
    "cluster_endpoints_3d",
    "flow_errors_3d",
    "remove_bad_flow_masks_3d",
    "fill_holes_and_remove_small_masks_3d",
    "renumber_3d",
]

# Cellpose's 3D defaults (the same values as the 2D ones in cellpose_nb.masks).
N_ITER_3D = 200  # Euler steps
CELLPROB_THRESHOLD_3D = 0.0  # voxels with cellprob logit above this are followed
FLOW_THRESHOLD_3D = None  # no flow-error check in 3D (Cellpose's do_3D path)
MIN_SIZE_3D = 15  # masks smaller than this many voxels are dropped
MAX_SIZE_FRACTION_3D = 0.4  # masks larger than this fraction of the volume are dropped
SEED_WINDOW_3D = 5  # a seed is the maximum of its 5x5x5 histogram neighbourhood...
SEED_MIN_COUNT_3D = 10  # ...holding more than this many end points


class FollowResult3D(NamedTuple):
    """Where voxels went when they followed the flows.

    Attributes
    ----------
    starts : ndarray (3, N) of int64
        (z, row, col) start voxel of each followed point.
    ends : ndarray (3, N) of float32
        Position after ``n_iter`` steps.
    trajectories : ndarray (n_iter + 1, 3, N) of float32 or None
        Every position, start included, when asked for.
    """

    starts: np.ndarray
    ends: np.ndarray
    trajectories: np.ndarray | None


# ----------------------------------------------------------------------------- checks
def _check_flows_3d(flows, shape=None):
    f = np.asarray(flows)
    if f.ndim != 4 or f.shape[0] != 3:
        raise ValueError(f"flows of a volume must have shape (3, Z, Y, X); got {f.shape}")
    if shape is not None and f.shape[1:] != tuple(shape):
        raise ValueError(f"flows shape {f.shape[1:]} does not match volume shape {tuple(shape)}")
    if not np.issubdtype(f.dtype, np.floating):
        raise TypeError(f"flows must be a float array; got dtype {f.dtype}")
    if not np.isfinite(f).all():
        raise ValueError(f"flows of shape {f.shape} contain NaN or inf values")
    return np.ascontiguousarray(f, dtype=np.float32)


def renumber_3d(labels):
    """Relabel a volume 1..N in raster order of each object's first voxel; 0 stays 0.

    Examples
    --------
    >>> renumber_3d(np.array([[[0, 7]], [[3, 7]]])).ravel().tolist()
    [0, 1, 2, 1]
    """
    lab = check_labels(labels, ndim=3)
    if lab.size == 0:
        return lab.astype(np.int32)
    # raster order of a (Z, Y * X) view is the raster order of the volume
    return renumber(lab.reshape(lab.shape[0], -1)).reshape(lab.shape)


# ----------------------------------------------------------------------------- dynamics
def follow_flows_3d(flows, mask, *, n_iter=N_ITER_3D, return_trajectories=False,
                    cellpose_grid=True, zero_outside=False):
    """Move every voxel of ``mask`` along 3D ``flows`` for ``n_iter`` Euler steps.

    Parameters
    ----------
    flows : ndarray (3, Z, Y, X) of float
        Unit-scale flows (d_z, d_row, d_col).
    mask : ndarray (Z, Y, X) of bool
        Voxels to follow.
    n_iter : int
    return_trajectories : bool
        Also return every position, (n_iter + 1, 3, N) float32: 12 bytes per
        voxel and step.
    cellpose_grid : bool
        Read the flows where Cellpose's 3D step reads them (see the module
        docstring); False: at the position itself, as in 2D.
    zero_outside : bool
        Take the flows as zero outside ``mask``, as Cellpose does
        (:func:`compute_masks_3d` does), without a masked copy of them.

    Returns
    -------
    FollowResult3D

    Examples
    --------
    >>> flows = np.zeros((3, 4, 5, 5), np.float32); flows[0] = 1.0   # all down in z
    >>> mask = np.zeros((4, 5, 5), bool); mask[0, 2, 2] = True
    >>> follow_flows_3d(flows, mask, n_iter=2, cellpose_grid=False).ends[:, 0].tolist()
    [2.0, 2.0, 2.0]
    >>> follow_flows_3d(flows, mask, n_iter=2).ends[:, 0].tolist()  # read at z = -0.5 first
    [1.5, 2.0, 2.0]
    """
    f = _check_flows_3d(flows)
    m = np.asarray(mask)
    if m.shape != f.shape[1:]:
        raise ValueError(f"mask shape {m.shape} does not match flows shape {f.shape[1:]}")
    starts = np.stack(np.nonzero(m.astype(bool))).astype(np.int64)
    ends, traj = _run3(f, starts, n_iter, return_trajectories, cellpose_grid,
                       m.astype(bool) if zero_outside else None)
    return FollowResult3D(starts, ends, traj)


# ----------------------------------------------------------------------------- clustering
def cluster_endpoints_3d(ends, starts, shape, *, max_size_fraction=MAX_SIZE_FRACTION_3D):
    """Group followed voxels whose end points gather at the same fixed point.

    Cellpose's ``get_masks_torch`` in 3D: a histogram of the truncated end
    points; seeds at its 5x5x5 local maxima holding more than 10 end points,
    grown 5 times (3x3x3, inside an 11x11x11 box) over bins holding more than 2.

    Parameters
    ----------
    ends : ndarray (3, N) of float
        End positions (from :func:`follow_flows_3d`).
    starts : ndarray (3, N) of int
        Start voxels of the same points.
    shape : (Z, Y, X)
    max_size_fraction : float
        Masks covering more than this fraction of the volume are dropped.

    Returns
    -------
    labels : ndarray (Z, Y, X) of int32
        Sequential labels, in raster order of their first voxel.

    Examples
    --------
    >>> ends = np.full((3, 30), 4.0); starts = np.stack(np.unravel_index(np.arange(30), (3, 10, 10)))
    >>> int(cluster_endpoints_3d(ends, starts, (3, 10, 10)).max())
    1
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X); got {shape}")
    labels = np.zeros(shape, np.int32)
    e = np.asarray(ends)
    if e.ndim != 2 or e.shape[0] != 3 or np.shape(starts) != e.shape:
        raise ValueError(f"ends and starts must both be (3, N); got {e.shape} and {np.shape(starts)}")
    if e.size == 0:
        return labels
    pts = e.astype(np.int64)  # truncation, as Cellpose's .int()
    for ax in range(3):
        np.clip(pts[ax], 0, shape[ax] - 1, out=pts[ax])
    # the histogram only where end points are, with room for the seed boxes
    margin = GROW_RADIUS + 1
    lo = pts.min(axis=1) - margin
    local = pts - lo[:, None]
    box = tuple(int(v) for v in local.max(axis=1) + margin + 1)
    flat = np.ravel_multi_index(tuple(local), box)
    hist = np.bincount(flat, minlength=int(np.prod(box))).reshape(box).astype(np.int32)
    hmax = ndi.maximum_filter(hist, size=SEED_WINDOW_3D, mode="constant", cval=0)
    seeds = np.argwhere((hist >= hmax) & (hist > SEED_MIN_COUNT_3D))
    if len(seeds) == 0:
        return labels
    seeds = seeds[np.argsort(hist[tuple(seeds.T)], kind="stable")]
    grown = np.zeros(box, np.int32)
    _grow_seeds3(hist, seeds.astype(np.int64), grown)
    st = np.asarray(starts)
    labels[st[0], st[1], st[2]] = grown.ravel()[flat]
    counts = np.bincount(labels.ravel())
    too_big = np.nonzero(counts > max_size_fraction * labels.size)[0]
    too_big = too_big[too_big > 0]
    if len(too_big):
        labels[np.isin(labels, too_big)] = 0
    return renumber_3d(labels)


# ----------------------------------------------------------------------------- QC
def flow_errors_3d(labels, flows):
    """Mean squared error between the 3D flows of each mask and the given flows.

    Returns an array (labels.max(),): label ``i`` at index ``i - 1``, NaN for absent ids.

    Examples
    --------
    >>> lab = np.zeros((6, 8, 8), int); lab[1:5, 2:6, 2:6] = 1
    >>> flow_errors_3d(lab, masks_to_flows_3d(lab)).tolist()
    [0.0]
    """
    lab = check_labels(labels, ndim=3)
    f = _check_flows_3d(flows, lab.shape)
    sq = ((masks_to_flows_3d(lab).astype(np.float64) - f) ** 2).sum(axis=0)
    n = int(lab.max()) + 1 if lab.size else 1
    sums = np.bincount(lab.ravel(), weights=sq.ravel(), minlength=n)
    counts = np.bincount(lab.ravel(), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[1:]


def remove_bad_flow_masks_3d(labels, flows, *, threshold):
    """Remove masks whose 3D flow error exceeds ``threshold`` (ids not renumbered).

    Examples
    --------
    >>> lab = np.zeros((6, 8, 8), int); lab[1:5, 2:6, 2:6] = 1
    >>> int(remove_bad_flow_masks_3d(lab, -masks_to_flows_3d(lab), threshold=0.4).max())
    0
    """
    lab = check_labels(labels, ndim=3)
    bad = np.nonzero(flow_errors_3d(lab, flows) > threshold)[0] + 1
    out = lab.copy()
    if len(bad):
        out[np.isin(out, bad)] = 0
    return out


def fill_holes_and_remove_small_masks_3d(labels, *, min_size=MIN_SIZE_3D):
    """Fill the 3D holes of each mask and drop masks smaller than ``min_size`` voxels.

    As Cellpose (``fill_voids.fill`` per mask in its bounding box): small masks
    are removed, cavities are filled (a cavity takes the label of the mask
    around it), masks still too small are removed, and the result is
    renumbered 1..N.  ``min_size <= 0`` only fills holes.

    Examples
    --------
    >>> lab = np.zeros((5, 5, 5), int); lab[1:4, 1:4, 1:4] = 4; lab[2, 2, 2] = 0
    >>> out = fill_holes_and_remove_small_masks_3d(lab, min_size=2)
    >>> int(out[2, 2, 2]), int(out.max())
    (1, 1)
    """
    return renumber_3d(_fill_holes_and_drop_small(check_labels(labels, ndim=3), min_size))


# ----------------------------------------------------------------------------- all steps
def compute_masks_3d(
    flows,
    cellprob,
    *,
    cellprob_threshold=CELLPROB_THRESHOLD_3D,
    flow_threshold=FLOW_THRESHOLD_3D,
    n_iter=N_ITER_3D,
    min_size=MIN_SIZE_3D,
    max_size_fraction=MAX_SIZE_FRACTION_3D,
):
    """Labels of a volume from unit-scale 3D flows and cell-probability logits.

    Parameters
    ----------
    flows : ndarray (3, Z, Y, X) of float
        Unit-scale flows (d_z, d_row, d_col).
    cellprob : ndarray (Z, Y, X) of float
        Cell-probability logits.
    cellprob_threshold : float
        Voxels with ``cellprob > cellprob_threshold`` follow the flows.
    flow_threshold : float or None
        Maximum 3D flow error of a kept mask.  Default None: no check, as
        Cellpose 3.1.1.2 in 3D (the check costs a 3D ``masks_to_flows``).
    n_iter : int
        Euler steps.
    min_size : int
        Masks smaller than this many voxels are removed (<= 0: keep all).
    max_size_fraction : float
        Masks covering more than this fraction of the volume are removed.

    Returns
    -------
    labels : ndarray (Z, Y, X) of int32

    Examples
    --------
    >>> lab = np.zeros((12, 20, 20), int); lab[1:10, 2:10, 2:10] = 1; lab[2:11, 11:19, 5:15] = 2
    >>> out = compute_masks_3d(masks_to_flows_3d(lab), np.where(lab > 0, 5.0, -5.0))
    >>> int(out.max()), bool(((out > 0) == (lab > 0)).all())
    (2, True)
    """
    f = _check_flows_3d(flows)
    prob = np.asarray(cellprob)
    if prob.shape != f.shape[1:]:
        raise ValueError(f"cellprob shape {prob.shape} does not match flows shape {f.shape[1:]}")
    if not np.issubdtype(prob.dtype, np.number) or not np.isfinite(prob).all():
        raise ValueError(f"cellprob of shape {prob.shape} must be finite numbers; got dtype "
                         f"{prob.dtype} with NaN, inf or non-numbers")
    fg = prob > cellprob_threshold
    if not fg.any():
        return np.zeros(prob.shape, np.int32)
    res = follow_flows_3d(f, fg, n_iter=n_iter, zero_outside=True)
    labels = cluster_endpoints_3d(res.ends, res.starts, prob.shape, max_size_fraction=max_size_fraction)
    if flow_threshold and labels.max() > 0:
        labels = remove_bad_flow_masks_3d(labels, f, threshold=flow_threshold)
    return fill_holes_and_remove_small_masks_3d(labels, min_size=min_size)

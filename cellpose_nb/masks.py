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

:func:`compute_masks` chains them, as ``cellpose.dynamics.compute_masks``
does.  ``flows`` here are always at unit scale, exactly what
:func:`cellpose_nb.flows.masks_to_flows` returns (the network output divided
by ``FLOW_SCALE``).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from scipy import ndimage as ndi

from cellpose_nb.flows import check_labels, masks_to_flows

__all__ = [
    "FollowResult",
    "compute_masks",
    "follow_flows",
    "trace_points",
    "cluster_endpoints",
    "flow_errors",
    "remove_bad_flow_masks",
    "fill_holes_and_remove_small_masks",
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
#: Seeds grow GROW_STEPS times (3x3) inside a GROW_RADIUS box over bins holding
#: more than GROW_MIN_COUNT end points.
GROW_STEPS = 5
GROW_RADIUS = 5
GROW_MIN_COUNT = 2
#: Defaults of the mask step, named once and read by segment, training, the CLI and the widgets.
CELLPROB_THRESHOLD = 0.0  # pixels with cellprob logit above this are followed
FLOW_THRESHOLD = 0.4  # masks whose flow error is above this are dropped (Cellpose: 0.4)
MIN_SIZE = 15  # masks smaller than this many pixels are dropped (Cellpose: 15)

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
@numba.njit(cache=True, nogil=True, inline="always")
def _corners(ly, lx, y, x):
    """Bilinear interpolation at (y, x) in an (ly, lx) grid, clamped as Cellpose does.

    Returns the corner indices ``y0, x0, y1, x1`` and the fractional weights ``wy, wx``.
    """
    y0 = min(ly - 1, max(0, np.int32(y)))
    x0 = min(lx - 1, max(0, np.int32(x)))
    y1 = min(ly - 1, y0 + 1)
    x1 = min(lx - 1, x0 + 1)
    wy = y - np.float32(np.int32(y))
    wx = x - np.float32(np.int32(x))
    return y0, x0, y1, x1, wy, wx


@numba.njit(cache=True, nogil=True, inline="always")
def _interp(flows, y, x):
    """Bilinear interpolation of both flow components at (y, x), clamped to the image.

    ``flows`` is (H, W, 2) here (components last, so that the four corners of
    both components sit in two cache lines); float32 throughout.
    """
    y0, x0, y1, x1, wy, wx = _corners(flows.shape[0], flows.shape[1], y, x)
    one = np.float32(1.0)
    w00 = (one - wy) * (one - wx)
    w01 = (one - wy) * wx
    w10 = wy * (one - wx)
    w11 = wy * wx
    out0 = flows[y0, x0, 0] * w00 + flows[y0, x1, 0] * w01 + flows[y1, x0, 0] * w10 + flows[y1, x1, 0] * w11
    out1 = flows[y0, x0, 1] * w00 + flows[y0, x1, 1] * w01 + flows[y1, x0, 1] * w10 + flows[y1, x1, 1] * w11
    return out0, out1


#: Points are followed in chunks: within a chunk, one step is taken for every
#: point before the next step, so that independent points overlap in the CPU
#: pipeline instead of waiting on one point's chain of dependent steps.
_CHUNK = 256


@numba.njit(cache=True, nogil=True)
def _follow_chunk(flows, pos, n_iter, traj, ch):
    """Euler steps for chunk ``ch`` of the points in ``pos`` (2, N), in place; traj optional.

    The map from one position to the next is deterministic, so once a point
    comes back exactly to where it was two steps before it is on a cycle of
    length 1 or 2, and its final position is known without more steps: it
    leaves the active list.  (Not when the trajectories are kept.)
    """
    ly = np.float32(flows.shape[0] - 1)
    lx = np.float32(flows.shape[1] - 1)
    keep = traj.shape[0] > 1
    n = pos.shape[1]
    lo = ch * _CHUNK
    m = min(n, lo + _CHUNK) - lo
    y = pos[0, lo:lo + m].copy()
    x = pos[1, lo:lo + m].copy()
    y1 = np.full(m, np.float32(-1.0))  # position one step ago
    x1 = np.full(m, np.float32(-1.0))
    y2 = np.full(m, np.float32(-2.0))  # position two steps ago
    x2 = np.full(m, np.float32(-2.0))
    active = np.arange(m)
    n_active = m
    if keep:
        for j in range(m):
            traj[0, 0, lo + j] = y[j]
            traj[0, 1, lo + j] = x[j]
    for t in range(n_iter):
        k = 0
        for a in range(n_active):
            j = active[a]
            if not keep and y[j] == y2[j] and x[j] == x2[j]:
                if (n_iter - t) % 2 == 1:
                    y[j] = y1[j]
                    x[j] = x1[j]
                continue
            dy, dx = _interp(flows, y[j], x[j])
            y2[j] = y1[j]
            x2[j] = x1[j]
            y1[j] = y[j]
            x1[j] = x[j]
            y[j] = min(ly, max(np.float32(0.0), y[j] + dy))
            x[j] = min(lx, max(np.float32(0.0), x[j] + dx))
            if keep:
                traj[t + 1, 0, lo + j] = y[j]
                traj[t + 1, 1, lo + j] = x[j]
            active[k] = j
            k += 1
        n_active = k
        if n_active == 0:
            break
    for j in range(m):
        pos[0, lo + j] = y[j]
        pos[1, lo + j] = x[j]


@numba.njit(cache=True, nogil=True)
def _follow_serial(flows, pos, n_iter, traj):
    for ch in range((pos.shape[1] + _CHUNK - 1) // _CHUNK):
        _follow_chunk(flows, pos, n_iter, traj, ch)


@numba.njit(cache=True, parallel=True)
def _follow_parallel(flows, pos, n_iter, traj):
    for ch in numba.prange((pos.shape[1] + _CHUNK - 1) // _CHUNK):
        _follow_chunk(flows, pos, n_iter, traj, ch)


#: Euler steps (points x iterations) above which following runs on all numba
#: threads; smaller jobs stay on one thread (see flows.PARALLEL_MIN_WORK).
PARALLEL_MIN_STEPS = 20_000_000


def _run(flows, starts, n_iter, return_trajectories):
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer; got {n_iter!r}")
    pos = np.ascontiguousarray(starts, dtype=np.float32).copy()
    flows_last = np.ascontiguousarray(np.moveaxis(flows, 0, -1))
    n_keep = int(n_iter) + 1 if return_trajectories else 1
    traj = np.zeros((n_keep, 2, pos.shape[1] if return_trajectories else 0), np.float32)
    kernel = _follow_parallel if pos.shape[1] * int(n_iter) >= PARALLEL_MIN_STEPS else _follow_serial
    kernel(flows_last, pos, int(n_iter), traj)
    return pos, (traj if return_trajectories else None)


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
    """
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
@numba.njit(cache=True, nogil=True)
def _grow_seeds(hist, seeds, out):
    """Grow each seed (ascending count order) inside a small box over busy bins.

    Later (bigger) seeds overwrite earlier ones, as in Cellpose.
    """
    side = 2 * GROW_RADIUS + 1
    for k in range(seeds.shape[0]):
        sy = seeds[k, 0] - GROW_RADIUS
        sx = seeds[k, 1] - GROW_RADIUS
        cur = np.zeros((side, side), np.bool_)
        cur[GROW_RADIUS, GROW_RADIUS] = True
        for _ in range(GROW_STEPS):
            nxt = cur.copy()
            for y in range(side):
                for x in range(side):
                    if cur[y, x]:
                        continue
                    hit = False
                    for dy in range(-1, 2):
                        for dx in range(-1, 2):
                            yy = y + dy
                            xx = x + dx
                            if 0 <= yy < side and 0 <= xx < side and cur[yy, xx]:
                                hit = True
                    if hit:
                        nxt[y, x] = True
            for y in range(side):
                for x in range(side):
                    nxt[y, x] = nxt[y, x] and hist[sy + y, sx + x] > GROW_MIN_COUNT
            cur = nxt
        for y in range(side):
            for x in range(side):
                if cur[y, x]:
                    out[sy + y, sx + x] = k + 1


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


def renumber(labels):
    """Relabel objects 1..N in raster order of their first pixel; 0 stays 0.

    Examples
    --------
    >>> renumber(np.array([[0, 7, 7], [3, 0, 9]])).tolist()
    [[0, 1, 1], [2, 0, 3]]
    """
    lab = check_labels(labels)
    if lab.size == 0:
        return lab.astype(np.int32)
    if int(lab.max()) > 4 * lab.size:  # sparse huge ids: compact them first
        _, inverse = np.unique(lab, return_inverse=True)
        lab = inverse.reshape(lab.shape).astype(np.int32) + (0 if lab.min() == 0 else 1)
    return _renumber_kernel(lab, int(lab.max()))


@numba.njit(cache=True, nogil=True)
def _renumber_kernel(lab, max_id):
    table = np.zeros(max_id + 1, np.int32)
    out = np.empty(lab.shape, np.int32)
    nxt = 1
    for r in range(lab.shape[0]):
        for c in range(lab.shape[1]):
            v = lab[r, c]
            if v != 0 and table[v] == 0:
                table[v] = nxt
                nxt += 1
            out[r, c] = table[v]
    return out


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


def remove_bad_flow_masks(labels, flows, *, threshold=FLOW_THRESHOLD):
    """Remove masks whose flow error exceeds ``threshold``.

    Returns a new label image (ids not renumbered).

    Examples
    --------
    >>> lab = np.zeros((9, 9), int); lab[2:7, 2:7] = 1
    >>> int(remove_bad_flow_masks(lab, -masks_to_flows(lab)).max())   # flows reversed
    0
    """
    lab = check_labels(labels)
    err = flow_errors(lab, flows)
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
    lab = check_labels(labels)
    out = _drop_small(lab, min_size)
    slices = ndi.find_objects(out)
    for i, sl in enumerate(slices):
        if sl is None:
            continue
        filled = ndi.binary_fill_holes(out[sl] == i + 1)
        out[sl][filled] = i + 1
    return renumber(_drop_small(out, min_size))


def _drop_small(labels, min_size):
    out = labels.copy()
    if min_size > 0 and out.size:
        counts = np.bincount(out.ravel())
        small = np.nonzero(counts < min_size)[0]
        small = small[small > 0]
        if len(small):
            out[np.isin(out, small)] = 0
    return out


# ----------------------------------------------------------------------------- all steps
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
    """
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
    if flow_threshold and labels.max() > 0:
        labels = remove_bad_flow_masks(labels, f, threshold=flow_threshold)
    return fill_holes_and_remove_small_masks(labels, min_size=min_size)

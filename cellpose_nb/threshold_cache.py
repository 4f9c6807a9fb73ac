"""What the threshold explorer precomputes, so that a slider move is cheap.

:func:`follow_with_min` follows the flows once and records the lowest cell
probability each path weighed, so that a new cellprob threshold re-follows
only the paths it changes.
"""

from __future__ import annotations

import numba
import numpy as np

from cellpose_nb.masks import (
    N_ITER,
    _corners,  # the library's bilinear corners and weights
    _interp,  # the library's bilinear step, so that follow_with_min takes the same path
)

__all__ = ["follow_with_min"]


def _check_flows_prob(flows, cellprob, shape=None):
    """flows (2, H, W) and cellprob (H, W) or None as float32, checked against ``shape``."""
    f = np.asarray(flows, dtype=np.float32)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flows must have shape (2, H, W) at unit scale; got {f.shape}")
    if shape is not None and f.shape[1:] != tuple(shape):
        raise ValueError(f"flows shape {f.shape[1:]} does not match image shape {tuple(shape)}")
    if cellprob is None:
        return f, None
    p = np.asarray(cellprob, dtype=np.float32)
    if p.shape != f.shape[1:]:
        raise ValueError(f"cellprob shape {p.shape} does not match flows shape {f.shape[1:]}")
    if not np.isfinite(p).all():
        raise ValueError("cellprob contains NaN or inf values")
    return f, p


# ----------------------------------------------------------------------------- paths
@numba.njit(cache=True, nogil=True, inline="always")
def _support_min(prob, y, x):
    """Lowest ``prob`` among the pixels that bilinear interpolation at (y, x) weighs."""
    y0, x0, y1, x1, wy, wx = _corners(prob.shape[0], prob.shape[1], y, x)
    m = prob[y0, x0]
    if wx != 0:
        m = min(m, prob[y0, x1])
    if wy != 0:
        m = min(m, prob[y1, x0])
        if wx != 0:
            m = min(m, prob[y1, x1])
    return m


@numba.njit(cache=True, parallel=True)
def _follow_min_kernel(flows, prob, pos, n_iter, minprob):
    """Follow the flows (as :func:`cellpose_nb.masks.follow_flows`) and record,
    for each point, the lowest ``prob`` of any pixel its interpolations weighed.

    ``flows`` is (H, W, 2) float32, ``pos`` (2, N) float32 (updated in place).
    The step is the library's (same ``_interp``, same clamping, same exact
    2-cycle exit: the remaining steps revisit positions already seen).
    """
    ly = np.float32(flows.shape[0] - 1)
    lx = np.float32(flows.shape[1] - 1)
    zero = np.float32(0.0)
    for j in numba.prange(pos.shape[1]):
        y = pos[0, j]
        x = pos[1, j]
        y1 = np.float32(-1.0)
        x1 = np.float32(-1.0)
        y2 = np.float32(-2.0)
        x2 = np.float32(-2.0)
        m = np.float32(np.inf)
        for t in range(n_iter):
            if y == y2 and x == x2:
                if (n_iter - t) % 2 == 1:
                    y = y1
                    x = x1
                break
            m = min(m, _support_min(prob, y, x))
            dy, dx = _interp(flows, y, x)
            y2 = y1
            x2 = x1
            y1 = y
            x1 = x
            y = min(ly, max(zero, y + dy))
            x = min(lx, max(zero, x + dx))
        pos[0, j] = y
        pos[1, j] = x
        minprob[j] = m


def follow_with_min(flows, prob, mask, *, n_iter=N_ITER):
    """Follow ``flows`` from the pixels of ``mask``; also the lowest ``prob`` met.

    The end points are those of :func:`cellpose_nb.masks.follow_flows`.  The
    extra output makes the threshold explorer exact: a point whose
    interpolations only weighed pixels with ``prob > t`` follows the same path
    when the flows are masked by ``prob > t``, so only the other points need
    following again at threshold ``t``.

    Returns
    -------
    starts : ndarray (2, N) of int64
    ends : ndarray (2, N) of float32
    minprob : ndarray (N,) of float32
        Lowest ``prob`` among the pixels weighed (with non-zero weight) by the
        bilinear interpolations of each point's path (``inf`` if ``n_iter=0``).

    Examples
    --------
    >>> flows = np.zeros((2, 5, 5), np.float32); flows[1] = 1.0   # all to the right
    >>> prob = np.arange(25, dtype=np.float32).reshape(5, 5)
    >>> mask = np.zeros((5, 5), bool); mask[2, 0] = True
    >>> starts, ends, low = follow_with_min(flows, prob, mask, n_iter=3)
    >>> ends[:, 0].tolist(), low.tolist()
    ([2.0, 3.0], [10.0])
    """
    f = np.asarray(flows, dtype=np.float32)
    p = np.ascontiguousarray(prob, dtype=np.float32)
    m = np.asarray(mask, bool)
    if f.shape != (2,) + p.shape or m.shape != p.shape:
        raise ValueError(f"flows {f.shape}, prob {p.shape} and mask {m.shape} do not match")
    starts = np.stack(np.nonzero(m)).astype(np.int64)
    pos = starts.astype(np.float32)
    minprob = np.empty(starts.shape[1], np.float32)
    _follow_min_kernel(np.ascontiguousarray(np.moveaxis(f, 0, -1)), p, pos, int(n_iter), minprob)
    return starts, pos, minprob

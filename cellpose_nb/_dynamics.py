"""Compiled kernels of :mod:`cellpose_nb.masks`: following the flows and growing seeds.

Private: :func:`cellpose_nb.masks.follow_flows`, :func:`~cellpose_nb.masks.trace_points`
and :func:`~cellpose_nb.masks.cluster_endpoints` check their inputs and call these.
"""

from __future__ import annotations

import numba
import numpy as np


# ----------------------------------------------------------------------------- following
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
    """Follow ``flows`` (2, H, W) float32 from ``starts`` (2, N): end points and trajectories or None."""
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer; got {n_iter!r}")
    pos = np.ascontiguousarray(starts, dtype=np.float32).copy()
    flows_last = np.ascontiguousarray(np.moveaxis(flows, 0, -1))
    n_keep = int(n_iter) + 1 if return_trajectories else 1
    traj = np.zeros((n_keep, 2, pos.shape[1] if return_trajectories else 0), np.float32)
    kernel = _follow_parallel if pos.shape[1] * int(n_iter) >= PARALLEL_MIN_STEPS else _follow_serial
    kernel(flows_last, pos, int(n_iter), traj)
    return pos, (traj if return_trajectories else None)


# ----------------------------------------------------------------------------- clustering
#: Seeds grow GROW_STEPS times (3x3) inside a GROW_RADIUS box over bins holding
#: more than GROW_MIN_COUNT end points.
GROW_STEPS = 5
GROW_RADIUS = 5
GROW_MIN_COUNT = 2


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

"""Compiled kernels of :mod:`cellpose_nb.masks3d`: following 3D flows and growing 3D seeds.

Private: :func:`cellpose_nb.masks3d.follow_flows_3d` and
:func:`~cellpose_nb.masks3d.cluster_endpoints_3d` check their inputs and call
these.  The 3D twins of :mod:`cellpose_nb._dynamics`.
"""

from __future__ import annotations

import numba
import numpy as np

from cellpose_nb._dynamics import GROW_MIN_COUNT, GROW_RADIUS, GROW_STEPS

#: Points are followed in chunks, one step for every point of a chunk before the
#: next step (independent points overlap in the CPU pipeline), as in 2D.
_CHUNK = 256
#: Euler steps (points x iterations) above which following runs on all numba threads.
PARALLEL_MIN_STEPS_3D = 20_000_000


# ----------------------------------------------------------------------------- following
@numba.njit(cache=True, nogil=True, inline="always")
def _axis(n, p, cellpose_grid):
    """Corners and weights (lower, upper, lower weight, upper weight) along an axis of length ``n``.

    ``cellpose_grid``: as Cellpose 3.1.1.2's 3D step (``grid_sample(align_corners=False)``
    on coordinates normalised by ``n - 1``), the field is read at ``p * n / (n - 1) - 0.5``
    and is zero beyond the volume's faces; else at ``p``, clamped to the volume.
    """
    one = np.float32(1.0)
    if cellpose_grid and n > 1:
        q = p * np.float32(n) / np.float32(n - 1) - np.float32(0.5)
        f = np.floor(q)
        w = q - f
        i0 = np.int32(f)
        w0 = one - w if 0 <= i0 <= n - 1 else np.float32(0.0)
        w1 = w if 0 <= i0 + 1 <= n - 1 else np.float32(0.0)
        return min(n - 1, max(0, i0)), min(n - 1, max(0, i0 + 1)), w0, w1
    i0 = min(n - 1, max(0, np.int32(p)))
    w = p - np.float32(np.int32(p))
    return i0, min(n - 1, i0 + 1), one - w, w


@numba.njit(cache=True, nogil=True, inline="always")
def _tri(flows, c, z0, z1, y0, y1, x0, x1, vz, wz, vy, wy, vx, wx):
    """Trilinear interpolation of component ``c``: corners and (lower, upper) weights per axis."""
    a = (flows[z0, y0, x0, c] * vx + flows[z0, y0, x1, c] * wx) * vy \
        + (flows[z0, y1, x0, c] * vx + flows[z0, y1, x1, c] * wx) * wy
    b = (flows[z1, y0, x0, c] * vx + flows[z1, y0, x1, c] * wx) * vy \
        + (flows[z1, y1, x0, c] * vx + flows[z1, y1, x1, c] * wx) * wy
    return a * vz + b * wz


@numba.njit(cache=True, nogil=True, inline="always")
def _interp3(flows, z, y, x, cellpose_grid):
    """Trilinear interpolation of the 3 flow components at (z, y, x); ``flows`` is (Z, Y, X, 3).

    Float32 throughout; ``cellpose_grid`` as :func:`_axis`.
    """
    z0, z1, vz, wz = _axis(flows.shape[0], z, cellpose_grid)
    y0, y1, vy, wy = _axis(flows.shape[1], y, cellpose_grid)
    x0, x1, vx, wx = _axis(flows.shape[2], x, cellpose_grid)
    return (_tri(flows, 0, z0, z1, y0, y1, x0, x1, vz, wz, vy, wy, vx, wx),
            _tri(flows, 1, z0, z1, y0, y1, x0, x1, vz, wz, vy, wy, vx, wx),
            _tri(flows, 2, z0, z1, y0, y1, x0, x1, vz, wz, vy, wy, vx, wx))


@numba.njit(cache=True, nogil=True)
def _follow_chunk3(flows, pos, n_iter, traj, ch, cellpose_grid):
    """Euler steps for chunk ``ch`` of ``pos`` (3, N), in place; ``traj`` kept when not empty.

    A point that comes back exactly to where it was two steps before is on a
    cycle of length 1 or 2 (the step map is deterministic): its final position
    is known and it leaves the active list (not when trajectories are kept).
    """
    lz = np.float32(flows.shape[0] - 1)
    ly = np.float32(flows.shape[1] - 1)
    lx = np.float32(flows.shape[2] - 1)
    zero = np.float32(0.0)
    keep = traj.shape[0] > 1
    lo = ch * _CHUNK
    m = min(pos.shape[1], lo + _CHUNK) - lo
    z = pos[0, lo:lo + m].copy()
    y = pos[1, lo:lo + m].copy()
    x = pos[2, lo:lo + m].copy()
    z1 = np.full(m, np.float32(-1.0))  # one step ago
    y1 = np.full(m, np.float32(-1.0))
    x1 = np.full(m, np.float32(-1.0))
    z2 = np.full(m, np.float32(-2.0))  # two steps ago
    y2 = np.full(m, np.float32(-2.0))
    x2 = np.full(m, np.float32(-2.0))
    active = np.arange(m)
    n_active = m
    if keep:
        traj[0, :, lo:lo + m] = pos[:, lo:lo + m]
    for t in range(n_iter):
        k = 0
        for a in range(n_active):
            j = active[a]
            if not keep and z[j] == z2[j] and y[j] == y2[j] and x[j] == x2[j]:
                if (n_iter - t) % 2 == 1:
                    z[j] = z1[j]
                    y[j] = y1[j]
                    x[j] = x1[j]
                continue
            dz, dy, dx = _interp3(flows, z[j], y[j], x[j], cellpose_grid)
            z2[j] = z1[j]
            y2[j] = y1[j]
            x2[j] = x1[j]
            z1[j] = z[j]
            y1[j] = y[j]
            x1[j] = x[j]
            z[j] = min(lz, max(zero, z[j] + dz))
            y[j] = min(ly, max(zero, y[j] + dy))
            x[j] = min(lx, max(zero, x[j] + dx))
            if keep:
                traj[t + 1, 0, lo + j] = z[j]
                traj[t + 1, 1, lo + j] = y[j]
                traj[t + 1, 2, lo + j] = x[j]
            active[k] = j
            k += 1
        n_active = k
        if n_active == 0:
            break
    pos[0, lo:lo + m] = z
    pos[1, lo:lo + m] = y
    pos[2, lo:lo + m] = x


@numba.njit(cache=True, nogil=True)
def _follow_serial3(flows, pos, n_iter, traj, cellpose_grid):
    for ch in range((pos.shape[1] + _CHUNK - 1) // _CHUNK):
        _follow_chunk3(flows, pos, n_iter, traj, ch, cellpose_grid)


@numba.njit(cache=True, parallel=True)
def _follow_parallel3(flows, pos, n_iter, traj, cellpose_grid):
    for ch in numba.prange((pos.shape[1] + _CHUNK - 1) // _CHUNK):
        _follow_chunk3(flows, pos, n_iter, traj, ch, cellpose_grid)


def _run3(flows, starts, n_iter, return_trajectories, cellpose_grid=True, mask=None):
    """Follow ``flows`` (3, Z, Y, X) float32 from ``starts`` (3, N): end points and trajectories or None.

    ``mask``: the flows are taken as zero outside it (without a copy of ``flows``).
    """
    if int(n_iter) != n_iter or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer; got {n_iter!r}")
    pos = np.ascontiguousarray(starts, dtype=np.float32).copy()
    flows_last = np.empty((*flows.shape[1:], 3), np.float32)  # the kernels' layout
    for c in range(3):
        if mask is None:
            flows_last[..., c] = flows[c]
        else:
            np.multiply(flows[c], mask, out=flows_last[..., c])
    n_keep = int(n_iter) + 1 if return_trajectories else 1
    traj = np.zeros((n_keep, 3, pos.shape[1] if return_trajectories else 0), np.float32)
    big = pos.shape[1] * int(n_iter) >= PARALLEL_MIN_STEPS_3D
    (_follow_parallel3 if big else _follow_serial3)(flows_last, pos, int(n_iter), traj,
                                                     bool(cellpose_grid))
    return pos, (traj if return_trajectories else None)


# ----------------------------------------------------------------------------- clustering
@numba.njit(cache=True, nogil=True)
def _grow_seeds3(hist, seeds, out):
    """Grow each seed (ascending count order) GROW_STEPS times (3x3x3) inside its box over busy bins.

    Later (bigger) seeds overwrite earlier ones, as in Cellpose's ``get_masks_torch``.
    """
    r = GROW_RADIUS
    side = 2 * r + 1
    for k in range(seeds.shape[0]):
        s0, s1, s2 = seeds[k, 0] - r, seeds[k, 1] - r, seeds[k, 2] - r
        busy = np.zeros((side, side, side), np.bool_)
        for z in range(side):
            for y in range(side):
                for x in range(side):
                    busy[z, y, x] = hist[s0 + z, s1 + y, s2 + x] > GROW_MIN_COUNT
        cur = np.zeros((side, side, side), np.bool_)
        cur[r, r, r] = True
        for _ in range(GROW_STEPS):
            nxt = np.zeros((side, side, side), np.bool_)
            for z in range(side):
                for y in range(side):
                    for x in range(side):
                        if not busy[z, y, x]:
                            continue
                        hit = False
                        for a in range(max(0, z - 1), min(side, z + 2)):
                            for b in range(max(0, y - 1), min(side, y + 2)):
                                for c in range(max(0, x - 1), min(side, x + 2)):
                                    if cur[a, b, c]:
                                        hit = True
                        nxt[z, y, x] = hit
            cur = nxt
        for z in range(side):
            for y in range(side):
                for x in range(side):
                    if cur[z, y, x]:
                        out[s0 + z, s1 + y, s2 + x] = k + 1

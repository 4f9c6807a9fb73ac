"""Labels -> flows: the vector field that points from every cell pixel to its centre.

Two ways to build the field are offered:

``method="heat"`` (default)
    Cellpose's way.  Heat is injected at the object's centre pixel and
    diffused (a 3x3 box average, Jacobi iterations) over the object's pixels
    only, with zero (absorbing) boundaries; the flow is the normalised
    spatial gradient of the result.  This reproduces
    ``cellpose.dynamics.masks_to_flows`` (CPU path of cellpose 3.1.1.2).
``method="fmm"``
    What the method slides describe: the geodesic distance from the centre
    inside the object (computed by :class:`skimage.graph.MCP_Geometric`, a
    fast-marching style minimum-cost-path solver) and the normalised
    gradient of *minus* that distance.

Both return ``flows`` of shape (2, H, W), float32, ordered (d_row, d_col),
unit length inside objects and zero on the background.  The network
predicts ``FLOW_SCALE * flows``.  The geodesic method lives in
:mod:`cellpose_nb.fmm`; :func:`check_labels` and :func:`object_centers` live in
:mod:`cellpose_nb.labels` and are re-exported here.
"""

from __future__ import annotations

import numba
import numpy as np

from cellpose_nb.flows3d import masks_to_flows_3d
from cellpose_nb.fmm import fmm_flows
from cellpose_nb.labels import _centers_kernel, _object_table, check_labels, object_centers

__all__ = [
    "FLOW_SCALE",
    "masks_to_flows",
    "heat_map",
    "object_centers",
    "flows_to_rgb",
    "check_labels",
]

#: The network predicts ``FLOW_SCALE * flows`` (Cellpose's convention).
FLOW_SCALE = 5.0

#: Cellpose runs ``2 * (bbox_rows + bbox_cols + 4)`` diffusion iterations per object.
HEAT_ITER_FACTOR = 2

_METHODS = ("heat", "fmm")


# ----------------------------------------------------------------------------- kernels
@numba.njit(cache=True, nogil=True, fastmath=False)
def _diffuse_object(labels, lab_id, r0, r1, c0, c1, cr, cc, n_iter):
    """Heat diffusion on one object's pixels in a bbox padded by one pixel.

    Returns the local heat field T of shape (r1 - r0 + 2, c1 - c0 + 2).
    Pixels outside the object stay 0 (absorbing boundary).
    """
    ly = r1 - r0 + 2
    lx = c1 - c0 + 2
    inside = np.zeros((ly, lx), np.float64)
    for r in range(r0, r1):
        for c in range(c0, c1):
            if labels[r, c] == lab_id:
                inside[r - r0 + 1, c - c0 + 1] = 1.0
    t_old = np.zeros((ly, lx), np.float64)
    t_new = np.zeros((ly, lx), np.float64)
    yc = cr - r0 + 1
    xc = cc - c0 + 1
    ninth = 1.0 / 9.0
    for _ in range(n_iter):
        t_old[yc, xc] += 1.0
        for y in range(1, ly - 1):
            for x in range(1, lx - 1):
                s = (
                    t_old[y, x] + t_old[y - 1, x] + t_old[y + 1, x]
                    + t_old[y, x - 1] + t_old[y, x + 1]
                    + t_old[y - 1, x - 1] + t_old[y - 1, x + 1]
                    + t_old[y + 1, x - 1] + t_old[y + 1, x + 1]
                )
                t_new[y, x] = inside[y, x] * (ninth * s)
        t_old, t_new = t_new, t_old
    return t_old, inside


@numba.njit(cache=True, nogil=True)
def _heat_flows_one(labels, ids, boxes, centers, n_iter, flows, heat, k):
    """Flows (and heat) of object ``k``, written into ``flows`` and ``heat``."""
    r0, r1, c0, c1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
    niter = n_iter
    if niter <= 0:  # Cellpose's default: 2 * (ly + lx) of the padded box
        niter = HEAT_ITER_FACTOR * ((r1 - r0 + 2) + (c1 - c0 + 2))
    t, inside = _diffuse_object(labels, ids[k], r0, r1, c0, c1, centers[k, 0], centers[k, 1], niter)
    for y in range(1, r1 - r0 + 1):
        for x in range(1, c1 - c0 + 1):
            if inside[y, x] > 0:
                dy = t[y + 1, x] - t[y - 1, x]
                dx = t[y, x + 1] - t[y, x - 1]
                norm = 1e-60 + np.sqrt(dy * dy + dx * dx)
                flows[0, r0 + y - 1, c0 + x - 1] = dy / norm
                flows[1, r0 + y - 1, c0 + x - 1] = dx / norm
                heat[r0 + y - 1, c0 + x - 1] = t[y, x]


@numba.njit(cache=True, nogil=True)
def _heat_flows_serial(labels, ids, boxes, centers, n_iter, flows, heat):
    for k in range(ids.shape[0]):
        _heat_flows_one(labels, ids, boxes, centers, n_iter, flows, heat, k)


@numba.njit(cache=True, parallel=True)
def _heat_flows_parallel(labels, ids, boxes, centers, n_iter, flows, heat):
    for k in numba.prange(ids.shape[0]):
        _heat_flows_one(labels, ids, boxes, centers, n_iter, flows, heat, k)


#: Work (pixel updates) above which the kernels run on all numba threads.  Small
#: jobs stay on one thread: a parallel launch costs more than it saves on them,
#: and far more when another process holds the other cores.
PARALLEL_MIN_WORK = 50_000_000


def _heat_flows_kernel(labels, ids, boxes, centers, n_iter, flows, heat):
    """Run the diffusion of every object, in parallel when the work is large."""
    sides = (boxes[:, 1] - boxes[:, 0] + 2) + (boxes[:, 3] - boxes[:, 2] + 2)
    area = (boxes[:, 1] - boxes[:, 0] + 2) * (boxes[:, 3] - boxes[:, 2] + 2)
    iters = HEAT_ITER_FACTOR * sides if n_iter <= 0 else n_iter
    work = int((area * iters).sum())
    kernel = _heat_flows_parallel if work >= PARALLEL_MIN_WORK else _heat_flows_serial
    kernel(labels, ids, boxes, centers, n_iter, flows, heat)


# ----------------------------------------------------------------------------- public
def _heat(labels, n_iter):
    lab = check_labels(labels)
    flows = np.zeros((2,) + lab.shape, np.float64)
    heat = np.zeros(lab.shape, np.float64)
    work, work_ids, _, boxes = _object_table(lab)
    if len(work_ids):
        centers = _centers_kernel(work, work_ids, boxes)
        _heat_flows_kernel(work, work_ids, boxes, centers, int(n_iter or 0), flows, heat)
    return flows, heat


def heat_map(labels, *, n_iter=None):
    """The diffused heat of every object, before taking its gradient.

    Parameters
    ----------
    labels : ndarray (H, W) of int
    n_iter : int, optional
        Diffusion iterations per object.  Default: Cellpose's
        ``2 * (bbox_rows + bbox_cols + 4)``, per object.

    Returns
    -------
    ndarray (H, W) of float64
        Heat on object pixels, 0 on the background.

    Examples
    --------
    >>> lab = np.zeros((7, 7), int); lab[1:6, 1:6] = 1
    >>> h = heat_map(lab)
    >>> bool(h[3, 3] == h.max())
    True
    """
    return _heat(labels, n_iter)[1]


def masks_to_flows(labels, *, method="heat", n_iter=None):
    """Turn a label image into unit flows pointing at each object's centre.

    Parameters
    ----------
    labels : ndarray (H, W) or (Z, Y, X) of int
        0 = background, other values = objects (any integer dtype, ids need
        not be sequential).  A volume goes to
        :func:`cellpose_nb.flows3d.masks_to_flows_3d` (heat only).
    method : {"heat", "fmm"}
        ``"heat"``: Cellpose's heat diffusion from the centre pixel.
        ``"fmm"``: normalised gradient of minus the geodesic distance from the
        centre pixel inside the object.
    n_iter : int, optional
        Diffusion iterations per object (``method="heat"`` only); default
        Cellpose's ``2 * (bbox_rows + bbox_cols + 4)``.

    Returns
    -------
    flows : ndarray (2, H, W) of float32
        (d_row, d_col), unit length on object pixels, 0 on the background;
        (3, Z, Y, X), ordered (d_z, d_row, d_col), for a volume.

    Examples
    --------
    >>> lab = np.zeros((9, 9), np.uint16); lab[2:7, 2:7] = 5
    >>> f = masks_to_flows(lab)
    >>> f.shape, f.dtype
    ((2, 9, 9), dtype('float32'))
    >>> (f[:, 2, 4].round(3) + 0.0).tolist()   # top edge of the square points down
    [1.0, 0.0]
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    if n_iter is not None and (int(n_iter) != n_iter or n_iter < 1):
        raise ValueError(f"n_iter must be a positive integer or None; got {n_iter!r}")
    if np.ndim(labels) == 3:  # a volume: Cellpose's 3D diffusion
        if method == "fmm":
            raise ValueError(f"method='fmm' supports 2-D labels only; got labels of shape "
                             f"{np.shape(labels)} (use method='heat' for a volume)")
        return masks_to_flows_3d(labels, n_iter=n_iter)
    if method == "fmm":
        return fmm_flows(labels)
    return _heat(labels, n_iter)[0].astype(np.float32)


def flows_to_rgb(flows, *, mask=None):
    """Colour a flow field: angle -> hue, magnitude -> brightness.

    Parameters
    ----------
    flows : ndarray (2, H, W)
        (d_row, d_col) at any scale; the magnitude is clipped to 1.
    mask : ndarray (H, W) of bool, optional
        Pixels to colour; others are black.  Default: where the flow is non-zero.

    Returns
    -------
    ndarray (H, W, 3) of float32 in [0, 1]

    Examples
    --------
    >>> float(flows_to_rgb(np.zeros((2, 4, 4), np.float32)).max())
    0.0
    """
    f = np.asarray(flows, dtype=np.float64)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flows must have shape (2, H, W); got {f.shape}")
    mag = np.clip(np.hypot(f[0], f[1]), 0.0, 1.0)
    h6 = 6.0 * (np.arctan2(f[0], f[1]) + np.pi) / (2 * np.pi)
    # HSV -> RGB at full saturation, value = magnitude (no matplotlib in this layer)
    rgb = np.stack(
        [mag * (1.0 - np.clip(np.minimum((n + h6) % 6, 4 - (n + h6) % 6), 0, 1)) for n in (5, 3, 1)],
        axis=-1,
    )
    if mask is not None:
        rgb *= np.asarray(mask, bool)[..., None]
    return rgb.astype(np.float32)

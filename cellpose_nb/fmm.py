"""Geodesic-distance flows (``masks_to_flows(..., method="fmm")``).

The slides of the Cellpose method describe the centre-out field as a distance
computed with a fast-marching method.  Here the geodesic distance from the
centre pixel, travelling only through the object's own pixels, is computed
by scikit-image's minimum-cost-path solver (:class:`skimage.graph.MCP_Geometric`,
8-connected, unit cost), and the flow is the normalised gradient of minus
that distance, so it points toward the centre.
"""

from __future__ import annotations

import numpy as np
from skimage.graph import MCP_Geometric

from cellpose_nb.labels import _centers_kernel, _object_table, check_labels

__all__ = ["fmm_flows", "geodesic_distance"]


def fmm_flows(labels):
    """Unit flows from geodesic distances: ``masks_to_flows(labels, method="fmm")``.

    Parameters
    ----------
    labels : ndarray (H, W) of int

    Returns
    -------
    flows : ndarray (2, H, W) of float32
        (d_row, d_col), unit length on object pixels, 0 on the background.

    Examples
    --------
    >>> lab = np.zeros((5, 7), np.int32); lab[2, 1:6] = 1
    >>> (fmm_flows(lab)[1, 2] + 0.0).tolist()   # a row of pixels points at its middle
    [0.0, 1.0, 1.0, 0.0, -1.0, -1.0, 0.0]
    """
    labels = check_labels(labels)
    flows = np.zeros((2,) + labels.shape, np.float32)
    work, work_ids, _, boxes = _object_table(labels)
    if not len(work_ids):
        return flows
    centers = _centers_kernel(work, work_ids, boxes)
    for lab_id, (r0, r1, c0, c1), (cr, cc) in zip(work_ids, boxes, centers):
        # pad by one so that every object pixel has 8 neighbours in the crop
        inside = np.pad(work[r0:r1, c0:c1] == lab_id, 1)
        dist = geodesic_distance(inside, (cr - r0 + 1, cc - c0 + 1))
        d_row, d_col = _inside_gradient(dist, inside)
        norm = np.hypot(d_row, d_col)
        norm[norm == 0] = 1.0
        sel = inside[1:-1, 1:-1]
        flows[0, r0:r1, c0:c1][sel] = (-d_row / norm)[1:-1, 1:-1][sel]
        flows[1, r0:r1, c0:c1][sel] = (-d_col / norm)[1:-1, 1:-1][sel]
    return flows


def geodesic_distance(inside, start):
    """Geodesic (8-connected) distance from ``start`` within the pixels ``inside``.

    Parameters
    ----------
    inside : ndarray (H, W) of bool
    start : (row, col)

    Returns
    -------
    ndarray (H, W) of float64, ``inf`` outside.

    Examples
    --------
    >>> m = np.ones((1, 4), bool)
    >>> geodesic_distance(m, (0, 0)).tolist()
    [[0.0, 1.0, 2.0, 3.0]]
    """
    costs = np.where(inside, 1.0, np.inf)
    mcp = MCP_Geometric(costs, fully_connected=True)
    dist, _ = mcp.find_costs([tuple(int(v) for v in start)])
    return np.where(inside, dist, np.inf)


def _inside_gradient(dist, inside):
    """Central differences using only neighbours inside the object (one-sided at edges)."""
    grads = []
    for axis in (0, 1):
        fwd_ok = np.roll(inside, -1, axis) & inside
        bwd_ok = np.roll(inside, 1, axis) & inside
        d = np.where(inside, dist, 0.0)
        fwd = np.where(fwd_ok, np.roll(d, -1, axis) - d, 0.0)
        bwd = np.where(bwd_ok, d - np.roll(d, 1, axis), 0.0)
        both = fwd_ok & bwd_ok
        g = np.where(both, 0.5 * (fwd + bwd), fwd + bwd)
        grads.append(g)
    return grads

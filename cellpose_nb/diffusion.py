"""Heat diffusion from one cell's centre, step by step (notebook 02).

:func:`simulate_diffusion` keeps snapshots of the iteration that
:func:`cellpose_nb.flows.heat_map` runs compiled; :func:`heat_gradient` turns
a snapshot into the normalised gradient that becomes the cell's flows.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellpose_nb.flows import HEAT_ITER_FACTOR, check_labels, object_centers

__all__ = ["simulate_diffusion", "heat_gradient"]


def simulate_diffusion(labels, cell_id, *, n_iter=None, every=1):
    """Heat diffusion from one cell's centre, step by step, in plain NumPy.

    The same iteration as :func:`cellpose_nb.flows.heat_map` (Cellpose's): add
    1 at the centre pixel, replace every pixel by the mean of its 3x3
    neighbourhood, zero the pixels outside the cell; repeat.

    Parameters
    ----------
    labels : ndarray (H, W) of int
    cell_id : int
    n_iter : int, optional
        Default Cellpose's ``2 * (bbox_rows + bbox_cols + 4)``.
    every : int
        Keep a snapshot every ``every`` iterations (and always the last).

    Returns
    -------
    iterations : ndarray (K,) of int
        Iteration count of each snapshot (0 = before any step).
    heat : ndarray (K, h, w) of float64
        The heat in the cell's bounding box padded by one pixel.
    box : (int, int, int, int)
        (r0, r1, c0, c1) of the unpadded bounding box.
    center : (int, int)
        The centre pixel (row, col).

    Examples
    --------
    >>> lab = np.zeros((7, 7), int); lab[1:6, 1:6] = 3
    >>> its, heat, box, center = simulate_diffusion(lab, 3, n_iter=4)
    >>> its.tolist(), heat.shape, box, center
    ([0, 1, 2, 3, 4], (5, 7, 7), (1, 6, 1, 6), (3, 3))
    """
    lab = check_labels(labels)
    mask = lab == cell_id
    if not mask.any():
        raise ValueError(f"cell_id={cell_id} is not in labels")
    sl = ndi.find_objects(mask.astype(np.int32))[0]
    r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    _, centers = object_centers(mask.astype(np.int32))
    cr, cc = (int(v) for v in centers[0])
    ly, lx = r1 - r0 + 2, c1 - c0 + 2
    if n_iter is None:
        n_iter = HEAT_ITER_FACTOR * (ly + lx)
    inside = np.zeros((ly, lx))
    inside[1:-1, 1:-1] = mask[r0:r1, c0:c1]
    t = np.zeros((ly, lx))
    yc, xc = cr - r0 + 1, cc - c0 + 1
    keep = sorted(set(range(0, n_iter + 1, max(1, int(every)))) | {n_iter})
    snaps = [t.copy()] if keep[0] == 0 else []
    for it in range(1, n_iter + 1):
        t[yc, xc] += 1.0
        c = t[1:-1, 1:-1]
        # the same order of additions as the compiled kernel
        s = (c + t[:-2, 1:-1] + t[2:, 1:-1] + t[1:-1, :-2] + t[1:-1, 2:]
             + t[:-2, :-2] + t[:-2, 2:] + t[2:, :-2] + t[2:, 2:])
        new = np.zeros_like(t)
        new[1:-1, 1:-1] = inside[1:-1, 1:-1] * ((1.0 / 9.0) * s)
        t = new
        if it in keep:
            snaps.append(t.copy())
    return np.array(keep), np.stack(snaps), (r0, r1, c0, c1), (cr, cc)


def heat_gradient(heat):
    """Normalised central-difference gradient (d_row, d_col) of a padded heat box.

    Zero on the one-pixel border and where the heat is zero.

    Examples
    --------
    >>> h = np.zeros((5, 5)); h[2, 1:4] = [1.0, 2.0, 1.0]
    >>> heat_gradient(h)[:, 2, 1].tolist()
    [0.0, 1.0]
    """
    g = np.zeros((2,) + heat.shape)
    g[0, 1:-1, 1:-1] = heat[2:, 1:-1] - heat[:-2, 1:-1]
    g[1, 1:-1, 1:-1] = heat[1:-1, 2:] - heat[1:-1, :-2]
    g *= heat > 0
    return g / (1e-60 + np.hypot(g[0], g[1]))

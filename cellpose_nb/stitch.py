"""Stitching 2D masks across the slices of a volume by IoU (Cellpose's ``stitch_threshold``).

The alternative to 3D dynamics: segment every YX slice in 2D, then link the
masks of consecutive slices.  :func:`stitch_slices` follows
``cellpose.utils.stitch3D`` (3.1.1.2): going down the slices, each mask of a
slice takes the label of the previous slice's mask it overlaps best, if that
IoU is at least ``stitch_threshold`` and the previous mask has no better
partner in this slice; otherwise it gets a new label.

Empty slices are handled: a slice without masks links nothing, and the masks
after it get new labels.  (Cellpose's ``stitch3D`` forgets its label count
after an empty slice that comes before any stitching, so the masks of a
later slice can reuse labels of earlier, unrelated cells.)  Where Cellpose
is right, the two agree label for label.
"""

from __future__ import annotations

import numpy as np

from cellpose_nb.labels import check_labels

__all__ = ["STITCH_THRESHOLD", "stitch_slices", "slice_links"]

#: Minimum IoU for a mask to continue the previous slice's mask (Cellpose's default).
STITCH_THRESHOLD = 0.25


def slice_links(current, previous, *, stitch_threshold=STITCH_THRESHOLD):
    """Which mask of ``previous`` each mask of ``current`` continues, by IoU.

    Parameters
    ----------
    current, previous : ndarray (Y, X) of int
        Two consecutive slices' labels (0 = background).
    stitch_threshold : float
        Minimum IoU of a link.

    Returns
    -------
    cur_ids, prev_ids : ndarray (K,) of int64
        Mask ``cur_ids[k]`` of ``current`` continues mask ``prev_ids[k]`` of
        ``previous``.  A previous mask links only to the current masks that
        overlap it best; a current mask takes the best of those links (the
        smallest previous id on a tie), as ``cellpose.utils.stitch3D``.

    Examples
    --------
    >>> prev = np.array([[1, 1, 0, 2, 2]]); cur = np.array([[5, 5, 5, 0, 3]])
    >>> [a.tolist() for a in slice_links(cur, prev)]
    [[3, 5], [2, 1]]
    """
    c = np.asarray(current).ravel()
    p = np.asarray(previous).ravel()
    both = (c > 0) & (p > 0)
    if not both.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs, inter = np.unique(np.stack([c[both], p[both]]).astype(np.int64), axis=1, return_counts=True)
    cid, pid = pairs
    cur_ids, cur_area = np.unique(c[c > 0], return_counts=True)
    prev_ids, prev_area = np.unique(p[p > 0], return_counts=True)
    ac = cur_area[np.searchsorted(cur_ids, cid)]
    ap = prev_area[np.searchsorted(prev_ids, pid)]
    iou = inter / (ac + ap - inter)
    iou[iou < stitch_threshold] = 0.0
    # each previous mask keeps only its best partners in this slice
    best_of_prev = np.zeros(len(prev_ids))
    np.maximum.at(best_of_prev, np.searchsorted(prev_ids, pid), iou)
    iou[iou < best_of_prev[np.searchsorted(prev_ids, pid)]] = 0.0
    ok = iou > 0
    cid, pid, iou = cid[ok], pid[ok], iou[ok]
    # each current mask: the highest IoU, the smallest previous id on a tie
    order = np.lexsort((pid, -iou, cid))
    cid, pid = cid[order], pid[order]
    first = np.ones(len(cid), bool)
    first[1:] = cid[1:] != cid[:-1]
    return cid[first], pid[first]


def stitch_slices(masks_zyx, stitch_threshold=STITCH_THRESHOLD):
    """Link the 2D masks of consecutive slices into 3D labels by IoU.

    Parameters
    ----------
    masks_zyx : ndarray (Z, Y, X) of int, or a sequence of (Y, X) arrays
        Each slice's 2D labels (0 = background; ids of different slices are
        unrelated).
    stitch_threshold : float
        Minimum IoU, in [0, 1], for a mask to continue the previous slice's mask.

    Returns
    -------
    labels : ndarray (Z, Y, X) of int32 (int64 if the labels need it)
        The first slice with masks keeps its ids; every later mask takes the
        label it continues or a new one (the running maximum + 1, in
        ascending order of its slice id).  The input is not changed.

    Examples
    --------
    >>> a = np.zeros((3, 4, 4), int); a[0, :2] = 1; a[1, :2] = 2; a[1, 3] = 1; a[2, 3] = 1
    >>> out = stitch_slices(a)
    >>> out[:, 0, 0].tolist(), out[:, 3, 0].tolist()
    ([1, 1, 0], [0, 2, 2])
    """
    if not np.isscalar(stitch_threshold) or not 0.0 <= float(stitch_threshold) <= 1.0:
        raise ValueError(f"stitch_threshold must be a number in [0, 1]; got {stitch_threshold!r}")
    if isinstance(masks_zyx, (list, tuple)):
        shapes = {np.shape(m) for m in masks_zyx}
        if len(shapes) > 1:
            raise ValueError(f"all slices must have the same shape; got {sorted(shapes)}")
        masks_zyx = np.stack(masks_zyx) if len(masks_zyx) else np.zeros((0, 0, 0), np.int32)
    lab = check_labels(masks_zyx, name="masks_zyx", ndim=3)
    out = np.zeros(lab.shape, np.int64)
    top = 0  # the largest label used so far (0: no masks seen yet)
    for z in range(lab.shape[0]):
        cur = lab[z]
        n = int(cur.max()) if cur.size else 0
        if n == 0:
            continue
        if top == 0:  # the first slice with masks keeps its ids
            out[z] = cur
            top = n
            continue
        table = np.zeros(n + 1, np.int64)
        cur_ids, prev_ids = slice_links(cur, out[z - 1], stitch_threshold=stitch_threshold)
        table[cur_ids] = prev_ids
        present = np.unique(cur[cur > 0])
        new = present[table[present] == 0]
        table[new] = np.arange(top + 1, top + 1 + len(new))
        top += len(new)
        out[z] = table[cur]
    return out.astype(np.int32) if top < np.iinfo(np.int32).max else out

"""How well block-wise masks kept the cells whole: cells that cross block faces, and splits.

Stitching is judged on the true cells that a block face (a line in 2-D) cuts:
:func:`crossing_labels` finds them from the true labels and the block size,
:func:`split_labels` says which of them came out in two or more predicted
pieces, a piece being a predicted label that holds at least ``SPLIT_SHARE``
of the true cell (so a few stray pixels of a neighbour are not a piece).
:func:`merged_labels` counts the other error, predicted labels over two or
more true cells.  Used by the tests, the benchmarks and notebook 10.

Pure NumPy: no dask.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SPLIT_SHARE", "crossing_labels", "merged_labels", "split_labels"]

#: a predicted label holding at least this share of a true cell is a piece of it
SPLIT_SHARE = 0.2


def crossing_labels(labels, block_size) -> list[int]:
    """The labels with pixels on both sides of a face of a grid of ``block_size`` blocks.

    Parameters
    ----------
    labels : ndarray (H, W) or (Z, H, W) of int
        True labels of the whole image or volume.
    block_size : int or tuple of int
        Core side(s) of the block grid (faces at its multiples along each axis).

    Examples
    --------
    >>> lab = np.zeros((4, 8), int); lab[1, 2:6] = 1; lab[2, 0:3] = 2
    >>> crossing_labels(lab, 4)
    [1]
    """
    labels = np.asarray(labels)
    sizes = np.broadcast_to(block_size, labels.ndim)
    out = set()
    for axis, size in enumerate(sizes):
        for face in range(int(size), labels.shape[axis], int(size)):
            a, b = np.take(labels, face - 1, axis), np.take(labels, face, axis)
            out |= set(a[(a == b) & (a > 0)].tolist())
    return sorted(int(v) for v in out)


def _shares(first, second):
    """(first-label, second-label) pairs that overlap, and each pair's share of the first label."""
    f, s = np.asarray(first).ravel(), np.asarray(second).ravel()
    both = (f > 0) & (s > 0)
    pairs, counts = np.unique(np.stack([f[both], s[both]]), axis=1, return_counts=True)
    return pairs, counts / np.bincount(f)[pairs[0]]


def split_labels(true, pred, labels=None, *, share=SPLIT_SHARE) -> list[int]:
    """The true labels (of ``labels``, default all) that two or more predicted labels
    each hold at least ``share`` of.

    Examples
    --------
    >>> true = np.array([[1, 1, 1, 1, 2, 2]]); pred = np.array([[5, 5, 6, 6, 7, 7]])
    >>> split_labels(true, pred), split_labels(true, pred, [2])
    ([1], [])
    """
    true, pred = np.asarray(true), np.asarray(pred)
    if labels is not None:  # only the pixels of those cells (a large image has many others)
        keep = np.isin(true, np.asarray(list(labels), dtype=true.dtype))
        true, pred = true[keep], pred[keep]
    pairs, frac = _shares(true, pred)
    ids, n = np.unique(pairs[0][frac >= share], return_counts=True)
    return [int(v) for v in ids[n > 1]]


def merged_labels(true, pred, *, share=SPLIT_SHARE) -> list[int]:
    """The predicted labels that hold at least ``share`` of each of two or more true cells.

    Examples
    --------
    >>> merged_labels(np.array([[1, 1, 2, 2, 3]]), np.array([[4, 4, 4, 4, 5]]))
    [4]
    """
    pairs, frac = _shares(true, pred)
    ids, n = np.unique(pairs[1][frac >= share], return_counts=True)
    return [int(v) for v in ids[n > 1]]

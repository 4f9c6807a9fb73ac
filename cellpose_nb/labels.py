"""Label images: validation, renumbering, the per-object table and object centres.

Every module that takes ``labels`` (integer (H, W), 0 = background, 1..N =
one object each) checks them with :func:`check_labels`; the table of objects
and their centre pixels are shared by the heat-diffusion and geodesic flows.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential

__all__ = ["LabelDtypeError", "check_labels", "renumber", "object_centers"]

#: Labels whose maximum exceeds this many times the pixel count are relabelled
#: before per-object work, so that sparse huge ids do not allocate huge tables.
_SPARSE_LABEL_FACTOR = 4


class LabelDtypeError(TypeError, ValueError):
    """Labels that are not an integer array.

    A :class:`TypeError` for arrays handed to the library, and also a
    :class:`ValueError`, which is what the file readers raise for a file that
    holds no valid labels (as :class:`numpy.exceptions.AxisError` is both a
    ValueError and an IndexError).
    """


# ----------------------------------------------------------------------------- checks
def check_labels(labels, *, name="labels", source=None, keep_dtype=False, ndim=2):
    """Validate a label image and return it as a C-contiguous int array.

    Parameters
    ----------
    labels : ndarray (H, W)
        Integer labels, 0 = background.  Any signed or unsigned integer dtype;
        ids need not be sequential.
    name : str
        What to call the array in error messages.
    source : str or pathlib.Path, optional
        Where the labels came from (a file); named in error messages.
    keep_dtype : bool
        Return the array as given (validated only), e.g. to keep a file's dtype.
    ndim : {2, 3}
        The dimensionality expected: 2 for (H, W) images, 3 for (Z, Y, X) volumes.

    Returns
    -------
    ndarray (H, W)
        The same values, C-contiguous, as int32 or int64 (as given with
        ``keep_dtype``).

    Raises
    ------
    LabelDtypeError
        A TypeError (and ValueError) if ``labels`` is not an integer array
        (bool included: use ``skimage.measure.label`` to turn a binary mask
        into labels).
    ValueError
        If ``labels`` is not ``ndim``-D or holds negative values.

    Examples
    --------
    >>> check_labels(np.array([[0, 3], [3, 7]], np.uint8)).dtype
    dtype('int32')
    >>> check_labels(np.array([[0, 3]], np.uint16), keep_dtype=True).dtype
    dtype('uint16')
    """
    arr = np.asarray(labels)
    what = name if source is None else f"{name} in {source}"
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        hint = ("for a binary mask use skimage.measure.label(mask) first" if arr.dtype == bool
                else "if the values are whole numbers, cast with labels.astype(np.int32)")
        raise LabelDtypeError(
            f"{what} must be an integer array (0 = background, 1..N = objects); got dtype "
            f"{arr.dtype} ({hint})"
        )
    if arr.ndim != ndim:
        axes = "(H, W)" if ndim == 2 else "(Z, Y, X)"
        raise ValueError(f"{what} must be {ndim}-D {axes}; got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} must be >= 0 (no negative values); found minimum {arr.min()}")
    if keep_dtype:
        return arr
    big = arr.size and int(arr.max()) >= np.iinfo(np.int32).max
    return np.ascontiguousarray(arr, dtype=np.int64 if big else np.int32)


# ----------------------------------------------------------------------------- renumbering
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
    if int(lab.max()) > _SPARSE_LABEL_FACTOR * lab.size:  # sparse huge ids: compact them first
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


def _fill_holes_and_drop_small(labels, min_size):
    """Masks smaller than ``min_size`` removed, each mask's holes filled (a hole takes
    the label of the mask around it), masks still too small removed; not renumbered.
    Any dimensionality: what :func:`cellpose_nb.masks.fill_holes_and_remove_small_masks`
    and its 3D twin share."""
    out = _drop_small(labels, min_size)
    for i, sl in enumerate(ndi.find_objects(out)):
        if sl is not None:
            filled = ndi.binary_fill_holes(out[sl] == i + 1)
            out[sl][filled] = i + 1
    return _drop_small(out, min_size)


def _drop_small(labels, min_size):
    """A copy of ``labels`` without the objects of fewer than ``min_size`` pixels."""
    out = labels.copy()
    if min_size > 0 and out.size:
        counts = np.bincount(out.ravel())
        small = np.nonzero(counts < min_size)[0]
        small = small[small > 0]
        if len(small):
            out[np.isin(out, small)] = 0
    return out


# ----------------------------------------------------------------------------- objects
def _object_table(labels):
    """Objects present in ``labels``.

    Returns ``(work, work_ids, ids, boxes)``: a label image to run kernels on,
    the ids of the objects in it, their ids in ``labels``, and their bounding
    boxes (N, 2 * ndim: r0, r1, c0, c1 for an image, z0, z1, r0, r1, c0, c1 for
    a volume).  ``work`` is ``labels`` itself unless the ids are so sparse that
    per-id tables would be huge; then it is relabelled 1..N.
    """
    work, ids = labels, None
    if labels.size and int(labels.max()) > _SPARSE_LABEL_FACTOR * labels.size:
        work, _, inverse = relabel_sequential(labels)
        ids = inverse.out_values[inverse.in_values > 0]
    slices = ndi.find_objects(work) if work.size else []
    present = [k for k, s in enumerate(slices) if s is not None]
    work_ids = np.array(present, dtype=np.int64) + 1
    boxes = np.array([[b for s in slices[k] for b in (s.start, s.stop)] for k in present],
                     dtype=np.int64).reshape(-1, 2 * labels.ndim)
    return work, work_ids, (work_ids if ids is None else ids.astype(np.int64)), boxes


@numba.njit(cache=True, nogil=True)
def _center_of(labels, lab_id, r0, r1, c0, c1):
    """Pixel of the object nearest its mean (first such pixel in raster order)."""
    sr = 0.0
    sc = 0.0
    n = 0
    for r in range(r0, r1):
        for c in range(c0, c1):
            if labels[r, c] == lab_id:
                sr += r
                sc += c
                n += 1
    mr = sr / n
    mc = sc / n
    best = np.inf
    br = r0
    bc = c0
    for r in range(r0, r1):
        for c in range(c0, c1):
            if labels[r, c] == lab_id:
                d = (r - mr) ** 2 + (c - mc) ** 2
                if d < best:
                    best = d
                    br = r
                    bc = c
    return br, bc


@numba.njit(cache=True, nogil=True)
def _centers_kernel(labels, ids, boxes):
    n = ids.shape[0]
    out = np.zeros((n, 2), np.int64)
    for k in range(n):
        r, c = _center_of(labels, ids[k], boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3])
        out[k, 0] = r
        out[k, 1] = c
    return out


def object_centers(labels):
    """Centre pixel of every object: the object pixel nearest its mean.

    This is the pixel from which heat is diffused (Cellpose's definition).

    Parameters
    ----------
    labels : ndarray (H, W) of int

    Returns
    -------
    ids : ndarray (N,) of int64
        The object ids present, ascending.
    centers : ndarray (N, 2) of int64
        (row, col) of each object's centre pixel.

    Examples
    --------
    >>> lab = np.zeros((5, 5), int); lab[1:4, 1:4] = 2
    >>> ids, centers = object_centers(lab)
    >>> ids.tolist(), centers.tolist()
    ([2], [[2, 2]])
    """
    work, work_ids, ids, boxes = _object_table(check_labels(labels))
    return ids, _centers_kernel(work, work_ids, boxes)

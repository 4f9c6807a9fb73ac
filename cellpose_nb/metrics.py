"""Matching predicted objects to true ones, and average precision.

A predicted object and a true object *match* at IoU threshold ``t`` when
they are paired by a one-to-one assignment (Hungarian algorithm, as Cellpose
does) and their intersection over union is at least ``t``.  Then

* ``tp`` = matched pairs, ``fp`` = unmatched predictions, ``fn`` = unmatched truths,
* ``ap = tp / (tp + fp + fn)`` (Cellpose's and the DSB's "average precision"),
* ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``, ``f1``.

Overlaps are counted sparsely (one ``bincount`` over pixel pairs), so
images with thousands of objects cost no more than one pass over the pixels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cellpose_nb.labels import check_labels

__all__ = ["Matching", "matching", "average_precision", "matching_dataset", "iou_matrix"]

#: IoU thresholds reported by default.
THRESHOLDS = (0.5, 0.75, 0.9)


class Matching(NamedTuple):
    """Matching of one image (or a dataset) at one IoU threshold."""

    threshold: float  #: IoU threshold
    tp: int  #: matched pairs with IoU >= threshold
    fp: int  #: predicted objects left unmatched
    fn: int  #: true objects left unmatched
    precision: float  #: tp / (tp + fp), 0 when nothing was predicted
    recall: float  #: tp / (tp + fn), 0 when there is no truth
    f1: float  #: 2 tp / (2 tp + fp + fn)
    ap: float  #: tp / (tp + fp + fn); NaN when there is neither truth nor prediction
    mean_matched_iou: float  #: mean IoU of the matched pairs (NaN when none)
    n_true: int  #: number of true objects
    n_pred: int  #: number of predicted objects


def _compact(flat):
    """Object ids present (ascending, 0 excluded) and each pixel's index into them (-1 = bg)."""
    if flat.size and int(flat.max()) <= 4 * flat.size + 1024:
        present = np.bincount(flat) > 0
        present[0] = False
        ids = np.nonzero(present)[0]
        lut = np.full(len(present), -1, np.int64)
        lut[ids] = np.arange(len(ids))
        return ids.astype(np.int64), lut[flat]
    ids, inv = np.unique(flat, return_inverse=True)
    inv = inv.ravel().astype(np.int64)
    if len(ids) and ids[0] == 0:
        return ids[1:].astype(np.int64), inv - 1
    return ids.astype(np.int64), inv


class _Overlaps(NamedTuple):
    """Sparse IoU of every overlapping (true, pred) pair."""

    rows: np.ndarray  # index into true_ids
    cols: np.ndarray  # index into pred_ids
    iou: np.ndarray
    true_ids: np.ndarray
    pred_ids: np.ndarray


def _overlaps(true, pred):
    t = check_labels(true, name="true")
    p = check_labels(pred, name="pred")
    if t.shape != p.shape:
        raise ValueError(f"true and pred must have the same shape; got {t.shape} and {p.shape}")
    true_ids, ti = _compact(t.ravel())
    pred_ids, pi = _compact(p.ravel())
    area_t = np.bincount(ti[ti >= 0], minlength=len(true_ids))
    area_p = np.bincount(pi[pi >= 0], minlength=len(pred_ids))
    both = (ti >= 0) & (pi >= 0)
    keys, inter = np.unique(ti[both] * max(len(pred_ids), 1) + pi[both], return_counts=True)
    rows, cols = np.divmod(keys, max(len(pred_ids), 1))
    iou = inter / (area_t[rows] + area_p[cols] - inter)
    return _Overlaps(rows, cols, iou, true_ids, pred_ids)


def iou_matrix(true, pred):
    """IoU of every (true object, predicted object) pair, as a dense matrix.

    Parameters
    ----------
    true, pred : ndarray (H, W) of int
        Label images of the same shape.  Ids need not be sequential.

    Returns
    -------
    iou : ndarray (n_true, n_pred) of float64
        Rows follow ``true_ids``, columns ``pred_ids``.
    true_ids, pred_ids : ndarray of int64
        The object ids present in each image, ascending.

    Examples
    --------
    >>> a = np.zeros((4, 4), int); a[:2] = 1
    >>> b = np.zeros((4, 4), int); b[:1] = 7
    >>> iou, t, p = iou_matrix(a, b)
    >>> iou.tolist(), t.tolist(), p.tolist()
    ([[0.5]], [1], [7])
    """
    ov = _overlaps(true, pred)
    iou = np.zeros((len(ov.true_ids), len(ov.pred_ids)))
    iou[ov.rows, ov.cols] = ov.iou
    return iou, ov.true_ids, ov.pred_ids


def _true_positives(ov, threshold):
    """IoUs of the pairs matched at ``threshold``.

    Cellpose solves one assignment over all objects with costs
    ``-(iou >= t) - iou / (2 n_min)``: that maximises the number of pairs
    above threshold, then their IoU.  Pairs above threshold form a sparse
    bipartite graph, and the assignment splits over its connected components,
    so each component is solved alone (above 0.5 each object has at most one
    partner, and there is nothing to solve).
    """
    sel = ov.iou >= threshold
    rows, cols, iou = ov.rows[sel], ov.cols[sel], ov.iou[sel]
    if len(iou) == 0 or (np.unique(rows).size == len(rows) and np.unique(cols).size == len(cols)):
        return iou
    n_t, n_p = len(ov.true_ids), len(ov.pred_ids)
    graph = coo_matrix((np.ones(len(rows)), (rows, n_t + cols)), shape=(n_t + n_p,) * 2)
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[rows]
    matched = []
    for c in np.unique(edge_comp):
        e = edge_comp == c
        r_ids, r = np.unique(rows[e], return_inverse=True)
        c_ids, k = np.unique(cols[e], return_inverse=True)
        sub = np.zeros((len(r_ids), len(c_ids)))
        sub[r, k] = iou[e]
        n_min = min(n_t, n_p)
        ri, ci = linear_sum_assignment(-(sub > 0).astype(float) - sub / (2 * n_min))
        got = sub[ri, ci]
        matched.append(got[got > 0])
    return np.concatenate(matched)


def _summary(threshold, tp, n_true, n_pred, matched_iou_sum):
    fp, fn = n_pred - tp, n_true - tp
    return Matching(
        threshold=float(threshold),
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        precision=float(tp / (tp + fp)) if tp + fp else 0.0,
        recall=float(tp / (tp + fn)) if tp + fn else 0.0,
        f1=float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0,
        ap=float(tp / (tp + fp + fn)) if tp + fp + fn else float("nan"),
        mean_matched_iou=float(matched_iou_sum / tp) if tp else float("nan"),
        n_true=int(n_true),
        n_pred=int(n_pred),
    )


def _check_thresholds(thresholds):
    th = np.atleast_1d(np.asarray(thresholds, dtype=float))
    if th.ndim != 1 or len(th) == 0 or not ((th >= 0) & (th <= 1)).all():
        raise ValueError(f"thresholds must be IoU values in [0, 1]; got {thresholds!r}")
    return th


def _counts(true, pred, thresholds):
    """Per-threshold (tp, matched IoU sum), and the object counts."""
    ov = _overlaps(true, pred)
    out = []
    for th in thresholds:
        ious = _true_positives(ov, th)
        out.append((len(ious), float(ious.sum())))
    return out, len(ov.true_ids), len(ov.pred_ids)


def matching(true, pred, *, thresholds=THRESHOLDS):
    """Match the objects of one image at each IoU threshold.

    Parameters
    ----------
    true, pred : ndarray (H, W) of int
        True and predicted labels (0 = background).
    thresholds : sequence of float
        IoU thresholds.

    Returns
    -------
    list of Matching
        One per threshold, in order.

    Examples
    --------
    >>> a = np.zeros((10, 10), int); a[:5] = 1; a[5:] = 2
    >>> b = a.copy(); b[5:] = 0
    >>> m = matching(a, b, thresholds=[0.5])[0]
    >>> m.tp, m.fp, m.fn, m.ap
    (1, 0, 1, 0.5)
    """
    th = _check_thresholds(thresholds)
    counts, n_true, n_pred = _counts(true, pred, th)
    return [_summary(t, tp, n_true, n_pred, s) for t, (tp, s) in zip(th, counts)]


def average_precision(true_list, pred_list, *, thresholds=THRESHOLDS):
    """AP of each image at each threshold, as ``cellpose.metrics.average_precision``.

    Parameters
    ----------
    true_list, pred_list : sequence of ndarray (H, W) of int
        Pairs of label images (a single pair of arrays is accepted too).
    thresholds : sequence of float

    Returns
    -------
    ndarray (n_images, n_thresholds) of float64
        ``tp / (tp + fp + fn)``; NaN for an image with neither true nor
        predicted objects (as Cellpose, where 0/0 is NaN).

    Notes
    -----
    Cellpose counts objects with ``labels.max()``; here the objects present
    are counted, so labels with gaps are not charged for ids that do not
    exist.  For sequential labels the two agree exactly.

    Examples
    --------
    >>> a = np.zeros((10, 10), int); a[:5] = 1; a[5:] = 2
    >>> average_precision([a, a], [a, np.zeros_like(a)], thresholds=[0.5]).tolist()
    [[1.0], [0.0]]
    """
    if isinstance(true_list, np.ndarray) and true_list.ndim == 2:
        true_list, pred_list = [true_list], [pred_list]
    if len(true_list) != len(pred_list):
        raise ValueError(
            f"true_list and pred_list must have the same length; got {len(true_list)} and {len(pred_list)}"
        )
    th = _check_thresholds(thresholds)
    ap = np.zeros((len(true_list), len(th)))
    for n, (t, p) in enumerate(zip(true_list, pred_list)):
        ap[n] = [m.ap for m in matching(t, p, thresholds=th)]
    return ap


def matching_dataset(true_list, pred_list, *, thresholds=THRESHOLDS):
    """Dataset-level matching: tp, fp and fn summed over images (StarDist's convention).

    Parameters
    ----------
    true_list, pred_list : sequence of ndarray (H, W) of int
    thresholds : sequence of float

    Returns
    -------
    list of Matching
        One per threshold; ``ap``, precision, recall and f1 come from the
        summed counts, ``mean_matched_iou`` is over all matched pairs.

    Examples
    --------
    >>> a = np.zeros((10, 10), int); a[:5] = 1; a[5:] = 2
    >>> m = matching_dataset([a, a], [a, np.zeros_like(a)], thresholds=[0.5])[0]
    >>> m.tp, m.fn, m.ap
    (2, 2, 0.5)
    """
    if len(true_list) != len(pred_list):
        raise ValueError(
            f"true_list and pred_list must have the same length; got {len(true_list)} and {len(pred_list)}"
        )
    th = _check_thresholds(thresholds)
    tp = np.zeros(len(th), np.int64)
    iou_sum = np.zeros(len(th))
    n_true = n_pred = 0
    for t, p in zip(true_list, pred_list):
        counts, nt, np_ = _counts(t, p, th)
        tp += [c[0] for c in counts]
        iou_sum += [c[1] for c in counts]
        n_true += nt
        n_pred += np_
    return [_summary(t, k, n_true, n_pred, s) for t, k, s in zip(th, tp, iou_sum)]

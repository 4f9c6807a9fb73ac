import numpy as np
import pytest
from scipy import ndimage as ndi

from cellpose_nb.masks import renumber
from cellpose_nb.metrics import average_precision, iou_matrix, matching, matching_dataset


def square(shape, r0, c0, side, value=1):
    out = np.zeros(shape, np.int32)
    out[r0 : r0 + side, c0 : c0 + side] = value
    return out


def test_iou_of_shifted_squares_is_analytic():
    a = square((50, 50), 10, 10, 20)
    b = square((50, 50), 10, 15, 20, value=4)  # shifted by 5 columns
    iou, t, p = iou_matrix(a, b)
    inter, union = 20 * 15, 2 * 400 - 20 * 15
    assert iou[0, 0] == pytest.approx(inter / union)
    assert (t.tolist(), p.tolist()) == ([1], [4])


def test_matching_counts_and_scores():
    true = square((40, 40), 0, 0, 10) + square((40, 40), 20, 20, 10, 2)
    pred = square((40, 40), 0, 1, 10, 5) + square((40, 40), 30, 0, 5, 6)  # one good, one false
    m50, m90 = matching(true, pred, thresholds=[0.5, 0.9])
    assert (m50.tp, m50.fp, m50.fn) == (1, 1, 1)
    assert m50.ap == pytest.approx(1 / 3) and m50.precision == 0.5 and m50.recall == 0.5
    assert m50.mean_matched_iou == pytest.approx(90 / 110)
    assert (m90.tp, m90.fp, m90.fn) == (0, 2, 2)


def test_empty_cases():
    e = np.zeros((8, 8), np.int32)
    one = square((8, 8), 1, 1, 3)
    assert np.isnan(matching(e, e)[0].ap)
    assert matching(one, e)[0].ap == 0 and matching(e, one)[0].ap == 0
    assert matching(one, one)[0].ap == 1


def test_hungarian_beats_greedy_at_low_threshold():
    # true A overlaps pred X best and pred Y a little less; true B overlaps only X.
    # greedy (best IoU first) pairs A-X and leaves B alone: 1 match at 0.3.
    # the one-to-one assignment pairs A-Y and B-X: 2 matches.
    true = np.zeros((10, 30), np.int32)
    pred = np.zeros((10, 30), np.int32)
    true[:, 0:10] = 1  # A
    true[:, 10:16] = 2  # B
    pred[:, 4:14] = 1  # X
    pred[:, 0:4] = 2  # Y
    iou, _, _ = iou_matrix(true, pred)
    assert iou[0, 0] > iou[0, 1] >= 0.3 and iou[1, 0] >= 0.3 and iou[1, 1] == 0
    assert matching(true, pred, thresholds=[0.3])[0].tp == 2


def test_dataset_summary_sums_counts():
    a = square((20, 20), 0, 0, 8) + square((20, 20), 10, 10, 8, 2)
    m = matching_dataset([a, a], [a, np.zeros_like(a)], thresholds=[0.5])[0]
    assert (m.tp, m.fp, m.fn, m.n_true, m.n_pred) == (2, 0, 2, 4, 2)
    assert m.ap == 0.5 and m.precision == 1.0 and m.recall == 0.5


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        matching(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="same length"):
        average_precision([np.zeros((4, 4), int)], [])
    with pytest.raises(ValueError, match="thresholds"):
        matching(np.zeros((4, 4), int), np.zeros((4, 4), int), thresholds=[1.5])
    with pytest.raises(TypeError, match="integer"):
        matching(np.zeros((4, 4)), np.zeros((4, 4), int))


def test_many_objects():
    # 10000 objects in a 1000x1000 grid; a one-pixel shift keeps IoU = 90/110
    lab = np.arange(1, 10001, dtype=np.int32).reshape(100, 100).repeat(10, 0).repeat(10, 1)
    shifted = np.roll(lab, 1, axis=1)
    m = matching(lab, shifted, thresholds=[0.5, 0.9])
    assert m[0].tp == 10000 and m[1].tp == 0


def perturbed(labels, rng):
    p = labels.copy()
    ids = np.unique(p)[1:]
    if len(ids):
        p[np.isin(p, rng.choice(ids, size=len(ids) // 5, replace=False))] = 0
    p = np.roll(p, int(rng.integers(-2, 3)), axis=0)
    p = ndi.grey_erosion(p, size=int(rng.integers(1, 4)))
    return renumber(p)


@pytest.mark.reference
def test_oracle_average_precision(cellpose_ref, dsb_labels):
    from cellpose.metrics import average_precision as ref_ap

    rng = np.random.default_rng(0)
    trues = [renumber(lab) for lab in dsb_labels[:30]]
    preds = [perturbed(t, rng) for t in trues]
    trues += [np.zeros((40, 40), np.int32), trues[0][:40, :40].copy()]
    preds += [renumber(trues[0][:40, :40]), np.zeros((40, 40), np.int32)]
    trues[-1] = renumber(trues[-1])
    th = [0.1, 0.5, 0.75, 0.9]
    ours = average_precision(trues, preds, thresholds=th)
    ap, tp, fp, fn = ref_ap(trues, preds, threshold=th)
    counts = np.array([[(m.tp, m.fp, m.fn) for m in matching(t, p, thresholds=th)]
                       for t, p in zip(trues, preds)])
    np.testing.assert_array_equal(counts[..., 0], tp)
    np.testing.assert_array_equal(counts[..., 1], fp)
    np.testing.assert_array_equal(counts[..., 2], fn)
    # cellpose divides in float32; from its own counts, in float64, the values agree to 1e-9
    tp64, fp64, fn64 = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    np.testing.assert_allclose(ours, tp64 / (tp64 + fp64 + fn64), atol=1e-9, rtol=0)
    np.testing.assert_allclose(ours, ap, atol=1e-6, rtol=0)

import numpy as np
import pytest

from cellpose_nb.data import make_synthetic_volume
from cellpose_nb.labels import renumber
from cellpose_nb.stitch import slice_links, stitch_slices


def per_slice(labels):
    """Each slice's labels renumbered 1..n on their own: what a 2D segmentation gives."""
    return np.stack([renumber(s) for s in labels])


@pytest.fixture(scope="module")
def volume():
    return make_synthetic_volume((24, 64, 64), n_cells=14, diameter=20, anisotropy=2.0, seed=2).labels


def test_stitching_per_slice_truth_recovers_the_cells(volume):
    for threshold, share in [(0.1, 0.999), (0.25, 0.98)]:
        out = stitch_slices(per_slice(volume), stitch_threshold=threshold)
        pairs, counts = np.unique(np.stack([out[out > 0], volume[out > 0]]), axis=1, return_counts=True)
        # no stitched object spans two cells...
        assert len(np.unique(pairs[0])) == pairs.shape[1]
        # ...and each cell's largest stitched piece holds nearly all of it (small caps,
        # whose IoU with the next slice is below the threshold, come off)
        largest = np.zeros(volume.max() + 1)
        np.maximum.at(largest, pairs[1], counts)
        assert largest.sum() >= share * (volume > 0).sum()


def test_known_answers():
    a = np.zeros((3, 6, 6), np.int32)
    a[0, :3, :3] = 1
    a[1, :3, :2] = 2  # IoU 6/9 with slice 0's mask 1: continues it
    a[1, 4:, 4:] = 1  # no overlap: a new label
    a[2, 4:, 5:] = 1  # IoU 2/4 with slice 1's second mask
    out = stitch_slices(a)
    assert out[:, 0, 0].tolist() == [1, 1, 0]
    assert out[1, 5, 5] == 2 and out[2, 5, 5] == 2
    assert stitch_slices(a, stitch_threshold=0.6)[2, 5, 5] == 3  # 0.5 < 0.6: a new label


def test_a_previous_mask_continues_only_into_its_best_partner():
    prev = np.zeros((1, 10), np.int32)
    prev[0, :6] = 1
    cur = np.zeros((1, 10), np.int32)
    cur[0, :4], cur[0, 4:6] = 1, 2  # both overlap mask 1; mask 1 of cur overlaps best
    cur_ids, prev_ids = slice_links(cur, prev)
    assert cur_ids.tolist() == [1] and prev_ids.tolist() == [1]
    out = stitch_slices(np.stack([prev, cur]))
    assert out[1, 0, 0] == 1 and out[1, 0, 4] == 2


def test_empty_slices_do_not_crash_nor_reuse_labels():
    a = np.zeros((5, 6, 6), np.int32)
    a[0, :3, :3], a[0, 4:, 4:] = 1, 2
    a[2, :3, :3] = 1  # after an empty slice: a new cell, not cell 1 again
    a[3, :3, :3] = 1
    out = stitch_slices(a)
    assert np.unique(out[0]).tolist() == [0, 1, 2]
    assert np.unique(out[2]).tolist() == [0, 3] and np.unique(out[3]).tolist() == [0, 3]
    assert not out[[1, 4]].any()
    assert not stitch_slices(np.zeros((3, 4, 4), np.int32)).any()
    assert stitch_slices(np.zeros((0, 4, 4), np.int32)).shape == (0, 4, 4)
    lead = stitch_slices(a[1:])  # leading empty slice: the first slice with masks keeps its ids
    assert np.unique(lead[1]).tolist() == [0, 1]


def test_input_is_not_changed_and_lists_are_accepted(volume):
    m = per_slice(volume)
    before = m.copy()
    out = stitch_slices(list(m))
    np.testing.assert_array_equal(m, before)
    np.testing.assert_array_equal(out, stitch_slices(m))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"3-D \(Z, Y, X\); got shape \(4, 4\)"):
        stitch_slices(np.zeros((4, 4), np.int32))
    with pytest.raises(TypeError, match="integer"):
        stitch_slices(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="stitch_threshold"):
        stitch_slices(np.zeros((2, 4, 4), np.int32), stitch_threshold=1.5)
    with pytest.raises(ValueError, match="same shape"):
        stitch_slices([np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32)])


@pytest.mark.reference
@pytest.mark.parametrize("threshold", [0.25, 0.5])
@pytest.mark.parametrize("lead", [0, 2], ids=["no-empty", "leading-empty"])
def test_agrees_with_cellpose_stitch3d(volume, threshold, lead):
    pytest.importorskip("cellpose")
    from cellpose.utils import stitch3D

    m = per_slice(volume)
    m = np.concatenate([np.zeros((lead,) + m.shape[1:], m.dtype), m[(m.max(axis=(1, 2)) > 0)]])
    theirs = stitch3D(m.copy(), stitch_threshold=threshold)
    np.testing.assert_array_equal(stitch_slices(m, stitch_threshold=threshold), theirs)


@pytest.mark.reference
def test_cellpose_stitch3d_reuses_labels_after_an_empty_slice():
    """The bug avoided here, shown on cellpose itself (so the test above is not vacuous)."""
    pytest.importorskip("cellpose")
    from cellpose.utils import stitch3D

    a = np.zeros((3, 6, 6), np.int32)
    a[0, :3, :3] = 1
    a[2, 4:, 4:] = 1  # an unrelated cell after an empty slice
    assert stitch3D(a.copy())[2, 5, 5] == 1  # cellpose: the same label as the first cell
    assert stitch_slices(a)[2, 5, 5] == 2

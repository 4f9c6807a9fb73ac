import numpy as np
import pytest

from cellpose_nb.data import make_synthetic_volume
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.flows3d import (
    heat_iterations_3d,
    heat_map_3d,
    masks_to_flows_3d,
    object_centers_3d,
)


@pytest.fixture(scope="module")
def volume():
    return make_synthetic_volume((24, 64, 64), n_cells=12, diameter=20, anisotropy=2.0, seed=3).labels


def heat_slow(labels, n_iter):
    """The 7-point Jacobi diffusion on the whole volume, in plain NumPy (the kernel's twin)."""
    lab = np.pad(labels, 1)
    ids = np.unique(lab[lab > 0])
    centres = {}
    for i in ids:
        pts = np.argwhere(lab == i)
        centres[i] = tuple(pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))])
    t = np.zeros(lab.shape)
    shifts = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    for _ in range(n_iter):
        for c in centres.values():
            t[c] += 1
        new = np.zeros_like(t)
        for s in shifts:  # neighbours in the same object only
            nb_t = np.roll(t, [-v for v in s], axis=(0, 1, 2))
            nb_l = np.roll(lab, [-v for v in s], axis=(0, 1, 2))
            new += np.where(nb_l == lab, nb_t, 0.0)
        t = np.where(lab > 0, new / 7.0, 0.0)
    g = np.stack([t[2:, 1:-1, 1:-1] - t[:-2, 1:-1, 1:-1], t[1:-1, 2:, 1:-1] - t[1:-1, :-2, 1:-1],
                  t[1:-1, 1:-1, 2:] - t[1:-1, 1:-1, :-2]])
    g = np.where(labels > 0, g, 0.0)
    return t[1:-1, 1:-1, 1:-1], g / (1e-60 + np.sqrt((g ** 2).sum(0)))


def touching_boxes():
    lab = np.zeros((7, 9, 12), np.int32)
    lab[1:6, 1:8, 1:6] = 1
    lab[2:6, 2:7, 6:11] = 2  # touches object 1 along x
    return lab


def test_heat_and_flows_match_the_slow_numpy_twin():
    lab = touching_boxes()
    n = heat_iterations_3d(np.array([[1, 6, 1, 8, 1, 6], [2, 6, 2, 7, 6, 11]]))
    heat, flows = heat_slow(lab, n)
    np.testing.assert_allclose(heat_map_3d(lab), heat, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(masks_to_flows_3d(lab), flows, atol=1e-6)


def test_unit_flows_inside_zero_outside(volume):
    f = masks_to_flows_3d(volume)
    assert f.shape == (3,) + volume.shape and f.dtype == np.float32
    norm = np.sqrt((f.astype(np.float64) ** 2).sum(0))
    np.testing.assert_allclose(norm[volume > 0], 1.0, atol=1e-5)
    assert not f[:, volume == 0].any()


def test_flows_point_at_the_centre_of_a_ball():
    z, y, x = np.mgrid[:15, :15, :15] - 7
    lab = ((z ** 2 + y ** 2 + x ** 2) <= 36).astype(np.int32)
    f = masks_to_flows_3d(lab)
    inward = -np.stack([z, y, x]) / np.maximum(np.sqrt(z ** 2 + y ** 2 + x ** 2), 1e-9)
    cos = (f * inward).sum(0)[(lab > 0) & ((z ** 2 + y ** 2 + x ** 2) > 4)]
    assert cos.min() > 0.9
    # the mirror image flows the mirror way (away from the centre voxel, whose gradient is 0)
    off = (z ** 2 + y ** 2 + x ** 2) > 0
    np.testing.assert_allclose(f[0, ::-1][off], -f[0][off], atol=1e-6)


def test_centres_are_the_voxels_nearest_the_mean(volume):
    ids, centers = object_centers_3d(volume)
    assert ids.tolist() == list(range(1, volume.max() + 1))
    for i, c in zip(ids, centers):
        pts = np.argwhere(volume == i)
        assert tuple(c) == tuple(pts[np.argmin(((pts - pts.mean(0)) ** 2).sum(1))])


def test_ids_need_not_be_sequential(volume):
    ref = masks_to_flows_3d(volume)
    np.testing.assert_array_equal(masks_to_flows_3d(volume * 7), ref)
    sparse = np.where(volume > 0, volume.astype(np.int64) + 2 ** 40, 0)  # forces relabelling
    np.testing.assert_array_equal(masks_to_flows_3d(sparse), ref)
    assert object_centers_3d(sparse)[0][0] == 2 ** 40 + 1


def test_n_iter_default_is_cellposes_rule():
    lab = touching_boxes()
    n = heat_iterations_3d(np.array([[1, 6, 1, 8, 1, 6], [2, 6, 2, 7, 6, 11]]))
    assert n == 6 * (5 + 7 + 5 + 3)
    np.testing.assert_array_equal(masks_to_flows_3d(lab, n_iter=n), masks_to_flows_3d(lab))
    assert not np.array_equal(masks_to_flows_3d(lab, n_iter=5), masks_to_flows_3d(lab))


def test_flows_module_dispatches_volumes(volume):
    np.testing.assert_array_equal(masks_to_flows(volume), masks_to_flows_3d(volume))
    with pytest.raises(ValueError, match=r"fmm.*\(24, 64, 64\)"):
        masks_to_flows(volume, method="fmm")
    assert masks_to_flows(volume[0]).shape == (2, 64, 64)  # 2D unchanged


def test_empty_and_degenerate_volumes():
    assert not masks_to_flows_3d(np.zeros((3, 4, 5), np.int32)).any()
    assert masks_to_flows_3d(np.zeros((0, 4, 5), np.int32)).shape == (3, 0, 4, 5)
    one = np.zeros((3, 3, 3), np.int32)
    one[1, 1, 1] = 4  # a one-voxel cell: no gradient, flows 0 (as Cellpose)
    assert not masks_to_flows_3d(one).any()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"3-D \(Z, Y, X\); got shape \(4, 4\)"):
        masks_to_flows_3d(np.zeros((4, 4), np.int32))
    with pytest.raises(TypeError, match="integer"):
        masks_to_flows_3d(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="negative"):
        masks_to_flows_3d(-np.ones((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="n_iter"):
        masks_to_flows_3d(np.ones((2, 4, 4), np.int32), n_iter=0)


@pytest.mark.reference
def test_agrees_with_cellpose_masks_to_flows_gpu_3d():
    pytest.importorskip("cellpose")
    import torch
    from cellpose.dynamics import masks_to_flows_gpu_3d

    # small: cellpose's CPU diffusion takes seconds even here
    volume = make_synthetic_volume((12, 48, 48), n_cells=6, diameter=16, anisotropy=2.0, seed=3).labels
    assert volume.max() >= 4

    theirs = masks_to_flows_gpu_3d(volume, device=torch.device("cpu"))
    ours = masks_to_flows_3d(volume)
    cos = (ours * theirs).sum(0)[volume > 0]
    assert cos.mean() >= 0.99
    np.testing.assert_allclose(ours, theirs, atol=1e-5)

import numpy as np
import pytest

from cellpose_nb.data import make_synthetic
from cellpose_nb.flows import FLOW_SCALE, flows_to_rgb, heat_map, masks_to_flows, object_centers


# ----------------------------------------------------------------------------- slow, readable twin
def heat_flows_slow(labels):
    """Cellpose's heat-diffusion flows written plainly (the numba kernel's twin)."""
    flows = np.zeros((2,) + labels.shape)
    for lab_id in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == lab_id)
        r0, c0 = rows.min(), cols.min()
        ly, lx = rows.max() - r0 + 3, cols.max() - c0 + 3  # bbox padded by one pixel
        y, x = rows - r0 + 1, cols - c0 + 1
        k = np.argmin((y - y.mean()) ** 2 + (x - x.mean()) ** 2)
        yc, xc = y[k], x[k]
        heat = np.zeros((ly, lx))
        for _ in range(2 * (ly + lx)):
            heat[yc, xc] += 1
            new = np.zeros_like(heat)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    new[y, x] += heat[y + dy, x + dx]
            heat = new / 9.0
        d_row = heat[y + 1, x] - heat[y - 1, x]
        d_col = heat[y, x + 1] - heat[y, x - 1]
        norm = 1e-60 + np.hypot(d_row, d_col)
        flows[0, rows, cols] = d_row / norm
        flows[1, rows, cols] = d_col / norm
    return flows


def disc(shape, center, radius, value=1):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.where((rr - center[0]) ** 2 + (cc - center[1]) ** 2 <= radius**2, value, 0)


def test_numba_kernel_equals_slow_version():
    lab = make_synthetic((96, 96), n_cells=8, diameter=20, seed=3).labels
    np.testing.assert_allclose(masks_to_flows(lab), heat_flows_slow(lab), atol=1e-5)


def test_disc_flows_point_to_centre():
    lab = disc((61, 61), (30, 30), 20)
    f = masks_to_flows(lab)
    rr, cc = np.nonzero(lab)
    away = np.hypot(rr - 30, cc - 30) > 3
    to_centre = np.stack([30 - rr, 30 - cc]).astype(float)
    to_centre /= np.linalg.norm(to_centre, axis=0) + 1e-12
    cos = (f[:, rr, cc] * to_centre).sum(0)[away]
    assert cos.min() > 0.95, cos.min()


def test_unit_length_inside_zero_outside():
    lab = make_synthetic((128, 128), n_cells=12, diameter=24, seed=0).labels
    f = masks_to_flows(lab)
    assert f.dtype == np.float32 and f.shape == (2,) + lab.shape
    mag = np.hypot(f[0], f[1])
    assert np.all(mag[lab == 0] == 0)
    # the centre pixel of a symmetric object may have a zero gradient; all others are unit
    ok = np.isclose(mag[lab > 0], 1.0, atol=1e-5)
    assert ok.mean() > 0.99


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64, np.uint32])
def test_dtypes_and_gaps_give_same_flows(dtype):
    lab = make_synthetic((80, 80), n_cells=6, diameter=20, seed=1).labels
    ref = masks_to_flows(lab)
    gapped = np.where(lab > 0, lab * 7 + 3, 0).astype(dtype)
    np.testing.assert_array_equal(masks_to_flows(gapped), ref)


def test_huge_sparse_ids():
    lab = make_synthetic((64, 64), n_cells=4, diameter=20, seed=2).labels
    huge = np.where(lab > 0, lab.astype(np.int64) * 10**12, 0)
    np.testing.assert_array_equal(masks_to_flows(huge), masks_to_flows(lab))
    ids, _ = object_centers(huge)
    assert ids.tolist() == [k * 10**12 for k in range(1, lab.max() + 1)]


def test_empty_and_one_pixel():
    assert not masks_to_flows(np.zeros((10, 12), np.uint16)).any()
    lab = np.zeros((5, 5), np.uint8)
    lab[2, 2] = 1
    f = masks_to_flows(lab)
    assert np.isfinite(f).all() and not f.any()  # a single pixel has no gradient
    assert masks_to_flows(np.zeros((0, 0), np.int32)).shape == (2, 0, 0)


def test_bad_labels_raise():
    with pytest.raises(TypeError, match="integer"):
        masks_to_flows(np.ones((4, 4)))
    with pytest.raises(TypeError, match="skimage.measure.label"):
        masks_to_flows(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="2-D"):
        masks_to_flows(np.ones((2, 2, 4, 4), np.int32))  # 3-D is a volume (flows3d)
    with pytest.raises(ValueError, match="negative"):
        masks_to_flows(-np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="method"):
        masks_to_flows(np.ones((4, 4), np.int32), method="magic")
    with pytest.raises(ValueError, match="n_iter"):
        masks_to_flows(np.ones((4, 4), np.int32), n_iter=0)


def test_labels_not_mutated():
    lab = make_synthetic((64, 64), n_cells=5, diameter=16, seed=4).labels
    before = lab.copy()
    masks_to_flows(lab)
    masks_to_flows(lab, method="fmm")
    np.testing.assert_array_equal(lab, before)


def test_heat_map_peaks_at_centre():
    lab = disc((41, 41), (20, 18), 12, value=4)
    h = heat_map(lab)
    ids, centers = object_centers(lab)
    assert ids.tolist() == [4]
    assert np.unravel_index(np.argmax(h), h.shape) == tuple(centers[0])
    assert np.all(h[lab == 0] == 0)


def test_fmm_agrees_with_heat_on_convex_shapes():
    lab = disc((61, 61), (30, 30), 22)
    a, b = masks_to_flows(lab), masks_to_flows(lab, method="fmm")
    m = lab > 0
    cos = (a[:, m] * b[:, m]).sum(0)
    assert cos.mean() > 0.95
    mag = np.hypot(b[0], b[1])
    assert np.all(mag[~m] == 0) and np.isclose(mag[m], 1, atol=1e-5).mean() > 0.99


def test_fmm_follows_a_concave_shape():
    # a U shape: the geodesic flow at the tip of an arm points along the arm (down), not
    # across the gap, which the straight-line direction to the centre would do
    lab = np.zeros((50, 50), np.int32)
    lab[5:45, 5:15] = 1
    lab[5:45, 35:45] = 1
    lab[35:45, 5:45] = 1
    f = masks_to_flows(lab, method="fmm")
    assert f[0, 8, 10] > 0.9  # top of the left arm flows down the arm


def test_flows_to_rgb():
    f = masks_to_flows(disc((31, 31), (15, 15), 10))
    rgb = flows_to_rgb(f)
    assert rgb.shape == (31, 31, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert np.all(rgb[0, 0] == 0)
    # opposite directions get different colours
    assert not np.allclose(rgb[5, 15], rgb[25, 15])
    with pytest.raises(ValueError, match="shape"):
        flows_to_rgb(np.zeros((3, 4, 4)))


def test_flow_scale_named_once():
    assert FLOW_SCALE == 5.0


@pytest.mark.reference
def test_oracle_cosine_on_dsb(cellpose_ref, dsb_labels):
    import torch

    from cellpose.dynamics import masks_to_flows as ref_flows

    cos = []
    for lab in dsb_labels:
        ours = masks_to_flows(lab)
        theirs = ref_flows(lab, device=torch.device("cpu"))
        m = lab > 0
        cos.append((ours[:, m] * theirs[:, m]).sum(0).mean())
    assert np.mean(cos) >= 0.99 and min(cos) > 0.98, (np.mean(cos), min(cos))

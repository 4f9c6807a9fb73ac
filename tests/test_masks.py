import numpy as np
import pytest

from cellpose_nb.data import make_synthetic
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.masks import (
    cluster_endpoints,
    compute_masks,
    fill_holes_and_remove_small_masks,
    flow_errors,
    follow_flows,
    remove_bad_flow_masks,
    renumber,
    trace_points,
)
from cellpose_nb.metrics import average_precision


def cellprob_from(labels):
    return np.where(labels > 0, 5.0, -5.0).astype(np.float32)


def euler_slow(flows, points, n_iter):
    """Euler steps with bilinear interpolation, written plainly (the kernel's twin)."""
    _, ly, lx = flows.shape
    p = np.array(points, dtype=np.float32).T.copy()
    for _ in range(n_iter):
        y0 = np.clip(p[0].astype(int), 0, ly - 1)
        x0 = np.clip(p[1].astype(int), 0, lx - 1)
        y1, x1 = np.minimum(y0 + 1, ly - 1), np.minimum(x0 + 1, lx - 1)
        wy, wx = p[0] - p[0].astype(int), p[1] - p[1].astype(int)
        step = (flows[:, y0, x0] * (1 - wy) * (1 - wx) + flows[:, y0, x1] * (1 - wy) * wx
                + flows[:, y1, x0] * wy * (1 - wx) + flows[:, y1, x1] * wy * wx)
        p[0] = np.clip(p[0] + step[0], 0, ly - 1)
        p[1] = np.clip(p[1] + step[1], 0, lx - 1)
    return p


def test_follow_matches_slow_euler():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    flows = gaussian_filter(rng.normal(size=(2, 30, 40)), (0, 3, 3)).astype(np.float32) * 5
    pts = rng.uniform(0, 29, size=(50, 2))
    traj = trace_points(flows, pts, n_iter=25)
    np.testing.assert_allclose(traj[-1], euler_slow(flows, pts, 25), atol=1e-3)
    np.testing.assert_allclose(traj[0], np.asarray(pts, np.float32).T)


def test_early_exit_is_exact():
    # without trajectories, points on a 1- or 2-cycle stop early; the end points must be
    # exactly those of the full run
    lab = make_synthetic((128, 128), n_cells=15, diameter=24, seed=5).labels
    f = masks_to_flows(lab)
    fast = follow_flows(f, lab > 0, n_iter=200)
    full = follow_flows(f, lab > 0, n_iter=200, return_trajectories=True)
    np.testing.assert_array_equal(fast.ends, full.trajectories[-1])
    np.testing.assert_array_equal(fast.starts, full.starts)
    assert full.trajectories.shape == (201, 2, int((lab > 0).sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_synthetic(seed):
    lab = make_synthetic((192, 192), n_cells=25, diameter=26, seed=seed).labels
    out = compute_masks(masks_to_flows(lab), cellprob_from(lab))
    assert out.dtype == np.int32
    assert average_precision([lab], [out], thresholds=[0.9])[0, 0] >= 0.99


def test_round_trip_dsb(dsb_labels):
    ap = average_precision(
        dsb_labels, [compute_masks(masks_to_flows(lab), cellprob_from(lab)) for lab in dsb_labels],
        thresholds=[0.9],
    )
    assert np.nanmean(ap) >= 0.99, np.nanmean(ap)


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch sparse-invariant notice inside cellpose
def test_oracle_same_masks_as_cellpose(cellpose_ref, dsb_labels):
    import torch
    from cellpose.dynamics import compute_masks as ref_compute

    for lab in dsb_labels[:20]:
        f, p = masks_to_flows(lab), cellprob_from(lab)
        ours = compute_masks(f, p)
        theirs = ref_compute(5 * f, p, min_size=15, device=torch.device("cpu")).astype(np.int32)
        if theirs.max() == 0:
            assert ours.max() == 0
            continue
        assert average_precision([theirs], [ours], thresholds=[0.99])[0, 0] == 1.0


def test_cluster_two_groups():
    starts = np.stack(np.nonzero(np.ones((10, 10), bool)))
    ends = np.where(starts[1] < 5, 2.0, 7.0)[None].repeat(2, 0).astype(np.float32)
    out = cluster_endpoints(ends, starts, (20, 20))
    assert out.max() == 2 and np.all(out[:10, :5] == 1) and np.all(out[:10, 5:10] == 2)


def test_cluster_drops_huge_and_sparse():
    starts = np.stack(np.nonzero(np.ones((10, 10), bool)))
    ends = np.full((2, 100), 5.0, np.float32)
    assert cluster_endpoints(ends, starts, (10, 10)).max() == 0  # one mask = whole image
    assert cluster_endpoints(ends, starts, (10, 10), max_size_fraction=1.0).max() == 1
    assert cluster_endpoints(ends[:, :5], starts[:, :5], (10, 10)).max() == 0  # < 10 end points


def test_flow_error_and_removal():
    lab = make_synthetic((128, 128), n_cells=10, diameter=24, seed=7).labels
    f = masks_to_flows(lab)
    err = flow_errors(lab, f)
    assert err.shape == (lab.max(),) and np.allclose(err, 0)
    bad = f.copy()
    bad[:, lab == 3] *= -1  # reverse one cell's flows
    kept = remove_bad_flow_masks(lab, bad, threshold=0.4)
    assert not np.any(kept == 3) and np.all(kept[lab == 1] == 1)
    out = compute_masks(bad, cellprob_from(lab), flow_threshold=0.4)
    out_off = compute_masks(bad, cellprob_from(lab), flow_threshold=None)
    assert out.max() < out_off.max() or not np.array_equal(out > 0, out_off > 0)


def test_fill_holes_and_min_size():
    lab = np.zeros((20, 20), np.int32)
    lab[2:10, 2:10] = 5
    lab[5, 5] = 0  # a hole
    lab[15:17, 15:17] = 9  # 4 pixels
    out = fill_holes_and_remove_small_masks(lab, min_size=5)
    assert out[5, 5] == 1 and out.max() == 1
    out = fill_holes_and_remove_small_masks(lab, min_size=0)
    assert out.max() == 2


def test_renumber():
    lab = np.array([[0, 7, 7], [3, 0, 10**9]], np.int64)
    assert renumber(lab).tolist() == [[0, 1, 1], [2, 0, 3]]


def test_empty_and_bad_inputs():
    f = np.zeros((2, 16, 16), np.float32)
    assert compute_masks(f, np.full((16, 16), -1.0)).max() == 0
    with pytest.raises(ValueError, match="shape"):
        compute_masks(f, np.zeros((15, 16)))
    with pytest.raises(ValueError, match="shape"):
        compute_masks(np.zeros((3, 16, 16)), np.zeros((16, 16)))
    bad = f.copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        compute_masks(bad, np.zeros((16, 16)))
    with pytest.raises(ValueError, match="NaN"):
        compute_masks(f, np.full((16, 16), np.nan))
    with pytest.raises(ValueError, match="n_iter"):
        follow_flows(f, np.ones((16, 16), bool), n_iter=-1)


def test_inputs_not_mutated():
    lab = make_synthetic((96, 96), n_cells=8, diameter=20, seed=9).labels
    f, p = masks_to_flows(lab), cellprob_from(lab)
    f0, p0 = f.copy(), p.copy()
    compute_masks(f, p)
    np.testing.assert_array_equal(f, f0)
    np.testing.assert_array_equal(p, p0)

import numpy as np
import pytest

from cellpose_nb import masks, masks3d
from cellpose_nb.data import make_synthetic_volume
from cellpose_nb.flows3d import masks_to_flows_3d
from cellpose_nb.masks import FollowResult, compute_masks, follow_flows
from cellpose_nb.masks3d import (
    cluster_endpoints_3d,
    compute_masks_3d,
    fill_holes_and_remove_small_masks_3d,
    flow_errors_3d,
    follow_flows_3d,
    remove_bad_flow_masks_3d,
    renumber_3d,
)
from cellpose_nb.metrics import average_precision


def ap_3d(true, pred, thresholds=(0.5, 0.9)):
    # IoU does not change when a volume is viewed as (Z, Y * X)
    return average_precision(true.reshape(true.shape[0], -1), pred.reshape(pred.shape[0], -1),
                             thresholds=list(thresholds))[0]


def cellprob_from(labels):
    return np.where(labels > 0, 5.0, -5.0).astype(np.float32)


@pytest.fixture(scope="module", params=[1.0, 2.0], ids=["isotropic", "anisotropic"])
def case(request):
    vol = make_synthetic_volume((24, 64, 64), n_cells=12, diameter=20, anisotropy=request.param, seed=5)
    return vol.labels, masks_to_flows_3d(vol.labels)


def euler_slow(flows, points, n_iter):
    """Euler steps with trilinear interpolation, written plainly (the kernel's twin)."""
    shape = np.array(flows.shape[1:])
    p = np.array(points, dtype=np.float32).T.copy()
    for _ in range(n_iter):
        i0 = np.clip(p.astype(int), 0, shape[:, None] - 1)
        i1 = np.minimum(i0 + 1, shape[:, None] - 1)
        w = p - p.astype(int)
        step = np.zeros_like(p)
        for corner in np.ndindex(2, 2, 2):
            idx = tuple(np.where(c, i1[a], i0[a]) for a, c in enumerate(corner))
            wt = np.prod([w[a] if c else 1 - w[a] for a, c in enumerate(corner)], axis=0)
            step += flows[(slice(None),) + idx] * wt
        p = np.clip(p + step, 0, shape[:, None] - 1).astype(np.float32)
    return p


def euler_grid_sample(flows, points, n_iter):
    """Cellpose 3.1.1.2's 3D step (``dynamics.steps_interp``), written with torch here:
    coordinates normalised by ``n - 1``, sampled with ``grid_sample(align_corners=False)``."""
    import torch
    import torch.nn.functional as F

    n = np.array(flows.shape[1:], np.float32)[::-1] - 1  # x, y, z
    im = torch.from_numpy(np.ascontiguousarray(flows[::-1], np.float32))[None]  # (dx, dy, dz)
    im = im * torch.from_numpy(2 / n.copy())[None, :, None, None, None]
    pt = torch.from_numpy(np.ascontiguousarray(np.asarray(points, np.float32)[:, ::-1] / n))
    pt = (pt * 2 - 1)[None, None, None]  # (1, 1, 1, N, 3)
    for _ in range(n_iter):
        d = F.grid_sample(im, pt, align_corners=False)[0, :, 0, 0].T  # (N, 3)
        pt = torch.clamp(pt + d[None, None, None], -1.0, 1.0)
    return ((pt[0, 0, 0].numpy() + 1) / 2 * n)[:, ::-1].T


def test_round_trip_recovers_the_labels(case):
    labels, flows = case
    out = compute_masks_3d(flows, cellprob_from(labels))
    ap = ap_3d(labels, out)
    assert ap[0] == 1.0 and ap[1] >= 0.95, ap
    assert out.dtype == np.int32 and out.max() == len(np.unique(out)) - 1


def test_follow_matches_slow_trilinear_euler():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    flows = gaussian_filter(rng.standard_normal((3, 6, 9, 10)), (0, 1, 1, 1)).astype(np.float32) * 3
    pts = rng.uniform(0, 5, (40, 3)) * [1, 1.6, 1.8]
    mask = np.zeros((6, 9, 10), bool)
    mask[tuple(np.round(pts).astype(int).T)] = True
    res = follow_flows_3d(flows, mask, n_iter=15, cellpose_grid=False)
    np.testing.assert_allclose(res.ends, euler_slow(flows, res.starts.T, 15), atol=1e-4)


def test_follow_reads_the_flows_where_cellposes_grid_sample_does():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    flows = gaussian_filter(rng.standard_normal((3, 6, 9, 10)), (0, 1, 1, 1)).astype(np.float32) * 3
    mask = rng.random((6, 9, 10)) < 0.3  # faces included: there the field is read off the grid
    res = follow_flows_3d(flows, mask, n_iter=15)
    np.testing.assert_allclose(res.ends, euler_grid_sample(flows, res.starts.T, 15), atol=1e-3)


def test_trajectories_end_at_the_ends(case):
    labels, flows = case
    m = labels == 1
    res = follow_flows_3d(flows * m, m, n_iter=20, return_trajectories=True)
    assert res.trajectories.shape == (21, 3, m.sum())
    np.testing.assert_array_equal(res.trajectories[0], res.starts)
    np.testing.assert_array_equal(res.trajectories[-1], follow_flows_3d(flows * m, m, n_iter=20).ends)


def test_masks_module_dispatches_volumes(case):
    labels, flows = case
    prob = cellprob_from(labels)
    np.testing.assert_array_equal(compute_masks(flows, prob), compute_masks_3d(flows, prob))
    res = follow_flows(flows, labels > 0, n_iter=5)
    assert isinstance(res, FollowResult) and res.ends.shape == (3, (labels > 0).sum())
    assert compute_masks(flows[1:, 3], prob[3]).shape == (64, 64)  # 2D unchanged


def test_defaults_equal_the_2d_ones():
    assert masks3d.N_ITER_3D == masks.N_ITER
    assert masks3d.CELLPROB_THRESHOLD_3D == masks.CELLPROB_THRESHOLD
    assert masks3d.MIN_SIZE_3D == masks.MIN_SIZE
    assert masks3d.MAX_SIZE_FRACTION_3D == masks.MAX_SIZE_FRACTION
    assert (masks3d.SEED_WINDOW_3D, masks3d.SEED_MIN_COUNT_3D) == (masks.SEED_WINDOW, masks.SEED_MIN_COUNT)


def spiral_and_true(shape=(10, 24, 24)):
    """Two cubes: one with its true flows, one with flows spiralling in (clusters, bad error)."""
    lab = np.zeros(shape, np.int32)
    lab[1:9, 2:10, 2:10] = 1
    lab[1:9, 13:21, 13:21] = 2
    flows = masks_to_flows_3d(lab)
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]].astype(float)
    inward = np.stack([4.5 - z, 16.5 - y, 16.5 - x])
    swirl = np.stack([np.zeros_like(z), -(16.5 - x), 16.5 - y])
    v = inward + 1.5 * swirl
    v /= np.maximum(np.sqrt((v ** 2).sum(0)), 1e-9)
    flows[:, lab == 2] = v[:, lab == 2]
    return lab, flows


def test_flow_error_check_is_off_by_default_as_in_cellpose():
    lab, flows = spiral_and_true()
    err = flow_errors_3d(lab, flows)
    assert err[0] < 1e-6 and err[1] > 0.4
    assert compute_masks_3d(flows, cellprob_from(lab)).max() == 2
    kept = compute_masks_3d(flows, cellprob_from(lab), flow_threshold=0.4)
    assert kept.max() == 1 and (kept > 0).sum() == (lab == 1).sum()
    assert remove_bad_flow_masks_3d(lab, flows, threshold=0.4).max() == 1


def test_fill_holes_and_small_masks_in_3d():
    lab = np.zeros((9, 9, 9), np.int32)
    lab[1:8, 1:8, 1:8] = 3
    lab[3:6, 3:6, 3:6] = 0  # a closed cavity (open in no slice direction)
    lab[0, 0, 0] = 8  # one voxel
    out = fill_holes_and_remove_small_masks_3d(lab, min_size=2)
    assert out[4, 4, 4] == 1 and out[0, 0, 0] == 0 and out.max() == 1
    assert (out > 0).sum() == 7 ** 3
    open_hole = lab.copy()
    open_hole[3:6, 3:6, 0:6] = 0  # a tunnel to the outside is not a hole
    assert fill_holes_and_remove_small_masks_3d(open_hole, min_size=0)[4, 4, 4] == 0


def test_clustering_edge_cases():
    empty = np.zeros((3, 0))
    assert not cluster_endpoints_3d(empty, empty.astype(int), (4, 5, 6)).any()
    # a single blob holding more than 40 % of the volume is dropped
    starts = np.stack(np.unravel_index(np.arange(60), (3, 4, 5)))
    ends = np.full((3, 60), 1.0)
    assert not cluster_endpoints_3d(ends, starts, (3, 4, 5)).any()
    assert cluster_endpoints_3d(ends, starts, (3, 4, 5), max_size_fraction=1.0).max() == 1
    assert not compute_masks_3d(np.zeros((3, 4, 5, 6), np.float32), -np.ones((4, 5, 6))).any()


def test_renumber_3d_is_raster_order():
    lab = np.zeros((2, 2, 2), np.int64)
    lab[1, 0, 0], lab[0, 1, 1] = 9, 4
    assert renumber_3d(lab)[0, 1, 1] == 1 and renumber_3d(lab)[1, 0, 0] == 2


def test_bad_input_is_named():
    flows = np.zeros((3, 4, 5, 6), np.float32)
    with pytest.raises(ValueError, match=r"\(3, Z, Y, X\); got \(2, 4, 5, 6\)"):
        compute_masks_3d(np.zeros((2, 4, 5, 6), np.float32), np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match=r"cellprob shape \(4, 5\) does not match flows shape \(4, 5, 6\)"):
        compute_masks(flows, np.zeros((4, 5)))
    nan = flows.copy()
    nan[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"\(3, 4, 5, 6\) contain NaN"):
        compute_masks(nan, np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="cellprob of shape"):
        compute_masks_3d(flows, np.full((4, 5, 6), np.nan))
    with pytest.raises(TypeError, match="float"):
        compute_masks_3d(flows.astype(int), np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match=r"mask shape \(4, 5\)"):
        follow_flows(flows, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="3-D"):
        fill_holes_and_remove_small_masks_3d(np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="n_iter"):
        follow_flows_3d(flows, np.ones((4, 5, 6), bool), n_iter=-1)


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch sparse-invariant notice inside cellpose
def test_agrees_with_cellpose_compute_masks_3d(case):
    pytest.importorskip("cellpose")
    import torch
    from cellpose.dynamics import compute_masks as ref_compute_masks

    labels, flows = case
    prob = cellprob_from(labels)
    theirs = ref_compute_masks(5 * flows, prob, do_3D=True, min_size=15,
                               device=torch.device("cpu")).astype(np.int32)
    ours = compute_masks_3d(flows, prob)
    assert ap_3d(theirs, ours, [0.9])[0] >= 0.99
    assert (ours == theirs).mean() >= 0.999  # the same labels, voxel for voxel but a few

"""Segmenting volumes: segment(do_3d=True) (2.5D), segment(stitch_threshold=), and the CLI."""

import numpy as np
import pytest
import tifffile
import torch

from cellpose_nb import predict as P
from cellpose_nb.data import make_synthetic_volume
from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.model import CellposeUNet, ModelConfig
from cellpose_nb.predict.volume import masks_3d, resampled_shape, volume_input

DIAM = 12.0


def _tiny_model(diam_mean=DIAM):
    torch.manual_seed(0)
    return CellposeUNet(ModelConfig(features=(8, 16), diam_mean=diam_mean)).eval()


class GradientNet(torch.nn.Module):
    """A stand-in network whose 'flows' are the (row, col) gradient of its first input
    channel and whose 'cellprob' is that channel: 2.5D must then return the 3D gradient."""

    def __init__(self, diam_mean=DIAM):
        super().__init__()
        self.config = ModelConfig(features=(8, 16), diam_mean=diam_mean)
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # a device and a dtype to read

    def forward(self, x):
        a = x[:, :1]
        d_row = torch.zeros_like(a)
        d_col = torch.zeros_like(a)
        d_row[..., 1:-1, :] = (a[..., 2:, :] - a[..., :-2, :]) / 2
        d_col[..., 1:-1] = (a[..., 2:] - a[..., :-2]) / 2
        return torch.cat([d_row, d_col, a], 1), torch.zeros(x.shape[0], 8)


def test_2_5d_estimates_each_flow_axis_from_the_two_slice_orientations_that_contain_it():
    z, y, x = np.meshgrid(np.arange(20), np.arange(40), np.arange(48), indexing="ij")
    ramp = (0.3 * z - 0.2 * y + 0.1 * x).astype(np.float32)  # gradient (0.3, -0.2, 0.1)
    inp = np.stack([ramp, np.zeros_like(ramp)])
    flows, cellprob, style = P.predict_flows_3d(inp, GradientNet())
    inner = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    for axis, g in enumerate((0.3, -0.2, 0.1)):
        np.testing.assert_allclose(flows[axis][inner[1:]], g / FLOW_SCALE, atol=1e-4)
    np.testing.assert_allclose(cellprob, ramp, atol=1e-4)  # the mean of three equal estimates
    assert flows.shape == (3, 20, 40, 48) and style.shape == (8,)


def test_2_5d_resamples_z_by_the_anisotropy_and_returns_the_original_shape():
    z, y, x = np.meshgrid(np.arange(10), np.arange(40), np.arange(40), indexing="ij")
    ramp = (0.3 * z).astype(np.float32)
    flows, _, _ = P.predict_flows_3d(np.stack([ramp, 0 * ramp]), GradientNet(), anisotropy=2.0)
    assert flows.shape == (3, 10, 40, 40)
    # Z stretched 2x: the network sees a slope of 0.15 per resampled slice, and a step of
    # 0.15 resampled slices is 0.075 of the volume's own slices
    np.testing.assert_allclose(flows[0][3:-3, 3:-3, 3:-3], 0.075 / FLOW_SCALE, atol=1e-3)
    assert resampled_shape((10, 40, 40), 1.0, 2.0) == (20, 40, 40)


def test_segment_do_3d_and_stitch_return_volumes():
    vol = make_synthetic_volume((12, 40, 44), n_cells=4, diameter=DIAM, anisotropy=1.0, seed=0)
    net = _tiny_model()
    res = P.segment(vol.image, net, diameter=DIAM, do_3d=True, channels=(0, 1), channel_axis=-1)
    assert res.labels.shape == (12, 40, 44) and res.labels.dtype == np.int32
    assert res.flows.shape == (3, 12, 40, 44) and res.cellprob.shape == (12, 40, 44)
    assert res.notes == ()  # both channels given
    cyto = vol.image[..., 0]
    one = P.segment(cyto, net, diameter=DIAM, do_3d=True, channels=(0, 1))
    assert "the volume has one channel" in one.notes[0]  # the nuclear channel is zeros
    res = P.segment(cyto, net, diameter=DIAM, stitch_threshold=0.25)
    assert res.labels.shape == (12, 40, 44) and res.flows.shape == (2, 12, 40, 44)
    # z_axis: the same volume with Z last gives the same result
    moved = P.segment(np.moveaxis(cyto, 0, -1), net, diameter=DIAM, stitch_threshold=0.25,
                      z_axis=-1)
    np.testing.assert_array_equal(moved.labels, res.labels)


def test_masks_3d_follows_the_sum_of_the_estimates_and_restores_the_flows():
    from cellpose_nb.flows import masks_to_flows
    from cellpose_nb.masks3d import compute_masks_3d

    lab = np.zeros((12, 24, 24), np.int32)
    lab[2:10, 3:12, 3:20] = 1
    lab[2:10, 12:21, 3:20] = 2
    mean = masks_to_flows(lab) / 2  # Cellpose's sum is twice the mean
    prob = np.where(lab > 0, 3.0, -3.0).astype(np.float32)
    before = mean.copy()
    out = masks_3d(mean, prob, cellprob_threshold=0.0, flow_threshold=None, n_iter=200, min_size=15)
    np.testing.assert_array_equal(mean, before)
    np.testing.assert_array_equal(out, compute_masks_3d(2 * before, prob))
    assert out.max() == 2
    # the flow check reads the mean (unit-scale) flows: true flows pass, reversed ones fail
    kw = dict(cellprob_threshold=0.0, flow_threshold=0.4, n_iter=200, min_size=15)
    np.testing.assert_array_equal(masks_3d(mean.copy(), prob, **kw), out)
    flipped = mean.copy()
    flipped[0, lab == 2] *= -1  # cell 2's z flows point away from its centre: it splits in two
    assert masks_3d(flipped.copy(), prob, **{**kw, "flow_threshold": None}).max() == 3
    assert masks_3d(flipped, prob, **kw).max() == 1  # both halves fail the check


def test_whole_volume_normalisation_keeps_a_dim_slice_dim():
    vol = np.ones((4, 16, 16), np.float32)
    vol[1] *= 0.1
    vol += np.random.default_rng(0).random(vol.shape) * 0.01
    x = volume_input(vol)
    assert x[0, 1].mean() < 0.5 * x[0, 0].mean()  # per-slice percentiles would make them equal
    assert not x[1].any()  # no nuclear channel: zeros


def test_stitching_survives_empty_slices():
    vol = make_synthetic_volume((10, 40, 40), n_cells=4, diameter=DIAM, anisotropy=1.0, seed=1)
    vol = vol.image[..., 0].copy()
    vol[4] = 0  # an empty slice
    res = P.segment(vol, _tiny_model(), diameter=DIAM, stitch_threshold=0.5)
    assert res.labels.shape == vol.shape


@pytest.mark.parametrize("kwargs, image, phrase", [
    ({"do_3d": True}, np.zeros((32, 32)), "2-D image of shape (32, 32)"),
    ({"do_3d": True}, np.zeros((6, 32, 32, 2)), "needs channel_axis"),
    ({"do_3d": True}, np.zeros((1, 32, 32)), "a stack of one slice is a 2-D image"),
    ({"do_3d": True, "anisotropy": 0.0}, np.zeros((6, 32, 32)), "anisotropy must be a finite positive"),
    ({"do_3d": True, "anisotropy": float("nan")}, np.zeros((6, 32, 32)), "got nan"),
    ({"do_3d": True}, np.random.default_rng(0).random((3, 32, 32)), "at least 8 voxels"),
    ({"do_3d": True, "stitch_threshold": 0.3}, np.zeros((6, 32, 32)), "not both"),
    ({"stitch_threshold": 1.5}, np.zeros((6, 32, 32)), "stitch_threshold must be a number in (0, 1]"),
    ({"anisotropy": 2.0}, np.zeros((32, 32)), "anisotropy= and z_axis= are for volumes"),
    ({"do_3d": True, "z_axis": 5}, np.zeros((6, 32, 32)), "z_axis=5"),
])
def test_bad_volume_input_gets_a_clear_error(kwargs, image, phrase):
    with pytest.raises(ValueError) as info:
        P.segment(image, _tiny_model(), diameter=DIAM, **kwargs)
    assert phrase in str(info.value)


# --- the command line ---------------------------------------------------------------------
def _volume_file(tmp_path, name="stack.tif", shape=(12, 40, 40), seed=0):
    vol = make_synthetic_volume(shape, n_cells=4, diameter=17, anisotropy=1.0, seed=seed)
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    tifffile.imwrite(src / name, vol.image[..., 1])  # the nuclear channel, for the nuclei model
    return src / name, vol


def test_cli_segments_a_stack_in_3d_with_voxel_size(tmp_path, capsys):
    from cellpose_nb.cli import main

    path, vol = _volume_file(tmp_path)
    out = tmp_path / "out"
    argv = ["segment", str(path), "--out", str(out), "--3d", "--diameter", "17",
            "--voxel-size", "2", "0.5", "0.5"]
    assert main(argv) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".stack.segment.json", "stack_cells.csv",
                                                     "stack_masks.tif", "stack_seg.npy"]
    with tifffile.TiffFile(out / "stack_masks.tif") as tif:
        masks = tif.asarray()
        meta = tif.imagej_metadata
    assert masks.shape == vol.labels.shape and meta["spacing"] == pytest.approx(2.0)
    seg = np.load(out / "stack_seg.npy", allow_pickle=True).item()
    assert seg["masks"].shape == vol.labels.shape
    assert main(argv) == 0 and "skipped (already done)" in capsys.readouterr().out


def test_cli_stitches_a_stack_and_refuses_bad_volume_options(tmp_path, capsys):
    from cellpose_nb.cli import main

    path, _ = _volume_file(tmp_path)
    out = tmp_path / "out"
    assert main(["segment", str(path), "--out", str(out), "--stitch-threshold", "0.25",
                 "--diameter", "17", "--formats", "masks"]) == 0
    assert (out / "stack_masks.tif").exists()
    for extra, phrase in [(["--anisotropy", "2"], "are for volumes"),
                          (["--3d", "--stitch-threshold", "0.2"], "not both"),
                          (["--3d", "--formats", "outlines"], "not written for volumes"),
                          (["--3d", "--voxel-size", "0", "1", "1"], "three positive numbers"),
                          (["--3d", "--anisotropy", "-2"], "--anisotropy must be a finite positive number")]:
        assert main(["segment", str(path), "--out", str(tmp_path / "o2"), *extra]) == 2
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err
    # a 2D image given to --3d fails with a line that names it and the shape
    tifffile.imwrite(tmp_path / "in" / "flat.tif", np.zeros((40, 40), np.float32))
    assert main(["segment", str(tmp_path / "in" / "flat.tif"), "--out", str(tmp_path / "o3"),
                 "--3d", "--diameter", "17"]) == 1
    assert "flat.tif: FAILED" in (err := capsys.readouterr().err) and "(40, 40)" in err

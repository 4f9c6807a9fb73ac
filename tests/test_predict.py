"""Tests of cellpose_nb.predict: shapes, tiling, augmentation, rescaling, thresholds,
streaming memory, errors, and an oracle network that must give back known labels."""

import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from cellpose_nb import predict as P
from cellpose_nb.predict import passes as PS
from cellpose_nb.predict import segmentation as S
from cellpose_nb.data import make_synthetic
from cellpose_nb.flows import FLOW_SCALE, masks_to_flows
from cellpose_nb.metrics import matching
from cellpose_nb.model import CellposeUNet, ModelConfig, ModelRecord
from cellpose_nb.normalize import to_network_input

DIAM = 12.0


def _tiny_model(features=(8, 16), seed=0, diam_mean=DIAM):
    torch.manual_seed(seed)
    net = CellposeUNet(ModelConfig(features=features, diam_mean=diam_mean))
    for m in net.modules():  # non-trivial BatchNorm statistics, so that eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return _tiny_model()


def _smooth(shape, seed=0):
    x = np.random.default_rng(seed).random(shape).astype(np.float32)
    return ndi.gaussian_filter(x, [0] * (len(shape) - 2) + [2, 2])


def _check(res, shape):
    assert isinstance(res, P.Segmentation)
    assert res.labels.shape == shape and res.labels.dtype == np.int32
    assert res.flows.shape == (2, *shape) and res.flows.dtype == np.float32
    assert res.cellprob.shape == shape and res.cellprob.dtype == np.float32
    assert res.style.ndim == 1 and res.style.dtype == np.float32
    assert np.isfinite(res.flows).all() and np.isfinite(res.cellprob).all()


# --- shapes and inputs ------------------------------------------------------------------
def test_segment_shapes_2d_3d_and_lists(net):
    img = _smooth((50, 70))
    before = img.copy()
    res = P.segment(img, net, diameter=DIAM, tile_size=32)
    _check(res, (50, 70))
    assert res.style.shape == (16,) and res.diameter == DIAM
    np.testing.assert_array_equal(img, before)  # input untouched

    multi = _smooth((3, 40, 30))
    _check(P.segment(multi, net, diameter=DIAM, channel_axis=0, channels=(2, 0)), (40, 30))
    _check(P.segment(multi.transpose(1, 2, 0), net, diameter=DIAM, channels=(1, None)), (40, 30))

    out = P.segment([img, img[:33, :41]], net, diameter=DIAM)
    assert isinstance(out, list) and len(out) == 2
    _check(out[1], (33, 41))
    np.testing.assert_array_equal(out[0].labels, P.segment(img, net, diameter=DIAM).labels)


def test_segment_many_list_and_generator(net):
    imgs = [_smooth((40, 40), s) for s in range(2)]
    a = P.segment_many(imgs, net, diameter=DIAM, progress=False)
    b = P.segment_many((im for im in imgs), net, diameter=DIAM, progress=False)
    assert [r.labels.shape for r in a] == [(40, 40)] * 2
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.labels, rb.labels)


@pytest.mark.parametrize("diameter", [DIAM * 2, DIAM / 1.7])
def test_rescaling_returns_original_size(net, diameter):
    res = P.segment(_smooth((45, 61)), net, diameter=diameter, tile_size=32)
    _check(res, (45, 61))
    assert res.diameter == pytest.approx(diameter)


def test_training_mode_model_is_run_in_eval_and_restored():
    net = _tiny_model()
    x = _smooth((2, 40, 40))
    ref = P.run_net(x, net).y
    net.train()
    np.testing.assert_allclose(P.run_net(x, net).y, ref, atol=1e-6)
    assert net.training


# --- thresholds and diameter ------------------------------------------------------------
def _spy(monkeypatch):
    seen = {}

    def fake_compute_masks(flows, cellprob, **kw):
        seen.update(kw)
        return np.zeros(cellprob.shape, np.int32)

    monkeypatch.setattr(PS, "compute_masks", fake_compute_masks)
    return seen


def test_thresholds_come_from_the_model(monkeypatch):
    net = _tiny_model()
    img = _smooth((32, 32))
    seen = _spy(monkeypatch)
    P.segment(img, net, diameter=DIAM)
    assert (seen["cellprob_threshold"], seen["flow_threshold"]) == (0.0, 0.4)
    net.record = net.record.replace(thresholds={"cellprob_threshold": -1.5, "flow_threshold": 0.8})
    P.segment(img, net, diameter=DIAM, min_size=3, n_iter=50)
    assert (seen["cellprob_threshold"], seen["flow_threshold"]) == (-1.5, 0.8)
    assert (seen["min_size"], seen["n_iter"]) == (3, 50)
    P.segment(img, net, diameter=DIAM, cellprob_threshold=2.0)  # explicit wins
    assert (seen["cellprob_threshold"], seen["flow_threshold"]) == (2.0, 0.8)
    net.record = net.record.replace(thresholds={"cellprob": 0.5})  # short key, flow: default
    P.segment(img, net, diameter=DIAM)
    assert (seen["cellprob_threshold"], seen["flow_threshold"]) == (0.5, 0.4)


def test_diameter_none_without_size_model_warns_and_uses_diam_mean(net, monkeypatch):
    def no_call(*args, **kw):
        raise AssertionError("style_diameter called for a model without a size model")

    monkeypatch.setattr(PS, "style_diameter", no_call)
    with pytest.warns(UserWarning, match="no size model.*diam_mean"):
        res = P.segment(_smooth((40, 40)), net)
    assert res.diameter == DIAM


def test_diameter_none_uses_the_models_size_model():
    net = _tiny_model()
    net.record = net.record.replace(size_model=P.SizeModel(np.zeros(16), np.zeros(16), np.log(2.0), DIAM))
    img = _smooth((40, 40))
    x = to_network_input(img)
    want = P.estimate_diameter(x, net).diameter
    res = P.segment(img, net)
    assert res.diameter == want and res.labels.shape == (40, 40)


def test_estimate_diameter_refines_with_the_models_tuned_thresholds(monkeypatch):
    import cellpose_nb.predict.diameter as D

    net = _tiny_model()
    net.record = net.record.replace(size_model=P.SizeModel(np.zeros(16), np.zeros(16), np.log(2.0), DIAM),
                                    thresholds={"cellprob_threshold": -0.5, "flow_threshold": 0.6})
    seen = []
    monkeypatch.setattr(D, "_masks_at_scale", lambda x, model, scale, **th: seen.append(th) or
                        np.zeros(x.shape[-2:], np.int32))
    x = to_network_input(_smooth((40, 40)))
    P.estimate_diameter(x, net)
    P.estimate_diameter(x, net, flow_threshold=0.3)
    assert seen == [{"cellprob_threshold": -0.5, "flow_threshold": 0.6},
                    {"cellprob_threshold": -0.5, "flow_threshold": 0.3}]


@pytest.mark.parametrize("measured, passes", [(25.0, 1), (21.7, 1), (40.0, 2), (0.0, 1)])
def test_diameter_none_segments_again_only_when_the_estimate_is_far_from_the_guess(
        monkeypatch, measured, passes):
    net = _tiny_model()
    net.record = net.record.replace(size_model=P.SizeModel(np.zeros(16), np.zeros(16), 0.0, DIAM))
    scales = []
    real = PS.predict_flows
    monkeypatch.setattr(PS, "style_diameter", lambda *a, **k: 24.0)
    monkeypatch.setattr(PS, "median_diameter", lambda labels: measured)
    monkeypatch.setattr(PS, "predict_flows",
                        lambda x, model, scale, **kw: scales.append(scale) or real(x, model, scale=scale, **kw))
    res = P.segment(_smooth((40, 40)), net)
    want = measured if measured > 0 else 24.0  # no masks: the guess stands
    assert res.diameter == want and res.labels.shape == (40, 40)
    assert scales == [DIAM / 24.0] + ([DIAM / measured] if passes == 2 else [])
    assert any("diameter estimated" in n for n in res.notes)


def test_the_style_of_a_few_tiles_is_the_encoders_and_equals_run_net_on_small_images(net):
    small, large = _smooth((2, 60, 70)), _smooth((2, 150, 170), seed=1)
    small_layout = P.tile_layout((60, 70), tile_size=64)
    assert len(small_layout.rows) * len(small_layout.cols) <= P.STYLE_GRID ** 2  # all tiles
    np.testing.assert_allclose(P.predict_style(small, net, tile_size=64),
                               P.run_net(small, net, tile_size=64).style, atol=1e-6)
    np.testing.assert_allclose(P.predict_style(large, net, tile_size=32, grid=None),
                               P.run_net(large, net, tile_size=32).style, atol=1e-6)
    seen = []
    real = net.encode_style
    net.encode_style = lambda x: seen.append(x.shape[0]) or real(x)
    try:
        few = P.predict_style(large, net, tile_size=32, batch_size=8)
    finally:
        del net.encode_style
    layout = P.tile_layout((150, 170), tile_size=32)
    assert len(layout.rows) * len(layout.cols) > 4 and seen == [P.STYLE_GRID ** 2]
    assert few.shape == (16,) and np.isclose(np.linalg.norm(few), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="network input"):
        P.predict_style(np.zeros((2, 0, 10), np.float32), net)


def test_a_guess_out_of_range_falls_back_to_diam_mean(monkeypatch):
    net = _tiny_model()
    net.record = net.record.replace(size_model=P.SizeModel(np.zeros(16), np.zeros(16), 0.0, DIAM))
    monkeypatch.setattr(PS, "style_diameter", lambda *a, **k: np.inf)
    with pytest.warns(UserWarning, match="estimate cannot be used: diameter=inf"):
        assert P.segment(_smooth((40, 40)), net).diameter == DIAM


def test_a_broken_size_model_raises_instead_of_being_ignored():
    net = _tiny_model()
    net.record = net.record.replace(size_model=P.SizeModel(np.zeros(3), np.zeros(3), 0.0, DIAM))  # style has 16 values
    with pytest.raises(ValueError):
        P.segment(_smooth((40, 40)), net)


# --- tiling -----------------------------------------------------------------------------
def test_tile_layout_covers_the_padded_image():
    for shape in [(10, 10), (100, 130), (500, 731), (17, 300)]:
        for augment in (False, True):
            lay = P.tile_layout(shape, tile_size=64, augment=augment)
            assert all(s % 16 == 0 for s in lay.shape)
            assert lay.pad[0] >= P.PAD_EXTRA and lay.pad[1] >= P.PAD_EXTRA
            for starts, tile, n in zip((lay.rows, lay.cols), lay.tile, lay.shape):
                assert starts[0] == 0 and starts[-1] + tile == n
                assert (np.diff(starts) < tile).all()  # neighbours overlap, no gaps
            if augment:
                assert len(lay.rows) >= 2 and len(lay.cols) >= 2
    with pytest.raises(ValueError, match="multiple of 16"):
        P.tile_layout((100, 100), tile_size=50)


def test_tiled_and_whole_image_agree_in_the_interior():
    net = _tiny_model(features=(8, 16, 32))
    x = _smooth((2, 150, 200))
    x = (x - x.mean()) / x.std()
    whole = P.run_net(x, net, tile_size=224).y  # one tile
    tiled = P.run_net(x, net, tile_size=64, tile_overlap=0.1).y  # 4 x 5 tiles
    inner = (slice(None), slice(16, -16), slice(16, -16))
    rel = np.sqrt(((whole - tiled)[inner] ** 2).mean()) / whole.std()
    assert rel < 0.1
    assert np.corrcoef(whole[inner].ravel(), tiled[inner].ravel())[0, 1] > 0.99


def test_streaming_batches_give_the_same_result_in_little_memory(net):
    x = _smooth((2, 192, 160))
    one_batch = P.run_net(x, net, tile_size=32, batch_size=64)
    tracemalloc.start()
    streamed = P.run_net(x, net, tile_size=32, batch_size=3)  # 8 x 7 tiles, last batch short
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(streamed.y, one_batch.y, atol=1e-5)
    np.testing.assert_allclose(streamed.style, one_batch.style, atol=1e-5)
    image_bytes = x[0].nbytes
    # a (3, H, W) sum + an (H, W) weight; all tiles at once would be ~7 image copies
    assert peak < 5 * image_bytes, peak / image_bytes


def test_augment_shapes_and_flip_equivariance(net):
    x = _smooth((2, 48, 48))  # padded to 64 = one tile position, seen in all four flips
    y = P.run_net(x, net, tile_size=64, augment=True).y
    assert y.shape == (3, 48, 48)
    flipped = P.run_net(x[:, ::-1, :], net, tile_size=64, augment=True).y
    expect = y[:, ::-1, :].copy()
    expect[0] *= -1
    np.testing.assert_allclose(flipped, expect, atol=1e-5)
    flipped = P.run_net(x[:, :, ::-1], net, tile_size=64, augment=True).y
    expect = y[:, :, ::-1].copy()
    expect[1] *= -1
    np.testing.assert_allclose(flipped, expect, atol=1e-5)
    res = P.segment(_smooth((70, 90)), net, diameter=DIAM, tile_size=32, augment=True)
    _check(res, (70, 90))


def test_bfloat16_precision_is_close_to_float32():
    net = _tiny_model(features=(8, 16, 32))
    x = _smooth((2, 64, 80))
    y32 = P.run_net(x, net).y
    y16 = P.run_net(x, net, precision="bfloat16")
    assert y16.y.dtype == np.float32 and y16.style.dtype == np.float32
    assert np.abs(y16.y - y32).max() < 0.05 * np.abs(y32).max()


# --- the whole pipeline with an oracle network ------------------------------------------
class OracleNet(torch.nn.Module):
    """A perfect network for one label image.

    Its input carries pixel coordinates (row + 1, col + 1; 0 = padding), so each
    tile tells the oracle where it is, and whether it was flipped; it answers
    with ``FLOW_SCALE * masks_to_flows(labels)`` (flow signs in the tile's own
    frame) and cellprob +5 inside cells, -5 outside.
    """

    def __init__(self, labels, diam_mean=17.0):
        super().__init__()
        self.config = ModelConfig(features=(8, 16), diam_mean=diam_mean)
        self.record = ModelRecord()  # no tuned thresholds, no size model
        self.flows = torch.from_numpy(FLOW_SCALE * masks_to_flows(labels))
        self.prob = torch.from_numpy(np.where(labels > 0, 5.0, -5.0).astype(np.float32))

    def forward(self, x):
        rows, cols = x[:, 0].round().long() - 1, x[:, 1].round().long() - 1
        inside = (rows >= 0) & (cols >= 0)
        r, c = rows.clamp(min=0), cols.clamp(min=0)
        y = torch.stack([self.flows[0][r, c], self.flows[1][r, c], self.prob[r, c]], 1)
        for ch, coord, dim in ((0, rows, 1), (1, cols, 2)):
            step = coord.diff(dim=dim)
            both = inside.narrow(dim, 1, step.shape[dim]) & inside.narrow(dim, 0, step.shape[dim])
            flipped = (step * both).sum(dim=(1, 2)) < 0
            y[flipped, ch] *= -1
        y[:, :2] *= inside[:, None]
        y[:, 2] = torch.where(inside, y[:, 2], torch.tensor(-5.0))
        return y, torch.ones(x.shape[0], 4)


@pytest.fixture(scope="module")
def oracle_case():
    labels = make_synthetic((150, 190), n_cells=30, diameter=17, kind="nuclei", seed=3).labels
    rows, cols = np.indices(labels.shape)
    coords = np.stack([rows + 1, cols + 1], -1).astype(np.float32)
    return labels, coords, OracleNet(labels)


@pytest.mark.parametrize("augment", [False, True])
def test_oracle_network_gives_back_the_labels(oracle_case, augment):
    labels, coords, oracle = oracle_case
    res = P.segment(coords, oracle, diameter=17.0, channels=(0, 1), normalize=False,
                    tile_size=48, tile_overlap=0.1, augment=augment, batch_size=5)
    np.testing.assert_allclose(res.flows, masks_to_flows(labels), atol=1e-5)
    np.testing.assert_allclose(res.cellprob, np.where(labels > 0, 5.0, -5.0), atol=1e-5)
    m = matching(labels, res.labels, thresholds=[0.9])[0]
    assert m.ap >= 0.99, m


# --- errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("image, knobs, match", [
    (np.full((20, 20), np.nan), {}, "NaN"),
    (np.zeros((0, 20)), {}, "empty"),
    (np.zeros(20), {}, r"\(H, W\)"),
    (np.zeros((2, 3, 20, 20)), {}, r"\(H, W\)"),
    (np.zeros((20, 20, 2)), {"channels": (5, None)}, "out of range"),
    (np.zeros((20, 20)), {"diameter": 0}, "diameter"),
    (np.zeros((20, 20)), {"diameter": -3.0}, "diameter"),
    (np.zeros((20, 20)), {"diameter": float("nan")}, "diameter"),
    (np.zeros((20, 20)), {"tile_size": 40}, "tile_size"),
    (np.zeros((20, 20)), {"batch_size": 0}, "batch_size"),
    (np.zeros((20, 20)), {"tile_overlap": 1.5}, "tile_overlap"),
    (np.zeros((20, 20)), {"precision": "int8"}, "precision"),
])
def test_clear_errors(net, image, knobs, match):
    knobs = {"diameter": DIAM, **knobs}
    with pytest.raises(ValueError, match=match):
        P.segment(image, net, **knobs)


def test_run_net_rejects_bad_input(net):
    with pytest.raises(ValueError, match="C, H, W"):
        P.run_net(np.zeros((20, 20), np.float32), net)
    with pytest.raises(ValueError, match="finite"):
        P.run_net(np.full((2, 20, 20), np.inf, np.float32), net)


def test_input_recipe_of_the_model_is_the_default(monkeypatch, tmp_path):
    # a model remembers how its training images became network input; segment uses that
    from cellpose_nb import model as M

    net = _tiny_model()
    rgb = np.zeros((48, 48, 3), np.float32) + 0.9  # light background ...
    rgb[10:22, 10:22] = (0.3, 0.1, 0.4)  # ... with a dark purple "nucleus"
    seen = []
    real = S.to_network_input
    monkeypatch.setattr(S, "to_network_input", lambda *a, **k: seen.append(k) or real(*a, **k))
    P.segment(rgb[..., 0], net, diameter=DIAM)  # no recipe: channel 0, no inversion
    assert (seen[-1]["channels"], seen[-1]["invert"]) == ((0, None), False)
    net.record = net.record.replace(input_recipe={"channels": ["gray", None], "invert": "auto"})
    M.save(net, tmp_path / "m")
    loaded = M.load(tmp_path / "m")
    assert loaded.record.input_recipe == {"channels": ["gray", None], "invert": "auto"}
    P.segment(rgb, loaded, diameter=DIAM)
    assert (seen[-1]["channels"], seen[-1]["invert"]) == (("gray", None), "auto")
    x = real(rgb, channels=("gray", None), invert="auto")
    assert x[0, 15, 15] > 0.9 and x[0, 40, 40] < 0.1  # nucleus bright after inversion
    P.segment(rgb, loaded, diameter=DIAM, channels=(2, None), invert=False)  # explicit wins
    assert (seen[-1]["channels"], seen[-1]["invert"]) == ((2, None), False)


def test_default_batch_size_is_small_on_the_cpu(net, monkeypatch):
    sizes = []
    hook = net.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    try:
        x = _smooth((2, 192, 160))
        default = P.run_net(x, net, tile_size=32)  # 8 x 7 = 56 tiles
        assert set(sizes[:-1]) == {P.BATCH_SIZE_CPU}
        sizes.clear()
        eight = P.run_net(x, net, tile_size=32, batch_size=P.BATCH_SIZE)
        assert sizes[0] == P.BATCH_SIZE
    finally:
        hook.remove()
    np.testing.assert_allclose(default.y, eight.y, atol=1e-5)  # same numbers either way


def test_shipped_model_finds_the_nuclei_of_a_sparse_field():
    """Two nuclei cover 0.3 % of DSB image e5aeb5b3577abbeb: with the fixed 1st-99th
    percentiles they come out ~45 times brighter than usual and the shipped model
    finds nothing; the sparse-aware normalisation finds both."""
    import tifffile

    from conftest import _dsb_label_files
    from cellpose_nb.model import load_pretrained

    mask_file = next((f for f in _dsb_label_files() if f.name.startswith("e5aeb5b3577abbeb")), None)
    if mask_file is None:
        pytest.skip("DSB image e5aeb5b3577abbeb not in this data folder")
    image = tifffile.imread(str(mask_file).replace("_masks", "_img"))
    truth = tifffile.imread(mask_file)
    model = load_pretrained("nuclei")
    found = P.segment(image, model, diameter=11.0)
    assert matching(truth, found.labels, thresholds=[0.5])[0].tp == truth.max() == 2
    from cellpose_nb.normalize import to_network_input
    plain = to_network_input(image, sparse_aware=False)
    missed = P.segment(plain[0], model, diameter=11.0, normalize=False, invert=False)
    assert matching(truth, missed.labels, thresholds=[0.5])[0].tp == 0


# --- signatures: data first, the old order for one release; SegmentConfig ---------------
def test_the_old_model_first_order_warns_and_gives_identical_output():
    net = _tiny_model()
    net.record = net.record.replace(size_model=P.SizeModel(np.zeros(16), np.zeros(16),
                                                           np.log(1.5), DIAM))
    x = to_network_input(_smooth((40, 52)))
    new = {"run_net": P.run_net(x, net, tile_size=32),
           "predict_flows": P.predict_flows(x, net, scale=1.3),
           "estimate_diameter": P.estimate_diameter(x, net)}
    with pytest.warns(DeprecationWarning, match=r"run_net\(x, model"):
        old_run = P.run_net(net, x, tile_size=32)
    with pytest.warns(DeprecationWarning, match=r"predict_flows\(x, model"):
        old_flows = P.predict_flows(net, x, scale=1.3)
    with pytest.warns(DeprecationWarning, match=r"estimate_diameter\(image, model"):
        old_diam = P.estimate_diameter(net, x)
    for a, b in zip((old_run, old_flows), (new["run_net"], new["predict_flows"])):
        for fa, fb in zip(a, b):
            np.testing.assert_array_equal(fa, fb)
    assert old_diam == new["estimate_diameter"]


def test_segment_config_and_keyword_knobs_agree(net):
    img = _smooth((40, 48))
    by_keywords = P.segment(img, net, diameter=DIAM, tile_size=32, augment=True, min_size=5)
    cfg = P.SegmentConfig(tile_size=32, augment=True, min_size=5)
    by_config = P.segment(img, net, diameter=DIAM, config=cfg)
    overridden = P.segment(img, net, diameter=DIAM, config=P.SegmentConfig(tile_size=64),
                           tile_size=32, augment=True, min_size=5)  # keywords win
    for other in (by_config, overridden):
        for fa, fb in zip(by_keywords, other):
            np.testing.assert_array_equal(fa, fb)
    many = P.segment_many([img], net, diameter=DIAM, config=cfg, progress=False)
    np.testing.assert_array_equal(many[0].labels, by_config.labels)


def test_segment_config_defaults_come_from_their_owners():
    from cellpose_nb import masks

    cfg = P.SegmentConfig()
    assert (cfg.tile_size, cfg.tile_overlap, cfg.min_size, cfg.precision) == (
        P.TILE_SIZE, P.TILE_OVERLAP, masks.MIN_SIZE, P.PRECISION)
    assert cfg.cellprob_threshold is None and cfg.flow_threshold is None and cfg.n_iter is None


@pytest.mark.parametrize("field, value", [
    ("normalize", "yes"), ("tile_size", 40), ("tile_size", 64.0), ("tile_overlap", 1.0),
    ("augment", 1), ("batch_size", 0), ("device", 3), ("precision", "int8"),
    ("cellprob_threshold", float("nan")), ("flow_threshold", -0.1), ("min_size", 2.5),
    ("n_iter", -1),
])
def test_segment_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        P.SegmentConfig(**{field: value})


def test_an_unknown_knob_lists_the_valid_ones(net):
    with pytest.raises(TypeError, match="augmnet.*valid: normalize, tile_size"):
        P.segment(_smooth((32, 32)), net, diameter=DIAM, augmnet=True)
    with pytest.raises(TypeError, match="augmnet"):
        P.segment_many([_smooth((32, 32))], net, diameter=DIAM, augmnet=True, progress=False)
    with pytest.raises(TypeError, match="SegmentConfig"):
        P.segment(_smooth((32, 32)), net, diameter=DIAM, config={"augment": True})


def test_a_one_channel_image_for_a_two_channel_model_gets_zeros_and_a_note():
    from cellpose_nb.model import CellposeUNet, ModelConfig

    torch.manual_seed(0)
    net = CellposeUNet(ModelConfig(features=(8, 16), diam_mean=10.0)).eval()
    net.record = net.record.replace(input_recipe={"channels": [0, 1], "invert": False})
    gray = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    res = P.segment(gray, net, diameter=10.0)
    assert len(res.notes) == 1 and "nuclear channel" in res.notes[0] and "zeros" in res.notes[0]
    with_zeros = P.segment(np.stack([gray, np.zeros_like(gray)], -1), net, diameter=10.0)
    np.testing.assert_array_equal(res.flows, with_zeros.flows)
    assert with_zeros.notes == ()
    with pytest.raises(ValueError, match=r"shape \(40, 48, 2\).*valid: 0 to 1"):
        P.segment(np.stack([gray, gray], -1), net, diameter=10.0, channels=(0, 3))

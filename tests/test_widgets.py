"""Tests for cellpose_nb.widgets, headless: controls are set from Python (``slider.value = ...``).

No browser and no kernel: ipywidgets 8 runs its observers without a front
end, which is exactly what a slider move does in Jupyter.  The real-browser
test is tests/test_browser.py.
"""

import io
import sys
import types

import matplotlib

matplotlib.use("Agg")  # tests only

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from cellpose_nb import widgets  # noqa: E402
from cellpose_nb.data import make_synthetic  # noqa: E402
from cellpose_nb.flows import heat_map, masks_to_flows  # noqa: E402
from cellpose_nb.masks import (  # noqa: E402
    cluster_endpoints,
    compute_masks,
    fill_holes_and_remove_small_masks,
    follow_flows,
    trace_points,
)
from cellpose_nb.metrics import matching  # noqa: E402
from cellpose_nb.threshold_cache import follow_with_min  # noqa: E402
from cellpose_nb.widgets import DiffusionPlayer, FlowExplorer, ThresholdExplorer  # noqa: E402


def noisy_prediction(labels, *, seed=0):
    """A deliberately bad prediction: noisy flows, and a cellprob whose noise
    punches holes into the cells' foreground at thresholds above ~0."""
    rng = np.random.default_rng(seed)
    fg = labels > 0
    flows = masks_to_flows(labels) + 0.9 * ndi.gaussian_filter(rng.standard_normal((2,) + labels.shape),
                                                               (0, 1, 1)) * fg
    cellprob = np.where(fg, 2.0, -2.0) + 9.0 * ndi.gaussian_filter(rng.standard_normal(labels.shape), 2)
    return flows.astype(np.float32), cellprob.astype(np.float32)


@pytest.fixture(scope="module")
def sample():
    return make_synthetic((256, 256), n_cells=45, diameter=30, seed=1)


@pytest.fixture(scope="module")
def prediction(sample):
    return noisy_prediction(sample.labels)


@pytest.fixture(scope="module")
def explorer(sample, prediction):
    return ThresholdExplorer(sample.image, *prediction, truth=sample.labels)


def _fg_pixels(ex):
    return int((ex.labels > 0).sum())


# ----------------------------------------------------------------------------- the cached pipeline
@pytest.mark.parametrize("cellprob_threshold", [-6.0, -2.0, 0.0, 1.0, 2.5])
@pytest.mark.parametrize("flow_threshold, min_size", [(0.4, 15), (0.0, 0), (1.0, 60)])
def test_cached_update_equals_compute_masks(explorer, prediction, cellprob_threshold, flow_threshold,
                                            min_size):
    got = explorer.compute(cellprob_threshold=cellprob_threshold, flow_threshold=flow_threshold,
                           min_size=min_size)
    want = compute_masks(*prediction, cellprob_threshold=cellprob_threshold,
                         flow_threshold=flow_threshold, min_size=min_size)
    assert np.array_equal(got, want)


def test_reusing_the_lowest_thresholds_paths_is_not_enough(explorer, prediction, sample):
    """Why paths that met masked-out pixels are followed again (class docstring):
    the flows masked at the lowest threshold carry pixels across the holes
    that the cellprob noise makes inside cells."""
    starts, ends, prob, _ = explorer._follow()
    sel = prob > 1.0
    reused = fill_holes_and_remove_small_masks(cluster_endpoints(ends[:, sel], starts[:, sel], (256, 256)),
                                               min_size=0)
    exact = compute_masks(*prediction, cellprob_threshold=1.0, flow_threshold=0, min_size=0)
    assert np.array_equal(explorer.compute(cellprob_threshold=1.0, flow_threshold=0, min_size=0), exact)
    ap_reused = matching(sample.labels, reused, thresholds=[0.5])[0].ap
    ap_exact = matching(sample.labels, exact, thresholds=[0.5])[0].ap
    assert ap_reused - ap_exact > 0.5


def test_follow_with_min_matches_the_library_and_a_slow_twin(prediction):
    flows, prob = prediction
    fg = prob > -1.0
    masked = flows * fg
    starts, ends, low = follow_with_min(masked, prob, fg, n_iter=60)
    ref = follow_flows(masked, fg, n_iter=60)
    assert np.array_equal(starts, ref.starts) and np.array_equal(ends, ref.ends)
    # slow twin on a few points: the lowest prob among the pixels weighed along the path
    pick = np.random.default_rng(0).choice(starts.shape[1], 40, replace=False)
    traj = trace_points(masked, starts[:, pick].T, n_iter=60)[:-1]  # positions where flows were read
    h, w = prob.shape
    for k, j in enumerate(pick):
        lowest = np.inf
        for y, x in traj[:, :, k].tolist():
            y0, x0 = min(h - 1, int(y)), min(w - 1, int(x))
            y1, x1 = min(h - 1, y0 + 1), min(w - 1, x0 + 1)
            weighed = [(y0, x0)]  # corners with a non-zero bilinear weight
            if x != int(x):
                weighed.append((y0, x1))
            if y != int(y):
                weighed.append((y1, x0))
                if x != int(x):
                    weighed.append((y1, x1))
            lowest = min(lowest, min(prob[c] for c in weighed))
        assert low[j] == lowest


def test_threshold_sliders_change_the_masks(sample, prediction):
    ex = ThresholdExplorer(sample.image, *prediction, truth=sample.labels)
    w = ex.widget
    c = ex.controls
    assert set(c) == {"cellprob_threshold", "flow_threshold", "min_size"}
    assert ex.n_cells > 0 and "cells" in ex.status.value and ex.view.value[:2] == b"\xff\xd8"
    # higher cellprob threshold -> fewer or equal foreground pixels
    c["flow_threshold"].value = 0.0
    c["min_size"].value = 0
    fg = []
    for t in (-3.0, -1.0, 0.0, 1.0, 3.0):
        c["cellprob_threshold"].value = t
        assert ex.params["cellprob_threshold"] == t
        fg.append(_fg_pixels(ex))
    assert all(a >= b for a, b in zip(fg, fg[1:])) and fg[0] > fg[-1]
    # a tiny flow threshold removes cells; off keeps them
    c["cellprob_threshold"].value = 0.0
    c["min_size"].value = 15
    off = ex.n_cells
    view_before, status_before = ex.view.value, ex.status.value
    c["flow_threshold"].value = 0.05
    assert ex.n_cells < off
    assert ex.view.value != view_before and ex.status.value != status_before
    assert np.array_equal(ex.labels, compute_masks(*prediction, cellprob_threshold=0.0,
                                                   flow_threshold=0.05, min_size=15))
    # a large min_size removes cells
    c["flow_threshold"].value = 0.0
    small = ex.n_cells
    c["min_size"].value = 400
    assert ex.n_cells < small
    assert np.array_equal(ex.labels, compute_masks(*prediction, cellprob_threshold=0.0,
                                                   flow_threshold=0.0, min_size=400))
    assert w is ex.widget


def test_threshold_ap_with_perfect_flows(sample):
    truth = sample.labels
    ex = ThresholdExplorer(sample.image, masks_to_flows(truth), np.where(truth > 0, 5.0, -5.0), truth=truth)
    labels = ex.update()
    assert ex.n_cells == int(labels.max())
    assert ex.ap[0.5] >= 0.95 and ex.ap[0.75] >= 0.9
    assert ex.params == {"cellprob_threshold": 0.0, "flow_threshold": 0.4, "min_size": 15}


def test_threshold_update_without_truth_and_from_segmentation(sample, prediction):
    seg = types.SimpleNamespace(flows=prediction[0], cellprob=prediction[1], labels=None, style=None,
                                diameter=30.0)
    ex = ThresholdExplorer.from_segmentation(sample.image, seg, cellprob_range=(-1.0, 4.0))
    lab = ex.update(cellprob_threshold=0.5)
    assert ex.ap is None and ex.n_cells == lab.max()
    assert ex.params["cellprob_threshold"] == 0.5  # kept for the next update
    assert np.array_equal(ex.update(min_size=20), ex.compute(cellprob_threshold=0.5, min_size=20))
    with pytest.raises(ValueError, match="below the cached lowest"):
        ex.update(cellprob_threshold=-2.0)
    ex.precompute([1.5, 2.0])
    assert {1.5, 2.0} <= set(ex._clusterings) and ex._clusterings[2.0].errors is not None
    fig = ex.static(cellprob_threshold=1.0)
    assert isinstance(fig, Figure) and "cellprob 1" in fig.axes[0].get_title()


def test_threshold_bad_inputs(sample, prediction):
    with pytest.raises(ValueError, match="cellprob shape"):
        ThresholdExplorer(sample.image, prediction[0], prediction[1][:10])
    with pytest.raises(ValueError, match="flows shape"):
        ThresholdExplorer(sample.image[:10], *prediction)
    with pytest.raises(ValueError, match="view_format"):
        ThresholdExplorer(sample.image, *prediction, view_format="gif")


# ----------------------------------------------------------------------------- flow explorer
def test_flow_explorer_trajectory_ends_at_the_cell_centre(sample):
    ex = FlowExplorer(sample.image, labels=sample.labels)
    ex.widget
    cell = 7
    view = ex.view.value
    ex.controls["cell"].value = cell  # picks the cell and its pixel farthest from the centre
    assert ex.cell == cell and ex.labels[ex.pixel] == cell
    assert ex.view.value != view
    centre = np.array(ex.center_of(cell))
    assert np.hypot(*(ex.trajectory[-1] - centre)) < 2.0
    drawn = ex._artists["traj1"]  # the path drawn on the flow panel
    assert np.array_equal(drawn.get_xdata(), ex.trajectory[:, 1])
    assert np.array_equal(drawn.get_ydata(), ex.trajectory[:, 0])
    assert (ex.controls["row"].value, ex.controls["col"].value) == ex.pixel
    # picking a pixel with the sliders traces it
    r, c = np.argwhere(sample.labels == 3)[5]
    ex.controls["row"].value = int(r)
    ex.controls["col"].value = int(c)
    assert ex.pixel == (r, c)
    assert np.hypot(*(ex.trajectory[-1] - np.array(ex.center_of(3)))) < 2.0
    ex.controls["arrows"].value = True
    assert ex.arrows and ex._artists["quiver"].get_visible()


def _view_point(ex, panel, row, col):
    return ex.view_position(row, col, panel)


def test_flow_explorer_click_picks_the_pixel_under_it(sample):
    ex = FlowExplorer(sample.image, labels=sample.labels)
    ex.widget
    assert ex._click is not None  # ipyevents is installed: clicks reach Python
    assert ex._click.source is ex.view and "click" in ex._click.watched_events
    png = Image.open(io.BytesIO(ex.view.value))
    assert png.size == (round(ex._fig.get_figwidth() * widgets.VIEW_DPI),
                        round(ex._fig.get_figheight() * widgets.VIEW_DPI))
    r, c = (int(v) for v in np.argwhere(sample.labels == 3)[5])
    x, y = _view_point(ex, 0, r, c)
    view = ex.view.value
    ex._on_click({"type": "click", "dataX": x + 0.2, "dataY": y - 0.3})  # within the pixel
    assert ex.pixel == (r, c) and ex.cell == 3
    assert ex.controls["cell"].value == 3 and (ex.controls["row"].value, ex.controls["col"].value) == (r, c)
    assert np.hypot(*(ex.trajectory[-1] - np.array(ex.center_of(3)))) < 2.0
    assert ex.view.value != view
    # independent of the coordinate mapping: the drawn start of the path (a yellow
    # dot) is where view_position says the pixel is, on every panel
    rgb = np.asarray(Image.open(io.BytesIO(ex.view.value)).convert("RGB"), dtype=int)
    for panel in range(3):
        px, py = (int(round(v)) for v in _view_point(ex, panel, r, c))
        red, green, blue = rgb[py, px]
        assert red > 180 and green > 180 and blue < 110, (panel, rgb[py, px])
    # the same pixel on the flow panel; then one in the close-up (zoomed on cell 3)
    ex.pick_pixel(0, 0)
    assert ex.pick_at(*_view_point(ex, 1, r, c)) == (r, c)
    r2, c2 = (int(v) for v in np.argwhere(sample.labels == 3)[-1])
    assert ex.pick_at(*_view_point(ex, 2, r2, c2)) == (r2, c2) and ex.cell == 3
    # background pixel: traced, no cell; outside every panel: nothing changes
    rb, cb = (int(v) for v in np.argwhere(sample.labels == 0)[0])
    assert ex.pick_at(*_view_point(ex, 0, rb, cb)) == (rb, cb) and ex.cell == 0
    state = (ex.pixel, ex.cell, ex.view.value)
    assert ex.pick_at(1, 1) is None
    ex._on_click({"type": "click"})  # no position: ignored
    assert (ex.pixel, ex.cell, ex.view.value) == state


def test_flow_explorer_without_ipyevents_keeps_the_controls(sample, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipyevents", None)
    ex = FlowExplorer(sample.image, labels=sample.labels)
    ex.widget
    assert ex._click is None
    assert any("pip install ipyevents" in getattr(ch, "value", "") for ch in ex.widget.children)
    r, c = (int(v) for v in np.argwhere(sample.labels == 2)[0])
    assert ex.pick_at(*_view_point(ex, 0, r, c)) == (r, c)  # pick_at itself still works


def test_flow_explorer_from_a_prediction(sample, prediction):
    flows, prob = prediction
    seg = types.SimpleNamespace(flows=flows, cellprob=prob, labels=None)
    ex = FlowExplorer.from_segmentation(sample.image, seg)
    assert np.array_equal(ex.labels, compute_masks(flows, prob))
    assert (ex.flows[:, prob <= 0] == 0).all()  # masked as compute_masks does
    traj = ex.pick_pixel(10, 20)
    assert traj.shape == (201, 2) and tuple(traj[0]) == (10, 20)
    fig = ex.static(cell=int(ex.cell_ids[0]), arrows=True)
    assert len(fig.axes) == 3 and fig.axes[2].get_title().startswith(f"cell {ex.cell_ids[0]}")
    with pytest.raises(ValueError, match="outside"):
        ex.pick_pixel(-1, 0)
    with pytest.raises(ValueError, match="give labels"):
        FlowExplorer(sample.image)


# ----------------------------------------------------------------------------- diffusion
def test_diffusion_player_last_step_is_heat_map(sample):
    lab = sample.labels
    cell = 4
    player = DiffusionPlayer(lab, cell)
    mask = lab == cell
    assert np.allclose(player.heat(-1)[mask], heat_map(lab)[mask])
    assert (player.heat(-1)[~mask] == 0).all()
    assert np.allclose(player.gradient(-1)[:, mask], masks_to_flows(lab)[:, mask], atol=1e-5)
    assert player.iterations[0] == 0 and np.all(np.diff(player.iterations) > 0)
    assert player.n_steps <= widgets.MAX_SNAPSHOTS + 2
    # heat only spreads: more pixels are warm at later steps
    warm = [(player.snapshots[k] > 0).sum() for k in range(player.n_steps)]
    assert all(a <= b for a, b in zip(warm, warm[1:]))


def test_diffusion_player_widget_steps(sample):
    player = DiffusionPlayer(sample.labels, 4, n_iter=30, every=3)
    assert player.iterations.tolist() == list(range(0, 31, 3))
    player.widget
    assert set(player.controls) == {"play", "step"}
    assert player.controls["play"].max == player.n_steps - 1
    before = player.view.value
    player.controls["step"].value = 2
    assert player.step == 2 and player.view.value != before
    assert "iteration 6 / 30" in player._ax.get_title()
    assert isinstance(player.static(step=0), Figure)
    with pytest.raises(ValueError, match="not in labels"):
        DiffusionPlayer(sample.labels, 10_000)


# ----------------------------------------------------------------------------- without widgets
def test_explorers_display_as_widgets(sample):
    ex = widgets.explore_flows(sample.image, labels=sample.labels)
    assert isinstance(ex, FlowExplorer)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_fallback_to_static_figures_without_ipywidgets(sample, prediction, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    with pytest.warns(UserWarning, match="ipywidgets"):
        fig = widgets.explore_thresholds(sample.image, *prediction, cellprob_range=(-1.0, 3.0))
    assert isinstance(fig, Figure)
    with pytest.warns(UserWarning, match="static figure"):
        assert isinstance(widgets.play_diffusion(sample.labels, 4, n_iter=10), Figure)
    ex = FlowExplorer(sample.image, labels=sample.labels)
    assert set(ex._repr_mimebundle_()) == {"image/png", "text/plain"}


def test_kernels_are_re_exported_from_the_numpy_layer():
    from cellpose_nb import diffusion, threshold_cache

    assert widgets.follow_with_min is threshold_cache.follow_with_min
    assert widgets.simulate_diffusion is diffusion.simulate_diffusion
    assert widgets.heat_gradient is diffusion.heat_gradient

"""The volume explorer: its three cuts as pixels, picking, partial redraws, bad input."""

import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from cellpose_nb import plot
from cellpose_nb.data.synthetic3d import make_synthetic_volume
from cellpose_nb.flows import flows_to_rgb
from cellpose_nb.flows3d import masks_to_flows_3d, object_centers_3d
from cellpose_nb.widgets import VolumeExplorer, explore_volume
from cellpose_nb.widgets.volume_explorer import HIGHLIGHT_COLOR

ANISO = 2.0


@pytest.fixture(scope="module")
def sample():
    return make_synthetic_volume((14, 56, 64), n_cells=6, diameter=22, anisotropy=ANISO, seed=3)


@pytest.fixture(scope="module")
def flows(sample):
    return masks_to_flows_3d(sample.labels)


@pytest.fixture
def ex(sample, flows):
    return VolumeExplorer(sample.image, sample.labels, flows, anisotropy=ANISO, channel_axis=-1)


def test_views_have_the_cut_shapes_and_z_is_stretched(sample):
    z, y, x = sample.labels.shape
    for aniso, rows in [(1.0, z), (ANISO, round(z * ANISO)), (2.5, round(z * 2.5))]:
        e = VolumeExplorer(sample.image[..., 0], sample.labels, anisotropy=aniso)
        assert e.view_xy().shape == (y, x, 3)
        assert e.view_xz().shape == (rows, x, 3)
        assert e.view_yz().shape == (rows, y, 3)
    # the stretched XZ view is the unstretched one with each row repeated
    e1 = VolumeExplorer(sample.image[..., 0], sample.labels, anisotropy=1.0)
    e2 = VolumeExplorer(sample.image[..., 0], sample.labels, anisotropy=ANISO)
    np.testing.assert_array_equal(e2.view_xz(overlay="none")[::2], e1.view_xz(overlay="none"))
    np.testing.assert_array_equal(e2.view_xz(overlay="none")[1::2], e1.view_xz(overlay="none"))


def test_views_cut_the_volume_where_asked(ex, sample):
    lab = sample.labels
    # with translucent colours, exactly the labelled voxels of each cut differ from "none"
    for name, cut in [("xy", lab[5]), ("xz", lab[:, 20][ex._z_rows]), ("yz", lab[:, :, 30][ex._z_rows])]:
        index = {"xy": 5, "xz": 20, "yz": 30}[name]
        plain = ex.view(name, index, overlay="none")
        coloured = ex.view(name, index, overlay="colours")
        np.testing.assert_array_equal(np.abs(coloured - plain).max(axis=-1) > 1e-6, cut > 0)


def test_outlines_are_drawn_in_the_label_colours(ex, sample):
    cut = sample.labels[6]
    rgb = ex.view_xy(6, overlay="outlines")
    edge = plot.outline_mask(cut)
    assert edge.any()
    colors = plot.label_colors(int(sample.labels.max()))
    np.testing.assert_allclose(rgb[edge], colors[cut[edge]])
    np.testing.assert_array_equal(rgb[~edge], ex.view_xy(6, overlay="none")[~edge])


def test_flow_background_shows_the_in_plane_components(ex, flows):
    xy = ex.view_xy(4, overlay="none", background="flows")
    np.testing.assert_allclose(xy, flows_to_rgb(flows[1:, 4]))
    xz = ex.view_xz(10, overlay="none", background="flows")
    np.testing.assert_allclose(xz, flows_to_rgb(flows[[0, 2]][:, :, 10][:, ex._z_rows]))
    yz = ex.view_yz(12, overlay="none", background="flows")
    np.testing.assert_allclose(yz, flows_to_rgb(flows[[0, 1]][:, :, :, 12][:, ex._z_rows]))
    assert not np.allclose(xy, ex.view_xy(4, overlay="none"))


@pytest.mark.parametrize("view", ["xy", "xz", "yz"])
def test_pick_selects_the_cell_and_moves_the_cuts_through_its_centre(ex, sample, view):
    lab = sample.labels
    ids, centers = object_centers_3d(lab)
    # a pixel of the view that lies on a cell other than the one at the centre
    rows, cols = np.nonzero(ex._planes(view, ex.position[("xy", "xz", "yz").index(view)])[1]
                            [ex._z_rows if view != "xy" else slice(None)])
    k = len(rows) // 3
    voxel = ex.voxel_at(view, rows[k], cols[k])
    want = int(lab[voxel])
    assert want > 0
    assert ex.pick(view, rows[k], cols[k]) == want
    assert ex.cell == want
    centre = centers[list(ids).index(want)]
    assert ex.position == centre.tolist()
    z, y, x = ex.position
    # the picked cell's voxels are highlighted in all three views, and only those
    for name, cut in [("xy", lab[z]), ("xz", lab[:, y][ex._z_rows]), ("yz", lab[:, :, x][ex._z_rows])]:
        sel = cut == want
        assert sel.any(), name  # every cut passes through the cell
        lit, unlit = ex.view(name), ex.view(name, cell=0)
        changed = np.abs(lit - unlit).max(axis=-1) > 1e-6
        assert changed[sel].mean() > 0.95 and not changed[~sel].any(), name
        # pulled towards the highlight colour
        d_before = np.abs(unlit[sel] - HIGHLIGHT_COLOR).sum()
        assert np.abs(lit[sel] - HIGHLIGHT_COLOR).sum() < 0.5 * d_before


def test_pick_on_the_background_clears_the_cell(ex, sample):
    ex.pick("xy", *np.argwhere(sample.labels[ex.position[0]] > 0)[0])
    assert ex.cell > 0
    z = ex.position[0]
    row, col = np.argwhere(sample.labels[z] == 0)[0]
    assert ex.pick("xy", row, col) == 0
    assert ex.cell == 0 and ex.position == [z, int(row), int(col)]


def test_a_stretched_row_maps_to_its_slice(ex):
    y = ex.position[1]
    for row in range(len(ex._z_rows)):
        assert ex.voxel_at("xz", row, 3) == (int(row // ANISO), y, 3)
    with pytest.raises(ValueError, match="outside the xz view"):
        ex.voxel_at("xz", len(ex._z_rows), 0)


def test_slider_moves_redraw_only_the_changed_view(ex):
    ex.widget  # noqa: B018 - builds the widget
    before = {k: v.value for k, v in ex.views.items()}
    ex.controls["xy"].value = (ex.position[0] + 3) % ex.shape[0]  # the z slider
    after = {k: v.value for k, v in ex.views.items()}
    assert after["xy"] != before["xy"]
    assert after["xz"] is before["xz"] and after["yz"] is before["yz"]
    assert ex.set_position(y=(ex.position[1] + 5) % ex.shape[1]) == ["xz"]
    assert ex.views["yz"].value is after["yz"] and ex.views["xz"].value != after["xz"]


def test_click_on_a_view_picks_and_updates_the_controls(ex, sample):
    ex.widget  # noqa: B018
    assert len(ex._clicks) == 3  # ipyevents is installed: clicks reach Python
    z = ex.position[0]
    row, col = np.argwhere(sample.labels[z] > 0)[0]
    want = int(sample.labels[z, row, col])
    s = ex._scale
    ex._on_click("xy", {"dataX": col * s + s // 2, "dataY": row * s + s // 2})
    assert ex.cell == want
    assert [ex.controls[k].value for k in ("xy", "xz", "yz")] == ex.position
    assert str(want) in ex.controls["cell"].value
    ex._on_click("xy", {"dataX": 10**6, "dataY": 0})  # outside: nothing changes, no error
    assert ex.cell == want


def test_display_toggles_redraw_all_views(ex):
    ex.widget  # noqa: B018
    before = {k: v.value for k, v in ex.views.items()}
    ex.controls["background"].value = "flows"
    assert ex.background == "flows"
    assert all(ex.views[k].value != before[k] for k in before)
    ex.set_display(overlay="none")
    assert ex.controls["overlay"].value == "none"


def test_static_figure_and_fallback(ex, sample, monkeypatch):
    fig = ex.static(z=2, y=3, x=4, overlay="colours")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert [a.get_title() for a in fig.axes] == ["XY at z=2", "XZ at y=3", "YZ at x=4"]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), ex.view_xz(3, overlay="colours"))
    assert isinstance(explore_volume(sample.image, sample.labels, channel_axis=-1), VolumeExplorer)
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.warns(UserWarning, match="static figure"):
        assert isinstance(explore_volume(sample.image, sample.labels, channel_axis=-1), Figure)


def test_from_a_3d_or_a_stitched_segmentation(sample, flows):
    from types import SimpleNamespace

    seg3d = SimpleNamespace(labels=sample.labels, flows=flows)
    e = VolumeExplorer.from_segmentation(sample.image, seg3d, anisotropy=ANISO, channel_axis=-1)
    np.testing.assert_array_equal(e.flows, flows)
    stitched = SimpleNamespace(labels=sample.labels, flows=flows[1:])  # 2D flows per slice
    e = VolumeExplorer.from_segmentation(sample.image, stitched, channel_axis=-1)
    assert e.flows.shape == flows.shape and not e.flows[0].any()
    np.testing.assert_array_equal(e.flows[1:], flows[1:])


def test_without_labels_or_flows(sample):
    e = VolumeExplorer(sample.image, channel_axis=3)
    assert e.pick("xy", 0, 0) == 0
    np.testing.assert_array_equal(e.view_xy(overlay="colours"), e.view_xy(overlay="none"))
    with pytest.raises(ValueError, match="needs flows"):
        e.set_display(background="flows")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"volume": np.zeros((4, 5))}, ValueError, r"\(Z, Y, X\).*\(4, 5\)"),
        ({"volume": np.zeros((2, 4, 5, 6))}, ValueError, r"got shape \(2, 4, 5, 6\)"),
        ({"volume": np.zeros((4, 5, 6)), "channel_axis": 0}, ValueError, "must be 4-D"),
        ({"volume": np.full((4, 5, 6), np.nan)}, ValueError, "NaN"),
        ({"volume": np.zeros((4, 5, 6), complex)}, TypeError, "complex"),
        ({"volume": np.zeros((0, 5, 6))}, ValueError, "empty"),
        ({"labels": np.zeros((4, 5, 7), int)}, ValueError, r"labels shape \(4, 5, 7\).*\(4, 5, 6\)"),
        ({"flows": np.zeros((2, 4, 5, 6))}, ValueError, r"flows must have shape \(3, 4, 5, 6\)"),
        ({"flows": np.full((3, 4, 5, 6), np.inf)}, ValueError, "flows contain NaN or inf"),
        ({"anisotropy": 0.0}, ValueError, "anisotropy must be finite and > 0; got 0.0"),
        ({"anisotropy": float("nan")}, ValueError, "anisotropy"),
        ({"anisotropy": "tall"}, TypeError, "anisotropy must be a number"),
    ],
)
def test_bad_input_is_named(kwargs, error, match):
    args = {"volume": np.zeros((4, 5, 6), np.float32), **kwargs}
    with pytest.raises(error, match=match):
        VolumeExplorer(args.pop("volume"), **args)


def test_bad_view_arguments(ex):
    with pytest.raises(ValueError, match="view must be one of"):
        ex.view("zz")
    with pytest.raises(ValueError, match=r"z=99 is outside the volume of shape \(14, 56, 64\)"):
        ex.view_xy(99)
    with pytest.raises(ValueError, match="overlay must be one of"):
        ex.set_display(overlay="glow")

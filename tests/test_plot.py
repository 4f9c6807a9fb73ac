"""Tests for cellpose_nb.plot: every function draws on an Agg figure and returns its artists."""

import matplotlib

matplotlib.use("Agg")  # tests only: the library never picks a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from cellpose_nb import plot  # noqa: E402
from cellpose_nb.data import make_synthetic  # noqa: E402
from cellpose_nb.flows import masks_to_flows  # noqa: E402
from cellpose_nb.masks import trace_points  # noqa: E402
from cellpose_nb.metrics import matching  # noqa: E402


@pytest.fixture(scope="module")
def sample():
    return make_synthetic((96, 96), n_cells=8, diameter=24, seed=2)


@pytest.fixture
def ax():
    return Figure().subplots()


def test_image_to_rgb_gray_and_two_channels(sample):
    gray = plot.image_to_rgb(sample.image[..., 0])
    assert gray.shape == (96, 96, 3) and gray.dtype == np.float32
    assert gray.min() == 0.0 and gray.max() == 1.0
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    two = plot.image_to_rgb(sample.image)
    assert np.all(two[..., 0] == 0)  # cytoplasm green, nuclei blue
    assert np.allclose(two[..., 1], gray[..., 1])
    first = plot.image_to_rgb(np.moveaxis(sample.image, -1, 0), channel_axis=0)
    assert np.array_equal(first, two)


def test_label_colors_seeded_and_stable():
    a, b = plot.label_colors(10, seed=3), plot.label_colors(10, seed=3)
    assert np.array_equal(a, b) and a.shape == (11, 3)
    assert np.array_equal(plot.label_colors(50, seed=3)[:11], a)  # colour of k does not depend on n
    assert not np.array_equal(plot.label_colors(10, seed=4), a)
    assert (a[0] == 0).all() and (a[1:].max(axis=1) >= 0.75).all()  # bright colours on black


def test_outline_mask_is_find_boundaries_inner(sample):
    lab = sample.labels
    ref = find_boundaries(np.pad(lab, 1), mode="inner")[1:-1, 1:-1] & (lab > 0)
    assert np.array_equal(plot.outline_mask(lab), ref)
    # objects touching the image border are closed there
    assert plot.outline_mask(np.ones((4, 4), int)).sum() == 12


def test_show_image(sample, ax):
    im = plot.show_image(sample.image[..., 0], ax=ax, title="t")
    assert im.get_array().shape == (96, 96) and im.get_cmap().name == "gray"
    assert ax.get_title() == "t"
    im2 = plot.show_image(sample.image, ax=Figure().subplots())
    assert im2.get_array().shape == (96, 96, 3)


def test_overlay_of_empty_labels_is_the_image(sample, ax):
    im = plot.overlay_labels(sample.image, np.zeros((96, 96), int), ax=ax)
    assert np.array_equal(im.get_array(), plot.image_to_rgb(sample.image))


def test_overlay_colours_objects_only(sample, ax):
    rgb = plot.image_to_rgb(sample.image)
    im = plot.overlay_labels(sample.image, sample.labels, ax=ax, alpha=0.5, outlines=False)
    out = np.asarray(im.get_array())
    bg = sample.labels == 0
    assert np.array_equal(out[bg], rgb[bg])
    colors = plot.label_colors(int(sample.labels.max()))
    fg = ~bg
    assert np.allclose(out[fg], 0.5 * rgb[fg] + 0.5 * colors[sample.labels[fg]], atol=1e-6)
    edges = plot.outline_mask(sample.labels)
    with_outlines = plot.overlay_rgb(rgb, sample.labels, alpha=0.5)
    assert np.allclose(with_outlines[edges], colors[sample.labels[edges]])
    with pytest.raises(ValueError, match="shape"):
        plot.overlay_rgb(rgb[:10], sample.labels)


def test_show_labels(sample, ax):
    im = plot.show_labels(sample.labels, ax=ax)
    arr = np.asarray(im.get_array())
    assert (arr[sample.labels == 0] == 0).all() and (arr[sample.labels > 0].max(axis=-1) > 0).all()


def test_show_flows_colour_and_arrows(ax):
    lab = np.zeros((32, 32), int)
    lab[4:28, 4:28] = 1
    flows = masks_to_flows(lab)
    image, quiver = plot.show_flows(flows, ax=ax, arrows=True, step=4)
    assert image.get_array().shape == (32, 32, 3)
    assert (np.asarray(image.get_array())[lab == 0] == 0).all()
    assert quiver.N == 36  # 6 x 6 grid points (rows/cols 2, 6, ..., 22+) inside the square
    # a grid point on the upper half points down (positive d_row = V)
    x, y = quiver.X, quiver.Y
    up = (y < 10) & (np.abs(x - 16) < 3)
    assert (quiver.V[up] > 0.9).all()
    assert len(plot.show_flows(flows, ax=Figure().subplots())) == 1


def test_show_trajectories_ends_at_centre(ax):
    lab = np.zeros((32, 32), int)
    lab[4:28, 4:28] = 1
    traj = trace_points(masks_to_flows(lab), [(5, 5), (26, 20)])
    artists = plot.show_trajectories(np.zeros((32, 32)), traj, ax=ax)
    assert len(artists) == 1 + 2 + 2
    ends = artists[-1]
    assert np.allclose(ends.get_xdata(), 15.5, atol=1.5) and np.allclose(ends.get_ydata(), 15.5, atol=1.5)
    assert len(plot.show_trajectories(None, traj, ax=Figure().subplots())) == 4
    with pytest.raises(ValueError, match="trajectories"):
        plot.show_trajectories(None, traj[:, 0], ax=ax)


def test_show_errors_colours_and_counts_agree_with_matching(sample, ax):
    true = sample.labels
    pred = true.copy()
    pred[true == 1] = 0  # a miss (FN)
    pred[true == 2] = 0
    pred[(true == 0) & (np.arange(96)[:, None] < 5) & (np.arange(96) < 5)] = 99  # a false positive
    tp, fp, fn = plot.error_outlines(true, pred)
    m = matching(true, pred, thresholds=[0.5])[0]
    assert (len(tp), len(fp), len(fn)) == (m.tp, m.fp, m.fn) == (true.max() - 2, 1, 2)
    rgb = np.asarray(plot.show_errors(true, pred, ax=ax, image=sample.image).get_array())
    for ids, lab, colour in ((fn, true, plot.FN_COLOR), (fp, pred, plot.FP_COLOR), (tp, pred, plot.TP_COLOR)):
        edge = plot.outline_mask(np.where(np.isin(lab, ids), lab, 0))
        assert np.allclose(rgb[edge], colour)
    assert "2 FN" in ax.get_title()


def test_error_outlines_below_half_uses_one_to_one_matching():
    true = np.zeros((10, 10), int)
    true[:, :5] = 1
    pred = np.zeros((10, 10), int)
    pred[:, :3] = 1
    pred[:, 3:6] = 2  # both overlap true 1; only one may match
    tp, fp, fn = plot.error_outlines(true, pred, threshold=0.2)
    assert tp.tolist() == [1] and fp.tolist() == [2] and fn.tolist() == []


def test_plot_ap_curve(ax):
    lines = plot.plot_ap_curve([0.5, 0.75, 0.9], [0.9, 0.6, 0.2], ax=ax, label="model")
    assert len(lines) == 1 and lines[0].get_ydata().tolist() == [0.9, 0.6, 0.2]
    assert ax.get_legend() is not None and ax.get_xlabel() == "IoU threshold"
    with pytest.raises(ValueError, match="thresholds"):
        plot.plot_ap_curve([0.5, 0.75], [0.9, 0.6, 0.2], ax=Figure().subplots())


def test_ax_none_makes_a_figure(sample):
    try:
        im = plot.show_image(sample.image)
        assert im.axes.figure is plt.gcf()
    finally:
        plt.close("all")


def test_flow_key_colours_are_the_flow_colours_of_the_directions():
    from cellpose_nb.flows import flows_to_rgb

    radius = 10
    key = plot.flow_key_rgb(radius)
    # right of the centre: the colour of a flow (d_row, d_col) = (0, 1); above: (-1, 0)
    for (dr, dc), pixel in (((0.0, 1.0), key[radius, 2 * radius]), ((-1.0, 0.0), key[0, radius])):
        expected = flows_to_rgb(np.array([dr, dc]).reshape(2, 1, 1))[0, 0]
        assert np.allclose(pixel, expected), (dr, dc, pixel, expected)
    assert not key[0, 0].any() and not key[radius, radius].any()  # outside the disc, centre: black
    assert len({tuple(np.round(key[radius + r, radius + c], 3)) for r, c in ((0, 5), (5, 0), (0, -5), (-5, 0))}) == 4


def test_show_flow_key_fills_or_insets(ax):
    full = plot.show_flow_key(ax, title="key")
    assert full.axes is ax and ax.get_title() == "key"
    parent = Figure().subplots()
    small = plot.show_flow_key(parent, inset=True)
    assert small.axes in parent.child_axes

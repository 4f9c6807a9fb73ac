"""Interactive explorers: flows, mask thresholds, heat diffusion.

Three explorers, each a plain Python object with

* pure methods that compute what is shown (``update``, ``pick_pixel``,
  ``heat``...), usable in scripts and tests without any widget;
* ``static(...)``: the same picture as a matplotlib figure for given
  parameter values (for nbviewer, or when ipywidgets is not installed);
* ``widget``: the ipywidgets controls and view, built on first use.  An
  explorer displays itself as its widget in Jupyter.

ipywidgets is imported here only, and lazily: ``explore_flows``,
``explore_thresholds`` and ``play_diffusion`` fall back to the static figure
(with a warning) when it cannot be imported.

Everything expensive is computed once and cached; a slider move only redoes
what depends on the moved value (see :class:`ThresholdExplorer`).  The views
are images (``ipywidgets.Image``, PNG or JPEG) whose bytes are replaced on
each change, so they work in every Jupyter front end without a matplotlib
widget backend (ipympl).  Clicks on the flow explorer's figure reach Python
through ``ipyevents`` (a small widget library for mouse events on any
widget); without it, pixels are picked with the sliders (or ``pick_pixel``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage as ndi

from cellpose_nb import plot
from cellpose_nb.flows import check_labels, flows_to_rgb, masks_to_flows, object_centers
from cellpose_nb.masks import (
    MAX_SIZE_FRACTION,
    N_ITER,
    cluster_endpoints,
    compute_masks,
    fill_holes_and_remove_small_masks,
    flow_errors,
    follow_flows,
    _corners,  # the library's bilinear corners and weights
    _interp,  # the library's bilinear step, so that follow_with_min takes the same path
    renumber,
    trace_points,
)
from cellpose_nb.metrics import matching

__all__ = [
    "FlowExplorer",
    "ThresholdExplorer",
    "DiffusionPlayer",
    "explore_flows",
    "explore_thresholds",
    "play_diffusion",
    "simulate_diffusion",
    "heat_gradient",
    "hole_pixels",
    "follow_with_min",
]

#: Slider ranges and steps of the threshold explorer (Cellpose's GUI uses similar ones).
CELLPROB_RANGE = (-6.0, 6.0)
CELLPROB_STEP = 0.25
FLOW_THRESHOLD_RANGE = (0.0, 3.0)
FLOW_THRESHOLD_STEP = 0.05
MIN_SIZE_MAX = 500
#: Defaults of compute_masks, shown first.
DEFAULT_CELLPROB = 0.0
DEFAULT_FLOW_THRESHOLD = 0.4
DEFAULT_MIN_SIZE = 15
#: IoU thresholds of the AP shown by the threshold explorer.
AP_THRESHOLDS = (0.5, 0.75)
#: Clusterings (one per cellprob value) and results kept in the LRU caches.
CLUSTER_CACHE_SIZE = 64
RESULT_CACHE_SIZE = 32
#: Views smaller than this many pixels are enlarged by an integer factor.
MIN_VIEW_PIXELS = 512
#: DiffusionPlayer keeps at most about this many snapshots.
MAX_SNAPSHOTS = 100
#: Encoding of the threshold explorer's view: JPEG takes ~3 ms for 512x512,
#: PNG ~30-60 ms (noisy images compress badly); quality and PNG level.
VIEW_FORMATS = ("jpeg", "png")
JPEG_QUALITY = 90
PNG_LEVEL = 1


# ----------------------------------------------------------------------------- helpers
def _ipywidgets():
    """Import ipywidgets (lazily, so that the module imports without it)."""
    try:
        import ipywidgets
    except ImportError as exc:  # pragma: no cover - exercised only without ipywidgets
        raise ImportError(
            "the interactive explorers need ipywidgets (pip install ipywidgets); "
            "use the explorer's .static(...) figure instead"
        ) from exc
    return ipywidgets


def _static_fallback(explorer, **params):
    """The explorer if ipywidgets imports, else its static figure with a warning."""
    try:
        _ipywidgets()
    except ImportError as exc:
        warnings.warn(f"{exc}; showing a static figure", stacklevel=3)
        return explorer.static(**params)
    return explorer


def _encode_rgb(rgb, *, scale=1, fmt="jpeg"):
    """JPEG (fast; 4:4:4 colour, so that thin outlines keep their colour) or PNG
    bytes of an (H, W, 3) float image in [0, 1], enlarged ``scale`` times."""
    from PIL import Image

    arr = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if scale > 1:
        arr = np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(arr).save(buf, format="jpeg", quality=JPEG_QUALITY, subsampling=0)
    else:
        Image.fromarray(arr).save(buf, format="png", compress_level=PNG_LEVEL)
    return buf.getvalue()


#: Resolution of the figures shown in the widgets (their PNG pixels per inch).
VIEW_DPI = 80


def _ipyevents():
    """ipyevents if it imports, else None (clicks are then not available)."""
    try:
        import ipyevents
    except ImportError:
        return None
    return ipyevents


def _figure_png(fig, *, dpi=VIEW_DPI):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


@functools.cache
def _figure_class():
    """matplotlib Figure that shows itself as a PNG in Jupyter (also when pyplot
    was never imported, so no inline backend registered a display for figures)."""
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self):
            return _figure_png(self)

    return NotebookFigure


def _new_figure(n_cols, *, size=4.0):
    """A figure not managed by pyplot: the explorers own theirs, and a returned
    static figure is displayed once (not again by the inline backend)."""
    fig = _figure_class()(figsize=(size * n_cols, size), layout="constrained")
    return fig, fig.subplots(1, n_cols, squeeze=False)[0]


def _view_scale(shape):
    return max(1, MIN_VIEW_PIXELS // max(shape))


def _check_flows_prob(flows, cellprob, shape=None):
    f = np.asarray(flows, dtype=np.float32)
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flows must have shape (2, H, W) at unit scale; got {f.shape}")
    if shape is not None and f.shape[1:] != tuple(shape):
        raise ValueError(f"flows shape {f.shape[1:]} does not match image shape {tuple(shape)}")
    if cellprob is None:
        return f, None
    p = np.asarray(cellprob, dtype=np.float32)
    if p.shape != f.shape[1:]:
        raise ValueError(f"cellprob shape {p.shape} does not match flows shape {f.shape[1:]}")
    if not np.isfinite(p).all():
        raise ValueError("cellprob contains NaN or inf values")
    return f, p


def _image_shape(image, channel_axis):
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.shape
    axis = -1 if channel_axis is None else channel_axis
    return tuple(s for k, s in enumerate(arr.shape) if k != axis % arr.ndim)


# ============================================================================= flows
class FlowExplorer:
    """See where every pixel flows: the field, one cell, one pixel's trajectory.

    Three panels: the image with the cell outlines, the flow field as colour
    (angle -> hue; optional arrows) and a close-up of the picked cell with
    its arrows.  Picking a pixel traces its path through the field
    (:func:`cellpose_nb.masks.trace_points`) to its fixed point, drawn on
    every panel.  In the widget, click a pixel on any panel (with
    ``ipyevents``; :meth:`pick_at`), or pick a cell from the list or a pixel
    with the row and column sliders.

    Give either ``labels`` (the true flows are computed once, with
    :func:`cellpose_nb.flows.masks_to_flows`) or a prediction: ``flows``
    (unit scale) and ``cellprob`` (logits).  Like Cellpose, pixels follow the
    flows masked by ``cellprob > cellprob_threshold``; the cells to pick are
    ``labels`` if given, else :func:`cellpose_nb.masks.compute_masks` of the
    prediction (computed once).

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
    labels : ndarray (H, W) of int, optional
    flows : ndarray (2, H, W), optional
    cellprob : ndarray (H, W), optional
    n_iter : int
        Euler steps of a trajectory.
    cellprob_threshold : float
        Foreground of a prediction.
    channel_axis : int, optional
    arrow_step : int
        Arrow spacing on the full-field panel.

    Attributes
    ----------
    flows : ndarray (2, H, W) of float32
        The field the pixels follow (zero outside the foreground).
    labels : ndarray (H, W) of int32
    cell_ids, centers : ndarray
        Ids of the cells and their centre pixels (row, col).
    cell : int
        Picked cell (0: none).
    pixel : (int, int) or None
        Picked pixel.
    trajectory : ndarray (n_iter + 1, 2) or None
        Path of the picked pixel, (row, col) per step.

    Examples
    --------
    >>> from cellpose_nb.data import make_synthetic
    >>> s = make_synthetic((64, 64), n_cells=3, diameter=20, seed=0)
    >>> ex = FlowExplorer(s.image, labels=s.labels)
    >>> traj = ex.pick_pixel(*np.argwhere(s.labels == 1)[0])
    >>> traj.shape
    (201, 2)
    >>> fig = ex.static(cell=1, arrows=True)
    """

    def __init__(self, image, *, labels=None, flows=None, cellprob=None, n_iter=N_ITER,
                 cellprob_threshold=DEFAULT_CELLPROB, channel_axis=None, arrow_step=8):
        shape = _image_shape(image, channel_axis)
        if flows is None:
            if labels is None:
                raise ValueError("give labels (true flows are computed) or flows (a prediction)")
            lab = check_labels(labels)
            if lab.shape != shape:
                raise ValueError(f"labels shape {lab.shape} does not match image shape {shape}")
            field = masks_to_flows(lab)
            fg = lab > 0
        else:
            field, prob = _check_flows_prob(flows, cellprob, shape)
            fg = prob > cellprob_threshold if prob is not None else (field != 0).any(axis=0)
            if labels is None:
                prob = prob if prob is not None else np.where(fg, 1.0, -1.0)
                lab = compute_masks(field, prob, cellprob_threshold=cellprob_threshold, n_iter=n_iter)
            else:
                lab = check_labels(labels)
                if lab.shape != shape:
                    raise ValueError(f"labels shape {lab.shape} does not match image shape {shape}")
            field = field * fg  # as compute_masks: the flows are masked by the foreground
        self.image = image
        self.channel_axis = channel_axis
        self.flows = np.ascontiguousarray(field, dtype=np.float32)
        self.foreground = fg
        self.labels = lab
        self.n_iter = int(n_iter)
        self.arrow_step = int(arrow_step)
        self.cell_ids, self.centers = object_centers(lab)
        self._boxes = {i + 1: s for i, s in enumerate(ndi.find_objects(lab)) if s is not None}
        self._image_rgb = plot.image_to_rgb(image, channel_axis=channel_axis)
        self._outlines = plot.outline_mask(lab)
        self._flow_rgb = flows_to_rgb(self.flows)
        self.cell = 0
        self.pixel = None
        self.trajectory = None
        self.arrows = False
        self._fig = None
        self._widget = None

    @classmethod
    def from_segmentation(cls, image, segmentation, **kwargs):
        """Explore a prediction: any object with ``flows`` (unit scale), ``cellprob``, ``labels``."""
        return cls(image, flows=segmentation.flows, cellprob=segmentation.cellprob,
                   labels=getattr(segmentation, "labels", None), **kwargs)

    # ------------------------------------------------------------------ pure state changes
    def pick_pixel(self, row, col):
        """Trace the pixel (row, col); returns its trajectory (n_iter + 1, 2)."""
        h, w = self.labels.shape
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"pixel ({row}, {col}) is outside the image of shape {(h, w)}")
        self.pixel = (int(row), int(col))
        self.trajectory = trace_points(self.flows, [self.pixel], n_iter=self.n_iter)[:, :, 0]
        self._refresh()
        return self.trajectory

    def pick_cell(self, cell_id):
        """Highlight a cell (0: none) and trace its pixel farthest from its centre."""
        cell_id = int(cell_id)
        if cell_id and cell_id not in self._boxes:
            raise ValueError(f"cell {cell_id} is not in labels; ids are {self.cell_ids.tolist()[:10]}...")
        self.cell = cell_id
        if cell_id:
            with self._hold():
                self.pick_pixel(*self._far_pixel(cell_id))
        self._refresh()

    def _far_pixel(self, cell_id):
        """The cell's pixel farthest from its centre: the longest path to show."""
        pts = np.argwhere(self.labels == cell_id)
        far = pts[np.argmax(((pts - np.array(self.center_of(cell_id))) ** 2).sum(axis=1))]
        return int(far[0]), int(far[1])

    def pick_at(self, x, y):
        """Pick the image pixel under the point (x, y) of the widget's view.

        (x, y) are pixel coordinates of the view's PNG (x to the right, y down),
        as a click reports them.  The point may fall on any of the three panels
        (the close-up too); the pixel there is traced (:meth:`pick_pixel`) and
        its cell, if any, highlighted.  A point outside the panels' images
        changes nothing.

        Returns
        -------
        (int, int) or None
            The picked pixel (row, col), or None.
        """
        fig, axes = self._view_figure()
        fx = float(x) / (fig.get_figwidth() * VIEW_DPI)
        fy = 1.0 - float(y) / (fig.get_figheight() * VIEW_DPI)
        h, w = self.labels.shape
        for ax in axes:
            if not ax.get_position().contains(fx, fy):
                continue
            col, row = ax.transData.inverted().transform(fig.transFigure.transform((fx, fy)))
            r, c = int(np.floor(row + 0.5)), int(np.floor(col + 0.5))
            if not (0 <= r < h and 0 <= c < w):
                return None
            with self._hold():
                self.cell = int(self.labels[r, c])
                self.pick_pixel(r, c)
            self._refresh()
            return r, c
        return None

    def view_position(self, row, col, panel=0):
        """Where the image pixel (row, col) of a panel (0, 1, 2) lies in the view's
        PNG, as (x, y) pixels: the inverse of :meth:`pick_at` (for tests and for
        scripted clicks)."""
        fig, axes = self._view_figure()
        fx, fy = fig.transFigure.inverted().transform(axes[panel].transData.transform((col, row)))
        x = fx * fig.get_figwidth() * VIEW_DPI
        y = (1.0 - fy) * fig.get_figheight() * VIEW_DPI
        return float(x), float(y)

    def _view_figure(self):
        """The widget's figure and axes, laid out (built with the widget)."""
        if self._fig is None:
            self.widget  # noqa: B018 - builds the figure
        return self._fig, self._axes

    def _on_click(self, event):
        """ipyevents handler: ``dataX``/``dataY`` are the click in the PNG's pixels."""
        if event.get("dataX") is not None and event.get("dataY") is not None:
            self.pick_at(event["dataX"], event["dataY"])

    def set_arrows(self, on):
        """Show or hide the arrows of the full field."""
        self.arrows = bool(on)
        self._refresh()

    def center_of(self, cell_id):
        """Centre pixel (row, col) of a cell, where its flows converge."""
        return tuple(self.centers[np.searchsorted(self.cell_ids, cell_id)].tolist())

    # ------------------------------------------------------------------ drawing
    def _highlight(self, cell):
        rgba = np.zeros(self.labels.shape + (4,), np.float32)
        if cell:
            edge = plot.outline_mask(np.where(self.labels == cell, 1, 0))
            rgba[edge] = (1.0, 0.0, 0.0, 1.0)
        return rgba

    def _draw(self, axes, *, cell, pixel, arrows):
        """Draw the three panels; returns the artists to update."""
        a = {}
        img = np.where(self._outlines[..., None], 1.0, self._image_rgb)
        axes[0].imshow(img, interpolation="nearest")
        a["highlight"] = axes[0].imshow(self._highlight(cell), interpolation="nearest")
        axes[0].set_title("image and cells")
        axes[1].imshow(self._flow_rgb, interpolation="nearest")
        a["quiver"] = plot.quiver_flows(axes[1], self.flows, step=self.arrow_step)
        a["quiver"].set_visible(arrows)
        axes[1].set_title("flows (angle = hue)")
        axes[2].imshow(self._flow_rgb, interpolation="nearest")
        a["zoom_quiver"] = None
        for k, ax in enumerate(axes):
            (a[f"traj{k}"],) = ax.plot([], [], color="yellow", linewidth=1.2)
            (a[f"start{k}"],) = ax.plot([], [], "o", color="yellow", markersize=4)
            (a[f"end{k}"],) = ax.plot([], [], "x", color="red", markersize=7)
            plot._bare(ax)
        self._set_dynamic(axes, a, cell=cell, pixel=pixel, arrows=arrows)
        return a

    def _set_dynamic(self, axes, a, *, cell, pixel, arrows):
        a["highlight"].set_data(self._highlight(cell))
        a["quiver"].set_visible(arrows)
        traj = (trace_points(self.flows, [pixel], n_iter=self.n_iter)[:, :, 0]
                if pixel is not None else np.zeros((0, 2)))
        for k in range(3):
            a[f"traj{k}"].set_data(traj[:, 1], traj[:, 0])
            a[f"start{k}"].set_data(traj[:1, 1], traj[:1, 0])
            a[f"end{k}"].set_data(traj[-1:, 1], traj[-1:, 0])
        # close-up: the picked cell's box, else around the pixel, else everything
        h, w = self.labels.shape
        if cell:
            sl = self._boxes[cell]
            r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        elif pixel is not None:
            r0, r1, c0, c1 = pixel[0] - 16, pixel[0] + 16, pixel[1] - 16, pixel[1] + 16
        else:
            r0, r1, c0, c1 = 0, h, 0, w
        pad = max(2, (r1 - r0) // 8)
        r0, r1, c0, c1 = max(r0 - pad, 0), min(r1 + pad, h), max(c0 - pad, 0), min(c1 + pad, w)
        if a["zoom_quiver"] is not None:
            a["zoom_quiver"].remove()
        step = max(1, max(r1 - r0, c1 - c0) // 24)
        crop = np.zeros_like(self.flows)
        crop[:, r0:r1, c0:c1] = self.flows[:, r0:r1, c0:c1]
        a["zoom_quiver"] = plot.quiver_flows(axes[2], crop, step=step, color="white")
        axes[2].set_xlim(c0 - 0.5, c1 - 0.5)
        axes[2].set_ylim(r1 - 0.5, r0 - 0.5)
        title = f"cell {cell}" if cell else "close-up"
        if pixel is not None:
            end = traj[-1]
            title += f": ({pixel[0]}, {pixel[1]}) -> ({end[0]:.1f}, {end[1]:.1f})"
        axes[2].set_title(title, fontsize="small")

    def static(self, *, cell=None, pixel=None, arrows=None):
        """The explorer's figure for given choices (default: the current ones).

        Returns
        -------
        matplotlib.figure.Figure
        """
        cell = self.cell if cell is None else int(cell)
        if pixel is None and cell and cell != self.cell:
            pixel = self._far_pixel(cell)
        pixel = self.pixel if pixel is None else pixel
        fig, axes = _new_figure(3)
        self._draw(axes, cell=cell, pixel=pixel, arrows=self.arrows if arrows is None else arrows)
        return fig

    # ------------------------------------------------------------------ widget
    _holding = False

    @contextlib.contextmanager
    def _hold(self):
        """Change several things (or the controls) with one redraw at the end."""
        prev, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = prev

    def _refresh(self):
        if self._widget is None or self._holding:
            return
        self._sync_controls()
        self._set_dynamic(self._axes, self._artists, cell=self.cell, pixel=self.pixel, arrows=self.arrows)
        self.view.value = _figure_png(self._fig)

    def _sync_controls(self):
        c = self.controls
        with self._hold():
            c["arrows"].value = self.arrows
            c["cell"].value = self.cell
            if self.pixel is not None:
                c["row"].value, c["col"].value = self.pixel

    @property
    def widget(self):
        """The ipywidgets view (built on first use)."""
        if self._widget is None:
            self._widget = self._build_widget()
        return self._widget

    def _build_widget(self):
        w = _ipywidgets()
        h, wd = self.labels.shape
        row0, col0 = self.pixel if self.pixel is not None else (h // 2, wd // 2)
        self.controls = {
            "arrows": w.Checkbox(value=self.arrows, description="arrows"),
            "cell": w.Dropdown(options=[("none", 0)] + [(str(i), int(i)) for i in self.cell_ids],
                               value=self.cell, description="cell"),
            "row": w.IntSlider(value=row0, min=0, max=h - 1, description="row", continuous_update=False),
            "col": w.IntSlider(value=col0, min=0, max=wd - 1, description="col", continuous_update=False),
        }
        self._fig, self._axes = _new_figure(3)
        self._artists = self._draw(self._axes, cell=self.cell, pixel=self.pixel, arrows=self.arrows)
        self.view = w.Image(value=_figure_png(self._fig), format="png")
        self.view.add_class("cellpose-nb-flows")
        c = self.controls
        c["row"].add_class("cellpose-nb-row")
        c["col"].add_class("cellpose-nb-col")

        def on_arrows(change):
            if not self._holding:
                self.set_arrows(change.new)

        def on_cell(change):
            if not self._holding:
                self.pick_cell(change.new)

        def on_pixel(change):
            if not self._holding:
                self.pick_pixel(c["row"].value, c["col"].value)

        c["arrows"].observe(on_arrows, "value")
        c["cell"].observe(on_cell, "value")
        c["row"].observe(on_pixel, "value")
        c["col"].observe(on_pixel, "value")
        events = _ipyevents()
        if events is not None:
            self._click = events.Event(source=self.view, watched_events=["click"],
                                       prevent_default_action=True)
            self._click.on_dom_event(self._on_click)
            hint = "click any panel to trace that pixel, or use the controls"
        else:
            self._click = None
            hint = "pick with the controls (pip install ipyevents to pick by clicking)"
        box = w.VBox([w.HBox([c["cell"], c["arrows"]]), w.HBox([c["row"], c["col"]]),
                      w.HTML(f"<small>{hint}</small>"), self.view])
        box.add_class("cellpose-nb-flow-explorer")
        return box

    def _repr_mimebundle_(self, **kwargs):
        return _widget_or_png(self, **kwargs)


def _widget_or_png(explorer, **kwargs):
    try:
        return explorer.widget._repr_mimebundle_(**kwargs)
    except ImportError:
        import base64

        png = _figure_png(explorer.static())
        return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": repr(explorer)}


def explore_flows(image, **kwargs):
    """A :class:`FlowExplorer` (its static figure, with a warning, without ipywidgets)."""
    return _static_fallback(FlowExplorer(image, **kwargs))


# ============================================================================= thresholds
@numba.njit(cache=True, nogil=True, inline="always")
def _support_min(prob, y, x):
    """Lowest ``prob`` among the pixels that bilinear interpolation at (y, x) weighs."""
    y0, x0, y1, x1, wy, wx = _corners(prob.shape[0], prob.shape[1], y, x)
    m = prob[y0, x0]
    if wx != 0:
        m = min(m, prob[y0, x1])
    if wy != 0:
        m = min(m, prob[y1, x0])
        if wx != 0:
            m = min(m, prob[y1, x1])
    return m


@numba.njit(cache=True, parallel=True)
def _follow_min_kernel(flows, prob, pos, n_iter, minprob):
    """Follow the flows (as :func:`cellpose_nb.masks.follow_flows`) and record,
    for each point, the lowest ``prob`` of any pixel its interpolations weighed.

    ``flows`` is (H, W, 2) float32, ``pos`` (2, N) float32 (updated in place).
    The step is the library's (same ``_interp``, same clamping, same exact
    2-cycle exit: the remaining steps revisit positions already seen).
    """
    ly = np.float32(flows.shape[0] - 1)
    lx = np.float32(flows.shape[1] - 1)
    zero = np.float32(0.0)
    for j in numba.prange(pos.shape[1]):
        y = pos[0, j]
        x = pos[1, j]
        y1 = np.float32(-1.0)
        x1 = np.float32(-1.0)
        y2 = np.float32(-2.0)
        x2 = np.float32(-2.0)
        m = np.float32(np.inf)
        for t in range(n_iter):
            if y == y2 and x == x2:
                if (n_iter - t) % 2 == 1:
                    y = y1
                    x = x1
                break
            m = min(m, _support_min(prob, y, x))
            dy, dx = _interp(flows, y, x)
            y2 = y1
            x2 = x1
            y1 = y
            x1 = x
            y = min(ly, max(zero, y + dy))
            x = min(lx, max(zero, x + dx))
        pos[0, j] = y
        pos[1, j] = x
        minprob[j] = m


def follow_with_min(flows, prob, mask, *, n_iter=N_ITER):
    """Follow ``flows`` from the pixels of ``mask``; also the lowest ``prob`` met.

    The end points are those of :func:`cellpose_nb.masks.follow_flows`.  The
    extra output makes the threshold explorer exact: a point whose
    interpolations only weighed pixels with ``prob > t`` follows the same path
    when the flows are masked by ``prob > t``, so only the other points need
    following again at threshold ``t``.

    Returns
    -------
    starts : ndarray (2, N) of int64
    ends : ndarray (2, N) of float32
    minprob : ndarray (N,) of float32
        Lowest ``prob`` among the pixels weighed (with non-zero weight) by the
        bilinear interpolations of each point's path (``inf`` if ``n_iter=0``).

    Examples
    --------
    >>> flows = np.zeros((2, 5, 5), np.float32); flows[1] = 1.0   # all to the right
    >>> prob = np.arange(25, dtype=np.float32).reshape(5, 5)
    >>> mask = np.zeros((5, 5), bool); mask[2, 0] = True
    >>> starts, ends, low = follow_with_min(flows, prob, mask, n_iter=3)
    >>> ends[:, 0].tolist(), low.tolist()
    ([2.0, 3.0], [10.0])
    """
    f = np.asarray(flows, dtype=np.float32)
    p = np.ascontiguousarray(prob, dtype=np.float32)
    m = np.asarray(mask, bool)
    if f.shape != (2,) + p.shape or m.shape != p.shape:
        raise ValueError(f"flows {f.shape}, prob {p.shape} and mask {m.shape} do not match")
    starts = np.stack(np.nonzero(m)).astype(np.int64)
    pos = starts.astype(np.float32)
    minprob = np.empty(starts.shape[1], np.float32)
    _follow_min_kernel(np.ascontiguousarray(np.moveaxis(f, 0, -1)), p, pos, int(n_iter), minprob)
    return starts, pos, minprob


@numba.njit(cache=True)
def _hole_pixels_kernel(labels, boxes, out_lab, out_idx, write):
    """Pixels in the holes of each object (as binary_fill_holes: 4-connected background).

    Object ``k + 1`` has bounding box ``boxes[k]`` (r0, r1, c0, c1; r0 == r1
    when absent).  A pixel of its box that is not the object and cannot be
    reached from the box border through such pixels is in a hole.  Returns the
    number of hole pixels; when ``write``, their object and flat index go to
    ``out_lab`` and ``out_idx``.
    """
    w = labels.shape[1]
    n = 0
    for k in range(boxes.shape[0]):
        r0, r1, c0, c1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        ly, lx = r1 - r0, c1 - c0
        if ly < 3 or lx < 3:
            continue
        lab_id = k + 1
        seen = np.zeros((ly, lx), np.bool_)
        stack = np.empty(ly * lx, np.int64)
        top = 0
        for y in range(ly):
            for x in range(lx):
                border = y == 0 or y == ly - 1 or x == 0 or x == lx - 1
                if border and labels[r0 + y, c0 + x] != lab_id:
                    seen[y, x] = True
                    stack[top] = y * lx + x
                    top += 1
        while top > 0:
            top -= 1
            y = stack[top] // lx
            x = stack[top] % lx
            for d in range(4):
                yy = y + (d == 0) - (d == 1)
                xx = x + (d == 2) - (d == 3)
                if 0 <= yy < ly and 0 <= xx < lx and not seen[yy, xx] \
                        and labels[r0 + yy, c0 + xx] != lab_id:
                    seen[yy, xx] = True
                    stack[top] = yy * lx + xx
                    top += 1
        for y in range(ly):
            for x in range(lx):
                if not seen[y, x] and labels[r0 + y, c0 + x] != lab_id:
                    if write:
                        out_lab[n] = lab_id
                        out_idx[n] = (r0 + y) * w + c0 + x
                    n += 1
    return n


def hole_pixels(labels):
    """The holes of every object of a sequential label image.

    Parameters
    ----------
    labels : ndarray (H, W) of int
        Labels 1..N (ids need not all be present).

    Returns
    -------
    owner : ndarray (M,) of int32
        The object whose hole each pixel is in (a pixel inside nested
        objects appears once per enclosing object).
    index : ndarray (M,) of int64
        Flat index of the pixel.

    Examples
    --------
    >>> lab = np.zeros((5, 5), int); lab[:, :] = 1; lab[2, 2] = 0; lab[0, 0] = 2
    >>> [a.tolist() for a in hole_pixels(lab)]
    [[1], [12]]
    """
    lab = np.ascontiguousarray(check_labels(labels))
    slices = ndi.find_objects(lab)
    boxes = np.zeros((len(slices), 4), np.int64)
    for k, sl in enumerate(slices):
        if sl is not None:
            boxes[k] = (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)
    empty_l, empty_i = np.zeros(0, np.int32), np.zeros(0, np.int64)
    n = _hole_pixels_kernel(lab, boxes, empty_l, empty_i, False)
    owner, index = np.zeros(n, np.int32), np.zeros(n, np.int64)
    _hole_pixels_kernel(lab, boxes, owner, index, True)
    return owner, index


@dataclass(eq=False)
class _Clustering:
    """Everything about the masks at one cellprob threshold that no other knob changes."""

    labels: np.ndarray  # raw clustering, sequential 1..N
    areas: np.ndarray  # (N + 1,) pixel counts
    hole_owner: np.ndarray  # hole pixels: enclosing mask...
    hole_index: np.ndarray  # ...and flat index
    nested: np.ndarray  # (K, 2) pairs (outer, inner): inner mask lies in a hole of outer
    errors: np.ndarray | None = None  # (N,) flow errors, computed on first need


class ThresholdExplorer:
    """Move cellprob_threshold, flow_threshold and min_size; see masks, count and AP.

    Parameters
    ----------
    image : ndarray (H, W) or (H, W, C)
        Shown under the masks.
    flows : ndarray (2, H, W)
        Unit-scale flows (network output / ``FLOW_SCALE``).
    cellprob : ndarray (H, W)
        Cell-probability logits.
    truth : ndarray (H, W) of int, optional
        True labels: the AP at IoU 0.5 and 0.75 is shown.
    n_iter : int
        Euler steps.
    cellprob_range : (float, float)
        Range of the cellprob slider; the flows are followed once, from every
        pixel with ``cellprob > cellprob_range[0]``.
    cellprob_threshold, flow_threshold, min_size : initial values
        As :func:`cellpose_nb.masks.compute_masks` (``flow_threshold=0``
        turns the flow check off).
    max_size_fraction : float
        As :func:`cellpose_nb.masks.compute_masks`.
    channel_axis : int, optional
        Channel axis of a 3-D ``image``.
    view_format : {"jpeg", "png"}
        Encoding of the widget's view: JPEG is ~10x faster to encode.

    Notes
    -----
    What is cached, so that a slider move only redoes what depends on it:

    1. once: every pixel with ``cellprob > cellprob_range[0]`` follows the
       flows masked at that lowest threshold (:func:`follow_with_min`); its
       end point and the lowest cellprob its path weighed are stored;
    2. per cellprob value ``t`` (LRU cache): Cellpose masks the flows by
       ``cellprob > t`` before following them, so the cached paths that
       weighed a pixel with cellprob <= t are followed again with the flows
       masked at ``t`` (the others would not change); the end points of the
       pixels above ``t`` are clustered
       (:func:`cellpose_nb.masks.cluster_endpoints`), and each mask's area,
       holes and (when first needed) flow error are stored;
    3. flow_threshold and min_size then only select masks from these tables,
       fill the kept masks' holes and renumber: a few milliseconds.

    The result equals :func:`cellpose_nb.masks.compute_masks` exactly, at
    every threshold (``tests/test_widgets.py`` checks this).  Without step 2's
    re-following (the end points of the lowest threshold reused as they are)
    the masks can differ a lot where the foreground has holes inside cells: on
    the noisy 256x256 test prediction, AP@0.5 came out 0.82 instead of 0.79 at
    cellprob 0 (flow_threshold 0.4, min_size 15) and 1.0 instead of 0.19 at
    cellprob 1 (flow_threshold 0, min_size 0).

        Examples
    --------
    >>> from cellpose_nb.data import make_synthetic
    >>> from cellpose_nb.flows import masks_to_flows
    >>> s = make_synthetic((64, 64), n_cells=4, diameter=20, seed=0)
    >>> prob = np.where(s.labels > 0, 5.0, -5.0)
    >>> ex = ThresholdExplorer(s.image, masks_to_flows(s.labels), prob, truth=s.labels)
    >>> lab = ex.update(cellprob_threshold=0.0, min_size=15)
    >>> ex.n_cells == int(s.labels.max()), ex.ap[0.5]
    (True, 1.0)
    >>> fig = ex.static(cellprob_threshold=2.0)
    """

    def __init__(self, image, flows, cellprob, *, truth=None, n_iter=N_ITER,
                 cellprob_range=CELLPROB_RANGE, cellprob_threshold=DEFAULT_CELLPROB,
                 flow_threshold=DEFAULT_FLOW_THRESHOLD, min_size=DEFAULT_MIN_SIZE,
                 max_size_fraction=MAX_SIZE_FRACTION, channel_axis=None, view_format="jpeg"):
        shape = _image_shape(image, channel_axis)
        if view_format not in VIEW_FORMATS:
            raise ValueError(f"view_format must be one of {VIEW_FORMATS}; got {view_format!r}")
        self.view_format = view_format
        self.flows, self.cellprob = _check_flows_prob(flows, cellprob, shape)
        if self.cellprob is None:
            raise ValueError("cellprob is required")
        self.truth = None if truth is None else check_labels(truth, name="truth")
        if self.truth is not None and self.truth.shape != shape:
            raise ValueError(f"truth shape {self.truth.shape} does not match image shape {shape}")
        lo, hi = float(cellprob_range[0]), float(cellprob_range[1])
        if not lo < hi:
            raise ValueError(f"cellprob_range must be (low, high) with low < high; got {cellprob_range}")
        self.cellprob_range = (lo, hi)
        self.n_iter = int(n_iter)
        self.max_size_fraction = max_size_fraction
        self.image = image
        self.channel_axis = channel_axis
        self.shape = shape
        self.params = {"cellprob_threshold": float(cellprob_threshold),
                       "flow_threshold": float(flow_threshold), "min_size": int(min_size)}
        self._followed = None
        self._clusterings = OrderedDict()
        self._results = OrderedDict()
        self._image_rgb = None
        self._widget = None
        self.labels = None
        self.n_cells = None
        self.ap = None
        self.last_update_ms = None
        self.n_refollowed = 0

    @classmethod
    def from_segmentation(cls, image, segmentation, **kwargs):
        """Explore a prediction: any object with ``flows`` (unit scale) and ``cellprob``."""
        return cls(image, segmentation.flows, segmentation.cellprob, **kwargs)

    # ------------------------------------------------------------------ caches
    def _follow(self):
        """Follow the flows once from every pixel above the lowest threshold."""
        if self._followed is None:
            fg = self.cellprob > self.cellprob_range[0]
            starts, ends, minprob = follow_with_min(self.flows * fg, self.cellprob, fg, n_iter=self.n_iter)
            self._followed = (starts, ends, self.cellprob[starts[0], starts[1]], minprob)
        return self._followed

    def _ends_at(self, t):
        """Start pixels above ``t`` and their end points with the flows masked at ``t``."""
        starts, ends, prob, minprob = self._follow()
        sel = prob > t
        redo = sel & (minprob <= t)  # paths that weighed a pixel masked out at t
        ends_t = ends[:, sel]
        if redo.any():
            fg = self.cellprob > t
            mask = np.zeros(self.shape, bool)
            mask[starts[0, redo], starts[1, redo]] = True
            # starts are in raster order, so the redone points come back in the same order
            ends_t[:, redo[sel]] = follow_flows(self.flows * fg, mask, n_iter=self.n_iter).ends
        self.n_refollowed = int(redo.sum())
        return starts[:, sel], ends_t

    def _clustering(self, cellprob_threshold):
        key = float(cellprob_threshold)
        if key in self._clusterings:
            self._clusterings.move_to_end(key)
            return self._clusterings[key]
        starts, ends = self._ends_at(key)
        raw = cluster_endpoints(ends, starts, self.shape, max_size_fraction=self.max_size_fraction)
        areas = np.bincount(raw.ravel(), minlength=int(raw.max()) + 1)
        owner, index = hole_pixels(raw)
        inner = raw.ravel()[index]
        pairs = np.unique(np.stack([owner[inner > 0], inner[inner > 0]], axis=1), axis=0)
        cl = _Clustering(raw, areas, owner, index, pairs.reshape(-1, 2))
        self._clusterings[key] = cl
        if len(self._clusterings) > CLUSTER_CACHE_SIZE:
            self._clusterings.popitem(last=False)
        return cl

    @staticmethod
    def _errors(cl, flows):
        if cl.errors is None:
            cl.errors = flow_errors(cl.labels, flows) if cl.labels.max() > 0 else np.zeros(0)
        return cl.errors

    def _check_params(self, cellprob_threshold, flow_threshold, min_size):
        t = float(cellprob_threshold)
        if t < self.cellprob_range[0]:
            raise ValueError(
                f"cellprob_threshold={t} is below the cached lowest threshold "
                f"{self.cellprob_range[0]}; build the explorer with a lower cellprob_range"
            )
        return t, float(flow_threshold or 0.0), int(min_size)

    def compute(self, *, cellprob_threshold=None, flow_threshold=None, min_size=None):
        """Labels for these thresholds (cached; unset knobs keep their current value).

        Equal to :func:`cellpose_nb.masks.compute_masks` with the same values.
        Does not change the explorer's state.

        Returns
        -------
        ndarray (H, W) of int32
        """
        p = self.params
        t, ft, ms = self._check_params(
            p["cellprob_threshold"] if cellprob_threshold is None else cellprob_threshold,
            p["flow_threshold"] if flow_threshold is None else flow_threshold,
            p["min_size"] if min_size is None else min_size,
        )
        key = (t, ft, ms)
        if key in self._results:
            self._results.move_to_end(key)
            return self._results[key]
        labels = self._select(self._clustering(t), ft, ms)
        self._results[key] = labels
        if len(self._results) > RESULT_CACHE_SIZE:
            self._results.popitem(last=False)
        return labels

    def _select(self, cl, flow_threshold, min_size):
        raw = cl.labels
        n = int(raw.max())
        keep = np.ones(n + 1, bool)
        keep[0] = False
        if n == 0:
            return raw.copy()
        if flow_threshold:
            keep[1:] &= ~(self._errors(cl, self.flows) > flow_threshold)
        after_flow = keep.copy()
        if min_size > 0:
            keep &= cl.areas >= min_size
        if len(cl.nested) and (keep[cl.nested[:, 0]] & keep[cl.nested[:, 1]]).any():
            # a kept mask inside a kept mask's hole: filling overwrites it; let the
            # library handle that rare case exactly
            return fill_holes_and_remove_small_masks(np.where(after_flow[raw], raw, 0),
                                                     min_size=min_size)
        out = np.where(keep[raw], raw, 0).astype(np.int32)
        fill = keep[cl.hole_owner]
        out.ravel()[cl.hole_index[fill]] = cl.hole_owner[fill]
        # filled masks only grow, so the second min_size pass of Cellpose removes nothing
        return renumber(out)

    def precompute(self, values=None):
        """Fill the caches for these cellprob values (default: every slider step)."""
        if values is None:
            lo, hi = self.cellprob_range
            values = np.round(np.arange(lo, hi + CELLPROB_STEP / 2, CELLPROB_STEP), 6)
        for v in values:
            cl = self._clustering(v)
            self._errors(cl, self.flows)

    # ------------------------------------------------------------------ state
    def update(self, *, cellprob_threshold=None, flow_threshold=None, min_size=None):
        """Set the knobs (unset ones keep their value), recompute what depends on them.

        Updates ``labels``, ``n_cells``, ``ap`` (``{0.5: ..., 0.75: ...}``, or
        None without ``truth``) and the widget view when there is one.

        Returns
        -------
        ndarray (H, W) of int32
            The labels.
        """
        t0 = time.perf_counter()
        labels = self.compute(cellprob_threshold=cellprob_threshold,
                              flow_threshold=flow_threshold, min_size=min_size)
        for name, value in (("cellprob_threshold", cellprob_threshold),
                            ("flow_threshold", flow_threshold), ("min_size", min_size)):
            if value is not None:
                self.params[name] = type(self.params[name])(value)
        self.labels = labels
        self.n_cells = int(labels.max())
        if self.truth is not None:
            self.ap = {m.threshold: m.ap for m in matching(self.truth, labels, thresholds=AP_THRESHOLDS)}
        if self._widget is not None:
            self._render()
        self.last_update_ms = 1e3 * (time.perf_counter() - t0)
        if self._widget is not None:
            self.status.value = self._status_html()
        return labels

    def _summary(self):
        text = f"{self.n_cells} cells"
        if self.ap is not None:
            text += "".join(f", AP@{t:g} = {v:.3f}" for t, v in self.ap.items())
        return text

    def _status_html(self):
        ms = f" <span style='color:gray'>({self.last_update_ms:.0f} ms)</span>" \
            if self.last_update_ms is not None else ""
        return f"<span class='cellpose-nb-count'><b>{self._summary()}</b></span>{ms}"

    def _overlay(self, labels):
        if self._image_rgb is None:
            self._image_rgb = plot.image_to_rgb(self.image, channel_axis=self.channel_axis)
        return plot.overlay_rgb(self._image_rgb, labels)

    def static(self, *, cellprob_threshold=None, flow_threshold=None, min_size=None):
        """The masks over the image for these values, as a matplotlib figure."""
        p = dict(self.params)
        for name, value in (("cellprob_threshold", cellprob_threshold),
                            ("flow_threshold", flow_threshold), ("min_size", min_size)):
            if value is not None:
                p[name] = value
        labels = self.compute(**p)
        fig, (ax,) = _new_figure(1, size=6.0)
        ax.imshow(self._overlay(labels), interpolation="nearest")
        plot._bare(ax)
        text = f"{int(labels.max())} cells"
        if self.truth is not None:
            text += "".join(f", AP@{m.threshold:g} = {m.ap:.3f}"
                            for m in matching(self.truth, labels, thresholds=AP_THRESHOLDS))
        ax.set_title(f"cellprob {p['cellprob_threshold']:g}, flow {p['flow_threshold']:g}, "
                     f"min_size {p['min_size']}\n{text}", fontsize="small")
        return fig

    # ------------------------------------------------------------------ widget
    @property
    def widget(self):
        """The ipywidgets view (built on first use)."""
        if self._widget is None:
            self._widget = self._build_widget()
            self.update()
        return self._widget

    def _render(self):
        self.view.value = _encode_rgb(self._overlay(self.labels), scale=_view_scale(self.shape),
                                      fmt=self.view_format)

    def _build_widget(self):
        w = _ipywidgets()
        p = self.params
        lo, hi = self.cellprob_range
        style = {"description_width": "110px"}
        lay = w.Layout(width="420px")
        self.controls = {
            "cellprob_threshold": w.FloatSlider(
                value=p["cellprob_threshold"], min=lo, max=hi, step=CELLPROB_STEP,
                description="cellprob_threshold", style=style, layout=lay),
            "flow_threshold": w.FloatSlider(
                value=p["flow_threshold"], min=FLOW_THRESHOLD_RANGE[0], max=FLOW_THRESHOLD_RANGE[1],
                step=FLOW_THRESHOLD_STEP, description="flow_threshold", style=style, layout=lay),
            "min_size": w.IntSlider(value=p["min_size"], min=0, max=MIN_SIZE_MAX, step=1,
                                    description="min_size", style=style, layout=lay),
        }
        for name, control in self.controls.items():
            control.add_class(f"cellpose-nb-{name.replace('_', '-')}")

            def on_change(change, name=name):
                self.update(**{name: change.new})

            control.observe(on_change, "value")
        width = self.shape[1] * _view_scale(self.shape)
        self.view = w.Image(format=self.view_format,
                            layout=w.Layout(width=f"{width}px", max_width="100%", height="auto"))
        self.view.add_class("cellpose-nb-masks")
        self.status = w.HTML()
        self.status.add_class("cellpose-nb-status")
        box = w.VBox([*self.controls.values(), self.status, self.view])
        box.add_class("cellpose-nb-threshold-explorer")
        return box

    def _repr_mimebundle_(self, **kwargs):
        return _widget_or_png(self, **kwargs)


def explore_thresholds(image, flows, cellprob, **kwargs):
    """A :class:`ThresholdExplorer` (its static figure, with a warning, without ipywidgets)."""
    return _static_fallback(ThresholdExplorer(image, flows, cellprob, **kwargs))


# ============================================================================= diffusion
def simulate_diffusion(labels, cell_id, *, n_iter=None, every=1):
    """Heat diffusion from one cell's centre, step by step, in plain NumPy.

    The same iteration as :func:`cellpose_nb.flows.heat_map` (Cellpose's): add
    1 at the centre pixel, replace every pixel by the mean of its 3x3
    neighbourhood, zero the pixels outside the cell; repeat.

    Parameters
    ----------
    labels : ndarray (H, W) of int
    cell_id : int
    n_iter : int, optional
        Default Cellpose's ``2 * (bbox_rows + bbox_cols + 4)``.
    every : int
        Keep a snapshot every ``every`` iterations (and always the last).

    Returns
    -------
    iterations : ndarray (K,) of int
        Iteration count of each snapshot (0 = before any step).
    heat : ndarray (K, h, w) of float64
        The heat in the cell's bounding box padded by one pixel.
    box : (int, int, int, int)
        (r0, r1, c0, c1) of the unpadded bounding box.
    center : (int, int)
        The centre pixel (row, col).

    Examples
    --------
    >>> lab = np.zeros((7, 7), int); lab[1:6, 1:6] = 3
    >>> its, heat, box, center = simulate_diffusion(lab, 3, n_iter=4)
    >>> its.tolist(), heat.shape, box, center
    ([0, 1, 2, 3, 4], (5, 7, 7), (1, 6, 1, 6), (3, 3))
    """
    lab = check_labels(labels)
    mask = lab == cell_id
    if not mask.any():
        raise ValueError(f"cell_id={cell_id} is not in labels")
    sl = ndi.find_objects(mask.astype(np.int32))[0]
    r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
    _, centers = object_centers(mask.astype(np.int32))
    cr, cc = (int(v) for v in centers[0])
    ly, lx = r1 - r0 + 2, c1 - c0 + 2
    if n_iter is None:
        n_iter = 2 * (ly + lx)
    inside = np.zeros((ly, lx))
    inside[1:-1, 1:-1] = mask[r0:r1, c0:c1]
    t = np.zeros((ly, lx))
    yc, xc = cr - r0 + 1, cc - c0 + 1
    keep = sorted(set(range(0, n_iter + 1, max(1, int(every)))) | {n_iter})
    snaps = [t.copy()] if keep[0] == 0 else []
    for it in range(1, n_iter + 1):
        t[yc, xc] += 1.0
        c = t[1:-1, 1:-1]
        # the same order of additions as the compiled kernel
        s = (c + t[:-2, 1:-1] + t[2:, 1:-1] + t[1:-1, :-2] + t[1:-1, 2:]
             + t[:-2, :-2] + t[:-2, 2:] + t[2:, :-2] + t[2:, 2:])
        new = np.zeros_like(t)
        new[1:-1, 1:-1] = inside[1:-1, 1:-1] * ((1.0 / 9.0) * s)
        t = new
        if it in keep:
            snaps.append(t.copy())
    return np.array(keep), np.stack(snaps), (r0, r1, c0, c1), (cr, cc)


def heat_gradient(heat):
    """Normalised central-difference gradient (d_row, d_col) of a padded heat box.

    Zero on the one-pixel border and where the heat is zero.

    Examples
    --------
    >>> h = np.zeros((5, 5)); h[2, 1:4] = [1.0, 2.0, 1.0]
    >>> heat_gradient(h)[:, 2, 1].tolist()
    [0.0, 1.0]
    """
    g = np.zeros((2,) + heat.shape)
    g[0, 1:-1, 1:-1] = heat[2:, 1:-1] - heat[:-2, 1:-1]
    g[1, 1:-1, 1:-1] = heat[1:-1, 2:] - heat[1:-1, :-2]
    g *= heat > 0
    return g / (1e-60 + np.hypot(g[0], g[1]))


class DiffusionPlayer:
    """Step through the heat diffusion that defines one cell's flows.

    All snapshots are computed once (:func:`simulate_diffusion`); the Play
    button and the slider only pick one.  Each frame shows log10 of the heat
    in the cell's box and the arrows of its normalised gradient: at the last
    step these arrows are the cell's flows.

    Parameters
    ----------
    labels : ndarray (H, W) of int
    cell_id : int
    n_iter : int, optional
        Iterations (default Cellpose's, from the cell's box).
    every : int, optional
        Iterations between snapshots (default: about 100 snapshots).

    Examples
    --------
    >>> lab = np.zeros((20, 20), int); lab[3:15, 4:17] = 1
    >>> player = DiffusionPlayer(lab, 1)
    >>> from cellpose_nb.flows import heat_map
    >>> bool(np.allclose(player.heat(-1), heat_map(lab)))
    True
    >>> fig = player.static(step=3)
    """

    def __init__(self, labels, cell_id, *, n_iter=None, every=None):
        lab = check_labels(labels)
        if every is None:
            if n_iter is None:
                sl = ndi.find_objects((lab == cell_id).astype(np.int32))
                if not sl:
                    raise ValueError(f"cell_id={cell_id} is not in labels")
                n_est = 2 * (sl[0][0].stop - sl[0][0].start + sl[0][1].stop - sl[0][1].start + 4)
            else:
                n_est = n_iter
            every = max(1, int(np.ceil(n_est / MAX_SNAPSHOTS)))
        self.iterations, self.snapshots, self.box, self.center = simulate_diffusion(
            lab, cell_id, n_iter=n_iter, every=every)
        self.labels = lab
        self.cell_id = int(cell_id)
        self.n_steps = len(self.iterations)
        self.step = self.n_steps - 1
        final = self.snapshots[-1]
        positive = final[final > 0]
        self._log_range = (float(np.log10(positive.min())), float(np.log10(positive.max())))
        self._frames = {}
        self._widget = None

    def heat(self, step=-1):
        """Heat of the whole image at snapshot ``step`` (H, W), zero outside the cell."""
        r0, r1, c0, c1 = self.box
        out = np.zeros(self.labels.shape)
        out[r0:r1, c0:c1] = self.snapshots[step][1:-1, 1:-1]
        return out

    def gradient(self, step=-1):
        """Normalised heat gradient (2, H, W) at snapshot ``step``: the flows at the end."""
        r0, r1, c0, c1 = self.box
        out = np.zeros((2,) + self.labels.shape)
        out[:, r0:r1, c0:c1] = heat_gradient(self.snapshots[step])[:, 1:-1, 1:-1]
        return out

    def _frame(self, step):
        snap = self.snapshots[step]
        with np.errstate(divide="ignore"):
            logh = np.where(snap > 0, np.log10(np.where(snap > 0, snap, 1.0)), np.nan)
        return logh, heat_gradient(snap)

    def _draw(self, ax, step):
        import matplotlib as mpl

        logh, grad = self._frame(step)
        cmap = mpl.colormaps["magma"].with_extremes(bad="black")
        lo, hi = self._log_range
        r0, _, c0, _ = self.box
        extent = (c0 - 1.5, c0 - 1.5 + logh.shape[1], r0 - 1.5 + logh.shape[0], r0 - 1.5)
        img = ax.imshow(logh, cmap=cmap, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
        rows, cols = np.nonzero(grad.any(axis=0))
        step_px = max(1, max(logh.shape) // 24)
        sel = (rows % step_px == 0) & (cols % step_px == 0)
        rows, cols = rows[sel], cols[sel]
        q = ax.quiver(cols + c0 - 1, rows + r0 - 1, grad[1, rows, cols], grad[0, rows, cols],
                      angles="xy", scale_units="xy", scale=1.0 / (0.8 * step_px), color="cyan",
                      width=0.005)
        (centre,) = ax.plot([self.center[1]], [self.center[0]], "+", color="white", markersize=10)
        ax.set_title(f"cell {self.cell_id}: iteration {self.iterations[step]} / "
                     f"{self.iterations[-1]} (log10 heat)", fontsize="small")
        plot._bare(ax)
        return [img, q, centre]

    def static(self, *, step=None):
        """The frame at snapshot ``step`` (default: current) as a matplotlib figure."""
        fig, (ax,) = _new_figure(1, size=5.0)
        artists = self._draw(ax, self.step if step is None else step)
        fig.colorbar(artists[0], ax=ax, shrink=0.8)
        return fig

    def show_step(self, step):
        """Go to snapshot ``step``; updates the view when there is a widget."""
        if not -self.n_steps <= step < self.n_steps:
            raise ValueError(f"step must be in [0, {self.n_steps - 1}]; got {step}")
        self.step = int(step) % self.n_steps
        if self._widget is not None:
            if self.step not in self._frames:  # each frame is drawn once, replays are free
                self._ax.clear()
                self._draw(self._ax, self.step)
                self._frames[self.step] = _figure_png(self._fig)
            self.view.value = self._frames[self.step]
            if self.controls["step"].value != self.step:
                self.controls["step"].value = self.step

    @property
    def widget(self):
        """Play button + slider + view (built on first use)."""
        if self._widget is None:
            w = _ipywidgets()
            play = w.Play(value=self.step, min=0, max=self.n_steps - 1, step=1, interval=150)
            slider = w.IntSlider(value=self.step, min=0, max=self.n_steps - 1, description="snapshot")
            w.jslink((play, "value"), (slider, "value"))
            self.controls = {"play": play, "step": slider}
            self._fig, (self._ax,) = _new_figure(1, size=5.0)
            self.view = w.Image(format="png")
            self._widget = w.VBox([w.HBox([play, slider]), self.view])
            slider.observe(lambda change: self.show_step(change.new), "value")
            self.show_step(self.step)
        return self._widget

    def _repr_mimebundle_(self, **kwargs):
        return _widget_or_png(self, **kwargs)


def play_diffusion(labels, cell_id, **kwargs):
    """A :class:`DiffusionPlayer` (its static figure, with a warning, without ipywidgets)."""
    return _static_fallback(DiffusionPlayer(labels, cell_id, **kwargs))

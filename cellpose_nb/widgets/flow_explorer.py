"""The flow explorer: the flow field, one cell's arrows, one pixel's path to its fixed point."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cellpose_nb import plot
from cellpose_nb.flows import check_labels, flows_to_rgb, masks_to_flows, object_centers
from cellpose_nb.masks import CELLPROB_THRESHOLD, N_ITER, compute_masks, trace_points
from cellpose_nb.threshold_cache import _check_flows_prob
from cellpose_nb.widgets._display import (
    _HeldRedraws,
    VIEW_DPI,
    _figure_png,
    _image_shape,
    _ipyevents,
    _ipywidgets,
    _new_figure,
    _static_fallback,
    _widget_or_png,
)

__all__ = ["FlowExplorer", "explore_flows"]


class FlowExplorer(_HeldRedraws):
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
                 cellprob_threshold=CELLPROB_THRESHOLD, channel_axis=None, arrow_step=8):
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


def explore_flows(image, **kwargs):
    """A :class:`FlowExplorer` (its static figure, with a warning, without ipywidgets)."""
    return _static_fallback(FlowExplorer(image, **kwargs))

"""The threshold explorer: move cellprob_threshold, flow_threshold and min_size; see masks, count and AP.

The flows are followed once (:mod:`cellpose_nb.threshold_cache`), clusterings
are cached per cellprob value, and the two other knobs only select masks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from cellpose_nb import plot
from cellpose_nb.flows import check_labels
from cellpose_nb.masks import (
    CELLPROB_THRESHOLD,
    FLOW_THRESHOLD,
    MAX_SIZE_FRACTION,
    MIN_SIZE,
    N_ITER,
    cluster_endpoints,
    flow_errors,
    follow_flows,
    postprocess_masks,
)
from cellpose_nb.metrics import matching
from cellpose_nb.threshold_cache import _check_flows_prob, follow_with_min
from cellpose_nb.widgets._display import (
    VIEW_FORMATS,
    _encode_rgb,
    _image_shape,
    _ipywidgets,
    _new_figure,
    _static_fallback,
    _view_scale,
    _widget_or_png,
)

__all__ = ["ThresholdExplorer", "explore_thresholds"]

#: Slider ranges and steps of the threshold explorer (Cellpose's GUI uses similar ones).
CELLPROB_RANGE = (-6.0, 6.0)
CELLPROB_STEP = 0.25
FLOW_THRESHOLD_RANGE = (0.0, 3.0)
FLOW_THRESHOLD_STEP = 0.05
MIN_SIZE_MAX = 500
#: IoU thresholds of the AP shown by the threshold explorer.
AP_THRESHOLDS = (0.5, 0.75)
#: Clusterings (one per cellprob value) and results kept in the LRU caches.
CLUSTER_CACHE_SIZE = 64
RESULT_CACHE_SIZE = 32


@dataclass(eq=False)
class _Clustering:
    """Everything about the masks at one cellprob threshold that no other knob changes."""

    labels: np.ndarray  # raw clustering, sequential 1..N
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
        Encoding of the widget's view: JPEG encodes much faster.

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
       (:func:`cellpose_nb.masks.cluster_endpoints`), and each mask's flow
       error is stored when first needed;
    3. flow_threshold and min_size then run the one post-processing step of
       the library, :func:`cellpose_nb.masks.postprocess_masks`, with those
       cached errors.

    The result equals :func:`cellpose_nb.masks.compute_masks` exactly, at
    every threshold (``tests/test_widgets.py`` checks this).  Without step 2's
    re-following (the end points of the lowest threshold reused as they are)
    the masks can differ a lot where the foreground has holes inside cells
    (``test_reusing_the_lowest_thresholds_paths_is_not_enough`` shows a case).

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
                 cellprob_range=CELLPROB_RANGE, cellprob_threshold=CELLPROB_THRESHOLD,
                 flow_threshold=FLOW_THRESHOLD, min_size=MIN_SIZE,
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
        cl = _Clustering(raw)
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
        """The masks of one clustering after :func:`cellpose_nb.masks.postprocess_masks`,
        the step that :func:`~cellpose_nb.masks.compute_masks` ends with; the flow errors
        are cached per clustering, so a flow-threshold move does not recompute them."""
        errors = self._errors(cl, self.flows) if flow_threshold and cl.labels.max() > 0 else None
        return postprocess_masks(cl.labels, self.flows, flow_threshold=flow_threshold,
                                 min_size=min_size, errors=errors)

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

"""The volume explorer: three orthogonal cuts (XY, XZ, YZ) of a volume, its masks and flows."""

from __future__ import annotations

import contextlib
import math

import numpy as np

from cellpose_nb import plot
from cellpose_nb.flows import check_labels, flows_to_rgb
from cellpose_nb.flows3d import object_centers_3d
from cellpose_nb.widgets._display import (
    _HeldRedraws,
    _encode_rgb,
    _ipyevents,
    _ipywidgets,
    _new_figure,
    _static_fallback,
    _view_scale,
    _widget_or_png,
)

__all__ = ["BACKGROUNDS", "HIGHLIGHT_COLOR", "OVERLAYS", "VIEWS", "VolumeExplorer", "explore_volume"]

#: The three cuts: the XY plane at z, the XZ cut at y, the YZ cut at x.
VIEWS = ("xy", "xz", "yz")
#: How masks are drawn: outlines only, translucent colours with outlines, or not at all.
OVERLAYS = ("outlines", "colours", "none")
#: What is under the masks: the image, or the in-plane flow components as colour.
BACKGROUNDS = ("image", "flows")
#: Colour and opacity of the picked cell's voxels.
HIGHLIGHT_COLOR = (1.0, 1.0, 0.0)
HIGHLIGHT_ALPHA = 0.6


def _check_volume(volume, channel_axis):
    """(Z, Y, X) or (Z, Y, X, C) float array of a volume, with a message naming the shape."""
    arr = np.asarray(volume)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
        raise TypeError(f"volume must be real numbers; got dtype {arr.dtype}")
    if channel_axis is None:
        if arr.ndim != 3:
            raise ValueError(f"volume must be (Z, Y, X), or 4-D with channel_axis; got shape {arr.shape}")
        arr = arr[..., None]
    else:
        if arr.ndim != 4 or not -4 <= int(channel_axis) < 4:
            raise ValueError(f"volume with channel_axis={channel_axis} must be 4-D; got shape {arr.shape}")
        arr = np.moveaxis(arr, int(channel_axis), -1)
    if min(arr.shape[:3]) == 0:
        raise ValueError(f"volume is empty: shape {arr.shape[:3]}")
    if not np.isfinite(arr).all():
        raise ValueError("volume contains NaN or inf")
    return arr


class VolumeExplorer(_HeldRedraws):
    """Walk through a volume in three orthogonal cuts; pick a cell in any of them.

    The XY plane at ``z``, and the XZ and YZ cuts at ``y`` and ``x``; in the
    cuts Z is stretched ``anisotropy`` times (nearest voxel), so that cells
    look round.  Masks are drawn as outlines or translucent colours; with
    ``flows`` the background can be the flow field: each view shows its two
    in-plane components as colour (angle -> hue, :func:`cellpose_nb.flows.flows_to_rgb`).
    Picking a voxel (:meth:`pick`, or a click on a view with ``ipyevents``)
    selects its cell, highlights it in all three views and moves the cuts
    through its centre voxel.  A slider move redraws only the views that change.

    Parameters
    ----------
    volume : ndarray (Z, Y, X), or 4-D with ``channel_axis``
    labels : ndarray (Z, Y, X) of int, optional
    flows : ndarray (3, Z, Y, X), optional
        (d_z, d_row, d_col), e.g. from :func:`cellpose_nb.flows3d.masks_to_flows_3d`.
    anisotropy : float
        Z spacing / in-plane spacing: the stretch of Z in the cuts.
    channel_axis : int, optional

    Attributes
    ----------
    position : [int, int, int]
        The cuts (z, y, x).
    cell : int
        Picked cell (0: none).

    Examples
    --------
    >>> from cellpose_nb.data.synthetic3d import make_synthetic_volume
    >>> s = make_synthetic_volume((12, 48, 48), n_cells=4, diameter=20, anisotropy=2.0, seed=0)
    >>> ex = VolumeExplorer(s.image, s.labels, anisotropy=2.0, channel_axis=-1)
    >>> ex.view_xy().shape, ex.view_xz().shape, ex.view_yz().shape
    ((48, 48, 3), (24, 48, 3), (24, 48, 3))
    >>> plane = s.labels[ex.position[0]]
    >>> row, col = np.argwhere(plane == plane.max())[0]
    >>> cell = ex.pick("xy", row, col)      # the cell under that pixel; cuts through its centre
    >>> bool(cell == plane.max()), bool((s.labels[:, ex.position[1]] == cell).any())
    (True, True)
    >>> fig = ex.static()
    """

    def __init__(self, volume, labels=None, flows=None, *, anisotropy=1.0, channel_axis=None):
        vol = _check_volume(volume, channel_axis)
        shape = vol.shape[:3]
        try:
            aniso = float(anisotropy)
        except (TypeError, ValueError):
            raise TypeError(f"anisotropy must be a number; got {anisotropy!r}") from None
        if not (math.isfinite(aniso) and aniso > 0):
            raise ValueError(f"anisotropy must be finite and > 0; got {anisotropy!r}")
        if labels is not None:
            labels = check_labels(labels, ndim=3)
            if labels.shape != shape:
                raise ValueError(f"labels shape {labels.shape} does not match volume shape {shape}")
        if flows is not None:
            flows = np.asarray(flows, dtype=np.float32)
            if flows.shape != (3,) + shape:
                raise ValueError(f"flows must have shape {(3,) + shape} (d_z, d_row, d_col); got {flows.shape}")
            if not np.isfinite(flows).all():
                raise ValueError("flows contain NaN or inf")
        self.shape, self.anisotropy, self.flows = shape, aniso, flows
        self.labels = labels if labels is not None else np.zeros(shape, np.int32)
        # display colours once for the whole volume: one normalisation for every cut
        z, y, x, c = vol.shape
        self._rgb = plot.image_to_rgb(vol.reshape(z * y, x, c), channel_axis=-1).reshape(z, y, x, 3)
        self._colors = plot.label_colors(int(self.labels.max()))
        self.cell_ids, self.centers = object_centers_3d(self.labels)
        # display row -> slice: nearest voxel of the Z axis stretched by the anisotropy
        self._z_rows = np.minimum((np.arange(max(1, round(z * aniso))) / aniso).astype(np.intp), z - 1)
        self.position = [z // 2, y // 2, x // 2]
        self.cell, self.overlay, self.background = 0, OVERLAYS[0], BACKGROUNDS[0]
        self._widget = None

    @classmethod
    def from_segmentation(cls, volume, segmentation, **kwargs):
        """Explore a 3D prediction: any object with ``labels`` (Z, Y, X) and ``flows``,
        either (3, Z, Y, X) or, from 2D slices stitched, (2, Z, Y, X) (d_z shown as 0)."""
        flows = np.asarray(segmentation.flows, dtype=np.float32)
        if flows.ndim == 4 and flows.shape[0] == 2:
            flows = np.concatenate([np.zeros_like(flows[:1]), flows])
        return cls(volume, segmentation.labels, flows, **kwargs)

    # ------------------------------------------------------------------ pure views
    def _planes(self, view, index):
        """The view's image RGB, labels, and in-plane flows (rows, cols), Z not yet stretched."""
        take = {"xy": lambda a: a[index], "xz": lambda a: a[:, index], "yz": lambda a: a[:, :, index]}[view]
        flows = None
        if self.flows is not None:
            rows, cols = {"xy": (1, 2), "xz": (0, 2), "yz": (0, 1)}[view]
            flows = np.stack([take(self.flows[rows]), take(self.flows[cols])])
        return take(self._rgb), take(self.labels), flows

    def view(self, view, index=None, *, overlay=None, background=None, cell=None):
        """One view as an (rows, cols, 3) float32 RGB array in [0, 1].

        ``view`` is ``"xy"`` (rows y, cols x), ``"xz"`` (rows z stretched,
        cols x) or ``"yz"`` (rows z stretched, cols y); ``index`` the cut
        (z, y or x; default the current one); the other options default to
        the current ones.
        """
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}; got {view!r}")
        axis = VIEWS.index(view)
        index = self.position[axis] if index is None else int(index)
        if not 0 <= index < self.shape[axis]:
            raise ValueError(f"{'zyx'[axis]}={index} is outside the volume of shape {self.shape}")
        overlay = self.overlay if overlay is None else overlay
        background = self.background if background is None else background
        cell = self.cell if cell is None else int(cell)
        if overlay not in OVERLAYS or background not in BACKGROUNDS:
            raise ValueError(f"overlay must be one of {OVERLAYS}, background one of {BACKGROUNDS}; "
                             f"got {overlay!r}, {background!r}")
        if background == "flows" and self.flows is None:
            raise ValueError("background='flows' needs flows; none were given")
        rgb, lab, flows = self._planes(view, index)
        if view != "xy":  # stretch Z
            rgb, lab = rgb[self._z_rows], lab[self._z_rows]
            flows = flows[:, self._z_rows] if flows is not None else None
        if background == "flows":
            rgb = flows_to_rgb(flows)
        if overlay != "none":
            alpha = plot.OVERLAY_ALPHA if overlay == "colours" else 0.0
            rgb = plot.overlay_rgb(rgb, lab, alpha=alpha, colors=self._colors)
        if cell:
            sel = (lab == cell)[..., None]
            rgb = np.where(sel, rgb + HIGHLIGHT_ALPHA * (np.float32(HIGHLIGHT_COLOR) - rgb), rgb)
        return np.ascontiguousarray(rgb, dtype=np.float32)

    def view_xy(self, z=None, **kwargs):
        """The XY plane at ``z`` (see :meth:`view`)."""
        return self.view("xy", z, **kwargs)

    def view_xz(self, y=None, **kwargs):
        """The XZ cut at ``y``, Z stretched by the anisotropy (see :meth:`view`)."""
        return self.view("xz", y, **kwargs)

    def view_yz(self, x=None, **kwargs):
        """The YZ cut at ``x``, Z stretched by the anisotropy (see :meth:`view`)."""
        return self.view("yz", x, **kwargs)

    def voxel_at(self, view, row, col):
        """The voxel (z, y, x) under the pixel (row, col) of a view's array."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}; got {view!r}")
        z, y, x = self.position
        n_rows = self.shape[1] if view == "xy" else len(self._z_rows)
        n_cols = self.shape[2] if view != "yz" else self.shape[1]
        row, col = int(row), int(col)
        if not (0 <= row < n_rows and 0 <= col < n_cols):
            raise ValueError(f"pixel ({row}, {col}) is outside the {view} view of shape {(n_rows, n_cols)}")
        if view == "xy":
            return z, row, col
        zz = int(self._z_rows[row])
        return (zz, y, col) if view == "xz" else (zz, col, x)

    # ------------------------------------------------------------------ pure state changes
    def pick(self, view, row, col):
        """Pick the voxel under the pixel (row, col) of a view; returns its label.

        A cell is highlighted and the cuts move through its centre voxel
        (:func:`cellpose_nb.flows3d.object_centers_3d`); the background
        (label 0) clears the pick and moves the cuts through the voxel.
        """
        voxel = self.voxel_at(view, row, col)
        label = int(self.labels[voxel])
        if label:
            voxel = tuple(int(v) for v in self.centers[np.searchsorted(self.cell_ids, label)])
        self.cell = label
        self.set_position(*voxel, _changed=set(VIEWS))
        return label

    def set_position(self, z=None, y=None, x=None, *, _changed=None):
        """Move the cuts (None: keep); only the views whose cut moved are redrawn."""
        changed = set(_changed or ())
        for axis, value in enumerate((z, y, x)):
            if value is None:
                continue
            value = int(value)
            if not 0 <= value < self.shape[axis]:
                raise ValueError(f"{'zyx'[axis]}={value} is outside the volume of shape {self.shape}")
            if value != self.position[axis]:
                self.position[axis] = value
                changed.add(VIEWS[axis])
        self._refresh(changed)
        return sorted(changed)

    def set_display(self, *, overlay=None, background=None):
        """Change how masks are drawn and what is under them (redraws all views)."""
        if overlay is not None and overlay not in OVERLAYS:
            raise ValueError(f"overlay must be one of {OVERLAYS}; got {overlay!r}")
        if background is not None and background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}; got {background!r}")
        if background == "flows" and self.flows is None:
            raise ValueError("background='flows' needs flows; none were given")
        self.overlay = overlay or self.overlay
        self.background = background or self.background
        self._refresh(set(VIEWS))

    # ------------------------------------------------------------------ static figure
    def static(self, *, z=None, y=None, x=None, **kwargs):
        """The three views at the given cuts as a matplotlib figure (for nbviewer).

        Keywords ``overlay``, ``background``, ``cell`` as in :meth:`view`.
        """
        fig, axes = _new_figure(3)
        cuts = dict(zip(VIEWS, (z, y, x)))
        for ax, name in zip(axes, VIEWS):
            index = self.position[VIEWS.index(name)] if cuts[name] is None else cuts[name]
            ax.imshow(self.view(name, index, **kwargs), interpolation="nearest")
            ax.set_title(f"{name.upper()} at {'zyx'[VIEWS.index(name)]}={index}")
            plot._bare(ax)
        return fig

    # ------------------------------------------------------------------ widget
    def _refresh(self, changed):
        if self._widget is None:
            return
        with self._hold():
            for axis, name in enumerate(VIEWS):
                self.controls[name].value = self.position[axis]
            self.controls["overlay"].value = self.overlay
            self.controls["background"].value = self.background
            self.controls["cell"].value = f"cell {self.cell}" if self.cell else "no cell picked"
        for name in VIEWS:
            if name in changed:
                self.views[name].value = _encode_rgb(self.view(name), scale=self._scale)

    def _on_click(self, name, event):
        """ipyevents handler: ``dataX``/``dataY`` are the click in the image's pixels."""
        if event.get("dataX") is None or event.get("dataY") is None:
            return
        row, col = int(event["dataY"]) // self._scale, int(event["dataX"]) // self._scale
        with contextlib.suppress(ValueError):  # a click on the image's edge, outside
            self.pick(name, row, col)

    @property
    def widget(self):
        """The ipywidgets view (built on first use)."""
        if self._widget is None:
            self._widget = self._build_widget()
        return self._widget

    def _build_widget(self):
        w = _ipywidgets()
        self._scale = _view_scale(self.shape[1:])
        self.controls = {
            name: w.IntSlider(value=self.position[axis], min=0, max=self.shape[axis] - 1,
                              description="zyx"[axis], continuous_update=False)
            for axis, name in enumerate(VIEWS)
        }
        c = self.controls
        c["overlay"] = w.ToggleButtons(options=OVERLAYS, value=self.overlay, description="masks")
        c["background"] = w.ToggleButtons(options=BACKGROUNDS, value=self.background,
                                          description="show", disabled=self.flows is None)
        c["cell"] = w.HTML("no cell picked")
        c["cell"].add_class("cellpose-nb-volume-cell")
        for axis, name in enumerate(VIEWS):
            c[name].add_class(f"cellpose-nb-{'zyx'[axis]}")

            def on_slider(change, axis=axis):
                if not self._holding:
                    self.set_position(**{"zyx"[axis]: change.new})

            c[name].observe(on_slider, "value")
        for key in ("overlay", "background"):
            c[key].observe(lambda ch, key=key: self._holding or self.set_display(**{key: ch.new}), "value")
        self.views = {}
        events = _ipyevents()
        self._clicks = []
        for name in VIEWS:
            img = w.Image(value=_encode_rgb(self.view(name), scale=self._scale), format="jpeg")
            img.add_class(f"cellpose-nb-volume-{name}")
            self.views[name] = img
            if events is not None:
                click = events.Event(source=img, watched_events=["click"], prevent_default_action=True)
                click.on_dom_event(lambda event, name=name: self._on_click(name, event))
                self._clicks.append(click)
        hint = ("click a cell in any view to pick it" if events is not None
                else "move the sliders (pip install ipyevents to pick cells by clicking)")
        panels = [w.VBox([w.HTML(f"<b>{n.upper()}</b>"), self.views[n]]) for n in VIEWS]
        box = w.VBox([w.HBox([c["xy"], c["xz"], c["yz"]]),
                      w.HBox([c["overlay"], c["background"]]),
                      w.HBox([c["cell"], w.HTML(f"<small>&nbsp;{hint}</small>")]),
                      w.HBox(panels)])
        box.add_class("cellpose-nb-volume-explorer")
        return box

    def _repr_mimebundle_(self, **kwargs):
        return _widget_or_png(self, **kwargs)


def explore_volume(volume, labels=None, flows=None, **kwargs):
    """A :class:`VolumeExplorer` (its static figure, with a warning, without ipywidgets)."""
    return _static_fallback(VolumeExplorer(volume, labels, flows, **kwargs))

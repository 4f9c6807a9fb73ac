"""What the explorers share: one redraw for several changes, lazy imports of
ipywidgets and ipyevents, figures that show themselves in Jupyter, image encoding
of the views, and the static-figure fallback when ipywidgets is missing."""

from __future__ import annotations

import contextlib
import functools
import io
import warnings

import numpy as np

#: Views smaller than this many pixels are enlarged by an integer factor.
MIN_VIEW_PIXELS = 512
#: Encodings of the threshold explorer's view (JPEG encodes much faster than
#: PNG, which compresses noisy images badly); JPEG quality and PNG level.
VIEW_FORMATS = ("jpeg", "png")
JPEG_QUALITY = 90
PNG_LEVEL = 1
#: Resolution of the figures shown in the widgets (their PNG pixels per inch).
VIEW_DPI = 80


class _HeldRedraws:
    """Mixin of the explorers: ``with self._hold():`` changes several things (or the
    controls) with one redraw at the end; redraws check ``self._holding``."""

    _holding = False

    @contextlib.contextmanager
    def _hold(self):
        prev, self._holding = self._holding, True
        try:
            yield
        finally:
            self._holding = prev


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


def _ipyevents():
    """ipyevents if it imports, else None (clicks are then not available)."""
    try:
        import ipyevents
    except ImportError:
        return None
    return ipyevents


def _static_fallback(explorer, **params):
    """The explorer if ipywidgets imports, else its static figure with a warning."""
    try:
        _ipywidgets()
    except ImportError as exc:
        warnings.warn(f"{exc}; showing a static figure", stacklevel=3)
        return explorer.static(**params)
    return explorer


def _widget_or_png(explorer, **kwargs):
    """An explorer's mime bundle: its widget, else its static figure as PNG."""
    try:
        return explorer.widget._repr_mimebundle_(**kwargs)
    except ImportError:
        import base64

        png = _figure_png(explorer.static())
        return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": repr(explorer)}


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


def _image_shape(image, channel_axis):
    arr = np.asarray(image)
    if arr.ndim == 2:
        return arr.shape
    axis = -1 if channel_axis is None else channel_axis
    return tuple(s for k, s in enumerate(arr.shape) if k != axis % arr.ndim)

"""The size model: from the network's style vector to the cells' diameter.

:class:`SizeModel` (a ridge regression, Cellpose's ``SizeModel``),
:func:`style_diameter` (its guess from the style of a few tiles, see
:func:`~cellpose_nb.predict.predict_style`) and :func:`estimate_diameter`
(the guess, then the median diameter of the masks found at it: Cellpose's two
steps).  :func:`~cellpose_nb.predict.segment` does the same when no diameter
is given, and keeps the second step's pass as its result when it is close
enough.  The size model is fitted by :func:`cellpose_nb.train.fit_size_model`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cellpose_nb.flows import check_labels
from cellpose_nb.model.record import record_field
from cellpose_nb.predict._compat import _data_first
from cellpose_nb.predict.config import model_thresholds
from cellpose_nb.predict.net import _masks_at_scale
from cellpose_nb.predict.style import predict_style

__all__ = ["MIN_DIAMETER", "MAX_ZOOM", "MAX_ZOOMED_PIXELS", "SIZE_MODEL_FILE", "check_diameter", "SizeModel", "DiameterEstimate",
           "median_diameter", "load_size_model", "style_diameter", "estimate_diameter"]

MIN_DIAMETER = 5.0  # Cellpose clamps training diameters and size estimates to >= 5 px
SIZE_MODEL_FILE = "size_model.json"
#: an image is zoomed by at most this factor (diam_mean / diameter): smaller cells
#: are below what the network can resolve, and the zoomed image grows as its square
MAX_ZOOM = 10.0
#: the zoomed image may have at most this many pixels (its outputs take 12 bytes each)
MAX_ZOOMED_PIXELS = 2**28


def check_diameter(diameter, shape, diam_mean) -> float:
    """``diameter`` as a float, if an image of ``shape`` (H, W) can be segmented at it.

    The image is zoomed by ``diam_mean / diameter``: the diameter must be
    finite, at least ``diam_mean / MAX_ZOOM``, at most the image's longer side
    (a cell has to fit in the image), and the zoomed image must have at most
    ``MAX_ZOOMED_PIXELS`` pixels.  Raises ValueError naming the allowed range.

    Examples
    --------
    >>> check_diameter(12, (64, 64), 17.0)
    12.0
    >>> check_diameter(1e6, (64, 64), 17.0)
    Traceback (most recent call last):
    ...
    ValueError: diameter=1e+06 px is out of range for a 64 x 64 image and a model of diam_mean 17 px: use 1.7 to 64 px (or None to estimate it)
    """
    h, w = shape
    low, high = diam_mean / MAX_ZOOM, float(max(h, w))
    try:
        d = float(diameter)
    except (TypeError, ValueError):
        raise TypeError(f"diameter must be a number of pixels or None; got {diameter!r}") from None
    if not (math.isfinite(d) and low <= d <= high):
        raise ValueError(f"diameter={d:g} px is out of range for a {h} x {w} image "
                         f"and a model of diam_mean {diam_mean:g} px: use {low:.2g} to "
                         f"{high:g} px (or None to estimate it)")
    zoomed = h * w * (diam_mean / d) ** 2
    if zoomed > MAX_ZOOMED_PIXELS:
        raise ValueError(f"diameter={d:g} px would zoom the {h} x {w} image to {zoomed / 1e6:.0f} "
                         f"Mpx (at most {MAX_ZOOMED_PIXELS / 1e6:.0f}); use a diameter of at "
                         f"least {diam_mean * math.sqrt(h * w / MAX_ZOOMED_PIXELS):.3g} px, or "
                         "segment the image in parts")
    return d


def median_diameter(labels) -> float:
    """Median object diameter, ``sqrt(4 * area / pi)`` (``cellpose.utils.diameters``).

    Returns 0.0 for an image without objects.

    Examples
    --------
    >>> lab = np.zeros((30, 30), int); lab[:10, :10] = 1
    >>> round(median_diameter(lab), 3)   # a 10 x 10 square: 2 * 10 / sqrt(pi)
    11.284
    """
    lab = check_labels(labels)
    counts = np.bincount(lab.ravel())[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    return float(np.median(np.sqrt(counts)) / (np.sqrt(np.pi) / 2))


@dataclasses.dataclass(frozen=True, eq=False)
class SizeModel:
    """Ridge regression from the style vector to the log object diameter (Cellpose's
    ``SizeModel``): ``diameter = exp(coef @ (style - style_mean) + target_mean) * diam_mean``.

    Attributes
    ----------
    coef : ndarray (S,)
        Regression weights (Cellpose's ``A``).
    style_mean : ndarray (S,)
        Mean training style (``smean``).
    target_mean : float
        Mean of ``log(diameter / diam_mean)`` over the training crops (``ymean``).
    diam_mean : float
        The model's mean diameter.

    Examples
    --------
    >>> sm = SizeModel(np.zeros(2), np.zeros(2), 0.0, 17.0)
    >>> sm.predict(np.ones((1, 2))).tolist()
    [17.0]
    """

    coef: np.ndarray
    style_mean: np.ndarray
    target_mean: float
    diam_mean: float

    def predict(self, styles) -> np.ndarray:
        """Diameters (px, >= MIN_DIAMETER) for styles of shape (N, S)."""
        styles = np.atleast_2d(np.asarray(styles, np.float64))
        log_ratio = (styles - self.style_mean) @ self.coef + self.target_mean
        return np.maximum(MIN_DIAMETER, np.exp(log_ratio) * self.diam_mean)

    def to_dict(self) -> dict:
        """JSON-ready dict (inverse: :meth:`from_dict`)."""
        return {"coef": self.coef.tolist(), "style_mean": self.style_mean.tolist(),
                "target_mean": float(self.target_mean), "diam_mean": float(self.diam_mean)}

    @classmethod
    def from_dict(cls, d) -> SizeModel:
        """Build from :meth:`to_dict` output."""
        return cls(np.asarray(d["coef"], np.float64), np.asarray(d["style_mean"], np.float64),
                   float(d["target_mean"]), float(d["diam_mean"]))


def load_size_model(folder) -> SizeModel:
    """Read ``size_model.json`` from a model folder.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = Path(tmp, SIZE_MODEL_FILE).write_text(json.dumps(
    ...         SizeModel(np.zeros(2), np.zeros(2), 0.0, 30.0).to_dict()))
    ...     load_size_model(tmp).diam_mean
    30.0
    """
    path = Path(folder) / SIZE_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {SIZE_MODEL_FILE} in {folder}: fit one with fit_size_model")
    return SizeModel.from_dict(json.loads(path.read_text()))


def _stored_size_model(model):
    """The model's own size model: ``model.record.size_model`` (a SizeModel, or its
    :meth:`~SizeModel.to_dict` as the model's record keeps it), else the one in
    its training record (``model.record.training``), else None."""
    stored = record_field(model, "size_model")
    if stored is not None:
        return stored if isinstance(stored, SizeModel) else SizeModel.from_dict(stored)
    record = record_field(model, "training") or {}
    if record.get("size_model"):
        return SizeModel.from_dict(record["size_model"])
    return None


def _find_size_model(model, size_model):
    """``size_model`` if given, else the model's own; raises if there is none."""
    if size_model is not None:
        return size_model
    found = _stored_size_model(model)
    if found is None:
        raise ValueError("this model has no size model: pass size_model=fit_size_model(...) or "
                         "load_size_model(folder), or give the diameter yourself")
    return found


class DiameterEstimate(NamedTuple):
    """Result of :func:`estimate_diameter`.

    Attributes
    ----------
    diameter : float
        Final estimate: median diameter of the masks found at the style's
        scale (``refine=True``), else the style estimate.
    diameter_style : float
        Estimate from the style vector alone.
    """

    diameter: float
    diameter_style: float


def style_diameter(x, model, size_model=None, **style_kw) -> float:
    """The size model's guess of the cells' diameter (px) from the style of ``x``.

    Parameters
    ----------
    x : ndarray (C, H, W) of float32
        A network input, at its own scale.
    model : CellposeUNet
    size_model : SizeModel, optional
        Default: the model's own (see :func:`estimate_diameter`).
    **style_kw
        Keyword arguments of :func:`~cellpose_nb.predict.predict_style`
        (tiling, device, precision).

    Returns
    -------
    float
        The guess, or the size model's ``diam_mean`` if the style is not finite.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=10.0))
    >>> sm = SizeModel(np.zeros(8), np.zeros(8), np.log(2.0), 10.0)
    >>> style_diameter(np.zeros((2, 16, 16), np.float32), net, sm)
    20.0
    """
    sm = _find_size_model(model, size_model)
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or x.shape[0] != model.config.n_channels:
        raise ValueError(f"image has shape {x.shape}; expected a network input "
                         f"({model.config.n_channels}, H, W)")
    style = predict_style(x, model, **style_kw)
    return float(sm.predict(style[None])[0]) if np.isfinite(style).all() else sm.diam_mean


def estimate_diameter(image, model, *, size_model=None, refine=True,
                      cellprob_threshold=None, flow_threshold=None) -> DiameterEstimate:
    """Estimate the median object diameter of one image (Cellpose's ``SizeModel.eval``).

    The size model guesses the diameter from the style of the image as it is
    (:func:`style_diameter`); with ``refine`` the image is then segmented at
    that guess and the median diameter of the masks is returned (Cellpose's
    second step).  :func:`~cellpose_nb.predict.segment` without a diameter
    does the same with its own network and mask settings, and keeps that
    segmentation when it is close enough.

    Parameters
    ----------
    image : ndarray (2, H, W) of float32
        A network input.
    model : CellposeUNet
        The old order ``estimate_diameter(model, image)`` still works for one
        release, with a DeprecationWarning.
    size_model : SizeModel, optional
        Default: ``model.record.size_model`` or the one in ``model.record.training``.
    refine : bool
        Segment at the style's guess and measure the masks.
    cellprob_threshold, flow_threshold : float, optional
        Used by the refinement; default: the model's tuned ones, as in
        :func:`~cellpose_nb.predict.segment` (:func:`~cellpose_nb.predict.model_thresholds`).

    Returns
    -------
    DiameterEstimate

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> net = CellposeUNet(ModelConfig(features=(4, 8), diam_mean=10.0))
    >>> sm = SizeModel(np.zeros(8), np.zeros(8), np.log(2.0), 10.0)
    >>> estimate_diameter(np.zeros((2, 16, 16), np.float32), net, size_model=sm,
    ...                   refine=False).diameter_style
    20.0
    """
    image, model = _data_first(image, model, func="estimate_diameter", data_name="image")
    x = np.asarray(image, np.float32)
    d_style = style_diameter(x, model, size_model)
    if not refine:
        return DiameterEstimate(d_style, d_style)
    sm = _find_size_model(model, size_model)
    masks = _masks_at_scale(x, model, scale=sm.diam_mean / d_style,
                            **model_thresholds(model, cellprob_threshold, flow_threshold))
    d = median_diameter(masks)
    return DiameterEstimate(d if d > 0 else d_style, d_style)

"""The knobs of :func:`~cellpose_nb.predict.segment` that are not about the image.

:class:`SegmentConfig` holds how the network runs (tiling, flips, batches,
device, precision) and how masks are made from its outputs (thresholds,
minimum size, flow steps).  The image's own knobs (diameter, channels,
channel axis, inversion) stay arguments of ``segment``.  Every default is read
from the module that owns it, so the command line (which reads its defaults
from here) and the Python API cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
import torch

from cellpose_nb.masks import CELLPROB_LIMIT, CELLPROB_THRESHOLD, FLOW_LIMIT, FLOW_THRESHOLD, MIN_SIZE
from cellpose_nb.model.record import record_field
from cellpose_nb.predict.net import PRECISION, PRECISIONS
from cellpose_nb.predict.tiles import PAD_MULTIPLE, TILE_OVERLAP, TILE_SIZE

__all__ = ["SegmentConfig", "THRESHOLD_KEYS", "model_thresholds"]

# keys read from model.record.thresholds, first match wins
THRESHOLD_KEYS = {"cellprob_threshold": ("cellprob_threshold", "cellprob"),
                  "flow_threshold": ("flow_threshold", "flow")}



def _is_bool(v):
    return isinstance(v, (bool, np.bool_))


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v)


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Network and mask knobs of :func:`~cellpose_nb.predict.segment`.

    Pass one as ``segment(..., config=cfg)``, or override single fields with
    keywords: ``segment(image, model, augment=True)`` is
    ``segment(image, model, config=SegmentConfig(augment=True))``.

    Examples
    --------
    >>> cfg = SegmentConfig(augment=True)
    >>> cfg.augment, cfg.tile_size == TILE_SIZE, cfg.cellprob_threshold is None
    (True, True, True)
    >>> SegmentConfig(tile_size=40)
    Traceback (most recent call last):
    ...
    ValueError: tile_size must be a positive multiple of 16; got 40
    """

    normalize: bool = True  # percentile-normalise each channel (to_network_input)
    tile_size: int = TILE_SIZE  # tile side in pixels, a multiple of PAD_MULTIPLE
    tile_overlap: float = TILE_OVERLAP  # fraction of a tile shared with each neighbour
    augment: bool = False  # Cellpose's test-time flips of every other tile
    batch_size: int | None = None  # tiles per forward pass; None: run_net's rule per device
    device: str | torch.device | None = None  # None: where the model is
    precision: str = PRECISION  # a key of PRECISIONS; others than float32 run under autocast
    cellprob_threshold: float | None = None  # None: the model's tuned one, else masks'
    flow_threshold: float | None = None  # None: the model's tuned one, else masks'; 0: no check
    min_size: int = MIN_SIZE  # masks with fewer pixels are dropped (<= 0: keep all)
    n_iter: int | None = None  # flow steps; None: n_iter_for(scale), as Cellpose's eval

    def __post_init__(self):
        checks = [
            ("normalize", _is_bool(self.normalize), "True or False"),
            ("tile_size", _is_int(self.tile_size) and self.tile_size >= PAD_MULTIPLE
             and self.tile_size % PAD_MULTIPLE == 0, f"a positive multiple of {PAD_MULTIPLE}"),
            ("tile_overlap", _is_real(self.tile_overlap) and 0 <= self.tile_overlap < 1,
             "a fraction in [0, 1)"),
            ("augment", _is_bool(self.augment), "True or False"),
            ("batch_size", self.batch_size is None
             or (_is_int(self.batch_size) and self.batch_size >= 1), "None or an integer >= 1"),
            ("device", self.device is None or isinstance(self.device, (str, torch.device)),
             "None, a device name or a torch.device"),
            ("precision", isinstance(self.precision, str) and self.precision in PRECISIONS,
             f"one of {list(PRECISIONS)}"),
            ("cellprob_threshold", self.cellprob_threshold is None
             or (_is_real(self.cellprob_threshold)
                 and abs(self.cellprob_threshold) <= CELLPROB_LIMIT),
             f"None or a logit in [-{CELLPROB_LIMIT:g}, {CELLPROB_LIMIT:g}]"),
            ("flow_threshold", self.flow_threshold is None
             or (_is_real(self.flow_threshold) and 0 <= self.flow_threshold <= FLOW_LIMIT),
             f"None or a number in [0, {FLOW_LIMIT:g}] (0: no flow check)"),
            ("min_size", _is_int(self.min_size), "an integer number of pixels"),
            ("n_iter", self.n_iter is None or (_is_int(self.n_iter) and self.n_iter >= 0),
             "None or an integer >= 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}; got {getattr(self, name)!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The knobs, in order.

        Examples
        --------
        >>> SegmentConfig.field_names()[:3]
        ('normalize', 'tile_size', 'tile_overlap')
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **knobs) -> SegmentConfig:
        """A copy with some fields changed; an unknown name raises TypeError listing the valid ones.

        Examples
        --------
        >>> SegmentConfig().replace(augment=True).augment
        True
        >>> SegmentConfig().replace(augmnet=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: unknown segment knob(s) augmnet; valid: normalize, tile_size, ..., n_iter
        """
        unknown = sorted(set(knobs) - set(self.field_names()))
        if unknown:
            raise TypeError(f"unknown segment knob(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **knobs) if knobs else self


def model_thresholds(model, cellprob_threshold=None, flow_threshold=None) -> dict:
    """The mask thresholds ``segment`` uses with ``model``: each one given, else the
    model's tuned value (``model.record.thresholds``), else the package default.

    Raises ValueError, naming the model's values, when a tuned one is out of range.

    Examples
    --------
    >>> from cellpose_nb.model import CellposeUNet, ModelConfig
    >>> net = CellposeUNet(ModelConfig(features=(4, 8)))
    >>> net.record = net.record.replace(thresholds={"cellprob": -0.5})
    >>> model_thresholds(net, flow_threshold=0.6)
    {'cellprob_threshold': -0.5, 'flow_threshold': 0.6}
    """
    tuned = record_field(model, "thresholds") or {}
    chosen = {"cellprob_threshold": cellprob_threshold, "flow_threshold": flow_threshold}
    defaults = {"cellprob_threshold": CELLPROB_THRESHOLD, "flow_threshold": FLOW_THRESHOLD}
    for name, keys in THRESHOLD_KEYS.items():
        if chosen[name] is None:
            found = [tuned[k] for k in keys if k in tuned]
            chosen[name] = found[0] if found else defaults[name]
    try:  # the model's tuned values get the same range checks as the caller's
        SegmentConfig(**chosen)
    except ValueError as exc:
        raise ValueError(f"the model's tuned thresholds {tuned}: {exc}") from None
    return {k: float(v) for k, v in chosen.items()}

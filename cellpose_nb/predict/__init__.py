"""Run a trained network on whole images: tiling, test-time augmentation, diameter.

:func:`segment` is the one-call path from an image to labels, as Cellpose's
``CellposeModel.eval``:

1. :func:`~cellpose_nb.normalize.to_network_input`: two channels, percentile-normalised;
2. rescale by ``diam_mean / diameter`` so that cells have the size the model
   was trained on (bilinear); without a diameter, the model's size model
   guesses it from the style of a few tiles (:func:`predict_style`), the image
   is segmented at the guess and the masks' median diameter is the estimate
   (:func:`estimate_diameter`); that segmentation is kept when the estimate is
   within ``REUSE_TOLERANCE`` of the guess;
3. :func:`run_net`: pad, cut into overlapping tiles of ``tile_size``, run the
   network on batches of tiles, blend the tile outputs with a taper that
   weights tile centres more than tile edges (Cellpose's ``make_tiles`` /
   ``average_tiles``), optionally with flipped tiles (``augment``);
4. resize the outputs back to the original size, divide the flows by
   ``FLOW_SCALE``, and :func:`~cellpose_nb.masks.compute_masks`.

Tiles are streamed: only ``batch_size`` tiles exist at a time and their
outputs are added into one preallocated (3, H, W) sum and one (H, W) weight,
so a 4096 x 4096 image needs a few float32 copies of itself, not one per tile.
The geometry (padding, tile positions, taper) is Cellpose's, so that the same
weights give the same network outputs as ``cellpose.core.run_net``.

The network and mask knobs of :func:`segment` are a :class:`SegmentConfig`
(``segment(image, model, config=cfg)``) or keyword overrides of its fields
(``segment(image, model, augment=True)``).  Data come first everywhere:
``run_net(x, model)``, ``predict_flows(x, model)``, ``estimate_diameter(image, model)``
(the previous ``(model, data)`` order still works for one release, with a
``DeprecationWarning``).

Modules: ``tiles`` (tile geometry and blending), ``net`` (network passes,
flips, precision, rescaling), ``style`` (the style of a few tiles, encoder
only), ``diameter`` (the size model), ``config``
(:class:`SegmentConfig`), ``passes`` (the result, the model's knobs, a pass
at a diameter), ``volume`` (2.5D and stitched volumes), ``segmentation``
(:func:`segment`, :func:`segment_many`).  This package never imports :mod:`cellpose_nb.train`.
"""

from cellpose_nb.flows import FLOW_SCALE
from cellpose_nb.masks import CELLPROB_THRESHOLD, FLOW_THRESHOLD, MIN_SIZE, N_ITER
from cellpose_nb.predict.config import THRESHOLD_KEYS, SegmentConfig, model_thresholds
from cellpose_nb.predict.diameter import (
    MIN_DIAMETER,
    SIZE_MODEL_FILE,
    DiameterEstimate,
    SizeModel,
    estimate_diameter,
    load_size_model,
    median_diameter,
    style_diameter,
)
from cellpose_nb.predict.net import (
    BATCH_SIZE,
    BATCH_SIZE_CPU,
    PRECISION,
    PRECISIONS,
    FlowPrediction,
    NetOutput,
    n_iter_for,
    predict_flows,
    run_net,
)
from cellpose_nb.predict.net import run_net_stack
from cellpose_nb.predict.passes import (
    DEFAULT_CHANNELS,
    REUSE_TOLERANCE,
    InputKnobs,
    Segmentation,
    input_knobs,
)
from cellpose_nb.predict.segmentation import segment, segment_many
from cellpose_nb.predict.style import STYLE_GRID, STYLE_QUANTILES, predict_style, style_tiles
from cellpose_nb.predict.volume import (
    ANISOTROPY,
    FLOW_GAIN_3D,
    MIN_SIDE_3D,
    predict_flows_3d,
    resampled_shape,
    volume_input,
)
from cellpose_nb.predict.tiles import (
    OVERLAP_RANGE,
    PAD_EXTRA,
    PAD_MULTIPLE,
    TAPER_MARGIN,
    TAPER_SIGMA,
    TILE_OVERLAP,
    TILE_SIZE,
    TileLayout,
    taper_mask,
    tile_layout,
)

__all__ = [
    # segmentation
    "Segmentation", "SegmentConfig", "InputKnobs", "segment", "segment_many", "input_knobs",
    # network passes
    "NetOutput", "FlowPrediction", "run_net", "run_net_stack", "predict_flows", "n_iter_for",
    # volumes
    "volume_input", "predict_flows_3d", "resampled_shape",
    # tiles
    "TileLayout", "tile_layout", "taper_mask",
    # size model
    "SizeModel", "DiameterEstimate", "estimate_diameter", "style_diameter", "load_size_model",
    "median_diameter", "predict_style", "style_tiles", "model_thresholds",
    # constants (owned by the modules above; thresholds, MIN_SIZE, N_ITER by masks,
    # FLOW_SCALE by flows)
    "TILE_SIZE", "TILE_OVERLAP", "OVERLAP_RANGE", "PAD_MULTIPLE", "PAD_EXTRA",
    "TAPER_MARGIN", "TAPER_SIGMA", "BATCH_SIZE", "BATCH_SIZE_CPU", "PRECISION", "PRECISIONS",
    "DEFAULT_CHANNELS", "THRESHOLD_KEYS", "CELLPROB_THRESHOLD", "FLOW_THRESHOLD",
    "MIN_SIZE", "N_ITER", "FLOW_SCALE", "MIN_DIAMETER", "SIZE_MODEL_FILE", "REUSE_TOLERANCE",
    "STYLE_GRID", "STYLE_QUANTILES", "ANISOTROPY", "FLOW_GAIN_3D", "MIN_SIDE_3D",
]

"""Training the Cellpose network: loss, schedule, loop, checkpoints, size model, thresholds.

The recipe is Cellpose's ``train.train_seg``:

* every training image is turned into its flows ONCE (:func:`cached_flows`),
  and every epoch each image is randomly flipped, rotated, zoomed toward the
  model's ``diam_mean`` and cropped to 224 x 224 (:mod:`cellpose_nb.augment`),
  the cached flows being turned as vectors with it;
* the loss is ``0.5 * MSE(y_flows, FLOW_SCALE * flows) + BCE(y_cellprob, labels > 0)``
  (:func:`segmentation_loss`);
* the learning rate ramps up linearly over 10 epochs, stays constant, and is
  halved 10 times over the last epochs (:func:`learning_rate_schedule`);
* AdamW (lr 0.005, weight decay 1e-5) as ``train_seg``'s default, or SGD
  with momentum 0.9 (the Cellpose 1 paper and CLI: lr 0.2).

Around it: a CSV history, resumable checkpoints, a NaN guard, a wall-time
budget, and after training the size model (style -> diameter,
:func:`fit_size_model`) and the post-processing thresholds
(:func:`optimize_thresholds`).  :func:`train_folder` does all of it for a
Cellpose-style folder.

Training inputs are network inputs: (2, H, W) float32 arrays, as returned by
:func:`prepare_images` (a thin loop over
:func:`cellpose_nb.normalize.to_network_input`).

Modules: ``config`` (TrainConfig, InputRecipe, TrainResult, run-folder names), ``loss``,
``inputs`` (data preparation), ``precision`` (mixed precision, threads),
``checkpoint``, ``steps`` (one optimisation step), ``loop`` (:func:`train`),
``size_model``, ``thresholds``, ``recipe`` (:func:`finish_model`,
:func:`train_folder`).  The size model used at inference (:class:`SizeModel`,
:func:`estimate_diameter`) lives in :mod:`cellpose_nb.predict` and is
re-exported here.
"""

from cellpose_nb.masks import MIN_SIZE
from cellpose_nb.predict import (
    MIN_DIAMETER,
    SIZE_MODEL_FILE,
    DiameterEstimate,
    SizeModel,
    estimate_diameter,
    load_size_model,
)
from cellpose_nb.train.config import (
    CHECKPOINT_FILE,
    FLOW_CACHE_DIR,
    HISTORY_COLUMNS,
    HISTORY_FILE,
    MODEL_DIR,
    InputRecipe,
    TrainConfig,
    TrainResult,
)
from cellpose_nb.train.inputs import (
    VAL_FRACTION,
    TrainValSplit,
    cached_flows,
    data_hash,
    median_diameter,
    prepare_images,
    split_train_val,
)
from cellpose_nb.train.loop import train
from cellpose_nb.train.loss import DECAY_RULE, learning_rate_schedule, segmentation_loss
from cellpose_nb.train.precision import (
    AMP_DTYPES,
    BFLOAT16_ISA,
    amp_dtype,
    cpu_bfloat16_isa,
    cpu_has_bfloat16_units,
    precision_reason,
)
from cellpose_nb.train.recipe import finish_model, train_folder
from cellpose_nb.train.size_model import (
    SIZE_CROP,
    SIZE_L2,
    SIZE_L2_GRID,
    SIZE_PASSES,
    SIZE_ZOOM_RANGE,
    SIZE_VAL_ZOOMS,
    fit_size_model,
    select_size_model,
)
from cellpose_nb.train.thresholds import (
    AP_IOU,
    CELLPROB_GRID,
    FLOW_GRID,
    ThresholdSearch,
    optimize_thresholds,
)

__all__ = [
    "TrainConfig",
    "InputRecipe",
    "amp_dtype",
    "cpu_has_bfloat16_units",
    "cpu_bfloat16_isa",
    "precision_reason",
    "TrainResult",
    "SizeModel",
    "DiameterEstimate",
    "segmentation_loss",
    "learning_rate_schedule",
    "prepare_images",
    "median_diameter",
    "cached_flows",
    "data_hash",
    "split_train_val",
    "TrainValSplit",
    "train",
    "fit_size_model",
    "select_size_model",
    "estimate_diameter",
    "load_size_model",
    "optimize_thresholds",
    "ThresholdSearch",
    "finish_model",
    "train_folder",
    # constants (MIN_DIAMETER and SIZE_MODEL_FILE are owned by cellpose_nb.predict,
    # MIN_SIZE by cellpose_nb.masks)
    "MIN_DIAMETER", "DECAY_RULE", "CHECKPOINT_FILE", "HISTORY_FILE", "HISTORY_COLUMNS",
    "MODEL_DIR", "FLOW_CACHE_DIR", "SIZE_MODEL_FILE", "SIZE_CROP", "SIZE_ZOOM_RANGE",
    "SIZE_VAL_ZOOMS",
    "SIZE_PASSES", "SIZE_L2", "SIZE_L2_GRID", "CELLPROB_GRID", "FLOW_GRID", "AP_IOU",
    "VAL_FRACTION", "MIN_SIZE", "AMP_DTYPES", "BFLOAT16_ISA",
]

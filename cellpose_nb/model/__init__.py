"""The Cellpose 1.0 residual U-Net and what surrounds it: device, model folder, interop.

``network`` (the network), ``record`` (its metadata), ``device``, ``folder``
(save/load), ``cellpose_interop`` (CPnet names and files), ``download`` (weight files).
"""

from .cellpose_interop import (
    CELLPOSE_DIAM_MEAN,
    CELLPOSE_STYLE_WIDTH,
    cellpose_reference_model,
    export_cellpose_weights,
    from_cellpose_keys,
    from_cellpose_state_dict,
    load_cellpose_weights,
    to_cellpose_keys,
    to_cellpose_state_dict,
)
from .device import fast_layout, resolve_device
from .download import (
    CELLPOSE_FILES,
    CELLPOSE_MODEL_URL,
    KNOWN_SHA256,
    cache_dir,
    download_weights,
    find_cellpose_weights,
    verify_cached,
)
from .folder import (
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    INPUT_FILE,
    PRETRAINED_DIR,
    RECORD_FILES,
    SIZE_MODEL_FILE,
    THRESHOLDS_FILE,
    TORCH_WEIGHTS_FILES,
    TRAINING_FILE,
    WEIGHTS_FILE,
    load,
    load_pretrained,
    save,
)
from .network import (
    BN_EPS,
    BN_MOMENTUM,
    DIAM_MEAN,
    OUTPUT_CHANNELS,
    CellposeUNet,
    ConvBlock,
    DownBlock,
    ModelConfig,
    StyleConvBlock,
    StyleVector,
    UpBlock,
    count_parameters,
    feature_map_shapes,
)
from .record import ModelRecord, record_field

__all__ = [
    "record_field",
    # network
    "ModelConfig",
    "ConvBlock",
    "StyleConvBlock",
    "DownBlock",
    "UpBlock",
    "StyleVector",
    "CellposeUNet",
    "OUTPUT_CHANNELS",
    "DIAM_MEAN",
    "BN_EPS",
    "BN_MOMENTUM",
    "count_parameters",
    "feature_map_shapes",
    # record
    "ModelRecord",
    # device
    "resolve_device",
    "fast_layout",
    # folder
    "save",
    "load",
    "load_pretrained",
    "PRETRAINED_DIR",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "TORCH_WEIGHTS_FILES",
    "CONFIG_FILE",
    "TRAINING_FILE",
    "THRESHOLDS_FILE",
    "INPUT_FILE",
    "SIZE_MODEL_FILE",
    "RECORD_FILES",
    # cellpose_interop
    "to_cellpose_keys",
    "from_cellpose_keys",
    "to_cellpose_state_dict",
    "from_cellpose_state_dict",
    "export_cellpose_weights",
    "load_cellpose_weights",
    "cellpose_reference_model",
    "CELLPOSE_DIAM_MEAN",
    "CELLPOSE_STYLE_WIDTH",
    # download
    "find_cellpose_weights",
    "download_weights",
    "verify_cached",
    "cache_dir",
    "CELLPOSE_MODEL_URL",
    "CELLPOSE_FILES",
    "KNOWN_SHA256",
]

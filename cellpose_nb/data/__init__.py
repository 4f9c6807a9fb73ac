"""Data: synthetic cells, Cellpose-style folders and the course data sets.

Three parts, all in the NumPy layer (no torch, matplotlib or ipywidgets):

1. :mod:`~cellpose_nb.data.synthetic`: :func:`make_synthetic` draws
   fluorescence-like images of irregular cells (cytoplasm + nuclei channels)
   with exact ``labels``; seeded, fast, and with knobs for size, crowding
   (``touching``), noise and blur; :func:`make_synthetic_volume`
   (:mod:`~cellpose_nb.data.synthetic3d`) draws volumes of touching
   ellipsoidal cells, with Z sampled ``anisotropy`` times coarser.
2. :mod:`~cellpose_nb.data.files` and :mod:`~cellpose_nb.data.folder`:
   :func:`read_folder` / :func:`iter_folder` read a Cellpose-style folder
   (``<name>_img.tif`` + ``<name>_masks.tif|png`` or the GUI's
   ``<name>_seg.npy``); :func:`read_image`, :func:`read_labels` and
   :func:`write_labels` handle single files.
3. :mod:`~cellpose_nb.data.datasets`: :func:`data_root`,
   :func:`dataset_index`, :func:`load_dsb2018` and :func:`load_cil` find and
   load the real data sets under ``shared/data``; :func:`load_sample` loads a
   small image shipped with the package.

Glossary (see DESIGN.md): ``image`` is (H, W) or (H, W, C); ``labels`` is an
integer (H, W) array, 0 = background, 1..N = one object each; ``diameter``
is in pixels.
"""

from cellpose_nb.data._synthetic_shapes import (
    ASPECT_RANGE,
    FOURIER_AMPLITUDE,
    FOURIER_ORDERS,
    MAX_CLUMP,
    MAX_WOBBLE,
    MIN_AREA_FRACTION,
    MIN_AREA_PIXELS,
    MIN_CENTRE_DISTANCE,
    MIN_GAP,
    NUCLEUS_ASPECT,
    NUCLEUS_OFFSET,
    NUCLEUS_SIZE,
    PLACEMENT_TRIES,
    SIZE_SIGMA,
    TOUCH_DEPTH,
)
from cellpose_nb.data.datasets import (
    DATA_ENV,
    DATA_RELATIVE,
    DSB_MODALITIES,
    SAMPLES,
    data_root,
    dataset_index,
    histology_to_gray,
    load_cil,
    load_dsb2018,
    load_sample,
)
from cellpose_nb.data.files import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    SEG_SUFFIX,
    TIFF_EXTENSIONS,
    UINT16_LIMIT,
    Sample,
    read_image,
    read_labels,
    write_labels,
)
from cellpose_nb.data.folder import iter_folder, list_folder, read_folder
from cellpose_nb.data.synthetic import (
    BACKGROUND_LEVEL,
    BACKGROUND_SWING,
    CELL_BRIGHTNESS,
    EDGE_FALLOFF,
    KINDS,
    NUCLEUS_BRIGHTNESS,
    NUCLEUS_CYTO_DIM,
    READ_NOISE,
    TEXTURE_SCALE,
    TEXTURE_STRENGTH,
    SyntheticSample,
    make_synthetic,
    make_synthetic_dataset,
)
from cellpose_nb.data.synthetic3d import SyntheticVolume, make_synthetic_volume

__all__ = [
    "load_sample",
    "SAMPLES",
    "SyntheticSample",
    "make_synthetic",
    "make_synthetic_dataset",
    "SyntheticVolume",
    "make_synthetic_volume",
    "Sample",
    "read_image",
    "read_labels",
    "write_labels",
    "list_folder",
    "iter_folder",
    "read_folder",
    "data_root",
    "dataset_index",
    "load_dsb2018",
    "load_cil",
    "histology_to_gray",
    # constants (synthetic shapes and rendering, file names, data sets)
    "KINDS", "SIZE_SIGMA", "ASPECT_RANGE", "FOURIER_ORDERS", "FOURIER_AMPLITUDE", "MAX_WOBBLE",
    "MIN_GAP", "TOUCH_DEPTH", "MAX_CLUMP", "MIN_CENTRE_DISTANCE", "PLACEMENT_TRIES",
    "MIN_AREA_FRACTION", "MIN_AREA_PIXELS", "NUCLEUS_SIZE", "NUCLEUS_ASPECT", "NUCLEUS_OFFSET",
    "BACKGROUND_LEVEL", "BACKGROUND_SWING", "CELL_BRIGHTNESS", "NUCLEUS_BRIGHTNESS",
    "EDGE_FALLOFF", "NUCLEUS_CYTO_DIM", "TEXTURE_STRENGTH", "TEXTURE_SCALE", "READ_NOISE",
    "TIFF_EXTENSIONS", "IMAGE_EXTENSIONS", "MASK_EXTENSIONS", "SEG_SUFFIX", "UINT16_LIMIT",
    "DATA_ENV", "DATA_RELATIVE", "DSB_MODALITIES",
]

"""Images larger than memory, and many images, on dask.distributed.

:func:`segment_large` segments one large 2-D image or 3-D volume (zarr,
OME-Zarr, TIFF, dask array) block by block: each block is read by a worker with a halo sized
from the diameter, segmented with :func:`~cellpose_nb.predict.segment`, and
the blocks are stitched so that a cell cut by a block boundary is one label
(decided from the overlap of the two blocks' masks in their shared halo, see
:mod:`.stitch`).  The labels are written block by block to zarr, an OME-Zarr
labels image or a tiled TIFF, with a per-cell table; an interrupted run
resumes from the blocks it finished.

The engine is dask.distributed: a local cluster sized from the machine by
default, or any cluster (dask-jobqueue on SLURM/PBS/LSF, Kubernetes, Coiled)
through its scheduler address or a ``Client`` (:mod:`.cluster`).

Modules: ``blocks`` (the block grid and halo, pure Python), ``stitch`` (overlap
matching, global ids, the cell table; NumPy/SciPy), ``io`` (reading stores
block by block), ``writers`` (the labels and the cell table out), ``cluster`` (which cluster), ``run`` (:func:`segment_large`),
``_worker`` (what runs on the workers), ``quality`` (crossing cells and
splits, to judge stitching).  dask, zarr and ome-zarr are the
``distributed`` extra (``pip install 'cellpose-nb[distributed]'``) and are
imported only when used.
"""

from cellpose_nb.distributed.blocks import (
           BLOCK_SIZE,
           HALO_DIAMETERS,
           Block,
           block_grid,
           halo_for,
)
from cellpose_nb.distributed.cluster import connect, local_cluster_options
from cellpose_nb.distributed.io import ImageSource, open_image
from cellpose_nb.distributed.run import LargeSegmentation, segment_large
from cellpose_nb.distributed.stitch import STITCH_IOU, global_labels, match_labels

__all__ = [
           "BLOCK_SIZE",
           "HALO_DIAMETERS",
           "STITCH_IOU",
           "Block",
           "ImageSource",
           "LargeSegmentation",
           "block_grid",
           "connect",
           "global_labels",
           "halo_for",
           "local_cluster_options",
           "match_labels",
           "open_image",
           "segment_large",
]

"""What runs on the dask workers: the model plugin and one task per block.

The model is loaded once per worker by :class:`ModelPlugin` (a dask
``WorkerPlugin``): from its name or folder on the worker itself, or unpickled
once from the model object the caller passed.  The tasks read their block
from the image store themselves (:meth:`ImageSource.read`), write their
labels into the work store, and return only small things (label counts,
matched pairs).

Imports dask.distributed at the top: imported by :mod:`.run` only after the
``distributed`` extra is checked.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import numpy as np
from distributed import WorkerPlugin, get_worker

from cellpose_nb.atomic import write_bytes
from cellpose_nb.distributed.blocks import Block, match_region, within
from cellpose_nb.distributed.stitch import STITCH_CONTAINED, block_table, match_labels

#: where a block's core table is kept in the work store, next to its labels
TABLE_FOLDER = "tables"


def load_model_spec(spec, device=None):
    """``nuclei`` (shipped), a model folder, or ``cellpose:NAME`` -> a model on ``device``."""
    from pathlib import Path

    from cellpose_nb import model as M

    spec = str(spec)
    if spec.startswith("cellpose:"):
        return M.load_cellpose_weights(spec.split(":", 1)[1], device=device)
    if Path(spec).exists():
        return M.load(spec, device=device)
    return M.load_pretrained(spec, device=device)


class ModelPlugin(WorkerPlugin):
    """Holds one model per worker, loaded at set-up.

    Parameters
    ----------
    model : str, Path or torch.nn.Module
        A model spec (see :func:`load_model_spec`), loaded on the worker, or a
        model object, pickled to each worker once.
    device : str, optional
        Where the worker puts the model (default: the best available there).
    """

    def __init__(self, model, device=None):
        self.spec = model if isinstance(model, (str, os.PathLike)) else None
        self.obj = None if self.spec is not None else model
        self.device = device
        self.client_pid = os.getpid()
        self.model = None

    def setup(self, worker):
        import torch

        if os.getpid() != self.client_pid:  # a worker process of its own: one torch thread per dask thread
            torch.set_num_threads(max(1, worker.state.nthreads))
        if self.spec is not None:
            self.model = load_model_spec(self.spec, self.device)
        else:
            self.model = self.obj.to(self.device) if self.device else self.obj
        self.model.eval()


@dataclasses.dataclass(frozen=True)
class Job:
    """Everything a block task needs besides its block (small: pickled with every task)."""

    source: Any  # ImageSource
    work: str  # the work store
    plugin: str  # name of the ModelPlugin
    diameter: float
    channels: tuple  # the network's input channels, as to_network_input's
    low: tuple  # per network channel: the raw value mapped to 0 ...
    high: tuple  # ... and to 1; None: the channel is zeros
    invert: bool
    config: Any  # SegmentConfig with normalize=False
    two_channels: bool  # the network reads a nuclear channel (else it is zeros)
    do_3d: bool = False  # the blocks are volumes, segmented in 2.5D
    anisotropy: float = 1.0  # of a volume: Z step / XY pixel size


def _model(job):
    """The worker's model; in a worker process of its own, numba gets dask's thread count too.

    numba's thread count belongs to the calling thread, so it is set here, in the
    task's thread, not at set-up (else each 1-thread worker would run numba's hot
    loops on every core and the workers would contend for them).
    """
    worker = get_worker()
    plugin = worker.plugins[job.plugin]
    if os.getpid() != plugin.client_pid:
        import numba

        numba.set_num_threads(max(1, min(worker.state.nthreads, numba.config.NUMBA_NUM_THREADS)))
    return plugin.model


def network_input(job, pixels, volume=False) -> np.ndarray:
    """(2, h, w), or for a ``volume`` (2, d, h, w), float32 network input of ``pixels``,
    normalised by the image's percentiles."""
    from cellpose_nb.normalize import to_network_input

    spatial = pixels.shape[:3] if volume else pixels.shape[:2]
    if volume:  # one tall (d * h, w[, C]) image, as predict.volume_input
        pixels = pixels.reshape(-1, *pixels.shape[2:])
    x = to_network_input(pixels, channels=job.channels, normalize=False).reshape(2, *spatial)
    for k in range(2):
        if job.low[k] is None:
            x[k] = 0.0
        else:
            x[k] = (x[k] - np.float32(job.low[k])) / np.float32(job.high[k] - job.low[k])
    if job.invert:
        x[0] = 1.0 - x[0]
    return x


def _segment_pixels(job, pixels, diameter):
    from cellpose_nb.predict import segment

    x = network_input(job, pixels, volume=job.do_3d)
    image = np.moveaxis(x, 0, -1) if job.two_channels else x[0]
    channels = (0, 1) if job.two_channels else (0, None)
    volume = dict(do_3d=True, anisotropy=job.anisotropy,
                  channel_axis=-1 if job.two_channels else None) if job.do_3d else {}
    return segment(image, _model(job), diameter=diameter, channels=channels, invert=False,
                   config=job.config, **volume)


def _read(source, region, pixels):
    """``pixels`` when the client sent them (a numpy image), else read by this worker."""
    return source.read(region) if pixels is None else pixels


def sample_task(source, region, step, pixels=None):
    """Every ``step``-th pixel of ``region`` on the image-wide grid (for the percentiles).

    A copy, not a view: dask holds the results until the client gathers them,
    and a view would hold its whole block (at 16384 x 16384 in blocks of 1024,
    256 blocks of 4 MB: 1 GB in a one-worker cluster before the fix).
    """
    block = _read(source, region, pixels)
    return block[tuple(slice((-r.start) % step, None, step) for r in region)].copy()


def diameter_task(job, region, pixels=None):
    """The size model's estimate on ``region`` (of a volume: one plane), or None when the
    model has none."""
    from cellpose_nb.predict import estimate_diameter

    pixels = _read(job.source, region, pixels)
    x = network_input(job, pixels[0] if len(region) == 3 else pixels)
    try:
        return float(estimate_diameter(x, _model(job)).diameter)
    except ValueError:  # no size model
        return None


def _ext_arrays(work):
    import zarr

    group = zarr.open_group(work, mode="r+")
    return group["ext"], group["count"]


def segment_task(job, block: Block, pixels=None) -> int:
    """Segment one block's extended region; store its labels, core table and count.

    The count is written last: a block with a count is finished (the re-run's
    resume record).
    """
    res = _segment_pixels(job, _read(job.source, block.ext, pixels), job.diameter)
    labels = res.labels
    ext, count = _ext_arrays(job.work)
    ext[(*block.index, *(slice(0, n) for n in labels.shape))] = labels
    n = int(labels.max(initial=0))
    table = block_table(labels[block.core_in_ext], tuple(c.start for c in block.core), n)
    buf = io.BytesIO()
    np.save(buf, table)
    write_bytes(_table_path(job.work, block), buf.getvalue(), overwrite=True)
    count[block.index] = n
    return n


def _table_path(work, block: Block):
    return os.path.join(work, TABLE_FOLDER, "_".join(str(i) for i in block.index) + ".npy")


def read_table(work, block: Block) -> np.ndarray:
    return np.load(_table_path(work, block), allow_pickle=False)


def _ext_labels(ext, block):
    return ext[(*block.index, *(slice(0, n) for n in block.ext_shape))]


def match_task(job, a: Block, b: Block, min_iou, margin, min_contained=STITCH_CONTAINED) -> np.ndarray:
    """The pairs of labels of blocks ``a`` and ``b`` that are one cell (see stitch)."""
    ext, _ = _ext_arrays(job.work)
    region = match_region(a, b, margin)
    if region is None:
        return np.zeros((0, 2), np.int64)
    la, lb = _ext_labels(ext, a)[within(region, a)], _ext_labels(ext, b)[within(region, b)]
    return match_labels(la, lb, min_iou=min_iou, min_contained=min_contained)


def write_task(job, block: Block, lut, labels_path) -> int:
    """Write the block's core with global ids into the stitched label array."""
    import zarr

    ext, _ = _ext_arrays(job.work)
    core = _ext_labels(ext, block)[block.core_in_ext]
    out = zarr.open_array(labels_path, mode="r+")
    out[block.core] = np.asarray(lut)[core].astype(out.dtype)
    return int(core.size)

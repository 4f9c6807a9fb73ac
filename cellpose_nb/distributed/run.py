"""Block-wise segmentation of one large image or volume on dask.distributed: :func:`segment_large`.

The steps, each a set of dask tasks that read from and write to stores:

1. *Image-wide knobs*, decided once so that every block sees the same scale
   and intensities: the percentiles of the normalisation, from a regular
   sample of at most ``NORM_SAMPLE_PIXELS`` pixels (every pixel of smaller
   images, so the result equals :func:`~cellpose_nb.predict.segment`'s), the
   ``invert="auto"`` decision, and the diameter (given, or estimated once by
   the size model on a central ``DIAMETER_CROP`` crop).
2. *Segment*: every block's extended region (core + halo, see
   :mod:`.blocks`) through :func:`~cellpose_nb.predict.segment` on a worker
   (of a volume: 2.5D, ``do_3d=True``, with a halo of as many micrometres in Z),
   with the model loaded once per worker; its labels, its core's table and
   its label count go to the work store ``.<out name>.blocks.zarr`` next to
   ``out``.  The count is the block's done record: a re-run with the same
   settings skips the blocks that have one.
3. *Stitch*: labels of neighbouring blocks matched by their overlap in the
   shared halos, joined, renumbered 1..N (:mod:`.stitch`).
4. *Write*: each block's core with global ids into a zarr array, chunk by
   chunk; then the user's format (zarr, OME-Zarr labels, tiled TIFF).  The
   work store is removed at the end (``keep_work=True`` keeps it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cellpose_nb.distributed.blocks import (
    BLOCK_SIZE,
    _ints,
    block_grid,
    check_blocks,
    grid_shape,
    grid_step,
    halos,
    neighbour_pairs,
)
from cellpose_nb.distributed.cluster import connect
from cellpose_nb.distributed.io import open_image, require
from cellpose_nb.distributed.stitch import STITCH_CONTAINED, STITCH_IOU, global_labels, merge_tables
from cellpose_nb.distributed.writers import write_masks_tiff, write_masks_zarr, write_ome_zarr_labels

__all__ = [
    "DIAMETER_CROP",
    "MASK_FORMATS",
    "NORM_SAMPLE_PIXELS",
    "LargeSegmentation",
    "masks_format_of",
    "segment_large",
    "work_store_for",
]

#: the percentiles are taken on at most this many pixels (a regular grid over the image)
NORM_SAMPLE_PIXELS = 2 ** 24
#: side of the central crop on which the diameter is estimated when none is given
DIAMETER_CROP = 1024
#: formats of the stitched masks, by their file name ending
MASK_FORMATS = {"ome-zarr": ".ome.zarr", "zarr": ".zarr", "tif": ".tif"}


class LargeSegmentation(NamedTuple):
    """Result of :func:`segment_large` (the labels stay on disk).

    Attributes
    ----------
    path : Path
        The stitched masks.
    n_cells : int
    cells : dict of str -> ndarray
        One row per cell 1..N: see :func:`~cellpose_nb.distributed.stitch.merge_tables`.
    diameter : float
    halo : tuple of int
        Per axis, as ``block_size``.
    block_size : tuple of int
    n_blocks : int
    n_resumed : int
        Blocks found finished by an earlier run and not segmented again.
    notes : tuple of str
        How image-wide knobs were chosen (estimated diameter, sampled percentiles).
    """

    path: Path
    n_cells: int
    cells: dict
    diameter: float
    halo: tuple
    block_size: tuple
    n_blocks: int
    n_resumed: int
    notes: tuple = ()


def masks_format_of(path) -> str:
    """The mask format a file name asks for.

    Examples
    --------
    >>> masks_format_of("a_masks.ome.zarr"), masks_format_of("a.zarr"), masks_format_of("a.TIF")
    ('ome-zarr', 'zarr', 'tif')
    """
    name = Path(path).name.lower()
    for fmt, suffix in MASK_FORMATS.items():
        if name.endswith(suffix) or (fmt == "tif" and name.endswith(".tiff")):
            return fmt
    raise ValueError(f"{path}: the masks' name must end in one of "
                     f"{', '.join(MASK_FORMATS.values())} (or .tiff)")


def work_store_for(out) -> Path:
    """The work store of the masks ``out``: blocks' labels, tables and done records.

    Examples
    --------
    >>> work_store_for("res/a_masks.zarr").name
    '.a_masks.zarr.blocks.zarr'
    """
    out = Path(out)
    return out.parent / f".{out.name}.blocks.zarr"


def _percentile_knobs(sample, channels, invert, normalize, volume=False):
    """(low, high, invert) of the network's two channels from a pixel sample (of a volume:
    its planes stacked as one tall image, as :func:`~cellpose_nb.predict.volume_input`)."""
    from cellpose_nb.normalize import (
        LOW_PERCENTILE,
        dark_objects,
        to_network_input,
        upper_percentile,
    )

    if volume:
        sample = sample.reshape(-1, *sample.shape[2:])
    x = to_network_input(sample, channels=channels, normalize=False)
    low, high = [], []
    for k in range(2):
        if not normalize:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = np.percentile(x[k], [LOW_PERCENTILE, upper_percentile(x[k])])
        flat = hi - lo < 1e-12 or (k == 1 and (channels[1] is None or sample.ndim == 2))
        low.append(None if flat else float(lo))
        high.append(None if flat else float(hi))
    if invert == "auto":
        invert = low[0] is not None and dark_objects((x[0] - low[0]) / (high[0] - low[0]))
    return tuple(low), tuple(high), bool(invert)


def _pixels(source, region):
    """What a task is sent besides its region: the pixels of a numpy image (workers cannot
    read the client's memory), else None (the worker reads the store itself)."""
    return source.read(region) if source.kind == "numpy" else None


def _sample(client, source, task_source):
    """A regular sample of the image's pixels, read by the workers block by block."""
    from cellpose_nb.distributed._worker import sample_task

    step = max(1, math.ceil((math.prod(source.shape) / NORM_SAMPLE_PIXELS) ** (1 / source.ndim)))
    size = max(BLOCK_SIZE, step)
    size -= size % step  # block starts on the sample grid
    blocks = block_grid(source.shape, size)
    futures = [client.submit(sample_task, task_source, b.core, step, _pixels(source, b.core), pure=False)
               for b in blocks]
    require("distributed").wait(futures)
    for b, f in zip(blocks, futures):
        if f.status == "error":  # a corrupt chunk, a store gone: before any block is segmented
            exc = f.exception()
            raise ValueError(f"{source.describe()}: cannot read the pixels of rows "
                             f"{b.core[-2].start}:{b.core[-2].stop}, cols {b.core[-1].start}:"
                             f"{b.core[-1].stop}: {type(exc).__name__}: {exc}") from exc
    parts = client.gather(futures)
    shape = [-(-n // step) for n in source.shape]
    extra = (source.n_channels,) if source.n_channels else ()
    out = np.empty((*shape, *extra), source.dtype)
    for b, part in zip(blocks, parts):
        out[tuple(slice(c.start // step, c.start // step + n) for c, n in zip(b.core, part.shape))] = part
    return out, step


def _central_crop(shape, size=DIAMETER_CROP):
    """The central ``size`` crop of an image; of a volume, on its middle plane."""
    plane = (slice(shape[0] // 2, shape[0] // 2 + 1),) if len(shape) == 3 else ()
    return plane + tuple(slice(max(0, (n - size) // 2), min(n, (n - size) // 2 + size))
                         for n in shape[-2:])


def _prepare_work(work, params, blocks, halo, block_size, overwrite):
    """Open or create the work store; refuse one from other settings unless ``overwrite``."""
    from cellpose_nb.distributed._worker import TABLE_FOLDER

    zarr = require("zarr")
    text = json.dumps(params, sort_keys=True)
    if work.exists():
        try:
            old = zarr.open_group(str(work), mode="r").attrs.get("params")
        except Exception:  # unreadable: not a run to resume
            old = None
        if old != text:
            if not overwrite:
                raise FileExistsError(f"{work} holds blocks of a run with other settings (or is "
                                      "not a work store of ours); remove it or pass overwrite=True")
            shutil.rmtree(work)
    group = zarr.open_group(str(work), mode="a")
    grid = grid_shape(blocks)
    ext = tuple(b + 2 * h for b, h in zip(block_size, halo))
    if "count" not in group:
        group.create_array("ext", shape=(*grid, *ext), chunks=(1,) * len(grid) + ext,
                           dtype="int32", fill_value=0)
        group.create_array("count", shape=grid, chunks=(1,) * len(grid), dtype="int64",
                           fill_value=-1)
        group.attrs["params"] = text
    (work / TABLE_FOLDER).mkdir(exist_ok=True)
    return group


def _run_tasks(client, futures, what, work, progress):
    """Wait for ``futures``; raise one error naming the failed blocks (finished ones are kept)."""
    distributed = require("distributed")
    if progress and futures:
        distributed.progress(list(futures.values()), notebook=False)
    distributed.wait(list(futures.values()))
    failed = [(k, f) for k, f in futures.items() if f.status == "error"]
    if failed:
        k, f = failed[0]
        exc = f.exception()
        raise RuntimeError(f"{len(failed)} of {len(futures)} blocks failed to {what}; first, block "
                           f"{k}: {type(exc).__name__}: {exc}. Finished blocks are kept in {work}: "
                           "re-run to resume") from exc
    return {k: f.result() for k, f in futures.items()}


def segment_large(image, model, *, out, diameter=None, block_size=BLOCK_SIZE, halo=None,
                  channels=None, channel_axis=None, invert=None, component=None, config=None,
                  do_3d=False, anisotropy=None, z_axis=None, allow_missing=False,
                  client=None, scheduler=None, n_workers=None, device=None,
                  min_iou=STITCH_IOU, min_contained=STITCH_CONTAINED, overwrite=False, keep_work=False,
                  progress=False, **knobs):
    """Segment an image or volume larger than memory block by block on dask.distributed.

    Parameters
    ----------
    image : str, Path, zarr array, dask array or ndarray
        See :func:`~cellpose_nb.distributed.io.open_image` (``channel_axis``,
        ``component``, ``z_axis``, ``allow_missing``: a zarr store with chunks
        never written is refused unless it is True).
    model : str, Path or CellposeUNet
        A model name (``"nuclei"``), a model folder or ``cellpose:NAME``
        (loaded by each worker), or a model object (sent to each worker once).
    out : str or Path
        The stitched masks: ``*.zarr``, ``*.ome.zarr`` (an OME-Zarr store
        whose ``labels/masks`` is the labels image) or ``*.tif``.
    diameter : float, optional
        Cell diameter in pixels, the same for every block.  None: estimated
        once by the model's size model on the central crop (see ``notes``).
    block_size : int or tuple of int
        Core side(s) in pixels (planes, rows, cols for a volume); need not
        divide the image, and must not be smaller than the halo where the
        image has more than one block.
    halo : int or tuple of int, optional
        Default: :func:`~cellpose_nb.distributed.blocks.halo_for` the diameter;
        in a volume's Z, one int is divided by the anisotropy (the same
        micrometres).
    channels, invert, config, **knobs
        As :func:`~cellpose_nb.predict.segment`.
    do_3d, anisotropy, z_axis
        A volume, segmented block by block in 2.5D (as ``segment(...,
        do_3d=True, anisotropy=...)``); the diameter is estimated, when not
        given, on the middle plane.
    client, scheduler, n_workers
        See :func:`~cellpose_nb.distributed.cluster.connect`.
    device : str, optional
        Where the workers run the model (default: the best each has).
    min_iou, min_contained : float (min_contained: or None, IoU alone)
        See :func:`~cellpose_nb.distributed.stitch.match_labels`.
    overwrite : bool
        Replace ``out`` (and a work store of other settings).
    keep_work : bool
        Keep the work store after success.
    progress : bool
        Show dask's progress bar while blocks are segmented.

    Returns
    -------
    LargeSegmentation
    """
    require("distributed")
    from cellpose_nb.distributed._worker import (
        Job,
        ModelPlugin,
        diameter_task,
        match_task,
        read_table,
        segment_task,
        write_task,
    )
    from cellpose_nb.predict import PAD_MULTIPLE, SegmentConfig, input_knobs
    from cellpose_nb.predict.diameter import check_diameter
    from cellpose_nb.predict.volume import ANISOTROPY, MIN_SIDE_3D, _check_anisotropy, resampled_shape

    if config is not None and not isinstance(config, SegmentConfig):
        raise TypeError(f"config must be a SegmentConfig; got {type(config).__name__}")
    cfg = (config or SegmentConfig()).replace(**knobs)
    out = Path(out)
    fmt = masks_format_of(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    if not do_3d and (anisotropy is not None or z_axis is not None):
        raise ValueError("anisotropy and z_axis are for volumes: pass do_3d=True")
    aniso = _check_anisotropy(ANISOTROPY if anisotropy is None else anisotropy)
    source = open_image(image, channel_axis=channel_axis, component=component, z_axis=z_axis,
                        volume=do_3d, allow_missing=allow_missing)
    local = model if not isinstance(model, (str, Path)) else _load_on_client(model)
    channels, invert = input_knobs(local, channels, invert)
    diam_mean = float(local.config.diam_mean)
    notes = []
    # what the tasks carry: the description of the store, never a numpy image itself
    task_source = dataclasses.replace(source, array=None) if source.kind == "numpy" else source
    with connect(client, scheduler, n_workers=n_workers) as cl:
        # 1. image-wide knobs: percentiles, inversion, diameter, halo
        sample, step = _sample(cl, source, task_source)
        low, high, inv = _percentile_knobs(sample, channels, invert, cfg.normalize, volume=do_3d)
        del sample
        if step > 1:
            notes.append(f"intensity percentiles from every {step}th pixel")
        plugin = f"cellpose-nb-model-{id(local):x}-{np.random.default_rng().integers(1 << 30):x}"
        cl.register_plugin(ModelPlugin(str(model) if isinstance(model, (str, Path)) else model,
                                       device), name=plugin)
        try:
            job = Job(task_source, "", plugin, 0.0, tuple(channels), low, high, inv,
                      cfg.replace(normalize=False), low[1] is not None, do_3d, aniso)
            if diameter is None:
                crop = _central_crop(source.shape)
                d = cl.submit(diameter_task, job, crop, _pixels(source, crop), pure=False).result()
                if d is None:
                    warnings.warn(f"diameter=None: the model has no size model; using its diam_mean = "
                                  f"{diam_mean:g} px for every block. Pass diameter= to set the cell size.",
                                  UserWarning, stacklevel=2)
                    d = diam_mean
                else:
                    where = "the middle plane's" if do_3d else "the"
                    notes.append(f"diameter {d:.1f} px estimated on {where} central "
                                 f"{crop[-2].stop - crop[-2].start} x {crop[-1].stop - crop[-1].start} crop")
                diameter = d
            diameter = check_diameter(diameter, source.shape[-2:], diam_mean)
            bsize = _ints(block_size, "block_size", source.ndim)  # one int: every axis
            step = grid_step(diameter, diam_mean, PAD_MULTIPLE)
            if halo is None and not do_3d and step > 1 and all(b % step == 0 for b in bsize):
                notes.append(f"blocks on the network's grid ({step} px): the same network "
                             "outputs as the whole image")
            # a volume is resampled in Z as well, so its blocks cannot keep the network's grid
            halo = halos(diameter, halo, source.ndim, aniso, multiple=1 if do_3d else step)
            check_blocks(source.shape, bsize, halo, diameter)
            # 2. segment the blocks not done by an earlier run of the same settings
            blocks = block_grid(source.shape, bsize, halo)
            if do_3d:  # the smallest extended region must still hold slices the network can read
                smallest = tuple(min(b.ext_shape[k] for b in blocks) for k in range(3))
                small = resampled_shape(smallest, diam_mean / diameter, aniso)
                if min(small) < MIN_SIDE_3D:
                    raise ValueError(f"the smallest block of the volume, {smallest} voxels with its "
                                     f"halo, becomes {small} at the model's scale and anisotropy "
                                     f"({aniso:g}); every axis must be at least {MIN_SIDE_3D}: use "
                                     "larger blocks (or whole planes: a block_size of the volume's depth)")
            work = work_store_for(out)
            params = {"image": source.describe(), "model": str(model) if isinstance(model, (str, Path))
                      else type(model).__name__, "diameter": diameter,
                      "halo": halo[0] if len(set(halo)) == 1 and not do_3d else list(halo),
                      "block_size": list(bsize), "channels": [str(c) for c in channels],
                      "low": low, "high": high, "invert": inv, "config": repr(job.config)}
            if do_3d:  # (2-D runs keep the keys of earlier versions: their work stores resume)
                params.update(do_3d=True, anisotropy=aniso)
            group = _prepare_work(work, params, blocks, halo, bsize, overwrite)
            job = dataclasses.replace(job, work=str(work), diameter=float(diameter))
            counts = np.asarray(group["count"][:])
            todo = [b for b in blocks if counts[b.index] < 0]
            futures = {b.index: cl.submit(segment_task, job, b, _pixels(source, b.ext), pure=False)
                       for b in todo}
            done = _run_tasks(cl, futures, "segment", work, progress)
            for index, n in done.items():
                counts[index] = n
            # 3. stitch: match neighbours in their shared halos, global ids 1..N
            tables = [read_table(str(work), b) for b in blocks]
            pairs = neighbour_pairs(blocks)
            margin = tuple(max(1, h // 2) for h in halo)
            matched = _run_tasks(cl, {(a, b): cl.submit(match_task, job, blocks[a], blocks[b], min_iou,
                                                       margin, min_contained, pure=False) for a, b in pairs},
                                 "stitch", work, False)
            luts, n_cells = global_labels([counts[b.index] for b in blocks],
                                          [(a, b, p) for (a, b), p in matched.items()],
                                          [t[:, 0] for t in tables])
            # 4. write the cores with global ids, then the user's format
            labels_path = _labels_array(work, source.shape, bsize, n_cells)
            _run_tasks(cl, {b.index: cl.submit(write_task, job, b, lut, str(labels_path), pure=False)
                            for b, lut in zip(blocks, luts)}, "write", work, False)
            if out.exists():  # overwrite=True (checked above)
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            if fmt == "zarr":
                write_masks_zarr(labels_path, out)
            elif fmt == "ome-zarr":
                write_ome_zarr_labels(labels_path, out)
            else:
                write_masks_tiff(labels_path, out, overwrite=True)
        finally:  # the workers drop the model again
            cl.unregister_worker_plugin(plugin)
    cells = merge_tables(tables, luts, n_cells)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return LargeSegmentation(out, n_cells, cells, float(diameter), halo, bsize, len(blocks),
                             len(blocks) - len(todo), tuple(notes))


def _load_on_client(spec):
    """The model on the client, for its input recipe and diam_mean (workers load their own)."""
    from cellpose_nb.distributed._worker import load_model_spec

    return load_model_spec(spec, "cpu")


def _labels_array(work, shape, block_size, n_cells):
    """The stitched labels' zarr array, chunked as the blocks: uint32, or int64 beyond 2**32 - 1 cells."""
    zarr = require("zarr")
    path = Path(work) / "labels"
    dtype = "uint32" if n_cells < np.iinfo(np.uint32).max else "int64"
    arr = zarr.create_array(store=str(path), shape=tuple(shape), chunks=tuple(min(b, s) for b, s in
                            zip(block_size, shape)), dtype=dtype, fill_value=0, overwrite=True)
    arr.attrs["n_cells"] = int(n_cells)
    return path

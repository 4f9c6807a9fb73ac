"""``cellpose-nb segment ... --dask``: large images block by block, and folders, on dask.distributed.

Two modes, by what the inputs are:

- **large images** (TIFF files, zarr / OME-Zarr stores): each is segmented
  block-wise by :func:`cellpose_nb.distributed.segment_large` and written as
  ``<name>_masks.tif`` (tiled BigTIFF), ``<name>_masks.zarr`` or
  ``<name>_masks.ome.zarr`` (``--masks-format``), with ``<name>_cells.csv``
  (area, centroid, bounding box per cell).  Outlines, ROIs and ``_seg.npy``
  need the whole image in memory and are not written (a note says so).
  An interrupted run resumes from its finished blocks.
- **folders**: the images are mapped over the workers, each segmented whole by
  the serial command's own per-image unit
  (:func:`cellpose_nb.cli.segment.segment_image`): the same outputs, markers,
  no-overwrite and resume rules as without ``--dask``.

The cluster: a local one sized from the machine, or ``--scheduler ADDRESS``
for any running dask scheduler (dask-jobqueue, Kubernetes, Coiled...).  The
dashboard's address is printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cellpose_nb.distributed.blocks import BLOCK_SIZE

MASK_FORMATS = ("tif", "zarr", "ome-zarr")
#: formats of the serial command that a block-wise image gets (the others need it whole)
BLOCKWISE_FORMATS = ("masks", "csv")
PENDING = [-1, -1]  # marker stamp of an output being written by a block-wise run


def add_dask_options(parser):
    """``--dask``, ``--scheduler``, ``--workers``, ``--block-size``, ``--masks-format``,
    ``--allow-missing-chunks``."""
    g = parser.add_argument_group("dask.distributed (large images, folders on a cluster)")
    g.add_argument("--dask", action="store_true",
                   help="large TIFF/zarr images block-wise, folders image by image, on dask workers")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running dask scheduler, e.g. tcp://10.0.0.5:8786 "
                        "(default: a local cluster sized from this machine)")
    g.add_argument("--workers", type=int, default=None,
                   help="workers of the local cluster (default: one per core, as memory allows)")
    g.add_argument("--block-size", type=int, default=BLOCK_SIZE,
                   help="block side in pixels for large images")
    g.add_argument("--masks-format", default=MASK_FORMATS[0], choices=MASK_FORMATS,
                   help="how the masks of a large image are written")
    g.add_argument("--allow-missing-chunks", action="store_true",
                   help="segment a zarr store with chunks never written (read as its fill value)")


def wants_dask(args) -> bool:
    """True with ``--dask``; the dask-only options without it are a usage error."""
    if getattr(args, "dask", False):
        return True
    given = [name for name, default in (("--scheduler", None), ("--workers", None),
                                        ("--block-size", BLOCK_SIZE),
                                        ("--masks-format", MASK_FORMATS[0]),
                                        ("--allow-missing-chunks", False))
             if getattr(args, name[2:].replace("-", "_"), default) != default]
    if given:
        raise ValueError(f"{', '.join(given)} only work with --dask")
    return False


def _is_large(path: Path) -> bool:
    return path.is_file() or path.suffix.lower() == ".zarr"


def large_name(path) -> str:
    """Output base name of a large image: without ``.ome.zarr`` / ``.zarr`` / ``_img``
    (as ``segment.name_of`` names the serial command's outputs).

    Examples
    --------
    >>> large_name("scans/slide_img.ome.zarr"), large_name("b.tif")
    ('slide', 'b')
    """
    name = Path(path).name
    for suffix in (".ome.zarr", ".zarr", Path(name).suffix):
        if suffix and name.lower().endswith(suffix.lower()):
            name = name[: -len(suffix)]
            break
    return name.removesuffix("_img")


def run(args, serial, volume=None):
    """The ``--dask`` command; ``serial`` is :mod:`cellpose_nb.cli.segment`, whose per-image
    unit, markers and summary are reused (passed in: that module imports this one);
    ``volume``: its ``volume_options`` (``--3d``), {} for 2-D images."""
    from cellpose_nb.cli._common import load_model

    if args.block_size < 1:
        raise ValueError(f"--block-size must be >= 1; got {args.block_size}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1; got {args.workers}")
    if args.workers is not None and args.scheduler:
        raise ValueError("--workers sizes the local cluster; with --scheduler the cluster is yours")
    config = serial.config_from_args(args)
    for p in args.inputs:
        if not p.exists():
            raise FileNotFoundError(f"no such image or folder: {p}")
    large = [p for p in args.inputs if _is_large(p)]
    if large and len(large) != len(args.inputs):
        raise ValueError("with --dask give either large images (TIFF files, .zarr stores) or "
                         "folders, not both")
    load_model(args.model, "cpu")  # a bad --model fails here, before any cluster starts
    from cellpose_nb.distributed.cluster import connect

    with connect(scheduler=args.scheduler, n_workers=args.workers) as client:
        print(f"dask dashboard: {client.dashboard_link or 'none'}", file=sys.stderr)
        if large:
            return _run_large(args, large, config, client, serial, volume or {})
        return _run_folders(args, config, client, serial, volume or {})


# --- large images --------------------------------------------------------------------------
def _stamp_of(path: Path, serial):
    meta = path / "zarr.json" if path.is_dir() else path  # a store: its metadata file
    return serial._stamp(meta)


def _run_large(args, images, config, client, serial, volume):
    from cellpose_nb.distributed.writers import write_cells_table
    from cellpose_nb.distributed.run import MASK_FORMATS as SUFFIX_OF
    from cellpose_nb.distributed.run import segment_large

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    requested = list(dict.fromkeys(args.formats or (serial.FORMATS_3D if volume else serial.FORMATS)))
    formats = [f for f in requested if f in BLOCKWISE_FORMATS]
    left = [f for f in requested if f not in BLOCKWISE_FORMATS]
    if left:
        print(f"note: {', '.join(left)} not written for block-wise images (they need the whole "
              "image in memory)", file=sys.stderr)
    if not formats:
        raise ValueError(f"--formats {' '.join(requested)}: none of these is written block-wise; "
                         f"choose from {', '.join(BLOCKWISE_FORMATS)}")
    names = [large_name(p) for p in images]
    if len(set(names)) < len(names):
        raise ValueError(f"two inputs would write the same outputs in {out}: {names}")
    channels = None if args.channels is None else _channels(args)
    failed, skipped = [], []
    for path, name in zip(images, names):
        masks = out / f"{name}_masks{SUFFIX_OF[args.masks_format]}"
        cells = out / f"{name}_cells.csv"
        targets = ([masks] if "masks" in formats else []) + ([cells] if "csv" in formats else [])
        marker = serial.marker_path(out, name)
        complete, records = serial._read_marker(marker)
        ours = {t.name for t in targets if t.exists() and records.get(t.name) in
                (PENDING, _safe_stamp(t, serial))}
        if complete and not args.overwrite and all(t.name in ours for t in targets):
            skipped.append(path)
            print(f"{path.name}: done by an earlier run, skipped (--overwrite to redo)")
            continue
        foreign = [t.name for t in targets if t.exists() and t.name not in ours]
        if foreign and not args.overwrite:
            failed.append(path)
            print(f"{path.name}: FAILED: {', '.join(foreign)} exist in {out} but were not written "
                  "by cellpose-nb segment there (or changed since); pass --overwrite to replace",
                  file=sys.stderr)
            continue
        serial._write_marker(marker, False, {t.name: PENDING for t in targets})
        masks_out = masks if "masks" in formats else out / f".{name}_masks.tmp.zarr"
        try:
            res = segment_large(path, args.model, out=masks_out, diameter=args.diameter,
                                block_size=args.block_size, channels=channels,
                                channel_axis=args.channel_axis, invert=_invert(args), config=config,
                                client=client, device=args.device, overwrite=True,
                                progress=sys.stdout.isatty(), do_3d=bool(volume),
                                allow_missing=args.allow_missing_chunks,
                                anisotropy=volume.get("anisotropy"), z_axis=volume.get("z_axis"))
        except (ValueError, TypeError, RuntimeError) as exc:
            failed.append(path)
            print(f"{path.name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        if "csv" in formats:
            write_cells_table(cells, res.cells, overwrite=True)
        if "masks" not in formats:
            _remove(masks_out)
        serial._write_marker(marker, True, {t.name: _stamp_of(t, serial) for t in targets})
        print(f"{path.name}: {res.n_cells} cells in {res.n_blocks} blocks"
              + (f" ({res.n_resumed} done by an earlier run)" if res.n_resumed else "")
              + f" -> {', '.join(t.name for t in targets)}"
              + "".join(f" (note: {n})" for n in res.notes))
    done = len(images) - len(failed) - len(skipped)
    print(f"{done} of {len(images)} images segmented into {out}"
          + (f", {len(skipped)} skipped (already done)" if skipped else "")
          + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0


def _safe_stamp(path, serial):
    try:
        return _stamp_of(path, serial)
    except OSError:
        return None


def _remove(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _channels(args):
    from cellpose_nb.cli._common import parse_channels

    return parse_channels(args.channels)


def _invert(args):
    from cellpose_nb.cli._common import parse_invert

    return parse_invert(args.invert)


# --- folders -------------------------------------------------------------------------------
def folder_task(unit, plugin, f, kwargs):
    """One image of a folder on a worker: the serial command's ``unit``, with the worker's model."""
    from distributed import get_worker

    return unit(f, model=get_worker().plugins[plugin].model, **kwargs)


def _run_folders(args, config, client, serial, volume):
    from distributed import as_completed
    from tqdm import tqdm

    from cellpose_nb.distributed._worker import ModelPlugin

    files = serial.plan_inputs(args)
    targets, formats = serial.plan_outputs(args, files, volume=bool(volume))
    channels = None if args.channels is None else _channels(args)
    plugin = "cellpose-nb-folder-model"
    client.register_plugin(ModelPlugin(args.model, args.device), name=plugin)
    futures = {client.submit(folder_task, serial.segment_image, plugin, f,
                             {"out": args.out, "targets": targets[f], "args": args,
                              "channels": channels, "config": config, "formats": formats,
                              "volume": volume},
                             pure=False): f for f in files}
    failed, skipped, stopped, stopped_at = [], [], None, None
    bar = tqdm(total=len(files), desc="segment", unit="image")
    for fut in as_completed(futures):
        f = futures[fut]
        bar.update()
        exc = fut.exception() if fut.status == "error" else None
        if isinstance(exc, OSError) and exc.errno in serial.STOP_ERRNOS:
            stopped, stopped_at = exc, f  # --out takes no more files: stop the rest
            client.cancel(list(futures))
            break
        if exc is not None:
            failed.append(f)
            tqdm.write(f"{f.name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        status, message = fut.result()
        tqdm.write(message, file=sys.stderr if status == "failed" else None)
        {"failed": failed, "skipped": skipped}.get(status, []).append(f)
    bar.close()
    return serial.report(files, args.out, failed, skipped, stopped, stopped_at)

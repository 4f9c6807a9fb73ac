"""``cellpose-nb segment``: images or folders -> masks, outlines, tables, ROIs, ``_seg.npy``.

The network and mask options are fields of :class:`~cellpose_nb.predict.SegmentConfig`,
and their defaults are read from it, so the command line and the Python API
cannot drift apart.

Resuming and ownership.  Each image's outputs are one unit, written by
:func:`~cellpose_nb.export.export_all` all or nothing, and recorded in a
marker ``.<name>.segment.json`` in ``--out``: the size and modification time
of every output file this command wrote.  The marker is written twice: as
"incomplete" once the temporaries are written and before they are renamed,
and as "complete" last.  So on a re-run:

- complete marker, every requested output unchanged: skipped (already done);
- a file that the marker records and that is unchanged is ours and is
  replaced (the rest of an interrupted or partial set is redone);
- any other existing output (no marker, or changed since, e.g. corrected in
  the Cellpose GUI) is the user's: the image fails unless ``--overwrite``.

Leftover temporaries of our naming (``.<output stem>.<8 random>.part<ext>``,
see :func:`~cellpose_nb.atomic.stale_temporaries`) of this run's outputs are
removed from ``--out`` first.  SIGTERM is handled like Ctrl-C (by
:func:`cellpose_nb.cli.main`), so a killed run removes its temporaries too.  A full disk, a quota or a read-only ``--out``
stops the run (every following image would fail as well): one line naming
the file and folder, exit code 1; a re-run resumes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import sys
from pathlib import Path

from cellpose_nb.atomic import reworded, stale_temporaries, write_bytes
from cellpose_nb.cli._common import add_channel_options, field_default, load_model, parse_channels, parse_invert
from cellpose_nb.cli.segment_dask import add_dask_options, wants_dask
from cellpose_nb.cli.segment_dask import run as run_dask
from cellpose_nb.export3d import FORMATS_3D
from cellpose_nb.predict import PRECISIONS, SegmentConfig, segment

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_MARKERS = ("_masks", "_cp_masks", "_seg", "_outlines", "_flows")
FORMATS = ("masks", "outlines", "csv", "rois", "seg")
#: errors writing to --out that every following image would hit too: stop the run
STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
SHOW_SKIPPED = 3  # names shown in the line about input files skipped as output-like


def add_parser(sub):
    c = functools.partial(field_default, SegmentConfig)
    seg = sub.add_parser("segment", help="segment images or folders with a model")
    seg.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    seg.add_argument("--out", type=Path, required=True, help="output folder")
    seg.add_argument("--model", default="nuclei",
                     help="'nuclei' (shipped), a model folder, or cellpose:NAME (cyto3, nuclei, ...)")
    seg.add_argument("--diameter", type=float, default=None,
                     help="cell diameter in pixels (default: estimated, else the model's)")
    add_channel_options(seg, default_help="as the model was trained")
    seg.add_argument("--channel-axis", type=int, default=None,
                     help="axis of the channels in the files (default: last, when it has at most "
                          "4 entries; e.g. 0 for channels-first TIFFs)")
    seg.add_argument("--cellprob-threshold", type=float, default=c("cellprob_threshold"),
                     help="default: the model's tuned one, else masks.CELLPROB_THRESHOLD")
    seg.add_argument("--flow-threshold", type=float, default=c("flow_threshold"),
                     help="default: the model's tuned one, else masks.FLOW_THRESHOLD")
    seg.add_argument("--augment", action="store_true", default=c("augment"), help="test-time flips")
    seg.add_argument("--tile-size", type=int, default=c("tile_size"))
    seg.add_argument("--formats", nargs="+", default=None, choices=FORMATS,
                     help=f"outputs to write per image (default: all; for volumes "
                          f"{', '.join(FORMATS_3D)})")
    seg.add_argument("--device", default=c("device"), help="cuda, mps or cpu (default: best available)")
    seg.add_argument("--precision", default=c("precision"), choices=list(PRECISIONS),
                     help="network precision; bfloat16/float16 run under autocast: faster on "
                          "GPUs and on CPUs with bfloat16 units, outputs differ by about 1 %%")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_volume_options(seg)
    add_dask_options(seg)
    seg.set_defaults(func=run)


def add_volume_options(parser):
    """``--3d``, ``--stitch-threshold``, ``--z-axis``, ``--anisotropy``, ``--voxel-size``."""
    g = parser.add_argument_group("volumes (Z, Y, X) stacks")
    g.add_argument("--3d", dest="do_3d", action="store_true",
                   help="2.5D: the network on the YX, ZX and ZY slices, flows followed in 3D")
    g.add_argument("--stitch-threshold", type=float, default=None, metavar="IOU",
                   help="2D masks on every slice, linked across slices at this IoU (e.g. 0.25)")
    g.add_argument("--z-axis", type=int, default=None,
                   help="axis of the slices in the files (default: 0)")
    g.add_argument("--anisotropy", type=float, default=None,
                   help="Z step over the XY pixel size (default: dz/dy of --voxel-size, else 1)")
    g.add_argument("--voxel-size", type=float, nargs=3, default=None, metavar=("DZ", "DY", "DX"),
                   help="micrometres, written into the masks TIFF")


def volume_options(args):
    """The keyword arguments of :func:`segment` for a volume ({} for 2D images), checked.

    ``--z-axis``, ``--anisotropy`` and ``--voxel-size`` need ``--3d`` or
    ``--stitch-threshold``; without ``--anisotropy`` a voxel size gives it (dz / dy).
    """
    volume = args.do_3d or args.stitch_threshold is not None
    given = [f"--{n.replace('_', '-')}" for n in ("z_axis", "anisotropy", "voxel_size")
             if getattr(args, n) is not None]
    if not volume:
        if given:
            raise ValueError(f"{', '.join(given)} are for volumes: add --3d (2.5D) or "
                             "--stitch-threshold IOU (2D slices linked by IoU)")
        return {}
    if args.do_3d and args.stitch_threshold is not None:
        raise ValueError("choose --3d or --stitch-threshold, not both")
    if wants_dask(args) and args.stitch_threshold is not None:
        raise ValueError("--stitch-threshold does not work with --dask (slices are linked in one "
                         "process); use --3d for volumes block by block")
    anisotropy = args.anisotropy
    if args.voxel_size is not None:
        dz, dy, dx = args.voxel_size
        if not all(v > 0 and math.isfinite(v) for v in args.voxel_size):
            raise ValueError(f"--voxel-size must be three positive numbers (dz dy dx, um); "
                             f"got {dz:g} {dy:g} {dx:g}")
        if anisotropy is None and args.do_3d:  # stitching does not resample Z
            anisotropy = dz / dy
    if anisotropy is not None and not (math.isfinite(anisotropy) and anisotropy > 0):
        raise ValueError(f"--anisotropy must be a finite positive number (the Z step over the "
                         f"XY pixel size); got {anisotropy:g}")
    return {"do_3d": args.do_3d, "stitch_threshold": args.stitch_threshold,
            "z_axis": args.z_axis, "anisotropy": anisotropy}


def config_from_args(args) -> SegmentConfig:
    """The ``SegmentConfig`` that the parsed arguments describe."""
    return SegmentConfig(cellprob_threshold=args.cellprob_threshold,
                         flow_threshold=args.flow_threshold, augment=args.augment,
                         tile_size=args.tile_size, device=args.device, precision=args.precision)


def _is_output_like(path):
    """Hidden files (temporaries, macOS ``._*``) and outputs or annotations by their name."""
    stem = path.stem.lower()
    return path.name.startswith(".") or any(stem.endswith(m) for m in MASK_MARKERS)


def collect_images(inputs):
    """Image files named on the command line, folders expanded.

    Returns
    -------
    (list of Path, list of Path)
        The images, and the image files of the folders that were left out
        because they look like outputs or annotations (``*_masks``, ``*_seg``,
        ``*_outlines``, ``*_flows``) or are hidden.  A file named on the
        command line is always an image.
    """
    files, skipped = [], []
    for p in map(Path, inputs):
        try:
            is_dir, exists = p.is_dir(), p.exists()
            found = sorted(f for f in (p.iterdir() if is_dir else ())
                           if f.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:  # e.g. an unreadable folder: one line naming it
            raise reworded(exc, f"cannot read the input {p}") from exc
        if not exists:
            raise FileNotFoundError(f"no such image or folder: {p}")
        if not is_dir:
            files.append(p)
        files += [f for f in found if not _is_output_like(f)]
        skipped += [f for f in found if _is_output_like(f)]
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, inputs))}"
                                + (f" ({_skipped_line(skipped)})" if skipped else ""))
    return files, skipped


def _skipped_line(skipped):
    """One line that says which input files were left out, and why."""
    n = len(skipped)
    names = ", ".join(f.name for f in skipped[:SHOW_SKIPPED]) + (", ..." if n > SHOW_SKIPPED else "")
    return (f"skipped {n} file{'s' if n > 1 else ''} that look{'' if n > 1 else 's'} like outputs, "
            f"annotations or hidden files ({names}); name a file on the command line to segment it")


def name_of(path):
    """Output base name of an image file: its stem without a trailing ``_img``."""
    stem = Path(path).stem
    return stem[: -len("_img")] if stem.endswith("_img") else stem


def check_outputs_are_distinct(files, out):
    """Refuse, before any work, inputs whose outputs would collide or be confused with annotations.

    Two inputs with one output name (``a.tif`` and ``a.png``, ``b.tif`` and
    ``b_img.tif``) would write the same files; an output folder that is an input
    folder would take its ``<name>_masks.tif`` annotations for finished outputs.

    Examples
    --------
    >>> check_outputs_are_distinct([Path("d/a.tif"), Path("e/a_img.png")], Path("out"))
    Traceback (most recent call last):
    ...
    ValueError: d/a.tif and e/a_img.png would both write out/a_*: rename one, or segment them into different --out folders
    """
    seen = {}
    for f in files:
        name = name_of(f)
        if name in seen:
            raise ValueError(f"{seen[name]} and {f} would both write {Path(out) / name}_*: rename one, "
                             "or segment them into different --out folders")
        seen[name] = f
    out = Path(out).resolve()
    for folder in sorted({Path(f).resolve().parent for f in files}):
        if folder == out:
            raise ValueError(f"--out {out} is the folder of the input images: its annotations "
                             "(<name>_masks.tif) would be taken for outputs or overwritten; "
                             "choose another --out")


# --- the per-image marker -----------------------------------------------------------------
def marker_path(out, name):
    """The marker of image ``name`` in ``out``: which of its outputs this command wrote."""
    return Path(out) / f".{name}.segment.json"


def _stamp(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]  # a rename keeps both; an edit changes them


def _read_marker(path):
    """(complete, {output file name: stamp}); (False, {}) without a readable marker."""
    try:
        data = json.loads(Path(path).read_text())
        return data["complete"] is True, {str(k): list(v) for k, v in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False, {}  # nothing proven ours


def _unchanged(out, records):
    """The recorded file names whose file is still as this command wrote it."""
    ours = set()
    for name, stamp in records.items():
        with contextlib.suppress(OSError):
            if _stamp(Path(out) / name) == stamp:
                ours.add(name)
    return ours


def _write_marker(path, complete, records):
    write_bytes(path, json.dumps({"complete": complete, "files": records}).encode(), overwrite=True)


# --- one image: the unit that the serial and the dask folder modes share -------------------
def segment_image(f, *, out, targets, model, args, channels, config, formats, volume=None):
    """Segment one image file into its outputs in ``out``, by the marker rules above.

    Returns
    -------
    (str, str)
        ``"done"``, ``"skipped"`` or ``"failed"``, and the line to print.
        An OSError of :data:`STOP_ERRNOS` (full disk, read-only ``--out``) is raised.
    ``volume``: :func:`volume_options` (None or {}: a 2D image).
    """
    from cellpose_nb.data import read_image
    from cellpose_nb.export import export_all

    name = name_of(f)
    marker = marker_path(out, name)
    complete, records = _read_marker(marker)
    ours = _unchanged(out, records)
    if complete and not args.overwrite and all(t.name in ours for t in targets):
        return "skipped", f"{f.name}: done by an earlier run, skipped (--overwrite to redo)"
    existing = [t for t in targets if t.exists()]
    foreign = [t.name for t in existing if t.name not in ours]
    if foreign and not args.overwrite:
        one = len(foreign) == 1
        return "failed", (f"{f.name}: FAILED: {', '.join(foreign)} exist{'s' if one else ''} in {out} "
                          f"but {'was' if one else 'were'} not written by cellpose-nb segment there "
                          "(or changed since); pass --overwrite to replace")
    # other outputs of this image that an earlier run wrote stay ours
    redone = {t.name for t in targets}
    kept = {k: v for k, v in records.items() if k in ours and k not in redone}

    def note_ours(staged):  # before the renames: from now on these files are ours
        stamps = {t.name: _stamp(tmp) for t, tmp in staged.items()}  # a rename keeps them
        _write_marker(marker, False, {**kept, **stamps})

    try:
        image = read_image(f)
        res = segment(image, model, diameter=args.diameter, channels=channels,
                      channel_axis=args.channel_axis,
                      invert=parse_invert(args.invert), config=config, **(volume or {}))
    except Exception as exc:  # a bad image: report, skip, keep going
        return "failed", f"{f.name}: FAILED: {type(exc).__name__}: {exc}"
    try:
        paths = export_all(out, name, image, res, channel_axis=args.channel_axis,
                           overwrite=args.overwrite or bool(existing), formats=formats,
                           before_rename=note_ours,
                           voxel_size=getattr(args, "voxel_size", None) if volume else None)
        _write_marker(marker, True, {**kept, **{p.name: _stamp(p) for p in paths}})  # last
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in STOP_ERRNOS:
            raise
        return "failed", f"{f.name}: FAILED: {type(exc).__name__}: {exc}"
    return "done", (f"{f.name}: {int(res.labels.max())} cells -> {len(paths)} files"
                    + "".join(f" (note: {n})" for n in res.notes))


# --- the command -------------------------------------------------------------------------
def plan_inputs(args):
    """The images to segment, checked before any work (no output would collide)."""
    files, ignored = collect_images(args.inputs)
    if ignored:
        print(_skipped_line(ignored), file=sys.stderr)
    check_outputs_are_distinct(files, args.out)
    return files


def plan_outputs(args, files, volume=False):
    """Each image's output files and the formats; ``--out`` made and cleaned of temporaries.

    ``--formats`` defaults to all of ``FORMATS`` (images) or ``FORMATS_3D`` (``volume``).

    Returns
    -------
    (dict of Path -> list of Path, tuple of str)
    """
    from cellpose_nb.export import SUFFIXES

    out = args.out
    allowed = FORMATS_3D if volume else FORMATS
    formats = tuple(dict.fromkeys(allowed if args.formats is None else args.formats))
    if set(formats) - set(allowed):
        raise ValueError(f"--formats {' '.join(sorted(set(formats) - set(allowed)))}: not written "
                         f"for volumes; choose from {', '.join(allowed)}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise reworded(exc, f"cannot create the output folder {out}") from exc
    targets = {f: [out / f"{name_of(f)}{SUFFIXES[fmt]}" for fmt in formats] for f in files}
    ours_named = [t.name for ts in targets.values() for t in ts]
    ours_named += [marker_path(out, name_of(f)).name for f in files]
    try:
        stale = stale_temporaries(out, ours_named)
        for p in stale:  # temporaries of an interrupted run (ours by their name)
            p.unlink(missing_ok=True)
    except OSError as exc:
        raise reworded(exc, f"cannot clean the output folder {out}") from exc
    if stale:
        print(f"removed {len(stale)} temporary file{'s' if len(stale) > 1 else ''} of an "
              f"interrupted run from {out}", file=sys.stderr)
    return targets, formats


def report(files, out, failed, skipped, stopped=None, stopped_at=None):
    """Print the summary line (and why the run stopped); return the exit code."""
    done = (files.index(stopped_at) if stopped else len(files)) - len(failed) - len(skipped)
    print(f"{done} of {len(files)} images segmented into {out}"
          + (f", {len(skipped)} skipped (already done)" if skipped else "")
          + (f", {len(failed)} failed" if failed else ""))
    if stopped:
        print(f"cellpose-nb segment: error: {stopped}; stopped at {stopped_at.name}, as every "
              "following image would fail too; re-run to resume", file=sys.stderr)
    return 1 if failed or stopped else 0


def run(args):
    from tqdm import tqdm

    volume = volume_options(args)  # bad options fail before any work
    if wants_dask(args):  # large images / folders on dask.distributed
        return run_dask(args, sys.modules[__name__], volume)
    config = config_from_args(args)  # bad options fail before the model is loaded
    files = plan_inputs(args)
    model = load_model(args.model, args.device)
    targets, formats = plan_outputs(args, files, volume=bool(volume))
    channels = None if args.channels is None else parse_channels(args.channels)
    failed, skipped, stopped = [], [], None
    for f in tqdm(files, desc="segment", unit="image"):
        try:
            status, message = segment_image(f, out=args.out, targets=targets[f], model=model,
                                            args=args, channels=channels, config=config,
                                            formats=formats, volume=volume)
        except OSError as exc:
            if exc.errno not in STOP_ERRNOS:
                raise
            stopped = exc  # --out takes no more files (full disk, quota, read-only)
            break
        tqdm.write(message, file=sys.stderr if status == "failed" else None)
        {"failed": failed, "skipped": skipped}.get(status, []).append(f)
    return report(files, args.out, failed, skipped, stopped, f if stopped else None)

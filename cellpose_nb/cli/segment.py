"""``cellpose-nb segment``: images or folders -> masks, outlines, tables, ROIs, ``_seg.npy``.

The network and mask options are fields of :class:`~cellpose_nb.predict.SegmentConfig`,
and their defaults are read from it, so the command line and the Python API
cannot drift apart.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from cellpose_nb.cli._common import add_channel_options, field_default, load_model, parse_channels, parse_invert
from cellpose_nb.predict import PRECISIONS, SegmentConfig, segment

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_MARKERS = ("_masks", "_cp_masks", "_seg", "_outlines", "_flows")
FORMATS = ("masks", "outlines", "csv", "rois", "seg")


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
    seg.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS,
                     help="outputs to write per image")
    seg.add_argument("--device", default=c("device"), help="cuda, mps or cpu (default: best available)")
    seg.add_argument("--precision", default=c("precision"), choices=list(PRECISIONS),
                     help="network precision; bfloat16/float16 run under autocast: faster on "
                          "GPUs and on CPUs with bfloat16 units, outputs differ by about 1 %%")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.set_defaults(func=run)


def config_from_args(args) -> SegmentConfig:
    """The ``SegmentConfig`` that the parsed arguments describe."""
    return SegmentConfig(cellprob_threshold=args.cellprob_threshold,
                         flow_threshold=args.flow_threshold, augment=args.augment,
                         tile_size=args.tile_size, device=args.device, precision=args.precision)


def _is_output_like(path):
    stem = path.stem.lower()
    return any(stem.endswith(m) for m in MASK_MARKERS)


def collect_images(inputs):
    """Image files named on the command line, folders expanded (masks/outputs skipped)."""
    files = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.iterdir()
                            if f.suffix.lower() in IMAGE_SUFFIXES and not _is_output_like(f))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, inputs))}")
    return files


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


def run(args):
    from tqdm import tqdm

    from cellpose_nb.data import read_image
    from cellpose_nb.export import SUFFIXES, export_all

    config = config_from_args(args)  # bad options fail before the model is loaded
    files = collect_images(args.inputs)
    check_outputs_are_distinct(files, args.out)
    model = load_model(args.model, args.device)
    channels = None if args.channels is None else parse_channels(args.channels)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, skipped = [], []
    for f in tqdm(files, desc="segment", unit="image"):
        targets = [args.out / f"{name_of(f)}{SUFFIXES[fmt]}" for fmt in args.formats
                   if fmt in SUFFIXES]
        if not args.overwrite and targets and all(t.exists() for t in targets):
            # done by an earlier (perhaps interrupted) run: skip, so a re-run resumes
            skipped.append(f)
            tqdm.write(f"{f.name}: outputs exist, skipped (--overwrite to redo)")
            continue
        try:
            image = read_image(f)
            res = segment(image, model, diameter=args.diameter, channels=channels,
                          channel_axis=args.channel_axis,
                          invert=parse_invert(args.invert), config=config)
            paths = export_all(args.out, name_of(f), image, res, channel_axis=args.channel_axis,
                               overwrite=args.overwrite,
                               formats=tuple(args.formats))
            tqdm.write(f"{f.name}: {int(res.labels.max())} cells -> {len(paths)} files"
                       + "".join(f" (note: {n})" for n in res.notes))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # report, skip, keep going
            failed.append(f)
            tqdm.write(f"{f.name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
    done = len(files) - len(failed) - len(skipped)
    print(f"{done} of {len(files)} images segmented into {args.out}"
          + (f", {len(skipped)} skipped (already done)" if skipped else "")
          + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0

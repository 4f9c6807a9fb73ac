"""The torch-layer sub-commands of ``cellpose-nb``: segment, train, evaluate.

Kept apart from :mod:`cellpose_nb.cli` so that ``cellpose-nb demo`` starts
without importing torch.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
MASK_MARKERS = ("_masks", "_cp_masks", "_seg", "_outlines", "_flows")
INVERT_CHOICES = ("yes", "no", "auto")


def add_commands(sub):
    """Register segment / train / evaluate on an argparse sub-parser group."""
    seg = sub.add_parser("segment", help="segment images or folders with a model")
    seg.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders")
    seg.add_argument("--out", type=Path, required=True, help="output folder")
    seg.add_argument("--model", default="nuclei",
                     help="'nuclei' (shipped), a model folder, or cellpose:NAME (cyto3, nuclei, ...)")
    seg.add_argument("--diameter", type=float, default=None,
                     help="cell diameter in pixels (default: estimated, else the model's)")
    seg.add_argument("--channels", nargs=2, default=None, metavar=("CYTO", "NUCLEI"),
                     help="channel index of the cytoplasm (or only) channel and of the nuclei; "
                          "'none' for no nuclear channel, 'gray' for RGB luminance "
                          "(default: as the model was trained, else 0 none)")
    seg.add_argument("--invert", nargs="?", const="yes", default=None, choices=INVERT_CHOICES,
                     help="invert the first channel (dark objects on a light background); "
                          "'auto' guesses per image (default: as the model was trained, else no)")
    seg.add_argument("--cellprob-threshold", type=float, default=None)
    seg.add_argument("--flow-threshold", type=float, default=None)
    seg.add_argument("--augment", action="store_true", help="test-time flips")
    seg.add_argument("--tile-size", type=int, default=224)
    seg.add_argument("--formats", nargs="+", default=["masks", "outlines", "csv", "rois", "seg"],
                     help="outputs to write per image")
    seg.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    seg.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"],
                     help="network precision; bfloat16/float16 run under autocast: faster on "
                          "GPUs and on CPUs with bfloat16 units, outputs differ by about 1 %%")
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    seg.set_defaults(func=_segment)

    tr = sub.add_parser("train", help="train a model on a Cellpose-style folder")
    tr.add_argument("folder", type=Path, help="folder of <name>_img.tif + <name>_masks.tif")
    tr.add_argument("--out", type=Path, required=True, help="run folder (model, history, checkpoints)")
    tr.add_argument("--epochs", type=int, default=100)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--crop-size", type=int, default=224, help="side of the training crops")
    tr.add_argument("--learning-rate", type=float, default=None)
    tr.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw")
    tr.add_argument("--diam-mean", type=float, default=None,
                    help="model's mean cell diameter in px (default: the pretrained model's, else 30)")
    tr.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256])
    tr.add_argument("--channels", nargs=2, default=None, metavar=("CYTO", "NUCLEI"),
                    help="as for segment; saved with the model (default: the --pretrained "
                         "model's, else 0 none)")
    tr.add_argument("--invert", nargs="?", const="yes", default=None, choices=INVERT_CHOICES,
                    help="invert the first channel (dark cells); 'auto' guesses per image "
                         "(default: the --pretrained model's, else no)")
    tr.add_argument("--val-list", type=Path, default=None,
                    help="text file of validation image names, one per line "
                         "(default: a random --val-fraction)")
    tr.add_argument("--images-per-epoch", type=int, default=None,
                    help="crops per epoch (default: every training image once)")
    tr.add_argument("--warmup", type=int, default=None, help="warm-up epochs (default 10)")
    tr.add_argument("--decay", type=int, default=None,
                    help="epochs of learning-rate halvings at the end (default: Cellpose's rule)")
    tr.add_argument("--val-every", type=int, default=10, help="validate every N epochs")
    tr.add_argument("--size-passes", type=int, default=None,
                    help="random crops per training image for the size model (default 10)")
    tr.add_argument("--size-crop", type=int, default=None,
                    help="side of those crops (default 512, Cellpose's)")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--max-minutes", type=float, default=None,
                    help="time budget; stops resumably (exit code 3), continue with --resume")
    tr.add_argument("--val-fraction", type=float, default=0.1)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default=None)
    tr.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="mixed precision: float16 on cuda, bfloat16 on the CPU; by default on "
                         "cuda and on CPUs with bfloat16 units (Intel AMX), where it is 2-4x "
                         "faster; --no-amp: float32 everywhere")
    tr.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    tr.add_argument("--pretrained", default=None, help="start from this model (fine-tuning)")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="AP of predicted masks against true masks")
    ev.add_argument("true_folder", type=Path, help="folder with <name>_masks.tif (truth)")
    ev.add_argument("pred_folder", type=Path, help="folder with <name>_masks.tif (predictions)")
    ev.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ev.add_argument("--csv", type=Path, default=None, help="write the table here as CSV")
    ev.add_argument("--overwrite", action="store_true")
    ev.set_defaults(func=_evaluate)


# ----------------------------------------------------------------------------- helpers
def parse_invert(value):
    """``--invert`` value -> ``segment``'s ``invert``.

    Examples
    --------
    >>> [parse_invert(v) for v in (None, "yes", "no", "auto")]
    [None, True, False, 'auto']
    """
    return {None: None, "yes": True, "no": False, "auto": "auto"}[value]


def parse_channels(pair):
    """``["0", "none"]`` -> ``(0, None)``; ``"gray"`` stays a string.

    Examples
    --------
    >>> parse_channels(["1", "none"]), parse_channels(["gray", "2"])
    ((1, None), ('gray', 2))
    """
    out = []
    for c in pair:
        c = str(c).lower()
        if c in ("none", "-1", ""):
            out.append(None)
        elif c == "gray":
            out.append("gray")
        else:
            try:
                out.append(int(c))
            except ValueError:
                raise ValueError(f"channel must be an index, 'none' or 'gray'; got {c!r}") from None
    return tuple(out)


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


def _name_of(path):
    stem = Path(path).stem
    return stem[: -len("_img")] if stem.endswith("_img") else stem


def _load_model(spec, device):
    from cellpose_nb import model as M

    if spec.startswith("cellpose:"):
        return M.load_cellpose_weights(spec.split(":", 1)[1], device=device)
    if Path(spec).exists():
        return M.load(spec, device=device)
    return M.load_pretrained(spec, device=device)


# ----------------------------------------------------------------------------- segment
def _segment(args):
    from tqdm import tqdm

    from cellpose_nb.data import read_image
    from cellpose_nb.export import SUFFIXES, export_all
    from cellpose_nb.predict import segment

    files = collect_images(args.inputs)
    model = _load_model(args.model, args.device)
    channels = None if args.channels is None else parse_channels(args.channels)
    args.out.mkdir(parents=True, exist_ok=True)
    failed, skipped = [], []
    for f in tqdm(files, desc="segment", unit="image"):
        targets = [args.out / f"{_name_of(f)}{SUFFIXES[fmt]}" for fmt in args.formats
                   if fmt in SUFFIXES]
        if not args.overwrite and targets and all(t.exists() for t in targets):
            # done by an earlier (perhaps interrupted) run: skip, so a re-run resumes
            skipped.append(f)
            tqdm.write(f"{f.name}: outputs exist, skipped (--overwrite to redo)")
            continue
        try:
            image = read_image(f)
            res = segment(image, model, diameter=args.diameter, channels=channels,
                          invert=parse_invert(args.invert),
                          cellprob_threshold=args.cellprob_threshold,
                          flow_threshold=args.flow_threshold, augment=args.augment,
                          tile_size=args.tile_size, device=args.device,
                          precision=args.precision)
            paths = export_all(args.out, _name_of(f), image, res, overwrite=args.overwrite,
                               formats=tuple(args.formats))
            tqdm.write(f"{f.name}: {int(res.labels.max())} cells -> {len(paths)} files")
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


# ----------------------------------------------------------------------------- train
def _train(args):
    from cellpose_nb import train as T
    from cellpose_nb.model import ModelConfig
    from cellpose_nb.predict import input_knobs

    model = _load_model(args.pretrained, args.device) if args.pretrained else None
    diam_mean = args.diam_mean or (model.config.diam_mean if model is not None else 30.0)
    kw = dict(n_epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop_size,
              optimizer=args.optimizer, diam_mean=diam_mean, seed=args.seed, device=args.device,
              max_minutes=args.max_minutes, n_images_per_epoch=args.images_per_epoch,
              val_every=args.val_every, num_threads=args.threads, amp=args.amp)
    optional = {"learning_rate": args.learning_rate, "warmup_epochs": args.warmup,
                "decay_epochs": args.decay}
    kw.update({k: v for k, v in optional.items() if v is not None})
    config = T.TrainConfig(**kw)
    model_config = ModelConfig(features=tuple(args.features), diam_mean=diam_mean)
    channels, invert = input_knobs(model, None if args.channels is None
                                   else parse_channels(args.channels), parse_invert(args.invert))
    val_names = None
    if args.val_list is not None:
        if not args.val_list.is_file():
            raise FileNotFoundError(f"--val-list {args.val_list} does not exist")
        val_names = args.val_list.read_text().split()
    extra = {k: v for k, v in (("size_passes", args.size_passes), ("size_crop", args.size_crop))
             if v is not None}
    t0 = time.perf_counter()
    result = T.train_folder(args.folder, out_dir=args.out, config=config, model=model,
                            model_config=None if model is not None else model_config,
                            channels=channels, invert=invert, val_fraction=args.val_fraction,
                            val_names=val_names, seed=args.seed, resume=args.resume,
                            command=["cellpose-nb"] + sys.argv[1:], **extra)
    if not result.completed:
        print(f"stopped by the time budget after {len(result.history)} epochs; "
              f"run again with --resume to continue ({result.out_dir})")
        return 3
    print(f"trained in {time.perf_counter() - t0:.0f} s; model saved in {result.model_dir}")
    return 0


# ----------------------------------------------------------------------------- evaluate
def _masks_by_name(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    out = {}
    for f in sorted(folder.iterdir()):
        stem = f.stem
        for marker in ("_cp_masks", "_masks"):
            if stem.endswith(marker) and f.suffix.lower() in (".tif", ".tiff", ".png"):
                out[stem[: -len(marker)]] = f
                break
    return out


def _evaluate(args):
    from cellpose_nb.data import read_labels
    from cellpose_nb.metrics import matching, matching_dataset

    truth, preds = _masks_by_name(args.true_folder), _masks_by_name(args.pred_folder)
    if not truth:
        raise FileNotFoundError(f"no <name>_masks files in {args.true_folder}")
    if args.csv is not None and args.csv.exists() and not args.overwrite:
        raise FileExistsError(f"{args.csv} exists; pass --overwrite to replace it")
    th = args.thresholds
    rows, trues, predicted, missing = [], [], [], []
    for name, tpath in truth.items():
        if name not in preds:
            missing.append(name)
            continue
        t, p = read_labels(tpath), read_labels(preds[name])
        if t.shape != p.shape:
            raise ValueError(f"{name}: true shape {t.shape} != predicted shape {p.shape}")
        ms = matching(t, p, thresholds=th)
        rows.append([name, ms[0].n_true, ms[0].n_pred] + [m.ap for m in ms])
        trues.append(t)
        predicted.append(p)
    header = ["image", "n_true", "n_pred"] + [f"ap@{x:g}" for x in th]
    if rows:
        aps = np.array([r[3:] for r in rows], float)
        mean = ["MEAN (per image)", "", ""] + list(np.nanmean(aps, 0))
        ds = matching_dataset(trues, predicted, thresholds=th)
        pooled = ["POOLED (summed tp/fp/fn)", ds[0].n_true, ds[0].n_pred] + [m.ap for m in ds]
        rows += [mean, pooled]
    width = max(len(str(r[0])) for r in rows + [header])
    print("  ".join([f"{header[0]:<{width}}"] + [f"{h:>8}" for h in header[1:]]))
    for r in rows:
        cells = [f"{r[0]:<{width}}"] + [f"{v:>8.3f}" if isinstance(v, float) else f"{v!s:>8}" for v in r[1:]]
        print("  ".join(cells))
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            csv.writer(fh).writerows([header] + rows)
        print(f"wrote {args.csv}")
    for name in missing:
        print(f"{name}: no prediction in {args.pred_folder}", file=sys.stderr)
    return 1 if missing else 0

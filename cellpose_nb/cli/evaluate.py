"""``cellpose-nb evaluate``: AP of predicted masks against true masks, per image and overall."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from cellpose_nb.metrics import matching, matching_dataset

#: IoU thresholds of the table
THRESHOLDS = (0.5, 0.75, 0.9)


def add_parser(sub):
    ev = sub.add_parser("evaluate", help="AP of predicted masks against true masks")
    ev.add_argument("true_folder", type=Path, help="folder with <name>_masks.tif (truth)")
    ev.add_argument("pred_folder", type=Path, help="folder with <name>_masks.tif (predictions)")
    ev.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    ev.add_argument("--csv", type=Path, default=None, help="write the table here as CSV")
    ev.add_argument("--overwrite", action="store_true")
    ev.set_defaults(func=run)


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


def run(args):
    from cellpose_nb.data import read_labels

    truth, preds = _masks_by_name(args.true_folder), _masks_by_name(args.pred_folder)
    if not truth:
        raise FileNotFoundError(f"no <name>_masks files in {args.true_folder}")
    if args.csv is not None and args.csv.is_dir():
        raise IsADirectoryError(f"--csv {args.csv} is a folder; give a file name such as {args.csv / 'ap.csv'}")
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

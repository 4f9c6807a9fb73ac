"""``cellpose-nb evaluate``: AP of predicted masks against true masks, per image and overall."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from cellpose_nb.atomic import write_file
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
        t = read_labels(tpath)
        if name in preds:
            p = read_labels(preds[name])
            if t.shape != p.shape:
                raise ValueError(f"{name}: true shape {t.shape} ({tpath}) != predicted shape "
                                 f"{p.shape} ({preds[name]})")
        else:  # a missing prediction found no cell: it counts, as AP 0, not as a gap
            missing.append(name)
            p = np.zeros_like(t)
        ms = matching(t, p, thresholds=th)
        rows.append([name, ms[0].n_true, ms[0].n_pred] + [m.ap for m in ms]
                    + ["no prediction: counted as empty" if name in missing else ""])
        trues.append(t)
        predicted.append(p)
    header = ["image", "n_true", "n_pred"] + [f"ap@{x:g}" for x in th] + ["note"]
    aps = np.array([r[3:-1] for r in rows], float)
    rows.append(["MEAN (per image)", "", ""] + list(np.nanmean(aps, 0)) + [""])
    ds = matching_dataset(trues, predicted, thresholds=th)
    rows.append(["POOLED (summed tp/fp/fn)", ds[0].n_true, ds[0].n_pred] + [m.ap for m in ds] + [""])
    width = max(len(str(r[0])) for r in rows + [header])
    print("  ".join([f"{header[0]:<{width}}"] + [f"{h:>8}" for h in header[1:-1]]))
    for r in rows:
        cells = [f"{r[0]:<{width}}"] + [f"{v:>8.3f}" if isinstance(v, float) else f"{v!s:>8}"
                                          for v in r[1:-1]]
        print("  ".join(cells + ([f"  ({r[-1]})"] if r[-1] else [])))
    if args.csv is not None:
        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows([header] + rows)

        write_file(args.csv, write, overwrite=True)  # existence was checked before the work
        print(f"wrote {args.csv}")
    extra = sorted(set(preds) - set(truth))
    if extra:
        print(f"{len(extra)} predictions have no true masks and are not scored: "
              f"{', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}", file=sys.stderr)
    if missing:
        print(f"{len(missing)} of {len(truth)} images have no prediction in {args.pred_folder}, "
              f"counted as empty (AP 0): {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}",
              file=sys.stderr)
    return 1 if missing else 0

"""AP of a whole-cell model on the CIL MP6843 validation fields, at IoU 0.50 to 0.95.

Every validation field of ``scripts/cil_val.txt`` is segmented with the
model's input recipe (cytoplasm + nuclei), once at the true median cell
diameter and once at the model's own estimate, with and without test-time
flips.  AP is the per-image mean, as Cellpose reports it.  With ``--tune``,
the cellprob and flow thresholds are searched on the same fields for the best
mean of AP@0.5, 0.75 and 0.9 (so the thresholds are chosen at high IoU too),
on the setting a user gets by default (estimated diameter, no flips), and
applied to every setting; the network runs once per field and setting, and
only the mask step is repeated per grid point.  The fields were split from the training data
(``scripts/cil_split.py``); the held-back test fields were never used.

    python scripts/report_cil.py runs/cyto_s1/model --out runs/cyto_s1/report.json --tune
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cellpose_nb.data import read_folder
from cellpose_nb.masks import compute_masks
from cellpose_nb.metrics import average_precision
from cellpose_nb.model import load, load_pretrained
from cellpose_nb.predict import median_diameter, n_iter_for, segment

VAL_LIST = Path(__file__).with_name("cil_val.txt")
IOUS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
TUNE_IOUS = (0.5, 0.75, 0.9)  # thresholds are chosen for the mean AP at these IoUs
CELLPROB_GRID = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0)
FLOW_GRID = (0.2, 0.4, 0.6, 0.8, 1.0)
SHOWN = (0, 5, 8)  # indices of IoU 0.5, 0.75 and 0.9 in IOUS


def _mean_ap(truths, preds, ious):
    """Per-image mean AP at each IoU (an image with no cells either way counts as NaN, skipped)."""
    return np.nanmean(average_precision(truths, preds, thresholds=ious), axis=0)


def main(argv=None):
    default_data = Path(os.environ.get("CELLPOSE_NB_DATA", Path(__file__).parents[2] / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model folder or a shipped model's name")
    p.add_argument("--data", type=Path, default=default_data / "cil_mp6843" / "train")
    p.add_argument("--val-list", type=Path, default=VAL_LIST)
    p.add_argument("--out", type=Path, default=None, help="write the report here as JSON")
    p.add_argument("--tune", action="store_true", help="search the thresholds on these fields")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model) if Path(args.model).exists() else load_pretrained(args.model)
    names = set(args.val_list.read_text().split())
    samples = [s for s in read_folder(args.data) if s.name in names]
    if len(samples) != len(names):
        raise SystemExit(f"found {len(samples)} of the {len(names)} validation fields in {args.data}")
    truths = [s.labels for s in samples]
    report = {"model": str(args.model), "fields": sorted(names), "ious": list(map(float, IOUS)),
              "ap": "mean over fields of TP / (TP + FP + FN)", "settings": {}}
    t0 = time.perf_counter()
    settings = {}
    for diam, augment in itertools.product(("true", "estimated"), (False, True)):
        settings[f"{diam} diameter" + (", flips" if augment else "")] = [
            segment(s.image, model, augment=augment,
                    diameter=median_diameter(s.labels) if diam == "true" else None)
            for s in samples]

    def masks(results, c, f):
        return [compute_masks(r.flows, r.cellprob, cellprob_threshold=c, flow_threshold=f,
                              n_iter=n_iter_for(model.config.diam_mean / r.diameter))
                for r in results]

    tuned = None
    if args.tune:  # on what a user gets by default: estimated diameter, no flips
        default = settings["estimated diameter"]
        scores = {(c, f): float(np.mean(_mean_ap(truths, masks(default, c, f), TUNE_IOUS)))
                  for c, f in itertools.product(CELLPROB_GRID, FLOW_GRID)}
        tuned = max(scores, key=scores.get)
        report["tuning"] = {"on": "estimated diameter", "ious": list(TUNE_IOUS),
                            "cellprob_threshold": tuned[0], "flow_threshold": tuned[1],
                            "grid": [[c, f, a] for (c, f), a in scores.items()]}
        print(f"tuned on the estimated-diameter setting for mean AP@{TUNE_IOUS}: "
              f"cellprob {tuned[0]}, flow {tuned[1]} ({scores[tuned]:.3f})")
    for key, results in settings.items():
        row = {"model thresholds": list(map(float, _mean_ap(truths, [r.labels for r in results], IOUS))),
               "diameters": [float(r.diameter) for r in results]}
        line = " ".join(f"{row['model thresholds'][i]:.3f}" for i in SHOWN)
        if tuned is not None:
            row["tuned"] = list(map(float, _mean_ap(truths, masks(results, *tuned), IOUS)))
            line += "  tuned: " + " ".join(f"{row['tuned'][i]:.3f}" for i in SHOWN)
        report["settings"][key] = row
        print(f"{key:<28} AP@0.5/0.75/0.9: {line}", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

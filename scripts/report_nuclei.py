"""AP@0.5 per DSB2018 modality on our validation split, for a model folder or Cellpose weights.

Every model is run the same way: ``cellpose_nb.predict.segment`` on the raw
image with the model's input recipe (the shipped model and Cellpose weights
alike get one gray channel, inverted where ``invert="auto"`` finds dark
nuclei), at the true median diameter of each validation image and, when
the model has a size model, at its own estimate.  Thresholds: the model's
tuned ones; with ``--tune``, tuned here on the same validation images by
``cellpose_nb.train.optimize_thresholds`` (what ``cellpose-nb train`` does
for ours), so that Cellpose's ``train_seg`` weights are compared on equal
terms.  With ``--cellpose-eval`` the Cellpose weights are also run by
cellpose 3.1.1.2's own ``CellposeModel.eval`` (default thresholds).

    python scripts/report_nuclei.py runs/nuclei_cli/model
    python scripts/report_nuclei.py runs/cellpose_dsb/models/cellpose_dsb --cellpose --tune
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cellpose_nb import model as M
from cellpose_nb import train as T
from cellpose_nb.data import dataset_index, load_dsb2018
from cellpose_nb.metrics import average_precision
from cellpose_nb.predict import input_knobs, segment
from cellpose_nb.predict.diameter import _find_size_model
from cellpose_nb.normalize import to_network_input

VAL_LIST = Path(__file__).with_name("dsb2018_val.txt")
RECIPE = {"channels": ["gray", None], "invert": "auto"}  # the shipped model's input


def load_model(spec, cellpose):
    if cellpose:
        net = M.load_cellpose_weights(spec, device="cpu")
        net.record = net.record.replace(input_recipe=dict(RECIPE))
        return net
    return M.load(spec, device="cpu") if Path(spec).exists() else M.load_pretrained(spec)


def ap50(truth, masks):
    return float(average_precision([truth], [masks], thresholds=[0.5])[0, 0])


def table(rows, mods):
    out = {}
    for modality in sorted(set(mods)) + ["all"]:
        pick = [k for k, m in enumerate(mods) if modality in ("all", m)]
        out[modality] = {"n": len(pick), **{key: float(np.nanmean([v[k] for k in pick]))
                                            for key, v in rows.items()}}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model folder, a shipped name, or a Cellpose weight file")
    p.add_argument("--cellpose", action="store_true", help="MODEL is a Cellpose 3 weight file")
    p.add_argument("--tune", action="store_true",
                   help="tune cellprob/flow thresholds on the validation images first")
    p.add_argument("--cellpose-eval", action="store_true",
                   help="also run the weights with cellpose's CellposeModel.eval")
    p.add_argument("--val-list", type=Path, default=VAL_LIST)
    p.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    net = load_model(args.model, args.cellpose)
    ids = set(args.val_list.read_text().split())
    modality = {r["id"]: r["modality"] for r in dataset_index("dsb2018")}
    samples = [s for s in load_dsb2018() if s.name in ids]
    mods = [modality[s.name] for s in samples]
    diams = [max(T.MIN_DIAMETER, T.median_diameter(s.labels)) for s in samples]
    if args.tune:
        channels, invert = input_knobs(net)
        inputs = [to_network_input(s.image, channels=channels, invert=invert) for s in samples]
        best = T.optimize_thresholds(inputs, [s.labels for s in samples], net, diameters=diams,
                                     progress=True)
        net.record = net.record.replace(thresholds=best.thresholds)
    try:
        has_size = _find_size_model(net, None) is not None
    except ValueError:  # no size model (e.g. Cellpose train_seg weights)
        has_size = False
    rows = {"true_diameter": []} | ({"estimated_diameter": []} if has_size else {})
    for s, d in zip(samples, diams):
        rows["true_diameter"].append(ap50(s.labels, segment(s.image, net, diameter=d).labels))
        if has_size:
            rows["estimated_diameter"].append(ap50(s.labels, segment(s.image, net).labels))
    if args.cellpose_eval:
        rows["cellpose_eval_true_diameter"] = cellpose_eval(args.model, samples, diams)
    result = {"model": str(args.model), "thresholds": net.record.thresholds,
              "ap50_val": table(rows, mods)}
    print(json.dumps(result["thresholds"]))
    names = list(rows)
    print(f"{'modality':14s} {'n':>4s} " + " ".join(f"{n:>28s}" for n in names))
    for m, row in result["ap50_val"].items():
        print(f"{m:14s} {row['n']:4d} " + " ".join(f"{row[n]:28.3f}" for n in names))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


def cellpose_eval(path, samples, diams):
    """AP@0.5 of Cellpose's own ``CellposeModel.eval`` of the weights (default
    thresholds), on the same gray, auto-inverted, normalised input as ours."""
    import logging

    logging.getLogger("cellpose").setLevel(logging.WARNING)
    cp = M.cellpose_reference_model(path)  # train_seg's network size (16-128)
    out = []
    for s, d in zip(samples, diams):
        x = to_network_input(s.image, channels=("gray", None), invert="auto")[0]
        masks = cp.eval(x, channels=[0, 0], diameter=d, normalize=False)[0]
        out.append(ap50(s.labels, masks))
    return out


if __name__ == "__main__":
    sys.exit(main())

"""The diameter estimate: cost and accuracy, ours against Cellpose's procedure.

For every shipped model, each of its validation images (the lists its
training held out) is zoomed by 0.5, 0.7, 1, 1.4 and 2 so that the cell sizes
span what users bring.  Per image, in one process, interleaved:

- **given**: ``segment(image, model, diameter=true median diameter)``;
- **ours**: ``segment(image, model)``: the size model's guess from the
  encoder on at most 2 x 2 tiles, one segmentation at the guess, the masks'
  median diameter as the estimate, and a second segmentation only when the
  estimate is more than ``REUSE_TOLERANCE`` from the guess;
- **cellpose**: Cellpose's procedure (``SizeModel.eval``, then ``eval`` at the
  estimate) with the same weights and the size model fitted the way Cellpose
  fits it (``benchmarks/baselines/<model>_size_model_cellpose_fit.json``, the
  size model the models shipped with before): the style from a whole-network
  pass over every tile of the image as it is, a segmentation at the style's
  guess, its masks' median diameter, and a segmentation at that.

With ``--sweep``, each image is also segmented at the guess and at the
estimate separately (the two passes ``segment`` may run), so that the cost and
AP of ``segment`` under any ``REUSE_TOLERANCE`` can be composed from one run:
a table of tolerances is printed, and the composed result at today's
tolerance is checked against ``segment``'s own labels.

Printed: the median relative error of each estimate (and of each guess)
against the true median diameter, the cost of ours and Cellpose's procedure
as a multiple of ``given`` (median over images, and total), and the mean
AP@0.5 of the three segmentations.  Cost is CPU time (``time.process_time``,
all threads), which other jobs on a shared machine inflate far less than
wall time.

    python benchmarks/diameter.py                       # both models, every image
    python benchmarks/diameter.py --model nuclei --limit 20 --json out.json
    python benchmarks/diameter.py --model cyto_cil --sweep --no-cellpose
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.transform import rescale

from cellpose_nb.data import load_cil, load_dsb2018
from cellpose_nb.metrics import average_precision
from cellpose_nb.model import load_pretrained
from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict.diameter import check_diameter
from cellpose_nb.predict.passes import estimate_from_masks, segments_again
from cellpose_nb.predict import (
    REUSE_TOLERANCE,
    SizeModel,
    input_knobs,
    median_diameter,
    predict_flows,
    segment,
    style_diameter,
)

HERE = Path(__file__).parent
SCRIPTS = HERE.parent / "scripts"
ZOOMS = (0.5, 0.7, 1.0, 1.4, 2.0)
#: the tolerances the sweep composes (REUSE_TOLERANCE is added)
SWEEP = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
IOUS = (0.5, 0.75, 0.9)
MODELS = {"nuclei": (load_dsb2018, SCRIPTS / "dsb2018_val.txt"),
          "cyto_cil": (load_cil, SCRIPTS / "cil_val.txt")}


def zoomed(sample, zoom):
    """The sample's image and labels zoomed by ``zoom`` (bilinear with anti-aliasing /
    nearest), as the same field imaged at another magnification."""
    image = sample.image.astype(np.float32)
    axis = -1 if image.ndim == 3 else None
    img = rescale(image, zoom, order=1, channel_axis=axis, preserve_range=True,
                  anti_aliasing=zoom < 1).astype(np.float32)
    lab = rescale(sample.labels, zoom, order=0, preserve_range=True,
                  anti_aliasing=False).astype(np.int32)
    return img, lab


def cellpose_procedure(image, net, size_model):
    """Cellpose's two-step estimate and the segmentation at it: (labels, diameter, guess)."""
    channels, invert = input_knobs(net)
    x = to_network_input(image, channels=channels, invert=invert)
    style = predict_flows(x, net).style  # every tile, the whole network
    guess = float(size_model.predict(style[None])[0])
    d = median_diameter(segment(image, net, diameter=guess).labels) or guess
    return segment(image, net, diameter=d).labels, d, guess


def timed(fn):
    """``fn()`` and the CPU time it took (all threads: the cost, robust to other jobs on
    the machine, which inflate wall times)."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def ap50(truth, masks):
    return float(average_precision([truth], [masks], thresholds=[0.5])[0, 0])


def aps(truth, masks):
    return [float(a) for a in average_precision([truth], [masks], thresholds=list(IOUS))[0]]


def two_passes(img, x, lab, net):
    """The passes ``segment(img, net)`` composes, each timed on its own: the style's
    guess, a segmentation at it, its masks' median diameter as the estimate, and a
    segmentation at the estimate (run whatever the tolerance)."""
    guess, t_style = timed(lambda: style_diameter(x, net))
    guess = check_diameter(guess, lab.shape, float(net.config.diam_mean))
    at_guess, t_guess = timed(lambda: segment(img, net, diameter=guess))
    estimate = estimate_from_masks(at_guess.labels, guess, lab.shape, float(net.config.diam_mean))
    at_est, t_est = timed(lambda: segment(img, net, diameter=estimate))
    return {"guess": guess, "estimate": estimate, "t_style": t_style, "t_guess": t_guess,
            "t_est": t_est, "ap_guess": aps(lab, at_guess.labels), "ap_est": aps(lab, at_est.labels),
            "labels_guess": at_guess.labels, "labels_est": at_est.labels}


def run_model(name, *, limit, zooms, sweep=False, with_cellpose=True):
    net = load_pretrained(name)
    baseline = SizeModel.from_dict(json.loads(
        (HERE / "baselines" / f"{name}_size_model_cellpose_fit.json").read_text()))
    loader, val_list = MODELS[name]
    names = set(val_list.read_text().split())
    samples = [s for s in loader() if s.name in names][:limit]
    channels, invert = input_knobs(net)
    rows = []
    for s in samples:
        for zoom in zooms:
            img, lab = zoomed(s, zoom)
            truth = median_diameter(lab)
            given, t_given = timed(lambda: segment(img, net, diameter=truth))
            ours, t_ours = timed(lambda: segment(img, net))
            if with_cellpose:
                (cp_labels, cp_d, cp_guess), t_cp = timed(lambda: cellpose_procedure(img, net, baseline))
            else:
                cp_labels, cp_d, cp_guess, t_cp = np.zeros_like(lab), np.nan, np.nan, np.nan
            x = to_network_input(img, channels=channels, invert=invert)
            extra = {}
            if sweep:
                extra = two_passes(img, x, lab, net)
                composed = (extra["labels_est"] if segments_again(extra["estimate"], extra["guess"])
                            else extra["labels_guess"])
                extra["composed_matches_segment"] = bool(np.array_equal(composed, ours.labels))
                del extra["labels_guess"], extra["labels_est"]
                extra["ap_given_all"] = aps(lab, given.labels)
            rows.append({**extra,
                "image": s.name, "zoom": zoom, "shape": list(lab.shape), "true": truth,
                "ours": ours.diameter, "ours_guess": style_diameter(x, net),
                "ours_once": any("segmented once" in n for n in ours.notes),
                "cellpose": cp_d, "cellpose_guess": cp_guess, "t_given": t_given, "t_ours": t_ours, "t_cellpose": t_cp,
                "ap_given": ap50(lab, given.labels), "ap_ours": ap50(lab, ours.labels),
                "ap_cellpose": ap50(lab, cp_labels) if with_cellpose else float("nan")})
            r = rows[-1]
            print(f"{name} {s.name[:12]:12s} x{zoom:<4} true {truth:6.1f}  ours {r['ours']:6.1f} "
                  f"(guess {r['ours_guess']:6.1f})  cellpose {cp_d:6.1f} (guess {cp_guess:6.1f})  CPU given "
                  f"{t_given:5.2f} s, ours {t_ours / t_given:4.2f}x, cellpose "
                  f"{t_cp / t_given:4.2f}x", flush=True)
    return rows


def summary(rows):
    def rel(key, pick):
        return float(np.median([abs(r[key] / r["true"] - 1) for r in pick]))

    out = {}
    for zoom in [None, *sorted({r["zoom"] for r in rows})]:
        pick = [r for r in rows if zoom in (None, r["zoom"])]
        out["all" if zoom is None else f"x{zoom}"] = {
            "n": len(pick),
            "median_rel_error": {k: rel(k, pick) for k in ("ours", "ours_guess", "cellpose",
                                                            "cellpose_guess")},
            "cost_median": {k: float(np.median([r[f"t_{k}"] / r["t_given"] for r in pick]))
                            for k in ("ours", "cellpose")},
            "cost_total": {k: sum(r[f"t_{k}"] for r in pick) / sum(r["t_given"] for r in pick)
                           for k in ("ours", "cellpose")},
            "segmented_once": float(np.mean([r["ours_once"] for r in pick])),
            "mean_ap50": {k: float(np.mean([r[f"ap_{k}"] for r in pick]))
                          for k in ("given", "ours", "cellpose")}}
    return out


def sweep_table(rows, tolerances=SWEEP):
    """Cost (x given, median and total) and mean AP at IOUS of ``segment`` for each
    reuse tolerance, composed from the rows' separate passes."""
    out = {}
    for tol in sorted({*tolerances, REUSE_TOLERANCE}):
        again = [segments_again(r["estimate"], r["guess"], tol) for r in rows]
        cost = [r["t_style"] + r["t_guess"] + (r["t_est"] if a else 0.0) for r, a in zip(rows, again)]
        ap = np.mean([r["ap_est"] if a else r["ap_guess"] for r, a in zip(rows, again)], axis=0)
        out[tol] = {"cost_median": float(np.median([c / r["t_given"] for c, r in zip(cost, rows)])),
                    "cost_total": sum(cost) / sum(r["t_given"] for r in rows),
                    "mean_ap": [float(a) for a in ap], "segmented_once": 1 - float(np.mean(again))}
    return out


def print_sweep(name, rows):
    given = np.mean([r["ap_given_all"] for r in rows], axis=0)
    ok = sum(r["composed_matches_segment"] for r in rows)
    print(f"\n{name}: reuse tolerance sweep ({len(rows)} images; composed labels equal to "
          f"segment's at REUSE_TOLERANCE={REUSE_TOLERANCE} for {ok} of them)")
    print(f"  given (true diameter): AP@{'/'.join(map(str, IOUS))} "
          + " / ".join(f"{a:.3f}" for a in given))
    for tol, t in sweep_table(rows).items():
        print(f"  tolerance {tol:4.2f}: cost {t['cost_median']:.2f}x median, {t['cost_total']:.2f}x total"
              f" | AP " + " / ".join(f"{a:.3f}" for a in t["mean_ap"])
              + f" | segmented once {t['segmented_once']:.0%}")


def print_summary(name, table):
    print(f"\n{name}: median relative error of the diameter | cost (x given: median, total) "
          f"| mean AP@0.5 (given / ours / cellpose) | segmented once (ours)")
    for key, t in table.items():
        e, cm, ct, ap = t["median_rel_error"], t["cost_median"], t["cost_total"], t["mean_ap50"]
        print(f"  {key:5s} n={t['n']:3d}  error ours {e['ours']:.3f} (guess {e['ours_guess']:.3f})"
              f", cellpose {e['cellpose']:.3f} (guess {e['cellpose_guess']:.3f}) | ours {cm['ours']:.2f}x / {ct['ours']:.2f}x, "
              f"cellpose {cm['cellpose']:.2f}x / {ct['cellpose']:.2f}x | AP {ap['given']:.3f} / "
              f"{ap['ours']:.3f} / {ap['cellpose']:.3f} | {t['segmented_once']:.0%}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=[*MODELS, "all"], default="all")
    p.add_argument("--limit", type=int, default=None, help="validation images per model")
    p.add_argument("--zooms", type=float, nargs="+", default=list(ZOOMS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="write every row and the summary")
    p.add_argument("--sweep", action="store_true",
                   help="also time both passes separately and print a reuse-tolerance sweep")
    p.add_argument("--no-cellpose", action="store_true", help="skip Cellpose's procedure")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"REUSE_TOLERANCE = {REUSE_TOLERANCE}, torch threads {torch.get_num_threads()}")
    result = {}
    for name in (MODELS if args.model == "all" else [args.model]):
        rows = run_model(name, limit=args.limit, zooms=args.zooms, sweep=args.sweep,
                         with_cellpose=not args.no_cellpose)
        result[name] = {"summary": summary(rows), "rows": rows}
        print_summary(name, result[name]["summary"])
        if args.sweep:
            result[name]["sweep"] = {str(k): v for k, v in sweep_table(rows).items()}
            print_sweep(name, rows)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

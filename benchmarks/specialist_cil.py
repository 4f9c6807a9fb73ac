"""The Cellpose paper's specialist benchmark on the CIL MP6843 fields: AP against IoU per method.

Every method is trained on the same 79 training fields and scored on the same
10 validation fields (``scripts/cil_val.txt``) with ``cellpose_nb.metrics``:
AP = TP / (TP + FP + FN) per image, the mean over the fields, at IoU 0.50,
0.55, ..., 0.95.  The trainable methods share one wall budget (``--minutes``,
``--threads``); the held-back test fields are never used.

    ours       a cellpose_nb model (default the shipped cyto_cil), trained separately by
               ``cellpose-nb train``; its budget is read from its training.json
    cellpose   cellpose 3.1.1.2's train_seg with ours' recipe, segmented by cellpose_nb
    stardist   StarDist 2D (stardist 0.9.2, tensorflow-cpu), in another interpreter
    maskrcnn   torchvision's Mask R-CNN from scratch, in another interpreter
    classical  DAPI seeds + a watershed on the cytoplasm, grid-searched on the training fields

Each method runs on its own (``--methods``) and its entry is merged into the
results JSON, keeping the others; trained models in ``--work`` are reused
unless ``--retrain``.  ``--smoke`` marks a tiny-budget check of the code path
(its entries say so and go to a separate file by default).

    python benchmarks/specialist_cil.py --methods classical ours --plot
    python benchmarks/specialist_cil.py --methods cellpose stardist maskrcnn --minutes 77 --threads 2 --plot
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "baselines"))
import cil_split  # noqa: E402
import external  # noqa: E402
import results  # noqa: E402

METHODS = ("ours", "cellpose", "stardist", "maskrcnn", "classical")
OUT = HERE / "results" / "specialist_cil.json"
SMOKE_OUT = HERE / "results" / "specialist_cil_smoke.json"
WORK = HERE.parent / "out" / "specialist_cil"  # trained models (out/ is git-ignored)
SMOKE_NOTE = "SMOKE RUN with a tiny budget, to check the code path end to end: NOT A RESULT. "
SMOKE_STARDIST = ["--epochs", "2", "--steps-per-epoch", "5"]
OURS_MINUTES = 77.0  # the shipped cyto_cil's training, 4626 s with its size model and thresholds (model card)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--methods", nargs="*", default=[], choices=METHODS, metavar="METHOD",
                   help=f"methods to run, of {', '.join(METHODS)} (none: print the table)")
    p.add_argument("--minutes", type=float, default=OURS_MINUTES,
                   help="wall budget of each trainable method (default: ours' own training)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=None, help="the CIL training folder")
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {OUT.name})")
    p.add_argument("--work", type=Path, default=None, help="where trained models go")
    p.add_argument("--model", default="cyto_cil", help="ours: a model folder or shipped name")
    p.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256],
                   help="cellpose: widths (default: the shipped cyto_cil's)")
    p.add_argument("--epochs", type=int, default=300,
                   help="cellpose: the recipe's epochs (cyto_cil's), at most")
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--cellpose-eval", action="store_true",
                   help="cellpose: also score cellpose's own CellposeModel.eval of its network")
    p.add_argument("--stardist-python", default=None)
    p.add_argument("--maskrcnn-python", default=None)
    p.add_argument("--retrain", action="store_true", help="train again even if --work has a model")
    p.add_argument("--smoke", action="store_true", help="a tiny-budget code-path check, marked as such")
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="classical and cellpose: the first N training fields only (a quick check)")
    p.add_argument("--plot", action="store_true", help="write the figure next to the JSON (.png)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out = args.out or (SMOKE_OUT if args.smoke else OUT)
    args.work = args.work or WORK.with_name(WORK.name + ("_smoke" if args.smoke else ""))
    return args


def entry(labels, val, *, budget, command, versions, notes, smoke, n_train=None, **extra):
    ap = cil_split.mean_ap([s.labels for s in val], labels)
    limited = f"Only {n_train} training fields (--limit-train). " if n_train else ""
    out = {"iou": list(cil_split.IOUS), "ap": ap, "budget": budget, "command": command,
           "versions": {**results.base_versions(), **versions},
           "notes": (SMOKE_NOTE if smoke else "") + limited + notes, **extra}
    if smoke:
        out["smoke"] = True
    return out


def run_classical(args, train, val, command):
    import scipy
    import skimage

    import classical

    t0, c0 = time.perf_counter(), time.process_time()
    best, table = classical.grid_search([s.image for s in train], [s.labels for s in train],
                                        progress=lambda m: print(m, flush=True))
    search_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    labels = [classical.segment_classical(s.image, best) for s in val]
    n = len(table)
    return entry(labels, val, command=command, smoke=args.smoke, n_train=args.limit_train,
                 budget={"wall_minutes": round(search_s / 60, 2), "cpu_minutes": round(cpu_s / 60, 2),
                         "threads": 1,
                         "what": f"grid search of {n} settings on the {len(train)} training fields"},
                 versions={"scikit-image": skimage.__version__, "scipy": scipy.__version__},
                 notes=("scikit-image/scipy only: Otsu nuclei from DAPI split by a distance-"
                        "transform watershed as seeds, watershed on the cytoplasm within an Otsu-"
                        "scaled foreground; parameters by grid search on the training fields only "
                        "(best mean AP at IoU 0.5/0.75/0.9)."),
                 params={**table[0], "score_is": "mean AP@0.5/0.75/0.9 on the training fields"},
                 grid={k: list(v) for k, v in classical.GRID.items()}, grid_top=table[:10])


def run_ours(args, train, val, command):
    import torch

    import ours

    torch.set_num_threads(args.threads)
    out = ours.run_ours(args.model, val, progress=lambda m: print(m, flush=True))
    return entry(out["labels"], val, command=command, smoke=False, budget=out["budget"],
                 versions=out["versions"], notes=out["notes"], settings=out["settings"])


def run_cellpose(args, train, val, command):
    import json

    from importlib.metadata import version

    import torch

    import cellpose_train

    work = args.work / "cellpose"
    path = work / "record.json"
    record = json.loads(path.read_text()) if path.is_file() and not args.retrain else None
    if record is None:
        record = cellpose_train.train_cellpose(
            train, work, minutes=args.minutes, epochs=args.epochs, features=args.features,
            crop=args.crop_size, lr=args.lr, threads=args.threads, seed=args.seed, command=command)
    else:
        print(f"cellpose: reusing {record['weights']} ({path}); --retrain to train again")
    torch.set_num_threads(args.threads)
    labels, _ = cellpose_train.evaluate_cellpose(record, val, progress=lambda m: print(m, flush=True))
    extra = {}
    if not args.smoke:  # a second pass over the fields, at their true diameters
        true_labels, _ = cellpose_train.evaluate_cellpose(record, val, true_diameter=True)
        extra["ap_true_diameter"] = cil_split.mean_ap([s.labels for s in val], true_labels)
    if args.cellpose_eval:
        extra["ap_cellpose_eval"] = cil_split.mean_ap(
            [s.labels for s in val], cellpose_train.evaluate_with_cellpose_eval(record, val))
    keys = ("wall_minutes", "train_seg_minutes", "budget_minutes", "threads", "epochs",
            "recipe_epochs", "seconds_per_step")
    return entry(labels, val, command=record.get("command", command), smoke=args.smoke,
                 n_train=args.limit_train,
                 budget={k: record[k] for k in keys},
                 versions={"cellpose": version("cellpose"), "torch": torch.__version__},
                 notes=(f"cellpose 3.1.1.2 train_seg on {record['n_train']} training fields with ours' recipe "
                        f"(widths {record['features']}, crops {record['crop_size']}, batch "
                        f"{record['batch_size']}, lr {record['learning_rate']}, AdamW, diam_mean 30); "
                        "epochs fitted to the budget by a timed calibration. Segmented by "
                        "cellpose_nb's segment at the training set's mean diameter (diam_labels, "
                        "cellpose's default without a size model) with cellpose's default "
                        "thresholds (cellprob 0, flow 0.4); ap_true_diameter: at each field's "
                        "true median diameter."),
                 settings={k: record[k] for k in ("features", "crop_size", "batch_size",
                                                  "learning_rate", "weight_decay", "seed",
                                                  "n_train", "weights")}, **extra)


def run_external(name, method, args, val, command, runner_args):
    work = args.work / name
    record = None if args.retrain else external.read_record(work)
    if record is None:
        python, tried = external.find_python(method, getattr(args, f"{name}_python"))
        if python is None:
            print(external.missing_message(name, method, tried), flush=True)
            return None
        if args.retrain and work.exists():
            shutil.rmtree(work)
        record = external.run_runner(python, method, work, runner_args, threads=args.threads)
    else:
        print(f"{name}: reusing the finished run in {work}; --retrain to train again")
    labels = cil_split.load_predictions(work / "predictions.npz", [s.name for s in val])
    return entry(labels, val, command=command, smoke=args.smoke, budget=record["budget"],
                 versions=record["versions"], runner_command=record["command"],
                 settings=record["settings"], tune_fields=record["tune_names"],
                 notes=NOTES[name].format(n_fit=record["n_fit"], n_tune=record["n_tune"]))


NOTES = {
    "stardist": ("StarDist 2D (32 rays, grid 2x2, patches 256, batch 4, flips/rotations/intensity "
                 "augmentation) on {n_fit} training fields, the two channels normalised by "
                 "csbdeep's normalize (1-99.8 %); its validation data and optimize_thresholds "
                 "(prob, nms) on {n_tune} held-out training fields; stopped by the budget."),
    "maskrcnn": ("torchvision maskrcnn_resnet50_fpn from scratch (weights=None, weights_backbone="
                 "None: no pretrained weights ship with a package here), first conv reading the two "
                 "channels, fields at full size, {n_fit} training fields, SGD with warm-up and "
                 "cosine over the budget; score threshold chosen on {n_tune} held-out training fields."),
}


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/specialist_cil.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    doc = results.read_results(args.out)
    if args.methods:
        train, val = cil_split.load_split(args.data)
        extra = {"ious": list(cil_split.IOUS), "validation_fields": [s.name for s in val],
                 "n_training_fields": len(train), "data": str(args.data or cil_split.default_data())}
        skipped = []
        for name in args.methods:
            print(f"=== {name} ===", flush=True)
            limited = train[:args.limit_train] if args.limit_train else train
            if name == "classical":
                got = run_classical(args, limited, val, command)
            elif name == "ours":
                got = run_ours(args, train, val, command)
            elif name == "cellpose":
                got = run_cellpose(args, limited, val, command)
            else:
                budget = ["--minutes", str(args.minutes), "--threads", str(args.threads),
                          "--seed", str(args.seed)] + (["--data", str(args.data)] if args.data else [])
                if name == "stardist":
                    got = run_external(name, external.STARDIST, args, val, command,
                                       budget + (SMOKE_STARDIST if args.smoke else []))
                else:
                    got = run_external(name, external.MASKRCNN, args, val, command, budget)
            if got is None:
                skipped.append(name)
                continue
            doc = results.merge_results(args.out, {name: got}, command=command, extra=extra)
            print(results.format_table(doc, [name]), flush=True)
        if skipped:
            print(f"skipped (packages missing): {skipped}")
    print(results.format_table(doc))
    if args.plot and doc.get("methods"):
        print("wrote", results.plot_results(doc, args.out.with_suffix(".png")))
    return 2 if args.methods and skipped else 0


if __name__ == "__main__":
    sys.exit(main())

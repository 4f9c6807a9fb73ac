"""Train the shipped nuclei model on DSB2018 -- the exact recipe, resumable, on a CPU budget.

Recipe
------
* Data: every image of ``<data root>/dsb2018/train`` (581: 473 fluorescence,
  94 histology, 14 brightfield), read with ``cellpose_nb.data.load_dsb2018``.
* Input: one grayscale channel with bright nuclei (the nuclear channel of
  the network input stays zero, as for Cellpose's nuclei model):
  fluorescence as it is; histology (H&E, dark nuclei) through
  ``histology_to_gray`` (inverted luminance); brightfield (also dark nuclei)
  inverted by ``to_network_input(invert=True)``; then percentile
  normalisation (1st -> 0, 99th -> 1).
* Split: 10 % validation, stratified by modality, seed 0 (``split_train_val``).
* Model: ``ModelConfig(features=--features, diam_mean=17)`` (17 px like
  Cellpose's nuclei model), weights seeded with ``--seed``.
* Training: ``cellpose_nb.train.train`` with AdamW (lr 0.005, weight decay
  1e-5, batch 8, crops 224, scale_range 0.5: Cellpose's ``train_seg``
  defaults); linear warm-up over ``--warmup`` epochs, and the learning rate
  halved 10 times over the last ``--decay`` epochs.
* Then: size model (``--size-passes`` random crops per training image of
  ``--size-crop`` px, ridge penalty picked on the validation set),
  ``cellprob``/``flow`` thresholds tuned for AP@0.5 on the validation set,
  all saved in ``OUT/model``; the per-modality AP@0.5 of the validation split
  is printed and written to ``OUT/report.json``.

Time budget
-----------
``--max-minutes`` bounds the whole command: the training loop stops (after
a whole epoch, with a checkpoint) when the next epoch would end later than
``max-minutes - reserve-minutes`` after the start; ``--reserve-minutes`` is
kept for the final steps (size model, thresholds and report take about
10 minutes on 2 CPU cores).  The same command run again resumes from
``OUT/checkpoint.pt`` (the flows are cached in ``OUT/flows``).  Exit status:
0 finished, 3 stopped by the budget (run again to continue).

Throughput measured on a shared 2-core CPU (224 x 224 crops, batch 8,
forward + backward + augmentation), which varied about 2x with the load of
the machine: features (8, 16, 32, 64) about 1 crop/s, (16, 32, 64, 128)
about 0.8 crop/s, (32, 64, 128, 256) about 0.45 crop/s.  A 60-minute run
therefore sees only about 2000-2500 crops: use a small network and short
"epochs" (``--images-per-epoch``) so that the warm-up and the final
halvings of the learning rate fit into the budget::

    nohup python scripts/train_nuclei.py --out runs/nuclei --features 16 32 64 128 \\
        --epochs 16 --images-per-epoch 128 --val-every 8 --size-passes 1 \\
        --max-minutes 60 --reserve-minutes 12 --threads 2 > runs/nuclei.log 2>&1 &

With more time (or a GPU) raise ``--epochs`` and drop ``--images-per-epoch``
(Cellpose's nuclei model: full widths, 500 epochs over every image).

Quick check that it runs (a minute or two):

    python scripts/train_nuclei.py --out /tmp/nuc --limit 16 --epochs 1 \\
        --features 8 16 32 64 --size-passes 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cellpose_nb import train as T
from cellpose_nb.data import dataset_index, histology_to_gray, load_dsb2018
from cellpose_nb.metrics import average_precision
from cellpose_nb.model import CellposeUNet, ModelConfig
from cellpose_nb.normalize import to_network_input

DIAM_MEAN = 17.0  # Cellpose's nuclei model
VAL_FRACTION = 0.1
SPLIT_SEED = 0  # the validation split is fixed, whatever --seed
EXIT_OUT_OF_TIME = 3


def network_input(image, modality):
    """Grayscale network input with bright nuclei, for each DSB2018 modality."""
    if modality == "histology":
        return to_network_input(histology_to_gray(image))
    return to_network_input(image, invert=modality == "brightfield")


def load(limit):
    samples = load_dsb2018(limit=limit)
    modality = {row["id"]: row["modality"] for row in dataset_index("dsb2018")}
    mods = [modality[s.name] for s in samples]
    images = [network_input(s.image, m) for s, m in zip(samples, mods)]
    labels = [s.labels.astype(np.int32) for s in samples]
    return [s.name for s in samples], mods, images, labels


def report(model, images, labels, mods, thresholds):
    """AP@0.5 per modality, with the true diameters and with the size model's estimates."""
    th = {k: thresholds[k] for k in ("cellprob_threshold", "flow_threshold")} if thresholds else {}
    rows = {"true_diameter": [], "estimated_diameter": []}
    for x, lab in zip(images, labels):
        true_d = max(T.MIN_DIAMETER, T.median_diameter(lab))
        est_d = T.estimate_diameter(model, x, **th).diameter
        for key, d in (("true_diameter", true_d), ("estimated_diameter", est_d)):
            masks = T._segment(model, x, rescale=model.config.diam_mean / d, **th)
            rows[key].append(average_precision([lab], [masks], thresholds=[0.5])[0, 0])
    out = {}
    for modality in sorted(set(mods)) + ["all"]:
        pick = [k for k, m in enumerate(mods) if modality in ("all", m)]
        out[modality] = {"n": len(pick), **{key: float(np.nanmean([v[k] for k in pick]))
                                            for key, v in rows.items()}}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=224, help="side of the training crops")
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--warmup", type=int, default=None, help="default min(10, epochs // 10)")
    p.add_argument("--decay", type=int, default=None, help="default epochs // 5")
    p.add_argument("--images-per-epoch", type=int, default=None, help="default all")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--max-minutes", type=float, default=None, help="budget of this command")
    p.add_argument("--reserve-minutes", type=float, default=12.0,
                   help="part of --max-minutes kept for size model, thresholds and report")
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=1)
    p.add_argument("--size-passes", type=int, default=2)
    p.add_argument("--size-crop", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="refuse to resume an existing run")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this model folder (continued training) instead of new weights")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)

    names, mods, images, labels = load(args.limit)
    train_idx, val_idx = T.split_train_val(len(images), val_fraction=VAL_FRACTION,
                                           seed=SPLIT_SEED, strata=mods)
    pick = lambda idx, seq: [seq[k] for k in idx]  # noqa: E731
    counts = {m: (sum(mods[k] == m for k in train_idx), sum(mods[k] == m for k in val_idx))
              for m in sorted(set(mods))}
    print(f"{len(images)} images; (train, val) per modality: {counts}", flush=True)

    budget = None
    if args.max_minutes is not None:
        spent = (time.perf_counter() - t_start) / 60
        budget = max(0.0, args.max_minutes - args.reserve_minutes - spent)
    config = T.TrainConfig(
        n_epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop_size,
        learning_rate=args.lr,
        optimizer=args.optimizer,
        warmup_epochs=args.warmup if args.warmup is not None else min(10, args.epochs // 10),
        decay_epochs=args.decay if args.decay is not None else args.epochs // 5,
        n_images_per_epoch=args.images_per_epoch, seed=args.seed, device=args.device,
        val_every=args.val_every, save_every=args.save_every, num_threads=args.threads,
        max_minutes=budget)
    resume = (args.out / T.CHECKPOINT_FILE).is_file()
    if resume and args.fresh:
        sys.exit(f"{args.out / T.CHECKPOINT_FILE} exists and --fresh was given")
    torch.manual_seed(args.seed)
    if args.init is not None:
        from cellpose_nb.model import load as load_model

        net = load_model(args.init, device="cpu")
    else:
        net = CellposeUNet(ModelConfig(features=tuple(args.features), diam_mean=DIAM_MEAN))
    result = T.train(net, pick(train_idx, images), pick(train_idx, labels), config=config,
                     val_images=pick(val_idx, images), val_labels=pick(val_idx, labels),
                     out_dir=args.out, resume=resume, progress=not args.quiet,
                     train_names=pick(train_idx, names), val_names=pick(val_idx, names),
                     command=[sys.executable, *sys.argv])
    done = len(result.history)
    seconds = sum(h["seconds"] for h in result.history)
    print(f"epochs done: {done}/{args.epochs}; {seconds / 60:.1f} min in epochs so far; last "
          f"train loss {result.history[-1]['train_loss']:.4f}", flush=True)
    if not result.completed:
        print("stopped by the time budget: run the same command again to continue")
        return EXIT_OUT_OF_TIME

    folder = T.finish_model(result.model, pick(train_idx, images), pick(train_idx, labels),
                            out_dir=args.out, val_images=pick(val_idx, images),
                            val_labels=pick(val_idx, labels), size_passes=args.size_passes,
                            size_crop=args.size_crop, seed=args.seed, progress=not args.quiet)
    thresholds = result.model.thresholds
    table = report(result.model, pick(val_idx, images), pick(val_idx, labels),
                   pick(val_idx, mods), thresholds)
    (args.out / "report.json").write_text(json.dumps(
        {"ap50_val": table, "thresholds": thresholds, "epochs": done,
         "minutes": (time.perf_counter() - t_start) / 60}, indent=2))
    chosen = thresholds and {k: thresholds[k] for k in ("cellprob_threshold", "flow_threshold")}
    print(f"model saved in {folder}; thresholds {chosen}")
    print(f"{'modality':14s} {'n':>4s} {'AP@0.5 true diam':>17s} {'AP@0.5 est. diam':>17s}")
    for modality, row in table.items():
        print(f"{modality:14s} {row['n']:4d} {row['true_diameter']:17.3f} "
              f"{row['estimated_diameter']:17.3f}")
    print(f"total {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())

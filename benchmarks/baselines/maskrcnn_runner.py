"""Method "maskrcnn": torchvision's Mask R-CNN trained from scratch on the CIL fields within a wall budget.

Run by ``benchmarks/specialist_cil.py --methods maskrcnn`` in an interpreter
whose torchvision imports (``--maskrcnn-python``, by default this repository's
``.venv-maskrcnn``), or by hand::

    .venv-maskrcnn/bin/python benchmarks/baselines/maskrcnn_runner.py --work out/specialist_cil/maskrcnn --minutes 77 --threads 2

Training: the training fields less the ``cil_split.tuning_names`` ones, two
augmented full fields per step, SGD (momentum 0.9, weight decay 1e-4) with a
linear warm-up and a cosine decay over the training time, gradients clipped.
A checkpoint is written every ``CHECKPOINT_MINUTES``; an interrupted run
resumes from it with the time it had already used counted.  Then the score
threshold is chosen on the held-out tuning fields (best mean AP at IoU 0.5,
0.75, 0.9) and the validation fields are predicted: ``predictions.npz`` and
``record.json`` in ``--work``, which the benchmark scores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cil_split  # noqa: E402
import maskrcnn_model as mm  # noqa: E402

BATCH = 2
LEARNING_RATE = 0.01
WARMUP_STEPS = 50
CLIP_NORM = 10.0
CHECKPOINT_MINUTES = 5.0
RESERVE_FRACTION = 0.1  # of the budget kept for the threshold choice and the predictions
MIN_RESERVE_S = 90.0
SCORE_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _learning_rate(step, fraction):
    """Warm-up over ``WARMUP_STEPS``, then a cosine from 1 to 0 over the training time."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    return LEARNING_RATE * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))


def _save(path, state):
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_model(model, fit, *, train_seconds, work, seed, log):
    """Train until ``train_seconds`` of training time are spent (resuming a checkpoint)."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4)
    ckpt = work / "checkpoint.pt"
    step, used = 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, used = state["step"], state["seconds"]
        log(f"maskrcnn: resumed at step {step} ({used / 60:.1f} min trained)")
    rng = np.random.default_rng(seed + step)
    inputs = [mm.field_input(s.image) for s in fit]
    labels = [s.labels.astype(np.int32) for s in fit]
    losses, last_save, t0 = [], time.perf_counter(), time.perf_counter() - used
    model.train()
    while time.perf_counter() - t0 < train_seconds:
        pick = rng.choice(len(fit), size=BATCH, replace=False)
        pairs = [mm.augment_pair(inputs[i], labels[i], rng) for i in pick]
        xs = [torch.from_numpy(x) for x, _ in pairs]
        ts = [mm.targets_from_labels(lab) for _, lab in pairs]
        for g in opt.param_groups:
            g["lr"] = _learning_rate(step, (time.perf_counter() - t0) / train_seconds)
        loss = sum(model(xs, ts).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 20 == 0:
            log(f"maskrcnn: step {step}, loss {np.mean(losses[-20:]):.3f}, "
                f"{(time.perf_counter() - t0) / 60:.1f} min")
        if time.perf_counter() - last_save > 60 * CHECKPOINT_MINUTES:
            _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "step": step, "seconds": time.perf_counter() - t0})
            last_save = time.perf_counter()
    seconds = time.perf_counter() - t0
    _save(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "seconds": seconds, "done": True})
    return {"steps": step, "train_minutes": round(seconds / 60, 2),
            "epochs": round(step * BATCH / len(fit), 2),
            "final_loss": float(np.mean(losses[-20:])) if losses else None}


def choose_score_threshold(model, tune):
    """The score threshold with the best mean AP at ``SELECT_IOUS`` on the tuning fields."""
    dets = [mm.detections(model, mm.field_input(s.image), min_score=min(SCORE_GRID)) for s in tune]
    truths = [s.labels for s in tune]
    scores = {t: cil_split.selection_score(
        truths, [mm.labels_from_detections(sc, ms, score_threshold=t) for sc, ms in dets])
        for t in SCORE_GRID}
    return max(scores, key=scores.get), scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--minutes", type=float, required=True, help="wall budget: training + tuning")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--command", default="")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    train, val = cil_split.load_split(args.data)
    fit, tune = cil_split.split_for_tuning(train)
    model = mm.build_model()
    budget_s = 60.0 * args.minutes
    setup_s = time.perf_counter() - t_start
    train_s = budget_s - max(MIN_RESERVE_S, RESERVE_FRACTION * budget_s) - setup_s
    trained = train_model(model, fit, train_seconds=max(train_s, 1.0), work=args.work,
                          seed=args.seed, log=lambda m: print(m, flush=True))
    t_tune = time.perf_counter()
    threshold, grid = choose_score_threshold(model, tune)
    t_pred = time.perf_counter()
    labels = [mm.labels_from_detections(*mm.detections(model, mm.field_input(s.image),
                                                       min_score=threshold),
                                        score_threshold=threshold) for s in val]
    t_end = time.perf_counter()
    cil_split.save_predictions(args.work / "predictions.npz", [s.name for s in val], labels)
    record = {
        "complete": True, "n_fit": len(fit), "n_tune": len(tune), "tune_names": [s.name for s in tune],
        "budget": {"wall_minutes": round(trained["train_minutes"] + (setup_s + t_end - t_tune) / 60, 2),
                   "threads": args.threads,
                   "budget_minutes": args.minutes, **trained,
                   "threshold_minutes": round((t_pred - t_tune) / 60, 2),
                   "predict_minutes": round((t_end - t_pred) / 60, 2),
                   "note": "wall_minutes: set-up + training (with any earlier, resumed "
                           "part) + threshold choice + predictions"},
        "settings": {"score_threshold": threshold, "score_grid": {str(k): v for k, v in grid.items()},
                     "mask_threshold": 0.5, "batch": BATCH, "learning_rate": LEARNING_RATE,
                     "warmup_steps": WARMUP_STEPS, "seed": args.seed,
                     "weights": "none (weights=None, weights_backbone=None)"},
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "command": args.command or " ".join([sys.executable, *sys.argv]),
    }
    (args.work / "record.json").write_text(json.dumps(record, indent=1))
    print(f"maskrcnn: {trained['steps']} steps ({trained['epochs']} epochs) in "
          f"{trained['train_minutes']} min; score threshold {threshold}; "
          f"wrote {args.work / 'predictions.npz'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Method "stardist": StarDist 2D trained on the CIL training fields within a wall budget.

Run by ``benchmarks/specialist_cil.py --methods stardist`` in an interpreter that
has stardist 0.9.2 and tensorflow (``--stardist-python``, by default this
repository's ``.venv-baselines``), or by hand::

    .venv-baselines/bin/python benchmarks/baselines/stardist_runner.py --work out/specialist_cil/stardist --minutes 77 --threads 2

StarDist's own recipe, as its 2D training example: input the two channels,
each normalised by csbdeep's ``normalize`` (1st-99.8th percentile), label
holes filled; 32 rays, grid (2, 2), patches of 256, batch 4, flips, 90-degree
rotations and intensity changes; Adam with StarDist's reduce-on-plateau.
Training holds out the ``cil_split.tuning_names`` fields as its validation
data (StarDist's ``validation_data``, and ``optimize_thresholds`` for the
probability and NMS thresholds), so the benchmark's validation fields stay
unseen.  A Keras callback stops training when the budget, less a reserve for
the threshold search, is spent.  Writes ``predictions.npz`` (labels of the
validation fields) and ``record.json`` to ``--work``; the benchmark scores them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cil_split  # noqa: E402

MODEL_NAME = "stardist_cil"
PERCENTILES = (1.0, 99.8)  # csbdeep's normalize, as in StarDist's examples
RESERVE_FRACTION = 0.1  # of the budget kept for optimize_thresholds and the predictions
MIN_RESERVE_S = 45.0


def augment(x, y, rng=np.random):
    """StarDist's example augmenter: flips and transposes, intensity change, a little noise."""
    perm = tuple(rng.permutation(2))
    x, y = x.transpose(perm + (2,)), y.transpose(perm)
    for ax in (0, 1):
        if rng.rand() > 0.5:
            x, y = np.flip(x, axis=ax), np.flip(y, axis=ax)
    x = x * rng.uniform(0.6, 2) + rng.uniform(-0.2, 0.2)
    return x + 0.02 * rng.uniform(0, 1) * rng.normal(0, 1, x.shape), y


def _time_limit_callback(deadline):
    import keras

    class TimeLimit(keras.callbacks.Callback):
        stopped_at = None

        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() > deadline:
                self.model.stop_training = True
                TimeLimit.stopped_at = batch

    return TimeLimit()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--minutes", type=float, required=True, help="wall budget: training + thresholds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=400, help="upper bound (the budget usually stops first)")
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--n-rays", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--command", default="")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import csbdeep
    import keras
    import stardist
    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    train, val = cil_split.load_split(args.data)
    fit, tune = cil_split.split_for_tuning(train)

    def prep(samples):
        return ([normalize(s.image.astype(np.float32), *PERCENTILES, axis=(0, 1)) for s in samples],
                [fill_label_holes(s.labels.astype(np.int32)) for s in samples])

    x_fit, y_fit = prep(fit)
    x_tune, y_tune = prep(tune)
    conf = Config2D(n_rays=args.n_rays, grid=(2, 2), n_channel_in=2, use_gpu=False,
                    train_patch_size=(args.patch, args.patch), train_batch_size=4,
                    train_epochs=args.epochs, train_steps_per_epoch=args.steps_per_epoch,
                    train_tensorboard=False)
    args.work.mkdir(parents=True, exist_ok=True)
    model = StarDist2D(conf, name=MODEL_NAME, basedir=str(args.work))
    budget_s = 60.0 * args.minutes
    deadline = t_start + budget_s - max(MIN_RESERVE_S, RESERVE_FRACTION * budget_s)
    model.prepare_for_training()
    limit = _time_limit_callback(deadline)
    model.callbacks.append(limit)
    t_train = time.perf_counter()
    history = model.train(x_fit, y_fit, validation_data=(x_tune, y_tune), augmenter=augment,
                          epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, seed=args.seed)
    t_tune = time.perf_counter()
    thresholds = model.optimize_thresholds(x_tune, y_tune)
    t_pred = time.perf_counter()
    x_val, _ = prep(val)
    labels = [model.predict_instances(x)[0] for x in x_val]
    t_end = time.perf_counter()
    cil_split.save_predictions(args.work / "predictions.npz", [s.name for s in val], labels)
    epochs_run = len(history.history.get("loss", []))
    record = {
        "complete": True, "n_fit": len(fit), "n_tune": len(tune), "tune_names": [s.name for s in tune],
        "budget": {"wall_minutes": round((t_end - t_start) / 60, 2), "threads": args.threads,
                   "budget_minutes": args.minutes,
                   "train_minutes": round((t_tune - t_train) / 60, 2),
                   "threshold_minutes": round((t_pred - t_tune) / 60, 2),
                   "predict_minutes": round((t_end - t_pred) / 60, 2),
                   "epochs": epochs_run, "steps_per_epoch": args.steps_per_epoch,
                   "stopped_by_budget": limit.stopped_at is not None},
        "settings": {"n_rays": args.n_rays, "grid": [2, 2], "patch": args.patch, "batch": 4,
                     "normalize_percentiles": list(PERCENTILES), "thresholds": dict(thresholds),
                     "seed": args.seed, "final_loss": history.history.get("loss", [None])[-1],
                     "final_val_loss": history.history.get("val_loss", [None])[-1]},
        "versions": {"stardist": stardist.__version__, "csbdeep": csbdeep.__version__,
                     "tensorflow": tf.__version__, "keras": keras.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "command": args.command or " ".join([sys.executable, *sys.argv]),
    }
    (args.work / "record.json").write_text(json.dumps(record, indent=1, default=float))
    print(f"stardist: {epochs_run} epochs in {record['budget']['train_minutes']} min, thresholds "
          f"{dict(thresholds)}; wrote {args.work / 'predictions.npz'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

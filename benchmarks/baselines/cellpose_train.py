"""Method "cellpose": cellpose 3.1.1.2's own ``train_seg`` on ours' recipe, within a wall budget.

Following ``scripts/cellpose_train_seg_dsb.py``: the same training fields
(all 79), the same network input (two channels, cytoplasm then nuclei,
percentile-normalised by cellpose_nb, so ``normalize=False``), widths
(``--features``), crop size, batch size, one crop per field per epoch,
learning rate, weight decay, AdamW and train_seg's own warm-up and halvings,
``diam_mean`` 30 and ``min_train_masks=5``.

``train_seg`` has no wall-clock limit, so the budget is turned into epochs
before it starts: the flows are computed first (cellpose's own
``labels_to_flows``, inside the budget), then a few steps of train_seg's own
batch, augmentation, forward, loss and backward are timed on a copy of the
network, and the epoch count is the recipe's ``epochs`` or what fits in the
time left, whichever is smaller (its learning-rate schedule is then that of
the shorter run).  The weights are a Cellpose 3 file; ``record.json`` next to
them holds the losses, the times and the command.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

DIAM_MEAN = 30.0  # as the shipped cyto_cil model
CALIBRATION_STEPS = 3  # timed steps (after one warm-up) to estimate the time of an epoch
SAFETY = 1.10  # epochs are planned for this much more time per epoch than measured
MODEL_NAME = "cellpose_cil"


def _seconds_per_step(net, images, flows, diams, *, batch, crop, seed):
    """Wall seconds of one train_seg step (batch, augmentation, forward, loss, backward)."""
    import torch
    from cellpose import transforms
    from cellpose import train as cp_train

    net = copy.deepcopy(net)
    opt = torch.optim.AdamW(net.parameters(), lr=0.0)
    rng = np.random.default_rng(seed)
    times = []
    for step in range(CALIBRATION_STEPS + 1):
        t0 = time.perf_counter()
        inds = rng.choice(len(images), size=min(batch, len(images)), replace=False)
        imgs, lbls = cp_train._get_batch(inds, data=images, labels=flows)
        rsc = np.array([diams[i] for i in inds]) / net.diam_mean.item()
        x, y = transforms.random_rotate_and_resize(imgs, Y=lbls, rescale=rsc, scale_range=0.5,
                                                   xy=(crop, crop))[:2]
        loss = cp_train._loss_fn_seg(y, net(torch.from_numpy(x))[0], torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def train_cellpose(train, out_dir: Path, *, minutes, epochs=300, features=(32, 64, 128, 256),
                   crop=224, batch=8, lr=0.005, weight_decay=1e-5, threads=2, seed=0,
                   command="") -> dict:
    """Train CPnet with ``train_seg`` on ``train`` (Samples); returns the record (also saved)."""
    import torch
    from cellpose import dynamics, resnet_torch
    from cellpose import train as cp_train
    from cellpose.utils import diameters

    from cellpose_nb.normalize import to_network_input

    t_start = time.perf_counter()
    budget_s = 60.0 * minutes
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [to_network_input(s.image, channels=(0, 1)) for s in train]
    flows = dynamics.labels_to_flows([s.labels.astype(np.int32) for s in train],
                                     device=torch.device("cpu"))
    diams = [diameters(f[0].astype(np.int32))[0] for f in flows]  # as train_seg computes them
    np.random.seed(seed)
    torch.manual_seed(seed)
    net = resnet_torch.CPnet([2, *features], 3, sz=3, max_pool=True, diam_mean=DIAM_MEAN)
    step_s = _seconds_per_step(net, images, flows, diams, batch=batch, crop=crop, seed=seed)
    epoch_s = step_s * math.ceil(len(images) / batch)
    left = budget_s - (time.perf_counter() - t_start)
    fit = int(left // (epoch_s * SAFETY))
    n_epochs = max(1, min(epochs, fit))
    print(f"cellpose train_seg: {step_s:.1f} s per step, {epoch_s:.0f} s per epoch; "
          f"{left / 60:.1f} of {minutes} min left: {n_epochs} epochs (recipe {epochs})", flush=True)
    np.random.seed(seed)
    torch.manual_seed(seed)
    t_train = time.perf_counter()
    path, losses, _ = cp_train.train_seg(
        net, train_data=images, train_labels=flows, batch_size=batch, learning_rate=lr,
        weight_decay=weight_decay, SGD=False, n_epochs=n_epochs, normalize=False,
        save_path=out_dir, bsize=crop, nimg_per_epoch=len(images), min_train_masks=5,
        rescale=True, model_name=MODEL_NAME)
    now = time.perf_counter()
    record = {
        "weights": str(path), "complete": True, "n_train": len(images),
        "train_names": [s.name for s in train],
        "wall_minutes": round((now - t_start) / 60, 2), "train_seg_minutes": round((now - t_train) / 60, 2),
        "budget_minutes": minutes, "threads": threads, "seconds_per_step": step_s,
        "epochs": n_epochs, "recipe_epochs": epochs, "features": list(features), "crop_size": crop,
        "batch_size": batch, "learning_rate": lr, "weight_decay": weight_decay, "seed": seed,
        "diam_mean": DIAM_MEAN, "losses": [float(x) for x in losses],
        "command": command or " ".join([sys.executable, *sys.argv]), "torch": torch.__version__,
    }
    (out_dir / "record.json").write_text(json.dumps(record, indent=1))
    return record


def evaluate_cellpose(record: dict, val, *, true_diameter=False, progress=None):
    """Labels of ``val`` from the train_seg network, by cellpose_nb's ``segment``.

    Cellpose's defaults: cellprob 0, flow 0.4, and without a size model the
    training set's mean diameter (``diam_labels``, what ``CellposeModel.eval``
    uses when no diameter is given), or with ``true_diameter`` each field's
    true median diameter.
    """
    from cellpose_nb.model import load_cellpose_weights
    from cellpose_nb.predict import median_diameter

    from ours import segment_fields

    net = load_cellpose_weights(record["weights"], device="cpu")
    net.record = net.record.replace(input_recipe={"channels": [0, 1], "invert": False},
                                    thresholds={"cellprob_threshold": 0.0, "flow_threshold": 0.4})
    if true_diameter:
        diameters = [median_diameter(s.labels) for s in val]
    else:
        diameters = [float(net.record.diam_labels)] * len(val)
    labels, _ = segment_fields(net, [s.image for s in val], diameters=diameters, progress=progress)
    return labels, diameters


def evaluate_with_cellpose_eval(record: dict, val):
    """The same network run by cellpose 3.1.1.2's own ``CellposeModel.eval`` (its defaults)."""
    from cellpose_nb.model import cellpose_reference_model
    from cellpose_nb.normalize import to_network_input

    logging.getLogger("cellpose").setLevel(logging.WARNING)
    cp = cellpose_reference_model(record["weights"])
    out = []
    for s in val:
        x = np.moveaxis(to_network_input(s.image, channels=(0, 1)), 0, -1)
        out.append(cp.eval(x, channels=None, channel_axis=-1, diameter=cp.diam_labels,
                           normalize=False)[0])
    return out

"""Train cellpose 3.1.1.2's CPnet with its own ``train_seg`` on the shipped model's recipe.

The comparison that issue 4 asks for: the same training images (DSB2018
minus ``scripts/dsb2018_val.txt``), the same network input (one gray
channel, ``invert="auto"``, percentile-normalised by cellpose_nb, so
``normalize=False`` here), the same network size (``--features``), crop
size, batch size, images per epoch, epochs, learning rate and weight decay
(AdamW; train_seg's own warm-up and decay), ``diam_mean`` 17 and
``min_train_masks=5``.  The weights are saved in ``OUT`` (a Cellpose 3 file
that ``cellpose_nb.model.load_cellpose_weights`` reads), with the losses
and the wall time; ``scripts/report_nuclei.py`` then evaluates it the same
way as ours.

    python scripts/cellpose_train_seg_dsb.py --out runs/cellpose_dsb --epochs 300 \\
        --images-per-epoch 128 --crop-size 112 --features 16 32 64 128 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cellpose_nb.data import load_dsb2018
from cellpose_nb.normalize import to_network_input

DIAM_MEAN = 17.0
VAL_LIST = Path(__file__).with_name("dsb2018_val.txt")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--images-per-epoch", type=int, default=128)
    p.add_argument("--crop-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="first N images only (a quick check)")
    args = p.parse_args(argv)
    from cellpose import resnet_torch
    from cellpose import train as cp_train

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    val_ids = set(VAL_LIST.read_text().split())
    samples = [s for s in load_dsb2018(limit=args.limit) if s.name not in val_ids]
    images = [to_network_input(s.image, channels=("gray", None), invert="auto") for s in samples]
    labels = [s.labels.astype(np.int32) for s in samples]
    print(f"{len(images)} training images", flush=True)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    net = resnet_torch.CPnet([2, *args.features], 3, sz=3, max_pool=True, diam_mean=DIAM_MEAN)
    t0 = time.perf_counter()
    path, losses, _ = cp_train.train_seg(
        net, train_data=images, train_labels=labels, batch_size=args.batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, SGD=False,
        n_epochs=args.epochs, normalize=False, save_path=args.out, bsize=args.crop_size,
        nimg_per_epoch=args.images_per_epoch, min_train_masks=5, rescale=True,
        model_name="cellpose_dsb")
    seconds = time.perf_counter() - t0
    (args.out / "record.json").write_text(json.dumps({
        "weights": str(path), "seconds": seconds, "losses": [float(x) for x in losses],
        "command": [sys.executable, *sys.argv], "n_train": len(images),
        "features": args.features, "epochs": args.epochs,
        "images_per_epoch": args.images_per_epoch, "crop_size": args.crop_size,
        "torch": torch.__version__}, indent=2))
    print(f"done in {seconds / 60:.1f} min; weights {path}", flush=True)


if __name__ == "__main__":
    main()

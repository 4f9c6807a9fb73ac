"""Training throughput: cellpose 3.1.1.2 ``train.train_seg`` vs ``cellpose_nb.train.train``.

Same work on both sides: the same network architecture (CPnet widths
2-32-64-128-256 by default), the same network inputs (percentile-normalised
(2, H, W) float32 images; Cellpose gets ``normalize=False`` so neither side
normalises again), batch size 8, crops of 224, AdamW with Cellpose's
defaults, the same number of images and epochs, on the CPU with the same
number of torch threads, no validation, no checkpoints (Cellpose saves its
weights once at the end; we save nothing).  Each timed call includes the
flow computation from the labels (both sides compute flows once per call),
the per-epoch augmentation and the optimisation.  A warm-up call of one
epoch per implementation comes first (numba JIT, thread pools, allocators);
then ``--repeats`` timed calls per implementation, interleaved, and the
fastest of each is reported (the machine may be shared: the spread is printed).

Precision: our side trains as ``cellpose-nb train`` does by default
(``TrainConfig(amp=None)``: bfloat16 autocast on a CPU with bfloat16 units,
Intel AMX, float32 on other CPUs; weights, loss and optimizer stay float32);
``--float32`` forces float32 (``amp=False``).  Cellpose has no CPU mixed
precision and always trains in float32.

Memory: our ``train`` keeps freed activations in the heap while it runs on the
CPU (``cellpose_nb._alloc.reuse_freed_memory``; glibc otherwise maps and
page-faults them anew every step).  On exit it leaves glibc where glibc's own
adaptive threshold ends, so the cellpose calls that follow in this process
run as in a fresh one.  ``--cellpose-reuse-memory`` gives cellpose's calls the
same setting, which isolates what our code itself gains.

Data: synthetic nuclei (``make_synthetic``, kind="nuclei", diameter 17),
or ``--dsb`` for the first DSB2018 fluorescence images cropped to 256 x 256.

    python benchmarks/train_vs_cellpose.py [--images 16] [--epochs 2] [--threads 2] \\
        [--repeats 3] [--dsb] [--crop 224] [--features 32 64 128 256] [--float32] \\
        [--cellpose-reuse-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import tempfile
import time
import warnings

import numpy as np
import torch

DIAMETER = 17.0  # nuclei diameter (px) and diam_mean of both networks
SIZE = 256  # side of the training images
CELLS = 40  # synthetic nuclei per image
BATCH_SIZE = 8
CROP = 224
LEARNING_RATE = 0.005  # train_seg's default (AdamW)
WEIGHT_DECAY = 1e-5


def make_data(n, dsb):
    from cellpose_nb.train import prepare_images

    if dsb:
        from cellpose_nb.data import load_dsb2018

        samples = load_dsb2018(modality="fluorescence", limit=n)
        images = [s.image[:SIZE, :SIZE] for s in samples]
        labels = [s.labels[:SIZE, :SIZE].astype(np.int32) for s in samples]
    else:
        from cellpose_nb.data import make_synthetic_dataset

        samples = make_synthetic_dataset(n, shape=(SIZE, SIZE), seed=0, n_cells=CELLS,
                                          diameter=DIAMETER, kind="nuclei")
        images = [s.image for s in samples]
        labels = [s.labels for s in samples]
    return prepare_images(images), labels


def run_ours(images, labels, n_epochs, features, crop, amp=None):
    from cellpose_nb.model import CellposeUNet, ModelConfig
    from cellpose_nb.train import TrainConfig, train

    torch.manual_seed(0)
    net = CellposeUNet(ModelConfig(features=features, diam_mean=DIAMETER))
    config = TrainConfig(n_epochs=n_epochs, batch_size=BATCH_SIZE, crop_size=crop,
                         learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                         optimizer="adamw", device="cpu", min_train_masks=1, amp=amp)
    t0 = time.perf_counter()
    res = train(images, labels, net, config=config, progress=False)
    return time.perf_counter() - t0, [h["train_loss"] for h in res.history]


def run_cellpose(images, labels, n_epochs, features, crop, reuse_memory=False):
    from cellpose_nb._alloc import reuse_freed_memory

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cellpose import resnet_torch
        from cellpose import train as cp_train
    logging.getLogger("cellpose").setLevel(logging.WARNING)
    torch.manual_seed(0)
    net = resnet_torch.CPnet([2, *features], 3, sz=3, max_pool=True, diam_mean=DIAMETER)
    with (tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(),
          reuse_freed_memory(reuse_memory)):
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        _, losses, _ = cp_train.train_seg(
            net, train_data=list(images), train_labels=list(labels), batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, SGD=False,
            n_epochs=n_epochs, normalize=False, save_path=tmp, bsize=crop,
            min_train_masks=1, model_name="bench")
        return time.perf_counter() - t0, list(losses)


def time_flows(labels, impl):
    """Seconds to compute the training flows of ``labels`` once."""
    t0 = time.perf_counter()
    if impl == "cellpose_nb":
        from cellpose_nb.train import cached_flows

        cached_flows(labels)
    else:
        from cellpose import dynamics

        dynamics.labels_to_flows(list(labels), device=torch.device("cpu"))
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--dsb", action="store_true", help="DSB2018 fluorescence crops")
    parser.add_argument("--crop", type=int, default=CROP, help="side of the training crops")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--float32", action="store_true",
                        help="ours in float32 too (default: as cellpose-nb train: bfloat16 "
                             "autocast on CPUs with AMX)")
    parser.add_argument("--cellpose-reuse-memory", action="store_true",
                        help="cellpose's calls keep freed memory in the heap, as ours do")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    features = tuple(args.features)
    images, labels = make_data(args.images, args.dsb)
    n = len(images) * args.epochs
    from cellpose_nb.train import TrainConfig, amp_dtype

    amp = False if args.float32 else None
    ours_dtype = amp_dtype(TrainConfig(amp=amp), "cpu") or torch.float32
    print(f"{len(images)} images {SIZE}x{SIZE} ({'DSB2018' if args.dsb else 'synthetic'}), "
          f"{args.epochs} epochs, batch {BATCH_SIZE}, crops {args.crop}, features {features}, "
          f"CPU, {torch.get_num_threads()} threads; ours in {str(ours_dtype)[6:]}, cellpose in "
          f"float32{', both reusing freed memory' if args.cellpose_reuse_memory else ''}")
    impls = {"cellpose_nb": functools.partial(run_ours, amp=amp),
             "cellpose": functools.partial(run_cellpose,
                                           reuse_memory=args.cellpose_reuse_memory)}
    runs = {name: [] for name in impls}
    with contextlib.redirect_stderr(io.StringIO()):  # Cellpose's tqdm bars
        for run in impls.values():
            run(images, labels, 1, features, args.crop)  # warm-up
        for _ in range(args.repeats):  # interleaved, the best of each counts
            for name, run in impls.items():
                runs[name].append(run(images, labels, args.epochs, features, args.crop))
        flows = {name: min(time_flows(labels, name) for _ in range(2)) for name in impls}
    total, loop = {}, {}
    for name in impls:
        seconds, losses = min(runs[name], key=lambda r: r[0])
        total[name], loop[name] = seconds, seconds - flows[name]
        print(f"{name:12s} {seconds:7.1f} s in all ({n / seconds:5.2f} images/s); flows "
              f"{flows[name]:5.1f} s; epochs {loop[name]:7.1f} s ({n / loop[name]:5.2f} "
              f"images/s); all runs {[round(r[0], 1) for r in runs[name]]} s; "
              f"epoch losses {np.round(losses, 3).tolist()}")
    print(f"throughput ratio cellpose_nb / cellpose: whole call "
          f"{total['cellpose'] / total['cellpose_nb']:.2f}x, epochs only "
          f"{loop['cellpose'] / loop['cellpose_nb']:.2f}x")


if __name__ == "__main__":
    main()

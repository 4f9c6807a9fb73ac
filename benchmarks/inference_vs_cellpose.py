"""Inference side by side: cellpose 3.1.1.2 ``CellposeModel.eval`` vs ``cellpose_nb.predict.segment``.

The same weights, the same settings (diameter = diam_mean so nothing is
rescaled, tiles of 224 with overlap 0.1, no augmentation, the same
thresholds, grayscale = channels [0, 0] in Cellpose's convention), each side
at its default batch size (Cellpose 8 tiles per pass, ours 2 on the CPU;
``--ours-batch-size 8`` for the same batch on both sides), on
CPU, on synthetic nuclei images.  Each (implementation, size) runs in its own
subprocess, so that peak memories do not mix: one warm-up call on a 256 x 256
crop, one timed call, then one call under ``tracemalloc`` (NumPy and other
Python-level allocations; torch's CPU allocator is not traced) after which the
process's ``ru_maxrss`` (everything, imports included) is read.

Weights: ``--model FOLDER`` (saved by ``cellpose_nb.model.save``), else
``load_pretrained("nuclei")`` when the package ships it, else a randomly
initialised network -- its masks are meaningless, so then only the
agreement of the raw network outputs and the timings mean something.

A second comparison, "mask stage", needs no trained model: both mask
algorithms (``cellpose.dynamics.resize_and_compute_masks``, as ``eval`` calls
it, and ``cellpose_nb.masks.compute_masks``) get the ideal network output for
the synthetic truth (``FLOW_SCALE * masks_to_flows(labels)``, cellprob +-5).

Wall-clock times on a shared machine are noisy: the CPU time of the process
is printed too, and ``--repeats N`` keeps the fastest of N timed calls.

    python benchmarks/inference_vs_cellpose.py [--model FOLDER] [--sizes 512 2048]
        [--precision bfloat16] [--repeats 3] [--no-trace]

``--precision bfloat16`` runs our network under autocast (cellpose stays in
float32): faster on CPUs with bfloat16 units, network outputs then differ by
about 1 % and the masks agree less than exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

DIAMETER = 17.0  # nuclei diameter of the synthetic images (px) = diam_mean of a nuclei model
CELL_DENSITY = 1 / 900  # synthetic nuclei per pixel (about a quarter of the area covered)
WARMUP_SIZE = 256  # side of the crop used to warm up (JIT, thread pools, first allocations)
SETTINGS = dict(tile_size=224, tile_overlap=0.1, batch_size=8, min_size=15, n_iter=200)


# --- workers (run in subprocesses) ------------------------------------------------------
def _run_ours(weights, th, precision, batch_size):
    from cellpose_nb.flows import FLOW_SCALE
    from cellpose_nb.model import load_cellpose_weights
    from cellpose_nb.predict import segment

    model = load_cellpose_weights(weights, device="cpu")

    def run(img):
        settings = dict(SETTINGS, batch_size=batch_size)  # None: segment's default
        res = segment(img, model, diameter=model.config.diam_mean, channels=(0, None),
                      invert=False, augment=False, device="cpu", precision=precision, **th,
                      **settings)
        return res.labels, res.flows * FLOW_SCALE, res.cellprob

    return run


def _run_cellpose(weights, th):
    from cellpose_nb.model import cellpose_reference_model

    model = cellpose_reference_model(weights)  # CellposeModel with these weights, any widths

    def run(img):
        masks, flows, _ = model.eval(
            img, channels=[0, 0], diameter=float(model.diam_mean), augment=False,
            batch_size=SETTINGS["batch_size"], bsize=SETTINGS["tile_size"],
            tile_overlap=SETTINGS["tile_overlap"], min_size=SETTINGS["min_size"],
            niter=SETTINGS["n_iter"], **th)
        return masks, flows[1], flows[2]

    return run


def _masks_ours(th):
    from cellpose_nb.flows import FLOW_SCALE
    from cellpose_nb.masks import compute_masks

    def run(net_out):
        dp, cellprob = net_out
        masks = compute_masks(dp / FLOW_SCALE, cellprob, **th, n_iter=SETTINGS["n_iter"],
                              min_size=SETTINGS["min_size"])
        return masks, dp, cellprob

    return run


def _masks_cellpose(th):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch
        from cellpose import dynamics

    def run(net_out):
        dp, cellprob = net_out
        masks = dynamics.resize_and_compute_masks(
            dp, cellprob, niter=SETTINGS["n_iter"], min_size=SETTINGS["min_size"],
            device=torch.device("cpu"), **th)
        return masks, dp, cellprob

    return run


def _crop(data, size):
    if isinstance(data, tuple):
        return tuple(np.ascontiguousarray(d[..., :size, :size]) for d in data)
    return data[:size, :size]


def worker(impl, stage, weights, input_path, out_path, thresholds, trace, repeats, precision,
           batch_size):
    th = json.loads(thresholds)
    if stage == "full":
        data = np.load(input_path)
        run = (_run_ours(weights, th, precision, batch_size) if impl == "ours"
               else _run_cellpose(weights, th))
    else:
        with np.load(input_path) as f:
            data = (f["dp"], f["cellprob"])
        run = (_masks_ours if impl == "ours" else _masks_cellpose)(th)
    run(_crop(data, WARMUP_SIZE))
    import resource

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        masks, dp, cellprob = run(data)
        seconds.append(time.perf_counter() - t0)
        cpu_seconds.append(time.process_time() - c0)
    traced = None
    if trace:
        del masks, dp, cellprob
        tracemalloc.start()
        masks, dp, cellprob = run(data)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.savez(out_path, masks=masks.astype(np.int32), dp=dp.astype(np.float32),
             cellprob=cellprob.astype(np.float32))
    print(json.dumps({"seconds": min(seconds), "cpu_seconds": min(cpu_seconds),
                      "traced_peak": traced, "maxrss_kb": maxrss,
                      "maxrss_before_kb": rss_before}))


# --- driver -----------------------------------------------------------------------------
def _model(folder):
    from cellpose_nb import model as M

    if folder:
        return M.load(folder, device="cpu"), f"trained model from {folder}"
    try:
        return M.load_pretrained("nuclei", device="cpu"), "cellpose_nb pretrained 'nuclei'"
    except FileNotFoundError:
        import torch

        torch.manual_seed(0)
        net = M.CellposeUNet(M.ModelConfig(diam_mean=DIAMETER)).eval()
        return net, "RANDOMLY INITIALISED network (masks are meaningless)"


def _thresholds(model):
    from cellpose_nb.predict import model_thresholds

    return model_thresholds(model)


def _spawn(impl, stage, weights, input_path, out_path, th, args):
    threads = args.threads
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", impl, "--stage", stage, "--weights",
           str(weights), "--input", str(input_path), "--out", str(out_path), "--thresholds",
           json.dumps(th), "--repeats", str(args.repeats), "--precision", args.precision]
    if args.ours_batch_size is not None:
        cmd += ["--ours-batch-size", str(args.ours_batch_size)]
    if args.no_trace:
        cmd.append("--no-trace")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{impl} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder saved by cellpose_nb.model.save")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc run")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls; the fastest counts")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                        help="our network precision (cellpose always runs float32)")
    parser.add_argument("--ours-batch-size", type=int, default=None,
                        help="tiles per forward pass on our side (default: segment's default, "
                             "2 on the CPU; cellpose always runs its default 8)")
    parser.add_argument("--impls", nargs="+", default=["cellpose", "ours"],
                        choices=["cellpose", "ours"], help="run only these (e.g. ours at 4096)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["ours", "cellpose"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=["full", "masks"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--thresholds", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.stage, args.weights, args.input, args.out,
                      args.thresholds, not args.no_trace, args.repeats, args.precision,
                      args.ours_batch_size)

    from cellpose_nb.data import make_synthetic
    from cellpose_nb.flows import FLOW_SCALE, masks_to_flows
    from cellpose_nb.model import export_cellpose_weights

    model, kind = _model(args.model)
    th = _thresholds(model)
    print(f"weights: {kind}; diam_mean {model.config.diam_mean:g}; thresholds {th}; "
          f"features {model.config.features}; {args.threads} threads; settings {SETTINGS}; "
          f"our precision {args.precision}; our batch size "
          f"{args.ours_batch_size or 'default (BATCH_SIZE_CPU)'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = export_cellpose_weights(model, tmp / "weights_cellpose")
        for size in args.sizes:
            sample = make_synthetic((size, size), n_cells=int(size * size * CELL_DENSITY),
                                    diameter=model.config.diam_mean, kind="nuclei",
                                    seed=args.seed)
            np.save(tmp / "image.npy", sample.image)
            np.savez(tmp / "ideal.npz", dp=FLOW_SCALE * masks_to_flows(sample.labels),
                     cellprob=np.where(sample.labels > 0, 5.0, -5.0).astype(np.float32))
            print(f"\n{size} x {size}, {sample.labels.max()} synthetic nuclei")
            for stage, title, source in (
                    ("full", "whole pipeline: image -> masks", "image.npy"),
                    ("masks", "mask stage only, on the ideal network output", "ideal.npz")):
                stats, outs = {}, {}
                for impl in args.impls:
                    out = tmp / f"{impl}_{stage}.npz"
                    stats[impl] = _spawn(impl, stage, weights, tmp / source, out, th, args)
                    outs[impl] = dict(np.load(out))
                _report(title, sample.labels, stats, outs, compare_outputs=stage == "full")


def _report(title, truth, stats, outs, *, compare_outputs):
    from cellpose_nb.metrics import average_precision

    print(f"  {title}")
    for impl in stats:
        s = stats[impl]
        traced = "n/a" if s["traced_peak"] is None else f"{s['traced_peak'] / 2**20:.0f} MiB"
        ap_truth = average_precision(truth, outs[impl]["masks"], thresholds=[0.5])[0, 0]
        print(f"    {impl:8s} {s['seconds']:7.2f} s (cpu {s['cpu_seconds']:7.2f} s)   "
              f"tracemalloc peak {traced:>8s}   ru_maxrss {s['maxrss_kb'] / 2**10:5.0f} MiB "
              f"(after warm-up {s['maxrss_before_kb'] / 2**10:5.0f})   "
              f"{int(outs[impl]['masks'].max()):5d} masks, AP@0.5 vs truth {ap_truth:.3f}")
    if set(stats) != {"cellpose", "ours"}:
        return
    cp, us = outs["cellpose"], outs["ours"]
    ratio = stats["cellpose"]["seconds"] / stats["ours"]["seconds"]
    ratio_cpu = stats["cellpose"]["cpu_seconds"] / stats["ours"]["cpu_seconds"]
    ap = average_precision(cp["masks"], us["masks"], thresholds=[0.5, 0.9])[0]
    print(f"    speed-up cellpose/ours: {ratio:.2f}x wall, {ratio_cpu:.2f}x cpu;  "
          f"our masks vs cellpose's: AP@0.5 {ap[0]:.4f}, AP@0.9 {ap[1]:.4f}")
    if compare_outputs:
        print(f"    network outputs, max |ours - cellpose|: flows "
              f"{np.abs(cp['dp'] - us['dp']).max():.1e}, cellprob "
              f"{np.abs(cp['cellprob'] - us['cellprob']).max():.1e} "
              f"(max |cellprob| {np.abs(cp['cellprob']).max():.2f})")


if __name__ == "__main__":
    main()

"""Network throughput in float32 and bfloat16 against the CPU's peak, in GFLOP/s.

The FLOPs of one forward pass on a 224 x 224 tile are counted by torch
(``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix
products, a multiply-add counted as 2), for the 16-128 network (the shipped
models) and Cellpose's 32-256.  Each pass is timed over ``--repeats`` batches
of ``--batch`` tiles after a warm-up, in float32 and under bfloat16 autocast,
in eval mode as inference runs it; the best batch is reported.

The peak is an estimate from the ISA flags: cores x clock x FLOP per cycle,
with two FMA units per core (AVX2: 2 x 8 float32 lanes x 2; AVX-512: 2 x 16 x 2;
AVX512-BF16 doubles AVX-512's rate for bfloat16; AMX is far higher and is
not estimated), and the clock from ``/proc/cpuinfo`` (the current, not the
turbo, frequency).  The printed fraction of the peak shows how far the
network is from what the CPU could do; the decision ``train`` takes by
default (``cellpose_nb.train.precision_reason``) is printed with it.

    python benchmarks/precision.py [--threads 2] [--batch 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from cellpose_nb.model import CellposeUNet, ModelConfig
from cellpose_nb.train import TrainConfig, cpu_bfloat16_isa, precision_reason

TILE = 224
WIDTHS = {"16-128": (16, 32, 64, 128), "32-256": (32, 64, 128, 256)}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return set(), None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    mhz = next((float(line.split(":", 1)[1]) for line in text.splitlines()
                if line.startswith("cpu MHz")), None)
    return set(flags), mhz


def peak_gflops(threads):
    """(float32, bfloat16) peak estimates in GFLOP/s for ``threads`` cores, or None."""
    flags, mhz = cpu_flags()
    if mhz is None:
        return None, None
    fp32 = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    bf16 = 2 * fp32 if "avx512_bf16" in flags else None  # emulated otherwise: no peak
    per_core = mhz / 1000
    return threads * per_core * fp32, (threads * per_core * bf16 if bf16 else None)


def flops_per_tile(net):
    x = torch.zeros(1, 2, TILE, TILE)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x)
    return counter.get_total_flops()


def best_time(net, batch, repeats, dtype):
    x = torch.rand(batch, 2, TILE, TILE)
    autocast = torch.autocast("cpu", dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    times = []
    with torch.inference_mode(), autocast:
        net(x)  # warm-up: oneDNN picks its kernels
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    return min(times), max(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    flags, mhz = cpu_flags()
    peak32, peak16 = peak_gflops(args.threads)
    print(f"{args.threads} threads, clock {mhz} MHz, bfloat16 ISA: {cpu_bfloat16_isa()}, "
          f"AVX-512: {'avx512f' in flags}; peak estimate float32 "
          f"{peak32 and round(peak32)} GFLOP/s, bfloat16 {peak16 and round(peak16)} GFLOP/s")
    print("train's default here:", precision_reason(TrainConfig(), "cpu"))
    for name, widths in WIDTHS.items():
        torch.manual_seed(0)
        net = CellposeUNet(ModelConfig(features=widths)).eval()
        gflop = flops_per_tile(net) / 1e9
        line = [f"{name}: {gflop:.1f} GFLOP per {TILE} px tile"]
        results = {}
        for label, dtype, peak in (("float32", None, peak32), ("bfloat16", torch.bfloat16, peak16)):
            best, worst = best_time(net, args.batch, args.repeats, dtype)
            rate = gflop * args.batch / best
            results[label] = best
            frac = f", {rate / peak:.0%} of peak" if peak else ""
            line.append(f"{label} {1000 * best / args.batch:.0f}-{1000 * worst / args.batch:.0f} ms/tile, "
                        f"{rate:.0f} GFLOP/s{frac}")
        line.append(f"bfloat16 / float32 time: {results['bfloat16'] / results['float32']:.2f}")
        print("  " + "; ".join(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

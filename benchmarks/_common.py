"""Helpers shared by the benchmark scripts (not a test module)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def dsb_label_files(limit=None):
    """The DSB2018 label files under the data root, sorted; a clear error when absent."""
    from cellpose_nb.data import data_root

    root = data_root(required=True)
    files = sorted((Path(root) / "dsb2018" / "train").glob("*_masks.tif"))
    if not files:
        raise SystemExit(f"no DSB label files under {root}/dsb2018/train")
    return files[:limit] if limit else files


def load_labels(files):
    import tifffile

    return [tifffile.imread(f).astype(np.int32) for f in files]


def timed(fn, items, repeats=1):
    """Best total wall time over ``repeats`` runs of ``fn`` on every item, and the outputs."""
    best, out = np.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = [fn(x) for x in items]
        best = min(best, time.perf_counter() - t0)
    return best, out


def machine():
    import platform

    import numba
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"numba threads {numba.get_num_threads()}, torch threads {torch.get_num_threads()}")

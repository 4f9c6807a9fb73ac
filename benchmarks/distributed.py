"""Block-wise segmentation on dask.distributed: memory per worker, throughput, stitching quality.

    python benchmarks/distributed.py [--size 16384] [--small 4096] [--block 1024] [--workers 1 2]

A synthetic nuclei image of ``--size`` x ``--size`` pixels (diameter 34 px,
tiles of 1024 x 1024 drawn with 16 seeds and laid out cyclically) is written
to zarr tile by tile, with its true labels, and never held whole.  For each
number of workers, ``cellpose_nb.distributed.segment_large`` runs on a fresh
``LocalCluster`` (one thread per worker): wall time, megapixels per second,
and the peak resident memory of each worker process (``VmHWM``).  The
same is measured on a ``--small`` image, to show that the peak per worker
does not grow with the image.  Quality, on the large image: AP@0.5 / 0.9
against the truth and the number of true cells crossing a block line that
come out in two or more pieces.

Cellpose's ``contrib/distributed_segmentation.distributed_eval`` is run side
by side with ours, on the same zarr, blocks and weights, by
``benchmarks/distributed_vs_cellpose.py`` (it needs dask-image and
dask-jobqueue, and as shipped it does not run on 2-D images: see there).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# this file's name would shadow the dask.distributed package: its folder leaves sys.path
# (also in the dask workers, which start from this file), and _common is loaded by path
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def machine():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_common", HERE / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    return common.machine()

DIAMETER = 34.0
TILE = 1024
SEEDS = 16
CELLS_PER_TILE = 420
PEAK_LIMIT_GB = 1.5  # the bound on memory per worker


def write_synthetic(folder, size):
    """image.zarr and truth.zarr of size x size, written tile by tile (truth ids unique)."""
    import zarr

    from cellpose_nb.data import make_synthetic

    n_tiles = min(SEEDS, (size // TILE) ** 2)
    tiles = [make_synthetic((TILE, TILE), n_cells=CELLS_PER_TILE, diameter=DIAMETER, kind="nuclei",
                            seed=s) for s in range(n_tiles)]
    img = zarr.create_array(store=str(folder / "image.zarr"), shape=(size, size), chunks=(TILE, TILE),
                            dtype="float32", overwrite=True)
    lab = zarr.create_array(store=str(folder / "truth.zarr"), shape=(size, size), chunks=(TILE, TILE),
                            dtype="int64", overwrite=True)
    offset = 0
    for k, (r, c) in enumerate((r, c) for r in range(0, size, TILE) for c in range(0, size, TILE)):
        t = tiles[k % n_tiles]
        img[r:r + TILE, c:c + TILE] = t.image
        lab[r:r + TILE, c:c + TILE] = np.where(t.labels > 0, t.labels + offset, 0)
        offset += int(t.labels.max())
    return folder / "image.zarr", folder / "truth.zarr"


def worker_peak_gb(client):
    """The largest peak resident size of the workers, GB: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: a worker is spawned by fork and exec, and Linux carries the parent's
    resident size at the fork into the child's ``ru_maxrss``.
    """
    def peak_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

    return max(client.run(peak_kb).values()) / 2 ** 20


def run_ours(image, out, n_workers, block):
    import distributed

    from cellpose_nb.distributed import segment_large

    with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", memory_limit="4GiB") as cluster, \
            distributed.Client(cluster) as client:
        client.run(lambda: __import__("cellpose_nb.predict"))  # imports outside the timing
        t0 = time.perf_counter()
        res = segment_large(image, "nuclei", out=out, diameter=DIAMETER, block_size=block,
                            client=client, overwrite=True)
        wall = time.perf_counter() - t0
        peak = worker_peak_gb(client)
    return res, wall, peak


def split_cells(truth, pred, block):
    """True cells crossing a block line, and those of them in two or more predicted pieces."""
    from cellpose_nb.distributed.quality import crossing_labels, split_labels

    crossing = crossing_labels(truth, block)
    return len(crossing), len(split_labels(truth, pred, crossing))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--small", type=int, default=4096)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    import zarr

    from cellpose_nb.metrics import matching

    print(f"{machine()}; diameter {DIAMETER:g} px, blocks of {args.block} px, 1 thread per worker")
    tmp = Path(tempfile.mkdtemp(prefix="cpnb_dist_"))
    try:
        for size in (args.small, args.size):
            t0 = time.perf_counter()
            image, truth = write_synthetic(tmp / str(size), size)
            print(f"\n{size} x {size} image written to zarr in {time.perf_counter() - t0:.0f} s")
            walls = {}
            for n in args.workers if size == args.size else args.workers[-1:]:
                res, wall, peak = run_ours(image, tmp / str(size) / "masks.zarr", n, args.block)
                walls[n] = wall
                print(f"  cellpose_nb, {n} worker{'s' * (n > 1)}: {wall:.0f} s, "
                      f"{size * size / wall / 1e6:.3f} Mpx/s, {res.n_cells} cells in {res.n_blocks} "
                      f"blocks, peak memory per worker {peak:.2f} GB "
                      f"({'within' if peak <= PEAK_LIMIT_GB else 'ABOVE'} {PEAK_LIMIT_GB} GB)")
            if len(walls) > 1:
                print(f"  speed-up {args.workers[0]} -> {args.workers[-1]} workers: "
                      f"{walls[args.workers[0]] / walls[args.workers[-1]]:.2f}x")
            if size == args.size:
                t = zarr.open_array(str(truth))[:]
                p = zarr.open_array(str(res.path))[:]
                m50, m90 = matching(t, p, thresholds=[0.5, 0.9])
                n_cross, n_split = split_cells(t, p, args.block)
                print(f"  vs truth: AP@0.5 {m50.ap:.4f}, AP@0.9 {m90.ap:.4f}; {n_cross} true cells "
                      f"cross a block line, {n_split} of them split")
                del t, p
                print("  cellpose's distributed_eval side by side: benchmarks/distributed_vs_cellpose.py")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

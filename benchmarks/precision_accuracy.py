"""Does inference in bfloat16 keep a shipped model's accuracy?  float32 against bfloat16.

    python benchmarks/precision_accuracy.py [--model cyto_cil|nuclei] [--limit N] [--threads T]

Each validation image of the model's own split (``scripts/cil_val.txt`` for
``cyto_cil``, the fluorescence images of ``scripts/dsb2018_val.txt`` for
``nuclei``; never the held-back test data) is segmented at its true median
diameter with the model's input recipe and tuned thresholds, once in float32 and
once under bfloat16 autocast.  Printed: the per-image mean AP at IoU 0.5, 0.75
and 0.9 for each precision, the share of pixels whose label (cell or not)
differs between the two, and the network time.  On a CPU without bfloat16 units
the bfloat16 run is emulated and slow, but the accuracy figures still hold.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np

from _common import machine

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CELLPOSE_NB_DATA", ROOT.parent / "shared" / "data"))
SPLITS = {"cyto_cil": (DATA / "cil_mp6843" / "train", ROOT / "scripts" / "cil_val.txt"),
          "nuclei": (DATA / "dsb2018" / "train", ROOT / "scripts" / "dsb2018_val.txt")}
IOUS = (0.5, 0.75, 0.9)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cyto_cil", choices=sorted(SPLITS))
    ap.add_argument("--limit", type=int, default=None, help="the first N validation images")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    import torch

    from cellpose_nb.data import dataset_index, read_image, read_labels
    from cellpose_nb.metrics import average_precision
    from cellpose_nb.model import load_pretrained
    from cellpose_nb.predict import median_diameter, segment

    if args.threads:
        torch.set_num_threads(args.threads)
    folder, val_list = SPLITS[args.model]
    names = [n.strip() for n in val_list.read_text().split() if n.strip()]
    if args.model == "nuclei":  # its fluorescence images (the 0.90 is on them)
        modality = {r["id"]: r["modality"] for r in dataset_index("dsb2018")}
        names = [n for n in names if modality.get(n) == "fluorescence"]
    names = names[: args.limit]
    model = load_pretrained(args.model)
    print(f"{args.model}: {len(names)} validation images of {val_list.name}; {machine()}")
    results = {}
    for precision in ("float32", "bfloat16"):
        preds, truths, seconds = [], [], 0.0
        for name in names:
            image = read_image(folder / f"{name}_img.tif")
            truth = read_labels(folder / f"{name}_masks.tif")
            t0 = time.perf_counter()
            preds.append(segment(image, model, diameter=median_diameter(truth),
                                 precision=precision).labels)
            seconds += time.perf_counter() - t0
            truths.append(truth)
        results[precision] = preds
        apm = np.nanmean(average_precision(truths, preds, thresholds=IOUS), axis=0)
        print(f"{precision:>8s}: mean AP@0.5/0.75/0.9 {apm[0]:.3f}/{apm[1]:.3f}/{apm[2]:.3f}; "
              f"segment {seconds:.1f} s", flush=True)
    differ = np.mean([np.mean((a > 0) != (b > 0)) for a, b in zip(*results.values())])
    print(f"pixels whose cell/background label differs between the two: {differ:.3%}")


if __name__ == "__main__":
    main()

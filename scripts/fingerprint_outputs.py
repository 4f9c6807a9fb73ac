"""Fingerprint flows, masks and ``segment`` outputs on DSB2018, to show a refactor changed nothing.

For every DSB2018 training image: SHA-256 of ``masks_to_flows(labels)``, of
``compute_masks`` on those true flows (cellprob +5 inside, -5 outside), and of
``segment(image, load_pretrained("nuclei"), diameter=<true median>)``'s labels,
flows and cellprob.  Run it before and after a change and compare the JSON:

    python scripts/fingerprint_outputs.py --out before.json [--limit N]
    python scripts/fingerprint_outputs.py --out after.json && cmp before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from cellpose_nb.data import load_dsb2018
from cellpose_nb.flows import masks_to_flows
from cellpose_nb.masks import compute_masks
from cellpose_nb.model import load_pretrained
from cellpose_nb.predict import segment


def _digest(a) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def _median_diameter(labels) -> float:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4 * areas / np.pi))) if areas.size else 30.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--segment-limit", type=int, default=None,
                   help="segment only the first N images (default all)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_pretrained("nuclei")
    out = {}
    for k, s in enumerate(load_dsb2018(limit=args.limit)):
        flows = masks_to_flows(s.labels)
        prob = np.where(s.labels > 0, 5.0, -5.0).astype(np.float32)
        row = {"flows": _digest(flows), "masks": _digest(compute_masks(flows, prob))}
        if args.segment_limit is None or k < args.segment_limit:
            res = segment(s.image, model, diameter=_median_diameter(s.labels))
            row.update(seg_labels=_digest(res.labels), seg_flows=_digest(res.flows),
                       seg_cellprob=_digest(res.cellprob))
        out[s.name] = row
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True))
    print(f"{len(out)} images -> {args.out}")


if __name__ == "__main__":
    main()

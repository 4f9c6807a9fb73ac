"""Copy a trained model folder into the package as a shipped model (float16 weights).

    python scripts/ship_model.py runs/nuclei/model nuclei [--overwrite]
    python scripts/ship_model.py runs/cyto_s1/model cyto_cil --tuned runs/cyto_s1/report.json

``--tuned REPORT`` replaces the model's thresholds by those a report script
(``scripts/report_cil.py --tune``) chose on the validation fields, keeping the
search it came from under ``"tuning"`` in ``thresholds.json``.

Writes ``cellpose_nb/pretrained/<name>/``: the model as :func:`cellpose_nb.model.load`
reads it (``weights.safetensors`` in float16, ``config.json``, and every file of its
record: ``training.json``, ``thresholds.json``, ``size_model.json``, ``input.json``
when the run has them), plus the run's ``report.json`` (validation AP per modality)
when present.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from cellpose_nb.model import PRETRAINED_DIR, load, save


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, help="a folder written by cellpose_nb.model.save")
    p.add_argument("name", help="name for load_pretrained(name)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--tuned", type=Path, default=None,
                   help="a report JSON with a 'tuning' entry: ship its thresholds")
    args = p.parse_args(argv)
    model = load(args.model_dir, device="cpu")
    if args.tuned is not None:
        tuning = json.loads(args.tuned.read_text())["tuning"]
        thresholds = {"cellprob_threshold": tuning["cellprob_threshold"],
                      "flow_threshold": tuning["flow_threshold"],
                      "tuning": tuning, "trained_run_thresholds": model.record.thresholds}
        model.record = model.record.replace(thresholds=thresholds)
    out = Path(PRETRAINED_DIR) / args.name
    save(model, out, overwrite=args.overwrite, dtype=torch.float16)
    report = args.tuned or args.model_dir.parent / "report.json"
    if report.is_file():
        shutil.copy2(report, out / "report.json")
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"shipped {args.model_dir} as {out} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the validation split of the CIL MP6843 whole-cell set used for the shipped cyto model.

10 fields out of the 89 training fields, stratified by the field prefix
(F01-F04, the plate wells of the original set: 2 or 3 from each), drawn with
seed 0 over the names in sorted order.  The list is committed as
``scripts/cil_val.txt``; ``cellpose-nb train --val-list`` reads it, so the
split does not depend on this script.  The fields held back by the task are
not in the data folder and were never looked at.

    python scripts/cil_split.py [--data DIR] [--out scripts/cil_val.txt]
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

N_VAL = 10
SPLIT_SEED = 0


def per_well_pick(names, n, seed) -> list[str]:
    """``n`` of ``names`` (in sorted order), shared among the wells (the name's prefix
    before ``_``) in proportion to their size, drawn with ``seed``."""
    names = sorted(names)
    groups = sorted({name.split("_")[0] for name in names})
    rng = np.random.default_rng(seed)
    sizes = np.array([sum(name.startswith(g + "_") for name in names) for g in groups])
    quota = np.floor(n * sizes / sizes.sum()).astype(int)
    for k in rng.permutation(len(groups))[: n - quota.sum()]:
        quota[k] += 1
    picked = []
    for g, q in zip(groups, quota):
        members = [name for name in names if name.startswith(g + "_")]
        picked += [members[i] for i in sorted(rng.choice(len(members), size=q, replace=False))]
    return picked


def validation_names(index_csv: Path) -> list[str]:
    with open(index_csv, newline="") as f:
        return per_well_pick([row["name"] for row in csv.DictReader(f)], N_VAL, SPLIT_SEED)


def main(argv=None):
    default_data = Path(os.environ.get("CELLPOSE_NB_DATA", Path(__file__).parents[2] / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=default_data / "cil_mp6843")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("cil_val.txt"))
    args = p.parse_args(argv)
    names = validation_names(args.data / "index.csv")
    args.out.write_text("".join(f"{n}\n" for n in names))
    print(f"{len(names)} validation fields -> {args.out}")


if __name__ == "__main__":
    main()

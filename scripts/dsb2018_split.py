"""Write the validation split of DSB2018 used for the shipped nuclei model.

10 % of every modality (``index.csv``), drawn with seed 0 by
``cellpose_nb.train.split_train_val`` over the image ids in sorted order.
The list is committed as ``scripts/dsb2018_val.txt``; ``cellpose-nb train
--val-list`` reads it, so the split does not depend on this script.

    python scripts/dsb2018_split.py [--out scripts/dsb2018_val.txt]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cellpose_nb.data import dataset_index
from cellpose_nb.train import split_train_val

VAL_FRACTION = 0.1
SPLIT_SEED = 0


def validation_ids():
    rows = sorted(dataset_index("dsb2018"), key=lambda r: r["id"])
    ids = [r["id"] for r in rows]
    _, val_idx = split_train_val(len(ids), val_fraction=VAL_FRACTION, seed=SPLIT_SEED,
                                 strata=[r["modality"] for r in rows])
    return [ids[k] for k in val_idx]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("dsb2018_val.txt"))
    args = p.parse_args(argv)
    ids = validation_ids()
    args.out.write_text("".join(f"{i}\n" for i in ids))
    print(f"{len(ids)} validation ids -> {args.out}")


if __name__ == "__main__":
    main()

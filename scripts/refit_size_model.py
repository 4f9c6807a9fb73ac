"""Refit the size model of a saved model on its own training data (nothing else changes).

    python scripts/refit_size_model.py cellpose_nb/pretrained/nuclei --data dsb2018 --overwrite
    python scripts/refit_size_model.py cellpose_nb/pretrained/cyto_cil --data cil_mp6843 --overwrite

The training images are the dataset's minus the validation list (the same
lists the models were trained with: ``scripts/dsb2018_val.txt``,
``scripts/cil_val.txt``); the ridge penalty is chosen on the validation
images at several zooms, as :func:`cellpose_nb.train.finish_model` does.
The weights, thresholds and input recipe are kept; ``size_model.json`` and
the ``size_model`` / ``size_model_fit`` entries of ``training.json`` are
replaced (the previous fit is kept as ``size_model_fit_before``).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cellpose_nb.atomic import write_files
from cellpose_nb.data import load_cil, load_dsb2018
from cellpose_nb.model import SIZE_MODEL_FILE, TRAINING_FILE, load
from cellpose_nb.normalize import to_network_input
from cellpose_nb.predict import input_knobs
from cellpose_nb.train import select_size_model

HERE = Path(__file__).parent
DATASETS = {"dsb2018": (load_dsb2018, HERE / "dsb2018_val.txt"),
            "cil_mp6843": (load_cil, HERE / "cil_val.txt")}


def _writer(text):
    return lambda tmp: Path(tmp).write_text(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--data", choices=list(DATASETS), required=True)
    p.add_argument("--passes", type=int, default=None, help="crops per image (default: the fit's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace the model's size model")
    args = p.parse_args(argv)
    if not args.overwrite:
        raise SystemExit(f"this replaces the size model of {args.model_dir}: pass --overwrite")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args.model_dir, device="cpu")
    loader, val_list = DATASETS[args.data]
    val_names = set(val_list.read_text().split())
    channels, invert = input_knobs(model)
    split = {"train": ([], []), "val": ([], [])}
    for s in loader():
        x = to_network_input(s.image, channels=channels, invert=invert)
        part = split["val" if s.name in val_names else "train"]
        part[0].append(x)
        part[1].append(s.labels)
    kw = {} if args.passes is None else {"n_passes": args.passes}
    t0 = time.perf_counter()
    size_model, fit = select_size_model(*split["train"], model, val_data=split["val"],
                                        seed=args.seed, progress=True, **kw)
    fit["seconds"] = round(time.perf_counter() - t0, 1)
    fit["command"] = " ".join(["python", *sys.argv])
    training = dict(model.record.training or {})
    if "size_model_fit" in training:
        training["size_model_fit_before"] = training["size_model_fit"]
    training["size_model"], training["size_model_fit"] = size_model.to_dict(), fit
    # only the two record files change (model.save would rewrite the weights too)
    texts = {SIZE_MODEL_FILE: size_model.to_dict(), TRAINING_FILE: training}
    write_files({args.model_dir / name: _writer(json.dumps(value, indent=2))
                 for name, value in texts.items()}, overwrite=True)
    load(args.model_dir)  # the folder still loads, with the new size model
    print(json.dumps(fit, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

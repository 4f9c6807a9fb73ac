"""The fields of the specialist benchmark: which CIL fields train, tune and score every method.

* **validation** (scoring): the 10 fields of ``scripts/cil_val.txt``, the split the
  shipped ``cyto_cil`` model was validated on; no method trains or tunes on them.
* **training**: the other 79 fields of ``$CELLPOSE_NB_DATA/cil_mp6843/train``.
* **tuning**: methods whose own recipe tunes thresholds on held-out data
  (StarDist's ``optimize_thresholds``, Mask R-CNN's score threshold) take
  ``N_TUNE`` of the training fields for that, 2-3 per well, drawn with
  ``TUNE_SEED`` the way ``scripts/cil_split.py`` draws the validation fields,
  and train on the rest.

The held-back test fields of the task are not in the data folder and are never used.
Scoring is the per-image mean of AP = TP / (TP + FP + FN) (Cellpose's convention),
by ``scripts/report_cil.py``'s ``_mean_ap`` on ``cellpose_nb.metrics``.
This module is imported by the benchmark and by the runners in other
interpreters, so it needs only numpy and the numpy layer of ``cellpose_nb``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
VAL_LIST = REPO / "scripts" / "cil_val.txt"
DATA_SUBDIR = Path("cil_mp6843") / "train"
N_TUNE = 10  # training fields held out for the methods that tune on held-out data
TUNE_SEED = 1  # not 0: a different draw from the validation split's
IOUS = tuple(float(t) for t in np.round(np.arange(0.5, 0.951, 0.05), 2))
SELECT_IOUS = (0.5, 0.75, 0.9)  # parameters and thresholds are chosen for the mean AP here


def default_data() -> Path:
    """``$CELLPOSE_NB_DATA/cil_mp6843/train`` (default: ``../shared/data`` beside the repo)."""
    root = Path(os.environ.get("CELLPOSE_NB_DATA", REPO.parent / "shared" / "data"))
    return root / DATA_SUBDIR


def validation_names(val_list: Path = VAL_LIST) -> list[str]:
    return sorted(val_list.read_text().split())


def tuning_names(train_names, *, n=N_TUNE, seed=TUNE_SEED) -> list[str]:
    """``n`` of ``train_names``, shared among the wells (name prefix) in proportion to their size
    (``scripts/cil_split.py``'s ``per_well_pick``, which drew the validation fields)."""
    import importlib.util

    # loaded by path: this module has the same name
    spec = importlib.util.spec_from_file_location("scripts_cil_split", REPO / "scripts" / "cil_split.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.per_well_pick(train_names, n, seed)


def load_split(data: Path | None = None, val_list: Path = VAL_LIST):
    """``(train, val)`` lists of ``cellpose_nb.data.Sample`` (image (520, 696, 2) uint8, labels).

    Raises SystemExit with the path when the data or a validation field is missing.
    """
    from cellpose_nb.data import read_folder

    data = default_data() if data is None else Path(data)
    if not data.is_dir():
        raise SystemExit(f"no CIL fields at {data}: set CELLPOSE_NB_DATA or pass --data")
    val = set(validation_names(val_list))
    samples = read_folder(data)
    found = {s.name for s in samples}
    if not val <= found:
        raise SystemExit(f"validation fields missing from {data}: {sorted(val - found)}")
    train = [s for s in samples if s.name not in val]
    return train, sorted((s for s in samples if s.name in val), key=lambda s: s.name)


def split_for_tuning(train):
    """``(fit, tune)``: the training samples without / with the ``tuning_names`` fields."""
    tune = set(tuning_names([s.name for s in train]))
    return [s for s in train if s.name not in tune], [s for s in train if s.name in tune]


def mean_ap(truths, preds, ious=IOUS) -> list[float]:
    """Per-image mean AP at each IoU (images with no cell either way are skipped)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from report_cil import _mean_ap  # the benchmark scores exactly as report_cil.py does
    except ImportError:  # report_cil imports torch; the numpy layer alone is enough
        from cellpose_nb.metrics import average_precision

        def _mean_ap(t, p, th):
            return np.nanmean(average_precision(t, p, thresholds=th), axis=0)
    finally:
        sys.path.pop(0)
    return [float(a) for a in _mean_ap(list(truths), list(preds), list(ious))]


def selection_score(truths, preds) -> float:
    """Mean of the AP at ``SELECT_IOUS``: what parameter and threshold searches maximise."""
    return float(np.mean(mean_ap(truths, preds, SELECT_IOUS)))


def save_predictions(path: Path, names, labels) -> Path:
    """Write predicted label images, one array per field name, to ``path`` (.npz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **{n: np.asarray(lab, np.int32) for n, lab in zip(names, labels)})
    os.replace(tmp, path)
    return path


def load_predictions(path: Path, names) -> list[np.ndarray]:
    with np.load(path) as f:
        missing = [n for n in names if n not in f.files]
        if missing:
            raise SystemExit(f"{path} has no prediction for {missing}")
        return [f[n] for n in names]

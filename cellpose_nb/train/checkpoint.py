"""The files of a run folder: atomic checkpoints, the history CSV, the versions,
and the check that a checkpoint may be resumed with the current config and data."""

from __future__ import annotations

import csv
import json
import os
import platform

import numpy as np
import torch

from cellpose_nb import __version__
from cellpose_nb.train.config import HISTORY_COLUMNS, TrainConfig

# config fields that may differ between a run and its resumption: how it runs, and
# what happens after the loop (the checkpoint holds neither)
_RUNTIME_FIELDS = frozenset({"device", "num_threads", "max_minutes", "save_every", "amp",
                             "size_passes", "size_crop", "size_l2_grid", "cellprob_grid",
                             "flow_grid"})


def _atomic_torch_save(obj, path):
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, an interrupt: keep the last good checkpoint only
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(f"cannot write the checkpoint {path}: {exc}") from exc
        raise


def _write_history(path, history):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _versions():
    return {"cellpose_nb": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _check_resumable(saved, config, digest):
    current, before = config.to_dict(), saved["config"]
    # a field added to TrainConfig after the checkpoint was written counts as its default
    defaults = TrainConfig().to_dict()
    changed = sorted(k for k in current if k not in _RUNTIME_FIELDS
                     and _jsonable(before.get(k, defaults[k])) != _jsonable(current[k]))
    if changed:
        raise ValueError(f"cannot resume: the config differs from the checkpoint's in "
                         f"{changed} (only {sorted(_RUNTIME_FIELDS)} may change)")
    if saved["data_hash"] != digest:
        raise ValueError("cannot resume: the training data differ from the checkpoint's "
                         f"(data hash {digest[:12]} vs {saved['data_hash'][:12]})")


def _jsonable(value):
    return json.loads(json.dumps(value))

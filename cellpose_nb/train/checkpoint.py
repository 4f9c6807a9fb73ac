"""The files of a run folder: atomic checkpoints, the history CSV, the versions,
reading a checkpoint back, and the check that it may be resumed with the current
config and data."""

from __future__ import annotations

import csv
import json
import numbers
import platform
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from cellpose_nb import __version__
from cellpose_nb.atomic import write_file
from cellpose_nb.model.folder import _reason
from cellpose_nb.train.config import HISTORY_COLUMNS, TrainConfig

# config fields that may differ between a run and its resumption: how it runs, and
# what happens after the loop (the checkpoint holds neither)
_RUNTIME_FIELDS = frozenset({"device", "num_threads", "max_minutes", "save_every", "amp",
                             "size_passes", "size_crop", "size_l2_grid", "cellprob_grid",
                             "flow_grid"})


def _atomic_torch_save(obj, path):
    """A full disk or an interrupt keeps the last good checkpoint, and no temporary."""
    write_file(path, lambda tmp: torch.save(obj, tmp), overwrite=True)


def _write_history(path, history):
    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(history)

    write_file(path, write, overwrite=True)


def _versions():
    return {"cellpose_nb": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


# what train() writes into a checkpoint and reads back on resume: entry -> (type, in words);
# "scaler" (may be empty), "seed" and "torch_rng" are not needed to resume
CHECKPOINT_ENTRIES = {"model": (Mapping, "a state dict"),
                      "optimizer": (Mapping, "an optimizer state dict"),
                      "epoch": (numbers.Integral, "a number of epochs"),
                      "history": (list, "a list of epoch rows"),
                      "config": (Mapping, "a TrainConfig dict"),
                      "data_hash": (str, "a data hash")}
_ADVICE = "start the run again with overwrite=True (--overwrite), or restore a good copy"


def _read_checkpoint(path):
    """The dict in a checkpoint written by train(), loaded with ``weights_only=True``;
    a file that is empty, unreadable or lacks an entry raises a ValueError naming it."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"the checkpoint {path} is empty (0 bytes); {_ADVICE}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, a pickle of other objects, ...
        raise ValueError(f"the checkpoint {path} is unreadable (truncated, corrupt or not "
                         f"written by cellpose_nb's train): {_reason(exc)}; {_ADVICE}") from exc
    if not isinstance(saved, Mapping):
        raise ValueError(f"the checkpoint {path} holds a {type(saved).__name__}, not the dict "
                         f"train() writes; {_ADVICE}")
    for key, (kind, what) in CHECKPOINT_ENTRIES.items():
        if key not in saved:
            raise ValueError(f"the checkpoint {path} has no {key!r} entry ({what}); {_ADVICE}")
        if not isinstance(saved[key], kind) or isinstance(saved[key], bool):
            raise ValueError(f"the checkpoint {path}: {key!r} must be {what}; got "
                             f"{type(saved[key]).__name__}; {_ADVICE}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor)
               for k, v in saved["model"].items()):
        raise ValueError(f"the checkpoint {path}: 'model' is not a state dict of named "
                         f"tensors; {_ADVICE}")
    return saved


def _check_resumable(saved, config, digest, path):
    """Refuse to resume the checkpoint ``saved`` (read from ``path``) with another config,
    other data, or an epoch count that does not fit the config."""
    current, before = config.to_dict(), saved["config"]
    # a field added to TrainConfig after the checkpoint was written counts as its default
    defaults = TrainConfig().to_dict()
    changed = sorted(k for k in current if k not in _RUNTIME_FIELDS
                     and _jsonable(before.get(k, defaults[k])) != _jsonable(current[k]))
    if changed:
        raise ValueError(f"cannot resume from {path}: the config differs from the "
                         f"checkpoint's in {changed} (only {sorted(_RUNTIME_FIELDS)} may change)")
    if saved["data_hash"] != digest:
        raise ValueError(f"cannot resume from {path}: the training data differ from the "
                         f"checkpoint's (data hash {digest[:12]} vs {saved['data_hash'][:12]})")
    if not 0 <= saved["epoch"] <= config.n_epochs:
        raise ValueError(f"the checkpoint {path} is at epoch {saved['epoch']}, outside the "
                         f"run's 0 to {config.n_epochs}; {_ADVICE}")


def _jsonable(value):
    return json.loads(json.dumps(value))

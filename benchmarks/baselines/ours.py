"""Method "ours": a cellpose_nb model folder or shipped model, segmented as a user gets it.

``segment(image, model)`` with the model's input recipe (cytoplasm + nuclei),
its tuned thresholds and the diameter estimated by its size model: the
"estimated diameter" setting of ``scripts/report_cil.py``.  The model is
trained elsewhere (``cellpose-nb train``, see the model card); its budget is
read from its own ``training.json``: the epochs' wall time (``history``), the
size model's fit, the threads it ran on and the command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def load_model(spec: str):
    """A model folder or a shipped name (``load`` / ``load_pretrained``), on the CPU."""
    from cellpose_nb.model import load, load_pretrained

    return load(spec, device="cpu") if Path(spec).exists() else load_pretrained(spec, device="cpu")


def model_folder(spec: str) -> Path:
    from cellpose_nb.model import PRETRAINED_DIR

    return Path(spec) if Path(spec).exists() else Path(PRETRAINED_DIR) / spec


def segment_fields(model, images, *, diameters=None, progress=None):
    """Labels of every field, ``segment(image, model)`` (diameter estimated unless given)."""
    from cellpose_nb.predict import segment

    out, used = [], []
    for k, im in enumerate(images):
        t0 = time.perf_counter()
        res = segment(im, model, diameter=None if diameters is None else diameters[k])
        out.append(res.labels)
        used.append(float(res.diameter))
        if progress is not None:
            progress(f"  field {k + 1}/{len(images)}: {int(res.labels.max())} cells at diameter "
                     f"{res.diameter:.1f} ({time.perf_counter() - t0:.1f} s)")
    return out, used


def _fingerprint(folder: Path) -> dict:
    """Size and modification time of every file of a model folder (to notice a replaced model)."""
    folder = Path(folder)
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
            if p.is_file()} if folder.is_dir() else {}


def training_budget(folder: Path) -> dict:
    """What the model's ``training.json`` says its training cost (wall minutes, threads)."""
    path = Path(folder) / "training.json"
    if not path.is_file():
        return {"wall_minutes": float("nan"), "threads": None,
                "source": f"no {path.name} in {folder}: budget unknown"}
    rec = json.loads(path.read_text())
    epochs_s = sum(float(h.get("seconds", 0.0)) for h in rec.get("history", []))
    size_s = rec.get("size_model_fit", {}).get("seconds")  # not every record has it
    cmd = rec.get("command", [])
    return {
        "wall_minutes": round(epochs_s / 60, 1),
        "threads": rec.get("config", {}).get("num_threads"),
        "epochs": rec.get("epochs_done"),
        "size_model_fit_minutes": None if size_s is None else round(float(size_s) / 60, 1),
        "device": rec.get("device"), "precision": rec.get("precision"),
        "training_command": " ".join(cmd) if isinstance(cmd, list) else str(cmd),
        "size_model_command": rec.get("size_model_fit", {}).get("command"),
        "finished_at": rec.get("finished_at"),
        "source": f"{path} (wall_minutes: the epochs' seconds in its history; the size "
                  "model's fit and the threshold search come on top, see the model card)",
    }


def run_ours(spec, val, *, progress=None) -> dict:
    """Segment the validation fields with model ``spec``; the labels and what to record."""
    import torch

    import cellpose_nb

    folder = model_folder(spec)
    before = _fingerprint(folder)
    budget = training_budget(folder)  # read with the weights, not after the evaluation
    model = load_model(spec)
    t0 = time.perf_counter()
    labels, diameters = segment_fields(model, [s.image for s in val], progress=progress)
    if _fingerprint(folder) != before:
        raise SystemExit(f"{folder} changed while it was being evaluated: run again")
    th = model.record.thresholds or {}
    tuned_on = (th.get("tuning") or {}).get("on")
    return {
        "labels": labels,
        "budget": budget,
        "versions": {"cellpose_nb": cellpose_nb.__version__, "torch": torch.__version__},
        "settings": {"model": str(spec), "diameter": "estimated by the model's size model",
                     "diameters": diameters,
                     "cellprob_threshold": th.get("cellprob_threshold"),
                     "flow_threshold": th.get("flow_threshold"),
                     "eval_seconds": round(time.perf_counter() - t0, 1)},
        "notes": (f"cellpose_nb model {spec}: segment(image, model) with its input recipe, "
                  "tuned thresholds and estimated diameter (report_cil.py's 'estimated "
                  "diameter' setting). Trained separately by cellpose-nb train on the 79 "
                  "training fields; budget from its training.json."
                  + (f" Its thresholds were tuned by report_cil.py --tune ({tuned_on}), on the "
                     "validation fields themselves (model card): slightly optimistic."
                     if tuned_on else "")),
    }

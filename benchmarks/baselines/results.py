"""The benchmark's results file: one JSON for every method, merged run by run; its table and figure.

Layout of ``specialist_cil.json``::

    {"benchmark": ..., "ap": "per-image mean of TP / (TP + FP + FN)", "ious": [...],
     "validation_fields": [...], "commands": ["python benchmarks/specialist_cil.py ...", ...],
     "methods": {"ours": {"iou": [...], "ap": [...], "budget": {...}, "command": "...",
                          "versions": {...}, "notes": "...", ...}, ...}}

:func:`merge_results` replaces only the entries of the methods just run and
keeps the others, so each method can be run (or re-run) on its own.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

REQUIRED = ("iou", "ap", "budget", "command", "versions", "notes")
SHOWN_IOUS = (0.5, 0.75, 0.9)
HEADER = {
    "benchmark": "Cellpose's specialist benchmark on the CIL MP6843 fields (Stringer et al. 2021, "
                 "Fig. 3): every method trained on the same training fields, scored on the same "
                 "validation fields",
    "ap": "per-image mean of AP = TP / (TP + FP + FN), one-to-one matching at each IoU "
          "(Cellpose's convention; StarDist's own reports sum TP/FP/FN over the data set instead)",
}


def read_results(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def check_entry(name, entry):
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"result of method {name!r} lacks {missing}")
    if len(entry["iou"]) != len(entry["ap"]):
        raise ValueError(f"method {name!r}: {len(entry['iou'])} IoUs but {len(entry['ap'])} APs")


def merge_results(path: Path, entries: dict, *, command: str, extra: dict | None = None) -> dict:
    """Write ``entries`` (method name -> result) into the JSON at ``path``, keeping the rest.

    ``command`` is appended to the top-level ``commands`` (once); ``extra``
    updates the top-level fields (e.g. the field lists).  The file is replaced
    atomically.  Returns the merged document.
    """
    for name, entry in entries.items():
        check_entry(name, entry)
    path = Path(path)
    doc = {**HEADER, **read_results(path), **(extra or {})}
    doc.setdefault("commands", [])
    if command not in doc["commands"]:
        doc["commands"].append(command)
    doc.setdefault("methods", {}).update(entries)
    doc["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return doc


def base_versions() -> dict:
    import numpy

    out = {"python": platform.python_version(), "numpy": numpy.__version__,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    try:
        from importlib.metadata import version

        out["cellpose_nb"] = version("cellpose_nb")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        pass
    return out


def format_table(doc: dict, names=None) -> str:
    """A text table: one row per method, AP at every IoU, and its budget in one phrase."""
    methods = doc.get("methods", {})
    names = [n for n in (names or methods) if n in methods]
    if not names:
        return "(no results)"
    ious = methods[names[0]]["iou"]
    head = f"{'method':<12}" + "".join(f"{t:>6.2f}" for t in ious) + "  budget"
    lines = [f"AP = per-image mean TP/(TP+FP+FN) on {len(doc.get('validation_fields', []))} "
             "validation fields, at IoU:", head]
    for n in names:
        e = methods[n]
        b = e["budget"]
        budget = (f"{b.get('wall_minutes', float('nan')):.1f} min, {b.get('threads', '?')} threads"
                  + (" SMOKE" if e.get("smoke") else ""))
        lines.append(f"{n:<12}" + "".join(f"{a:6.3f}" for a in e["ap"]) + "  " + budget)
    return "\n".join(lines)


def plot_results(doc: dict, path: Path) -> Path:
    """The paper's figure: AP against IoU threshold, one curve per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for name, e in doc.get("methods", {}).items():
        b = e["budget"]
        label = f"{name} ({b.get('wall_minutes', float('nan')):.0f} min)"
        if e.get("smoke"):
            label += " smoke run"
        ax.plot(e["iou"], e["ap"], marker="o", ms=3, label=label,
                linestyle="--" if e.get("smoke") else "-")
    ax.set_xlabel("IoU matching threshold")
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1)
    ax.set_xlim(0.5, 0.95)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"CIL MP6843, {len(doc.get('validation_fields', []))} validation fields",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path

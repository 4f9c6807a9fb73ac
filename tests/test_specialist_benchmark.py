"""The specialist benchmark's own parts (benchmarks/specialist_cil.py): no real data, a few seconds.

* the classical pipeline (DAPI seeds + watershed on the cytoplasm) on synthetic
  two-channel cells with nuclei, against a known floor and against plain
  connected components of its own foreground;
* its grid search returns the best setting first;
* the results JSON keeps the other methods' entries when one is merged, and
  the table and the figure are written from it;
* the tuning fields are drawn per well, reproducibly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BASELINES = Path(__file__).resolve().parents[1] / "benchmarks" / "baselines"
if not BASELINES.is_dir():
    pytest.skip("benchmarks/baselines is not in this checkout", allow_module_level=True)
pytest.importorskip("skimage")
if str(BASELINES) not in sys.path:
    sys.path.insert(0, str(BASELINES))

import classical  # noqa: E402
import cil_split  # noqa: E402
import results  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from cellpose_nb.data import make_synthetic  # noqa: E402
from cellpose_nb.metrics import average_precision  # noqa: E402

# measured: AP@0.5 0.82 (seeds 0-3), 0.97 (4-7), 0.85 (8-11) with the default parameters;
# connected components of the same foreground 0.44-0.49
CLASSICAL_AP50_FLOOR = 0.75
MARGIN_OVER_COMPONENTS = 0.2


@pytest.fixture(scope="module")
def touching_cells():
    """Four 256 x 256 two-channel images, half the cells touching a neighbour."""
    return [make_synthetic((256, 256), n_cells=14, diameter=36, touching=0.5, seed=k)
            for k in range(4)]


def _ap(samples, preds, thresholds):
    return np.nanmean(average_precision([s.labels for s in samples], preds,
                                        thresholds=thresholds), axis=0)


def test_classical_pipeline_finds_touching_cells(touching_cells):
    preds = [classical.segment_classical(s.image) for s in touching_cells]
    assert all(p.dtype == np.int32 and p.shape == (256, 256) for p in preds)
    ap50 = _ap(touching_cells, preds, [0.5])[0]
    assert ap50 >= CLASSICAL_AP50_FLOOR
    p = classical.ClassicalParams()
    components = []
    for s in touching_cells:
        nuclei = classical.nuclear_seeds(s.image[..., 1], sigma=p.nuc_sigma,
                                         min_distance=p.nuc_min_distance)
        smooth = classical.cytoplasm_surface(s.image[..., 0], sigma=p.cyto_sigma)
        components.append(ndi.label(classical.foreground(smooth, nuclei, factor=p.cyto_factor))[0])
    # the nuclear seeds are what splits touching cells
    assert ap50 >= _ap(touching_cells, components, [0.5])[0] + MARGIN_OVER_COMPONENTS


def test_classical_pipeline_rejects_one_channel():
    with pytest.raises(ValueError, match="cytoplasm then nuclei"):
        classical.segment_classical(np.zeros((32, 32)))


def test_grid_search_returns_the_best_setting_first(touching_cells):
    grid = {"nuc_sigma": (2.0,), "nuc_min_distance": (7,), "cyto_sigma": (2.0,),
            "cyto_factor": (0.05, 0.5), "surface": ("intensity",), "min_size": (200,)}
    two = touching_cells[:2]
    best, table = classical.grid_search([s.image for s in two], [s.labels for s in two], grid=grid)
    assert len(table) == 2 and table[0]["score"] >= table[1]["score"]
    assert best.cyto_factor == table[0]["cyto_factor"] == 0.5  # 0.05 merges cells with background


def _entry(ap):
    return {"iou": [0.5, 0.75], "ap": [ap, ap / 2], "budget": {"wall_minutes": 1.0, "threads": 2},
            "command": "python benchmarks/specialist_cil.py", "versions": {}, "notes": ""}


def test_merge_keeps_the_other_methods(tmp_path):
    path = tmp_path / "specialist.json"
    results.merge_results(path, {"ours": _entry(0.9), "classical": _entry(0.5)}, command="run 1")
    doc = results.merge_results(path, {"classical": _entry(0.6), "stardist": _entry(0.7)},
                                command="run 2", extra={"validation_fields": ["a", "b"]})
    assert json.loads(path.read_text()) == doc
    assert set(doc["methods"]) == {"ours", "classical", "stardist"}
    assert doc["methods"]["ours"]["ap"] == [0.9, 0.45]  # untouched
    assert doc["methods"]["classical"]["ap"] == [0.6, 0.3]  # replaced
    assert doc["commands"] == ["run 1", "run 2"]
    results.merge_results(path, {"ours": _entry(0.9)}, command="run 1")
    assert results.read_results(path)["commands"] == ["run 1", "run 2"]  # not repeated
    table = results.format_table(doc)
    assert "stardist" in table and "0.700" in table
    png = results.plot_results(doc, tmp_path / "specialist.png")
    assert png.stat().st_size > 1000


def test_merge_refuses_an_incomplete_entry(tmp_path):
    bad = _entry(0.5)
    del bad["budget"]
    with pytest.raises(ValueError, match="budget"):
        results.merge_results(tmp_path / "x.json", {"ours": bad}, command="c")
    assert not (tmp_path / "x.json").exists()


def test_tuning_fields_are_drawn_per_well():
    names = [f"F0{w}_{k}" for w in range(1, 5) for k in range(20)]
    picked = cil_split.tuning_names(names)
    assert picked == cil_split.tuning_names(list(reversed(names)))  # order of the input irrelevant
    assert len(picked) == cil_split.N_TUNE == len(set(picked))
    per_well = [sum(n.startswith(f"F0{w}_") for n in picked) for w in range(1, 5)]
    assert min(per_well) >= 2

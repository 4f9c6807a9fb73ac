"""The shipped models load with their whole record and segment their bundled samples."""

import numpy as np
import pytest

from cellpose_nb.data import load_sample
from cellpose_nb.metrics import average_precision
from cellpose_nb.model import load_pretrained
from cellpose_nb.predict import segment


def test_whole_cell_model_record():
    model = load_pretrained("cyto_cil")
    rec = model.record
    assert model.config.n_channels == 2 and model.config.diam_mean == 30.0
    assert rec.input_recipe["channels"] == [0, 1] and rec.input_recipe["invert"] is False
    assert (rec.thresholds["cellprob_threshold"], rec.thresholds["flow_threshold"]) == (-0.5, 0.4)
    assert rec.size_model is not None and rec.training["completed"] is True
    assert len(rec.training["val_names"]) == 10 and rec.training["n_train"] == 79


def test_whole_cell_model_on_its_bundled_validation_field():
    """``whole_cells`` (CIL F01_120) is in the model's validation split, never trained on."""
    sample = load_sample("whole_cells")
    model = load_pretrained("cyto_cil")
    assert sample.name.removeprefix("cil_") in model.record.training["val_names"]
    res = segment(sample.image, model)  # estimated diameter, shipped thresholds
    ap = average_precision([sample.labels], [res.labels], thresholds=[0.5, 0.75])[0]
    assert 30 < res.diameter < 60  # cells are 42 px at the median in this data
    assert ap[0] > 0.8 and ap[1] > 0.6, ap
    # both channels are there: the only note is the diameter's estimate
    assert len(res.notes) == 1 and res.notes[0].startswith("diameter estimated"), res.notes


def test_whole_cell_model_uses_the_nuclear_channel_and_accepts_one_channel():
    sample = load_sample("whole_cells")
    model = load_pretrained("cyto_cil")
    both = segment(sample.image, model, diameter=42.0)
    cyto_only = segment(sample.image[..., 0], model, diameter=42.0)
    assert len(cyto_only.notes) == 1 and "zeros" in cyto_only.notes[0]
    assert not np.array_equal(both.flows, cyto_only.flows)  # the DAPI channel is read
    ap = average_precision([sample.labels] * 2, [both.labels, cyto_only.labels], thresholds=[0.5])[:, 0]
    assert ap[0] > 0.8 and ap[1] > 0.3, ap


@pytest.mark.parametrize("name", ["nuclei", "cyto_cil"])
def test_every_shipped_model_has_a_model_card(name):
    from cellpose_nb.model import PRETRAINED_DIR

    card = (PRETRAINED_DIR / name / "README.md").read_text()
    assert "## How it was trained" in card and "## Validation" in card

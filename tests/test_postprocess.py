"""One mask post-processing: compute_masks, threshold tuning and the threshold explorer agree.

On the network's real predictions for the two bundled DSB2018 samples, at
several cellprob and flow thresholds, the three callers of
``masks.postprocess_masks`` give identical labels.
"""

import numpy as np
import pytest

from cellpose_nb.data import load_sample
from cellpose_nb.masks import MIN_SIZE, compute_masks
from cellpose_nb.model import load_pretrained
from cellpose_nb.predict import segment
from cellpose_nb.train.thresholds import _masks_over_flow_grid
from cellpose_nb.widgets import ThresholdExplorer

CELLPROB = (-2.0, 0.0, 2.0)
FLOW = (0.0, 0.1, 0.4)
N_ITER = 200


@pytest.fixture(scope="module", params=["fluorescence", "histology"])
def prediction(request):
    sample = load_sample(request.param)
    res = segment(sample.image, load_pretrained("nuclei"))
    return sample.image, res.flows, res.cellprob


def test_the_three_callers_agree_on_real_predictions(prediction):
    image, flows, cellprob = prediction
    explorer = ThresholdExplorer(image, flows, cellprob, n_iter=N_ITER)
    n_masks, areas = [], []
    for t in CELLPROB:
        grid = _masks_over_flow_grid(flows, cellprob, t, FLOW, N_ITER, MIN_SIZE)
        for f, tuned in zip(FLOW, grid):
            ref = compute_masks(flows, cellprob, cellprob_threshold=t, flow_threshold=f,
                                n_iter=N_ITER, min_size=MIN_SIZE)
            np.testing.assert_array_equal(tuned, ref, err_msg=f"tuning, cellprob {t}, flow {f}")
            shown = explorer.compute(cellprob_threshold=t, flow_threshold=f, min_size=MIN_SIZE)
            np.testing.assert_array_equal(shown, ref, err_msg=f"explorer, cellprob {t}, flow {f}")
            n_masks.append(int(ref.max()))
            areas.append(int((ref > 0).sum()))
    # the thresholds change the masks here, so the agreement is not that of one result
    assert max(n_masks) > 10 and len(set(areas)) > 2

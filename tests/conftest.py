"""Shared fixtures: the course data and the reference package.

Tests that need the real data (under ``CELLPOSE_NB_DATA`` or ``../shared/data``)
or the reference ``cellpose`` package skip on a learner's machine without
them, but FAIL when ``CI=true``: CI must run them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(message):
    if IN_CI:
        pytest.fail(f"CI needs this: {message}")
    pytest.skip(message)


@pytest.fixture()
def one_torch_thread():
    """Tiny networks run fastest, and least disturbed by a busy machine, on one thread."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client():
    """A 2-worker dask ``LocalCluster`` of single-threaded processes (the distributed extra)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def cellpose_ref():
    """The reference package ``cellpose`` (3.1.1.2), imported with its noise silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import cellpose.dynamics
            import cellpose.metrics
            import cellpose.utils
        except ImportError as exc:
            _missing(f"reference package cellpose not installed ({exc}); pip install -e '.[reference]'")
    import cellpose

    return cellpose


def _dsb_label_files():
    from cellpose_nb.data import data_root

    try:
        root = data_root()
    except FileNotFoundError as exc:
        _missing(str(exc))
    if root is None or not (root / "dsb2018" / "train").is_dir():
        _missing("DSB2018 data not found (set CELLPOSE_NB_DATA)")
    files = sorted((root / "dsb2018" / "train").glob("*_masks.tif"))
    if not files:
        _missing(f"no *_masks.tif under {root / 'dsb2018' / 'train'}")
    return files


@pytest.fixture(scope="session")
def dsb_labels():
    """A fixed, spread-out subset of the DSB label images (every 10th file), int32."""
    import tifffile

    files = _dsb_label_files()[::10]
    return [tifffile.imread(f).astype(np.int32) for f in files]

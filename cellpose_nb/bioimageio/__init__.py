"""BioImage Model Zoo packages: :func:`export_bioimageio` writes one, :func:`load_bioimageio` reads one.

A package (spec 0.5, one zip) is what bioimage.io, deepImageJ, ilastik and
QuPath read: ``rdf.yaml``, ``pytorch_state_dict`` and ``torchscript`` weights,
test tensors, a cover and a documentation page, with percentile
normalisation as pre-processing and bioimage.io's ``cellpose_flow_dynamics``
step as post-processing.  See ``docs/bioimageio.md``.

``bioimageio.spec`` and ``bioimageio.core`` (the ``bioimageio`` extra) are
imported only when a package is written or read.

Modules: ``export`` (the package), ``load`` (reading one back, safely),
``package_files`` (zip and folder checks), ``contents`` (test data, cover,
documentation), ``_architecture`` (the architecture source shipped in the
package: torch only).
"""

from cellpose_nb.bioimageio._extra import INSTALL_HINT
from cellpose_nb.bioimageio.export import (
    DEFAULT_AUTHORS,
    DEFAULT_LICENSE,
    DEFAULT_NAME,
    FILES,
    FLOWS_ID,
    INPUT_ID,
    KNOWN_DATASETS,
    MASKS_ID,
    export_bioimageio,
)
from cellpose_nb.bioimageio.load import load_bioimageio
from cellpose_nb.bioimageio.package_files import MAX_MEMBERS, MAX_TOTAL_BYTES

__all__ = [
    "DEFAULT_AUTHORS",
    "DEFAULT_LICENSE",
    "DEFAULT_NAME",
    "FILES",
    "FLOWS_ID",
    "INPUT_ID",
    "INSTALL_HINT",
    "KNOWN_DATASETS",
    "MASKS_ID",
    "MAX_MEMBERS",
    "MAX_TOTAL_BYTES",
    "export_bioimageio",
    "load_bioimageio",
]

"""``cellpose-nb export-bioimageio MODEL OUT.zip``: a model as a BioImage Model Zoo package.

MODEL is a shipped model's name, a model folder, or ``cellpose:NAME``, as for
``segment --model``.  The package is written whole or not at all, and an
existing OUT.zip is refused unless ``--overwrite``.  Needs the ``bioimageio``
extra (``pip install 'cellpose-nb[bioimageio]'``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cellpose_nb.cli._common import load_model

EXIT_NO_EXTRA = 1  # the bioimageio extra is missing: the machine's set-up, not the input


def add_parser(sub):
    from cellpose_nb.bioimageio.export import DEFAULT_AUTHORS, DEFAULT_LICENSE

    ex = sub.add_parser("export-bioimageio",
                        help="write a model as a bioimage.io package (deepImageJ, QuPath, ...)")
    ex.add_argument("model", help="a shipped model's name (nuclei, cyto_cil), a model folder, "
                                  "or cellpose:NAME")
    ex.add_argument("out", type=Path, help="the package to write (.zip)")
    ex.add_argument("--name", default=None, help="the package's name (default: MODEL)")
    ex.add_argument("--description", default=None, help="one line on what the model is for")
    ex.add_argument("--authors", nargs="+", default=list(DEFAULT_AUTHORS), metavar="NAME",
                    help="the package's authors, its contacts on bioimage.io (quote each "
                         "name: --authors 'Ada Lovelace' 'Alan Turing')")
    ex.add_argument("--license", default=DEFAULT_LICENSE,
                    help="SPDX licence of the weights (default: %(default)s)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing OUT.zip")
    ex.set_defaults(func=run)


def run(args):
    from cellpose_nb.bioimageio import export_bioimageio

    if args.out.exists() and not args.overwrite:  # before loading anything
        raise FileExistsError(f"{args.out} exists; pass --overwrite to replace it")
    model = load_model(args.model, "cpu")
    name = args.name or Path(args.model).name.replace("cellpose:", "cellpose ")
    try:
        out = export_bioimageio(model, args.out, name=name, description=args.description,
                                authors=args.authors, license=args.license,
                                overwrite=args.overwrite)
    except ImportError as exc:
        print(f"cellpose-nb export-bioimageio: error: {exc}", file=sys.stderr)
        return EXIT_NO_EXTRA
    print(f"wrote {out}; check it with: bioimageio test {out}")
    return 0

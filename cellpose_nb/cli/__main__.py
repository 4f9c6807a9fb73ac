"""``python -m cellpose_nb.cli``: the same as ``cellpose-nb``."""

import sys

from cellpose_nb.cli import main

sys.exit(main())

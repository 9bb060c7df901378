"""``python -m napari_deblurgan.cli ...``: the ``napari-deblurgan`` command, for environments without its script
on the PATH (a notebook's kernel, an IDE's interpreter)."""

import sys

from . import main

sys.exit(main())

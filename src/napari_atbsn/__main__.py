"""``python -m napari_atbsn`` is the ``atbsn`` command line."""

import sys

from .cli import main

sys.exit(main())

"""``python -m maskcontrast.data.download``: see :mod:`maskcontrast.data.download.cli`."""

import sys

from maskcontrast.data.download.cli import main

sys.exit(main())

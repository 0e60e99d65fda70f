"""``python -m saliency.refine``."""

import sys

from saliency.refine.cli import main

sys.exit(main())

"""How a command-line entry point reports bad input: one logged line and exit status 2.

Example::

    if __name__ == "__main__":
        run_main(main, "eval.kmeans")

A traceback is kept for bugs; the errors in :data:`USER_ERRORS` are the user's to fix (a missing
file, a bad key, an existing output folder), and their message already says how.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from maskcontrast.data.record import DataError

__all__ = ["USER_ERRORS", "run_main"]

#: errors an entry point prints as one line and exits 2 on: ``ValueError`` covers ConfigError,
#: CheckpointError and NoSaliencyHeadError, which subclass it
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileExistsError, DataError)


def run_main(main: Callable[[], object], name: str) -> None:
    """Call ``main()``; on one of :data:`USER_ERRORS`, log it on logger ``name`` and exit with 2."""
    try:
        main()
    except USER_ERRORS as err:
        logging.getLogger(name).error("%s", err)
        sys.exit(2)

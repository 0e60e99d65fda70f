"""``python -m eval.linear``: see :mod:`eval.linear.cli`."""

from eval.linear.cli import main
from maskcontrast.cli import run_main

run_main(main, "eval.linear")

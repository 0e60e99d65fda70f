"""``python -m eval.segment``."""

from eval.segment.cli import main
from maskcontrast.cli import run_main

if __name__ == "__main__":
    run_main(main, "eval.segment")

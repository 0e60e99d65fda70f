"""``python -m eval.oneshot``."""

from eval.oneshot.cli import main
from maskcontrast.cli import run_main

if __name__ == "__main__":
    run_main(main, "eval.oneshot")

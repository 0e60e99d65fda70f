"""``python -m eval.kmeans``."""

from eval.kmeans.cli import main
from maskcontrast.cli import run_main

if __name__ == "__main__":
    run_main(main, "eval.kmeans")

"""The bench scripts are plain files in bench/, not a package: put that folder on sys.path once, so
the tests import them as ``import quality`` (the same module bench/gpu_quality.py imports)."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

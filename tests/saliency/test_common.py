"""The worker-pool helper shared by saliency.generate and the refiner's pseudo-labels."""

import math
import os

from saliency.common import BLAS_VARS, pool_map, single_thread_env


def test_pool_map_in_process_and_in_spawned_workers_agree():
    items = [1.0, 4.0, 9.0, 16.0]
    assert list(pool_map(math.sqrt, items, workers=0)) == [1.0, 2.0, 3.0, 4.0]
    assert list(pool_map(math.sqrt, items, workers=2)) == [1.0, 2.0, 3.0, 4.0]  # ordered
    assert sorted(pool_map(math.sqrt, items, workers=2, ordered=False)) == [1.0, 2.0, 3.0, 4.0]
    # every worker runs single-threaded numeric libraries
    assert set(pool_map(os.getenv, list(BLAS_VARS), workers=2)) == {"1"}


def test_single_thread_env_restores_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    with single_thread_env(True):
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ

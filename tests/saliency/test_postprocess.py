"""The paper's rule: threshold 0.5, drop components under 1 %, skip masks under 1 %."""

from __future__ import annotations

import numpy as np
import pytest

from saliency.postprocess import postprocess


def test_small_components_are_dropped():
    s = np.zeros((100, 100), np.float32)
    s[10:30, 10:30] = 0.9  # 4 % of the image: kept
    s[60:69, 60:70] = 0.8  # 0.9 %: dropped
    s[80, 80] = 1.0  # one pixel: dropped
    r = postprocess(s)
    assert r.reason is None and r.mask is not None
    assert r.mask.dtype == np.uint8 and set(np.unique(r.mask)) == {0, 1}
    assert r.mask[10:30, 10:30].all() and r.mask.sum() == 400
    assert r.n_objects == 1 and r.n_dropped == 2
    assert r.coverage == pytest.approx(0.04)


def test_exactly_one_percent_component_is_kept():
    s = np.zeros((100, 100), np.float32)
    s[0:10, 0:10] = 0.7  # exactly 1 %
    r = postprocess(s)
    assert r.mask is not None and r.mask.sum() == 100


def test_tiny_masks_are_skipped():
    s = np.zeros((100, 100), np.float32)
    for k in range(5):  # five 0.5 % blobs: each dropped, nothing left
        s[k * 20 : k * 20 + 5, 0:10] = 0.9
    r = postprocess(s)
    assert r.mask is None and "0.00%" in r.reason and r.n_dropped == 5
    # a single component of 0.99 % is dropped as a component first, hence skipped
    s = np.zeros((100, 100), np.float32)
    s[0:9, 0:11] = 0.9
    assert postprocess(s).mask is None


def test_threshold_is_half_and_eight_connectivity():
    s = np.full((10, 10), 0.49, np.float32)
    assert postprocess(s).mask is None
    s[:] = 0.5
    assert postprocess(s).mask.all()  # >= 0.5 is foreground
    # two blocks touching only at a corner form one 8-connected component
    s = np.zeros((20, 20), np.float32)
    s[0:5, 0:5] = 1
    s[5:10, 5:10] = 1
    r = postprocess(s, multi_object=True)
    assert r.n_objects == 1


def test_multi_object_ids_largest_first():
    s = np.zeros((100, 100), np.float32)
    s[0:10, 0:20] = 0.9  # 200 px
    s[50:80, 50:80] = 0.9  # 900 px
    s[90:95, 0:5] = 0.9  # 25 px, dropped
    r = postprocess(s, multi_object=True)
    assert r.n_objects == 2
    assert (r.mask[50:80, 50:80] == 1).all() and (r.mask[0:10, 0:20] == 2).all()
    assert set(np.unique(r.mask)) == {0, 1, 2}


def test_uint8_input_and_validation():
    s = np.zeros((10, 10), np.uint8)
    s[:5] = 200
    assert postprocess(s).mask.sum() == 50
    with pytest.raises(ValueError, match="H x W"):
        postprocess(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="threshold"):
        postprocess(np.zeros((4, 4)), threshold=2.0)

"""The probe's classifier: the dense CRF, where it is installed."""

import numpy as np
import pytest

from eval.linear import classifier as linear


def test_crf_missing_gives_a_clear_skip(monkeypatch):
    ok, why = linear.crf_available()
    if ok:
        pytest.skip("pydensecrf is installed here")
    assert "pip install pydensecrf2" in why


def test_dense_crf_snaps_noisy_labels_to_image_edges():
    """Runs where ``pip install pydensecrf2`` has built (it ships an sdist only)."""
    pytest.importorskip("pydensecrf.densecrf")
    rng = np.random.default_rng(0)
    h, w = 48, 64
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :] = 220
    truth = np.zeros((h, w), np.int64)
    image.flags.writeable = False  # as the datasets give them
    truth[:, w // 2 :] = 1
    p = np.clip(np.where(truth == 1, 0.65, 0.35) + rng.normal(0, 0.25, (h, w)), 0.01, 0.99)
    probs = np.stack([1 - p, p]).astype(np.float32)
    raw = (probs.argmax(0) == truth).mean()
    out = linear.dense_crf(image, probs, linear.CRFConfig())
    assert out.shape == (h, w)
    assert (out == truth).mean() > max(raw + 0.15, 0.95), (raw, (out == truth).mean())

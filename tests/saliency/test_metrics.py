"""Metrics against hand-computed values (and against PySODMetrics when it is importable)."""

from __future__ import annotations

import numpy as np
import pytest

from saliency.metrics import (
    SaliencyMetrics,
    adaptive_fbeta,
    fbeta,
    fbeta_curve,
    iou_at,
    mean_absolute_error,
    prepare_prediction,
)

F_HALF = 1.3 * 0.5 / (0.3 * 0.5 + 1.0)  # precision 0.5, recall 1


def test_fbeta_formula():
    assert fbeta(1.0, 1.0) == pytest.approx(1.0)
    assert fbeta(0.5, 1.0) == pytest.approx(0.65 / 1.15)
    assert fbeta(0.0, 0.0) == 0.0


def test_single_image_by_hand():
    pred = np.array([[255, 128], [0, 0]], np.uint8)
    gt = np.array([[1, 0], [0, 0]], bool)
    p = prepare_prediction(pred)
    curve = fbeta_curve(p, gt)
    assert curve.shape == (255,)
    # t = 1..128 keeps both non-zero pixels (P = 0.5, R = 1); t = 129..255 keeps only the object.
    np.testing.assert_allclose(curve[:128], F_HALF)
    np.testing.assert_allclose(curve[128:], 1.0)
    # adaptive threshold 2 * mean = 2 * (1 + 128/255) / 4 = 0.751 -> only the object
    assert adaptive_fbeta(p, gt) == pytest.approx(1.0)
    assert mean_absolute_error(p, gt) == pytest.approx((128 / 255) / 4)
    assert iou_at(p, gt) == pytest.approx(0.5)


def test_dataset_max_fbeta_is_the_max_of_the_mean_curve():
    meter = SaliencyMetrics(normalize=False)
    pred = np.array([[51, 204]], np.uint8)  # 0.2, 0.8
    a = meter.update(pred, np.array([[1, 0]], bool))
    b = meter.update(pred, np.array([[0, 1]], bool))
    assert a["fbeta_max"] == pytest.approx(F_HALF) and b["fbeta_max"] == pytest.approx(1.0)
    r = meter.compute()
    # mean curve: F_HALF for t <= 51, (0 + 1) / 2 for 52..204, 0 above -> max F_HALF at t = 1
    assert r["max_fbeta"] == pytest.approx(F_HALF)
    assert r["max_fbeta_threshold"] == pytest.approx(1 / 255)
    assert r["adaptive_fbeta"] == 0.0  # 2 * mean = 1.0 -> nothing reaches it
    assert r["mae"] == pytest.approx((0.8 + 0.2) / 2)
    assert r["iou"] == pytest.approx(0.5)
    assert r["n_images"] == 2


def test_normalization_and_ignore_pixels():
    pred = np.array([[0.4, 0.6, 0.5]])
    gt = np.array([[0, 1, 1]], bool)
    np.testing.assert_allclose(prepare_prediction(pred), [[0.0, 1.0, 0.5]])
    np.testing.assert_allclose(prepare_prediction(pred, normalize=False), pred)
    valid = np.array([[1, 1, 0]], bool)
    p = prepare_prediction(pred)
    assert mean_absolute_error(p, gt, valid) == 0.0
    assert iou_at(p, gt, valid) == 1.0
    assert fbeta_curve(p, gt, valid).max() == pytest.approx(1.0)
    assert mean_absolute_error(p, gt) == pytest.approx(0.5 / 3)


def test_empty_ground_truth_and_empty_prediction():
    z = np.zeros((4, 4))
    gt = np.zeros((4, 4), bool)
    assert fbeta_curve(z, gt).max() == 0.0
    assert iou_at(z, gt) == 1.0
    assert mean_absolute_error(z, gt) == 0.0
    assert adaptive_fbeta(z, gt) == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in size"):
        fbeta_curve(np.zeros((2, 2)), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_prediction(np.array([[2.0]]))
    with pytest.raises(ValueError, match="no images"):
        SaliencyMetrics().compute()


@pytest.mark.filterwarnings("ignore:This class will be removed:UserWarning")  # its Fmeasure, deprecated for V2
def test_agrees_with_pysodmetrics_when_installed():
    sod = pytest.importorskip("py_sod_metrics")
    rng = np.random.default_rng(0)
    ours = SaliencyMetrics()
    fm, mae = sod.Fmeasure(), sod.MAE()
    for _ in range(6):
        gt = np.zeros((40, 50), np.uint8)
        y, x = rng.integers(5, 25), rng.integers(5, 30)
        gt[y : y + 12, x : x + 15] = 255
        pred = np.clip(gt * 0.6 + rng.normal(60, 50, gt.shape), 0, 255).astype(np.uint8)
        ours.update(pred, gt > 127)
        fm.step(pred=pred, gt=gt)
        mae.step(pred=pred, gt=gt)
    theirs_f = fm.get_results()["fm"]
    r = ours.compute()
    assert r["mae"] == pytest.approx(float(mae.get_results()["mae"]), abs=1e-6)
    assert r["adaptive_fbeta"] == pytest.approx(float(theirs_f["adp"]), abs=1e-6)
    # PySODMetrics floors instead of rounding and adds the threshold 0: equal up to quantisation
    assert r["max_fbeta"] == pytest.approx(float(np.max(theirs_f["curve"])), abs=5e-3)

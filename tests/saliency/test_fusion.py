"""Fusion: agreement weights, calibrated soft map, confidence mask, disagreement flag."""

from __future__ import annotations

import numpy as np
import pytest

from saliency.fusion import FusionConfig, agreement_matrix, fuse, fuse_maps, fuse_with
from saliency.metrics import fbeta_curve, prepare_prediction


def _blob(h=60, w=80, cy=30, cx=40, r=14):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(1.0 - np.hypot(yy - cy, xx - cx) / (2 * r), 0, 1).astype(np.float32)


def test_fuse_finds_the_object_with_confident_pixels(scene_factory):
    image, obj = scene_factory(seed=3)
    r = fuse(image, FusionConfig(scales=[60, 120]))
    assert r.saliency.shape == obj.shape and r.confidence.shape == obj.shape
    assert r.saliency.min() >= 0 and r.saliency.max() <= 1
    assert fbeta_curve(prepare_prediction(r.saliency), obj).max() > 0.85
    assert sum(r.weights.values()) == pytest.approx(1.0)
    assert set(r.maps) == {"rbd", "gmr", "mbd", "spectral"}
    assert not r.flagged and r.agreement > 0.3
    conf = r.confidence
    assert conf.mean() > 0.3
    label = r.saliency >= 0.5
    assert (label[conf] == obj[conf]).mean() > 0.97  # confident pseudo-labels are right
    # the calibrated map makes the paper's 0.5 threshold meaningful
    iou = (label & obj).sum() / (label | obj).sum()
    assert iou > 0.6


def test_fuse_with_adds_an_estimator(scene_factory):
    image, obj = scene_factory(seed=4)
    cfg = FusionConfig(scales=[60, 120])
    r = fuse(image, cfg)
    small = obj[::2, ::2].astype(np.float32)  # any size: resized to the working size
    iou = lambda m: ((m >= 0.5) & obj).sum() / ((m >= 0.5) | obj).sum()  # noqa: E731
    right = fuse_with(r, {"network": small}, cfg)
    assert right.shape == obj.shape and right.dtype == np.float32 and 0 <= right.min() <= right.max() <= 1
    # a map that agrees with the methods and the object helps (here IoU 0.94 -> 0.97, MAE halved)
    assert iou(right) > iou(r.saliency) + 0.02
    assert np.abs(right - obj).mean() < 0.75 * np.abs(r.saliency - obj).mean()
    # a map that contradicts every method gets almost no weight: the output stays the fusion
    wrong = fuse_with(r, {"network": 1.0 - small}, cfg)
    assert np.corrcoef(wrong.ravel(), r.saliency.ravel())[0, 1] > 0.95
    with pytest.raises(ValueError, match="names of the fused methods"):
        fuse_with(r, {"mbd": small}, cfg)
    with pytest.raises(ValueError, match="prior"):
        fuse_with(r, {"network": small}, cfg, prior=0.0)


def test_outlier_map_loses_weight():
    good = _blob()
    maps = {"a": good, "b": _blob(cx=42), "c": _blob(cy=28), "d": 1.0 - good}
    fused, conf, weights, _agreement = fuse_maps(maps)
    assert weights["d"] < 0.05 < min(weights["a"], weights["b"], weights["c"])
    assert np.corrcoef(fused.ravel(), good.ravel())[0, 1] > 0.9
    assert conf.dtype == bool


def test_disagreeing_maps_are_flagged():
    rng = np.random.default_rng(0)
    noise = {k: rng.random((60, 80)).astype(np.float32) for k in "abc"}
    _, _, _, agreement = fuse_maps(noise)
    assert agreement < FusionConfig().flag_agreement
    _, _, _, agreement = fuse_maps({"a": _blob(), "b": _blob(cx=41), "c": _blob(cy=31)})
    assert agreement > 0.9


def test_agreement_matrix_and_validation():
    m = agreement_matrix({"a": _blob(), "b": np.zeros((60, 80), np.float32)})
    assert m.shape == (2, 2) and m[0, 1] == 0.0 and m[0, 0] == 1.0
    with pytest.raises(ValueError, match="at least two"):
        fuse_maps({"a": _blob()})
    with pytest.raises(ValueError, match="differ in size"):
        fuse_maps({"a": _blob(), "b": _blob(h=30)})
    with pytest.raises(ValueError, match="unknown methods"):
        fuse(np.zeros((32, 32, 3), np.uint8), FusionConfig(priors={"hs": 1.0, "rbd": 1.0}))

import itertools

import numpy as np
import pytest

from eval.metrics import (
    apply_mapping,
    confusion_matrix,
    hungarian_mapping,
    iou_matrix,
    majority_mapping,
    map_confusion,
    match_clusters,
    segmentation_scores,
)


def test_confusion_matrix_counts_and_ignore():
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    gt = np.array([[0, 1, 255], [1, 2, 0]])
    conf = confusion_matrix(pred, gt, 3, 3)
    expected = np.array([[2, 0, 0], [0, 1, 0], [0, 1, 1]])
    np.testing.assert_array_equal(conf, expected)
    assert conf.dtype == np.int64
    # rectangular: 4 clusters vs 3 classes
    assert confusion_matrix(np.array([3, 0]), np.array([1, 1]), 4, 3)[3, 1] == 1
    # everything ignored
    np.testing.assert_array_equal(confusion_matrix(pred, np.full_like(gt, 255), 3, 3), np.zeros((3, 3)))


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 2, 2)
    with pytest.raises(ValueError, match="predictions must lie"):
        confusion_matrix(np.array([2]), np.array([0]), 2, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        confusion_matrix(np.array([0]), np.array([7]), 2, 2)
    # the value just past the classes is not mistaken for the ignore column, in any label dtype
    for dtype in (np.uint8, np.int32, np.int64):
        with pytest.raises(ValueError, match="labels must lie"):
            confusion_matrix(np.array([0, 1]), np.array([255, 2], dtype=dtype), 2, 2)
    with pytest.raises(ValueError, match="ignore_index"):
        confusion_matrix(np.array([0]), np.array([0]), 2, 2, ignore_index=1)


def test_confusion_matrix_same_counts_for_every_label_dtype():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, (40, 30))
    gt = rng.integers(0, 4, (40, 30))
    gt[rng.random((40, 30)) < 0.2] = 255
    # reference: one boolean pass per (cluster, class) pair, written from the definition
    ref = np.array([[np.sum((pred == i) & (gt == j)) for j in range(4)] for i in range(5)])
    for dtype in (np.uint8, np.int16, np.int64):
        for pdtype in (np.uint8, np.int64):
            np.testing.assert_array_equal(confusion_matrix(pred.astype(pdtype), gt.astype(dtype), 5, 4), ref)


def test_scores_hand_computed():
    # rows = predicted class, cols = ground truth
    conf = np.array([[2, 1], [0, 1]])
    s = segmentation_scores(conf)
    # class 0: tp 2, pred 3, gt 2 -> 2 / 3; class 1: tp 1, pred 1, gt 2 -> 1 / 2
    np.testing.assert_allclose(s.per_class_iou, [2 / 3, 1 / 2])
    assert s.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s.pixel_acc == pytest.approx(3 / 4)


def test_absent_class_is_skipped_in_miou():
    conf = np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = segmentation_scores(conf)
    assert np.isnan(s.per_class_iou[2])
    assert s.miou == pytest.approx(1.0)


def test_hungarian_hand_example():
    # cluster 0 holds class 1, cluster 1 mostly class 0
    conf = np.array([[0, 5], [4, 1]])
    mapping = hungarian_mapping(conf)
    np.testing.assert_array_equal(mapping, [1, 0])
    class_conf = map_confusion(conf, mapping)
    np.testing.assert_array_equal(class_conf[:2], [[4, 1], [0, 5]])
    s = segmentation_scores(class_conf)
    # class 0: tp 4, pred 5, gt 4 -> 4/5; class 1: tp 5, pred 5, gt 6 -> 5/6
    assert s.miou == pytest.approx((4 / 5 + 5 / 6) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_hungarian_is_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 50, size=(4, 4))
    iou = iou_matrix(conf)
    best = max(sum(iou[i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
    mapping = hungarian_mapping(conf)
    assert sum(iou[i, mapping[i]] for i in range(4)) == pytest.approx(best)


def test_relabelled_clusters_give_the_same_miou():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, size=(40, 50))
    pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 5, gt.shape))
    perm = rng.permutation(5)
    scores = []
    for p in (pred, perm[pred]):
        conf = confusion_matrix(p, gt, 5, 5)
        scores.append(segmentation_scores(map_confusion(conf, hungarian_mapping(conf))))
    assert scores[0].miou == pytest.approx(scores[1].miou)
    np.testing.assert_allclose(scores[0].per_class_iou, scores[1].per_class_iou)


def test_more_clusters_than_classes_hungarian_leaves_misses():
    # 3 clusters, 2 classes: the unmatched cluster's pixels are misses of their class
    conf = np.array([[5, 0], [0, 5], [0, 2]])
    mapping = hungarian_mapping(conf)
    np.testing.assert_array_equal(mapping, [0, 1, -1])
    class_conf = map_confusion(conf, mapping)
    assert class_conf.shape == (3, 2)
    s = segmentation_scores(class_conf)
    np.testing.assert_allclose(s.per_class_iou, [1.0, 5 / 7])
    assert s.pixel_acc == pytest.approx(10 / 12)


def test_majority_vote_for_over_clustering():
    conf = np.array([[5, 1], [0, 3], [4, 0], [0, 0]])
    mapping = majority_mapping(conf)
    np.testing.assert_array_equal(mapping, [0, 1, 0, -1])
    np.testing.assert_array_equal(match_clusters(conf, "auto"), mapping)
    s = segmentation_scores(map_confusion(conf, mapping))
    # class 0: tp 9, pred 10, gt 9 -> 0.9; class 1: tp 3, pred 3, gt 4 -> 0.75
    np.testing.assert_allclose(s.per_class_iou, [0.9, 0.75])
    with pytest.raises(ValueError, match="matching"):
        match_clusters(conf, "greedy")


def test_apply_mapping():
    pred = np.array([[0, 1], [2, 2]])
    np.testing.assert_array_equal(apply_mapping(pred, np.array([1, -1, 0])), [[1, 255], [0, 0]])

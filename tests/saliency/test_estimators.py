"""Each estimator finds a known object on synthetic scenes far better than chance."""

from __future__ import annotations

import numpy as np
import pytest

from saliency.common import build_superpixel_graph, normalize_map, otsu_threshold, resize_map, to_lab, working_image
from saliency.gmr import gmr_saliency
from saliency.mbd import fast_mbd, mbd_saliency, reconstruct
from saliency.metrics import fbeta_curve, prepare_prediction
from saliency.rbd import rbd_saliency
from saliency.spectral import spectral_residual_saliency

STRONG = {"rbd": rbd_saliency, "gmr": gmr_saliency, "mbd": mbd_saliency}


def _scores(smap: np.ndarray, obj: np.ndarray) -> tuple[float, float, float]:
    """(max F-beta, F-beta of the all-foreground 'chance' map, mean inside - mean outside)."""
    p = prepare_prediction(smap)
    maxf = float(fbeta_curve(p, obj).max())
    frac = obj.mean()
    chance = 1.3 * frac / (0.3 * frac + 1.0)
    return maxf, chance, float(smap[obj].mean() - smap[~obj].mean())


@pytest.mark.parametrize("name", sorted(STRONG))
@pytest.mark.parametrize("seed,centre", [(0, (0.5, 0.55)), (1, (0.42, 0.4))])
def test_strong_methods_find_the_object(name, seed, centre, scene_factory):
    image, obj = scene_factory(seed=seed, centre=centre)
    smap = STRONG[name](image)
    assert smap.shape == obj.shape and smap.dtype == np.float32
    assert smap.min() >= 0.0 and smap.max() <= 1.0
    maxf, chance, gap = _scores(smap, obj)
    assert maxf > 0.8 and maxf > 3 * chance, (name, maxf, chance)
    assert gap > 0.4, (name, gap)


def test_spectral_residual_is_a_weak_but_real_cue(scene_factory):
    image, obj = scene_factory(seed=1, size=0.45)  # spectral residual favours small objects
    smap = spectral_residual_saliency(image)
    maxf, chance, gap = _scores(smap, obj)
    assert maxf > 5 * chance and gap > 0.3, (maxf, chance, gap)


def test_methods_keep_size_of_large_images(scene_factory):
    image, _ = scene_factory(h=240, w=500)
    for fn in (*STRONG.values(), spectral_residual_saliency):
        assert fn(image).shape == (240, 500)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="RGB"):
        rbd_saliency(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        mbd_saliency(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="too small"):
        gmr_saliency(np.zeros((4, 32, 3), np.uint8))


def test_constant_image_gives_a_finite_map():
    flat = np.full((48, 64, 3), 128, np.uint8)
    for fn in (*STRONG.values(), spectral_residual_saliency):
        m = fn(flat)
        assert np.isfinite(m).all() and m.shape == (48, 64)


def test_superpixel_graph_is_consistent(scene_factory):
    image, _ = scene_factory()
    g = build_superpixel_graph(to_lab(image), 60)
    assert g.labels.min() == 0 and g.labels.max() == g.n - 1
    assert g.sizes.sum() == image.shape[0] * image.shape[1]
    assert (g.edges[:, 0] < g.edges[:, 1]).all()
    adj = g.adjacency()
    assert (adj == adj.T).all() and not adj.diagonal().any()
    assert g.boundary.sum() < g.n  # some superpixels are interior
    assert g.to_pixels(np.arange(g.n, dtype=np.float32)).shape == g.labels.shape


def test_fast_mbd_matches_exact_barrier_on_a_path():
    # A 1-pixel corridor: the barrier from the border is max - min along the path.
    img = np.full((5, 7), 100.0)
    img[2, 1:6] = [10, 50, 20, 80, 30]
    d = fast_mbd(img, n_passes=4)
    assert d[0].max() == 0 and d[:, 0].max() == 0  # seeds
    # pixel (2, 3) reaches the top border via (1, 3), value 100: barrier max(100, 20) - min(100, 20) = 80
    assert d[2, 3] == pytest.approx(80.0)


def test_reconstruction_matches_scikit_image():
    from scipy import ndimage
    from skimage.morphology import reconstruction

    rng = np.random.default_rng(0)
    mask = ndimage.gaussian_filter(rng.random((40, 50)), 2)
    seed = ndimage.grey_erosion(mask, size=(5, 5))
    np.testing.assert_allclose(reconstruct(seed, mask), reconstruction(seed, mask))
    seed = ndimage.grey_dilation(mask, size=(5, 5))
    np.testing.assert_allclose(reconstruct(seed, mask, "erosion"), reconstruction(seed, mask, method="erosion"))


def test_helpers():
    assert normalize_map(np.full((3, 3), 7.0)).max() == 0
    np.testing.assert_allclose(normalize_map(np.array([[1.0, 3.0]])), [[0.0, 1.0]])
    assert working_image(np.zeros((100, 400, 3), np.uint8), 200).shape == (50, 200, 3)
    assert resize_map(np.ones((5, 5), np.float32), (10, 12)).shape == (10, 12)
    values = np.concatenate([np.full(100, 0.2), np.full(100, 0.8)])
    assert 0.2 < otsu_threshold(values) <= 0.8

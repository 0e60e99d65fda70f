"""Synthetic images with a known salient object, shared by the saliency tests."""

from __future__ import annotations

import numpy as np
import pytest


def make_scene(
    h: int = 96, w: int = 128, seed: int = 0, centre: tuple[float, float] = (0.5, 0.55), size: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A cluttered, smoothly varying background with a distinctly coloured ellipse.

    Returns ``(image H x W x 3 uint8, object mask H x W bool)``; the object covers about 12 % (times ``size**2``).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    bg = np.stack(
        [
            90 + 40 * np.sin(xx / 17.0 + seed),
            110 + 30 * np.cos(yy / 13.0),
            70 + 25 * np.sin((xx + yy) / 23.0),
        ],
        axis=-1,
    )
    cy, cx = centre[0] * h, centre[1] * w
    obj = ((yy - cy) / (0.22 * size * h)) ** 2 + ((xx - cx) / (0.17 * size * w)) ** 2 <= 1.0
    colour = np.array([220.0, 40.0, 50.0]) + rng.normal(0, 5, 3)
    img = np.where(obj[..., None], colour, bg) + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), obj


@pytest.fixture
def scene_factory():
    """The :func:`make_scene` function (test modules cannot import conftest under importlib mode)."""
    return make_scene

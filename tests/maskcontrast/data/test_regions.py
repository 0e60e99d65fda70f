"""Region masks without saliency (DetCon's cheap masks): grid, Felzenszwalb, the disk cache, and the
view pipeline carrying the same region ids in both views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskcontrast.config import AugmentConfig
from maskcontrast.data import DataError, build_dataset
from maskcontrast.data.regions import RegionMaker, felzenszwalb_regions, grid_regions
from maskcontrast.data.views import EpochBatchSampler, PairedViewDataset, ViewSampler


def test_grid_regions_cover_the_image_row_by_row():
    g = grid_regions(6, 8, 2)
    assert g.dtype == np.uint8 and g[0, 0] == 1 and g[0, 7] == 2 and g[5, 0] == 3 and g[5, 7] == 4
    assert np.bincount(g.ravel()).tolist() == [0, 12, 12, 12, 12]
    with pytest.raises(ValueError, match="grid_cells"):
        grid_regions(4, 4, 16)


def test_felzenszwalb_ids_are_consecutive_and_capped():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    ids = felzenszwalb_regions(image, scale=10, min_size=5, max_regions=6)
    assert ids.shape == (40, 50) and ids.min() == 1 and ids.max() <= 6
    assert sorted(np.unique(ids).tolist()) == list(range(1, ids.max() + 1))
    two = np.zeros((20, 20, 3), np.uint8)
    two[:, 10:] = 255
    ids2 = felzenszwalb_regions(two, scale=100, min_size=5)
    left, right = np.bincount(ids2[:, :8].ravel()).argmax(), np.bincount(ids2[:, 12:].ravel()).argmax()
    assert left != right  # the two halves are different regions


def test_region_maker_caches_on_disk_and_refuses_an_empty_image(tmp_path):
    maker = RegionMaker("felzenszwalb", min_size=5, cache_dir=str(tmp_path))
    image = np.random.default_rng(1).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    first = maker(image, key="a/1")
    files = list(maker.folder.glob("*.png"))
    assert len(files) == 1
    Image.fromarray(np.full((24, 24), 9, np.uint8)).save(files[0])  # a cached file is read, not recomputed
    assert (maker(image, key="a/1") == 9).all() and first.max() >= 1
    with pytest.raises(DataError, match="no region"):
        maker(np.zeros((0, 5, 3), np.uint8), key="empty")
    with pytest.raises(ValueError, match="mask_source"):
        RegionMaker("slic")


@pytest.mark.parametrize("method", ["grid", "felzenszwalb"])
def test_both_views_carry_the_same_region_ids(method, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "im").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "im" / f"{i}.png")
    ds = PairedViewDataset(
        [build_dataset("image_folder", str(tmp_path / "im"))],
        image_size=32,
        need_mask=True,
        augment=AugmentConfig(min_mask_area=0.0, max_mask_area=1.0),
        regions=RegionMaker(method, grid_cells=3, min_size=5, cache_dir=None),
    )
    item = ds[0]
    valid = item["mask"][:32, :32]
    assert int(valid.min()) >= 1 and item["index"].item() == 0  # the whole image is covered by regions
    batch = torch.utils.data.default_collate([ds[i] for i in next(iter(EpochBatchSampler(4, 4)))])
    views = ViewSampler(AugmentConfig(color_jitter_p=0, grayscale_p=0), 32)(batch)
    for b in range(4):  # crops of one mask: every id in a view comes from that image's regions
        ids = set(torch.unique(batch["mask"][b]).tolist()) - {0}
        assert set(torch.unique(views.query_mask[b]).tolist()) <= ids
        assert set(torch.unique(views.key_mask[b]).tolist()) <= ids
    assert views.index.tolist() == batch["index"].tolist()

"""The data pipeline of a training config: the readers of ``data.sources``, the region maker, the
paired views, and the batch sampler that runs across epochs.

Example::

    dataset = build_view_dataset(cfg, need_mask=True)        # cfg: a resolved PretrainConfig
    sampler = RunningBatchSampler(EpochBatchSampler(len(dataset), 8, seed=0))
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

from maskcontrast.config_checks import ConfigError
from maskcontrast.data import DataError, SegmentationDataset, build_dataset
from maskcontrast.data.regions import RegionMaker
from maskcontrast.data.views import EpochBatchSampler, PairedViewDataset

__all__ = ["build_sources", "region_maker", "build_view_dataset", "RunningBatchSampler"]


def build_sources(data_cfg: Any, need_mask: bool) -> list[SegmentationDataset]:
    """One reader per ``data.sources`` entry (``masks`` falls back to ``data.masks`` when masks are needed).

    Raises:
        ConfigError: no sources, or a source that cannot be opened (the message names it).
    """
    if not data_cfg.sources:
        raise ConfigError("data.sources is empty; list at least one dataset (name, root[, split, masks])")
    out = []
    for i, src in enumerate(data_cfg.sources):
        masks = (src.masks or data_cfg.masks) if need_mask else None
        try:
            ds = build_dataset(src.name, src.root, src.split, masks=masks, ids=src.ids)
            if src.limit and src.limit < len(ds.ids):
                step = len(ds.ids) / src.limit
                ds.ids = [ds.ids[int(i * step)] for i in range(src.limit)]
            out.append(ds)
        except (DataError, ValueError, OSError) as err:
            raise ConfigError(f"data.sources[{i}] ({src.name} at {src.root}): {err}") from err
    return out


def region_maker(data_cfg: Any) -> RegionMaker | None:
    """The :class:`RegionMaker` of ``data.mask_source`` (None for ``masks``: mask files are read)."""
    source = str(data_cfg.get("mask_source", "masks"))
    if source == "masks":
        return None
    r = data_cfg.regions
    return RegionMaker(
        source,
        grid_cells=r.grid_cells,
        scale=r.scale,
        sigma=r.sigma,
        min_size=r.min_size,
        max_regions=r.max_regions,
        cache_dir=r.cache_dir,
    )


def build_view_dataset(cfg: Any, need_mask: bool) -> PairedViewDataset:
    """The :class:`PairedViewDataset` of a training config (``data``, ``augment``, ``trainer.seed``)."""
    regions = region_maker(cfg.data) if need_mask else None
    return PairedViewDataset(
        build_sources(cfg.data, need_mask and regions is None),
        image_size=cfg.data.image_size,
        need_mask=need_mask,
        augment=cfg.augment,
        load_size=cfg.data.load_size,
        min_mask_fraction=cfg.data.min_mask_fraction,
        seed=cfg.trainer.seed,
        cache_images=cfg.data.cache_images,
        regions=regions,
    )


class RunningBatchSampler(Sampler[list[tuple[int, int]]]):
    """The batches of an :class:`EpochBatchSampler`, epoch after epoch without end, from the batch
    :meth:`start_at` names. One loader iterator then serves the whole run, so its workers prefetch
    the first batches of the next epoch while the current one ends (a new iterator per epoch waits
    for its workers to start over at every epoch boundary)."""

    def __init__(self, epochs: EpochBatchSampler) -> None:
        self.epochs = epochs
        self.start = (0, 0)

    def start_at(self, epoch: int, batch: int) -> None:
        self.start = (epoch, batch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = self.start
        while True:
            self.epochs.set_epoch(epoch, batch)
            yield from iter(self.epochs)
            epoch, batch = epoch + 1, 0

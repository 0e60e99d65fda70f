"""Pseudo-labels: the fused classical map and its confidence of every image, computed in a worker pool and cached."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from maskcontrast.config_loading import config_to_dict
from maskcontrast.data import DataError, build_dataset
from maskcontrast.data.base import SegmentationDataset
from maskcontrast.models import read_checkpoint
from maskcontrast.run_state import save_state
from saliency.common import pool_map, resize_map
from saliency.fusion import FusionConfig, fuse
from saliency.refine.config import RefineConfig

log = logging.getLogger("saliency.refine")

#: per-process state of the pool workers (set by _init_pseudo)
_SOURCES: list[SegmentationDataset] = []
_FUSION: list[FusionConfig] = []


def _init_pseudo(sources: list[tuple[str, str]], fusion: dict[str, Any]) -> None:
    _SOURCES.clear()
    _SOURCES.extend(build_dataset(name, root) for name, root in sources)
    _FUSION[:] = [FusionConfig(**fusion)]


def _pseudo_one(item: tuple[int, str, int]) -> tuple[int, str, Any]:
    src, sid, size = item
    ds = _SOURCES[src]
    try:
        image = ds.read_sample_image(ds.files(sid), sid)
    except DataError as err:
        return src, sid, str(err)
    result = fuse(image, _FUSION[0])
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
    target = np.rint(resize_map(result.saliency, (size, size)) * 255).astype(np.uint8)
    conf = np.asarray(Image.fromarray(result.confidence).resize((size, size), Image.NEAREST))
    return src, sid, (small, target, conf)


def pseudo_labels(sources: list[tuple[str, str]], cfg: RefineConfig, cache: Path) -> dict[str, Any]:
    size = cfg.input_size
    fusion = config_to_dict(cfg.fusion)
    key = {"sources": [list(s) for s in sources], "input_size": size, "fusion": fusion, "max_images": cfg.max_images}
    if cache.is_file():
        data = read_checkpoint(cache)
        if data.get("key") == json.dumps(key, sort_keys=True):
            log.info("using cached pseudo-labels %s (%d images)", cache, len(data["ids"]))
            return data
        log.warning("%s was made with other settings; recomputing", cache)
    items = []
    for src, (name, root) in enumerate(sources):
        ds = build_dataset(name, root)
        items.extend((src, sid, size) for sid in ds.ids)
    if cfg.max_images and len(items) > cfg.max_images:
        rng = np.random.default_rng(cfg.seed)
        items = [items[i] for i in sorted(rng.choice(len(items), cfg.max_images, replace=False))]
    images, targets, confs, ids = [], [], [], []
    bar = tqdm(total=len(items), desc="pseudo-labels (fusion)", unit="img")

    def take(res: tuple[int, str, Any]) -> None:
        src, sid, data = res
        bar.update()
        if isinstance(data, str):
            log.warning("skipping unreadable image %s: %s", sid, data)
            return
        ids.append(f"{src}:{sid}")
        images.append(data[0])
        targets.append(data[1])
        confs.append(data[2])

    for res in pool_map(
        _pseudo_one, items, workers=cfg.workers, initializer=_init_pseudo, initargs=(sources, fusion), chunksize=2
    ):
        take(res)
    bar.close()
    if not ids:
        raise DataError("no readable images in the given sources")
    data = {
        "key": json.dumps(key, sort_keys=True),
        "ids": ids,
        "images": torch.from_numpy(np.stack(images)),
        "targets": torch.from_numpy(np.stack(targets)),
        "confidence": torch.from_numpy(np.stack(confs).astype(bool)),
    }
    save_state(cache, data)
    return data

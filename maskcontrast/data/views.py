"""Two augmented views per image, for MaskContrast (with object masks) and MoCo (without).

The work is split where it is cheapest:

* **CPU, per image** (:class:`PairedViewDataset`, in DataLoader workers): read the image and its
  object mask, resize them once (longer side ``load_size``, padded to a square so images batch),
  and draw each view's crop box. For MaskContrast a box is redrawn until the mask covers
  ``min_mask_area``..``max_mask_area`` of it (checked in O(1) with a summed-area table, so no
  pixels are cropped to test a box); after ``view_attempts`` failures another image is drawn.
  Images without a usable mask are skipped the same way. Both are counted in every item.
* **Training device, batched** (:class:`ViewSampler`): crop + resize + flip of image and mask
  with one affine sampling grid (bilinear for the image, nearest for the mask), then kornia's
  ColorJitter, RandomGrayscale, RandomGaussianBlur and ImageNet normalisation on both views at once.

Randomness: the CPU part draws from a generator seeded by ``(seed, epoch, index)``, so a batch
is the same whatever the number of workers and after a resume; the device part uses torch's
global generator, which the trainer reseeds every step.

Example::

    ds = PairedViewDataset([build_dataset("pet", root)], image_size=128, need_mask=True)
    loader = DataLoader(ds, batch_sampler=EpochBatchSampler(len(ds), 8, seed=0), num_workers=2)
    sampler = ViewSampler(AugmentConfig(), image_size=128)
    for batch in loader:
        views = sampler(batch)    # Views(query B x 3 x 128 x 128, key ..., query_mask B x 128 x 128, ...)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, Sampler

from maskcontrast.config import AugmentConfig
from maskcontrast.data.base import SegmentationDataset
from maskcontrast.data.record import DataError
from maskcontrast.data.regions import RegionMaker

__all__ = [
    "Views",
    "sample_crop_box",
    "mask_coverage",
    "PairedViewDataset",
    "EpochBatchSampler",
    "ViewSampler",
    "crop_grid",
]

log = logging.getLogger(__name__)

#: how many images in a row may be unusable before the dataset gives up with an error
MAX_REPLACEMENTS = 200


@dataclass
class Views:
    """A batch of paired views on the training device.

    Attributes:
        query: ``B x 3 x S x S`` normalised float images (first view).
        key: ``B x 3 x S x S`` (second view).
        query_mask: ``B x S x S`` long object ids of the query view, or None (MoCo).
        key_mask: ``B x S x S`` long object ids of the key view, or None.
        index: ``B`` long dataset entries the views come from (:class:`PairedViewDataset`), or None.
    """

    query: torch.Tensor
    key: torch.Tensor
    query_mask: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.query.shape[0])


# ----------------------------------------------------------------------------------------------
# Crop boxes (CPU)
# ----------------------------------------------------------------------------------------------


def sample_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    tries: int = 10,
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(x0, y0, w, h)`` in pixels inside a ``height x width`` image.

    The area is drawn uniformly in ``scale`` times the image area and the aspect ratio
    log-uniformly in ``ratio``; a box that does not fit is redrawn (``tries`` times), then the
    largest centred box with a ratio inside ``ratio`` is used.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * r))
        h = round(math.sqrt(target / r))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return x0, y0, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, max(w, 1), max(h, 1)


def mask_coverage(integral: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of foreground pixels in ``box = (x0, y0, w, h)``.

    Args:
        integral: ``(H + 1) x (W + 1)`` summed-area table of the binary foreground
            (``integral[y, x]`` = foreground pixels above and left of ``(y, x)``).
    """
    x0, y0, w, h = box
    s = integral[y0 + h, x0 + w] - integral[y0, x0 + w] - integral[y0 + h, x0] + integral[y0, x0]
    return float(s) / float(w * h)


def _integral(mask: np.ndarray) -> np.ndarray:
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask > 0, axis=0, dtype=np.int64), axis=1, out=ii[1:, 1:])
    return ii


# ----------------------------------------------------------------------------------------------
# CPU-side dataset
# ----------------------------------------------------------------------------------------------


class PairedViewDataset(Dataset):
    """Fixed-size images (and masks) plus two crop boxes per item, ready to batch.

    Indexing takes ``(epoch, index)`` (what :class:`EpochBatchSampler` yields) or a plain index
    (epoch 0). An item is a dict of tensors:

    * ``image``: ``L x L x 3`` uint8, the image resized so its longer side is ``L = load_size``
      (aspect kept), zero-padded at the bottom/right;
    * ``mask``: ``L x L`` uint8 object ids (``0 x 0`` when ``need_mask`` is False);
    * ``boxes``: ``views x 5`` float ``(x0, y0, w, h, flip)`` inside the valid image area;
    * ``skipped``: images passed over for this item (no usable mask, or no valid view);
    * ``redraws``: crop boxes redrawn for the mask-area constraint;
    * ``index``: the entry the item was made from (another one than asked when that was skipped).

    Args:
        datasets: readers from ``maskcontrast.data``; their images are concatenated.
        image_size: side of a view (only used for the default ``load_size``).
        need_mask: MaskContrast (True) needs an object mask per image; MoCo (False) does not.
        augment: crop scale/ratio, mask-area bounds, redraws and flip probability.
        load_size: longer side kept in memory; 0 = ``round(1.5 * image_size)``.
        min_mask_fraction: an image whose mask covers less of it is skipped.
        seed: base seed of the per-item generators.
        cache_images: keep resized images in memory after their first load.
        regions: make each image's mask from the image itself (Felzenszwalb or a grid,
            :class:`~maskcontrast.data.regions.RegionMaker`) instead of reading mask files.
    """

    def __init__(
        self,
        datasets: Sequence[SegmentationDataset],
        image_size: int = 224,
        need_mask: bool = True,
        augment: AugmentConfig | None = None,
        load_size: int = 0,
        min_mask_fraction: float = 0.01,
        seed: int = 0,
        cache_images: bool = False,
        views: int = 2,
        regions: RegionMaker | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("PairedViewDataset needs at least one dataset (data.sources is empty)")
        if image_size <= 0:
            raise ValueError(f"image_size must be > 0, got {image_size}")
        self.augment = augment if augment is not None else AugmentConfig()
        a = self.augment
        if not (0 < a.crop_scale[0] <= a.crop_scale[1] <= 1.0):
            raise ValueError(f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {list(a.crop_scale)}")
        if not (0 < a.crop_ratio[0] <= a.crop_ratio[1]):
            raise ValueError(f"augment.crop_ratio must satisfy 0 < lo <= hi, got {list(a.crop_ratio)}")
        if not (0.0 <= a.min_mask_area < a.max_mask_area <= 1.0):
            raise ValueError(
                f"augment.min_mask_area/max_mask_area must satisfy 0 <= min < max <= 1, "
                f"got {a.min_mask_area}, {a.max_mask_area}"
            )
        if a.view_attempts < 1:
            raise ValueError(f"augment.view_attempts must be >= 1, got {a.view_attempts}")
        self.datasets = list(datasets)
        self.image_size = image_size
        self.load_size = load_size if load_size > 0 else round(1.5 * image_size)
        self.need_mask = need_mask
        self.min_mask_fraction = min_mask_fraction
        self.seed = seed
        self.views = views
        self.cache_images = cache_images
        self.regions = regions if need_mask else None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None, int, int]] = {}
        self._bad: set[int] = set()
        self.entries: list[tuple[int, str]] = []
        for di, ds in enumerate(self.datasets):
            ids = list(ds.ids)
            if self.regions is not None:  # masks are made from the images: no mask files needed
                pass
            elif need_mask and ds.mask_dir is not None:
                have = [i for i in ids if (ds.mask_dir / f"{i}.png").is_file()]
                if not have:
                    raise DataError(
                        f"{ds!r}: none of its {len(ids)} images has a mask file in {ds.mask_dir} "
                        "(expected <masks>/<id>.png); run `python -m saliency.generate` or fix the masks path",
                        path=str(ds.mask_dir),
                    )
                if len(have) < len(ids):
                    log.info(
                        "%s: %d of %d images have no mask file in %s and are left out",
                        type(ds).__name__,
                        len(ids) - len(have),
                        len(ids),
                        ds.mask_dir,
                    )
                ids = have
            elif need_mask and ds.load(ids[0]).mask is None:
                raise DataError(
                    f"{ds!r} has no object masks of its own (image '{ids[0]}' has none); "
                    "give it a masks folder (data.masks=DIR or masks: DIR in its data source), "
                    "e.g. the output of `python -m saliency.generate`",
                    path=str(ds.root),
                )
            self.entries.extend((di, i) for i in ids)

    def __len__(self) -> int:
        return len(self.entries)

    # -- loading -----------------------------------------------------------------------------
    def _resize(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        h, w = image.shape[:2]
        s = self.load_size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        L = self.load_size
        img = np.zeros((L, L, 3), dtype=np.uint8)
        img[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        out_mask = None
        if mask is not None:
            out_mask = np.zeros((L, L), dtype=np.uint8)
            out_mask[:nh, :nw] = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
        return img, out_mask, nh, nw

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None, int, int] | None:
        """The resized image/mask of entry ``index``, or None when its mask is unusable."""
        if index in self._cache:
            return self._cache[index]
        di, sid = self.entries[index]
        sample = self.datasets[di].load(sid)
        mask = sample.mask
        if self.regions is not None:
            img, _, nh, nw = self._resize(sample.image, None)
            regions = np.zeros(img.shape[:2], dtype=np.uint8)
            regions[:nh, :nw] = self.regions(img[:nh, :nw], key=f"{self.datasets[di].root}/{sid}")
            item = (img, regions, nh, nw)
            if self.cache_images:
                self._cache[index] = item
            return item
        if self.need_mask:
            if mask is None or float((mask > 0).mean()) < self.min_mask_fraction:
                return None
        else:
            mask = None
        item = self._resize(sample.image, mask)
        if self.cache_images:
            self._cache[index] = item
        return item

    def load_resized(self, index: int) -> tuple[np.ndarray, np.ndarray | None, int, int]:
        """Entry ``index`` as kept in memory: ``(L x L x 3 image, L x L mask or None, h, w)``, the image
        in its top-left ``h x w``.

        Raises:
            DataError: the entry has no usable mask (only when masks are needed).
        """
        item = self._load(index)
        if item is None:
            di, sid = self.entries[index]
            raise DataError(f"{self.datasets[di]!r}: image '{sid}' has no usable mask")
        return item

    def _draw_boxes(
        self, rng: np.random.Generator, h: int, w: int, mask: np.ndarray | None
    ) -> tuple[list[tuple[int, int, int, int]], int] | None:
        """One box per view; None when a view fails the mask-area constraint ``view_attempts`` times."""
        a = self.augment
        # region masks cover the whole image: the object-area constraint does not apply to them
        integral = _integral(mask[:h, :w]) if mask is not None and self.regions is None else None
        boxes, redraws = [], 0
        for _ in range(self.views):
            for attempt in range(a.view_attempts):
                box = sample_crop_box(rng, h, w, a.crop_scale, a.crop_ratio)
                if integral is None:
                    break
                cov = mask_coverage(integral, box)
                if a.min_mask_area <= cov <= a.max_mask_area:
                    break
                if attempt + 1 < a.view_attempts:
                    redraws += 1
            else:
                return None
            boxes.append(box)
        return boxes, redraws

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = np.random.default_rng([self.seed, epoch, index])
        redraws = 0
        for skipped in range(MAX_REPLACEMENTS):  # images passed over so far for this item
            item = None if index in self._bad else self._load(index)
            drawn = None
            if item is None:
                self._bad.add(index)
            else:
                img, mask, h, w = item
                drawn = self._draw_boxes(rng, h, w, mask)
            if drawn is not None:
                boxes, r = drawn
                redraws += r
                flips = rng.random(self.views) < self.augment.flip_p
                box_arr = torch.tensor([[*b, float(f)] for b, f in zip(boxes, flips)], dtype=torch.float32)
                return {
                    "image": torch.from_numpy(img),
                    "mask": torch.from_numpy(mask) if mask is not None else torch.zeros(0, 0, dtype=torch.uint8),
                    "boxes": box_arr,
                    "skipped": torch.tensor(skipped),
                    "redraws": torch.tensor(redraws),
                    "index": torch.tensor(index),
                }
            index = int(rng.integers(0, len(self)))
        raise DataError(
            f"{MAX_REPLACEMENTS} images in a row had no usable object mask (missing, covering less than "
            f"{self.min_mask_fraction:.0%} of the image, or no crop with {self.augment.min_mask_area:.0%}.."
            f"{self.augment.max_mask_area:.0%} mask); check the masks of {self.datasets}"
        )


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(epoch, index)`` for one process: a seeded permutation per epoch, cut into
    global batches of ``batch_size * world_size``; rank ``r`` takes its slice of each. The last
    incomplete global batch is dropped, so every rank gets the same number of equal batches.

    ``set_epoch(e, start_batch=k)`` makes the next iteration yield epoch ``e`` from its batch ``k``
    (mid-epoch resume).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size per process must be > 0, got {batch_size}")
        if n < batch_size * world_size:
            raise ValueError(
                f"{n} images are fewer than one global batch ({batch_size} x {world_size} processes); "
                "lower optim.batch_size or add data"
            )
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world) - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        gb = self.batch_size * self.world
        for b in range(self.start_batch, self.n // gb):
            start = b * gb + self.rank * self.batch_size
            yield [(self.epoch, i) for i in perm[start : start + self.batch_size]]


# ----------------------------------------------------------------------------------------------
# Device-side augmentation
# ----------------------------------------------------------------------------------------------


def crop_grid(boxes: torch.Tensor, load_size: int, out_size: int) -> torch.Tensor:
    """An ``F.grid_sample`` grid that crops box ``(x0, y0, w, h, flip)`` of an ``L x L`` image and
    resizes it to ``S x S`` (mirrored when ``flip`` is 1).

    Args:
        boxes: ``B x 5`` float, pixels of the ``L x L`` image.

    Returns:
        ``B x S x S x 2`` grid for ``align_corners=False``.
    """
    x0, y0, w, h, flip = boxes.unbind(1)
    sign = 1.0 - 2.0 * flip
    theta = torch.zeros(len(boxes), 2, 3, dtype=boxes.dtype, device=boxes.device)
    theta[:, 0, 0] = sign * w / load_size
    theta[:, 0, 2] = (2 * x0 + w) / load_size - 1
    theta[:, 1, 1] = h / load_size
    theta[:, 1, 2] = (2 * y0 + h) / load_size - 1
    return F.affine_grid(theta, [len(boxes), 1, out_size, out_size], align_corners=False)


class ViewSampler(nn.Module):
    """Turns a loader batch into :class:`Views` on the training device, batched.

    Crop/resize/flip come from the boxes drawn on the CPU (one grid per view, shared by image and
    mask); then ColorJitter (p), RandomGrayscale (p), RandomGaussianBlur (p, kernel about 10% of
    the view) and ImageNet normalisation run with kornia on both views at once.

    Args:
        augment: the probabilities and ranges.
        image_size: side of a view.
    """

    def __init__(self, augment: AugmentConfig | None = None, image_size: int = 224) -> None:
        super().__init__()
        a = augment if augment is not None else AugmentConfig()
        self.image_size = image_size
        ops: list[nn.Module] = []
        if a.color_jitter_p > 0 and any(v > 0 for v in a.color_jitter):
            b, c, s, h = a.color_jitter
            ops.append(K.ColorJitter(b, c, s, h, p=a.color_jitter_p))
        if a.grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=a.grayscale_p))
        if a.blur_p > 0:
            k = max(3, int(0.1 * image_size) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((k, k), tuple(a.blur_sigma), p=a.blur_p))
        self.color = nn.Sequential(*ops)
        self.register_buffer("mean", torch.tensor(a.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(a.std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, batch: dict[str, torch.Tensor]) -> Views:
        device = self.mean.device
        image = batch["image"].to(device, non_blocking=True)  # B x L x L x 3 uint8
        b, load = image.shape[0], image.shape[1]
        img = image.permute(0, 3, 1, 2).float().div_(255.0)  # B x 3 x L x L (channels-last strides)
        boxes = batch["boxes"].to(device, non_blocking=True)  # B x V x 5
        n_views = boxes.shape[1]
        has_mask = batch["mask"].numel() > 0
        mask = batch["mask"].to(device, non_blocking=True).unsqueeze(1).float() if has_mask else None
        crops, masks = [], []
        for v in range(n_views):
            grid = crop_grid(boxes[:, v], load, self.image_size)
            crops.append(F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False))
            if mask is not None:
                masks.append(F.grid_sample(mask, grid, mode="nearest", align_corners=False)[:, 0].long())
        x = torch.cat(crops).contiguous()
        x = self.color(x) if len(self.color) else x
        x = (x - self.mean) / self.std
        q, k = x[:b], x[b : 2 * b]
        index = batch["index"].to(device, non_blocking=True) if "index" in batch else None
        return Views(q, k, masks[0] if masks else None, masks[1] if masks else None, index)

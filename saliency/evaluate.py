"""Evaluate saliency maps against ground truth: max F-beta, adaptive F-beta, MAE, IoU at 0.5.

Predictions (``--pred``) are 8-bit grey images (soft maps, or 0/255 masks) found recursively;
ground truth (``--gt``) is a folder of binary masks (0/255, 0/1, mode '1' or JPEG, threshold
127), also found recursively, or, with ``--gt-dataset NAME``, the labels of a
``maskcontrast.data`` reader rooted at ``--gt`` (foreground = label > 0; the ignore value 255,
e.g. the Oxford-IIIT Pet trimap border, is excluded from every metric).

Files are matched by their path relative to the folder without extension (so DAVIS
``<seq>/<frame>`` ids work); when no relative path matches, by the bare file stem. A prediction
whose size differs from its ground truth is resized to it (bilinear) and counted. A ground-truth
image without a prediction is, by default, scored as an all-background prediction
(``--missing zero``; e.g. an image that saliency.generate skipped), or left out (``skip``), or an
error (``error``). See :mod:`saliency.metrics` for how the numbers are averaged.

Usage::

    python -m saliency.evaluate --pred /tmp/soft --gt $MASKCONTRAST_DATA/saliency/SOD/masks --json sod.json
    python -m saliency.evaluate --pred /tmp/soft_pet --gt $MASKCONTRAST_DATA/oxford_iiit_pet --gt-dataset pet

Python API::

    from saliency.evaluate import evaluate_folders
    result = evaluate_folders("soft/", "gt/")    # {"max_fbeta": ..., "mae": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from maskcontrast.data import DataError, build_dataset, list_images, read_binary_mask
from maskcontrast.data.io import open_image, read_index_png
from maskcontrast.utils import atomic_write_bytes, setup_logging
from saliency.metrics import SaliencyMetrics

__all__ = ["evaluate_folders", "load_ground_truth", "match_files", "main"]

log = logging.getLogger("saliency.evaluate")

GroundTruth = Callable[[], tuple[np.ndarray, np.ndarray | None]]


def _rel_ids(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in list_images(folder, recursive=True)}


def match_files(pred_ids: Sequence[str], gt_ids: Sequence[str]) -> dict[str, str]:
    """``{gt_id: pred_id}``: equal relative ids first; when none match, equal bare stems
    (only stems that are unique on both sides)."""
    preds = set(pred_ids)
    direct = {g: g for g in gt_ids if g in preds}
    if direct:
        return direct

    def by_stem(ids: Sequence[str]) -> dict[str, str]:
        stems: dict[str, list[str]] = {}
        for i in ids:
            stems.setdefault(i.rsplit("/", 1)[-1], []).append(i)
        return {s: v[0] for s, v in stems.items() if len(v) == 1}

    pstem, gstem = by_stem(pred_ids), by_stem(gt_ids)
    return {gstem[s]: pstem[s] for s in gstem if s in pstem}


def _read_pred(path: Path, objects: bool) -> np.ndarray:
    raw = None
    if path.suffix.lower() == ".png":
        try:
            raw = read_index_png(path)  # mode L / P / 1 keep their stored values
        except DataError:
            raw = None  # e.g. an RGB PNG: read as grey below
    if raw is None or raw.dtype != np.uint8:
        with open_image(path) as im:  # refuses a too large file by name
            raw = np.asarray(im.convert("L"), dtype=np.uint8)
    elif raw.max() <= 1 and not objects:
        raw = raw * np.uint8(255)  # a 0/1 or mode '1' mask
    if objects:
        return (raw > 0).astype(np.uint8) * np.uint8(255)
    return raw


def _gt_from_folder(folder: Path) -> dict[str, GroundTruth]:
    return {sid: (lambda p=p: (read_binary_mask(p).astype(bool), None)) for sid, p in _rel_ids(folder).items()}


def _gt_from_dataset(name: str, root: Path, split: str | None) -> dict[str, GroundTruth]:
    kwargs = {"target": "foreground"} if name == "pet" else {}
    ds = build_dataset(name, root, split, **kwargs)
    ignore = ds.info.ignore_index

    def load(sid: str) -> tuple[np.ndarray, np.ndarray | None]:
        label = ds.load(sid).label
        if label is None:
            raise DataError(f"dataset {name} has no label for {sid}")
        valid = label != ignore
        return (label > 0) & valid, (valid if not valid.all() else None)

    return {sid: (lambda sid=sid: load(sid)) for sid in ds.ids}


def load_ground_truth(
    gt: str | Path, gt_dataset: str | None = None, split: str | None = None
) -> dict[str, GroundTruth]:
    """The ground truth that :func:`evaluate_folders` reads, as ``{id: load}``.

    ``load()`` returns ``(mask, valid)``: ``H x W`` bool foreground and an ``H x W`` bool mask of
    the pixels that count (None when all do). ``gt`` is a folder of binary masks (ids = relative
    paths without extension) or, with ``gt_dataset``, the root of that ``maskcontrast.data``
    reader (ids = its sample ids).

    Example::

        truths = load_ground_truth("$MASKCONTRAST_DATA/oxford_iiit_pet", "pet")
        mask, valid = truths[some_id]()
    """
    root = Path(gt).expanduser()
    return _gt_from_dataset(gt_dataset, root, split) if gt_dataset else _gt_from_folder(root)


def evaluate_folders(
    pred: str | Path,
    gt: str | Path,
    gt_dataset: str | None = None,
    split: str | None = None,
    missing: str = "zero",
    normalize: bool = True,
    objects: bool = False,
    per_image: bool = False,
    progress: bool = False,
) -> dict:
    """Evaluate every ground-truth image (see the module doc).

    Returns:
        ``{"max_fbeta", "max_fbeta_threshold", "adaptive_fbeta", "mae", "iou", "n_images",
        "n_missing", "n_resized", "pred", "gt"}`` plus ``"images": {id: metrics}`` with ``per_image``.

    Raises:
        ValueError: no prediction matches any ground truth, or ``missing="error"`` and some are missing.
    """
    if missing not in ("zero", "skip", "error"):
        raise ValueError(f"missing must be zero, skip or error, got {missing!r}")
    pred_dir, gt_root = Path(pred).expanduser(), Path(gt).expanduser()
    preds = _rel_ids(pred_dir)
    truths = load_ground_truth(gt_root, gt_dataset, split)
    if not truths:
        raise ValueError(f"no ground-truth masks found under {gt_root}")
    matched = match_files(list(preds), list(truths))
    if not matched:
        raise ValueError(
            f"no prediction in {pred_dir} matches a ground truth in {gt_root} "
            f"(e.g. prediction ids {list(preds)[:3]}, ground-truth ids {list(truths)[:3]}); "
            "files are matched by relative path or stem"
        )
    absent = [g for g in truths if g not in matched]
    if absent and missing == "error":
        raise ValueError(f"{len(absent)} ground-truth images have no prediction in {pred_dir}, e.g. {absent[:5]}")
    if absent:
        log.warning(
            "%d of %d ground-truth images have no prediction (%s)",
            len(absent),
            len(truths),
            "scored as all background" if missing == "zero" else "left out",
        )
    meter = SaliencyMetrics(normalize=normalize)
    resized = 0
    images: dict[str, dict] = {}
    ids = [g for g in truths if g in matched or missing == "zero"]
    iterator: Iterator[str] = iter(tqdm(ids, desc="evaluate", unit="img", disable=not progress))
    for gid in iterator:
        mask, valid = truths[gid]()
        if gid in matched:
            p = _read_pred(preds[matched[gid]], objects)
            if p.shape != mask.shape:
                resized += 1
                p = np.asarray(Image.fromarray(p).resize((mask.shape[1], mask.shape[0]), Image.BILINEAR))
        else:
            p = np.zeros(mask.shape, np.uint8)
        images[gid] = meter.update(p, mask, valid, gid)
    if resized:
        log.info("%d predictions were resized to their ground truth's size", resized)
    result = meter.compute()
    result.update(
        {
            "n_missing": len(absent),
            "n_resized": resized,
            "pred": str(pred_dir),
            "gt": str(gt_root),
            "missing": missing,
            "normalize": normalize,
        }
    )
    if gt_dataset:
        result["gt_dataset"] = gt_dataset
    if per_image:
        result["images"] = images
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m saliency.evaluate",
        description="Max F-beta (beta^2 = 0.3, 255 thresholds), adaptive F-beta (2 x mean), MAE and IoU at 0.5 "
        "of saliency maps, matched to ground truth by relative path / file stem.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pred", required=True, help="folder of predicted maps (8-bit grey PNG/JPG, searched recursively)")
    p.add_argument("--gt", required=True, help="folder of binary GT masks, or the dataset root with --gt-dataset")
    p.add_argument("--gt-dataset", help="read GT labels through this maskcontrast.data reader (e.g. pet, davis2016)")
    p.add_argument("--split", help="split for --gt-dataset")
    p.add_argument("--json", help="write the results to this JSON file (refused if it exists, unless --overwrite)")
    p.add_argument("--per-image", action="store_true", help="include every image's metrics in the JSON")
    p.add_argument(
        "--missing",
        choices=("zero", "skip", "error"),
        default="zero",
        help="what to do with a GT image that has no prediction",
    )
    p.add_argument("--no-normalize", action="store_true", help="do not min-max normalise each prediction")
    p.add_argument("--objects", action="store_true", help="predictions are object-id masks: any id > 0 is foreground")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.json and Path(args.json).exists() and not args.overwrite:
        log.error("%s exists; pass --overwrite to replace it", args.json)
        return 2
    try:
        result = evaluate_folders(
            args.pred,
            args.gt,
            args.gt_dataset,
            args.split,
            args.missing,
            not args.no_normalize,
            args.objects,
            args.per_image,
            progress=True,
        )
    except (ValueError, DataError) as err:
        log.error("%s", err)
        return 2
    print(
        f"n={result['n_images']}  maxF={result['max_fbeta']:.4f}  adpF={result['adaptive_fbeta']:.4f}  "
        f"MAE={result['mae']:.4f}  IoU={result['iou']:.4f}  (missing {result['n_missing']}, resized {result['n_resized']})"
    )
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
        print(f"results written to {Path(args.json).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

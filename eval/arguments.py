"""Command-line arguments shared by the evaluation CLIs: model, dataset and saliency options, and building the model and the dataset from them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from maskcontrast.api import FeatureModel, load_model
from maskcontrast.data import SegmentationDataset, build_dataset
from maskcontrast.data.paths import SHARED_LAYOUT, shared_dataset_root
from maskcontrast.keyvalues import parse_key_values

__all__ = [
    "add_model_arguments",
    "add_dataset_arguments",
    "add_saliency_arguments",
    "model_from_args",
    "resolve_root",
    "dataset_from_args",
    "size_arg",
]


def add_model_arguments(parser: argparse.ArgumentParser, with_size: bool = True) -> None:
    """``--checkpoint``, ``--device``, ``--output-stride``, ``--size`` (unless ``with_size=False``),
    ``--batch-size``, ``--amp``, ``--workers``."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        required=True,
        help="maskcontrast checkpoint, official MaskContrast zoo file, or a "
        "backbone-only MoCo / torchvision / DINO / DINOv2 / MAE file (docs/BACKBONES.md)",
    )
    g.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: CUDA when present)")
    g.add_argument(
        "--output-stride",
        type=int,
        default=8,
        choices=(8, 16, 32),
        help="output stride of backbone-only models (default 8, dilated); maskcontrast checkpoints keep theirs",
    )
    if with_size:
        g.add_argument(
            "--size",
            type=int,
            nargs="+",
            default=None,
            metavar="N",
            help="resize images before the network: one value = shorter side, two = H W "
            "(default: native resolution). Predictions are always scored at label resolution",
        )
    g.add_argument(
        "--init-key",
        default="teacher",
        choices=("teacher", "student"),
        help="network of a full DINO training checkpoint (default teacher)",
    )
    g.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    g.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    g.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2; 0 = main)")


def add_dataset_arguments(
    parser: argparse.ArgumentParser, split_help: str = "the reader's default", with_split: bool = True
) -> None:
    """``--dataset``, ``--root``, ``--split`` (unless ``with_split=False``), ``--dataset-arg``, ``--ids``, ``--limit``."""
    g = parser.add_argument_group("dataset")
    g.add_argument(
        "--dataset",
        required=True,
        help="registered dataset: voc, msrc, pet, coco128, davis2016, weizmann, saliency_folder",
    )
    g.add_argument("--root", default=None, help="dataset folder (default: its copy under $MASKCONTRAST_DATA)")
    if with_split:
        g.add_argument("--split", default=None, help=f"dataset split (default: {split_help})")
    g.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra reader option, repeatable, e.g. target=species (pet) or protocol=23 (msrc)",
    )
    g.add_argument("--ids", default=None, help="text file with the image ids to use (one per line)")
    g.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")


def add_saliency_arguments(parser: argparse.ArgumentParser) -> None:
    """``--saliency-source``, ``--saliency-dir``, ``--saliency-threshold``."""
    g = parser.add_argument_group("saliency (which pixels form an image's object mask)")
    g.add_argument(
        "--saliency-source",
        default="model",
        choices=("model", "gt", "folder"),
        help="model: the checkpoint's saliency head (default); gt: the ground-truth foreground "
        "(labels other than background and ignore; baselines, upstream issue #14); "
        "folder: object masks <saliency-dir>/<id>.png (0 = background)",
    )
    g.add_argument(
        "--saliency-dir",
        default=None,
        help="mask folder for --saliency-source folder (for voc also 'unsupervised' or 'supervised')",
    )
    g.add_argument(
        "--saliency-threshold",
        type=float,
        default=0.5,
        help="probability above which a pixel is salient (model source; default 0.5)",
    )


def size_arg(size: Sequence[int] | None) -> int | tuple[int, int] | None:
    if size is None:
        return None
    if len(size) == 1:
        return int(size[0])
    if len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"--size takes one value (shorter side) or two (H W), got {list(size)}")


def model_from_args(args: argparse.Namespace) -> FeatureModel:
    """:func:`maskcontrast.load_model` with the options of :func:`add_model_arguments`."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    return load_model(
        args.checkpoint,
        args.device,
        output_stride=args.output_stride,
        size=size_arg(getattr(args, "size", None)),
        batch_size=args.batch_size,
        amp=args.amp,
        init_key=getattr(args, "init_key", "teacher"),
    )


def resolve_root(name: str, root: str | None) -> Path:
    """``root``, or the dataset's copy under ``$MASKCONTRAST_DATA``."""
    if root is not None:
        return Path(root).expanduser()
    shared = shared_dataset_root(name) if name in SHARED_LAYOUT else None
    if shared is None:
        raise ValueError(f"--root is required for dataset '{name}' (no copy under $MASKCONTRAST_DATA)")
    return shared


def dataset_from_args(
    args: argparse.Namespace,
    split: str | None = None,
    ids: Sequence[str] | str | None = None,
    masks: str | None = None,
) -> SegmentationDataset:
    """The dataset of :func:`add_dataset_arguments` (``split``/``ids`` override the arguments)."""
    kwargs = parse_key_values(args.dataset_arg)
    if masks is not None:
        kwargs["masks"] = masks
    wanted = ids if ids is not None else args.ids
    split = split if split is not None else getattr(args, "split", None)
    ds = build_dataset(args.dataset, resolve_root(args.dataset, args.root), split, ids=wanted, **kwargs)
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        ds.ids = ds.ids[: args.limit]
    return ds

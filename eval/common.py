"""Plumbing shared by the evaluation CLIs: arguments, datasets, seeded splits, saliency sources,
streaming over a dataset, memory-bounded pixel embeddings, resumable caches, JSON and pictures."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from maskcontrast.api import FeatureModel, FeatureOutput, load_model, upsample_saliency
from maskcontrast.data import DataError, DatasetInfo, Sample, SegmentationDataset, build_dataset, write_mask
from maskcontrast.data.io import write_panel
from maskcontrast.data.paths import SHARED_LAYOUT, shared_dataset_root
from maskcontrast.embeddings import masked_mean_embedding, normalised_pixels
from maskcontrast.runs import ChangedIdentityError, identity_digest, load_state, remove_stale_temporaries, save_state
from maskcontrast.utils import atomic_write_bytes

__all__ = [
    "add_model_arguments",
    "add_dataset_arguments",
    "add_saliency_arguments",
    "parse_key_values",
    "model_from_args",
    "dataset_from_args",
    "seeded_split",
    "resolve_split",
    "SaliencySource",
    "iter_model_outputs",
    "normalised_pixels",
    "masked_mean_embedding",
    "StreamCache",
    "checkpoint_fingerprint",
    "ensure_new_file",
    "quiet_faiss",
    "write_json",
    "jsonable",
    "colorize",
    "save_panel",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, with_size: bool = True) -> None:
    """``--checkpoint``, ``--device``, ``--output-stride``, ``--size`` (unless ``with_size=False``),
    ``--batch-size``, ``--amp``, ``--workers``."""
    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", required=True, help="maskcontrast checkpoint, official MoCo file or torchvision "
                   "ResNet state dict (MoCo/torchvision: backbone-only features)")  # fmt: skip
    g.add_argument("--device", default=None, help="cuda, cpu, cuda:1, ... (default: CUDA when present)")
    g.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32),
                   help="output stride of backbone-only models (default 8, dilated); maskcontrast checkpoints keep theirs")  # fmt: skip
    if with_size:
        g.add_argument("--size", type=int, nargs="+", default=None, metavar="N",
                       help="resize images before the network: one value = shorter side, two = H W "
                            "(default: native resolution). Predictions are always scored at label resolution")  # fmt: skip
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
    g.add_argument("--dataset-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra reader option, repeatable, e.g. target=species (pet) or protocol=23 (msrc)")  # fmt: skip
    g.add_argument("--ids", default=None, help="text file with the image ids to use (one per line)")
    g.add_argument("--limit", type=int, default=None, help="use only the first N images (quick runs)")


def add_saliency_arguments(parser: argparse.ArgumentParser) -> None:
    """``--saliency-source``, ``--saliency-dir``, ``--saliency-threshold``."""
    g = parser.add_argument_group("saliency (which pixels form an image's object mask)")
    g.add_argument("--saliency-source", default="model", choices=("model", "gt", "folder"),
                   help="model: the checkpoint's saliency head (default); gt: the ground-truth foreground "
                        "(labels other than background and ignore; baselines, upstream issue #14); "
                        "folder: object masks <saliency-dir>/<id>.png (0 = background)")  # fmt: skip
    g.add_argument("--saliency-dir", default=None,
                   help="mask folder for --saliency-source folder (for voc also 'unsupervised' or 'supervised')")  # fmt: skip
    g.add_argument("--saliency-threshold", type=float, default=0.5,
                   help="probability above which a pixel is salient (model source; default 0.5)")  # fmt: skip


def parse_key_values(items: Sequence[str], what: str = "--dataset-arg") -> dict[str, Any]:
    """``["target=species", "n=3"]`` -> ``{"target": "species", "n": 3}`` (ints, floats, true/false)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} '{item}' is not of the form key=value")
        v: Any = value
        if value.lower() in ("true", "false"):
            v = value.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    v = cast(value)
                    break
                except ValueError:
                    continue
        out[key.strip()] = v
    return out


def _size_arg(size: Sequence[int] | None) -> int | tuple[int, int] | None:
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
        size=_size_arg(getattr(args, "size", None)),
        batch_size=args.batch_size,
        amp=args.amp,
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


# ----------------------------------------------------------------------------------------------
# Splits for datasets without official ones
# ----------------------------------------------------------------------------------------------


def seeded_split(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (train, val) with a seeded permutation of the sorted ids.

    The result depends only on the set of ids, ``val_fraction`` and ``seed``. Both parts keep the
    sorted order. Example: ``seeded_split([f"{i}" for i in range(10)], 0.3, 0)`` -> 7 and 3 ids.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    ordered = sorted(set(ids))
    if len(ordered) < 2:
        raise ValueError(f"need at least 2 images for a train/val split, got {len(ordered)}")
    n_val = min(len(ordered) - 1, max(1, round(val_fraction * len(ordered))))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    val = set(perm[:n_val].tolist())
    return [i for j, i in enumerate(ordered) if j not in val], [i for j, i in enumerate(ordered) if j in val]


def resolve_split(
    all_ids: Sequence[str],
    out_dir: Path,
    val_fraction: float,
    seed: int,
    split_dir: str | Path | None = None,
) -> tuple[list[str], list[str]]:
    """A reusable seeded split: read ``split_dir`` (or ``out_dir``) ``/split_{train,val}.txt`` when
    they exist, else make one with :func:`seeded_split` and save it to ``out_dir``."""
    src = Path(split_dir) if split_dir is not None else out_dir
    train_f, val_f = src / "split_train.txt", src / "split_val.txt"
    if train_f.is_file() and val_f.is_file():
        train = [s for s in train_f.read_text(encoding="utf-8").split() if s]
        val = [s for s in val_f.read_text(encoding="utf-8").split() if s]
        known = set(all_ids)
        missing = [i for i in train + val if i not in known]
        if missing:
            raise DataError(f"{src}: split lists name {len(missing)} ids the dataset lacks, e.g. {missing[:3]}")
        log.info("reusing the split in %s (%d train / %d val)", src, len(train), len(val))
    else:
        if split_dir is not None:
            raise DataError(f"split files not found: {train_f} and {val_f}", path=str(src))
        train, val = seeded_split(all_ids, val_fraction, seed)
        log.info("made a seeded split (seed %d, val fraction %.2f): %d train / %d val", seed, val_fraction,
                 len(train), len(val))  # fmt: skip
    if src != out_dir or not (out_dir / "split_train.txt").is_file():
        atomic_write_bytes(out_dir / "split_train.txt", ("\n".join(train) + "\n").encode())
        atomic_write_bytes(out_dir / "split_val.txt", ("\n".join(val) + "\n").encode())
    return train, val


# ----------------------------------------------------------------------------------------------
# Saliency source
# ----------------------------------------------------------------------------------------------


@dataclass
class SaliencySource:
    """Which pixels form an image's object mask: the model's saliency head, the ground-truth
    foreground, or object masks from a folder (use a dataset built with ``masks=DIR``)."""

    kind: str = "model"
    threshold: float = 0.5

    def check(self, model: FeatureModel, info: DatasetInfo) -> None:
        """Raise ``ValueError`` with a fix when this source cannot work for the model/dataset."""
        if self.kind not in ("model", "gt", "folder"):
            raise ValueError(f"saliency source must be model, gt or folder, got {self.kind!r}")
        if self.kind == "model" and not model.has_saliency:
            raise ValueError(
                f"{model.source or 'the model'} ({model.layout}) has no saliency head; pass --saliency-source gt "
                "(ground-truth foreground) or --saliency-source folder --saliency-dir DIR (object masks)"
            )
        if self.kind == "gt" and info.background is None:
            raise ValueError(
                f"--saliency-source gt needs a background class, and {info.name} has none; use "
                "--saliency-source folder --saliency-dir DIR instead"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"saliency threshold must lie in (0, 1), got {self.threshold}")

    def foreground(
        self, sample: Sample, out: FeatureOutput, info: DatasetInfo, ds: SegmentationDataset
    ) -> torch.Tensor:
        """``H x W`` bool foreground at the label's resolution (on the output's device)."""
        hw = sample.size
        device = out.embedding.device
        if self.kind == "model":
            if out.saliency is None:
                raise ValueError("the model has no saliency head")
            return upsample_saliency(out.saliency, hw)[0, 0] > self.threshold
        if self.kind == "gt":
            if sample.label is None:
                raise DataError(f"{sample.id}: --saliency-source gt needs labels", sample_id=sample.id)
            lab = sample.label
            fg = (lab != info.background) & (lab != info.ignore_index)
            return torch.from_numpy(fg).to(device)
        if sample.mask is None:
            path = ds.mask_path(sample.id)
            raise DataError(f"object mask not found: {path}; every evaluated image needs one", path=str(path))
        return torch.from_numpy(sample.mask > 0).to(device)


# ----------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """DataLoader collate: keep the list of :class:`Sample` records (sizes differ)."""
    return batch


def iter_model_outputs(
    model: FeatureModel,
    dataset: SegmentationDataset,
    *,
    workers: int = 0,
    start: int = 0,
    desc: str = "images",
    progress: bool = True,
) -> Iterator[tuple[int, Sample, FeatureOutput]]:
    """Yield ``(index, sample, output)`` for images ``start..`` of ``dataset``, one at a time;
    images are decoded in ``workers`` processes and run through the model ``model.batch_size`` at a time.
    Outputs are at feature resolution (batch size 1)."""
    from torch.utils.data import Subset
    from tqdm import tqdm

    subset = Subset(dataset, range(start, len(dataset))) if start else dataset
    loader = DataLoader(
        subset,
        batch_size=model.batch_size,
        num_workers=max(0, workers),
        collate_fn=collate_samples,
        persistent_workers=False,
    )
    bar = tqdm(total=len(dataset), initial=start, desc=desc, unit="img", disable=not progress, leave=False)
    index = start
    try:
        for samples in loader:
            for j, out, _ in model.run([s.image for s in samples]):
                yield index + j, samples[j], out
            index += len(samples)
            bar.update(len(samples))
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------
# Memory-bounded pixel embeddings at label resolution
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Resumable caches
# ----------------------------------------------------------------------------------------------


def checkpoint_fingerprint(path: str | Path) -> str:
    """Identifies a checkpoint file by absolute path, size and modification time."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}"


class StreamCache:
    """Resume a per-image pass: ``(done, state)`` saved atomically every ``every`` images.

    ``settings`` (a JSON-able dict) must match the cached one; otherwise loading fails with a
    message naming the file and the keys that differ (:class:`maskcontrast.runs.ChangedIdentityError`,
    a ``ValueError``). Temporary files of a save killed midway are removed. ``path=None`` disables caching.

    Example::

        cache = StreamCache(Path("cache/pass1.pt"), {"k": 21})
        done, state = cache.load()          # (0, None) for a fresh cache
        ...
        cache.save(done, state)
    """

    def __init__(self, path: Path | None, settings: dict[str, Any], every: int = 100) -> None:
        self.path = path
        self.settings = jsonable(settings)
        self.every = max(1, every)

    def load(self) -> tuple[int, dict[str, Any] | None]:
        if self.path is None:
            return 0, None
        remove_stale_temporaries(self.path.parent)
        if not self.path.is_file():
            return 0, None
        data = load_state(self.path)
        old = data.get("settings", {})
        if identity_digest(old) != identity_digest(self.settings):
            diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            raise ChangedIdentityError(
                f"cache {self.path} was written with different settings ({', '.join(diff)}); "
                "use another cache folder, or delete this one"
            )
        log.info("resuming from %s (%d images done)", self.path, data["done"])
        return int(data["done"]), data["state"]

    def due(self, done: int) -> bool:
        return self.path is not None and done % self.every == 0

    def save(self, done: int, state: dict[str, Any]) -> None:
        if self.path is not None:
            save_state(self.path, {"settings": self.settings, "done": done, "state": state})


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def quiet_faiss() -> None:
    """faiss logs which CPU build it loads at INFO level; keep CLI output readable."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("faiss").setLevel(logging.WARNING)


def ensure_new_file(path: str | Path | None, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse an existing output file unless ``overwrite`` (checked before any long work)."""
    if path is not None and Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass {flag} to replace it")


def jsonable(obj: Any) -> Any:
    """Numpy/torch scalars and arrays -> Python; NaN and inf -> None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode("utf-8"))


def colorize(label: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """``H x W`` class ids -> ``H x W x 3`` uint8 with the dataset palette (ignore = white)."""
    table = info.palette_array()
    return table[np.clip(np.asarray(label), 0, 255).astype(np.uint8)]


def save_panel(path: str | Path, image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray, info: DatasetInfo) -> None:
    """Write ``image | ground truth | prediction`` side by side as a PNG (atomically), and the raw
    prediction (class indices, palette PNG) as ``pred/<same name>`` beside it, so that other tools
    (e.g. the demo report) can compose their own pictures."""
    path = Path(path)
    pred_arr = np.asarray(pred)
    write_mask(
        path.parent / "pred" / path.name, np.where(pred_arr < 0, info.ignore_index, pred_arr), info.palette_array()
    )
    image = np.asarray(image, dtype=np.uint8)
    gt_rgb = colorize(gt, info) if gt is not None else np.zeros_like(image)
    write_panel(path, [image, gt_rgb, colorize(pred, info)])


def safe_name(sample_id: str) -> str:
    """A file name for an id that may contain ``/`` (DAVIS ``seq/frame``)."""
    return sample_id.replace(os.sep, "__").replace("/", "__")

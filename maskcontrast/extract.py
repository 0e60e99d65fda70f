"""Dump features for downstream use: ``python -m maskcontrast.extract``.

For every image under ``--images`` (recursively) one file ``<out>/<relative path without
extension>.npy`` (or ``.pt``) holds a ``C x h x w`` array: the L2-normalised embeddings
(``--what embed``, default), the decoder/backbone features (``features``) or the saliency
probabilities (``saliency``), at feature resolution (default) or at the image's resolution
(``--resolution input``), float32 or float16 (``--fp16``).

``<out>/manifest.json`` records the settings. A second run with the same settings resumes
(finished files are kept; files are written atomically, so none is ever half-written); a run
with other settings, or into a folder that holds other files, is refused unless ``--overwrite``.
SIGTERM / SIGINT stop it after the current batch, with the files so far kept, a log line saying
how far it got, and exit status 143 / 130 (``maskcontrast.preemption``); the same command continues.
An image whose network input would be too large (``MASKCONTRAST_MAX_INPUT_PIXELS``) is refused by name.

Example::

    python -m maskcontrast.extract --checkpoint run/checkpoint.pt --images photos/ --out feats/ --fp16
    python -c "import numpy as np; print(np.load('feats/cat.npy').shape)"    # (32, h, w)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from maskcontrast.api import NoSaliencyHeadError, load_model, refuse_too_large, upsample_saliency
from maskcontrast.cli import run_main
from maskcontrast.data import build_dataset
from maskcontrast.embeddings import upsample_embedding
from maskcontrast.preemption import ignore_signals_in_worker, section, stop_if_requested
from maskcontrast.runs import RunLayout, claim_run_folder
from maskcontrast.utils import atomic_save, atomic_write_bytes, setup_logging

__all__ = ["main", "build_parser", "output_path"]

log = logging.getLogger("maskcontrast.extract")

MANIFEST = "manifest.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.extract",
        description="Write one feature file per image (C x h x w) for downstream use; resumable.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="maskcontrast checkpoint, official MoCo file or torchvision "
        "ResNet state dict (the last two: backbone features only)",
    )
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (one file per image + manifest.json)")
    p.add_argument(
        "--what",
        default="embed",
        choices=("embed", "features", "saliency"),
        help="embed: L2-normalised embeddings (default); features: 256-d decoder or backbone features; "
        "saliency: probabilities (models with a saliency head)",
    )
    p.add_argument("--format", default="npy", choices=("npy", "pt"), help="numpy .npy (default) or torch .pt files")
    p.add_argument("--fp16", action="store_true", help="store float16 (half the disk); also float16 autocast on CUDA")
    p.add_argument(
        "--resolution",
        default="feature",
        choices=("feature", "input"),
        help="feature: the network's output grid (default); input: the image's own size",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="resize before the network: one value = shorter side, two = H W (default: native)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="round network input sides to a multiple of this (default: the output stride)",
    )
    p.add_argument(
        "--output-stride",
        type=int,
        default=8,
        choices=(8, 16, 32),
        help="output stride of backbone-only models (default 8)",
    )
    p.add_argument(
        "--init-key",
        default="teacher",
        choices=("teacher", "student"),
        help="network of a full DINO training checkpoint (default teacher)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when present)")
    p.add_argument("--overwrite", action="store_true", help="recompute every file, replacing other settings' outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def output_path(out: Path, sample_id: str, fmt: str) -> Path:
    """``<out>/<id>.<fmt>`` (ids are relative paths without extension, e.g. ``sub/cat``)."""
    return out / f"{sample_id}.{fmt}"


def _settings(args: argparse.Namespace, layout: str) -> dict[str, Any]:
    return {
        "checkpoint": str(Path(args.checkpoint).expanduser().resolve()),
        "layout": layout,
        "images": str(Path(args.images).expanduser().resolve()),
        "what": args.what,
        "format": args.format,
        "dtype": "float16" if args.fp16 else "float32",
        "resolution": args.resolution,
        "size": args.size,
        "stride": args.stride,
        "output_stride": args.output_stride,
        **({"init_key": args.init_key} if args.init_key != "teacher" else {}),  # older manifests have none
    }


#: what maskcontrast.extract writes in ``--out`` besides the feature files (its identity: the manifest's settings)
RUN_LAYOUT = RunLayout(
    "feature folder", owned=(MANIFEST,), identity_file=MANIFEST, compare=("settings",), writer="maskcontrast.extract"
)


def _check_out(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Claim ``out`` (:func:`maskcontrast.runs.claim_run_folder`): the same settings resume, other
    settings or a foreign folder are refused unless ``overwrite``."""
    claim_run_folder(out, RUN_LAYOUT, identity={"settings": settings}, resume=True, overwrite=overwrite).prepare(
        write_identity=False
    )


def _write(path: Path, array: torch.Tensor, fmt: str) -> None:
    if fmt == "pt":
        atomic_save(array.contiguous().clone(), path)
    else:
        buf = io.BytesIO()
        np.save(buf, array.numpy())
        atomic_write_bytes(path, buf.getvalue())


def _keep_list(batch: list[Any]) -> list[Any]:
    return batch


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the CLI; returns the output folder."""
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    setup_logging()
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    size: Any = None
    if args.size is not None:
        if len(args.size) not in (1, 2):
            raise ValueError(f"--size takes one value (shorter side) or two (H W), got {args.size}")
        size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    images = Path(args.images).expanduser()
    if not images.is_dir():
        raise ValueError(f"--images {images}: folder not found")
    ds = build_dataset("image_folder", images)
    out = Path(args.out).expanduser()
    model = load_model(
        args.checkpoint,
        args.device,
        output_stride=args.output_stride,
        size=size,
        stride=args.stride,
        batch_size=args.batch_size,
        amp=args.fp16,
        init_key=args.init_key,
    )
    if args.what == "saliency" and not model.has_saliency:
        raise NoSaliencyHeadError(
            f"{args.checkpoint} ({model.layout}) has no saliency head; use --what embed or features"
        )
    settings = _settings(args, model.layout)
    _check_out(out, settings, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"settings": settings, "n_images": len(ds), "complete": False}
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    todo = [i for i, sid in enumerate(ds.ids) if args.overwrite or not output_path(out, sid, args.format).is_file()]
    if len(todo) < len(ds):
        log.info("resuming: %d of %d images already done", len(ds) - len(todo), len(ds))
    dtype = torch.float16 if args.fp16 else torch.float32
    loader = DataLoader(
        Subset(ds, todo),
        batch_size=args.batch_size,
        num_workers=max(0, args.workers),
        collate_fn=_keep_list,
        worker_init_fn=ignore_signals_in_worker,
    )
    shape = None
    done = len(ds) - len(todo)
    with tqdm(total=len(todo), desc="extracting", unit="img", disable=args.no_progress) as bar, section("extract"):
        for samples in loader:
            refuse_too_large(model, ds, samples)
            for j, o, hw in model.run([s.image for s in samples]):
                if args.what == "embed":
                    t = o.embedding
                    t = upsample_embedding(t, hw if args.resolution == "input" else tuple(t.shape[-2:]))
                elif args.what == "saliency":
                    assert o.saliency is not None
                    t = upsample_saliency(
                        o.saliency, hw if args.resolution == "input" else tuple(o.saliency.shape[-2:])
                    )
                else:
                    t = o.features
                    if args.resolution == "input":
                        t = torch.nn.functional.interpolate(t, size=hw, mode="bilinear", align_corners=False)
                t = t[0].to(dtype).cpu()
                shape = tuple(t.shape)
                _write(output_path(out, samples[j].id, args.format), t, args.format)
            bar.update(len(samples))
            done += len(samples)
            if done < len(ds):
                stop_if_requested("extract", step=f"after {done} of {len(ds)} images", saved=out, logger=log)
    manifest.update(complete=True, channels=shape[0] if shape else None)
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    print(f"wrote {len(todo)} {args.format} files ({len(ds)} in all) to {out}")
    return out


if __name__ == "__main__":
    run_main(main, "maskcontrast.extract")

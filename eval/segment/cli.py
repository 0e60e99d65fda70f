"""The command line of ``python -m eval.segment`` (docs/EVAL.md, "Segment your own images")."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.arguments import add_dataset_arguments, add_model_arguments, dataset_from_args
from eval.caches import checkpoint_fingerprint
from eval.clustering import BACKENDS, resolve_backend
from eval.outputs import quiet_faiss, write_json
from eval.segment.clusters import PROTOCOLS, Clusters, ClustersError, check_k, size_key, size_text
from eval.segment.page import cluster_palette, index_html
from eval.segment.passes import assign_pass, fit_pass, load_fit_state, write_sheets
from maskcontrast.api import FeatureModel
from maskcontrast.data import DataError, SegmentationDataset, build_dataset
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.runs import RunLayout, claim_run_folder, identity_digest
from maskcontrast.utils import atomic_write_bytes, setup_logging

__all__ = ["DEFAULT_SIZE", "LAYOUT", "build_parser", "main"]

log = logging.getLogger("eval.segment")

#: the default shorter side of the network input (a folder of camera photos at native size is slow)
DEFAULT_SIZE = 512

LAYOUT = RunLayout(
    "segmentation run",
    owned=("run.json", "clusters.pt", "labels", "overlays", "sheets", "index.html", "segment.json", "cache"),
    state=("cache",),
    identity_file="run.json",
    finished="segment.json",
    writer="python -m eval.segment",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.segment",
        description="Segment a folder of images into K clusters without labels: label PNGs, overlays, contact "
        "sheets, index.html and clusters.pt (docs/EVAL.md, 'Segment your own images').",
    )
    add_model_arguments(p)
    g = p.add_argument_group("images")
    g.add_argument("--images", default=None, help="folder of images (searched recursively; ids = relative paths)")
    add_dataset_arguments(p)
    for action in p._actions:  # --checkpoint / --model and --images / --dataset are either-or here
        if action.dest in ("checkpoint", "dataset"):
            action.required = False
            action.default = None
        if action.dest == "size":
            action.help = (
                f"network input size: one value = shorter side, two = H W, 0 = native resolution "
                f"(default {DEFAULT_SIZE}, or the size of --clusters)"
            )
    p.add_argument(
        "--model",
        default=None,
        help="an exported network (.onnx or TorchScript .pt from "
        "python -m maskcontrast.export) instead of --checkpoint",
    )
    c = p.add_argument_group("clustering")
    c.add_argument("--k", type=int, default=None, help="object clusters (labels 1..K; 0 is the background)")
    c.add_argument(
        "--protocol",
        default="prototype",
        choices=PROTOCOLS,
        help="prototype: one prototype per object mask (the paper's); pixel: every pixel (default prototype)",
    )
    c.add_argument(
        "--saliency-source",
        default="model",
        choices=("model", "folder"),
        help="object masks of the prototype protocol: the model's saliency head, or --masks DIR",
    )
    c.add_argument(
        "--masks",
        default=None,
        help="object-mask folder (<DIR>/<id>.png, 0 = background), e.g. "
        "saliency.generate's output, for --saliency-source folder",
    )
    c.add_argument("--saliency-threshold", type=float, default=0.5, help="on the model's saliency (default 0.5)")
    c.add_argument("--clusters", default=None, help="apply this clusters.pt instead of fitting (same model and size)")
    c.add_argument("--pca-dim", type=int, default=32, help="PCA whitening before K-means; 0 = off (default 32)")
    c.add_argument("--seed", type=int, default=0, help="K-means and pixel-sampling seed (default 0)")
    c.add_argument("--nredo", type=int, default=10, help="K-means restarts (default 10)")
    c.add_argument("--niter", type=int, default=100, help="K-means iterations (default 100)")
    c.add_argument("--backend", default="auto", choices=BACKENDS, help="K-means backend (default auto)")
    c.add_argument("--fit-pixels", type=int, default=100_000, help="pixel protocol: pixels sampled for the fit")
    c.add_argument(
        "--matching",
        default=None,
        choices=("auto", "hungarian", "majority"),
        help="with --dataset: cluster -> class matching (as eval.kmeans)",
    )
    o = p.add_argument_group("outputs")
    o.add_argument("--out", required=True, help="output folder")
    o.add_argument("--overwrite", action="store_true", help="replace what an earlier run wrote in --out")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--save-every", type=int, default=50, help="save progress every N images (default 50)")
    o.add_argument("--sheet-size", type=int, default=8, help="segments per contact-sheet row (default 8)")
    o.add_argument("--thumb", type=int, default=96, help="contact-sheet tile side in pixels (default 96)")
    return p


def _load_any_model(args: argparse.Namespace, size: Any) -> FeatureModel:
    from eval.arguments import model_from_args

    if args.model:
        from maskcontrast.export import load_exported

        return load_exported(args.model, device=args.device, size=size, batch_size=args.batch_size)
    args.size = None if size is None else ([size] if isinstance(size, int) else list(size))
    return model_from_args(args)


def _build_images(args: argparse.Namespace) -> SegmentationDataset:
    masks = args.masks if args.saliency_source == "folder" and args.protocol == "prototype" else None
    if args.dataset:
        return dataset_from_args(args, masks=masks)
    folder = Path(args.images).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--images {folder}: folder not found")
    try:
        ds = build_dataset("image_folder", folder, masks=masks)
    except DataError as err:
        raise ValueError(
            f"--images {folder}: no images found (looked for .jpg, .png, .bmp, .tif, .webp ... "
            "recursively); point --images at a folder of photos"
        ) from err
    if args.limit is not None:
        ds.ids = ds.ids[: max(1, args.limit)]
    return ds


def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before a model is loaded or an image read."""
    if bool(args.checkpoint) == bool(args.model):
        raise ValueError("pass exactly one of --checkpoint FILE and --model FILE (an exported network)")
    if bool(args.images) == bool(args.dataset):
        raise ValueError("pass exactly one of --images DIR (any folder) and --dataset NAME (labelled, for mIoU)")
    if args.clusters is None:
        if args.k is None:
            raise ValueError("--k K is required (the number of clusters), unless --clusters FILE applies a saved one")
        check_k(args.k)
    elif args.k is not None:
        check_k(args.k)
    if args.saliency_source == "folder" and args.protocol == "prototype" and not args.masks:
        raise ValueError("--saliency-source folder needs --masks DIR (e.g. the output of python -m saliency.generate)")
    if args.masks and not Path(args.masks).is_dir():
        raise ValueError(f"--masks {args.masks}: folder not found")
    if not 0.0 < args.saliency_threshold < 1.0:
        raise ValueError(f"--saliency-threshold must lie in (0, 1), got {args.saliency_threshold}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    quiet_faiss()
    _check_args(args)
    out = Path(args.out).expanduser()
    saved = Clusters.load(args.clusters) if args.clusters else None
    if saved is not None:
        if args.k is not None and args.k != saved.k:
            raise ValueError(
                f"--k {args.k} differs from the {saved.k} clusters of --clusters {args.clusters}; "
                "leave --k out when applying saved clusters"
            )
        args.protocol = saved.protocol
        if saved.protocol == "prototype" and saved.saliency != args.saliency_source:
            raise ClustersError(
                f"--clusters {args.clusters} was fitted with --saliency-source {saved.saliency}; "
                f"pass --saliency-source {saved.saliency}" + (" --masks DIR" if saved.saliency == "folder" else "")
            )
    size_given = args.size is not None
    if size_given:
        from eval.arguments import size_arg

        size: Any = None if list(args.size) == [0] else size_arg(args.size)
    elif saved is not None:
        size = None if saved.size is None else (saved.size[0] if len(saved.size) == 1 else tuple(saved.size))
        log.info("input size from --clusters: %s", size_text(saved.size))
    else:
        size = DEFAULT_SIZE
    ds = _build_images(args)
    backend = resolve_backend(args.backend)
    model_file = args.model or args.checkpoint
    identity = {
        "model": checkpoint_fingerprint(model_file),
        "images": str(ds.root),
        "dataset": args.dataset,
        "dataset_args": parse_key_values(args.dataset_arg),
        "split": ds.split if args.dataset else None,
        "ids": identity_digest(ds.ids),
        "protocol": args.protocol,
        "k": saved.k if saved else args.k,
        "size": size_key(size),
        "pca_dim": args.pca_dim,
        "seed": args.seed,
        "nredo": args.nredo,
        "niter": args.niter,
        "backend": backend,
        "fit_pixels": args.fit_pixels if args.protocol == "pixel" else None,
        "saliency": [args.saliency_source, args.masks, args.saliency_threshold]
        if args.protocol == "prototype"
        else None,
        "clusters": checkpoint_fingerprint(args.clusters) if args.clusters else None,
    }
    claim = claim_run_folder(out, LAYOUT, identity=identity, overwrite=args.overwrite)
    if ds.mask_dir is not None:
        missing = [i for i in ds.ids if not ds.mask_path(i).is_file()]  # type: ignore[union-attr]
        if missing:
            raise ValueError(
                f"--masks {ds.mask_dir}: {len(missing)} of {len(ds)} images have no mask <id>.png, "
                f"e.g. {missing[:3]}; generate them (python -m saliency.generate) or remove those images"
            )
    model = _load_any_model(args, size)
    if args.protocol == "prototype" and args.saliency_source == "model" and not model.has_saliency:
        raise ValueError(
            f"{model_file} has no saliency head; pass --saliency-source folder --masks DIR, or --protocol pixel"
        )
    if saved is not None:
        saved.check(model, f"--clusters {args.clusters}")
    claim.prepare()
    progress = not args.no_progress
    log.info("segmenting %d images of %s with %s (%s protocol)", len(ds), ds.root, model_file, args.protocol)
    cache_dir = out / "cache"
    clusters_path = out / "clusters.pt"
    fit_state: dict[str, Any] | None = None
    if saved is not None:
        clusters = saved
        clusters.save(clusters_path)
    elif claim.reuse and clusters_path.is_file():
        clusters = Clusters.load(clusters_path)
        log.info("reusing the clustering of the interrupted run: %s", clusters_path)
        fit_state = load_fit_state(cache_dir, identity, args.save_every)
    else:
        clusters, fit_state = fit_pass(args, model, ds, cache_dir, identity, model_file, backend, progress)
        clusters.save(clusters_path)
    summary = assign_pass(args, model, ds, clusters, fit_state, out, identity, progress)
    summary.update(
        model=str(model_file),
        model_id=clusters.model_id,
        size=clusters.size,
        dataset=args.dataset,
        kmeans={
            "backend": backend,
            "nredo": args.nredo,
            "niter": args.niter,
            "pca_dim": args.pca_dim,
            "seed": args.seed,
        },
        clusters_file=str(args.clusters or clusters_path),
        units="fractions in [0, 1]",
    )
    palette = cluster_palette()
    write_sheets(args, ds, summary, out, palette)
    atomic_write_bytes(out / "index.html", index_html(summary, palette).encode("utf-8"))
    write_json(out / "segment.json", summary)
    if summary.get("scores"):
        s = summary["scores"]
        print(
            f"mIoU {100 * s['miou']:.2f} %, pixel accuracy {100 * s['pixel_acc']:.2f} % ({summary['k']} clusters "
            f"+ background, {s['matching']} matching)"
        )
    if summary["skipped"]:
        log.warning("skipped %d unreadable image(s): %s", len(summary["skipped"]), ", ".join(summary["skipped"]))
    print(
        f"wrote {summary['n_segmented']} label maps and overlays, {len(summary['clusters'])} contact sheets: "
        f"{out / 'index.html'}"
    )
    return summary

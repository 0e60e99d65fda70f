"""The two resumable passes of ``python -m eval.segment`` over a folder (fit, then label every image)
and its contact sheets."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.caches import StreamCache
from eval.outputs import safe_name
from eval.segment.clusters import (
    Clusters,
    fit_from_points,
    fit_points,
    label_output,
    label_prototype,
    model_foreground,
    model_identity,
    size_key,
)
from eval.segment.page import cluster_palette, contact_sheet, overlay_image, thumbnail, write_jpeg
from eval.stream import Unreadable, iter_readable_outputs
from maskcontrast.api import FeatureModel, FeatureOutput
from maskcontrast.data import DataError, SegmentationDataset
from maskcontrast.runs import identity_digest

__all__ = ["load_fit_state", "fit_pass", "assign_pass", "write_sheets"]

log = logging.getLogger("eval.segment")


def load_fit_state(cache_dir: Path, identity: dict[str, Any], every: int) -> dict[str, Any] | None:
    path = cache_dir / "fit.pt"
    if not path.is_file():
        return None
    return StreamCache(path, identity, every).load()[1]


def fit_pass(
    args: argparse.Namespace,
    model: FeatureModel,
    ds: SegmentationDataset,
    cache_dir: Path,
    identity: dict[str, Any],
    model_file: str,
    backend: str,
    progress: bool,
) -> tuple[Clusters, dict[str, Any]]:
    """Pass 1 (resumable): fit points of every image (the prototype protocol also keeps each
    object mask, so its labels need no second forward pass); then PCA and K-means."""
    from maskcontrast.data import write_mask

    cache = StreamCache(cache_dir / "fit.pt", identity, args.save_every)
    done, state = cache.load()
    chunks: list[np.ndarray] = [state["points"].numpy()] if state else []
    owners: list[np.ndarray] = [state["owner"].numpy()] if state else []
    skipped: dict[str, str] = dict(state["skipped"]) if state else {}
    per_image = max(1, math.ceil(args.fit_pixels / len(ds)))
    dim = model.embed_dim

    def snapshot() -> dict[str, Any]:
        pts = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        own = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        return {
            "points": torch.from_numpy(pts.astype(np.float32)),
            "owner": torch.from_numpy(own.astype(np.int64)),
            "skipped": dict(skipped),
        }

    for i, sample, o in iter_readable_outputs(
        model, ds, start=done, workers=args.workers, desc="fit", progress=progress
    ):
        if isinstance(sample, Unreadable):
            log.warning("skipping %s", sample.reason)
            skipped[sample.id] = sample.reason
        else:
            assert o is not None
            hw = sample.size
            fg = None
            if args.protocol == "prototype":
                fg = _cli_foreground(args, sample, o, hw, ds)
                write_mask(cache_dir / "fg" / f"{i:06d}.png", fg.cpu().numpy().astype(np.uint8))
            pts = fit_points(args.protocol, o, hw, fg, per_image=per_image, seed=args.seed, index=i)
            chunks.append(pts)
            owners.append(np.full(len(pts), i, np.int64))
        if cache.due(i + 1):
            cache.save(i + 1, snapshot())
    state = snapshot()
    cache.save(len(ds), state)
    if len(skipped) == len(ds):
        raise ValueError(f"no image of {ds.root} could be read (e.g. {next(iter(skipped.values()))})")
    x = state["points"].numpy()
    log.info(
        "fitting %d clusters on %d %s of dimension %d (%s)",
        args.k,
        len(x),
        "prototypes" if args.protocol == "prototype" else "pixels",
        x.shape[1],
        backend,
    )
    centroids, proj, objective = fit_from_points(
        x,
        args.k,
        args.protocol,
        pca_dim=args.pca_dim,
        seed=args.seed,
        nredo=args.nredo,
        niter=args.niter,
        backend=backend,
    )
    clusters = Clusters(
        args.protocol,
        args.k,
        centroids,
        proj[0] if proj else None,
        proj[1] if proj else None,
        model_identity(model),
        size_key(model.size),
        args.saliency_source if args.protocol == "prototype" else None,
        args.saliency_threshold,
        int(model.embed_dim),
        {
            "seed": args.seed,
            "objective": objective,
            "n_points": len(x),
            "n_images": len(ds) - len(skipped),
            "model_file": str(model_file),
            "backend": backend,
            "images": str(ds.root),
        },
    )
    return clusters, state


def _cli_foreground(
    args: argparse.Namespace, sample: Any, out: FeatureOutput, hw: tuple[int, int], ds: SegmentationDataset
) -> torch.Tensor:
    if args.saliency_source == "model":
        return model_foreground(out, hw, args.saliency_threshold)
    if sample.mask is None:
        raise DataError(f"object mask not found: {ds.mask_path(sample.id)}", path=str(ds.mask_path(sample.id)))
    return torch.from_numpy(sample.mask > 0).to(out.embedding.device)


def assign_pass(
    args: argparse.Namespace,
    model: FeatureModel,
    ds: SegmentationDataset,
    clusters: Clusters,
    fit_state: dict[str, Any] | None,
    out: Path,
    identity: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Pass 2 (resumable): label PNG and overlay of every image, its segments, and the confusion
    when the images have labels. The prototype protocol reuses pass 1's masks and prototypes."""
    from maskcontrast.data import read_index_png, write_mask

    out = Path(out)
    palette = cluster_palette()
    from_cache = clusters.protocol == "prototype" and fit_state is not None and (out / "cache" / "fg").is_dir()
    protos: dict[int, torch.Tensor] = {}
    if from_cache:
        assert fit_state is not None
        for row, owner in zip(fit_state["points"], fit_state["owner"].tolist()):
            protos[int(owner)] = row
    c = ds.info.num_classes
    rows = clusters.k + 1 if clusters.protocol == "prototype" else clusters.k
    cache = StreamCache(
        out / "cache" / "assign.pt",
        {**identity, "clusters": identity_digest([clusters.centroids.tolist(), clusters.model_id])},
        args.save_every,
    )
    done, state = cache.load()
    records: list[dict[str, Any]] = list(state["records"]) if state else []
    skipped: dict[str, str] = dict(state["skipped"]) if state else {}
    conf = state["conf"].numpy() if state and c else (np.zeros((rows, c), np.int64) if c else None)

    def snapshot() -> dict[str, Any]:
        snap: dict[str, Any] = {"records": list(records), "skipped": dict(skipped)}
        if conf is not None:
            snap["conf"] = torch.from_numpy(conf)
        return snap

    run_model = None if from_cache else model
    for i, sample, o in iter_readable_outputs(
        run_model,
        ds,
        start=done,
        workers=args.workers,
        desc="segment",
        progress=progress,
        skip=fit_state["skipped"] if from_cache and fit_state is not None else None,
    ):
        if isinstance(sample, Unreadable):
            if sample.id not in skipped:
                log.warning("skipping %s", sample.reason)
            skipped[sample.id] = sample.reason
        else:
            hw = sample.size
            if from_cache:
                fg = read_index_png(out / "cache" / "fg" / f"{i:06d}.png") > 0
                labels, segs = label_prototype(clusters, protos.get(i), fg)
            else:
                assert o is not None
                fg_t = _cli_foreground(args, sample, o, hw, ds) if clusters.protocol == "prototype" else None
                labels, segs = label_output(clusters, o, hw, fg_t)
            name = safe_name(sample.id)
            write_mask(out / "labels" / f"{name}.png", labels, palette)
            write_jpeg(out / "overlays" / f"{name}.jpg", overlay_image(sample.image, labels, palette))
            records.append({"index": i, "id": sample.id, "segments": [[s.cluster, s.distance, s.pixels] for s in segs]})
            if conf is not None and sample.label is not None:
                from eval.metrics import confusion_matrix

                pred = labels.astype(np.int64) - (0 if clusters.protocol == "prototype" else 1)
                conf += confusion_matrix(pred, sample.label, rows, c, ds.info.ignore_index)
        if cache.due(i + 1):
            cache.save(i + 1, snapshot())
    cache.save(len(ds), snapshot())
    images = [
        {
            "id": r["id"],
            "labels": f"labels/{safe_name(r['id'])}.png",
            "overlay": f"overlays/{safe_name(r['id'])}.jpg",
            "clusters": sorted({int(s[0]) for s in r["segments"]}),
        }
        for r in records
    ]
    members: dict[int, list[tuple[float, int, int]]] = {cl: [] for cl in range(1, clusters.k + 1)}
    for j, r in enumerate(records):
        for cl, dist, _pixels in r["segments"]:
            members[int(cl)].append((float(dist), j, int(r["index"])))
    summary: dict[str, Any] = {
        "protocol": clusters.protocol,
        "k": clusters.k,
        "n_images": len(ds),
        "n_segmented": len(records),
        "skipped": skipped,
        "saliency_source": (clusters.saliency if clusters.protocol == "prototype" else "none (pixel protocol)"),
        "images": images,
        "clusters": [
            {
                "cluster": cl,
                "segments": len(m),
                "members": [j for _, j, _ in sorted(m)],
                "_order": sorted(m),
                "sheet": None,
            }
            for cl, m in members.items()
        ],
    }
    if conf is not None and len(records) and any(r for r in records):
        from eval.kmeans.results import summarize_seeds

        matching = args.matching or ("hungarian" if clusters.protocol == "prototype" else "auto")
        s = summarize_seeds([conf], [args.seed], ds.info.classes, matching)
        if conf.sum() > 0:
            summary["scores"] = {
                "miou": s["miou_mean"],
                "pixel_acc": s["pixel_acc"],
                "per_class": s["per_class"],
                "mapping": s["seeds"][0]["mapping"],
                "matching": matching,
                "rows": "0 = background, 1..k clusters"
                if clusters.protocol == "prototype"
                else "0..k-1 = clusters 1..k",
            }
    return summary


def write_sheets(
    args: argparse.Namespace, ds: SegmentationDataset, summary: dict[str, Any], out: Path, palette: np.ndarray
) -> None:
    """A contact sheet per cluster: its ``--sheet-size`` most typical segments, then as many of its
    least typical ones (never the same segment twice)."""
    from maskcontrast.data import read_index_png

    n = max(1, args.sheet_size)
    for cl in summary["clusters"]:
        order = cl.pop("_order")
        if not order:
            continue
        most = order[:n]
        least = order[n:][-n:][::-1]
        tiles: list[list[np.ndarray]] = [[], []]
        for row, chosen in enumerate((most, least)):
            for _dist, j, _index in chosen:
                img_id = summary["images"][j]["id"]
                try:
                    image = ds.load(img_id).image
                except DataError:
                    continue
                labels = read_index_png(out / summary["images"][j]["labels"])
                tiles[row].append(thumbnail(image, labels == cl["cluster"], args.thumb))
        rel = f"sheets/cluster_{cl['cluster']:03d}.jpg"
        write_jpeg(out / rel, contact_sheet(tiles[0], tiles[1], n, args.thumb, palette[cl["cluster"]]))
        cl["sheet"] = rel

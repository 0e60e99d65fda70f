"""The report folder of ``python -m maskcontrast.demo``: ``summary.md``, ``headline.json``, the
per-class IoU chart, the overlay panels, the segment page and the TensorBoard logs."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from maskcontrast.data.io import read_index_png, write_panel
from maskcontrast.demo_stages import Demo
from maskcontrast.utils import atomic_write_bytes

__all__ = ["per_class_chart", "overlay_panels", "write_report"]


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def per_class_chart(path: Path, results: dict[str, dict[str, float | None]], title: str) -> None:
    """A grouped horizontal bar chart of per-class IoU (percent), one colour per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(next(iter(results.values())).keys())
    n, m = len(classes), len(results)
    height = 0.8 / m
    fig, ax = plt.subplots(figsize=(7, 0.32 * n * max(1, m / 2) + 1.2))
    ys = np.arange(n)
    for j, (name, per_class) in enumerate(results.items()):
        vals = [100 * (per_class.get(c) or 0.0) for c in classes]
        ax.barh(ys + j * height, vals, height, label=name)
    ax.set_yticks(ys + 0.4 - height / 2, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def overlay_panels(demo: Demo, n: int) -> list[Path]:
    """``image | ground truth | fused mask | K-means (prototype, model saliency) | K-means (prototype,
    fused masks) | linear`` for the linear probe's first val images."""
    from maskcontrast.data import build_dataset

    ds = build_dataset("msrc", demo.data)
    palette = ds.info.palette_array()
    lin_pred = demo.eval_dir / "linear" / "vis" / "pred"
    km_pred = demo.eval_dir / "kmeans_prototype_vis" / "pred"
    km_fused_pred = demo.eval_dir / "kmeans_prototype_fused_vis" / "pred"
    out_dir = demo.report_dir / "overlays"
    out_dir.mkdir(parents=True, exist_ok=True)

    def by_name(folder: Path) -> dict[str, Path]:  # "<index>_<safe id>.png" -> "<safe id>.png"
        return {p.name.split("_", 1)[1]: p for p in sorted(folder.glob("*.png"))}

    km_files, km_fused_files = by_name(km_pred), by_name(km_fused_pred) if km_fused_pred.is_dir() else {}
    written = []
    for name, lin in list(by_name(lin_pred).items())[:n]:
        km, km_fused = km_files.get(name), km_fused_files.get(name)
        if km is None or km_fused is None:
            continue
        sample_id = Path(name).stem.replace("__", "/")
        sample = ds.load(sample_id)
        gt = palette[sample.label] if sample.label is not None else np.zeros_like(sample.image)
        mask_file = demo.masks / f"{sample_id}.png"
        fused = read_index_png(mask_file) > 0 if mask_file.is_file() else np.zeros(sample.image.shape[:2], bool)
        mask_rgb = np.where(fused[..., None], sample.image, (sample.image * 0.25).astype(np.uint8))
        target = out_dir / name
        write_panel(
            target,
            [
                sample.image,
                gt,
                mask_rgb,
                palette[read_index_png(km)],
                palette[read_index_png(km_fused)],
                palette[read_index_png(lin)],
            ],
        )
        written.append(target)
    return written


def write_report(demo: Demo) -> dict[str, Any]:
    """Write ``report/`` and return the headline numbers."""
    rep = demo.report_dir
    rep.mkdir(parents=True, exist_ok=True)
    km_proto = _load_json(demo.eval_dir / "kmeans_prototype.json")
    km_fused = _load_json(demo.eval_dir / "kmeans_prototype_fused.json")
    segment = _load_json(demo.segment_dir / "segment.json")
    km_pixel = _load_json(demo.eval_dir / "kmeans_pixel.json")
    linear = _load_json(demo.eval_dir / "linear" / "results.json")
    headline = {
        "kmeans_prototype_miou": km_proto["miou_mean"],
        "kmeans_prototype_miou_std": km_proto["miou_std"],
        "kmeans_prototype_fused_miou": km_fused["miou_mean"],
        "kmeans_prototype_fused_miou_std": km_fused["miou_std"],
        "kmeans_pixel_miou": km_pixel["miou_mean"],
        "kmeans_pixel_miou_std": km_pixel["miou_std"],
        "linear_miou": linear["miou"],
    }
    per_class = {
        "K-means, prototype (model saliency)": km_proto["per_class"],
        "K-means, prototype (fused masks)": km_fused["per_class"],
        "K-means, pixel": km_pixel["per_class"],
        "linear probe": linear["per_class"],
    }
    per_class_chart(rep / "per_class_iou.png", per_class, "MSRC-v2 (21 classes): per-class IoU")
    overlays = overlay_panels(demo, demo.budget.overlays)
    tb = rep / "tensorboard"
    for name, src in (
        ("moco", demo.moco_dir / "tb"),
        ("pretrain", demo.pretrain_dir / "tb"),
        ("linear", demo.eval_dir / "linear" / "tb"),
    ):
        if src.is_dir():
            shutil.copytree(src, tb / name, dirs_exist_ok=True)
    seg_report = rep / "segment"
    for part in ("index.html", "overlays", "sheets", "labels", "clusters.pt", "segment.json"):
        src = demo.segment_dir / part
        if src.is_dir():
            shutil.copytree(src, seg_report / part, dirs_exist_ok=True)
        elif src.is_file():
            seg_report.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, seg_report / part)
    seg_scores = segment.get("scores") or {}
    classes = list(km_proto["per_class"])

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    lines = [
        "# maskcontrast demo report",
        "",
        f"Data: MSRC-v2 at `{demo.data}` ({km_proto['n_images']} images, 21-class protocol). "
        f"Budget: {demo.budget}. Seed {demo.seed}.",
        "",
        "## Headline (mIoU, %)",
        "",
        "| evaluation | mIoU | notes |",
        "|---|---|---|",
        f"| K-means, prototype protocol (paper), object masks = the model's saliency head | "
        f"{pct(km_proto['miou_mean'])} ± {pct(km_proto['miou_std'])} | k = {km_proto['k']}, "
        f"{len(km_proto['seeds'])} seeds, all images, pixel accuracy {pct(km_proto['pixel_acc'])} |",
        f"| K-means, prototype protocol (paper), object masks = the fused masks of `saliency.generate` | "
        f"{pct(km_fused['miou_mean'])} ± {pct(km_fused['miou_std'])} | k = {km_fused['k']}, "
        f"{len(km_fused['seeds'])} seeds, all images, pixel accuracy {pct(km_fused['pixel_acc'])} |",
        f"| K-means, pixel protocol | {pct(km_pixel['miou_mean'])} ± {pct(km_pixel['miou_std'])} | "
        f"k = {km_pixel['k']}, {len(km_pixel['seeds'])} seeds, all images, no object masks, pixel accuracy "
        f"{pct(km_pixel['pixel_acc'])} |",
        f"| linear probe | {pct(linear['miou'])} | trained on {linear['n_train']} images, scored on {linear['n_val']} "
        "held-out images (seeded split) |",
        "",
        "After a short run the saliency head often calls almost everything salient, so the first row's clusters "
        "cover whole images; the second row uses the fused classical masks the model was trained with.",
        "",
        f"**Segment page**: [segment/index.html](segment/index.html): `eval.segment` on the {segment['n_segmented']} "
        f"held-out images, {segment['k']} clusters, fused masks, network input {demo.budget.image_size} px"
        + (
            f" (mIoU {pct(seg_scores.get('miou'))}, pixel accuracy {pct(seg_scores.get('pixel_acc'))} after "
            "matching, one K-means seed)"
            if seg_scores
            else ""
        )
        + ".",
        "",
        "These numbers come from a few minutes of CPU training; they show that the pipeline works, not what the "
        "method reaches with a full budget (docs/BENCHMARKS.md compares baselines at a fixed budget).",
        "",
        "## Per-class IoU (%)",
        "",
        "![per-class IoU](per_class_iou.png)",
        "",
        "| class | K-means prototype (model saliency) | K-means prototype (fused masks) | K-means pixel | linear |",
        "|---|---|---|---|---|",
        *(
            f"| {c} | {pct(km_proto['per_class'].get(c))} | {pct(km_fused['per_class'].get(c))} | "
            f"{pct(km_pixel['per_class'].get(c))} | {pct(linear['per_class'].get(c))} |"
            for c in classes
        ),
        "",
        "## Pictures (image | ground truth | fused object mask | K-means prototype, model saliency | "
        "K-means prototype, fused masks | linear probe)",
        "",
        *(f"![{p.stem}](overlays/{p.name})" for p in overlays),
        "",
        "## Commands (wall time on this machine)",
        "",
        "| stage | seconds | command |",
        "|---|---|---|",
        *(
            f"| {s.name} | {s.seconds:.0f}{' (earlier run)' if s.skipped else ''} | `{s.shell}` |"
            for s in demo.runner.records
        ),
        "",
        f"TensorBoard: `tensorboard --logdir {tb}`",
        "",
    ]
    (rep / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    (rep / "headline.json").write_text(json.dumps(headline, indent=2), encoding="utf-8")
    return headline

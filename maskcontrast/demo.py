"""The main job, end to end: ``python -m maskcontrast.demo`` (``make demo``; ``make demo FAST=1``).

Its data is MSRC-v2, found in this order:

* ``--data DIR`` (either layout: the official ``Images/*.bmp`` + colour ``GroundTruth/*_GT.bmp``,
  or the shared copy's PNGs);
* ``$MASKCONTRAST_DATA/msrc_v2``;
* ``<cache>/msrc_v2``, where ``<cache>`` is ``$MASKCONTRAST_CACHE`` or ``~/.cache/maskcontrast``;
  when it is not there yet, the official archive is downloaded into it (resumable, MD5-checked,
  extracted atomically; :func:`maskcontrast.data.download.download_msrc`).
  ``$MASKCONTRAST_MSRC_URL`` (one or more URLs, separated by spaces) replaces the mirrors and
  ``$MASKCONTRAST_MSRC_MD5`` the digest. Without network it stops with one message that names the
  URLs it tried and the alternatives, and leaves nothing half-written.

On that data it runs, each stage through the same command line a user would type:

1. ``saliency.generate``: unsupervised object masks (fused classical estimators);
2. ``maskcontrast.moco``: a MoCo v2 initialisation on the images (labels unused);
3. ``maskcontrast.pretrain``: MaskContrast from that initialisation, with the masks of step 1;
4. ``eval.linear`` (CPU config, seeded 80/20 split) and ``eval.kmeans`` (prototype protocol with
   the object masks of the model's saliency head and with the fused masks of step 1, and the pixel
   protocol);
5. ``eval.segment`` on the linear probe's held-out images (fused masks, the network at the
   training image size): label maps, overlays, contact sheets and an ``index.html``;
6. a report folder: ``summary.md`` (headline numbers, per-class IoU, every command with its wall
   time, a link to the segment page), ``per_class_iou.png``, ``overlays/`` (image | ground truth |
   fused mask | K-means with the model's saliency | K-means with the fused masks | linear),
   ``segment/`` (the page) and the TensorBoard logs of every training stage.

Every stage is resumable: run the same command again after an interruption and finished stages
are skipped. ``--overwrite`` starts afresh. The stages run as subprocesses, so this module imports
nothing from ``saliency`` or ``eval``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskcontrast.data.download import MSRC_RESOURCES, ChecksumMismatch, DownloadError, download_msrc, mismatch_hint
from maskcontrast.data.io import read_index_png, write_panel
from maskcontrast.data.paths import data_root
from maskcontrast.stages import REPO, StageFailed, StageRunner
from maskcontrast.utils import atomic_write_bytes, setup_logging

log = logging.getLogger("maskcontrast.demo")

CONFIGS = REPO / "configs"

#: environment variables of the data fallback
CACHE_ENV, URL_ENV, MD5_ENV = "MASKCONTRAST_CACHE", "MASKCONTRAST_MSRC_URL", "MASKCONTRAST_MSRC_MD5"

ALTERNATIVES = """\
Alternatives:
  * pass --data DIR: an MSRC-v2 copy (Images/ + GroundTruth/, official BMP or shared PNG layout);
  * set MASKCONTRAST_DATA to a folder that holds msrc_v2/;
  * download it on a machine with network: python -m maskcontrast.data.download msrc --root DIR
    (then --data DIR/msrc_v2), or put msrc_objcategimagedatabase_v2.zip into {downloads}/
    and run the demo again (it is checked and used);
  * MASKCONTRAST_MSRC_URL=URL to use a mirror (MASKCONTRAST_MSRC_MD5=HEX for its digest)."""


@dataclass(frozen=True)
class Budget:
    """Stage lengths of one demo preset."""

    moco_steps: int
    moco_batch: int
    pretrain_steps: int
    pretrain_batch: int
    image_size: int
    linear_epochs: int
    kmeans_seeds: int
    overlays: int
    #: eval.linear image size (base_size, eval_size, crop_size; None: the config's 160)
    linear_size: int | None = None
    #: eval.kmeans --fit-pixels of the pixel protocol (None: its default)
    fit_pixels: int | None = None

    def settings(self) -> dict[str, int]:
        """The fields that are set (what ``demo.json`` compares on a re-run)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


#: measured on a 2-core CPU: default 33 min (limit 45), FAST 8 min (limit 10) (docs/BENCHMARKS.md, "Main job");
#: tiny: a couple of steps per stage, for tests and smoke checks of the plumbing (its numbers mean nothing)
PRESETS = {
    "default": Budget(
        moco_steps=120,
        moco_batch=64,
        pretrain_steps=300,
        pretrain_batch=16,
        image_size=128,
        linear_epochs=10,
        kmeans_seeds=5,
        overlays=6,
    ),
    "fast": Budget(
        moco_steps=20,
        moco_batch=32,
        pretrain_steps=40,
        pretrain_batch=8,
        image_size=96,
        linear_epochs=3,
        kmeans_seeds=2,
        overlays=4,
        fit_pixels=30000,
    ),
    "tiny": Budget(
        moco_steps=2,
        moco_batch=8,
        pretrain_steps=2,
        pretrain_batch=4,
        image_size=64,
        linear_epochs=1,
        kmeans_seeds=1,
        overlays=1,
        linear_size=64,
        fit_pixels=5000,
    ),
}


@dataclass
class Demo:
    out: Path
    data: Path
    budget: Budget
    seed: int = 0
    threads: int = 0
    runner: StageRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = StageRunner(self.out / "stages.json")

    # -- paths ---------------------------------------------------------------------------------
    @property
    def masks(self) -> Path:
        return self.out / "saliency" / "masks"

    @property
    def moco_dir(self) -> Path:
        return self.out / "moco"

    @property
    def pretrain_dir(self) -> Path:
        return self.out / "pretrain"

    @property
    def eval_dir(self) -> Path:
        return self.out / "eval"

    @property
    def report_dir(self) -> Path:
        return self.out / "report"

    @property
    def segment_dir(self) -> Path:
        return self.eval_dir / "segment"

    # -- running -------------------------------------------------------------------------------
    def run(self, name: str, args: list[str], done: Path | None = None) -> None:
        try:
            self.runner.run(name, args, done)
        except StageFailed as err:
            raise SystemExit(
                f"maskcontrast.demo: {err}\nFix the cause and run the demo again: finished stages are kept."
            ) from err

    def trainer_overrides(self, run_dir: Path, steps: int, batch: int) -> list[str]:
        out = [
            f"trainer.run_dir={run_dir}",
            f"trainer.max_steps={steps}",
            f"optim.batch_size={batch}",
            f"data.image_size={self.budget.image_size}",
            f"trainer.seed={self.seed}",
            "trainer.save_every_epochs=0",
        ]
        if self.threads:
            out.append(f"trainer.threads={self.threads}")
        return out

    def all_stages(self) -> None:
        b = self.budget
        data_source = f"data.sources=[{{name: msrc, root: '{self.data}'}}]"
        self.run(
            "saliency",
            [
                "saliency.generate",
                "--dataset",
                "msrc",
                "--root",
                str(self.data),
                "--out",
                str(self.masks),
                "--method",
                "fused",
                "--workers",
                "2",
            ],
        )
        self.run(
            "moco",
            [
                "maskcontrast.moco",
                "--config",
                str(CONFIGS / "moco" / "cpu_shared.yaml"),
                "--resume",
                data_source,
                *self.trainer_overrides(self.moco_dir, b.moco_steps, b.moco_batch),
            ],
        )
        self.run(
            "pretrain",
            [
                "maskcontrast.pretrain",
                "--config",
                str(CONFIGS / "pretrain" / "msrc.yaml"),
                "--resume",
                data_source,
                f"data.masks={self.masks}",
                f"model.backbone.init={self.moco_dir / 'last.pt'}",
                *self.trainer_overrides(self.pretrain_dir, b.pretrain_steps, b.pretrain_batch),
            ],
        )
        ckpt = str(self.pretrain_dir / "last.pt")
        common = ["--checkpoint", ckpt, "--dataset", "msrc", "--root", str(self.data), "--no-progress"]
        linear = self.eval_dir / "linear"
        linear_size = (
            []
            if b.linear_size is None
            else [f"base_size={b.linear_size}", f"eval_size={b.linear_size}", f"augment.crop_size={b.linear_size}"]
        )
        self.run(
            "linear",
            [
                "eval.linear",
                "--config",
                str(CONFIGS / "eval" / "linear_cpu.yaml"),
                *common,
                "--out",
                str(linear),
                "--vis",
                str(b.overlays),
                f"epochs={b.linear_epochs}",
                f"data.split_seed={self.seed}",
                *linear_size,
            ],
            done=linear / "results.json",
        )
        fused = ["--saliency-source", "folder", "--saliency-dir", str(self.masks)]
        for name, protocol, extra in (
            ("prototype", "prototype", []),
            ("prototype_fused", "prototype", fused),
            ("pixel", "pixel", []),
        ):
            js = self.eval_dir / f"kmeans_{name}.json"
            fit = ["--fit-pixels", str(b.fit_pixels)] if protocol == "pixel" and b.fit_pixels is not None else []
            self.run(
                f"kmeans-{name.replace('_', '-')}",
                [
                    "eval.kmeans",
                    *common,
                    "--protocol",
                    protocol,
                    "--k",
                    "21",
                    "--seeds",
                    str(b.kmeans_seeds),
                    "--json",
                    str(js),
                    "--vis",
                    str(b.overlays),
                    "--vis-ids",
                    str(linear / "split_val.txt"),
                    "--overwrite",
                    *extra,
                    *fit,
                ],
                done=js,
            )
        n_val = len([x for x in (linear / "split_val.txt").read_text().split() if x])
        self.run(
            "segment",
            [
                "eval.segment",
                *common,
                "--ids",
                str(linear / "split_val.txt"),
                "--k",
                str(max(1, min(20, n_val))),
                "--saliency-source",
                "folder",
                "--masks",
                str(self.masks),
                "--size",
                str(b.image_size),
                "--seed",
                str(self.seed),
                "--out",
                str(self.segment_dir),
            ],
            done=self.segment_dir / "segment.json",
        )


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def find_data(arg: str | None) -> Path | None:
    """``--data`` when given, else ``$MASKCONTRAST_DATA/msrc_v2``; None when neither is there."""
    if arg:
        # absolute, like data_root(): the stage commands must not depend on how the path was spelled
        path = Path(arg).expanduser().resolve()
        return path if path.is_dir() else None
    root = data_root()
    if root is not None and (root / "msrc_v2").is_dir():
        return root / "msrc_v2"
    return None


def cache_dir() -> Path:
    """``$MASKCONTRAST_CACHE`` or ``~/.cache/maskcontrast`` (absolute)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value or "~/.cache/maskcontrast").expanduser().resolve()


def msrc_sources() -> tuple[list[str] | None, str | None]:
    """The mirrors and digest from ``$MASKCONTRAST_MSRC_URL`` (space-separated) and
    ``$MASKCONTRAST_MSRC_MD5``; None where unset (the official ones are used)."""
    urls = os.environ.get(URL_ENV, "").split()
    md5 = os.environ.get(MD5_ENV, "").strip()
    return (urls or None), (md5 or None)


def _remove_new_empty_dirs(dirs: list[Path], existed: set[Path]) -> None:
    for d in dirs:  # deepest first
        if d not in existed and d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def fetch_demo_data(cache: Path, progress: bool | None = True) -> Path:
    """``<cache>/msrc_v2``, downloading the official MSRC-v2 archive when it is not there.

    Raises:
        SystemExit: the download failed (no network, a checksum mismatch, a bad archive); the
            message names the URLs tried and the alternatives. Folders this call created are
            removed again when they are empty; a partial download stays as ``<archive>.part``
            (the next run resumes it) and is named in the message.
    """
    folder = cache / MSRC_RESOURCES[0].dest
    if (folder / MSRC_RESOURCES[0].marker).is_dir():
        log.info("demo data: MSRC-v2 in the cache %s", folder)
        return folder
    urls, md5 = msrc_sources()
    try:
        urls_tried = list(urls or MSRC_RESOURCES[0].urls)
        downloads = cache / "downloads"
        created = [downloads, *[p for p in (cache, *cache.parents) if not p.exists()]]
        existed = {p for p in created if p.exists()}
        log.info("no demo data found: downloading MSRC-v2 into %s (from %s)", cache, " or ".join(urls_tried))
        try:
            return download_msrc(cache, urls=urls, md5=md5, progress=progress)
        finally:
            _remove_new_empty_dirs(created, existed)
    except ValueError as err:  # a malformed MASKCONTRAST_MSRC_MD5
        raise SystemExit(f"maskcontrast.demo: {MD5_ENV}: {err}") from err
    except ChecksumMismatch as err:
        print(
            "maskcontrast.demo: no demo data found, and the downloaded MSRC-v2 archive failed its check:\n"
            f"  {err}\n{mismatch_hint(err, MD5_ENV + '={actual}')}\n"
            f"{ALTERNATIVES.format(downloads=cache / 'downloads')}",
            file=sys.stderr,
        )
        raise SystemExit(2) from err
    except DownloadError as err:
        archive = cache / "downloads" / MSRC_RESOURCES[0].filename
        part = archive.with_name(archive.name + ".part")
        left = (
            [p for p in sorted(archive.parent.glob(archive.name + ".*")) if p != part]
            if archive.parent.is_dir()
            else []
        )
        if part.is_file():
            kept = f"{part.stat().st_size} bytes are kept in {part}; running again resumes there."
        elif left:
            kept = f"Nothing was extracted; left for inspection: {', '.join(map(str, left))}."
        else:
            kept = f"Nothing was written under {cache}."
        tried = "\n".join(f"  {u}" for u in (err.urls or urls_tried))
        print(
            f"maskcontrast.demo: no demo data found, and downloading MSRC-v2 failed.\nTried, in order:\n{tried}\n"
            f"Error: {err}\n{kept}\n{ALTERNATIVES.format(downloads=cache / 'downloads')}",
            file=sys.stderr,
        )
        raise SystemExit(2) from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.demo",
        description="The main job end to end on MSRC-v2: saliency masks -> MoCo -> MaskContrast -> K-means "
        "(prototype + pixel protocols) and linear probe -> report folder. Resumable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Environment: MASKCONTRAST_DATA (a folder holding msrc_v2/), MASKCONTRAST_CACHE (where MSRC-v2 is "
        "downloaded when no data is found), MASKCONTRAST_MSRC_URL (mirrors for that download, separated by spaces) "
        "and MASKCONTRAST_MSRC_MD5 (their digest). docs/DATA.md, 'Where make demo gets its data'.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (report in <out>/report)")
    p.add_argument(
        "--data",
        default=None,
        help="MSRC-v2 folder (default: $MASKCONTRAST_DATA/msrc_v2, else $MASKCONTRAST_CACHE/msrc_v2 with "
        "MASKCONTRAST_CACHE=~/.cache/maskcontrast by default, downloaded there when missing)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fast", action="store_true", help="the ~8 minute preset (shorter stages, smaller images)")
    size.add_argument(
        "--tiny", action="store_true", help="a couple of steps per stage: checks the plumbing, numbers mean nothing"
    )
    p.add_argument("--moco-steps", type=int, default=None, help="override the preset's MoCo steps")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the preset's MaskContrast steps")
    p.add_argument("--seed", type=int, default=0, help="training and split seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per training process (0: default)")
    p.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    if not CONFIGS.is_dir():
        raise SystemExit(f"maskcontrast.demo: config folder {CONFIGS} not found; run the demo from a source checkout")
    data = find_data(args.data)
    if data is None and args.data:
        raise SystemExit(f"maskcontrast.demo: --data {args.data}: folder not found")
    if data is None:
        data = fetch_demo_data(cache_dir())
    log.info("demo data: %s", data)
    preset = PRESETS["tiny" if args.tiny else "fast" if args.fast else "default"]
    budget = Budget(
        **{
            **preset.__dict__,
            **({"moco_steps": args.moco_steps} if args.moco_steps is not None else {}),
            **({"pretrain_steps": args.pretrain_steps} if args.pretrain_steps is not None else {}),
        }
    )
    out = Path(args.out).expanduser().resolve()
    marker = out / "demo.json"
    settings = {"data": str(data), "budget": budget.settings(), "seed": args.seed}
    if out.exists() and any(out.iterdir()):
        if args.overwrite:
            shutil.rmtree(out)
        elif not marker.is_file() or json.loads(marker.read_text())["settings"] != settings:
            raise SystemExit(
                f"maskcontrast.demo: {out} holds other outputs (or a demo with other settings); "
                "pass --overwrite to replace them or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"settings": settings}, indent=2), encoding="utf-8")
    demo = Demo(out=out, data=data, budget=budget, seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    demo.all_stages()
    headline = write_report(demo)
    total = time.perf_counter() - t0
    print()
    print(f"maskcontrast demo finished in {total / 60:.1f} min; report: {demo.report_dir / 'summary.md'}")
    print(
        f"  K-means, prototype protocol: mIoU {100 * headline['kmeans_prototype_miou']:.1f} "
        f"± {100 * headline['kmeans_prototype_miou_std']:.1f} %"
    )
    print(
        f"  K-means, prototype, fused masks: mIoU {100 * headline['kmeans_prototype_fused_miou']:.1f} "
        f"± {100 * headline['kmeans_prototype_fused_miou_std']:.1f} %"
    )
    print(f"  segment page: {demo.report_dir / 'segment' / 'index.html'}")
    print(
        f"  K-means, pixel protocol:     mIoU {100 * headline['kmeans_pixel_miou']:.1f} "
        f"± {100 * headline['kmeans_pixel_miou_std']:.1f} %"
    )
    print(f"  linear probe:                mIoU {100 * headline['linear_miou']:.1f} %")
    return headline


if __name__ == "__main__":
    main()

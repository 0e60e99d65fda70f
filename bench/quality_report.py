"""The tables of ``bench/quality.py``: every result JSON of a run aggregated into ``quality.json`` and
``quality.md``, and the end-of-training signal of each MaskContrast run (docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from objectives import LABELS as DENSE_LABELS
from omegaconf import OmegaConf

__all__ = ["write_report", "training_signal"]


def write_report(q: Any, models: list[str]) -> dict:
    """Aggregate every result JSON of the run ``q`` (a ``quality.Quality``: its ``args``, ``out``,
    ``runner``, ``failed`` and command line) into ``quality.json`` and ``quality.md``."""

    def load(path: Path) -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    def cell(values: list[tuple[float, float]]) -> str:
        """mean over training seeds of the K-means means; +- K-means std (1 seed) or seed std."""
        if not values:
            return "n/a"
        means = [100 * m for m, _ in values]
        if len(values) == 1:
            return f"{means[0]:.1f} ± {100 * values[0][1]:.1f}"
        return f"{statistics.mean(means):.1f} ± {statistics.stdev(means):.1f} ({', '.join(f'{v:.1f}' for v in means)})"

    groups = {g: [g] for g in "ab" if g in q.args.models}
    groups.update({g: [g] for g in "efgh" if g in q.args.models})
    for m in models:
        if m[0] in "cd" and "_seed" in m:
            groups.setdefault(m[0], []).append(m)
    labels = {
        "a": "(a) random init",
        "b": "(b) MoCo v2 only",
        "c": "(c) MaskContrast from random",
        "d": "(d) MaskContrast from MoCo (paper recipe)",
        **DENSE_LABELS,
    }
    results: dict = {"datasets": {}, "stages": q.runner.finished}
    lines = []
    for ev in q.args.eval_sets:
        rows = []
        table = {}
        for g, members in groups.items():
            entry = {}
            for key, fname in (
                ("prototype_folder", "kmeans_prototype_folder.json"),
                ("prototype_model", "kmeans_prototype_model.json"),
                ("pixel", "kmeans_pixel.json"),
            ):
                vals = [
                    (r["miou_mean"], r["miou_std"]) for m in members if (r := load(q.out / "eval" / m / ev / fname))
                ]
                entry[key] = vals
            entry["linear"] = [
                (r["miou"], 0.0) for m in members if (r := load(q.out / "eval" / m / ev / "linear" / "results.json"))
            ]
            table[g] = entry
            lin = entry["linear"]
            lin_cell = (
                "n/a"
                if not lin
                else (
                    f"{100 * lin[0][0]:.1f}"
                    if len(lin) == 1
                    else f"{statistics.mean(100 * v for v, _ in lin):.1f} ± {statistics.stdev(100 * v for v, _ in lin):.1f}"
                )
            )
            rows.append(
                f"| {labels[g]} | {cell(entry['prototype_folder'])} | {cell(entry['prototype_model'])} | "
                f"{cell(entry['pixel'])} | {lin_cell} |"
            )
        results["datasets"][ev] = table
        lines += [
            f"### {ev}",
            "",
            "| model | K-means prototype (fused masks) | K-means prototype (own saliency) | K-means pixel | linear |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    signal = {m: t for m in models if m[0] in "cdg" and (t := training_signal(q.out / "train" / m))}
    results["training"] = signal
    results["failed_stages"] = q.failed
    if signal:
        lines += [
            "### End of training (pixel-to-prototype task, mean of the last 10% of logged steps)",
            "",
            "| model | top-1 | chance (1 / candidates) | top-1 / chance | contrastive loss | log(candidates) |",
            "|---|---|---|---|---|---|",
            *(
                f"| {m} | {t['top1']:.3f} | {t['chance']:.4f} | {t['top1'] / t['chance']:.1f} | "
                f"{t['loss_contrastive']:.3f} | {-math.log(t['chance']):.3f} |"
                for m, t in signal.items()
            ),
            "",
        ]
    stage_rows = [
        f"| {n} | {s['seconds'] / 60:.1f} | {s.get('cpu_seconds', float('nan')) / 60:.1f} | `{s['command']}` |"
        for n, s in q.runner.finished.items()
    ]
    lines += ["### Stages", "", "| stage | wall min | CPU min | command |", "|---|---|---|---|", *stage_rows, ""]
    if q.failed:
        lines += [
            "### Failed stages (their cells are n/a; re-run the same command to retry them)",
            "",
            *(f"* {n}: {why.splitlines()[0]}" for n, why in q.failed.items()),
            "",
        ]
    header = [
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}; "
        f"date {time.strftime('%Y-%m-%d')}; command: `python bench/quality.py {' '.join(q.argv)}`",
        "",
    ]
    (q.out / "quality.md").write_text("\n".join(header + lines), encoding="utf-8")
    (q.out / "quality.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {q.out / 'quality.md'} and {q.out / 'quality.json'}")
    return results


def training_signal(run_dir: Path, last_fraction: float = 0.1) -> dict[str, float] | None:
    """The pixel-to-prototype task at the end of a MaskContrast run, from its TensorBoard scalars:
    mean top-1 and contrastive loss over the last ``last_fraction`` of the logged steps, and chance,
    1 / (prototypes of the batch + queue rows). None when the run has no logs yet."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not (run_dir / "tb").is_dir() or not (run_dir / "config.yaml").is_file():
        return None
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    if "acc/top1" not in acc.Tags()["scalars"]:
        return None
    queue = int(OmegaConf.load(run_dir / "config.yaml").objective.queue_size)

    def tail(tag: str) -> float:
        values = [e.value for e in acc.Scalars(tag)]
        return statistics.mean(values[-max(1, round(len(values) * last_fraction)) :])

    return {
        "top1": tail("acc/top1"),
        "chance": 1.0 / (tail("prototypes") + queue),
        "loss_contrastive": tail("loss/contrastive"),
        "steps": acc.Scalars("acc/top1")[-1].step,
    }

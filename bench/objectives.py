"""Rows (e)-(h) of the quality protocol: the other dense objectives, side by side with (a)-(d).

* (e) DetCon from random weights (``configs/detcon/cpu_shared.yaml``);
* (f) DenseCL from random weights (``configs/densecl/cpu_shared.yaml``);
* (g) MaskContrast from the better of (e) and (f), with (d)'s recipe; "better" is the higher mean
  of the K-means prototype mIoU (fused masks) over the evaluation sets, so (g) starts only when both
  are evaluated;
* (h) a STEGO head on the frozen (b) (``configs/stego/cpu_shared.yaml``).

``bench/quality.py`` runs them (``--models ... e f g h``; the ``cpu`` preset includes them): this
module holds their recipes, their flags and their training stages. The rule that fixed the recipes
before any result is in docs/BENCHMARKS.md ("Dense objectives side by side").

    MASKCONTRAST_DATA=../shared/data python bench/quality.py --preset cpu --out runs/preset --threads 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from maskcontrast.config import DenseCLConfig, DetConConfig, StegoConfig
from maskcontrast.config_loading import load_config, save_config
from maskcontrast.stages import REPO

__all__ = ["ROWS", "LABELS", "PRESET_DEFAULTS", "add_arguments", "choose_start", "train_rows"]

#: the rows this module trains, in training order ((g) needs (e) and (f) evaluated; (h) needs (b))
ROWS = "efgh"
LABELS = {
    "e": "(e) DetCon from random",
    "f": "(f) DenseCL from random",
    "g": "(g) MaskContrast from the better of (e), (f)",
    "h": "(h) STEGO head on (b)",
}
#: row -> (entry module, config schema, config file)
RECIPES = {
    "e": ("maskcontrast.detcon", DetConConfig, "detcon"),
    "f": ("maskcontrast.densecl", DenseCLConfig, "densecl"),
    "h": ("maskcontrast.stego", StegoConfig, "stego"),
}

#: preset values of this module's flags (merged into bench/quality.py's PRESETS)
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": {
        "detcon_steps": 1200,
        "detcon_batch": 32,
        "densecl_steps": 975,
        "densecl_batch": 64,
        "stego_steps": 600,
        "stego_batch": 32,
    },
    "tiny": {
        "detcon_steps": 2,
        "detcon_batch": 4,
        "densecl_steps": 2,
        "densecl_batch": 8,
        "stego_steps": 2,
        "stego_batch": 4,
        "detcon_set": ["model.proj_hidden=32", "model.proj_dim=16"],
        "densecl_set": ["objective.queue_size=16"],
        "stego_set": ["model.embed_dim=8"],
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of rows (e)-(h) (each overrides the preset's value)."""
    g = p.add_argument_group("dense objectives, rows (e)-(h) (docs/OBJECTIVES.md)")
    for name, steps, batch in (("detcon", 1200, 32), ("densecl", 975, 64), ("stego", 600, 32)):
        g.add_argument(f"--{name}-steps", type=int, default=steps, help=f"{name} training steps")
        g.add_argument(f"--{name}-batch", type=int, default=batch, help=f"{name} batch size")
        g.add_argument(
            f"--{name}-set",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help=f"overrides of configs/{name}/cpu_shared.yaml",
        )


def _write_config(q: Any, row: str) -> Path:
    """The row's config: its cpu_shared.yaml with the run's view size, arch, batch and overrides, and
    every shared set (with its fused masks) as sources."""
    a = q.args
    _, schema, name = RECIPES[row]
    arch_key = "model.backbone.arch" if row == "h" else "model.arch"
    cfg = load_config(
        schema,
        REPO / "configs" / name / "cpu_shared.yaml",
        [
            f"data.image_size={a.image_size}",
            f"optim.batch_size={getattr(a, f'{name}_batch')}",
            f"{arch_key}={a.arch}",
            *getattr(a, f"{name}_set"),
        ],
    )
    sources = [{"name": n, "root": str(q.data / f), "masks": str(q.masks_dir(n))} for n, f in q.train_sets]
    cfg = OmegaConf.merge(cfg, {"data": {"sources": sources}})
    path = q.out / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    save_config(cfg, path)
    return path


def choose_start(q: Any) -> str | None:
    """``"e"`` or ``"f"``: the row whose K-means prototype mIoU (fused masks), averaged over the
    evaluation sets, is higher (ties: e); None until both are evaluated on every set."""
    scores = {}
    for row in "ef":
        vals = []
        for ev in q.args.eval_sets:
            js = q.out / "eval" / row / ev / "kmeans_prototype_folder.json"
            if not js.is_file():
                return None
            vals.append(json.loads(js.read_text())["miou_mean"])
        scores[row] = sum(vals) / len(vals)
    return "e" if scores["e"] >= scores["f"] else "f"


def train_rows(q: Any, models: dict[str, Path], only: str) -> dict[str, Path]:
    """Train the rows of ``--models`` among (e)-(h) that ``only`` allows and whose inputs exist;
    returns row -> checkpoint for every finished row."""
    a = q.args
    out: dict[str, Path] = {}
    steps = {"e": a.detcon_steps, "f": a.densecl_steps, "h": a.stego_steps}
    for row in ROWS:
        if row not in a.models or row not in only:
            continue
        run_dir = q.out / "train" / row
        if row == "g":
            start = choose_start(q) if "e" in out and "f" in out else None
            if start is None:
                continue  # (e) and (f) are not both evaluated yet
            _, pre_cfg = q.write_configs()
            command = [
                "maskcontrast.pretrain",
                "--config",
                str(pre_cfg),
                "--resume",
                f"model.backbone.init={out[start]}",
                *q.trainer(run_dir, max(1, round(a.pretrain_steps * a.budget)), a.train_seeds[0]),
            ]
            (q.out / "train" / "g_start.txt").write_text(f"{start}\n")
        elif row == "h":
            if "b" not in models:
                continue
            module, _, _ = RECIPES[row]
            command = [
                module,
                "--config",
                str(_write_config(q, row)),
                "--resume",
                f"model.backbone.init={models['b']}",
                *q.trainer(run_dir, max(1, round(steps[row] * a.budget)), 0),
            ]
        else:
            module, _, _ = RECIPES[row]
            command = [
                module,
                "--config",
                str(_write_config(q, row)),
                "--resume",
                *q.trainer(run_dir, max(1, round(steps[row] * a.budget)), 0),
            ]
        q.runner.run(f"train:{row}", command, done=run_dir / "done")
        (run_dir / "done").touch()
        out[row] = run_dir / "last.pt"
    return out

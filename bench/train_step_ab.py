"""Interleaved A/B of the training step time of two source trees (e.g. before and after a refactor).

Each round runs a tiny MaskContrast pretraining (ResNet-18 OS8, random init, synthetic images
with rectangular objects, batch 4, 64 px, 1 thread) once per tree, each in its own subprocess
with that tree as the working directory, alternating which tree goes first. A step is timed from
one objective forward to the next (views, momentum update, forward, backward, optimizer step,
bookkeeping), in wall time and in CPU time of the process (steadier on a loaded machine); the
first ``--warmup`` steps of every run are dropped, and with 64 images (16 steps per epoch) no
checkpoint is written inside the timed steps. The result is the ratio B/A of the per-round medians,
so drift of a loaded machine between rounds cancels.

``--preset`` picks the networks and the batch (the same for both trees; ``--set KEY=VALUE`` adds
overrides of both): ``tiny`` (the above), ``r50os8-128`` and ``r50os8-224`` (ResNet-50 OS8 with
ASPP, batch 8, 128 or 224 px views, fp32, 2 threads: the step of issue 24's part 5). The synthetic
images are 1.5 x the view size, 16 steps per epoch.

Usage::

    python bench/train_step_ab.py --a /tmp/old_tree --b . --rounds 6 --steps 12
    python bench/train_step_ab.py --a /tmp/old_tree --b . --preset r50os8-128 --rounds 4 --steps 8
    python bench/train_step_ab.py --a . --b . --set trainer.channels_last=false --rounds 4   # (B: as A)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
import torch
from PIL import Image
from maskcontrast.config import PretrainConfig
from maskcontrast.config_loading import load_config, resolve_config
from maskcontrast.data import write_mask
from maskcontrast.objectives import MaskContrastObjective
from maskcontrast.train import train

data, run_dir, steps, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
src = f"data.sources=[{{name: image_folder, root: {data}/images, masks: {data}/masks}}]"
cfg = resolve_config(load_config(PretrainConfig, "configs/pretrain/tiny.yaml", [
    src, f"trainer.run_dir={run_dir}", f"trainer.max_steps={steps}", "trainer.progress=false",
    "trainer.threads=1", "trainer.log_every_steps=1000", "trainer.save_every_steps=0", "optim.batch_size=4",
    *overrides]))
stamps, cpu = [], []

class Timed(MaskContrastObjective):
    def forward(self, views):
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())
        return super().forward(views)

train(cfg, lambda: Timed(cfg.model, cfg.objective), "pretrain")
print(json.dumps({"wall": np.diff(stamps).tolist(), "cpu": np.diff(cpu).tolist()}))
"""


def r50os8(size: int) -> tuple[list[str], int, int]:
    """ResNet-50 OS8 + ASPP, batch 8, ``size`` px views, fp32, 2 threads; 128 images of 1.5 x ``size``."""
    overrides = [
        "model.backbone.arch=resnet50",
        "model.backbone.output_stride=8",
        "model.head_channels=256",
        f"data.image_size={size}",
        "optim.batch_size=8",
        "trainer.threads=2",
        "trainer.precision=fp32",
    ]
    return overrides, 128, size * 3 // 2


#: --preset: (config overrides of both trees, number of images, image height)
PRESETS: dict[str, tuple[list[str], int, int]] = {
    "tiny": ([], 64, 72),
    "r50os8-128": r50os8(128),
    "r50os8-224": r50os8(224),
}


def make_data(root: Path, n: int = 64, height: int = 72) -> None:
    """``n`` synthetic images (``height x 4/3 height``) with one rectangular object each."""
    import numpy as np
    from PIL import Image

    from maskcontrast.data import write_mask

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = height, height * 4 // 3
    for i in range(n):
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[y : y + h * 5 // 12, x : x + w * 5 // 12] = 1
        img[mask == 1] = rng.integers(100, 255, 3)
        Image.fromarray(img).save(root / "images" / f"im{i:02d}.png")
        write_mask(root / "masks" / f"im{i:02d}.png", mask)


def run_once(tree: Path, data: Path, tmp: Path, steps: int, overrides: list[str]) -> dict[str, list[float]]:
    run_dir = tempfile.mkdtemp(dir=tmp)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), run_dir, str(steps), json.dumps(overrides)],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/train_step_ab.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="source tree A (e.g. a git worktree of the old commit)")
    p.add_argument("--b", required=True, help="source tree B")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=12, help="steps per run (at most 16; timed: steps - 1 - warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="networks, batch and view size")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides (both trees)")
    p.add_argument(
        "--b-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of tree B only (e.g. --a . --b . --b-set trainer.channels_last=true)",
    )
    args = p.parse_args(argv)
    overrides, n_images, height = PRESETS[args.preset]
    per_tree = {"a": [*overrides, *args.set], "b": [*overrides, *args.set, *args.b_set]}
    trees = {"a": Path(args.a).resolve(), "b": Path(args.b).resolve()}
    med: dict[str, dict[str, list[float]]] = {k: {"a": [], "b": []} for k in ("wall", "cpu")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_data(tmp / "data", n_images, height)
        for r in range(args.rounds):
            for name in ("a", "b") if r % 2 == 0 else ("b", "a"):
                times = run_once(trees[name], tmp / "data", tmp, args.steps, per_tree[name])
                for kind in med:
                    med[kind][name].append(statistics.median(times[kind][args.warmup :]))
            w, c = med["wall"], med["cpu"]
            print(
                f"round {r + 1}: wall A {1000 * w['a'][-1]:.1f} ms, B {1000 * w['b'][-1]:.1f} ms (B/A "
                f"{w['b'][-1] / w['a'][-1]:.3f}); cpu A {1000 * c['a'][-1]:.1f} ms, B {1000 * c['b'][-1]:.1f} ms "
                f"(B/A {c['b'][-1] / c['a'][-1]:.3f})",
                flush=True,
            )
    summary = {}
    for kind, m in med.items():
        ratios = [b / a for a, b in zip(m["a"], m["b"])]
        summary[kind] = {
            "a_ms": [round(1000 * x, 1) for x in m["a"]],
            "b_ms": [round(1000 * x, 1) for x in m["b"]],
            "ratio_b_over_a_median": round(statistics.median(ratios), 3),
            "ratio_b_over_a_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Do a few hundred steps of MaskContrast or DetCon teach their object prototypes the object kinds?

Trains one objective from random weights on the synthetic shapes set (the learning test's data,
made on the fly; 4 kinds defined by shape and texture, random colours) and prints, as one JSON
line, its training accuracy (mean of the last 10 steps, and as a multiple of chance) and the kind
accuracy of K-means on its object prototypes (:func:`eval.kinds.kind_accuracy`) at initialisation
and after training, with a logistic-regression probe of the same prototypes beside it
(:func:`eval.kinds.linear_kind_accuracy`: are the kinds in them at all?). Results are in docs/OBJECTIVES.md ("The learning test").

    python bench/kind_learning.py --objective maskcontrast --steps 300 --images 256
    python bench/kind_learning.py --objective detcon --steps 300 --images 256 --set augment.grayscale_p=0
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eval.kinds import READOUTS, kind_accuracy, linear_kind_accuracy
from maskcontrast.config import DetConConfig, PretrainConfig
from maskcontrast.config_loading import load_config, resolve_config
from maskcontrast.data.synthetic import write_shapes_folder
from maskcontrast.objectives import DetConObjective, MaskContrastObjective
from maskcontrast.objectives.base import recording_metrics
from maskcontrast.train import train
from maskcontrast.utils import seed_everything

#: objective -> (schema, config, class, trainer stage, the test's own overrides)
RECIPES = {
    "maskcontrast": (
        PretrainConfig,
        "configs/pretrain/tiny.yaml",
        MaskContrastObjective,
        "pretrain",
        ["objective.queue_size=16"],
    ),
    "detcon": (
        DetConConfig,
        "configs/detcon/tiny.yaml",
        DetConObjective,
        "detcon",
        [
            "data.regions.cache_dir=null",
            "data.mask_source=grid",
            "data.regions.grid_cells=4",
            "augment.min_mask_area=0.0",
            "augment.max_mask_area=1.0",
        ],
    ),
}
#: no colour augmentation, as in the learning test
NO_COLOUR = ["augment.color_jitter_p=0", "augment.grayscale_p=0"]


def chance(objective: str, metrics: dict[str, float], queue: int = 16) -> float:
    """Chance top-1 of the objective's own task, as the learning test computes it."""
    if objective == "maskcontrast":
        return 1.0 / (metrics["prototypes"] + queue)
    return 1.0 / max(2 * metrics["regions"] * 8 - 1, 1)


def run(
    objective: str, steps: int, images: int, overrides: list[str], gray: bool, work: Path, readout: str = "embed"
) -> dict:
    """Train ``objective`` for ``steps`` on ``images`` synthetic images; the result as a dict."""
    schema, path, cls, stage, own = RECIPES[objective]
    shapes = write_shapes_folder(work / "shapes", n=images, size=64, seed=0)
    source = f"data.sources=[{{name: image_folder, root: {shapes / 'images'}, masks: {shapes / 'masks'}}}]"
    cfg = resolve_config(
        load_config(
            schema,
            path,
            [
                source,
                f"trainer.run_dir={work / 'run'}",
                "data.image_size=32",
                "optim.batch_size=8",
                "trainer.progress=false",
                "trainer.threads=1",
                "data.num_workers=0",
                "trainer.log_every_steps=1",
                "optim.lr=0.1",
                "objective.key_momentum=0.9",
                *own,
                *NO_COLOUR,
                f"trainer.max_steps={steps}",
                *overrides,
            ],
        )
    )
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    result = train(cfg, recording_metrics(lambda: cls(cfg.model, cfg.objective), history), stage)
    seconds = time.perf_counter() - start
    seed_everything(cfg.trainer.seed)
    init = work / "init.pt"
    torch.save(cls(cfg.model, cfg.objective).checkpoint(), init)
    last = {k: float(np.mean([h[k] for h in history[-10:]])) for k in history[-1]}
    return {
        "objective": objective,
        "steps": steps,
        "images": images,
        "overrides": overrides,
        "gray": gray,
        "readout": readout,
        "train_seconds": round(seconds, 1),
        "acc_top1": round(last["acc_top1"], 4),
        "acc_x_chance": round(last["acc_top1"] / chance(objective, last), 2),
        "kinds_at_init": round(kind_accuracy(init, shapes, gray, readout=readout), 3),
        "kinds_trained": round(kind_accuracy(result.checkpoint, shapes, gray, readout=readout), 3),
        "linear_kinds_at_init": round(linear_kind_accuracy(init, shapes, gray, readout=readout), 3),
        "linear_kinds_trained": round(linear_kind_accuracy(result.checkpoint, shapes, gray, readout=readout), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=sorted(RECIPES), required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--images", type=int, default=256, help="synthetic images (64 px), trained and evaluated on")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--gray", action="store_true", help="read the kinds from grayscale images")
    parser.add_argument(
        "--readout",
        choices=READOUTS,
        default="embed",
        help="prototypes of the embedding (MaskContrast: the 32-d head) or of the features (its decoder)",
    )
    parser.add_argument("--out", type=Path, help="append the JSON line to this file too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kind_learning_") as work:
        row = run(args.objective, args.steps, args.images, args.set, args.gray, Path(work), args.readout)
    line = json.dumps(row)
    print(line)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()

"""The small-budget quality protocol (results in docs/BENCHMARKS.md).

Same data (every image of the shared sets, labels unused: object masks come from our fused
unsupervised saliency), same backbone (ResNet-18) and resolution (128 px views), fixed budgets:

* (a) random initialisation (backbone only);
* (b) our MoCo v2 stage only (backbone only);
* (c) MaskContrast from random initialisation;
* (d) MaskContrast from (b): the paper's recipe.

Each model is evaluated on MSRC-v2 (21-class protocol) and Oxford-IIIT Pet (background, cat, dog)
with K-means (prototype protocol, saliency from the fused masks for every model; for (c) and (d)
also from the model's own saliency head, the paper's protocol), K-means (pixel protocol) and the
linear probe (configs/eval/linear_cpu.yaml, seeded 80/20 split). K-means: mean and std over 5
seeds; (c) and (d): mean and std over the training seeds too. Every stage is a ``python -m``
command run through :class:`maskcontrast.stages.StageRunner`, so the run is resumable and each
command and its wall time is reported.

    MASKCONTRAST_DATA=../shared/data python bench/quality.py --out runs/quality
    python bench/quality.py --out runs/quality --report-only     # re-write the tables

``--preset cpu`` is the CPU recipe chosen in docs/BENCHMARKS.md ("A CPU recipe that learns"):
ResNet-18 OS8 at 64 px, bf16 + channels_last, one training seed, the fused-mask K-means and the
linear probe only. It writes the final models to ``<out>/models/{a,b,c,d}.pt`` and the evaluation
settings to ``<out>/models/eval.json``. ``--budget F`` scales every training step count by F
(the scaling study, ``bench/scaling.py``); ``--masks DIR`` reuses the masks of another run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

# this checkout's packages, also when another checkout is installed (a run from its own git worktree)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/objectives.py, also when run by a test

import torch
import torchvision
from objectives import PRESET_DEFAULTS as DENSE_PRESETS
from objectives import add_arguments as add_dense_arguments
from objectives import train_rows
from omegaconf import OmegaConf
from quality_report import write_report

from maskcontrast.config import MocoConfig, PretrainConfig
from maskcontrast.config_loading import load_config, save_config
from maskcontrast.data.paths import data_root
from maskcontrast.stages import REPO, StageFailed, StageRunner
from maskcontrast.utils import atomic_save, atomic_write_bytes, setup_logging

log = logging.getLogger("bench.quality")

#: (dataset name, folder under $MASKCONTRAST_DATA) of every shared set used for training
TRAIN_SETS = [
    ("msrc", "msrc_v2"),
    ("pet", "oxford_iiit_pet"),
    ("coco128", "coco128_seg"),
    ("davis2016", "davis2016"),
    ("weizmann", "weizmann_horse"),
    ("saliency_folder", "saliency/SOD"),
]
#: evaluation sets: name -> (dataset, folder, reader options, number of classes)
EVAL_SETS = {
    "msrc": ("msrc", "msrc_v2", [], 21),
    "pet": ("pet", "oxford_iiit_pet", ["target=species"], 3),
}


#: every model this bench can train: (a)-(d) here, (e)-(h) in bench/objectives.py
MODELS = "abcdefgh"

#: every evaluation this bench can run, cheapest and most telling first
EVALS = ("prototype-folder", "linear", "prototype-model", "pixel")

#: named presets: defaults of the flags below (a flag given on the command line still wins). The
#: rule that chose ``cpu`` and what it measured are in docs/BENCHMARKS.md ("A CPU recipe that learns").
PRESETS: dict[str, dict] = {
    "cpu": {
        "image_size": 64,
        "eval_size": 96,
        "moco_batch": 64,
        "moco_steps": 975,  # 40 epochs of the 1,557 shared images
        "pretrain_batch": 32,
        "pretrain_steps": 720,  # about 15 epochs of the images with a usable mask
        "pretrain_lr": 0.03,
        "train_seeds": [0],
        "models": ["a", "b", "d", "e", "f", "g", "h"],  # (c) on request: --models a b c d ...
        "evals": ["prototype-folder", "linear"],
        "linear_set": ["augment.crop_size=96"],
        "moco_set": ["trainer.precision=bf16", "trainer.channels_last=true", "optim.warmup_steps=50"],
        "pretrain_set": [
            "objective.key_momentum=0.99",
            "objective.queue_size=128",
            "trainer.precision=bf16",
            "trainer.channels_last=true",
            "optim.warmup_steps=50",
            "data.num_workers=0",
            "data.cache_images=true",
        ],
    },
    # bench/gpu_quality.py on one GPU: the paper's R50-OS8 at 224 px and its hyper-parameters
    # (MaskContrast: batch 128, lr 0.004 poly, m 0.999, queue 256, T 0.5, 40 epochs; MoCo v2: batch
    # 256, lr 0.03 cosine, T 0.2), scaled to the 1,557 images of the pack: 40 MaskContrast epochs are
    # 12 steps each, the MoCo queue is 1,024 (less than the images) and MoCo runs 100 epochs.
    "gpu": {
        "arch": "resnet50",
        "image_size": 224,
        "eval_size": 256,
        "mask_workers": 16,
        "moco_batch": 256,
        "moco_steps": 600,  # 100 epochs of 6 steps
        "pretrain_batch": 128,
        "pretrain_steps": 470,  # 40 epochs of the ~1,500 images with a usable mask
        "pretrain_lr": 0.004,
        "train_seeds": [0],
        "evals": ["prototype-folder", "linear", "prototype-model"],
        "linear_set": ["augment.crop_size=256"],
        "moco_set": [
            "optim.lr=0.03",
            "trainer.precision=bf16",
            "trainer.channels_last=true",
            "data.num_workers=8",
            "data.load_size=256",
        ],
        "pretrain_set": [
            "objective.key_momentum=0.999",
            "objective.queue_size=256",
            "trainer.precision=bf16",
            "trainer.channels_last=true",
            "data.num_workers=8",
            "data.load_size=256",
        ],
    },
    # bench/gpu_quality.py --tiny: the same stages in about a minute on a CPU (a test runs it)
    "tiny": {
        "image_size": 32,
        "eval_size": 48,
        "mask_workers": 0,
        "moco_batch": 8,
        "moco_steps": 3,
        "pretrain_batch": 4,
        "pretrain_steps": 3,
        "train_seeds": [0],
        "kmeans_seeds": 1,
        "linear_epochs": 1,
        "eval_sets": ["pet"],  # 3 classes: K-means works on the 8 packed images
        "train_sets": ["msrc", "pet"],
        "evals": ["prototype-folder", "linear"],
        "linear_set": ["augment.crop_size=48"],
        "moco_set": ["objective.queue_size=16", "data.num_workers=0", "data.cache_images=false"],
        "pretrain_set": ["objective.queue_size=8", "data.num_workers=0", "model.head_channels=32"],
    },
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", default="runs/quality", help="output folder (resumable)")
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="a named recipe: defaults for the flags below (flags given still win)",
    )
    p.add_argument("--moco-steps", type=int, default=400, help="MoCo v2 steps, batch --moco-batch")
    p.add_argument("--moco-batch", type=int, default=64)
    p.add_argument("--pretrain-steps", type=int, default=600, help="MaskContrast steps, batch --pretrain-batch")
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=None, help="MaskContrast lr (default: the config's)")
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="multiply every training step count (MoCo and MaskContrast) by this (scaling study)",
    )
    p.add_argument("--moco-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the MoCo config")
    p.add_argument(
        "--pretrain-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the MaskContrast config"
    )
    p.add_argument(
        "--arch", default="resnet18", choices=("resnet18", "resnet34", "resnet50"), help="backbone of every model"
    )
    p.add_argument(
        "--train-sets",
        nargs="+",
        default=[n for n, _ in TRAIN_SETS],
        choices=[n for n, _ in TRAIN_SETS],
        help="shared sets to train on (labels unused)",
    )
    p.add_argument("--mask-workers", type=int, default=2, help="saliency.generate worker processes")
    p.add_argument("--image-size", type=int, default=128, help="training view size")
    p.add_argument("--eval-size", type=int, default=160, help="shorter image side for every evaluation")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1], help="training seeds of (c) and (d)")
    p.add_argument(
        "--models",
        nargs="+",
        default=["a", "b", "c", "d"],
        choices=list(MODELS),
        help="models to train and evaluate ((d) and (h) need (b); (g) needs (e) and (f))",
    )
    p.add_argument("--evals", nargs="+", default=list(EVALS), choices=EVALS, help="evaluations to run")
    p.add_argument("--kmeans-seeds", type=int, default=5)
    p.add_argument("--linear-epochs", type=int, default=10)
    p.add_argument(
        "--linear-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of configs/eval/linear_cpu.yaml"
    )
    p.add_argument("--eval-sets", nargs="+", default=list(EVAL_SETS), choices=list(EVAL_SETS))
    p.add_argument("--masks", default=None, help="folder of another run's masks/ to reuse (default: <out>/masks)")
    p.add_argument(
        "--moco-run",
        default=None,
        metavar="DIR",
        help="another run's finished MoCo stage (its train/moco folder) to use as (b): no MoCo is trained",
    )
    p.add_argument(
        "--eval-models",
        nargs="+",
        default=None,
        choices=list(MODELS),
        help="evaluate only these models (default: every one of --models; e.g. d, when (b) is --moco-run's "
        "and was evaluated there)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per training process (0: default)")
    p.add_argument(
        "--until",
        default="report",
        choices=("masks", "moco", "train", "report"),
        help="stop after this stage (the rest can run later: every stage resumes)",
    )
    p.add_argument("--report-only", action="store_true", help="only aggregate finished results")
    add_dense_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    preset = p.parse_known_args(argv)[0].preset
    if preset is not None:
        p.set_defaults(**PRESETS[preset], **DENSE_PRESETS.get(preset, {}))
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget must be > 0, got {args.budget}")
    for row, needs in (("d", "b"), ("h", "b"), ("g", "e"), ("g", "f")):
        if row in args.models and needs not in args.models:
            p.error(f"--models: ({row}) needs ({needs}); add {needs}")
    for flag in ("moco_set", "pretrain_set", "linear_set"):
        bad = [o for o in getattr(args, flag) if "=" not in o]
        if bad:
            p.error(f"--{flag.replace('_', '-')}: expected KEY=VALUE, got {bad[0]!r}")
    return args


def steps(n: int, budget: float) -> int:
    """``n`` training steps scaled by the budget fraction (at least one)."""
    return max(1, round(n * budget))


class Quality:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.argv = argv
        self.out = Path(args.out).expanduser().resolve()
        self.data = data_root()
        if self.data is None:
            raise SystemExit("bench/quality.py: set MASKCONTRAST_DATA to the shared data folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.runner = StageRunner(self.out / "stages.json")
        self.train_sets = [(n, f) for n, f in TRAIN_SETS if n in args.train_sets]
        self.failed: dict[str, str] = {}  # evaluation stage -> why it failed (the others still run)

    # -- stages --------------------------------------------------------------------------------
    def masks_dir(self, name: str) -> Path:
        return (Path(self.args.masks).expanduser().resolve() if self.args.masks else self.out / "masks") / name

    def make_masks(self) -> None:
        if self.args.masks:  # another run's masks: check they are all there, make none
            missing = [str(self.masks_dir(n)) for n, _ in self.train_sets if not self.masks_dir(n).is_dir()]
            if missing:
                raise SystemExit(
                    f"bench/quality.py --masks: no masks folder {', '.join(missing)}; finish that "
                    "run's masks first (bench/quality.py --out <it> --until masks)"
                )
            return
        for name, folder in self.train_sets:
            self.runner.run(
                f"saliency:{name}",
                [
                    "saliency.generate",
                    "--dataset",
                    name,
                    "--root",
                    str(self.data / folder),
                    "--out",
                    str(self.masks_dir(name)),
                    "--method",
                    "fused",
                    "--workers",
                    str(self.args.mask_workers),
                ],
            )

    def write_configs(self) -> tuple[Path, Path]:
        """The MoCo and MaskContrast configs with every shared set (and its fused masks) as sources."""
        cfg_dir = self.out / "configs"
        cfg_dir.mkdir(exist_ok=True)
        sources = [{"name": n, "root": str(self.data / f), "masks": str(self.masks_dir(n))} for n, f in self.train_sets]
        a = self.args
        moco = load_config(
            MocoConfig,
            REPO / "configs" / "moco" / "cpu_shared.yaml",
            [
                f"data.image_size={a.image_size}",
                f"optim.batch_size={a.moco_batch}",
                f"model.arch={a.arch}",
                *a.moco_set,
            ],
        )
        moco = OmegaConf.merge(
            moco, {"data": {"sources": [{k: v for k, v in s.items() if k != "masks"} for s in sources]}}
        )
        pre = load_config(
            PretrainConfig,
            REPO / "configs" / "pretrain" / "msrc.yaml",
            [
                f"data.image_size={a.image_size}",
                f"optim.batch_size={a.pretrain_batch}",
                f"model.backbone.arch={a.arch}",
                *a.pretrain_set,
            ],
        )
        pre = OmegaConf.merge(pre, {"data": {"sources": sources}})
        if a.pretrain_lr is not None:
            pre.optim.lr = a.pretrain_lr
        paths = (cfg_dir / "moco.yaml", cfg_dir / "pretrain.yaml")
        save_config(moco, paths[0])
        save_config(pre, paths[1])
        return paths

    def trainer(self, run_dir: Path, steps: int, seed: int) -> list[str]:
        out = [
            f"trainer.run_dir={run_dir}",
            f"trainer.max_steps={steps}",
            f"trainer.seed={seed}",
            "trainer.save_every_epochs=0",
            "trainer.progress=false",
        ]
        return out + ([f"trainer.threads={self.args.threads}"] if self.args.threads else [])

    def train(self, until: str = "report", only: str = MODELS) -> dict[str, Path]:
        """Train (b), (d), (c), then (e)-(h) (those of ``--models`` in ``only``; bench/objectives.py); write (a).
        Returns model name -> checkpoint."""
        a = self.args
        moco_cfg, pre_cfg = self.write_configs()
        models: dict[str, Path] = {}
        if "a" in a.models:
            random_ckpt = self.out / "train" / "random" / f"{a.arch}_random.pth"
            if not random_ckpt.is_file():
                torch.manual_seed(0)
                atomic_save(getattr(torchvision.models, a.arch)(weights=None).state_dict(), random_ckpt)
            models["a"] = random_ckpt
        if "b" in a.models and a.moco_run:  # another run's (b): check it finished, train none
            moco_dir = Path(a.moco_run).expanduser().resolve()
            if not (moco_dir / "done").is_file() or not (moco_dir / "last.pt").is_file():
                raise SystemExit(
                    f"bench/quality.py --moco-run: {moco_dir} has no finished MoCo stage (done and "
                    "last.pt); finish that run's MoCo first (bench/quality.py --out <it> --until moco)"
                )
            models["b"] = moco_dir / "last.pt"
        elif "b" in a.models:
            moco_dir = self.out / "train" / "moco"
            self.runner.run(
                "train:moco",
                [
                    "maskcontrast.moco",
                    "--config",
                    str(moco_cfg),
                    "--resume",
                    *self.trainer(moco_dir, steps(a.moco_steps, a.budget), 0),
                ],
                done=moco_dir / "done",
            )
            (moco_dir / "done").touch()
            models["b"] = moco_dir / "last.pt"
        if until == "moco":
            raise SystemExit("stopped after the MoCo stage (--until moco)")
        for seed in a.train_seeds:
            for name in "dc":  # (d), the paper's recipe, first: an interrupted run has the key comparison
                if name not in a.models or name not in only:
                    continue
                init = "random" if name == "c" else str(models["b"])
                run_dir = self.out / "train" / f"{name}_seed{seed}"
                self.runner.run(
                    f"train:{name}_seed{seed}",
                    [
                        "maskcontrast.pretrain",
                        "--config",
                        str(pre_cfg),
                        "--resume",
                        f"model.backbone.init={init}",
                        *self.trainer(run_dir, steps(a.pretrain_steps, a.budget), seed),
                    ],
                    done=run_dir / "done",
                )
                (run_dir / "done").touch()
                models[f"{name}_seed{seed}"] = run_dir / "last.pt"
        models.update(train_rows(self, models, only))
        self.export(models)
        return models

    def export(self, models: dict[str, Path]) -> None:
        """``<out>/models/{a,b,c,d}.pt`` (the first training seed of (c) and (d)) and ``eval.json``, the
        evaluation settings every result of this run used."""
        dest = self.out / "models"
        dest.mkdir(exist_ok=True)
        first = self.args.train_seeds[0]
        for name in self.args.models:
            src = models.get(name if name not in "cd" else f"{name}_seed{first}")
            if src is None:  # not trained yet
                continue
            target = dest / f"{name}.pt"
            if not target.is_file() or target.stat().st_mtime < src.stat().st_mtime:
                tmp = target.with_suffix(".pt.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
        settings = {
            "size": self.args.eval_size,
            "kmeans_seeds": self.args.kmeans_seeds,
            "linear_config": "configs/eval/linear_cpu.yaml",
            "linear_epochs": self.args.linear_epochs,
            "saliency_source": "fused masks (python -m saliency.generate --method fused)",
        }
        atomic_write_bytes(dest / "eval.json", json.dumps(settings, indent=2).encode())

    def evaluate(self, models: dict[str, Path]) -> None:
        """Every evaluation, cheapest and most telling first: the paper's K-means (prototype
        protocol, fused masks) of every model, then the linear probe, then the prototype protocol
        with each model's own saliency, then the pixel protocol (the slowest; backbone baselines last). An interrupted run
        keeps the most complete comparison so far; every finished result is skipped on a re-run."""
        a = self.args
        jobs: list[tuple[int, str, list[str], Path]] = []  # (priority, stage name, command, result file)
        for model, ckpt in models.items():
            if a.eval_models is not None and model[0] not in a.eval_models:
                continue
            for ev in a.eval_sets:
                dataset, folder, opts, k = EVAL_SETS[ev]
                base = [
                    "--checkpoint",
                    str(ckpt),
                    "--dataset",
                    dataset,
                    "--root",
                    str(self.data / folder),
                    "--no-progress",
                    *(x for o in opts for x in ("--dataset-arg", o)),
                ]
                out = self.out / "eval" / model / ev
                km = [*base, "--size", str(a.eval_size), "--k", str(k), "--seeds", str(a.kmeans_seeds), "--overwrite"]
                sources = [("folder", ["--saliency-source", "folder", "--saliency-dir", str(self.masks_dir(dataset))])]
                if model[0] in "cdg":  # MaskContrast models have a saliency head
                    sources.append(("model", ["--saliency-source", "model"]))
                for src, extra in sources:
                    if f"prototype-{src}" not in a.evals:
                        continue
                    js = out / f"kmeans_prototype_{src}.json"
                    jobs.append(
                        (
                            0 if src == "folder" else 2,
                            f"eval:{model}:{ev}:prototype-{src}",
                            ["eval.kmeans", *km, "--protocol", "prototype", *extra, "--json", str(js)],
                            js,
                        )
                    )
                lin = out / "linear"
                if "linear" in a.evals:
                    jobs.append(
                        (
                            1,
                            f"eval:{model}:{ev}:linear",
                            [
                                "eval.linear",
                                "--config",
                                str(REPO / "configs" / "eval" / "linear_cpu.yaml"),
                                *base,
                                "--out",
                                str(lin),
                                f"epochs={a.linear_epochs}",
                                f"base_size={a.eval_size}",
                                f"eval_size={a.eval_size}",
                                *a.linear_set,
                            ],
                            lin / "results.json",
                        )
                    )
                js = out / "kmeans_pixel.json"
                slow = model[0] in "abef"  # backbone baselines: 512-d pixel features, the slowest of all
                pixel = ["eval.kmeans", *km, "--protocol", "pixel", "--json", str(js)]
                if "pixel" in a.evals:
                    jobs.append((4 if slow else 3, f"eval:{model}:{ev}:pixel", pixel, js))
        for _, name, command, done in sorted(jobs, key=lambda j: j[0]):  # stable: model order within a priority
            try:
                self.runner.run(name, command, done=done)
                self.failed.pop(name, None)
            except StageFailed as err:  # recorded (quality.json, quality.md); the remaining evaluations run
                log.error("%s; continuing with the other evaluations", err)
                self.failed[name] = str(err)

    # -- report --------------------------------------------------------------------------------
    def report(self, models: list[str]) -> dict:
        """Aggregate every result JSON into ``quality.json`` and ``quality.md`` (:mod:`quality_report`)."""
        return write_report(self, models)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    q = Quality(args, list(argv if argv is not None else sys.argv[1:]))
    names = [
        *(g for g in "ab" if g in args.models),
        *(f"{g}_seed{s}" for s in args.train_seeds for g in "cd" if g in args.models),
        *(g for g in "efgh" if g in args.models),
    ]
    if not args.report_only:
        q.make_masks()
        if args.until == "masks":
            raise SystemExit("stopped after the masks (--until masks)")
        if args.until in ("moco", "train"):
            q.train(args.until)
            raise SystemExit(f"stopped after training (--until {args.until}); models in {q.out / 'models'}")
        # (a), (b), (d) first: an interrupted run has the paper's comparison; then (e), (f) (evaluated
        # before (g), which starts from the better of them), (h), and (c) last
        for only in ("abd", "abdef", "abdefgh", MODELS):
            q.evaluate(q.train(only=only))
    q.report(names)


if __name__ == "__main__":
    main()

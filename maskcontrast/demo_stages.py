"""The stages of ``python -m maskcontrast.demo``: the presets (:class:`Budget`, :data:`PRESETS`) and
:class:`Demo`, which runs every stage through the command line a user would type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from maskcontrast.stages import REPO, StageFailed, StageRunner

__all__ = ["CONFIGS", "Budget", "PRESETS", "Demo"]

CONFIGS = REPO / "configs"


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


#: default and fast: the stage lengths of `make demo` and `make demo FAST=1` (wall times: docs/BENCHMARKS.md, "Main job");
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

"""Shared set-up of the objective tests: a synthetic image folder with exact masks and known kinds,
and a config builder for every objective on it."""

from __future__ import annotations

import pytest

from maskcontrast.config import DenseCLConfig, DetConConfig, MocoConfig, PretrainConfig, StegoConfig
from maskcontrast.config_loading import load_config, resolve_config
from maskcontrast.data.synthetic import write_shapes_folder
from maskcontrast.objectives import DenseCLObjective, DetConObjective, MaskContrastObjective, StegoObjective

#: objective -> (schema, tiny config, objective class, trainer stage)
OBJECTIVES = {
    "maskcontrast": (PretrainConfig, "configs/pretrain/tiny.yaml", MaskContrastObjective, "pretrain"),
    "detcon": (DetConConfig, "configs/detcon/tiny.yaml", DetConObjective, "detcon"),
    "densecl": (DenseCLConfig, "configs/densecl/tiny.yaml", DenseCLObjective, "densecl"),
    "stego": (StegoConfig, "configs/stego/tiny.yaml", StegoObjective, "stego"),
}


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """64 synthetic 64 px images: 4 object kinds (shape + texture), random colours, exact masks."""
    return write_shapes_folder(tmp_path_factory.mktemp("shapes"), n=64, size=64, seed=0)


@pytest.fixture(scope="session")
def moco_backbone(shapes, tmp_path_factory):
    """A 2-step MoCo ResNet-18 checkpoint (the frozen backbone of the STEGO tests)."""
    from maskcontrast.objectives import MocoObjective
    from maskcontrast.train import train

    run = tmp_path_factory.mktemp("moco_for_stego")
    cfg = resolve_config(
        load_config(
            MocoConfig,
            "configs/moco/tiny.yaml",
            [
                f"data.sources=[{{name: image_folder, root: {shapes / 'images'}}}]",
                f"trainer.run_dir={run}",
                "data.image_size=32",
                "optim.batch_size=8",
                "objective.queue_size=16",
                "trainer.max_steps=2",
                "trainer.progress=false",
                "trainer.threads=1",
            ],
        )
    )
    return train(cfg, lambda: MocoObjective(cfg.model, cfg.objective), "moco").checkpoint


def objective_cfg(name, shapes, run_dir, *extra, init=None):
    """The tiny config of ``name`` on the synthetic folder (32 px views, batch 8)."""
    schema, path, _, _ = OBJECTIVES[name]
    src = f"data.sources=[{{name: image_folder, root: {shapes / 'images'}, masks: {shapes / 'masks'}}}]"
    overrides = [
        src,
        f"trainer.run_dir={run_dir}",
        "data.image_size=32",
        "optim.batch_size=8",
        "trainer.progress=false",
        "trainer.threads=1",
        "data.num_workers=0",
    ]
    if name == "detcon":
        overrides.append("data.regions.cache_dir=null")
    if name == "stego":
        overrides.append(f"model.backbone.init={init}")
    return resolve_config(load_config(schema, path, [*overrides, *extra]))


def build(name, cfg):
    _, _, cls, _ = OBJECTIVES[name]
    return lambda: cls(cfg.model, cfg.objective)

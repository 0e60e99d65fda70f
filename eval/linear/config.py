"""The linear probe's config schema (``--config`` YAML and ``key=value`` overrides).

The defaults are the paper's schedule on PASCAL VOC (``configs/eval/linear_voc.yaml``);
``configs/eval/linear_cpu.yaml`` is a CPU budget version. The probe's augmentation and optimizer
differ from pretraining's (:class:`maskcontrast.config.AugmentConfig`,
:class:`maskcontrast.config.OptimConfig`), hence their own names here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maskcontrast.config_checks import bounded

__all__ = ["LinearDataConfig", "ProbeAugmentConfig", "ProbeOptimConfig", "CRFConfig", "LinearConfig"]


@dataclass
class LinearDataConfig:
    """Which images train and which evaluate the probe."""

    # null: seeded split of the dataset's default split
    train_split: str | None = "train_aug"
    val_split: str | None = "val"
    # seeded split only
    val_fraction: float = bounded(0.2, gt=0.0, lt=1.0)
    # seeded split only
    split_seed: int = 0
    # reuse split_train.txt / split_val.txt from this folder
    split_dir: str | None = None
    # first N training images (quick runs)
    train_limit: int | None = bounded(None, ge=1)
    val_limit: int | None = bounded(None, ge=1)


@dataclass
class ProbeAugmentConfig:
    """Random flip, rotation, scale and crop (applied to images, or to cached features)."""

    crop_size: int = bounded(512, ge=1)
    scale_min: float = bounded(0.75, gt=0.0)
    scale_max: float = bounded(1.25, gt=0.0)
    rotate_degrees: float = bounded(5.0, ge=0.0)
    flip: bool = True


@dataclass
class ProbeOptimConfig:
    """SGD for the probe, its rate multiplied by ``gamma`` at each milestone epoch."""

    lr: float = bounded(0.1, gt=0.0)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    weight_decay: float = bounded(1e-4, ge=0.0)
    # epochs at which lr *= gamma
    milestones: list[int] = field(default_factory=lambda: [25])
    gamma: float = bounded(0.1, gt=0.0)


@dataclass
class CRFConfig:
    """Dense CRF post-processing (needs ``pip install pydensecrf2``; skipped with a message otherwise)."""

    enabled: bool = False
    iterations: int = bounded(5, ge=1)
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


@dataclass
class LinearConfig:
    """The linear probe. Defaults: the paper's schedule on PASCAL VOC."""

    data: LinearDataConfig = field(default_factory=LinearDataConfig)
    augment: ProbeAugmentConfig = field(default_factory=ProbeAugmentConfig)
    optim: ProbeOptimConfig = field(default_factory=ProbeOptimConfig)
    crf: CRFConfig = field(default_factory=CRFConfig)
    batch_size: int = bounded(16, ge=1)
    epochs: int = bounded(60, ge=0)
    # resize training images (shorter side) before augmentation; null = native
    base_size: int | None = bounded(None, ge=1)
    # network input (shorter side) for validation; null = native
    eval_size: int | None = bounded(None, ge=1)
    # run the frozen network once; augment the cached features
    cache_features: bool = False
    # also evaluate every N epochs (0: only at the end)
    eval_every: int = bounded(0, ge=0)
    seed: int = 0

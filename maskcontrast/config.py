"""Configuration schemas: the dataclasses that declare every option of every stage, with their
defaults and the values each accepts (:func:`~maskcontrast.config_checks.bounded`).

Loading a schema with a YAML file and ``key=value`` overrides is :mod:`maskcontrast.config_loading`;
the value checks and :class:`~maskcontrast.config_checks.ConfigError` are :mod:`maskcontrast.config_checks`.

Example::

    from maskcontrast.config import PretrainConfig
    from maskcontrast.config_loading import load_config

    cfg = load_config(PretrainConfig, "configs/pretrain/msrc.yaml", ["optim.lr=0.01"])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maskcontrast.config_checks import bounded, checks

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_ARCHS",
    "VIT_ARCHS",
    "ViTConfig",
    "BackboneConfig",
    "ModelConfig",
    "DataSourceConfig",
    "RegionsConfig",
    "DataConfig",
    "AugmentConfig",
    "OptimConfig",
    "TrainerConfig",
    "MaskContrastObjectiveConfig",
    "PretrainConfig",
    "MocoModelConfig",
    "MocoObjectiveConfig",
    "MocoConfig",
    "DetConModelConfig",
    "DetConObjectiveConfig",
    "DetConConfig",
    "DenseCLModelConfig",
    "DenseCLObjectiveConfig",
    "DenseCLConfig",
    "StegoObjectiveConfig",
    "StegoConfig",
]


#: the ImageNet normalisation every network of the project expects (RGB in [0, 1])
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------
# Shared schemas
# ----------------------------------------------------------------------------------------------


RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: timm ViT names ``model.backbone.arch`` accepts (their shapes: ``maskcontrast.models.vit.VIT_SPECS``)
VIT_ARCHS = (
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "vit_large_patch16_224",
    "vit_small_patch8_224",
    "vit_base_patch8_224",
    "vit_small_patch14_dinov2",
    "vit_base_patch14_dinov2",
    "vit_large_patch14_dinov2",
    "vit_small_patch14_reg4_dinov2",
    "vit_base_patch14_reg4_dinov2",
    "vit_large_patch14_reg4_dinov2",
)


@dataclass
class ViTConfig:
    """Options that only a ViT backbone reads (see docs/BACKBONES.md).

    ``img_size`` is the input side at which the position embedding is stored; any other input
    size (a multiple of the patch size) interpolates it on the fly, and a checkpoint stored at
    another size (DINOv2: 518 px) is interpolated to it when loaded. ``dim`` / ``depth`` (0 = the
    arch's own) shrink a ViT for tests and quick experiments; heads are ``max(1, dim // 64)``.
    """

    img_size: int = bounded(224, ge=8)
    dim: int = bounded(0, ge=0)
    depth: int = bounded(0, ge=0)
    drop_path_rate: float = bounded(0.0, ge=0.0, lt=1.0)


@dataclass
class BackboneConfig:
    """A dilated torchvision ResNet or a timm ViT.

    ``init`` is ``random``, ``torchvision`` (torchvision's own ImageNet weights, needs internet
    or a warm torch hub cache; ResNets only) or the path to a checkpoint file of any layout of
    docs/BACKBONES.md (MoCo, torchvision, DINO, DINOv2, MAE, the official MaskContrast zoo, ours).
    The layout of a file is detected from its contents. ``init_key`` picks the network of a full
    DINO training checkpoint (``teacher``, the default, or ``student``).

    ``output_stride`` applies to ResNets; a ViT's feature stride is its patch size.
    """

    arch: str = bounded("resnet50", choices=RESNET_ARCHS + VIT_ARCHS)
    # 8 (paper) or 16; ResNets only
    output_stride: int = bounded(8, choices=(8, 16))
    init: str = "random"
    init_key: str = bounded("teacher", choices=("teacher", "student"))
    vit: ViTConfig = field(default_factory=ViTConfig)


@dataclass
class ModelConfig:
    """Backbone -> head (DeepLabv3, light or STEGO) -> embedding head and saliency head.

    ``head``: ``deeplab`` (ASPP + 3x3 conv, the paper), ``light`` (1x1 + 3x3 conv), ``stego``
    (docs/OBJECTIVES.md) or ``auto``
    (deeplab on a ResNet, light on a ViT: a ViT's tokens already mix the whole image through
    self-attention, so ASPP's atrous context adds little, and on a 14-16 px token grid its
    dilations mostly sample padding).
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head_channels: int = bounded(256, ge=1)
    # None: 12/24/36 at OS8, 6/12/18 at OS16
    aspp_rates: list[int] | None = None
    embed_dim: int = bounded(32, ge=1)
    saliency_head: bool = True
    # deeplab: ASPP decoder -> 1x1 embedding (MaskContrast); light: 1x1 + 3x3 conv decoder (docs/BACKBONES.md);
    # auto: deeplab on a ResNet, light on a ViT; stego: a linear plus a nonlinear 1x1 branch straight on the
    # backbone features (the STEGO head, docs/OBJECTIVES.md)
    head: str = bounded("auto", choices=("auto", "deeplab", "light", "stego"))


# ----------------------------------------------------------------------------------------------
# Training schemas (pretraining and the MoCo stage share data, augmentation, optimiser, trainer)
# ----------------------------------------------------------------------------------------------


@dataclass
class DataSourceConfig:
    """One image collection: a registered dataset reader (``maskcontrast.data.build_dataset``).

    ``masks`` is a folder of object masks ``<masks>/<id>.png`` (0 = background, 1..n = objects,
    or 0/255), e.g. the output of ``python -m saliency.generate`` or the official precomputed
    masks; None falls back to ``data.masks`` and then to the dataset's own object masks
    (Pet trimaps, DAVIS, Weizmann, SOD, coco128).
    """

    # voc | msrc | pet | coco128 | davis2016 | weizmann | saliency_folder | image_folder
    name: str = "???"
    root: str = "???"
    # None: the reader's default split
    split: str | None = None
    masks: str | None = None
    # optional text file with the ids to use, one per line
    ids: str | None = None
    # > 0: use only this many images, evenly spaced over the (sorted) ids
    limit: int = bounded(0, ge=0)


@dataclass
class RegionsConfig:
    """Region masks made from the image itself (``data.mask_source: felzenszwalb | grid``), see
    :mod:`maskcontrast.data.regions`. Felzenszwalb runs on the image as kept in memory
    (``data.load_size``), once per image, cached under ``cache_dir``."""

    # grid: cells per side
    grid_cells: int = bounded(4, ge=1, le=15)
    # felzenszwalb: larger -> larger segments
    scale: float = bounded(100.0, gt=0.0)
    # felzenszwalb: Gaussian pre-smoothing
    sigma: float = bounded(0.8, ge=0.0)
    # felzenszwalb: smallest segment, pixels at data.load_size
    min_size: int = bounded(50, ge=1)
    # felzenszwalb: the smallest segments are merged down to this
    max_regions: int = bounded(32, ge=1, le=255)
    # null: recompute every time (no disk cache)
    cache_dir: str | None = "~/.cache/maskcontrast/regions"


@dataclass
class DataConfig:
    """Where training images (and object masks) come from and how they are loaded on the CPU."""

    sources: list[DataSourceConfig] = field(default_factory=list)
    # default masks folder for sources that set none
    masks: str | None = None
    # side of every augmented view
    image_size: int = bounded(224, ge=8)
    # longer image side kept in memory before cropping; 0 = 1.5 x image_size
    load_size: int = bounded(0, ge=0)
    # an image whose object mask covers less is skipped (counted)
    min_mask_fraction: float = bounded(0.01, ge=0.0, le=1.0)
    # DataLoader worker processes (0 = load in the main process)
    num_workers: int = bounded(2, ge=0)
    # keep resized images in RAM after their first load (best with num_workers=0)
    cache_images: bool = False
    # the masks of an objective that needs them: masks (the sources' masks folders / own masks, e.g.
    # saliency.generate's), felzenszwalb (segments of the image) or grid (data.regions.grid_cells^2 cells)
    mask_source: str = bounded("masks", choices=("masks", "felzenszwalb", "grid"))
    regions: RegionsConfig = field(default_factory=RegionsConfig)


@dataclass
class AugmentConfig:
    """Paired view augmentation (batched with kornia on the training device)."""

    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0], metadata=checks(gt=0.0, le=1.0, each=True))
    crop_ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0], metadata=checks(gt=0.0, each=True))
    # a view is redrawn until its mask covers at least min_mask_area of the crop and at most max_mask_area
    min_mask_area: float = bounded(0.01, ge=0.0, le=1.0)
    max_mask_area: float = bounded(0.99, ge=0.0, le=1.0)
    # redraws per view before another image is drawn
    view_attempts: int = bounded(3, ge=1)
    # brightness, contrast, saturation, hue
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])
    color_jitter_p: float = bounded(0.8, ge=0.0, le=1.0)
    grayscale_p: float = bounded(0.2, ge=0.0, le=1.0)
    # MoCo v2: 0.5
    blur_p: float = bounded(0.0, ge=0.0, le=1.0)
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0], metadata=checks(gt=0.0, each=True))
    flip_p: float = bounded(0.5, ge=0.0, le=1.0)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class OptimConfig:
    """SGD with momentum and weight decay, and its learning-rate schedule (:mod:`maskcontrast.schedules`)."""

    # global batch (split evenly over DDP processes)
    batch_size: int = bounded(64, ge=1)
    lr: float = bounded(0.004, gt=0.0)
    momentum: float = bounded(0.9, ge=0.0, lt=1.0)
    weight_decay: float = bounded(1e-4, ge=0.0)
    nesterov: bool = False
    schedule: str = bounded("poly", choices=("poly", "cosine", "constant"))
    poly_power: float = bounded(0.9, gt=0.0)
    # linear warm-up from 0
    warmup_steps: int = bounded(0, ge=0)
    # step: the schedule moves every step; epoch: it holds for a whole epoch (the official poly schedule)
    schedule_unit: str = bounded("step", choices=("step", "epoch"))


@dataclass
class TrainerConfig:
    """The training loop, its run folder and its hardware settings."""

    run_dir: str = "runs/pretrain"
    epochs: int = bounded(40, ge=0)
    # > 0: a step budget; the schedule spans this many steps (0 or null: none)
    max_steps: int | None = bounded(0, ge=0)
    # none | auto (continue from <run_dir>/last.pt when it exists) | path to a last.pt
    resume: str = "none"
    # allow starting afresh in a run folder that already holds a run
    overwrite: bool = False
    # also keep epoch_<n>.pt every n epochs (0 = never)
    save_every_epochs: int = bounded(10, ge=0)
    # refresh last.pt every n steps (0 = at epoch ends and at the end only)
    save_every_steps: int = bounded(0, ge=0)
    # TensorBoard scalars every n steps
    log_every_steps: int = bounded(10, ge=1)
    # auto (CUDA when present) | cpu | cuda | cuda:1 ...
    device: str = "auto"
    # autocast
    precision: str = bounded("fp32", choices=("fp32", "bf16", "fp16"))
    # NHWC: the fast path (fp32 loss within 1e-5 of NCHW, tests/maskcontrast/test_train.py)
    channels_last: bool = True
    seed: int = 0
    # torch CPU threads per process (0 = torch's default)
    threads: int = bounded(0, ge=0)
    # tqdm progress bar
    progress: bool = True


@dataclass
class MaskContrastObjectiveConfig:
    """The MaskContrast loss: pixel-to-prototype contrast plus balanced BCE on saliency."""

    temperature: float = bounded(0.5, gt=0.0)
    # memory bank of past prototypes (paper: 128 or 256)
    queue_size: int = bounded(128, ge=0)
    # key network EMA
    key_momentum: float = bounded(0.999, ge=0.0, le=1.0)
    # deprecated alias of key_momentum
    momentum: float | None = bounded(None, ge=0.0, le=1.0)
    contrastive_weight: float = bounded(1.0, ge=0.0)
    saliency_weight: float = bounded(1.0, ge=0.0)
    # enet: 1 / log(1.02 + p), p per batch
    class_weighting: str = bounded("enet", choices=("enet", "none"))
    # freeze conv1 .. layer2 (the supervised-saliency recipe)
    freeze_early_layers: bool = False
    # negatives of a pixel under DDP: global (the prototypes of every process + the queue) or local
    # (its own process's prototypes + the queue, as the official code); the queue always gets every process's
    negatives: str = bounded("global", choices=("global", "local"))


@dataclass
class PretrainConfig:
    """``python -m maskcontrast.pretrain``: every option of a MaskContrast pretraining run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: MaskContrastObjectiveConfig = field(default_factory=MaskContrastObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class MocoModelConfig:
    """Image-level MoCo v2 encoder: a standard (undilated) torchvision ResNet, or a timm ViT (its
    class token), with an MLP head."""

    # resnet18 | resnet34 | resnet50 (resnet101 works too) | a ViT of VIT_ARCHS
    arch: str = "resnet50"
    # output dimension of the projection
    dim: int = bounded(128, ge=1)
    # MoCo v2: Linear(C, C) + ReLU + Linear(C, dim); False: MoCo v1's Linear(C, dim)
    mlp: bool = True
    # random | a checkpoint path of any known layout (backbone only)
    init: str = "random"
    # full DINO checkpoints
    init_key: str = bounded("teacher", choices=("teacher", "student"))
    vit: ViTConfig = field(default_factory=ViTConfig)


@dataclass
class MocoObjectiveConfig:
    """InfoNCE against a queue of past keys."""

    temperature: float = bounded(0.2, gt=0.0)
    queue_size: int = bounded(65536, ge=0)
    # key encoder EMA
    key_momentum: float = bounded(0.999, ge=0.0, le=1.0)
    # deprecated alias of key_momentum
    momentum: float | None = bounded(None, ge=0.0, le=1.0)


@dataclass
class MocoConfig:
    """``python -m maskcontrast.moco``: every option of a MoCo v2 run."""

    model: MocoModelConfig = field(default_factory=MocoModelConfig)
    objective: MocoObjectiveConfig = field(default_factory=MocoObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(blur_p=0.5))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(batch_size=256, lr=0.03, schedule="cosine", weight_decay=1e-4)
    )
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_dir="runs/moco", epochs=200))


# ----------------------------------------------------------------------------------------------
# The other dense objectives (docs/OBJECTIVES.md): DetCon, DenseCL, a STEGO-style head
# ----------------------------------------------------------------------------------------------


@dataclass
class DetConModelConfig:
    """A ResNet (plain, output stride 32 as the paper, or dilated as MaskContrast's backbone) with
    DetCon's MLP projector (and predictor for DetConB). Checkpoints keep the MoCo layout
    (``module.encoder_q.<resnet key>``), so ``model.backbone.init`` of MaskContrast reads them."""

    # a ViT: its patch map (stride = patch)
    arch: str = bounded("resnet50", choices=RESNET_ARCHS + VIT_ARCHS)
    # 32: the paper; 8: 8x finer regions at small views
    output_stride: int = bounded(32, choices=(8, 16, 32))
    # random | torchvision | a checkpoint of any known layout (backbone only)
    init: str = "random"
    # full DINO checkpoints
    init_key: str = bounded("teacher", choices=("teacher", "student"))
    # ViT archs only
    vit: ViTConfig = field(default_factory=ViTConfig)
    # projector / predictor: Linear(C, hidden) BN ReLU Linear(hidden, dim)
    proj_hidden: int = bounded(4096, ge=1)
    proj_dim: int = bounded(256, ge=1)


@dataclass
class DetConObjectiveConfig:
    """DetCon's region contrastive loss (DetConS: SimCLR-style; DetConB: predictor + momentum target)."""

    variant: str = bounded("b", choices=("s", "b"))
    # paper: 0.1
    temperature: float = bounded(0.1, gt=0.0)
    # paper: 16 masks sampled per image
    regions_per_image: int = bounded(16, ge=1)
    # DetConB target EMA (paper: BYOL's 0.996, cosine to 1)
    key_momentum: float = bounded(0.996, ge=0.0, le=1.0)


@dataclass
class DetConConfig:
    """``python -m maskcontrast.detcon``: every option of a DetCon run."""

    model: DetConModelConfig = field(default_factory=DetConModelConfig)
    objective: DetConObjectiveConfig = field(default_factory=DetConObjectiveConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(mask_source="felzenszwalb"))
    # region masks cover the image: no object-area constraint on the crops
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(blur_p=0.5, min_mask_area=0.0, max_mask_area=1.0)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            batch_size=256, lr=0.3, schedule="cosine", weight_decay=1e-6, warmup_steps=0
        )
    )
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_dir="runs/detcon", epochs=300))


@dataclass
class DenseCLModelConfig:
    """A ResNet with DenseCL's two heads: the global MLP of MoCo v2 (``fc``) and a dense 1x1-conv MLP.
    Checkpoints keep the MoCo layout plus ``module.dense_head_q.*``."""

    # a ViT: its patch map (stride = patch)
    arch: str = bounded("resnet50", choices=RESNET_ARCHS + VIT_ARCHS)
    # 32: the paper (7x7 dense grid at 224 px)
    output_stride: int = bounded(32, choices=(8, 16, 32))
    init: str = "random"
    # full DINO checkpoints
    init_key: str = bounded("teacher", choices=("teacher", "student"))
    # ViT archs only
    vit: ViTConfig = field(default_factory=ViTConfig)
    dim: int = bounded(128, ge=1)


@dataclass
class DenseCLObjectiveConfig:
    """MoCo v2's global InfoNCE plus the dense InfoNCE over matched locations."""

    temperature: float = bounded(0.2, gt=0.0)
    # global and dense queues (paper: 65,536 each)
    queue_size: int = bounded(65536, ge=0)
    key_momentum: float = bounded(0.999, ge=0.0, le=1.0)
    # lambda: (1 - lambda) L_global + lambda L_dense
    dense_weight: float = bounded(0.5, ge=0.0, le=1.0)


@dataclass
class DenseCLConfig:
    """``python -m maskcontrast.densecl``: every option of a DenseCL run."""

    model: DenseCLModelConfig = field(default_factory=DenseCLModelConfig)
    objective: DenseCLObjectiveConfig = field(default_factory=DenseCLObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(blur_p=0.5))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=256, lr=0.03, schedule="cosine"))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_dir="runs/densecl", epochs=200))


@dataclass
class StegoObjectiveConfig:
    """STEGO's correspondence loss over three kinds of pairs, each with its weight and shift ``b``."""

    # K nearest neighbours by frozen global feature (paper: 7)
    neighbours: int = bounded(7, ge=1)
    self_weight: float = bounded(0.67, ge=0.0)
    self_shift: float = 0.18
    knn_weight: float = bounded(0.25, ge=0.0)
    knn_shift: float = 0.12
    random_weight: float = bounded(0.63, ge=0.0)
    random_shift: float = 0.46
    # centre the feature correlation per location (STEGO's pointwise option)
    pointwise: bool = True


@dataclass
class StegoConfig:
    """``python -m maskcontrast.stego``: a STEGO-style head on a frozen backbone (``model.head=stego``)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(head="stego", embed_dim=70, saliency_head=False))
    objective: StegoObjectiveConfig = field(default_factory=StegoObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(batch_size=32, lr=0.01, schedule="constant", weight_decay=0.0)
    )
    trainer: TrainerConfig = field(
        default_factory=lambda: TrainerConfig(run_dir="runs/stego", epochs=0, max_steps=5000)
    )

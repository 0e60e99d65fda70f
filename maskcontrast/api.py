"""Feature-extraction API: load any checkpoint and get embeddings, saliency and features.

:func:`load_model` reads a maskcontrast checkpoint (the full network), an official MoCo v2 file or
a torchvision ResNet state dict (both backbone-only, for baselines) and returns a
:class:`FeatureModel` in eval mode. Its methods accept PIL images, ``H x W x 3`` numpy arrays
(uint8, or float in ``[0, 1]``), image paths, ``3 x H x W`` / ``B x 3 x H x W`` tensors (uint8, or
float in ``[0, 1]``) and lists of any of these. Images are converted to RGB, optionally resized,
normalised with the ImageNet mean and std, batched and run on the model's device.

Outputs:

* :meth:`FeatureModel.embed`: L2-normalised ``B x D x H x W`` pixel embeddings (``D`` = 32 for a
  maskcontrast model; the normalised backbone features for a backbone-only model);
* :meth:`FeatureModel.saliency`: ``B x 1 x H x W`` saliency probabilities (maskcontrast models with a
  saliency head only; otherwise :class:`NoSaliencyHeadError`);
* :meth:`FeatureModel.features`: the 256-d decoder features, or the backbone's layer4 features;
* :meth:`FeatureModel.segment_like`: segment by example (support images with masks -> a mask and a
  soft map per query image; the math is in :mod:`maskcontrast.prompt`).

``resolution="input"`` (default) returns every result at the size of the image that was passed in
(bilinear upsampling straight from the feature map, then L2 normalisation for embeddings and a
sigmoid for saliency); ``resolution="feature"`` returns the network's output grid
(``ceil(H' / output_stride)`` for a network input of height ``H'``).

Backbone-only ResNet files (MoCo, torchvision) are built as a dilated ResNet with output stride 8
by default (``output_stride=`` picks 16 or 32), the same dense backbone the MaskContrast model
uses. Backbone-only ViT files (DINO, full DINO checkpoints, DINOv2, MAE) are built as the timm
variant their tensors show (patch size, width, depth, registers); their output stride is the patch
size and ``features`` are the patch tokens. The official MaskContrast zoo files load as full
models (docs/BACKBONES.md).

Example::

    import maskcontrast
    from PIL import Image
    model = maskcontrast.load_model("run/checkpoint.pt")            # CUDA when present
    emb = model.embed(Image.open("cat.jpg"))                         # 1 x 32 x H x W, unit norm
    sal = model.saliency(Image.open("cat.jpg"))                      # 1 x 1 x H x W in [0, 1]
    feats = model.features(["a.jpg", "b.jpg"], size=512, resolution="feature")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from maskcontrast.config import IMAGENET_MEAN, IMAGENET_STD
from maskcontrast.data.record import DataError
from maskcontrast.embeddings import upsample_embedding
from maskcontrast.images import InputTooLargeError, flatten_images, target_size, to_image_tensor
from maskcontrast.models import (
    CheckpointError,
    FeatureOutput,
    MaskContrastModel,
    ResNetBackbone,
    ViTBackbone,
    detect_layout,
    extract_backbone,
    infer_backbone_arch,
    load_backbone,
    model_from_checkpoint,
    read_checkpoint,
)
from maskcontrast.prompt import (
    as_support_mask,
    combine_shots,
    foreground_probability,
    prototype_score,
    support_prototypes,
)
from maskcontrast.utils import get_device

__all__ = [
    "NoSaliencyHeadError",
    "FeatureOutput",
    "FeatureModel",
    "SegmentLikeOutput",
    "input_too_large",
    "refuse_too_large",
    "load_model",
    "net_kind",
    "NetKind",
    "upsample_saliency",
]

log = logging.getLogger(__name__)

RESOLUTIONS = ("input", "feature")


class NoSaliencyHeadError(ValueError):
    """The model has no saliency head (a backbone-only baseline, or ``saliency_head: false``)."""


class SegmentLikeOutput(NamedTuple):
    """What :meth:`FeatureModel.segment_like` returns, per query image.

    Attributes:
        masks: ``B x H x W`` bool (a list of ``H_i x W_i`` when the query sizes differ).
        soft: ``B x H x W`` float32 soft foreground maps in ``[0, 1]`` (a list likewise).
    """

    masks: torch.Tensor | list[torch.Tensor]
    soft: torch.Tensor | list[torch.Tensor]


# Upsampling
# ----------------------------------------------------------------------------------------------


def upsample_saliency(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B x 1 x h x w`` logits -> ``B x 1 x H x W`` probabilities (bilinear on logits, then sigmoid)."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return torch.sigmoid(logits.float())


def _upsample_features(feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(feats.shape[-2:]) != tuple(size):
        feats = F.interpolate(feats.float(), size=size, mode="bilinear", align_corners=False)
    return feats.float()


# ----------------------------------------------------------------------------------------------
# The model wrapper
# ----------------------------------------------------------------------------------------------


class NetKind(NamedTuple):
    """What :class:`FeatureModel` needs to know about one kind of network."""

    name: str
    arch: str
    output_stride: int
    feature_dim: int
    embed_dim: int
    has_saliency: bool
    #: ``(net, x) -> (features, embedding, saliency or None)`` at feature resolution
    outputs: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def _maskcontrast_outputs(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    out = net(x, upsample=False)
    return out.features, out.embedding, out.saliency


def _backbone_outputs(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
    feats = net(x)
    return feats, feats, None  # a backbone's embedding is its features


def net_kind(net: nn.Module) -> NetKind:
    """The :class:`NetKind` of a MaskContrastModel (full network) or a ResNet / ViT backbone (baseline)."""
    if isinstance(net, MaskContrastModel):
        feature_dim = (
            net.backbone.out_channels if getattr(net.cfg, "head", "deeplab") == "stego" else net.cfg.head_channels
        )
        return NetKind(
            "maskcontrast",
            net.backbone.arch,
            net.backbone.output_stride,
            feature_dim,
            net.embed_dim,
            net.saliency_head is not None,
            _maskcontrast_outputs,
        )
    if isinstance(net, (ResNetBackbone, ViTBackbone)):
        return NetKind(
            "backbone", net.arch, net.output_stride, net.out_channels, net.out_channels, False, _backbone_outputs
        )
    raise ValueError(
        f"FeatureModel wraps a MaskContrastModel, a ResNetBackbone or a ViTBackbone, got {type(net).__name__}"
    )


class FeatureModel(nn.Module):
    """A frozen network in eval mode with image preprocessing, batching and resizing.

    Args:
        net: a :class:`~maskcontrast.models.MaskContrastModel` or a
            :class:`~maskcontrast.models.ResNetBackbone` (backbone-only baseline).
        size: default resize: None (keep), an int (shorter side) or ``(H, W)``.
        stride: network input sides are rounded to a multiple of this (default: the output stride).
        batch_size: images per forward pass (images of different sizes are never stacked).
        amp: float16 autocast on CUDA (ignored on CPU).
        source: where the weights came from (for messages); ``layout``: the checkpoint layout.

    ``forward(x)`` takes a normalised ``B x 3 x H x W`` batch and returns a :class:`FeatureOutput`
    at feature resolution; the methods below do everything else.

    Example::

        net = MaskContrastModel(ModelConfig())
        model = FeatureModel(net, size=512)
        emb = model.embed(torch.rand(2, 3, 300, 400))   # 2 x 32 x 300 x 400
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        size: int | Sequence[int] | None = None,
        stride: int | None = None,
        batch_size: int = 8,
        amp: bool = False,
        source: str = "",
        layout: str = "",
    ) -> None:
        super().__init__()
        kind = net_kind(net)
        self.kind = kind.name
        self.output_stride = kind.output_stride
        self.feature_dim = kind.feature_dim
        self.embed_dim = kind.embed_dim
        self.has_saliency = kind.has_saliency
        self.arch = kind.arch
        self._outputs = kind.outputs
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.net = net
        self.size = size
        self.stride = int(stride) if stride is not None else self.output_stride
        self.batch_size = int(batch_size)
        self.amp = bool(amp)
        self.source = source
        self.layout = layout or self.kind
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureModel:
        """Always eval mode: the wrapped network is frozen (BN statistics never change)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def __repr__(self) -> str:
        return (
            f"FeatureModel(kind={self.kind}, arch={self.arch}, layout={self.layout}, output_stride={self.output_stride}, "
            f"feature_dim={self.feature_dim}, embed_dim={self.embed_dim}, saliency={self.has_saliency}, "
            f"device={self.device}, source={self.source or '-'})"
        )

    # -- network ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> FeatureOutput:
        """``B x 3 x H x W`` normalised images -> :class:`FeatureOutput` at feature resolution."""
        use_amp = self.amp and x.device.type == "cuda"
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            feats, emb, sal = self._outputs(self.net, x)
        return FeatureOutput(feats.float(), emb.float(), sal.float() if sal is not None else None)

    # -- preprocessing ---------------------------------------------------------------------------
    def preprocess(
        self, images: Any, size: int | Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor, list[tuple[int, int]]]]:
        """Yield ``(indices, batch, input_sizes)``: normalised ``B x 3 x H' x W'`` batches on the
        device, the positions of their images in the input, and each image's original ``(H, W)``.
        Consecutive images with the same network input size share a batch."""
        items = flatten_images(images)
        size = self.size if size is None else size
        pending: list[tuple[int, torch.Tensor, tuple[int, int]]] = []

        def flush() -> tuple[list[int], torch.Tensor, list[tuple[int, int]]]:
            idx = [p[0] for p in pending]
            batch = torch.stack([p[1] for p in pending])
            sizes = [p[2] for p in pending]
            pending.clear()
            return idx, batch, sizes

        for i, item in enumerate(items):
            t = to_image_tensor(item).to(self.device, non_blocking=True)
            hw = (int(t.shape[1]), int(t.shape[2]))
            try:
                tgt = target_size(hw, size, self.stride)
            except InputTooLargeError as err:
                where = str(item) if isinstance(item, (str, Path)) else f"image {i} of the input"
                raise InputTooLargeError(f"{where}: {err}") from None
            if tgt != hw:
                t = F.interpolate(t[None], size=tgt, mode="bilinear", align_corners=False, antialias=True)[0]
            t = (t[None] - self.mean) / self.std
            if pending and (pending[0][1].shape != t[0].shape or len(pending) >= self.batch_size):
                yield flush()
            pending.append((i, t[0], hw))
        if pending:
            yield flush()

    def run(
        self, images: Any, *, size: int | Sequence[int] | None = None
    ) -> Iterator[tuple[int, FeatureOutput, tuple[int, int]]]:
        """Yield ``(index, output, input_size)`` per image, in input order: the raw
        :class:`FeatureOutput` at feature resolution with batch size 1, and the image's ``(H, W)``.
        Upsample with :func:`maskcontrast.embeddings.upsample_embedding` / :func:`upsample_saliency` as needed."""
        for idx, batch, sizes in self.preprocess(images, size):
            out = self(batch)
            for j, (i, hw) in enumerate(zip(idx, sizes)):
                sal = out.saliency[j : j + 1] if out.saliency is not None else None
                yield i, FeatureOutput(out.features[j : j + 1], out.embedding[j : j + 1], sal), hw

    # -- public methods --------------------------------------------------------------------------
    def embed(
        self, images: Any, *, size: int | Sequence[int] | None = None, resolution: str = "input"
    ) -> torch.Tensor | list[torch.Tensor]:
        """L2-normalised embeddings, ``B x D x H x W`` (see :meth:`_collect` for the return type)."""
        return self._collect(images, "embed", size, resolution)

    def saliency(
        self, images: Any, *, size: int | Sequence[int] | None = None, resolution: str = "input"
    ) -> torch.Tensor | list[torch.Tensor]:
        """Saliency probabilities in ``[0, 1]``, ``B x 1 x H x W``.

        Raises:
            NoSaliencyHeadError: the model has no saliency head.
        """
        if not self.has_saliency:
            raise NoSaliencyHeadError(
                f"{self.source or 'this model'} ({self.layout}) has no saliency head; use saliency from a "
                "maskcontrast checkpoint trained with saliency_head=true, or give the evaluation a saliency "
                "source (--saliency-source gt|folder)"
            )
        return self._collect(images, "saliency", size, resolution)

    def features(
        self, images: Any, *, size: int | Sequence[int] | None = None, resolution: str = "input"
    ) -> torch.Tensor | list[torch.Tensor]:
        """Decoder (256-d) or backbone (layer4) features, ``B x F x H x W`` (not normalised)."""
        return self._collect(images, "features", size, resolution)

    def segment_like(
        self,
        support_images: Any,
        support_masks: Any,
        images: Any,
        threshold: float | None = None,
        *,
        temperature: float = 0.1,
        size: int | Sequence[int] | None = None,
    ) -> SegmentLikeOutput:
        """Segment "what looks like the masked region" of the support images in every query image.

        The support's foreground and background mask-mean prototypes (several shots averaged) are
        compared with every query pixel by cosine similarity: ``soft = sigmoid((cos_fg - cos_bg) /
        temperature)``, ``mask = soft > threshold`` (None: 0.5, the nearer prototype wins). Works
        for maskcontrast (embeddings) and backbone-only (features) models; the definitions are in
        :mod:`maskcontrast.prompt`.

        Args:
            support_images: ``K`` images (anything :meth:`embed` accepts).
            support_masks: ``K`` masks, each ``H_k x W_k`` like its image (bool, or 0 = background,
                255 = ignored, other values = foreground); a ``K x H x W`` tensor or array works too.
            images: the query images.
            threshold: on the soft map, in ``(0, 1)``; None means 0.5.
            temperature: of the soft map. size: network input size (see :class:`FeatureModel`).

        Returns:
            :class:`SegmentLikeOutput`: ``masks`` ``B x H x W`` bool and ``soft`` ``B x H x W``
            float32 at each query image's size (lists when the sizes differ).

        Raises:
            ValueError: a support mask without foreground, no background in any support mask, a
                mask whose size differs from its image, or a different number of masks and images.

        Example::

            out = model.segment_like([cat_a], [mask_a], [cat_b, cat_c])   # one shot
            out.masks.shape, out.soft.shape                                 # (2, H, W) each
        """
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        shots = flatten_images(support_images)
        if isinstance(support_masks, (list, tuple)) or getattr(support_masks, "ndim", 2) == 3:
            masks = list(support_masks)  # a list, or a K x H x W tensor / array
        else:
            masks = [support_masks]
        if len(masks) != len(shots):
            raise ValueError(f"{len(shots)} support images but {len(masks)} support masks; give one mask per image")
        fgs, bgs = [], []
        for i, out, hw in self.run(shots, size=size):
            fg, bg = support_prototypes(out.embedding, as_support_mask(masks[i], hw, i))
            fgs.append(fg)
            if bg is not None:
                bgs.append(bg)
        if not bgs:
            raise ValueError("no support mask has a background pixel; mark some pixels 0 (background)")
        fg, bg = combine_shots(fgs), combine_shots(bgs)
        soft = [
            foreground_probability(prototype_score(out.embedding, fg, bg), hw, temperature)[0, 0]
            for _, out, hw in self.run(images, size=size)
        ]
        cut = 0.5 if threshold is None else threshold
        hard = [s > cut for s in soft]
        if all(s.shape == soft[0].shape for s in soft):
            return SegmentLikeOutput(torch.stack(hard), torch.stack(soft))
        return SegmentLikeOutput(hard, soft)

    def segment(self, images: Any, clusters: Any, *, masks: Any = None) -> torch.Tensor | list[torch.Tensor]:
        """Label every pixel with a fitted clustering: ``B x H x W`` int64, 0 = background, ``1..k``
        the clusters (a list when the image sizes differ), the same as ``python -m eval.segment``'s
        label PNGs. ``clusters``: ``maskcontrast.fit_clusters(...)``, or
        ``eval.segment.Clusters.load("clusters.pt")``; ``masks``: one ``H x W`` object mask per image
        for clusters fitted with a masks folder. The clustering applies itself (``clusters.apply``).

        Example::

            clusters = maskcontrast.fit_clusters(model, ["a.jpg", "b.jpg", "c.jpg"], k=2)
            labels = model.segment(["d.jpg", "e.jpg"], clusters)     # 2 x H x W when same-sized
        """
        return clusters.apply(self, images, masks=masks)

    def _collect(
        self, images: Any, what: str, size: int | Sequence[int] | None, resolution: str
    ) -> torch.Tensor | list[torch.Tensor]:
        """Returns a ``B x C x H x W`` float32 tensor on the model's device when all results share
        a size (a batch tensor, a single image, same-sized images, or a fixed ``size=(H, W)`` with
        ``resolution="feature"``), else a list of ``C x H_i x W_i`` tensors in input order."""
        if resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        results: list[torch.Tensor] = []
        for _, out, hw in self.run(images, size=size):
            results.append(self._select(out, what, hw if resolution == "input" else None)[0])
        if all(r.shape == results[0].shape for r in results):
            return torch.stack(results)
        return results

    def _select(self, out: FeatureOutput, what: str, hw: tuple[int, int] | None) -> torch.Tensor:
        if what == "embed":
            return upsample_embedding(out.embedding, hw or tuple(out.embedding.shape[-2:]))
        if what == "saliency":
            if out.saliency is None:
                raise NoSaliencyHeadError("this model has no saliency head")
            return upsample_saliency(out.saliency, hw or tuple(out.saliency.shape[-2:]))
        if what == "features":
            return _upsample_features(out.features, hw or tuple(out.features.shape[-2:]))
        raise ValueError(f"unknown output {what!r}; choose embed, saliency or features")


def input_too_large(
    model: FeatureModel, dataset: Any, sample: Any, size: int | Sequence[int] | None = None
) -> str | None:
    """Why ``sample`` (a :class:`~maskcontrast.data.Sample` of ``dataset``) cannot go through
    ``model``: its network input, at ``size`` or else ``model.size``, would be over
    :data:`maskcontrast.images.MAX_INPUT_PIXELS`. The reason names the image's file; None when it
    can. A duck-typed model without ``size`` / ``stride`` is taken at the image's own size."""
    if size is None:
        size = getattr(model, "size", None)
    try:
        target_size(sample.size, size, getattr(model, "stride", 1))
    except InputTooLargeError as err:
        try:
            where = str(dataset.files(sample.id).image)
        except NotImplementedError:
            where = f"{type(dataset).__name__}: image {sample.id!r}"
        return f"{where}: {err}"
    return None


def refuse_too_large(
    model: FeatureModel, dataset: Any, samples: Sequence[Any], size: int | Sequence[int] | None = None
) -> None:
    """Raise a :class:`~maskcontrast.data.DataError` naming the first of ``samples`` that
    :func:`input_too_large` turns away (for passes that refuse rather than skip such an image)."""
    for s in samples:
        if (reason := input_too_large(model, dataset, s, size)) is not None:
            raise DataError(reason, sample_id=s.id)


def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    *,
    output_stride: int = 8,
    size: int | Sequence[int] | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    amp: bool = False,
    init_key: str = "teacher",
) -> FeatureModel:
    """Load a checkpoint of any known layout as a frozen :class:`FeatureModel` in eval mode.

    Args:
        path: a maskcontrast checkpoint or an official MaskContrast zoo file (full network), or a
            backbone-only file: MoCo, torchvision ResNet, DINO, full DINO, DINOv2, MAE
            (``features`` are layer4 features or ViT patch tokens, ``embed`` is their L2
            normalisation, ``saliency`` raises :class:`NoSaliencyHeadError`). The layout is
            detected from the contents (docs/BACKBONES.md); a ViT's variant from its tensors.
        device: ``cuda``, ``cpu``, ... (default: CUDA when present).
        output_stride: for backbone-only files: 8 (dilated layer3/layer4, default), 16 or 32.
            maskcontrast checkpoints keep the stride they were trained with; a ViT's is its patch size.
        size, stride, batch_size, amp: see :class:`FeatureModel`.
        init_key: for a full DINO training checkpoint, ``teacher`` (default) or ``student``.

    Raises:
        maskcontrast.models.CheckpointError: missing file, unknown layout, or weights that do not fit.

    Example::

        model = load_model("moco_v2_800ep_pretrain.pth.tar", output_stride=8)
        feats = model.features(torch.rand(1, 3, 224, 224), resolution="feature")  # 1 x 2048 x 28 x 28
    """
    ckpt = read_checkpoint(path)
    name = str(path)
    layout = detect_layout(ckpt, name)
    net: nn.Module
    if layout in ("maskcontrast", "maskcontrast_zoo", "maskcontrast_zoo_linear"):
        net = model_from_checkpoint(ckpt, name)
        if output_stride != 8 and output_stride != net.backbone.output_stride:
            log.warning(
                "%s: output_stride=%d ignored; the model keeps its trained stride %d",
                name,
                output_stride,
                net.backbone.output_stride,
            )
    else:
        try:
            found = infer_backbone_arch(extract_backbone(ckpt, layout, init_key, name).sd)
        except CheckpointError as err:
            raise CheckpointError(f"{name}: {layout} layout: {err}") from err
        if "vit" in found:
            vit = found["vit"]
            net = ViTBackbone(found["arch"], vit["img_size"], vit["dim"], vit["depth"])
            if output_stride != 8:
                log.warning(
                    "%s: output_stride=%d ignored; a ViT's stride is its patch size %d",
                    name,
                    output_stride,
                    net.output_stride,
                )
        else:
            net = ResNetBackbone(found["arch"], output_stride)
        load_backbone(net, ckpt, init_key, name=name)
    model = FeatureModel(net, size=size, stride=stride, batch_size=batch_size, amp=amp, source=name, layout=layout)
    model.to(get_device(device))
    log.info("loaded %r", model)
    return model

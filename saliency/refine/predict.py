"""Inference: load refiner.pt (every supported format version) and predict saliency maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from maskcontrast.config_loading import config_to_dict, load_config
from maskcontrast.models import read_checkpoint
from maskcontrast.models.checkpoint import CheckpointError
from maskcontrast.utils import autocast_dtype, get_device
from saliency.common import check_image, resize_map
from saliency.fusion import FusionConfig, FusionResult, fuse, fuse_with
from saliency.refine.config import COMBINES, FORMAT, PRECISIONS, SUPPORTED_VERSIONS, RefineConfig, validate
from saliency.refine.network import RefinerNet, flip_average, normalize
from saliency.refine.selftrain import align_mean

# Older checkpoints predate some keys; they load with the values that their version's code used.
_LEGACY = {
    1: {
        "model": {"stem_skip": False},
        "fused_weight": 0.0,
        "unconfident_weight": 0.0,
        "precision": "fp32",
        "align_mean": False,
        "combine": "blend",
    },
    2: {"align_mean": False, "combine": "blend"},
}


class RefinerPredictor:
    """Load ``refiner.pt`` and predict.

    ``predictor(image)`` with an ``H x W x 3`` uint8 RGB image returns an ``H x W`` float32 map
    in ``[0, 1]``: the flip-averaged network map, shifted to the fused map's mean when the run's
    ``align_mean`` is set, then combined with the classical maps as the run's ``combine`` says:
    ``fusion`` fuses it with them as one more estimator (:func:`saliency.fusion.fuse_with`),
    ``blend`` averages it with the fused map, ``(1 - fused_weight) * network + fused_weight *
    fused`` (``combine="blend", fused_weight=0`` gives the network alone, still aligned; the
    ``combine`` and ``fused_weight`` arguments override the run's). ``predictor.network(image)``
    is the network's raw map: flip-averaged, and averaged over the run's ``tta_scales`` (factors of
    ``input_size``; the ``tta_scales`` argument overrides them). Checkpoints of versions 1 and 2
    (written before some of these keys existed) load and predict as before.

    Example::

        predict = RefinerPredictor("run/refiner.pt")
        soft = predict(image)                      # H x W float32 in [0, 1]
    """

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | None = None,
        fused_weight: float | None = None,
        combine: str | None = None,
        tta_scales: Sequence[float] | None = None,
    ) -> None:
        path = Path(checkpoint).expanduser()
        ckpt = read_checkpoint(path)
        if ckpt.get("format") != FORMAT:
            raise CheckpointError(
                f"{path}: not a saliency refiner checkpoint (format {ckpt.get('format')!r}); "
                "pass the refiner.pt written by python -m saliency.refine"
            )
        version = ckpt.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise CheckpointError(
                f"{path}: refiner format version {version!r} is not supported (this code reads versions "
                f"{list(SUPPORTED_VERSIONS)}); retrain it with python -m saliency.refine or use a matching release"
            )
        try:
            cfg = load_config(RefineConfig)
            if version in _LEGACY:
                cfg = OmegaConf.merge(cfg, _LEGACY[version])
            cfg = OmegaConf.merge(cfg, ckpt["config"])
            validate(cfg)
        except Exception as err:
            raise CheckpointError(f"{path}: invalid refiner config ({err})") from err
        given = (("fused_weight", fused_weight), ("combine", combine), ("tta_scales", tta_scales))
        overrides = {k: v for k, v in given if v is not None}
        if overrides:  # the caller's settings, checked like the run's (ConfigError, a ValueError)
            cfg = OmegaConf.merge(cfg, overrides)
            validate(cfg)
        model_cfg = OmegaConf.to_object(cfg.model)
        model_cfg.init = "random"
        self.net = RefinerNet(model_cfg)
        try:
            self.net.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: the weights do not fit the refiner network of its config ({err})") from err
        self.device = get_device(device)
        self.net.to(self.device, memory_format=torch.channels_last).eval()
        self.dtype = autocast_dtype(str(cfg.precision), self.device, choices=PRECISIONS)
        self.input_size = int(cfg.input_size)
        self.tta_scales = [float(x) for x in cfg.tta_scales]
        self.fused_weight = float(cfg.fused_weight)
        self.align_mean = bool(cfg.align_mean)
        self.combine = str(cfg.combine)
        self.fusion = FusionConfig(**config_to_dict(cfg.fusion))

    @torch.no_grad()
    def network(self, image: np.ndarray) -> np.ndarray:
        """The network's map of an ``H x W x 3`` uint8 image, flip-averaged and averaged over
        ``tta_scales``: ``H x W`` float32 in ``[0, 1]``."""
        image = check_image(image)
        h, w = image.shape[:2]
        out = np.zeros((h, w), np.float32)
        for scale in self.tta_scales:
            s = max(32, round(self.input_size * scale))
            small = np.array(Image.fromarray(image).resize((s, s), Image.BILINEAR, reducing_gap=2.0))
            p = flip_average(self.net, normalize(torch.from_numpy(small)[None].to(self.device)), self.dtype)
            out += resize_map(p[0, 0].cpu().numpy(), (h, w))
        return np.clip(out / len(self.tta_scales), 0.0, 1.0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self.network(image)
        if self.combine == "fusion" or self.fused_weight > 0 or self.align_mean:
            return self.output(out, fuse(image, self.fusion))
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def output(self, network_map: np.ndarray, result: FusionResult, combine: str | None = None) -> np.ndarray:
        """The refined map from the network's map (:meth:`network`) and the image's fusion
        (:func:`saliency.fusion.fuse` with ``self.fusion``): aligned with ``align_mean``, then
        combined by ``combine`` (default: this predictor's). ``H x W`` float32 in ``[0, 1]``."""
        combine = self.combine if combine is None else combine
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}")
        out = network_map
        if self.align_mean:
            goal = torch.tensor([float(result.saliency.mean())])
            out = align_mean(torch.from_numpy(out)[None], goal)[0].numpy()
        if combine == "fusion":
            out = fuse_with(result, {"network": out}, self.fusion)
        else:
            out = (1.0 - self.fused_weight) * out + self.fused_weight * result.saliency
        return np.clip(out, 0.0, 1.0).astype(np.float32)

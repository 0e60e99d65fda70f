"""Which pixels form an image's object mask in the evaluations: the model's saliency head, the ground-truth foreground, or a folder of masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from maskcontrast.api import FeatureModel, FeatureOutput, upsample_saliency
from maskcontrast.data import DataError, DatasetInfo, Sample, SegmentationDataset

__all__ = ["SaliencySource"]


@dataclass
class SaliencySource:
    """Which pixels form an image's object mask: the model's saliency head, the ground-truth
    foreground, or object masks from a folder (use a dataset built with ``masks=DIR``)."""

    kind: str = "model"
    threshold: float = 0.5

    def check(self, model: FeatureModel, info: DatasetInfo) -> None:
        """Raise ``ValueError`` with a fix when this source cannot work for the model/dataset."""
        if self.kind not in ("model", "gt", "folder"):
            raise ValueError(f"saliency source must be model, gt or folder, got {self.kind!r}")
        if self.kind == "model" and not model.has_saliency:
            raise ValueError(
                f"{model.source or 'the model'} ({model.layout}) has no saliency head; pass --saliency-source gt "
                "(ground-truth foreground) or --saliency-source folder --saliency-dir DIR (object masks)"
            )
        if self.kind == "gt" and info.background is None:
            raise ValueError(
                f"--saliency-source gt needs a background class, and {info.name} has none; use "
                "--saliency-source folder --saliency-dir DIR instead"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"saliency threshold must lie in (0, 1), got {self.threshold}")

    def foreground(
        self, sample: Sample, out: FeatureOutput, info: DatasetInfo, ds: SegmentationDataset
    ) -> torch.Tensor:
        """``H x W`` bool foreground at the label's resolution (on the output's device)."""
        hw = sample.size
        device = out.embedding.device
        if self.kind == "model":
            if out.saliency is None:
                raise ValueError("the model has no saliency head")
            return upsample_saliency(out.saliency, hw)[0, 0] > self.threshold
        if self.kind == "gt":
            if sample.label is None:
                raise DataError(f"{sample.id}: --saliency-source gt needs labels", sample_id=sample.id)
            lab = sample.label
            fg = (lab != info.background) & (lab != info.ignore_index)
            return torch.from_numpy(fg).to(device)
        if sample.mask is None:
            path = ds.mask_path(sample.id)
            raise DataError(f"object mask not found: {path}; every evaluated image needs one", path=str(path))
        return torch.from_numpy(sample.mask > 0).to(device)

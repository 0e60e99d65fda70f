"""Streaming a dataset through a model one image at a time (images decoded in worker processes, batched forward passes)."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader

from maskcontrast.api import FeatureModel, FeatureOutput
from maskcontrast.data import Sample, SegmentationDataset

__all__ = ["collate_samples", "iter_model_outputs"]


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """DataLoader collate: keep the list of :class:`Sample` records (sizes differ)."""
    return batch


def iter_model_outputs(
    model: FeatureModel,
    dataset: SegmentationDataset,
    *,
    workers: int = 0,
    start: int = 0,
    desc: str = "images",
    progress: bool = True,
) -> Iterator[tuple[int, Sample, FeatureOutput]]:
    """Yield ``(index, sample, output)`` for images ``start..`` of ``dataset``, one at a time;
    images are decoded in ``workers`` processes and run through the model ``model.batch_size`` at a time.
    Outputs are at feature resolution (batch size 1)."""
    from torch.utils.data import Subset
    from tqdm import tqdm

    subset = Subset(dataset, range(start, len(dataset))) if start else dataset
    loader = DataLoader(
        subset,
        batch_size=model.batch_size,
        num_workers=max(0, workers),
        collate_fn=collate_samples,
        persistent_workers=False,
    )
    bar = tqdm(total=len(dataset), initial=start, desc=desc, unit="img", disable=not progress, leave=False)
    index = start
    try:
        for samples in loader:
            for j, out, _ in model.run([s.image for s in samples]):
                yield index + j, samples[j], out
            index += len(samples)
            bar.update(len(samples))
    finally:
        bar.close()

"""Streaming a dataset through a model one image at a time (images decoded in worker processes, batched forward passes)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from torch.utils.data import DataLoader

from maskcontrast.api import FeatureModel, FeatureOutput
from maskcontrast.data import Sample, SegmentationDataset
from maskcontrast.preemption import Preempted, ignore_signals_in_worker, requested, section

__all__ = ["collate_samples", "iter_model_outputs"]

log = logging.getLogger(__name__)


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
    Outputs are at feature resolution (batch size 1).

    SIGTERM/SIGINT end the pass after the current batch (:mod:`maskcontrast.preemption`): a
    :class:`eval.caches.StreamCache` saves and stops first; without one, nothing is saved."""
    from torch.utils.data import Subset
    from tqdm import tqdm

    subset = Subset(dataset, range(start, len(dataset))) if start else dataset
    loader = DataLoader(
        subset,
        batch_size=model.batch_size,
        num_workers=max(0, workers),
        collate_fn=collate_samples,
        persistent_workers=False,
        worker_init_fn=ignore_signals_in_worker,
    )
    bar = tqdm(total=len(dataset), initial=start, desc=desc, unit="img", disable=not progress, leave=False)
    index = start
    try:
        with section(desc):
            for samples in loader:
                for j, out, _ in model.run([s.image for s in samples]):
                    yield index + j, samples[j], out
                index += len(samples)
                bar.update(len(samples))
                if (signum := requested()) is not None and index < len(dataset):
                    err = Preempted(signum, desc, step=f"after {index} images", hint="rerun the same command")
                    log.warning("%s", err)
                    raise err
    finally:
        bar.close()

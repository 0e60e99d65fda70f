"""Streaming a dataset through a model one image at a time (images decoded in worker processes, batched
forward passes), and the ground truth that an evaluation needs from each sample."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from maskcontrast.api import FeatureModel, FeatureOutput, input_too_large, refuse_too_large
from maskcontrast.data import DataError, Sample, SegmentationDataset
from maskcontrast.preemption import ignore_signals_in_worker, section, stop_if_requested

__all__ = [
    "collate_samples",
    "iter_model_outputs",
    "require_label",
    "Unreadable",
    "iter_readable_outputs",
]

log = logging.getLogger(__name__)


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """DataLoader collate: keep the list of :class:`Sample` records (sizes differ)."""
    return batch


def require_label(sample: Sample, purpose: str, ds: SegmentationDataset | None = None) -> np.ndarray:
    """The sample's ``H x W`` ground-truth label, for an evaluation that cannot do without one.

    Args:
        sample: a decoded sample. purpose: who needs it, as the message says it ("the linear probe").
        ds: its dataset; the message then names the label file it looked for (else the sample id).

    Raises:
        DataError: ``"<file or id>: no ground-truth label; <purpose> needs labelled images"``.
    """
    if sample.label is None:
        where = (ds.files(sample.id).label if ds is not None else None) or sample.id
        raise DataError(f"{where}: no ground-truth label; {purpose} needs labelled images", sample_id=sample.id)
    return sample.label


def _stop_if_requested(desc: str, done: int, total: int) -> None:
    """After a batch: stop with :class:`~maskcontrast.preemption.Preempted` when SIGTERM/SIGINT
    arrived and images are left (a consumer with a :class:`eval.caches.StreamCache` has saved and
    stopped already)."""
    if done < total:
        stop_if_requested(desc, step=f"after {done} images", logger=log)


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
                refuse_too_large(model, dataset, samples)
                for j, out, _ in model.run([s.image for s in samples]):
                    yield index + j, samples[j], out
                index += len(samples)
                bar.update(len(samples))
                _stop_if_requested(desc, index, len(dataset))
    finally:
        bar.close()


@dataclass
class Unreadable:
    """An image that could not be read: its id and why (the :class:`DataError` message)."""

    id: str
    reason: str


class _Tolerant(Dataset):
    """A dataset whose unreadable images come back as :class:`Unreadable` instead of raising."""

    def __init__(self, ds: SegmentationDataset, start: int = 0) -> None:
        self.ds, self.start = ds, start

    def __len__(self) -> int:
        return len(self.ds) - self.start

    def __getitem__(self, i: int) -> Any:
        sid = self.ds.ids[self.start + i]
        try:
            return self.ds.load(sid)
        except DataError as err:
            return Unreadable(sid, str(err))


def _readable(model: FeatureModel | None, ds: SegmentationDataset, s: Any, skip: Mapping[str, str]) -> Any:
    """``s``, or an :class:`Unreadable` when ``skip`` names it or ``model`` cannot take it."""
    if isinstance(s, Unreadable):
        return s
    if s.id in skip:
        return Unreadable(s.id, skip[s.id])
    reason = input_too_large(model, ds, s) if model is not None else None
    return s if reason is None else Unreadable(s.id, reason)


def iter_readable_outputs(
    model: FeatureModel | None,
    ds: SegmentationDataset,
    *,
    start: int,
    workers: int,
    desc: str,
    progress: bool,
    batch: int = 4,
    skip: Mapping[str, str] | None = None,
) -> Iterator[tuple[int, Any, FeatureOutput | None]]:
    """Yield ``(index, sample or Unreadable, output or None)`` from ``start``; the model runs on the
    readable images only (``model=None``: decode only); SIGTERM/SIGINT as in :func:`iter_model_outputs`.
    An image is unreadable when it cannot be
    decoded, when its network input would be too large for ``model`` (:func:`input_too_large`), or
    when its id is in ``skip`` (id -> reason: e.g. the images an earlier pass skipped)."""
    from tqdm import tqdm

    loader = DataLoader(
        _Tolerant(ds, start),
        batch_size=model.batch_size if model is not None else batch,
        num_workers=max(0, workers),
        collate_fn=list,
        worker_init_fn=ignore_signals_in_worker,
    )
    bar = tqdm(total=len(ds), initial=start, desc=desc, unit="img", disable=not progress, leave=False)
    index = start
    try:
        with section(desc):
            for samples in loader:
                samples = [_readable(model, ds, s, skip or {}) for s in samples]
                good = [j for j, s in enumerate(samples) if not isinstance(s, Unreadable)]
                outs: dict[int, FeatureOutput] = {}
                if model is not None and good:
                    for j, out, _ in model.run([samples[j].image for j in good]):
                        outs[good[j]] = out
                for j, s in enumerate(samples):
                    yield index + j, s, outs.get(j)
                index += len(samples)
                bar.update(len(samples))
                _stop_if_requested(desc, index, len(ds))
    finally:
        bar.close()

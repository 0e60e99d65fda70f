"""The two K-means protocols as objects with the same methods (``check``, ``fit``, ``confusions``,
``predict``, ``pictures``), as the command line drives them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.caches import StreamCache
from eval.clustering import assign_clusters
from eval.kmeans.pixel import pixel_confusions, run_pixel_protocol
from eval.kmeans.prototype import assign_prototypes, collect_image_prototypes, run_prototype_protocol
from eval.kmeans.results import ClusterFit, prototype_confusion
from eval.metrics import apply_mapping
from eval.outputs import safe_name, save_panel
from eval.saliency_source import SaliencySource
from eval.stream import iter_model_outputs
from maskcontrast.api import FeatureModel
from maskcontrast.data import SegmentationDataset
from maskcontrast.embeddings import normalised_pixels

__all__ = ["KMeansProtocol", "PrototypeProtocol", "PixelProtocol", "PROTOCOLS"]


class KMeansProtocol:
    """What both K-means protocols share: the same methods (``check``, ``fit``, ``predict``,
    ``pictures``) and the pictures made from ``predict``."""

    name = ""
    default_matching = "auto"

    def __init__(
        self,
        *,
        k: int,
        seeds: Sequence[int],
        pca_dim: int = 32,
        matching: str | None = None,
        km: dict[str, Any] | None = None,
    ) -> None:
        self.k, self.seeds, self.pca_dim = int(k), list(seeds), int(pca_dim)
        self.matching = matching or self.default_matching
        self.km = dict(km or {})

    def check(self, model: FeatureModel, info: Any) -> None:
        """Raise ``ValueError`` with a fix when the protocol cannot run on this model/dataset."""

    def describe(self) -> dict[str, Any]:
        """What the result JSON records about the protocol."""
        return {"protocol": self.name, "matching": self.matching}

    def fit(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Run the protocol over ``ds`` (resumable with ``cache_dir``); returns the result dict and
        keeps what :meth:`predict` needs (first seed)."""
        raise NotImplementedError

    def predict(self, index: int, sample: Any, out: Any, ds: SegmentationDataset) -> np.ndarray:
        """The ``H x W`` cluster of every pixel of image ``index`` (first seed)."""
        raise NotImplementedError

    def confusions(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> list[np.ndarray]:
        """Apply the clustering fitted by :meth:`fit` to other images (``--fit-split``): one ``k x C``
        confusion per seed; :meth:`predict` then refers to ``ds``."""
        raise NotImplementedError

    def pictures(
        self,
        vis_dir: Path,
        n: int,
        model: FeatureModel,
        ds: SegmentationDataset,
        mapping: np.ndarray,
        vis_ids: Sequence[str] | None = None,
    ) -> int:
        """PNG panels (image | ground truth | prediction) for the first ``n`` images (or the first
        ``n`` of ``vis_ids``), first seed, clusters mapped to classes by ``mapping``."""
        from torch.utils.data import Subset

        vis_dir.mkdir(parents=True, exist_ok=True)
        if vis_ids is not None:
            index = {sample_id: i for i, sample_id in enumerate(ds.ids)}
            missing = [v for v in vis_ids if v not in index]
            if missing:
                raise ValueError(f"--vis-ids: {len(missing)} ids are not in the evaluated images, e.g. {missing[:3]}")
            chosen = [index[v] for v in vis_ids[:n]]
        else:
            chosen = list(range(min(n, len(ds))))
        count = 0
        for j, sample, out in iter_model_outputs(model, Subset(ds, chosen), desc="pictures", progress=False):  # type: ignore[arg-type]
            i = chosen[j]
            pred = apply_mapping(self.predict(i, sample, out, ds), mapping, unmatched=ds.info.ignore_index)
            save_panel(vis_dir / f"{i:04d}_{safe_name(sample.id)}.png", sample.image, sample.label, pred, ds.info)
            count += 1
        return count


class PrototypeProtocol(KMeansProtocol):
    """The paper's protocol: one prototype per image's salient mask, K-means (``k - 1`` clusters) of
    the prototypes; a pixel is its image's cluster inside the mask and background outside."""

    name = "prototype"
    default_matching = "hungarian"

    def __init__(self, source: SaliencySource, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.clusters: np.ndarray | None = None

    def check(self, model: FeatureModel, info: Any) -> None:
        self.source.check(model, info)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "saliency_source": self.source.kind}

    def fit(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        cache = StreamCache(cache_dir / "prototypes.pt", dict(settings or {}), save_every) if cache_dir else None
        result, _stats, clusters = run_prototype_protocol(
            model,
            ds,
            self.source,
            k=self.k,
            seeds=self.seeds,
            pca_dim=self.pca_dim,
            matching=self.matching,
            workers=workers,
            cache=cache,
            progress=progress,
            **self.km,
        )
        self.clusters = clusters[0]
        self.fitted = result.pop("_fit")
        return result

    def confusions(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> list[np.ndarray]:
        cache = StreamCache(cache_dir / "prototypes.pt", dict(settings or {}), save_every) if cache_dir else None
        stats = collect_image_prototypes(model, ds, self.source, workers=workers, cache=cache, progress=progress)
        clusters = assign_prototypes(stats, self.fitted)
        self.clusters = clusters[0]
        return [prototype_confusion(cl, stats.fg_hist, stats.bg_hist, self.k) for cl in clusters]

    def predict(self, index: int, sample: Any, out: Any, ds: SegmentationDataset) -> np.ndarray:
        if self.clusters is None:
            raise RuntimeError("fit the protocol first")
        fg = self.source.foreground(sample, out, ds.info, ds).cpu().numpy()
        return np.where(fg, 1 + self.clusters[index], 0)


class PixelProtocol(KMeansProtocol):
    """Pixel K-means: fit on a per-image random sample of pixels, assign every pixel."""

    name = "pixel"

    def __init__(self, *, fit_pixels: int = 100_000, first_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fit_pixels, self.first_seed = int(fit_pixels), int(first_seed)
        self.centroids: np.ndarray | None = None
        self.proj: tuple[np.ndarray, np.ndarray] | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "saliency_source": None}

    def fit(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> dict[str, Any]:
        cache1 = None
        settings = dict(settings or {})
        if cache_dir:
            settings.update(fit_pixels=self.fit_pixels, first_seed=self.first_seed)
            cache1 = StreamCache(cache_dir / "pixel_pass1.pt", settings, save_every)
        result, cents, proj = run_pixel_protocol(
            model,
            ds,
            k=self.k,
            seeds=self.seeds,
            fit_pixels=self.fit_pixels,
            pca_dim=self.pca_dim,
            matching=self.matching,
            workers=workers,
            cache1=cache1,
            cache2_dir=cache_dir,
            cache_settings=settings,
            progress=progress,
            **self.km,
        )
        self.centroids, self.proj = cents[0], proj
        self.fitted = ClusterFit(cents, proj)
        return result

    def confusions(
        self,
        model: FeatureModel,
        ds: SegmentationDataset,
        *,
        workers: int = 0,
        cache_dir: Path | None = None,
        settings: dict[str, Any] | None = None,
        save_every: int = 100,
        progress: bool = True,
    ) -> list[np.ndarray]:
        cache = StreamCache(cache_dir / "pixel_pass2.pt", dict(settings or {}), save_every) if cache_dir else None
        return pixel_confusions(model, ds, self.fitted, self.k, workers=workers, cache=cache, progress=progress)

    def predict(self, index: int, sample: Any, out: Any, ds: SegmentationDataset) -> np.ndarray:
        if self.centroids is None:
            raise RuntimeError("fit the protocol first")
        device = out.embedding.device
        h, w = sample.size
        proj_t = (
            (torch.from_numpy(self.proj[0]).to(device), torch.from_numpy(self.proj[1]).to(device))
            if self.proj
            else None
        )
        feats = normalised_pixels(out.embedding, (h, w), proj=proj_t)
        return assign_clusters(feats, torch.from_numpy(self.centroids).to(device)).cpu().numpy().reshape(h, w)


#: the protocols by their ``--protocol`` name
PROTOCOLS: dict[str, type[KMeansProtocol]] = {"prototype": PrototypeProtocol, "pixel": PixelProtocol}

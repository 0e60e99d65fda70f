"""Segment a folder of images without labels: ``python -m eval.segment``.

The fitted clustering gives every image a label map in which the same cluster means the same
thing in every image (docs/EVAL.md, "Segment your own images", has every option)::

    python -m eval.segment --checkpoint C --images photos/ --k 10 --out seg/     # fit and segment
    python -m eval.segment --checkpoint C --images new/ --clusters seg/clusters.pt --out seg_new/
    python -m eval.segment --checkpoint C --dataset msrc --k 20 --out seg_msrc/  # + mIoU, pixel accuracy

Two protocols (``--protocol``), the same as ``eval.kmeans`` but with ``k`` object clusters:

* ``prototype`` (default, the paper's): one prototype per image, the mean of the unit embeddings
  in its object mask (``--saliency-source model``: the model's saliency > 0.5; ``folder``: a masks
  folder such as ``saliency.generate``'s); the prototypes are PCA-whitened and clustered into
  ``k`` clusters. Label ``1 + c`` inside the mask, ``0`` (background) outside.
* ``pixel``: K-means over (a per-image sample of) pixel embeddings; every pixel gets ``1 + c``.

It writes into ``--out``: ``labels/<id>.png`` (palette PNG, 0 = background, 1..K, at the image's
size), ``overlays/<id>.jpg``, ``sheets/cluster_XX.jpg`` (each cluster's most typical segments,
nearest the centroid, then its least typical), ``index.html`` (offline), ``clusters.pt`` (the
fitted clustering; ``--clusters FILE`` applies one without refitting) and ``segment.json``.
It resumes after an interruption (the policy of :mod:`maskcontrast.runs`).

The same results from Python: :func:`fit_clusters` and :func:`segment_images`
(``model.segment(images, clusters)``).
"""

from eval.segment.cli import build_parser, main
from eval.segment.clusters import (
    CLUSTERS_FORMAT,
    PROTOCOLS,
    Clusters,
    ClustersError,
    fit_clusters,
    model_identity,
    segment_images,
    size_key,
)
from eval.segment.page import cluster_palette, overlay_image

__all__ = [
    "CLUSTERS_FORMAT",
    "PROTOCOLS",
    "ClustersError",
    "Clusters",
    "model_identity",
    "size_key",
    "fit_clusters",
    "segment_images",
    "cluster_palette",
    "overlay_image",
    "build_parser",
    "main",
]

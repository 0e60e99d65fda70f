"""K-means evaluation of pixel embeddings: ``python -m eval.kmeans``.

Two protocols (see docs/EVAL.md for the exact definitions):

* ``prototype`` (the paper's): one prototype per image, the mean of the unit embeddings inside
  its object mask (the predicted saliency > 0.5, the ground-truth foreground, or masks from a
  folder), re-normalised. Prototypes are PCA-whitened (scikit-learn ``PCA(whiten=True)``) to
  ``--pca-dim`` dimensions and clustered into ``k - 1`` clusters; the non-salient pixels of every
  image form one more cluster ("background", id 0). All ``k`` clusters are matched to the classes
  with the Hungarian algorithm on the IoU of the confusion over all valid pixels. Mean and std
  over ``--seeds`` K-means seeds.
* ``pixel``: K-means over pixel embeddings, fitted on ``--fit-pixels`` randomly sampled pixels
  (the same number from every image) and applied to every pixel at label resolution; Hungarian
  matching when ``k`` equals the number of classes, majority vote when ``k`` is larger.

K-means (eval/clustering.py) is faiss (GPU index when ``faiss.get_num_gpus() > 0``) with
``max_points_per_centroid`` set so that every point is used and ``nredo`` restarts, or the same
algorithm in torch (``--backend torch``, on CUDA when present; the default ``auto`` takes it when
faiss is not installed); ``--backend sklearn`` is the reference.

Memory grows with the number of prototypes (or sampled pixels), never with the full-resolution
pixels of all images: each image's confusion is accumulated as it streams past.

Example::

    python -m eval.kmeans --checkpoint run/checkpoint.pt --dataset voc --root VOCdevkit --split val --json km.json
    python -m eval.kmeans --checkpoint moco_v2.pth.tar --dataset voc --root VOCdevkit --saliency-source gt
"""

from eval.kmeans.cli import build_parser, fit_on_other_split, main
from eval.kmeans.pixel import pixel_confusions, run_pixel_protocol
from eval.kmeans.protocols import PROTOCOLS, KMeansProtocol, PixelProtocol, PrototypeProtocol
from eval.kmeans.prototype import (
    PrototypeStats,
    assign_prototypes,
    cluster_prototypes,
    collect_image_prototypes,
    fit_prototype_clusters,
    run_prototype_protocol,
)
from eval.kmeans.results import ClusterFit, prototype_confusion, summarize_seeds

__all__ = [
    "prototype_confusion",
    "summarize_seeds",
    "ClusterFit",
    "PrototypeStats",
    "collect_image_prototypes",
    "cluster_prototypes",
    "fit_prototype_clusters",
    "assign_prototypes",
    "run_prototype_protocol",
    "run_pixel_protocol",
    "pixel_confusions",
    "KMeansProtocol",
    "PrototypeProtocol",
    "PixelProtocol",
    "PROTOCOLS",
    "fit_on_other_split",
    "build_parser",
    "main",
]

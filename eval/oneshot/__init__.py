"""Few-shot segmentation by example: ``python -m eval.oneshot``.

The usual few-shot protocol on a labelled dataset, with the prototypes of
:meth:`maskcontrast.FeatureModel.segment_like` (the math is :mod:`maskcontrast.prompt`):

* a class "is in" an image when its pixels are at least ``--min-fraction`` of the image's valid
  (not ignored) pixels; the evaluated classes are every class except the dataset's background
  (``--classes`` picks some);
* an episode samples, for every class, ``--shots K`` support images that contain it (seeded by
  ``(seed, episode, class)``) and segments that class in **every other** image that contains it;
  the support's foreground prototype is the mean of its shots' class prototypes, its background
  prototype the mean of their "valid and not this class" prototypes; a query pixel is foreground
  when it is closer (cosine) to the foreground prototype;
* per episode: the IoU of every class (its true / false positives and false negatives summed
  over its queries), their mean (mIoU), and FB-IoU, the mean of the foreground and background
  IoU summed over all the episode's queries; reported as mean and sample std over ``--episodes``.

Two passes over the data whatever the number of episodes: pass 1 keeps, per (image, class), the
two prototypes (and the feature-resolution embeddings and labels while they fit in ``--keep-mib``); pass 2
scores every (query, class) pair for all episodes at once. Predictions are scored at label
resolution; ``--size`` only resizes the network input.

Example::

    python -m eval.oneshot --checkpoint run/last.pt --dataset pet --dataset-arg target=species --shots 1 \\
        --episodes 5 --seed 0 --json oneshot_pet.json
"""

from eval.oneshot.cli import build_parser, main
from eval.oneshot.episodes import (
    episode_prototypes,
    episode_supports,
    predict,
    run_oneshot,
    sample_supports,
    score_queries,
    summarize_episodes,
)
from eval.oneshot.pictures import write_vis
from eval.oneshot.prototypes import PrototypeTable, collect_class_prototypes, eval_classes, present_classes

__all__ = [
    "PrototypeTable",
    "eval_classes",
    "present_classes",
    "collect_class_prototypes",
    "sample_supports",
    "episode_supports",
    "episode_prototypes",
    "predict",
    "score_queries",
    "summarize_episodes",
    "run_oneshot",
    "write_vis",
    "build_parser",
    "main",
]

"""Self-trained saliency refiner (DeepUSPS-style), trained without labels.

Loop (T. Nguyen et al., "DeepUSPS: Deep Robust Unsupervised Saliency Prediction With
Self-Supervision", NeurIPS 2019, simplified to one handcrafted source: our fusion):

1. Pseudo-labels: the fused classical map of every image (:mod:`saliency.fusion`) and its
   confidence mask, at the network's input size.
2. Round ``r``: train a small segmentation network on the targets. The loss is binary
   cross-entropy with the binarised target on the confident pixels (weight 1) plus, with
   ``unconfident_weight > 0``, cross-entropy with the soft target on the other pixels (weight
   ``unconfident_weight``), so that the network keeps its teacher's uncertainty there instead
   of guessing (a network trained on the confident pixels alone calls about half of the
   unconfident background foreground, which grows the objects; see docs/SALIENCY.md).
3. After the round, predict every image (with a horizontal-flip average); with ``align_mean``,
   shift each prediction's logits so that its mean equals its fused map's (:func:`align_mean`:
   the network otherwise calls more of each image foreground every round). Then update the
   per-image moving average ``a <- m a + (1 - m) p`` (``a`` starts as the fused map). The next
   round's targets are ``t = w * fused + (1 - w) * a`` (``w = target_anchor``; 0 gives the plain
   moving average); its confident pixels are those where ``|t - 0.5| >= margin``.
4. Output (:class:`RefinerPredictor`): the network's flip-averaged map, resized to the image,
   aligned to the fused map's mean with ``align_mean``, then combined with the classical maps
   (the fusion runs at inference too): ``combine="fusion"`` adds it to the agreement-weighted
   fusion as a fifth estimator (:func:`saliency.fusion.fuse_with`); ``combine="blend"`` averages
   it with the fused map, ``(1 - fused_weight) * network + fused_weight * fused``.

The network is a ResNet (``maskcontrast.models.ResNetBackbone``) with a light decoder that
merges layer4 with the layer1/layer2 features (stride 4) and, with ``model.stem_skip``, with
the stem's features at stride 2 for sharper boundaries. It is trained from scratch by default;
``model.init`` may name a MoCo, torchvision or maskcontrast checkpoint (read by
``maskcontrast.models.init_backbone``). Images are resized (squashed) to ``input_size`` squares;
the prediction is resized back. ``precision=auto`` trains and predicts under bfloat16 autocast
where the hardware has native bfloat16 (CUDA, or a CPU with AVX512-BF16 / AMX), else in fp32.

Usage::

    python -m saliency.refine --images DIR [--images DIR2] [--dataset weizmann=ROOT] --out RUN \\
        --config configs/saliency/refine_cpu.yaml [key=value ...]
    python -m saliency.generate --images DIR --out MASKS --method refined --checkpoint RUN/refiner.pt

Run folder: ``config.yaml``, ``pseudo_labels.pt`` (cached fused targets), ``last.pt`` (resumable
state, written atomically every epoch), ``refiner.pt`` (the final model), ``history.json`` and
TensorBoard logs in ``tb/``. An interrupted run continues with ``--resume``.

Python API::

    from saliency.refine import RefinerPredictor
    predict = RefinerPredictor("RUN/refiner.pt")
    soft = predict(image)       # H x W float32 in [0, 1]

Package layout: ``config`` (schema, checks, format constants), ``network`` (the network and its
input), ``selftrain`` (the self-training math), ``pseudo`` (the fused pseudo-labels, in a worker
pool), ``training`` (:func:`train_refiner` and its run folder), ``predict``
(:class:`RefinerPredictor`), ``cli`` (``python -m saliency.refine``).
"""

from saliency.refine.cli import build_parser, main
from saliency.refine.config import (
    COMBINES,
    FORMAT,
    FORMAT_VERSION,
    PRECISIONS,
    SUPPORTED_VERSIONS,
    RefineConfig,
    RefinerNetConfig,
)
from saliency.refine.network import RefinerNet
from saliency.refine.predict import RefinerPredictor
from saliency.refine.selftrain import align_mean, confident_bce, target_diagnostics, update_targets
from saliency.refine.training import train_refiner

__all__ = [
    "RefinerNetConfig",
    "RefineConfig",
    "RefinerNet",
    "RefinerPredictor",
    "align_mean",
    "confident_bce",
    "update_targets",
    "target_diagnostics",
    "train_refiner",
    "build_parser",
    "main",
    "FORMAT",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "PRECISIONS",
    "COMBINES",
]

"""Linear probe: ``python -m eval.linear``.

A 1x1 convolution is trained on the frozen network's features (the 256-d decoder features of a
maskcontrast checkpoint, layer4 features of a MoCo/torchvision backbone) with per-pixel
cross-entropy (ignore label 255) on logits upsampled to the crop, then scored on the validation
split at label resolution (mIoU, per-class IoU, pixel accuracy; optional dense CRF).

The default config is the paper's schedule (``configs/eval/linear_voc.yaml``): ``train_aug``,
batch 16, 60 epochs, SGD lr 0.1 (momentum 0.9, weight decay 1e-4) x0.1 at epoch 25, random
horizontal flip, +-5 degree rotation, 0.75-1.25 scale and 512 x 512 crops (padding with the mean
colour / ignore label). ``configs/eval/linear_cpu.yaml`` is a CPU budget version.

Datasets without official splits (MSRC, Pet ``all``, Weizmann, ...): with ``data.train_split``
null, the dataset's default split is divided by a seeded split (``data.val_fraction``,
``data.split_seed``) that is written to the run folder as ``split_{train,val}.txt`` and reused
on resume or with ``data.split_dir``.

Example::

    python -m eval.linear --checkpoint run/checkpoint.pt --dataset voc --root VOCdevkit --out runs/linear_voc
    python -m eval.linear --config configs/eval/linear_cpu.yaml --checkpoint moco.pth.tar --dataset weizmann \\
        --out runs/linear_weizmann epochs=5

Package layout: ``config`` (the schema), ``geometry`` (the joint flip/rotation/scale/crop of
images, labels and feature maps), ``features`` (the feature cache and the training batches),
``classifier`` (the 1x1 convolution and the dense CRF), ``training`` (set-up, restore, one epoch,
evaluation: :func:`run_linear_probe`), ``cli`` (``python -m eval.linear``).
"""

from eval.linear.classifier import LinearClassifier, crf_available, dense_crf
from eval.linear.cli import build_parser, main
from eval.linear.config import CRFConfig, LinearConfig, LinearDataConfig, ProbeAugmentConfig, ProbeOptimConfig
from eval.linear.geometry import AffineParams, affine_grid, sample_affine, warp_features, warp_image, warp_label
from eval.linear.training import run_linear_probe

__all__ = [
    "LinearDataConfig",
    "ProbeAugmentConfig",
    "ProbeOptimConfig",
    "CRFConfig",
    "LinearConfig",
    "AffineParams",
    "sample_affine",
    "affine_grid",
    "warp_image",
    "warp_label",
    "warp_features",
    "LinearClassifier",
    "crf_available",
    "dense_crf",
    "run_linear_probe",
    "build_parser",
    "main",
]

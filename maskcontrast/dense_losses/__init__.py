"""The maths of the dense objectives other than MaskContrast, one module per method, as pure
functions with shapes in their docstrings (MaskContrast's and MoCo's are in :mod:`maskcontrast.losses`).

* :mod:`~maskcontrast.dense_losses.detcon`: region sampling, mask pooling and the region contrastive
  loss of DetCon (Hénaff et al., ICCV 2021);
* :mod:`~maskcontrast.dense_losses.densecl`: the feature correspondence and the dense InfoNCE of
  DenseCL (Wang et al., CVPR 2021);
* :mod:`~maskcontrast.dense_losses.stego`: the feature-correspondence loss of STEGO (Hamilton et
  al., ICLR 2022).
"""

from maskcontrast.dense_losses.densecl import dense_correspondence, densecl_dense_loss
from maskcontrast.dense_losses.detcon import region_contrastive_loss, region_pool, sample_regions
from maskcontrast.dense_losses.stego import feature_correlation, stego_correspondence_loss

__all__ = [
    "sample_regions",
    "region_pool",
    "region_contrastive_loss",
    "dense_correspondence",
    "densecl_dense_loss",
    "feature_correlation",
    "stego_correspondence_loss",
]

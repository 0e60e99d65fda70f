"""Dilated ResNet backbones: output stride and dilations for every arch."""

import pytest
import torch

from maskcontrast.models import ARCHS, ResNetBackbone


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_and_dilation(arch, output_stride):
    net = ResNetBackbone(arch, output_stride).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, net.out_channels, 64 // output_stride, 64 // output_stride)
    assert net.out_channels == (2048 if arch in ("resnet50", "resnet101") else 512)
    convs3 = [m for m in net.layer3.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    convs4 = [m for m in net.layer4.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert all(m.stride == (1, 1) for m in convs4)
    if output_stride == 8:
        assert all(m.stride == (1, 1) for m in convs3)
        assert convs3[-1].dilation == (2, 2) and convs4[-1].dilation == (4, 4)
    else:
        assert convs3[-1].dilation == (1, 1) and convs4[-1].dilation == (2, 2)
    assert all(m.padding == m.dilation for m in convs3 + convs4)  # same spatial size


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        ResNetBackbone("resnet9")
    with pytest.raises(ValueError, match="output_stride"):
        ResNetBackbone("resnet18", 4)

"""STEGO's correspondence loss against a loop reference written from the paper's formula."""

import torch
import torch.nn.functional as F

from maskcontrast.dense_losses.stego import feature_correlation, stego_correspondence_loss


def loop_stego(fa, fb, ca, cb, shift, pointwise):
    b, _, p = fa.shape
    q = fb.shape[2]
    fd = torch.zeros(b, p, q, dtype=torch.float64)
    cd = torch.zeros(b, p, q, dtype=torch.float64)
    for i in range(b):
        for x in range(p):
            for y in range(q):
                fd[i, x, y] = F.cosine_similarity(fa[i, :, x], fb[i, :, y], dim=0)
                cd[i, x, y] = F.cosine_similarity(ca[i, :, x], cb[i, :, y], dim=0)
    if pointwise:
        fd = fd - fd.mean(dim=2, keepdim=True) + fd.mean()
    return -((fd - shift) * cd.clamp(min=0)).mean()


def test_correspondence_loss_equals_loop_reference_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    fa, fb = (
        torch.randn(2, 6, 5, generator=g, dtype=torch.float64),
        torch.randn(2, 6, 4, generator=g, dtype=torch.float64),
    )
    ca = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    cb = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    for pointwise in (True, False):
        loss = stego_correspondence_loss(fa, fb, ca, cb, 0.2, pointwise)
        ref = loop_stego(fa, fb, ca.detach(), cb, 0.2, pointwise)
        assert abs(float(loss) - float(ref)) < 1e-10
    ca.grad = None
    stego_correspondence_loss(fa, fb, ca, cb, 0.2, True).backward()
    ref_ca = ca.detach().clone().requires_grad_()
    loop_stego(fa, fb, ref_ca, cb, 0.2, True).backward()
    assert torch.allclose(ca.grad, ref_ca.grad, atol=1e-10)
    assert feature_correlation(fa, fb).shape == (2, 5, 4)


def test_a_higher_shift_pushes_codes_apart():
    """With shift above every feature correlation, the loss falls as the code correlation falls."""
    f = torch.randn(1, 4, 6, dtype=torch.float64)
    same = torch.ones(1, 2, 6, dtype=torch.float64)  # all codes equal: correlation 1
    apart = torch.randn(1, 2, 6, dtype=torch.float64)
    high = 2.0
    assert stego_correspondence_loss(f, f, apart, apart, high, False) < stego_correspondence_loss(
        f, f, same, same, high, False
    )

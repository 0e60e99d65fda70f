"""DenseCL's maths against loop references written from the paper's formula."""

import math

import torch
import torch.nn.functional as F

from maskcontrast.dense_losses.densecl import dense_correspondence, densecl_dense_loss


def test_correspondence_is_the_most_similar_key_location():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 7, generator=g)
    idx = dense_correspondence(q, k)
    for b in range(2):
        for n in range(5):
            sims = [float(F.cosine_similarity(q[b, :, n], k[b, :, m], dim=0)) for m in range(7)]
            assert idx[b, n] == max(range(7), key=lambda m: sims[m])


def loop_dense_loss(q, k, idx, queue, t):
    total = 0.0
    for b in range(q.shape[0]):
        for n in range(q.shape[2]):
            pos = float(q[b, :, n] @ k[b, :, idx[b, n]]) / t
            negs = [float(q[b, :, n] @ queue[j]) / t for j in range(len(queue))]
            total += -pos + math.log(math.exp(pos) + sum(math.exp(v) for v in negs))
    return total / (q.shape[0] * q.shape[2])


def test_dense_loss_equals_loop_reference_and_its_gradient():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(2, 3, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    k = F.normalize(torch.randn(2, 3, 5, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    idx = torch.randint(0, 5, (2, 4), generator=g)
    loss, logits = densecl_dense_loss(q, k, idx, queue, 0.2)
    assert logits.shape == (8, 7)
    assert abs(loss.item() - loop_dense_loss(q.detach(), k, idx, queue, 0.2)) < 1e-10
    loss.backward()
    eps = 1e-6
    for b, c, n in [(0, 0, 0), (1, 2, 3)]:
        qp, qm = q.detach().clone(), q.detach().clone()
        qp[b, c, n] += eps
        qm[b, c, n] -= eps
        fd = (loop_dense_loss(qp, k, idx, queue, 0.2) - loop_dense_loss(qm, k, idx, queue, 0.2)) / (2 * eps)
        assert abs(float(q.grad[b, c, n]) - fd) < 1e-6

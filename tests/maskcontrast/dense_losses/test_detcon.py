"""DetCon's maths against loop references written from the paper's formula."""

import math

import torch

from maskcontrast.dense_losses.detcon import region_contrastive_loss, region_pool, sample_regions


def loop_region_loss(q, k_other, k_same, row_valid, col_valid, t, offset):
    total, n = 0.0, 0
    for i in range(len(q)):
        if not row_valid[i]:
            continue
        pos = float(q[i] @ k_other[offset + i]) / t
        denom = sum(math.exp(float(q[i] @ k_other[j]) / t) for j in range(len(k_other)) if col_valid[j])
        denom += sum(
            math.exp(float(q[i] @ k_same[j]) / t) for j in range(len(k_same)) if col_valid[j] and j != offset + i
        )
        total += -pos + math.log(denom)
        n += 1
    return total / max(n, 1)


def test_region_contrastive_loss_equals_loop_reference_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    n, m, d, offset = 6, 12, 5, 3
    q = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    ko = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    ks = torch.nn.functional.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    row_valid = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    col_valid = torch.ones(m, dtype=torch.bool)
    col_valid[[0, 5]] = False  # row 2's own column (offset + 2 = 5) is invalid, as the row
    loss, logits, labels = region_contrastive_loss(q, ko, ks, row_valid, col_valid, 0.1, offset)
    ref = loop_region_loss(q.detach(), ko, ks, row_valid, col_valid, 0.1, offset)
    assert abs(float(loss) - ref) < 1e-10
    assert logits.shape == (n, 2 * m) and labels.tolist() == list(range(offset, offset + n))
    loss.backward()
    # the gradient against finite differences of the loop reference
    eps = 1e-6
    for i, j in [(0, 0), (3, 2), (5, 4)]:
        qp = q.detach().clone()
        qp[i, j] += eps
        qm = q.detach().clone()
        qm[i, j] -= eps
        fd = (
            loop_region_loss(qp, ko, ks, row_valid, col_valid, 0.1, offset)
            - loop_region_loss(qm, ko, ks, row_valid, col_valid, 0.1, offset)
        ) / (2 * eps)
        assert abs(float(q.grad[i, j]) - fd) < 1e-6
    assert float(q.grad[2].abs().sum()) == 0.0  # an invalid row has no gradient


def test_region_pool_is_the_mean_over_each_region_at_feature_resolution():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[:, :4, :4] = 1  # exactly the feature cell block [0:2, 0:2]
    mask[0, 4:, :] = 7
    ids = torch.tensor([[1, 7, 9], [1, 0, 7]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    pooled, ok = region_pool(feats, mask, ids, valid)
    assert torch.allclose(pooled[0, 0], feats[0, :, :2, :2].mean(dim=(1, 2)))
    assert torch.allclose(pooled[0, 1], feats[0, :, 2:, :].mean(dim=(1, 2)))
    assert ok.tolist() == [[True, True, False], [True, True, False]]  # id 9 is absent; (1, 2) was invalid
    # a region covering part of a cell is weighted by its area share (loop reference)
    mask2 = torch.zeros(1, 8, 8, dtype=torch.long)
    mask2[0, 0, 0] = 3
    p, ok2 = region_pool(feats[:1], mask2, torch.tensor([[3, 0]]), torch.tensor([[True, True]]))
    assert ok2.all() and torch.allclose(p[0, 0], feats[0, :, 0, 0])
    w = torch.full((4, 4), 4.0, dtype=torch.float64)
    w[0, 0] = 3.0
    ref = (feats[0] * w).sum(dim=(1, 2)) / w.sum()
    assert torch.allclose(p[0, 1], ref)


def test_sample_regions_draws_only_ids_in_both_views_and_counts_the_vanished():
    torch.manual_seed(0)
    q = torch.zeros(2, 6, 6, dtype=torch.long)
    k = torch.zeros(2, 6, 6, dtype=torch.long)
    q[0, :2], k[0, :2] = 3, 3  # id 3 in both views of image 0
    q[0, 4:] = 5  # id 5 only in the query view: vanished
    q[1, :, :3], k[1, :, :3] = 2, 2
    ids, valid, vanished = sample_regions(q, k, per_image=4)
    assert ids.shape == (2, 4) and float(vanished) == 1.0
    assert sorted(ids[0][valid[0]].tolist()) == [0, 3] and sorted(ids[1][valid[1]].tolist()) == [0, 2]
    assert valid.sum(1).tolist() == [2, 2]

"""The loss math against slow loop references written from the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskcontrast.losses import (
    balanced_bce,
    enet_class_weights,
    info_nce_logits,
    info_nce_loss,
    mask_prototypes,
    pixel_prototype_logits,
    query_pixels,
    topk_accuracy,
    weighted_cross_entropy,
)


def _random_case(seed=0, b=3, d=5, h=6, w=7, max_id=3):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(b, d, h, w, generator=g, dtype=torch.float64), dim=1)
    mask = torch.randint(0, max_id + 1, (b, h, w), generator=g)
    mask[1] = 0  # an image without objects
    mask[2][mask[2] == 2] = 3  # an image whose object ids have a gap
    return emb, mask


def ref_prototypes(emb, mask):
    protos, owner = [], []
    for b in range(emb.shape[0]):
        for o in range(1, int(mask.max()) + 1):
            acc = torch.zeros(emb.shape[1], dtype=emb.dtype)
            n = 0
            for i in range(emb.shape[2]):
                for j in range(emb.shape[3]):
                    if mask[b, i, j] == o:
                        acc += emb[b, :, i, j]
                        n += 1
            if n:
                protos.append(acc / acc.norm())
                owner.append((b, o))
    return torch.stack(protos), owner


def test_mask_prototypes_match_loop_reference():
    emb, mask = _random_case()
    protos, owner = mask_prototypes(emb, mask)
    ref, ref_owner = ref_prototypes(emb, mask)
    assert [tuple(x) for x in owner.tolist()] == ref_owner
    assert torch.allclose(protos, ref, atol=1e-10)
    assert torch.allclose(protos.norm(dim=1), torch.ones(len(protos), dtype=protos.dtype))


def test_binary_masks_give_one_prototype_per_image():
    emb, _ = _random_case()
    mask = torch.zeros(3, 6, 7, dtype=torch.long)
    mask[:, 2:5, 1:4] = 1
    _protos, owner = mask_prototypes(emb, mask)
    assert owner.tolist() == [[0, 1], [1, 1], [2, 1]]


def test_mask_prototypes_validate_shapes():
    with pytest.raises(ValueError, match="size"):
        mask_prototypes(torch.randn(2, 4, 5, 5), torch.zeros(2, 4, 4, dtype=torch.long))


def test_logits_labels_and_enet_loss_match_loop_reference():
    torch.manual_seed(0)
    temperature = 0.5
    key_emb, key_mask = _random_case(seed=1)
    q_emb, q_mask = _random_case(seed=2)
    q_mask[0][q_mask[0] == 3] = 2  # object 2 of image 0 may be missing from the key view
    key_mask[0][key_mask[0] == 2] = 0
    protos, owner = mask_prototypes(key_emb, key_mask)
    queue = F.normalize(torch.randn(4, 5, dtype=torch.float64), dim=1)
    q, labels = query_pixels(q_emb, q_mask, owner)
    logits = pixel_prototype_logits(q, protos, queue, temperature)
    w = enet_class_weights(labels, logits.shape[1])
    loss = weighted_cross_entropy(logits, labels, w)

    # reference: loop over pixels in (image, row, column) order
    keys = torch.cat([protos, queue])
    index = {tuple(o): k for k, o in enumerate(owner.tolist())}
    rows, ref_labels = [], []
    for b in range(q_emb.shape[0]):
        for i in range(q_emb.shape[2]):
            for j in range(q_emb.shape[3]):
                o = int(q_mask[b, i, j])
                if o > 0 and (b, o) in index:
                    v = q_emb[b, :, i, j]
                    rows.append(torch.stack([torch.dot(v, k) / temperature for k in keys]))
                    ref_labels.append(index[(b, o)])
    ref_logits = torch.stack(rows)
    assert labels.tolist() == ref_labels
    assert torch.allclose(logits, ref_logits, atol=1e-10)
    # ENet weights from the label shares of this batch
    n = len(ref_labels)
    ref_w = [1.0 / math.log(1.02 + ref_labels.count(c) / n) for c in range(logits.shape[1])]
    assert torch.allclose(w.double(), torch.tensor(ref_w, dtype=torch.float64), atol=1e-6)
    num = den = 0.0
    for row, y in zip(ref_logits, ref_labels):
        ce = -(row[y] - torch.logsumexp(row, 0))
        num += ref_w[y] * ce
        den += ref_w[y]
    assert loss.item() == pytest.approx(float(num / den), rel=1e-5)


def test_query_pixels_with_prototypes_of_other_ranks():
    emb, mask = _random_case(seed=3)
    _protos, owner = mask_prototypes(emb, mask)
    # pretend this rank holds images 3..5 of a global batch whose images 0..2 are on another rank
    other = owner.clone()
    shifted = owner.clone()
    shifted[:, 0] += 3
    all_owner = torch.cat([other, shifted])
    q, labels = query_pixels(emb, mask, all_owner, image_offset=3)
    q0, labels0 = query_pixels(emb, mask, owner)
    assert torch.equal(q, q0)
    assert torch.equal(labels, labels0 + len(owner))


def test_weighted_cross_entropy_gradient_matches_autograd_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 7, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 7, (40,), generator=g)
    w = enet_class_weights(labels, 7).double()
    torch.autograd.gradcheck(lambda x: weighted_cross_entropy(x, labels, w), (logits,))
    ours = torch.autograd.grad(weighted_cross_entropy(logits, labels, w), logits)[0]
    ref = torch.autograd.grad(F.cross_entropy(logits, labels, weight=w), logits)[0]
    assert torch.allclose(ours, ref, atol=1e-12)


def test_weighted_cross_entropy_empty_and_unweighted():
    logits = torch.randn(0, 5, requires_grad=True)
    assert weighted_cross_entropy(logits, torch.zeros(0, dtype=torch.long), None).item() == 0.0
    logits = torch.randn(6, 4)
    labels = torch.tensor([0, 1, 1, 3, 2, 2])
    assert torch.allclose(weighted_cross_entropy(logits, labels, None), F.cross_entropy(logits, labels))


def test_balanced_bce_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)
    target = torch.rand(2, 1, 5, 6, generator=g) > 0.7
    x, t = logits.flatten().tolist(), target.flatten().tolist()
    n, n_pos = len(t), sum(t)
    beta = (n - n_pos) / n
    ref = 0.0
    for xi, ti in zip(x, t):
        s = 1 / (1 + math.exp(-xi))
        ref += -beta * math.log(s) if ti else -(1 - beta) * math.log(1 - s)
    assert balanced_bce(logits, target).item() == pytest.approx(ref / n, rel=1e-6)


def test_topk_accuracy_matches_topk():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 12, generator=g)
    labels = torch.randint(0, 12, (50,), generator=g)
    top1, top5 = topk_accuracy(logits, labels, (1, 5))
    ref5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean()
    assert top1.item() == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert top5.item() == pytest.approx(ref5.item())


def test_info_nce_matches_formula():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=1)
    t = 0.2
    logits, labels = info_nce_logits(q, k, queue, t)
    assert logits.shape == (4, 11) and labels.tolist() == [0, 0, 0, 0]
    ref = 0.0
    for i in range(4):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ n) / t) for n in queue)
        ref += -math.log(pos / (pos + neg))
    assert info_nce_loss(q, k, queue, t).item() == pytest.approx(ref / 4, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        info_nce_logits(q, k, queue, 0.0)

"""The loss math against slow loop references written from the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskcontrast.embeddings import mask_prototypes, upsampled_pixels
from maskcontrast.losses import (
    balanced_bce,
    contrastive_chunk_rows,
    enet_class_weights,
    full_precision,
    info_nce_logits,
    info_nce_loss,
    maskcontrast_pixel_loss,
    pixel_contrastive_loss,
    pixel_prototype_logits,
    query_pixels,
    topk_accuracy,
)

# ----------------------------------------------------------------------------------------------
# Test-only reference: the class-weighted cross-entropy of held logits (the chunked
# pixel_contrastive_loss must equal it), with a fused backward of its own.
# ----------------------------------------------------------------------------------------------


class _WeightedCrossEntropy(torch.autograd.Function):
    """``sum_i r_i (logsumexp(x_i) - x_{i, y_i}) / sum_i r_i`` with a fused backward: the gradient
    ``r_i / R * (softmax(x_i) - onehot(y_i))`` is built in place in one ``N x C`` buffer (the
    autograd graph of ``F.cross_entropy`` needs several; this matters for the ~10^5 pixels x
    (P + K) prototypes of a MaskContrast batch)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        lse = torch.logsumexp(logits, dim=1)
        picked = logits.gather(1, labels.view(-1, 1)).squeeze(1)
        total = row_weights.sum()
        ctx.save_for_backward(logits, lse, labels, row_weights, total)
        return ((lse - picked) * row_weights).sum() / total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        logits, lse, labels, row_weights, total = ctx.saved_tensors
        g = (logits - lse.unsqueeze(1)).exp_()
        g[torch.arange(len(labels), device=labels.device), labels] -= 1.0
        g.mul_((row_weights * (grad / total)).unsqueeze(1))
        return g, None, None


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Class-weighted mean cross-entropy ``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` (plain mean without
    weights); the value and gradient of ``F.cross_entropy(logits, labels, weight=weights)``,
    computed with less memory traffic.

    Args:
        logits: ``N x C``; labels: ``N`` long; weights: ``C`` or None.

    Returns:
        A scalar; 0 (with a graph to ``logits``) when ``N = 0``.
    """
    if labels.numel() == 0:
        return logits.sum() * 0.0
    logits = full_precision(logits)
    row_weights = torch.ones_like(labels, dtype=logits.dtype) if weights is None else weights.to(logits.dtype)[labels]
    return _WeightedCrossEntropy.apply(logits, labels, row_weights)


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


@pytest.mark.parametrize(
    "small,big",
    [
        ((28, 28), (224, 224)),
        ((15, 11), (128, 100)),
        ((17, 9), (100, 9)),
        ((6, 7), (6, 7)),
        ((6, 4), (6, 13)),
        ((1, 1), (5, 3)),
    ],
)
def test_upsampled_pixels_equal_interpolate_at_the_chosen_pixels(small, big):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *small, generator=g, dtype=torch.float64, requires_grad=True)
    select = torch.rand(2, *big, generator=g) > 0.4
    full = F.interpolate(x, size=big, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)[select]
    ours = upsampled_pixels(x, select)
    assert ours.shape == full.shape
    assert torch.allclose(ours, full, atol=1e-12)
    up = torch.randn(full.shape, generator=g, dtype=torch.float64)
    (g_full,) = torch.autograd.grad((full * up).sum(), x)
    (g_ours,) = torch.autograd.grad((ours * up).sum(), x)
    assert torch.allclose(g_ours, g_full, atol=1e-12)
    # float32 and channels_last input: the same up to float rounding
    x32 = x.detach().float().contiguous(memory_format=torch.channels_last)
    full32 = F.interpolate(x32, size=big, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)[select]
    assert torch.allclose(upsampled_pixels(x32, select), full32, atol=1e-5)


def test_upsampled_pixels_reject_bad_shapes():
    with pytest.raises(ValueError, match="larger than the mask size"):
        upsampled_pixels(torch.randn(1, 2, 8, 8), torch.ones(1, 4, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="B x D x h x w"):
        upsampled_pixels(torch.randn(2, 8, 8), torch.ones(1, 4, 8, dtype=torch.bool))


def test_prototypes_and_query_pixels_from_feature_resolution_equal_full_resolution():
    """The objective passes embeddings at feature resolution; the result must be that of the paper's
    computation on the bilinearly upsampled, L2-normalised full map."""
    g = torch.Generator().manual_seed(4)
    small = torch.randn(3, 5, 4, 5, generator=g, dtype=torch.float64)
    _, mask = _random_case(seed=5, h=13, w=17)
    full = F.interpolate(small, size=(13, 17), mode="bilinear", align_corners=False)
    protos, owner = mask_prototypes(small, mask)
    ref, ref_owner = ref_prototypes(F.normalize(full, dim=1), mask)
    assert [tuple(x) for x in owner.tolist()] == ref_owner
    assert torch.allclose(protos, ref, atol=1e-12)
    q, labels = query_pixels(small, mask, owner)
    q_full, labels_full = query_pixels(full, mask, owner)
    assert torch.equal(labels, labels_full)
    assert torch.allclose(q, q_full, atol=1e-12)


def test_pixel_contrastive_loss_gradients_match_the_logits_path():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(50, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    protos = F.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    queue = F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (50,), generator=g)
    for w in (enet_class_weights(labels, 13).double(), None):
        ref = weighted_cross_entropy(pixel_prototype_logits(q, protos, queue, 0.3), labels, w)
        ref_grads = torch.autograd.grad(ref, (q, protos))
        for chunk in (1, 16, 1000):
            ours = pixel_contrastive_loss(q, protos, queue, labels, 0.3, w, chunk_rows=chunk)
            assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
            for a, b in zip(torch.autograd.grad(ours, (q, protos)), ref_grads):
                assert torch.allclose(a, b, atol=1e-12)
    torch.autograd.gradcheck(lambda x, p: pixel_contrastive_loss(x, p, queue, labels, 0.3, chunk_rows=7), (q, protos))
    # no queue, an empty batch, and bad arguments
    assert pixel_contrastive_loss(q, protos, None, labels, 0.3).item() == pytest.approx(
        F.cross_entropy(q @ protos.t() / 0.3, labels).item(), rel=1e-12
    )
    empty = pixel_contrastive_loss(q[:0], protos, queue, labels[:0], 0.3)
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="temperature"):
        pixel_contrastive_loss(q, protos, queue, labels, 0.0)
    with pytest.raises(ValueError, match="class_weights has 4 entries"):
        pixel_contrastive_loss(q, protos, queue, labels, 0.3, torch.ones(4))


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
    for chunk in (1, 7, 4096):  # the chunked loss without the logits matrix
        fused = pixel_contrastive_loss(q, protos, queue, labels, temperature, w, chunk_rows=chunk)
        assert fused.item() == pytest.approx(float(num / den), rel=1e-6)  # w is float32
    whole, q_norm, whole_labels = maskcontrast_pixel_loss(q_emb, q_mask, protos, owner, queue, temperature)
    assert whole.item() == pytest.approx(float(num / den), rel=1e-6)
    assert whole_labels.tolist() == ref_labels and torch.allclose(q_norm, q)
    with pytest.raises(ValueError, match="class_weighting"):
        maskcontrast_pixel_loss(q_emb, q_mask, protos, owner, queue, temperature, class_weighting="median")


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


def test_chunk_rows_come_from_free_cuda_memory_and_stay_4096_on_cpu(monkeypatch):
    asked = []

    def mem_get_info(device=None):
        asked.append(device)
        return 8 << 30, 80 << 30  # 8 GiB free of 80

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    cuda = torch.device("cuda", 0)
    assert contrastive_chunk_rows(512, torch.device("cpu")) == 4096 and not asked
    # a quarter of 8 GiB over 4 buffers of 512 fp32 columns: 262,144 rows (64 x the CPU chunk)
    assert contrastive_chunk_rows(512, cuda) == (8 << 30) // 4 // (4 * 512 * 4) == 262_144
    assert asked == [cuda]
    assert contrastive_chunk_rows(512, cuda, max_rows=100_000) == 100_000
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 << 20, 80 << 30))  # nearly full
    assert contrastive_chunk_rows(512, cuda) == 4096
    # the default (None) is the CPU chunk here, and any chunk gives the same loss
    torch.manual_seed(0)
    q = F.normalize(torch.randn(9000, 8), dim=1)
    keys = F.normalize(torch.randn(5, 8), dim=1)
    labels = torch.randint(0, 5, (9000,))
    a = pixel_contrastive_loss(q, keys, None, labels, 0.5)
    b = pixel_contrastive_loss(q, keys, None, labels, 0.5, chunk_rows=9000)
    assert torch.allclose(a, b, rtol=1e-5)

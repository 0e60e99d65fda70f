"""The MaskContrast objective against the paper's computation on full-resolution maps."""

import pytest
import torch
import torch.nn.functional as F

from maskcontrast.config import MaskContrastObjectiveConfig, ModelConfig
from maskcontrast.config_loading import load_config
from maskcontrast.data.views import Views
from maskcontrast.embeddings import mask_prototypes
from maskcontrast.losses import (
    balanced_bce,
    enet_class_weights,
    pixel_prototype_logits,
    query_pixels,
)
from maskcontrast.objectives import MaskContrastObjective


def _views(seed: int = 0, b: int = 3, size: int = 40) -> Views:
    g = torch.Generator().manual_seed(seed)
    masks = []
    for _ in range(2):
        m = torch.zeros(b, size, size, dtype=torch.long)
        for i in range(b):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            m[i, y : y + size // 3, x : x + size // 2] = 1
            if i == 1:  # a second object in one image
                m[i, -size // 4 :, : size // 4] = 2
        masks.append(m)
    return Views(
        query=torch.randn(b, 3, size, size, generator=g),
        key=torch.randn(b, 3, size, size, generator=g),
        query_mask=masks[0],
        key_mask=masks[1],
    )


@pytest.mark.parametrize("class_weighting", ["enet", "none"])
def test_loss_and_gradients_equal_the_full_resolution_computation(class_weighting):
    torch.manual_seed(0)
    model_cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "backbone.output_stride=8"])
    cfg = MaskContrastObjectiveConfig(queue_size=8, temperature=0.5, class_weighting=class_weighting)
    obj = MaskContrastObjective(model_cfg, cfg).double()
    obj.bank.enqueue(F.normalize(torch.randn(5, 32, dtype=torch.float64), dim=1))  # a partly filled bank
    obj.train()
    views = _views()
    views = Views(views.query.double(), views.key.double(), views.query_mask, views.key_mask)
    queue = obj.bank.queue.clone()

    torch.manual_seed(1)  # the same dropout masks in both computations
    loss, metrics = obj(views)
    grads = torch.autograd.grad(loss, list(obj.query.parameters()))

    # the paper's computation: full-resolution maps, normalised, every salient pixel, logits matrix
    torch.manual_seed(1)
    out = obj.query(views.query)  # upsampled to the input inside the model
    with torch.no_grad():
        k = obj.key(views.key).embedding
    protos, owner = mask_prototypes(F.normalize(k, dim=1), views.key_mask)
    q, labels = query_pixels(F.normalize(out.embedding, dim=1), views.query_mask, owner)
    logits = pixel_prototype_logits(q, protos, queue, 0.5)
    w = enet_class_weights(labels, logits.shape[1]) if class_weighting == "enet" else None
    loss_con = F.cross_entropy(logits, labels, weight=None if w is None else w.to(logits.dtype))  # weighted mean
    ref = loss_con + balanced_bce(out.saliency, views.query_mask > 0)
    ref_grads = torch.autograd.grad(ref, list(obj.query.parameters()))

    assert metrics["prototypes"].item() == 4 == len(protos)
    assert metrics["pixels"].item() == len(labels)
    assert metrics["loss_contrastive"].item() == pytest.approx(loss_con.item(), rel=1e-6)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)
    # this step's prototypes were enqueued after the loss
    assert torch.allclose(obj.bank.queue[5:8], protos[:3]) and torch.allclose(obj.bank.queue[:1], protos[3:])


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _negatives_worker(rank, port, out):
    import copy
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    model_cfg = load_config(ModelConfig, overrides=["backbone.arch=resnet18", "backbone.output_stride=8"])
    results = {}
    for negatives in ("local", "global"):
        torch.manual_seed(0)  # the same networks and queue on both ranks
        cfg = MaskContrastObjectiveConfig(queue_size=8, negatives=negatives)
        obj = MaskContrastObjective(model_cfg, cfg).eval()  # eval: BatchNorm statistics, no dropout
        views = _views(seed=10 + rank, b=2)
        # the per-rank computation: the same objective alone in this process
        _, alone = copy.deepcopy(obj)(views)
        results[f"{negatives}_alone"] = {k: float(v) for k, v in alone.items()}
        if not dist.is_initialized():
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            dist.init_process_group("gloo", rank=rank, world_size=2)
        _, metrics = obj(views)
        results[negatives] = {k: float(v) for k, v in metrics.items()}
        results[f"{negatives}_queue_ptr"] = int(obj.bank.ptr)
    dist.destroy_process_group()
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.mark.slow
def test_local_negatives_equal_the_per_rank_computation(tmp_path):
    """With 2 gloo processes, negatives=local contrasts each pixel with its own process's
    prototypes (+ the queue), exactly as that process alone would; the queue still receives the
    prototypes of both processes. negatives=global contrasts with both processes' prototypes."""
    import torch.multiprocessing as mp

    mp.spawn(_negatives_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        local, alone = r["local"], r["local_alone"]
        assert local["loss_contrastive"] == pytest.approx(alone["loss_contrastive"], rel=1e-6)
        assert local["prototypes"] == alone["prototypes"] and local["pixels"] == alone["pixels"]
        assert local["acc_top1"] == pytest.approx(alone["acc_top1"])
        other = torch.load(tmp_path / f"rank{1 - rank}.pt", weights_only=True)["local_alone"]
        assert r["global"]["prototypes"] == alone["prototypes"] + other["prototypes"]  # every process's
        assert r["global"]["loss_contrastive"] != pytest.approx(alone["loss_contrastive"], rel=1e-6)
        assert r["local_queue_ptr"] == r["global_queue_ptr"] == (alone["prototypes"] + other["prototypes"]) % 8

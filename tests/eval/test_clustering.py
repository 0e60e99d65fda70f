import sys

import numpy as np
import pytest
import torch

from eval import clustering
from eval.clustering import assign_clusters, kmeans, resolve_backend


def blobs(n=3000, k=6, d=8, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    labels = rng.integers(0, k, n)
    return (centers[labels] + spread * rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture
def no_faiss(monkeypatch):
    """``import faiss`` fails, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "faiss", None)


def seed_spread(x, k, backend, seeds=range(4), nredo=1):
    objs = [kmeans(x, k, seed=s, nredo=nredo, backend=backend).objective for s in seeds]
    return min(objs), max(objs)


def test_torch_matches_faiss_within_seed_spread():
    pytest.importorskip("faiss")
    x = blobs(k=8, spread=1.2)
    lo, hi = seed_spread(x, 8, "faiss")
    t = kmeans(x, 8, seed=0, nredo=1, backend="torch")
    f = kmeans(x, 8, seed=0, nredo=1, backend="faiss")
    # same k-means++ start: the same local optimum up to float rounding
    assert t.objective == pytest.approx(f.objective, rel=1e-4)
    assert (t.labels == f.labels).mean() > 0.99
    best = kmeans(x, 8, seed=0, nredo=5, backend="torch")
    assert lo - 1e-3 * lo <= best.objective <= hi + 1e-3 * hi


def test_torch_lloyd_reaches_a_fixed_point_and_fills_empty_clusters():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (4000, 4)), rng.normal(3.0, 1, (4000, 4))]).astype(np.float32)
    res = kmeans(x, 2, seed=3, nredo=1, niter=100, backend="torch", device="cpu")
    for c in range(2):
        np.testing.assert_allclose(res.centroids[c], x[res.labels == c].mean(0), atol=1e-4)
    # 5 distinct points into 5 clusters: every cluster gets one, the objective is 0
    pts = np.repeat(np.eye(5, dtype=np.float32), 20, axis=0)
    res = kmeans(pts, 5, seed=0, nredo=2, backend="torch")
    assert len(set(res.labels.tolist())) == 5 and res.objective == pytest.approx(0.0, abs=1e-6)


def test_auto_backend_falls_back_to_torch_without_faiss(no_faiss):
    assert resolve_backend("auto") == "torch"
    with pytest.raises(ValueError, match="faiss is not installed"):
        resolve_backend("faiss")
    res = kmeans(blobs(), 6, seed=0, nredo=2)
    assert res.labels.shape == (3000,)
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("scipy")


def test_faiss_gpu_resources_are_created_once(monkeypatch):
    faiss = pytest.importorskip("faiss")
    made = []

    class FakeResources:
        def __init__(self):
            made.append(self)

    # a "GPU" index that is a CPU one: checks the plumbing, not CUDA
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "GpuIndexFlatL2", lambda res, d: faiss.IndexFlatL2(d), raising=False)
    monkeypatch.setattr(clustering, "_GPU_RESOURCES", None)
    x = blobs()
    gpu = kmeans(x, 6, seed=0, nredo=4, backend="faiss", gpu=True)
    kmeans(x, 6, seed=1, nredo=3, backend="faiss", gpu=True)
    assert len(made) == 1
    cpu = kmeans(x, 6, seed=0, nredo=4, backend="faiss", gpu=False)
    assert gpu.objective == pytest.approx(cpu.objective)


def test_eval_kmeans_finishes_without_faiss_and_agrees(synthetic, monkeypatch):
    from eval.kmeans import run_pixel_protocol, run_prototype_protocol
    from eval.saliency_source import SaliencySource

    ds, model = synthetic
    pytest.importorskip("faiss")
    model.gen.manual_seed(0)  # the same noisy embeddings in both runs
    with_faiss, _, _ = run_pixel_protocol(model, ds, k=4, seeds=[0, 1], fit_pixels=2000, progress=False, backend="auto")
    proto_faiss, _, cl_faiss = run_prototype_protocol(
        model, ds, SaliencySource("model"), k=4, seeds=[0], progress=False, backend="auto"
    )
    monkeypatch.setitem(sys.modules, "faiss", None)
    model.gen.manual_seed(0)
    without, _, _ = run_pixel_protocol(model, ds, k=4, seeds=[0, 1], fit_pixels=2000, progress=False, backend="auto")
    proto_torch, _, cl_torch = run_prototype_protocol(
        model, ds, SaliencySource("model"), k=4, seeds=[0], progress=False, backend="auto"
    )
    assert without["miou_mean"] == pytest.approx(with_faiss["miou_mean"], abs=1e-6)
    assert proto_torch["miou_mean"] == pytest.approx(proto_faiss["miou_mean"], abs=1e-6)
    np.testing.assert_array_equal(cl_torch[0], cl_faiss[0])


def test_assign_clusters_is_nearest_centroid():
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.9, 1.2]])
    c = torch.tensor([[5.0, 5.0], [1.0, 1.0]])
    assert assign_clusters(x, c).tolist() == [1, 0, 1]


@pytest.mark.data
def test_eval_kmeans_cli_without_faiss(shared_root, moco_ckpt, tmp_path, monkeypatch):
    import json

    from eval.kmeans import main

    pytest.importorskip("faiss")
    root = shared_root("weizmann")
    args = [
        "--checkpoint",
        str(moco_ckpt),
        "--dataset",
        "weizmann",
        "--root",
        str(root),
        "--limit",
        "8",
        "--size",
        "64",
        "--workers",
        "0",
        "--seeds",
        "3",
        "--k",
        "3",
        "--saliency-source",
        "gt",
        "--no-progress",
    ]
    with_faiss = main([*args, "--json", str(tmp_path / "f.json")])
    monkeypatch.setitem(sys.modules, "faiss", None)
    without = main([*args, "--json", str(tmp_path / "t.json")])
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["kmeans"]["backend"] == "torch" and "pixel_acc" in data
    # within the spread over K-means seeds
    tol = max(with_faiss["miou_std"], without["miou_std"], 1e-6)
    assert abs(without["miou_mean"] - with_faiss["miou_mean"]) <= tol


def test_pca_whitening_leaves_rounding_noise_directions_at_zero():
    from eval.clustering import pca_whitening

    rng = np.random.default_rng(0)
    x = np.zeros((40, 4))
    x[:, 0] = rng.normal(size=40)
    x[:, 1] = rng.normal(size=40) * 0.1
    x[:, 2] = 1e-9 * rng.normal(size=40)  # float noise, not data
    mean, w = pca_whitening(x, 4)
    y = (x - mean) @ w
    np.testing.assert_allclose(y.var(0, ddof=1)[:2], [1, 1], rtol=1e-5)
    assert np.abs(y[:, 2:]).max() < 1e-6

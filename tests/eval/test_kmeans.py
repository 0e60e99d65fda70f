import json

import numpy as np
import pytest
import torch

from eval.caches import StreamCache
from eval.clustering import kmeans, pca_whitening
from eval.kmeans import (
    collect_image_prototypes,
    main,
    prototype_confusion,
    run_pixel_protocol,
    run_prototype_protocol,
)
from eval.metrics import confusion_matrix
from eval.saliency_source import SaliencySource
from maskcontrast import embeddings
from maskcontrast.embeddings import masked_mean_embedding, normalised_pixels, upsample_embedding


def blobs(n=3000, k=6, d=8, spread=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 3
    labels = rng.integers(0, k, n)
    return (centers[labels] + spread * rng.normal(size=(n, d))).astype(np.float32)


def test_faiss_matches_sklearn_objective():
    x = blobs()
    f = kmeans(x, 6, seed=0, backend="faiss", nredo=5)
    s = kmeans(x, 6, seed=0, backend="sklearn", nredo=5)
    assert f.labels.shape == (len(x),) and f.centroids.shape == (6, 8)
    assert abs(f.objective - s.objective) / s.objective < 0.01


def test_faiss_uses_every_point():
    # 20000 points in 2 clusters is far above faiss's default 256 points per centroid; with every
    # point used, the final centroids are the means of their assigned points (a Lloyd fixed point).
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (10000, 4)), rng.normal(2.0, 1, (10000, 4))]).astype(np.float32)
    res = kmeans(x, 2, seed=3, nredo=1, niter=50)
    for c in range(2):
        np.testing.assert_allclose(res.centroids[c], x[res.labels == c].mean(0), atol=2e-3)


def test_kmeans_errors():
    with pytest.raises(ValueError, match="cannot make 5 clusters from 3 points"):
        kmeans(np.zeros((3, 2), np.float32), 5)
    with pytest.raises(ValueError, match="backend"):
        kmeans(np.zeros((9, 2), np.float32), 2, backend="scipy")


def test_pca_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3
    mean, w = pca_whitening(x, 4)
    y = (x - mean) @ w
    assert y.shape == (500, 4)
    np.testing.assert_allclose(np.cov(y.T), np.eye(4), atol=1e-4)


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 30 * 40 * 3])
def test_chunked_pixels_equal_direct_computation(monkeypatch, chunk_bytes):
    if chunk_bytes is not None:
        monkeypatch.setattr(embeddings, "CHUNK_BYTES", chunk_bytes)  # forces 3-channel chunks
    torch.manual_seed(0)
    emb = torch.randn(1, 10, 5, 7)
    direct = upsample_embedding(emb, (30, 40))[0].reshape(10, -1).T
    torch.testing.assert_close(normalised_pixels(emb, (30, 40)), direct)
    idx = torch.tensor([0, 17, 1199])
    torch.testing.assert_close(normalised_pixels(emb, (30, 40), idx), direct[idx])
    mean, w = torch.randn(10), torch.randn(10, 3)
    torch.testing.assert_close(normalised_pixels(emb, (30, 40), idx, (mean, w)), (direct[idx] - mean) @ w)
    mask = torch.zeros(30, 40, dtype=torch.bool)
    mask[3:9, 10:30] = True
    proto = masked_mean_embedding(emb, mask)
    ref = torch.nn.functional.normalize(direct[mask.reshape(-1)].mean(0), dim=0)
    torch.testing.assert_close(proto, ref)
    assert masked_mean_embedding(emb, torch.zeros(30, 40, dtype=torch.bool)) is None


def test_prototype_confusion_equals_pixel_accumulation(synthetic):
    ds, _ = synthetic
    rng = np.random.default_rng(0)
    k, c = 4, ds.info.num_classes
    clusters = rng.integers(0, k - 1, len(ds))
    fg_hist, bg_hist, direct = [], [], np.zeros((k, c), np.int64)
    for i, s in enumerate(ds):
        fg = s.mask > 0
        valid = s.label != 255
        fg_hist.append(np.bincount(s.label[fg & valid], minlength=c))
        bg_hist.append(np.bincount(s.label[~fg & valid], minlength=c))
        direct += confusion_matrix(np.where(fg, 1 + clusters[i], 0), s.label, k, c)
    np.testing.assert_array_equal(prototype_confusion(clusters, np.stack(fg_hist), np.stack(bg_hist), k), direct)


def test_separated_features_prototype_protocol_is_perfect(synthetic):
    ds, model = synthetic
    result, stats, _ = run_prototype_protocol(model, ds, SaliencySource("model"), k=4, seeds=[0, 1], progress=False)
    assert stats.prototypes.shape == (12, 4) and stats.has_proto.all()
    assert result["miou_mean"] == pytest.approx(1.0)
    assert result["miou_std"] == pytest.approx(0.0)
    assert set(result["per_class"]) == {"c0", "c1", "c2", "c3"}
    # the ground-truth foreground as saliency source gives the same
    result_gt, _, _ = run_prototype_protocol(model, ds, SaliencySource("gt"), k=4, seeds=[0], progress=False)
    assert result_gt["miou_mean"] == pytest.approx(1.0)


def test_separated_features_pixel_protocol_is_perfect(synthetic):
    ds, model = synthetic
    result, centroids, _ = run_pixel_protocol(model, ds, k=4, seeds=[0, 1], fit_pixels=2000, progress=False)
    assert result["miou_mean"] == pytest.approx(1.0)
    assert len(centroids) == 2
    # over-clustering with majority vote stays perfect
    over, _, _ = run_pixel_protocol(model, ds, k=7, seeds=[0], fit_pixels=2000, progress=False)
    assert over["miou_mean"] == pytest.approx(1.0)
    assert all(m >= 0 for m in over["seeds"][0]["mapping"])


def test_prototype_cache_resumes_and_refuses_other_settings(synthetic, tmp_path):
    ds, model = synthetic
    path = tmp_path / "c" / "prototypes.pt"
    cache = StreamCache(path, {"a": 1}, every=5)
    full = collect_image_prototypes(model, ds, SaliencySource("model"), cache=cache, progress=False)
    # a cache that stopped after 5 images continues from there
    data = torch.load(path, weights_only=True)
    state = {k: v[:5] for k, v in data["state"].items()}
    torch.save({"settings": data["settings"], "done": 5, "state": state}, path)
    resumed = collect_image_prototypes(
        model, ds, SaliencySource("model"), cache=StreamCache(path, {"a": 1}), progress=False
    )
    np.testing.assert_array_equal(resumed.fg_hist, full.fg_hist)
    assert resumed.prototypes.shape == full.prototypes.shape
    with pytest.raises(ValueError, match="different settings"):
        StreamCache(path, {"a": 2}).load()


@pytest.mark.data
def test_cli_moco_checkpoint_end_to_end(shared_root, moco_ckpt, tmp_path):
    root = shared_root("weizmann")
    out = tmp_path / "km.json"
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
        "2",
        "--k",
        "3",
        "--json",
        str(out),
        "--vis",
        "2",
        "--no-progress",
    ]
    with pytest.raises(ValueError, match="no saliency head"):
        main(args)
    result = main([*args, "--saliency-source", "gt"])
    data = json.loads(out.read_text())
    for key in ("miou_mean", "miou_std", "per_class", "pixel_acc", "seeds", "protocol", "k", "n_images"):
        assert key in data
    assert data["layout"] == "moco" and data["n_images"] == 8 and data["k"] == 3
    assert 0.0 <= data["miou_mean"] <= 1.0 and len(data["seeds"]) == 2
    assert result["miou_mean"] == data["miou_mean"]
    assert len(list((tmp_path / "km_vis").glob("*.png"))) == 2
    with pytest.raises(FileExistsError, match="--overwrite"):
        main([*args, "--saliency-source", "gt"])


@pytest.mark.data
def test_cli_pixel_protocol_on_msrc(shared_root, maskcontrast_ckpt, tmp_path):
    root = shared_root("msrc")
    args = [
        "--checkpoint",
        str(maskcontrast_ckpt),
        "--dataset",
        "msrc",
        "--root",
        str(root),
        "--limit",
        "6",
        "--size",
        "64",
        "--workers",
        "0",
        "--seeds",
        "1",
        "--protocol",
        "pixel",
        "--k",
        "25",
        "--fit-pixels",
        "3000",
        "--no-progress",
        "--cache",
        str(tmp_path / "cache"),
    ]
    first = main(args)
    again = main(args)  # served from the cache of both passes
    assert first["miou_mean"] == pytest.approx(again["miou_mean"])
    assert first["matching"] == "auto" and len(first["per_class"]) == 21
    assert (tmp_path / "cache" / "pixel_pass2.pt").is_file()


def test_cli_checks_k_before_loading_anything(tmp_path):
    with pytest.raises(ValueError, match="--k must be >= 2"):
        main(
            ["--checkpoint", str(tmp_path / "missing.pt"), "--dataset", "weizmann", "--root", str(tmp_path), "--k", "1"]
        )


@pytest.mark.parametrize("protocol", ["prototype", "pixel"])
def test_fit_split_scores_with_the_fitted_clustering_and_matching(synthetic, tmp_path, protocol):
    from eval.kmeans import PixelProtocol, PrototypeProtocol, fit_on_other_split

    ds_fit, model = synthetic
    (tmp_path / "other").mkdir()
    ds = type(ds_fit)(tmp_path / "other", n_classes=4, n_images=9, seed=1)  # other images, same classes
    common = {"k": 4, "seeds": [0, 1]}
    proto = (
        PrototypeProtocol(SaliencySource("model"), **common)
        if protocol == "prototype"
        else PixelProtocol(fit_pixels=2000, **common)
    )
    result = fit_on_other_split(proto, model, ds_fit, ds, progress=False, cache_dir=tmp_path / "cache")
    assert result["miou_mean"] == pytest.approx(1.0) and result["pixel_acc"] == pytest.approx(1.0)
    assert result["fit"]["n_images"] == 12 and result["fit"]["miou_mean"] == pytest.approx(1.0)
    assert "pixel_acc_std" in result
    # the scored split's confusion is scored with the fit split's mapping, never re-matched
    confs = proto.confusions(model, ds, progress=False)
    mapping = np.asarray(result["seeds"][0]["mapping"])
    assert (confs[0][np.arange(4), mapping].sum()) == confs[0].sum()


def test_summarize_seeds_uses_given_mappings():
    from eval.kmeans import summarize_seeds

    conf = np.array([[0, 5], [5, 0]])
    own = summarize_seeds([conf], [0], ["a", "b"], "hungarian")
    fixed = summarize_seeds([conf], [0], ["a", "b"], "hungarian", mappings=[np.array([0, 1])])
    assert own["miou_mean"] == 1.0 and own["pixel_acc"] == 1.0
    assert fixed["miou_mean"] == 0.0 and fixed["pixel_acc"] == 0.0


@pytest.mark.data
def test_cli_fit_split(shared_root, moco_ckpt, tmp_path):
    root = shared_root("pet")
    out = tmp_path / "km.json"
    result = main(
        [
            "--checkpoint",
            str(moco_ckpt),
            "--dataset",
            "pet",
            "--root",
            str(root),
            "--dataset-arg",
            "target=species",
            "--fit-split",
            "trainval",
            "--split",
            "test",
            "--limit",
            "6",
            "--size",
            "64",
            "--workers",
            "0",
            "--seeds",
            "2",
            "--k",
            "3",
            "--saliency-source",
            "gt",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    data = json.loads(out.read_text())
    assert data["fit_split"] == "trainval" and data["split"] == "test" and data["fit"]["n_images"] == 6
    assert data["seeds"][0]["mapping"] == result["seeds"][0]["mapping"]
    assert 0 <= data["pixel_acc"] <= 1 and "pixel_acc_std" in data
    with pytest.raises(ValueError, match="is the scored split itself"):
        main(
            [
                "--checkpoint",
                str(moco_ckpt),
                "--dataset",
                "pet",
                "--root",
                str(root),
                "--fit-split",
                "test",
                "--split",
                "test",
                "--k",
                "3",
                "--saliency-source",
                "gt",
            ]
        )

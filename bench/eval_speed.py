"""Speed of the K-means evaluation: ``python bench/eval_speed.py`` (results go to docs/EVAL.md).

1. Matching and metrics at PASCAL VOC val scale: 1,449 synthetic label maps of VOC sizes
   (500 x 375, 375 x 500, 500 x 333; background, 1-3 objects of random classes, ignore borders)
   with a synthetic clustering (a permutation of the classes, 10 % of pixels flipped).
   * ``ours``: the path of ``eval.kmeans``: a ``np.bincount`` confusion per image, accumulated,
     then Hungarian matching and the scores (``eval.metrics``).
   * ``upstream-style``: our own re-implementation of the approach described for the official
     code (no code copied): concatenate every prediction and label, then one boolean pass per
     (cluster, class) pair (21 x 21 = 441) with joblib, Hungarian matching, IoU.
   Both must give the same mIoU (checked).
2. Clustering 1,449 prototypes (32-d): ``sklearn`` PCA(whiten) + MiniBatchKMeans (upstream
   style) against ours (PCA whitening + faiss K-means, k-means++ seeding, 10 restarts); the
   objective (sum of squared distances in the whitened space) is printed for both.
3. (``--msrc``) peak RSS of the whole ``python -m eval.kmeans`` on the MSRC-v2 copy under
   ``$MASKCONTRAST_DATA`` (ResNet-50 maskcontrast model with random weights, native resolution).

Wall-clock times (joblib runs in worker processes, so CPU time of this process would flatter it);
``process_time`` is printed too for the single-process parts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.metrics import confusion_matrix, hungarian_mapping, map_confusion, segmentation_scores

SIZES = ((375, 500), (500, 375), (333, 500))


def synthetic_image(i: int, n_classes: int, perm: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """One (prediction, label) pair, uint8, deterministic in ``i``."""
    rng = np.random.default_rng([7, i])
    h, w = SIZES[i % len(SIZES)]
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.integers(1, n_classes))
        y0, x0 = int(rng.integers(0, h - 60)), int(rng.integers(0, w - 60))
        y1, x1 = int(rng.integers(y0 + 40, h)), int(rng.integers(x0 + 40, w))
        label[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = 255
        label[y0:y1, x0:x1] = c
    pred = perm[np.where(label == 255, rng.integers(0, n_classes, (h, w)), label)].astype(np.uint8)
    flip = rng.random((h, w)) < noise
    pred[flip] = rng.integers(0, n_classes, int(flip.sum()))
    return pred, label


def ours(pairs: list[tuple[np.ndarray, np.ndarray]], k: int, c: int) -> float:
    conf = np.zeros((k, c), np.int64)
    for pred, label in pairs:
        conf += confusion_matrix(pred, label, k, c, 255)
    return segmentation_scores(map_confusion(conf, hungarian_mapping(conf))).miou


def _pair_count(pred: np.ndarray, gt: np.ndarray, i: int, j: int) -> int:
    return int(np.count_nonzero((pred == i) & (gt == j)))


def upstream_style(pairs: list[tuple[np.ndarray, np.ndarray]], k: int, c: int, n_jobs: int) -> tuple[float, float]:
    """Returns (mIoU, seconds spent concatenating)."""
    from joblib import Parallel, delayed
    from scipy.optimize import linear_sum_assignment

    t = time.perf_counter()
    pred = np.concatenate([p.reshape(-1) for p, _ in pairs])
    gt = np.concatenate([g.reshape(-1) for _, g in pairs])
    valid = gt != 255
    pred, gt = pred[valid], gt[valid]
    concat_s = time.perf_counter() - t
    counts = Parallel(n_jobs=n_jobs)(delayed(_pair_count)(pred, gt, i, j) for i in range(k) for j in range(c))
    inter = np.array(counts, dtype=np.int64).reshape(k, c)
    pred_tot = np.array([np.count_nonzero(pred == i) for i in range(k)])
    gt_tot = np.array([np.count_nonzero(gt == j) for j in range(c)])
    iou = inter / np.maximum(pred_tot[:, None] + gt_tot[None, :] - inter, 1)
    rows, cols = linear_sum_assignment(-iou)
    mapping = dict(zip(rows, cols))
    # re-score after remapping, one pass per class
    tp = np.zeros(c)
    pcount = np.zeros(c)
    for i in range(k):
        if i in mapping:
            tp[mapping[i]] += inter[i, mapping[i]]
            pcount[mapping[i]] += pred_tot[i]
    ious = tp / np.maximum(pcount + gt_tot - tp, 1)
    return float(ious[(pcount + gt_tot) > 0].mean()), concat_s


def bench_matching(n_images: int, n_jobs: int) -> dict:
    k = c = 21
    perm = np.random.default_rng(0).permutation(k)
    t = time.perf_counter()
    pairs = [synthetic_image(i, c, perm, 0.1) for i in range(n_images)]
    gen_s = time.perf_counter() - t
    n_pix = sum(p.size for p, _ in pairs)
    t, tc = time.perf_counter(), time.process_time()
    m_ours = ours(pairs, k, c)
    ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - tc
    t = time.perf_counter()
    m_up, concat_s = upstream_style(pairs, k, c, n_jobs)
    up_s = time.perf_counter() - t
    same = abs(m_ours - m_up) < 1e-9
    return {
        "images": n_images,
        "pixels": n_pix,
        "generate_s": gen_s,
        "ours_s": ours_s,
        "ours_cpu_s": ours_cpu,
        "upstream_s": up_s,
        "upstream_concat_s": concat_s,
        "speedup": up_s / ours_s,
        "miou_ours": m_ours,
        "miou_upstream": m_up,
        "same_miou": same,
        "joblib_jobs": n_jobs,
    }


def bench_clustering(n: int = 1449, d: int = 32, k: int = 20) -> dict:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA

    from eval.clustering import kmeans, pca_whitening

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(k, d))
    x = centers[rng.integers(0, k, n)] + 0.7 * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = {}
    t, tc = time.perf_counter(), time.process_time()
    y = PCA(n_components=d, whiten=True).fit_transform(x)
    mb = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3).fit(y)
    obj = float(((y - mb.cluster_centers_[mb.labels_]) ** 2).sum())
    out["upstream_style"] = {"s": time.perf_counter() - t, "cpu_s": time.process_time() - tc, "objective": obj}
    t, tc = time.perf_counter(), time.process_time()
    mean, w = pca_whitening(x, d)
    res = kmeans((x - mean) @ w, k, seed=0)
    out["ours"] = {"s": time.perf_counter() - t, "cpu_s": time.process_time() - tc, "objective": res.objective}
    return out


def bench_msrc_rss(arch: str, extra: list[str]) -> dict:
    import torch

    from maskcontrast.config import ModelConfig
    from maskcontrast.config_loading import load_config
    from maskcontrast.models import build_model, model_checkpoint
    from maskcontrast.utils import atomic_save

    tmp = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    torch.manual_seed(0)
    cfg = load_config(ModelConfig, overrides=[f"backbone.arch={arch}"])
    ckpt = tmp / f"{arch}.pt"
    atomic_save(model_checkpoint(build_model(cfg), cfg), ckpt)
    out = tmp / "km.json"
    cmd = [
        sys.executable,
        "-m",
        "eval.kmeans",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        "msrc",
        "--json",
        str(out),
        "--no-progress",
        *extra,
    ]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    res = json.loads(out.read_text())
    return {
        "cmd": " ".join(cmd),
        "seconds": time.perf_counter() - t,
        "peak_rss_mib": res["peak_rss_mib"],
        "n_images": res["n_images"],
        "miou_mean": res["miou_mean"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1449, help="synthetic images for the matching benchmark (1449)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="joblib workers for the upstream style")
    p.add_argument("--msrc", action="store_true", help="also measure peak RSS of eval.kmeans on MSRC-v2")
    p.add_argument("--only-msrc", action="store_true", help="skip parts 1 and 2")
    p.add_argument("--msrc-arch", default="resnet50", help="backbone of the random-weight model (resnet50)")
    p.add_argument("--msrc-args", default="", help="extra eval.kmeans arguments, e.g. '--protocol pixel'")
    args = p.parse_args()
    if not args.only_msrc:
        print("== matching and metrics (VOC val scale) ==")
        m = bench_matching(args.images, args.jobs)
        print(json.dumps(m, indent=2))
        print(
            f"ours {m['ours_s']:.2f} s, upstream-style {m['upstream_s']:.1f} s -> {m['speedup']:.0f}x; "
            f"same mIoU: {m['same_miou']} ({100 * m['miou_ours']:.4f} vs {100 * m['miou_upstream']:.4f})"
        )
        print("== clustering 1449 prototypes ==")
        print(json.dumps(bench_clustering(), indent=2))
    if args.msrc or args.only_msrc:
        print("== peak RSS of eval.kmeans on MSRC-v2 ==")
        print(json.dumps(bench_msrc_rss(args.msrc_arch, args.msrc_args.split()), indent=2))


if __name__ == "__main__":
    main()

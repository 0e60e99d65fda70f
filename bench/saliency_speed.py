"""Speed of the saliency estimators and the refiner at 400 x 300 (prints a Markdown table).

Measures, per method, the wall-clock and the process (CPU) time per image, one image at a time
in one process, with BLAS/OpenMP threads limited to ``--threads`` (1 by default, the setting of
each ``--workers`` process of saliency.generate). Images: SOD photos resized to 400 x 300 when
``MASKCONTRAST_DATA`` is set, else synthetic scenes. The refiner is timed for one training step
(forward, backward, AdamW) per image at its input size, and for inference (with the flip
average and the resize back) per 400 x 300 image; ``--run DIR`` adds the total time of a
finished ``python -m saliency.refine`` run from its ``history.json``.

Usage::

    python bench/saliency_speed.py [--images 20] [--threads 1] [--run /tmp/refine_run] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--images", type=int, default=20, help="images timed per method (after 2 warm-up images)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP/torch threads")
    p.add_argument("--methods", default="spectral,mbd,rbd,gmr,fused,refined", help="comma-separated methods")
    p.add_argument(
        "--config", default="configs/saliency/refine_cpu.yaml", help="refiner config for the refiner timings"
    )
    p.add_argument("--run", help="a finished refine run folder: report its total training time")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # must happen before numpy / torch are imported
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

from maskcontrast.config_loading import load_config  # noqa: E402
from maskcontrast.data import build_dataset, shared_dataset_root  # noqa: E402
from saliency.fusion import fused_saliency  # noqa: E402
from saliency.methods import CLASSICAL  # noqa: E402

SIZE = (400, 300)  # W x H


def bench_images(n: int) -> tuple[list[np.ndarray], str]:
    root = shared_dataset_root("sod")
    if root is not None:
        ds = build_dataset("saliency_folder", root)
        imgs = [np.asarray(Image.fromarray(ds.load(i).image).resize(SIZE, Image.BILINEAR)) for i in ds.ids[: n + 2]]
        return imgs, f"SOD images resized to {SIZE[0]}x{SIZE[1]}"
    rng = np.random.default_rng(0)
    imgs = []
    for _ in range(n + 2):
        yy, xx = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
        img = np.stack([100 + 50 * np.sin(xx / 20 + rng.random() * 6), 120 + 40 * np.cos(yy / 15), 80 + 0 * xx], -1)
        cy, cx = rng.integers(80, 220), rng.integers(100, 300)
        obj = ((yy - cy) / 60.0) ** 2 + ((xx - cx) / 80.0) ** 2 <= 1
        img[obj] = (220, 50, 40)
        imgs.append(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))
    return imgs, f"synthetic {SIZE[0]}x{SIZE[1]} scenes (MASKCONTRAST_DATA not set)"


def time_fn(fn, images: list[np.ndarray]) -> dict[str, float]:
    for im in images[:2]:
        fn(im)
    wall, cpu = time.perf_counter(), time.process_time()
    for im in images[2:]:
        fn(im)
    n = len(images) - 2
    return {"wall_ms": 1000 * (time.perf_counter() - wall) / n, "cpu_ms": 1000 * (time.process_time() - cpu) / n}


def bench_refiner(config: str, images: list[np.ndarray], tmp: Path) -> dict[str, dict[str, float]]:
    from maskcontrast.utils import atomic_save
    from saliency.refine import RefineConfig, RefinerNet, RefinerPredictor, confident_bce
    from saliency.refine.network import normalize as _normalize
    from saliency.refine.training import final_checkpoint

    cfg = load_config(RefineConfig, config)
    net = RefinerNet(OmegaConf.to_object(cfg.model))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    s, b = cfg.input_size, cfg.batch_size
    x = _normalize(torch.randint(0, 255, (b, s, s, 3), dtype=torch.uint8))
    t = torch.rand(b, 1, s, s)
    c = torch.rand(b, 1, s, s) > 0.3

    def step() -> None:
        loss = confident_bce(net(x), t, c)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    n_steps = 3
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n_steps):
        step()
    train = {
        "wall_ms": 1000 * (time.perf_counter() - wall) / (n_steps * b),
        "cpu_ms": 1000 * (time.process_time() - cpu) / (n_steps * b),
    }
    path = tmp / "bench_refiner.pt"
    atomic_save(final_checkpoint(net, cfg), path)
    predict = RefinerPredictor(path, device="cpu")
    infer = time_fn(predict, images)
    path.unlink()
    return {"refiner train step (per image)": train, "refined (inference)": infer}


def main() -> int:
    args = ARGS
    assert args is not None
    torch.set_num_threads(args.threads)
    images, source = bench_images(args.images)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows: dict[str, dict[str, float]] = {}
    for m in methods:
        if m in CLASSICAL:
            rows[m] = time_fn(CLASSICAL[m], images)
        elif m == "fused":
            rows["fused"] = time_fn(fused_saliency, images)
        elif m == "refined":
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                rows.update(bench_refiner(args.config, images, Path(tmp)))
        else:
            print(f"unknown method {m}", file=sys.stderr)
            return 2
        print(f"  {m}: done", file=sys.stderr)
    print(f"\n{len(images) - 2} images: {source}; threads={args.threads}; torch {torch.__version__}\n")
    print("| method | wall ms / image | CPU (process) ms / image |")
    print("|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_ms']:.1f} | {r['cpu_ms']:.1f} |")
    result = {"source": source, "threads": args.threads, "rows": rows}
    if args.run:
        hist = json.loads((Path(args.run) / "history.json").read_text())
        result["run"] = {k: hist[k] for k in ("n_images", "seconds", "pseudo_label_seconds", "train_seconds")}
        print(
            f"\nrefine run {args.run}: {hist['n_images']} images, total {hist['seconds']:.0f} s "
            f"(pseudo-labels {hist['pseudo_label_seconds']:.0f} s, training {hist['train_seconds']:.0f} s)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {Path(args.json).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

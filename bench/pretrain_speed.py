"""Speed of a MaskContrast training step: images/s, peak RSS, and the full step / bare query ratio.

For every (backbone, precision) it times, in a fresh subprocess (so peak RSS is per config):

* **bare**: forward + backward of the query network alone (loss = sum of its outputs);
* **full**: a trainer step: device-side view augmentation of a loaded batch, momentum update,
  query forward, key forward (no grad), prototypes, logits against batch + memory bank, ENet
  cross-entropy + balanced BCE, backward, SGD step, enqueue;
* **floor**: what no MaskContrast step can avoid, for the same networks and batch: the key
  network's forward (no grad) plus the query network's forward, backward and SGD update (loss =
  sum of its feature-resolution outputs). The table shows full / floor beside the step.

Data loading is excluded (it runs in DataLoader workers, overlapped with the step). Bare and full
steps alternate and each column is the median over the timed steps (this VM's speed drifts by
10-20 % over minutes, which a bare-then-full order turned into ratio swings of +-0.3). Prints a
Markdown table; results are preliminary when the machine is shared.

``--loss-path`` times only the pixel loss (prototypes, pixel gathering, loss and its backward) at
the same batch and size, as written (embeddings upsampled at the object pixels only, chunked
cross-entropy) and as the paper's formulas read (full-resolution maps, the ``N x (P + K)`` logits
matrix), from the same random feature-resolution embeddings.

    python bench/pretrain_speed.py                       # R50-OS8, R50-OS16, R18-OS8; 224 px; batch 8
    python bench/pretrain_speed.py --configs resnet18:8 --steps 5 --precisions fp32
    python bench/pretrain_speed.py --loss-path --steps 10
    python bench/pretrain_speed.py --configs resnet50:8 --size 128 --precisions fp32,fp32_cl --steps 5
    python bench/pretrain_speed.py --tiny        # R18-OS8, 32 px, batch 2, 1 step: checks the script, times nothing

Precisions: ``fp32`` (NCHW), ``fp32_cl`` (fp32 + channels_last, the trainer's default), ``bf16_cl``
(bf16 autocast + channels_last).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# this checkout's packages, also when another checkout is installed (a run from its own git worktree)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict:
    """A loader batch as ``PairedViewDataset`` yields it for ``size`` px views: random images kept at
    1.5 x ``size``, a centred box as the object mask and two random crop boxes per image."""
    import numpy as np
    import torch

    from maskcontrast.data.views import sample_crop_box

    rng = np.random.default_rng(seed)
    load = int(1.5 * size)
    mask = np.zeros((batch, load, load), np.uint8)
    mask[:, load // 4 : 3 * load // 4, load // 5 : 4 * load // 5] = 1
    return {
        "image": torch.from_numpy(rng.integers(0, 255, (batch, load, load, 3), dtype=np.uint8)),
        "mask": torch.from_numpy(mask),
        "boxes": torch.tensor(
            [[[*sample_crop_box(rng, load, load), 0.0] for _ in range(2)] for _ in range(batch)], dtype=torch.float32
        ),
    }


def run_one(arch: str, os_: int, precision: str, size: int, batch: int, steps: int, warmup: int, threads: int) -> dict:
    from contextlib import nullcontext

    import torch

    from maskcontrast.config import AugmentConfig, MaskContrastObjectiveConfig, ModelConfig
    from maskcontrast.config_loading import load_config
    from maskcontrast.data.views import ViewSampler
    from maskcontrast.momentum import update_momentum
    from maskcontrast.objectives import MaskContrastObjective
    from maskcontrast.utils import peak_rss_mib

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if precision not in ("fp32", "fp32_cl", "bf16_cl"):
        raise SystemExit(f"unknown precision {precision!r}: fp32, fp32_cl or bf16_cl")
    bf16 = precision == "bf16_cl"
    cl = precision.endswith("_cl")
    mcfg = load_config(ModelConfig, overrides=[f"backbone.arch={arch}", f"backbone.output_stride={os_}"])
    obj = MaskContrastObjective(mcfg, MaskContrastObjectiveConfig(queue_size=128))
    if cl:
        obj = obj.to(memory_format=torch.channels_last)
    obj.train()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.004, momentum=0.9, weight_decay=1e-4)
    sampler = ViewSampler(AugmentConfig(), size)
    batch_in = synthetic_batch(batch, size)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def prep(x):
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    parts: dict[str, float] = {}

    def tick(name, t0):
        parts[name] = parts.get(name, 0.0) + time.process_time() - t0
        return time.process_time()

    def bare_step(x):
        with ctx():
            out = obj.query(x)
            loss = out.embedding.float().sum() + out.saliency.float().sum()
        loss.backward()
        obj.zero_grad(set_to_none=True)

    def floor_step(xq, xk):
        with torch.no_grad(), ctx():
            obj.key(xk, upsample=False)
        with ctx():
            out = obj.query(xq, upsample=False)
            loss = out.embedding.float().sum() + out.saliency.float().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def full_step(timed=False):
        t = time.process_time()
        views = sampler(batch_in)
        views.query, views.key = prep(views.query), prep(views.key)
        t = tick("augment", t) if timed else t
        update_momentum(obj.query, obj.key, 0.999)
        with ctx():
            loss, _ = obj(views)
        t = tick("forward (query+key+loss)", t) if timed else t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = tick("backward", t) if timed else t
        opt.step()
        tick("sgd", t) if timed else None

    first = sampler(batch_in)
    x, xk = prep(first.query), prep(first.key)
    res = {
        "arch": arch,
        "os": os_,
        "precision": precision,
        "size": size,
        "batch": batch,
        "threads": torch.get_num_threads(),
    }
    for _ in range(warmup):
        bare_step(x)
        floor_step(x, xk)
        full_step()
    # bare, floor and full steps alternate, so a drift in the machine's speed hits all alike; medians
    samples: dict[str, list[tuple[float, float]]] = {"bare": [], "floor": [], "full": []}
    for _ in range(steps):
        for name, fn in (
            ("bare", lambda: bare_step(x)),
            ("floor", lambda: floor_step(x, xk)),
            ("full", lambda: full_step(timed=True)),
        ):
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            samples[name].append((time.perf_counter() - w0, time.process_time() - c0))
    for name, pairs in samples.items():
        res[f"{name}_wall_s"] = statistics.median(w for w, _ in pairs)
        res[f"{name}_cpu_s"] = statistics.median(c for _, c in pairs)
    res["ratio_per_pair"] = statistics.median(f[1] / b[1] for b, f in zip(samples["bare"], samples["full"]))
    res["full_over_floor_wall"] = statistics.median(f[0] / b[0] for b, f in zip(samples["floor"], samples["full"]))
    res["parts_cpu_s"] = {k: v / steps for k, v in parts.items()}
    # the key forward alone (no grad), for the breakdown
    with torch.no_grad(), ctx():
        c0 = time.process_time()
        for _ in range(steps):
            obj.key(x, upsample=False)
        res["key_forward_cpu_s"] = (time.process_time() - c0) / steps
    res["peak_rss_mib"] = peak_rss_mib()
    return res


def loss_path(
    size: int, batch: int, steps: int, warmup: int, stride: int = 8, dim: int = 32, queue_size: int = 128
) -> dict:
    """CPU seconds of the pixel loss and its backward, ours vs the full-resolution formulation."""
    import torch
    import torch.nn.functional as F

    from maskcontrast.embeddings import mask_prototypes
    from maskcontrast.losses import (
        enet_class_weights,
        maskcontrast_pixel_loss,
        pixel_prototype_logits,
        query_pixels,
    )

    g = torch.Generator().manual_seed(0)
    h = size // stride
    q_small = torch.randn(batch, dim, h, h, generator=g).contiguous(memory_format=torch.channels_last)
    k_small = torch.randn(batch, dim, h, h, generator=g).contiguous(memory_format=torch.channels_last)
    q_small.requires_grad_(True)
    queue = F.normalize(torch.randn(queue_size, dim, generator=g), dim=1)
    mask = torch.zeros(batch, size, size, dtype=torch.long)  # the objects of the full-step benchmark
    mask[:, size // 4 : 3 * size // 4, size // 5 : 4 * size // 5] = 1

    def ours() -> float:
        with torch.no_grad():
            protos, owner = mask_prototypes(k_small, mask)
        loss, _, _ = maskcontrast_pixel_loss(q_small, mask, protos, owner, queue, 0.5)
        loss.backward()
        return loss.item()

    def full_resolution() -> float:
        def up(x):
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

        with torch.no_grad():
            protos, owner = mask_prototypes(F.normalize(up(k_small), dim=1), mask)
        q_raw, labels = query_pixels(up(q_small), mask, owner)
        logits = pixel_prototype_logits(F.normalize(q_raw, dim=1), protos, queue, 0.5)
        loss = F.cross_entropy(logits, labels, weight=enet_class_weights(labels, logits.shape[1]))
        loss.backward()
        return loss.item()

    res: dict = {
        "size": size,
        "batch": batch,
        "pixels": int((mask > 0).sum()),
        "keys": batch + queue_size,
        "threads": torch.get_num_threads(),
    }
    for name, fn in (("full_resolution", full_resolution), ("ours", ours)):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(steps):
            c0 = time.process_time()
            res[f"{name}_loss"] = fn()
            times.append(time.process_time() - c0)
            q_small.grad = None
        res[f"{name}_cpu_s"] = statistics.median(times)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="resnet50:8,resnet50:16,resnet18:8", help="arch:output_stride list")
    p.add_argument(
        "--precisions",
        default="fp32,fp32_cl,bf16_cl",
        help="fp32, fp32_cl (channels_last) and/or bf16_cl (bf16 autocast + channels_last)",
    )
    p.add_argument("--size", type=int, default=224, help="view size in pixels")
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    p.add_argument("--loss-path", action="store_true", help="time only the pixel loss: ours vs full resolution")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--tiny",
        action="store_true",
        help="R18-OS8, 32 px, batch 2, 1 step, fp32 and fp32_cl: a check of the script, not a measurement",
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.configs, args.size, args.batch, args.steps, args.warmup = "resnet18:8", 32, 2, 1, 0
        if args.precisions == p.get_default("precisions"):
            args.precisions = "fp32,fp32_cl"
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.loss_path:
        r = loss_path(args.size, args.batch, args.steps, args.warmup)
        print(
            f"\npixel loss + backward, batch {r['batch']}, {r['size']} px, {r['pixels']:,} object pixels x "
            f"{r['keys']} keys, {r['threads']} threads, median of {args.steps} after {args.warmup} warm-up\n"
        )
        print("| formulation | CPU s | loss |\n|---|---:|---:|")
        print(
            f"| full-resolution maps + logits matrix | {r['full_resolution_cpu_s']:.3f} | {r['full_resolution_loss']:.6f} |"
        )
        print(f"| ours (object pixels only, chunked CE) | {r['ours_cpu_s']:.3f} | {r['ours_loss']:.6f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(r, f, indent=1)
        return 0
    if args.one:
        arch, os_, prec = args.one.split(":")
        print(json.dumps(run_one(arch, int(os_), prec, args.size, args.batch, args.steps, args.warmup, args.threads)))
        return 0
    rows = []
    for conf in args.configs.split(","):
        for prec in args.precisions.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{conf}:{prec}",
                "--size",
                str(args.size),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{conf} {prec} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"done {conf} {prec}", file=sys.stderr, flush=True)
    print(
        f"\nbatch {args.batch}, {args.size} px, medians of {args.steps} alternating bare/full steps after "
        f"{args.warmup} warm-up\n"
    )
    print(
        "| backbone | precision | full step wall s | floor wall s | full / floor (wall, median of pairs) "
        "| full step img/s (wall) | full step CPU s | bare fwd+bwd CPU s | ratio full/bare (CPU, median of pairs) "
        "| key fwd CPU s | augment CPU s | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["ratio_per_pair"]
        print(
            f"| {r['arch']}-OS{r['os']} | {r['precision']} | {r['full_wall_s']:.3f} | {r['floor_wall_s']:.3f} | "
            f"{r['full_over_floor_wall']:.3f} | {r['batch'] / r['full_wall_s']:.2f} | {r['full_cpu_s']:.2f} "
            f"| {r['bare_cpu_s']:.2f} | {ratio:.2f} | {r['key_forward_cpu_s']:.2f} | "
            f"{r['parts_cpu_s'].get('augment', 0):.3f} | {r['peak_rss_mib']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

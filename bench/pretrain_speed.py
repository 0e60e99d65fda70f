"""Speed of a MaskContrast training step: images/s, peak RSS, and the full step / bare query ratio.

For every (backbone, precision) it times, in a fresh subprocess (so peak RSS is per config):

* **bare**: forward + backward of the query network alone (loss = sum of its outputs);
* **full**: a trainer step: device-side view augmentation of a loaded batch, momentum update,
  query forward, key forward (no grad), prototypes, logits against batch + memory bank, ENet
  cross-entropy + balanced BCE, backward, SGD step, enqueue.

Data loading is excluded (it runs in DataLoader workers, overlapped with the step). Prints a
Markdown table; results are preliminary when the machine is shared.

    python bench/pretrain_speed.py                       # R50-OS8, R50-OS16, R18-OS8; 224 px; batch 8
    python bench/pretrain_speed.py --configs resnet18:8 --steps 5 --precisions fp32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def run_one(arch: str, os_: int, precision: str, size: int, batch: int, steps: int, warmup: int, threads: int) -> dict:
    from contextlib import nullcontext

    import numpy as np
    import torch

    from maskcontrast.config import AugmentConfig, MaskContrastObjectiveConfig, ModelConfig, load_config
    from maskcontrast.data.views import ViewSampler, sample_crop_box
    from maskcontrast.momentum import update_momentum
    from maskcontrast.objectives import MaskContrastObjective
    from maskcontrast.utils import peak_rss_mib

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    bf16 = precision == "bf16_cl"
    mcfg = load_config(ModelConfig, overrides=[f"backbone.arch={arch}", f"backbone.output_stride={os_}"])
    obj = MaskContrastObjective(mcfg, MaskContrastObjectiveConfig(queue_size=128))
    if bf16:
        obj = obj.to(memory_format=torch.channels_last)
    obj.train()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.004, momentum=0.9, weight_decay=1e-4)
    sampler = ViewSampler(AugmentConfig(), size)
    rng = np.random.default_rng(0)
    load = int(1.5 * size)
    mask = np.zeros((batch, load, load), np.uint8)
    mask[:, load // 4 : 3 * load // 4, load // 5 : 4 * load // 5] = 1
    batch_in = {
        "image": torch.from_numpy(rng.integers(0, 255, (batch, load, load, 3), dtype=np.uint8)),
        "mask": torch.from_numpy(mask),
        "boxes": torch.tensor(
            [[[*sample_crop_box(rng, load, load), 0.0] for _ in range(2)] for _ in range(batch)], dtype=torch.float32
        ),
    }
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def prep(x):
        return x.contiguous(memory_format=torch.channels_last) if bf16 else x

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

    x = prep(sampler(batch_in).query)
    res = {
        "arch": arch,
        "os": os_,
        "precision": precision,
        "size": size,
        "batch": batch,
        "threads": torch.get_num_threads(),
    }
    for name, fn in (("bare", lambda: bare_step(x)), ("full", full_step)):
        for _ in range(warmup):
            fn()
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            fn() if name == "bare" else full_step(timed=True)
        res[f"{name}_wall_s"] = (time.perf_counter() - w0) / steps
        res[f"{name}_cpu_s"] = (time.process_time() - c0) / steps
    res["parts_cpu_s"] = {k: v / steps for k, v in parts.items()}
    # the key forward alone (no grad), for the breakdown
    with torch.no_grad(), ctx():
        c0 = time.process_time()
        for _ in range(steps):
            obj.key(x, upsample=False)
        res["key_forward_cpu_s"] = (time.process_time() - c0) / steps
    res["peak_rss_mib"] = peak_rss_mib()
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="resnet50:8,resnet50:16,resnet18:8", help="arch:output_stride list")
    p.add_argument("--precisions", default="fp32,bf16_cl", help="fp32 and/or bf16_cl (bf16 autocast + channels_last)")
    p.add_argument("--size", type=int, default=224, help="view size in pixels")
    p.add_argument("--batch", type=int, default=8, help="batch size")
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        arch, os_, prec = args.one.split(":")
        print(json.dumps(run_one(arch, int(os_), prec, args.size, args.batch, args.steps, args.warmup, args.threads)))
        return 0
    rows = []
    for conf in args.configs.split(","):
        for prec in args.precisions.split(","):
            cmd = [sys.executable, __file__, "--one", f"{conf}:{prec}", "--size", str(args.size), "--batch",
                   str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
                   str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{conf} {prec} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"done {conf} {prec}", file=sys.stderr, flush=True)
    print(f"\nbatch {args.batch}, {args.size} px, {args.steps} timed steps after {args.warmup} warm-up\n")
    print(
        "| backbone | precision | full step img/s (wall) | full step CPU s | bare fwd+bwd CPU s | ratio full/bare (CPU) "
        "| key fwd CPU s | augment CPU s | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = r["full_cpu_s"] / r["bare_cpu_s"]
        print(
            f"| {r['arch']}-OS{r['os']} | {r['precision']} | {r['batch'] / r['full_wall_s']:.2f} | {r['full_cpu_s']:.2f} "
            f"| {r['bare_cpu_s']:.2f} | {ratio:.2f} | {r['key_forward_cpu_s']:.2f} | "
            f"{r['parts_cpu_s'].get('augment', 0):.3f} | {r['peak_rss_mib']:.0f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed and memory of a MaskContrast training step on ViT-S/16, ViT-S/8 and ResNet-50 (OS8).

Each backbone lives in its own worker process (so peak RSS is per backbone); the driver makes the
workers take one full training step in turn (round robin), so a drift in the machine's speed hits
every backbone alike. A step is what the trainer does per batch, data loading excepted: view
augmentation of a loaded batch, momentum update, query + key forward, prototypes, the pixel loss
and the saliency BCE, backward, SGD. Prints a Markdown table of images/s (wall, median over the
timed steps) and peak RSS. Only meaningful on a quiet machine.

    python bench/vit_speed.py                        # vit_small_patch16_224, vit_small_patch8_224, resnet50:8; 224 px
    python bench/vit_speed.py --steps 5 --batch 4 --threads 2
    python bench/vit_speed.py --tiny                 # seconds: tiny ViTs, ResNet-18, 32 px (checks the script)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT = "vit_small_patch16_224,vit_small_patch8_224,resnet50:8"
TINY = "vit_small_patch16_224,vit_small_patch8_224,resnet18:8"


def model_overrides(conf: str, tiny: bool) -> list[str]:
    """``arch`` or ``arch:output_stride`` -> ModelConfig overrides (tiny: 64-wide 2-block ViTs)."""
    arch, _, os_ = conf.partition(":")
    out = [f"backbone.arch={arch}"]
    if os_:
        out.append(f"backbone.output_stride={os_}")
    if arch.startswith("vit") and tiny:
        out += ["backbone.vit.dim=64", "backbone.vit.depth=2", "backbone.vit.img_size=32"]
    return out


def worker(conf: str, size: int, batch: int, threads: int, tiny: bool) -> None:
    """Build the objective, then answer ``step`` lines with ``{"wall_s", "cpu_s"}`` and ``end`` with
    ``{"peak_rss_mib", "params"}`` (one JSON line each on stdout)."""
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
    obj = MaskContrastObjective(
        load_config(ModelConfig, overrides=model_overrides(conf, tiny)), MaskContrastObjectiveConfig(queue_size=128)
    )
    obj.train()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.004, momentum=0.9, weight_decay=1e-4)
    sampler = ViewSampler(AugmentConfig(), size)
    from pretrain_speed import synthetic_batch  # bench/: the same synthetic batch as the step benchmark

    batch_in = synthetic_batch(batch, size)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            w0, c0 = time.perf_counter(), time.process_time()
            views = sampler(batch_in)
            update_momentum(obj.query, obj.key, 0.999)
            loss, _ = obj(views)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            print(json.dumps({"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}), flush=True)
        elif cmd == "end":
            params = sum(p.numel() for p in obj.query.parameters())
            print(json.dumps({"peak_rss_mib": peak_rss_mib(), "params": params}), flush=True)
            return


def _ask(proc: subprocess.Popen, cmd: str | None) -> dict:
    if cmd is not None:
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"worker exited (code {proc.wait()}): {proc.stderr.read()[-2000:]}")
    return json.loads(line)


def run(configs: list[str], size: int, batch: int, steps: int, warmup: int, threads: int, tiny: bool) -> list[dict]:
    """One worker per config, steps interleaved round robin; returns one result dict per config."""
    root = str(Path(__file__).resolve().parents[1])  # the workers import this checkout's maskcontrast
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = []
    for conf in configs:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            conf,
            "--size",
            str(size),
            "--batch",
            str(batch),
            "--threads",
            str(threads),
            *(["--tiny"] if tiny else []),
        ]
        procs.append(
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
        )
    try:
        for p in procs:
            _ask(p, None)  # built
        times: list[list[dict]] = [[] for _ in procs]
        for i in range(warmup + steps):
            for j, p in enumerate(procs):
                t = _ask(p, "step")
                if i >= warmup:
                    times[j].append(t)
        results = []
        for conf, p, ts in zip(configs, procs, times):
            end = _ask(p, "end")
            wall = statistics.median(t["wall_s"] for t in ts)
            results.append(
                {
                    "config": conf,
                    "size": size,
                    "batch": batch,
                    "steps": steps,
                    "wall_s": wall,
                    "cpu_s": statistics.median(t["cpu_s"] for t in ts),
                    "images_per_s": batch / wall,
                    **end,
                }
            )
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def table(rows: list[dict]) -> str:
    lines = [
        "| backbone | params (M) | step wall s | step CPU s | images/s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.1f} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | "
            f"{r['images_per_s']:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=None, help=f"comma-separated arch or arch:output_stride (default {DEFAULT})")
    p.add_argument("--size", type=int, default=224, help="view size in pixels (default 224)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per backbone (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0 = default)")
    p.add_argument(
        "--tiny", action="store_true", help="tiny ViTs and ResNet-18 at 32 px, batch 2, 1 step: checks the script"
    )
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.batch, args.steps, args.warmup = 32, 2, 1, 0
    configs = (args.configs or (TINY if args.tiny else DEFAULT)).split(",")
    if args.worker:
        worker(args.worker, args.size, args.batch, args.threads, args.tiny)
        return []
    rows = run(configs, args.size, args.batch, args.steps, args.warmup, args.threads, args.tiny)
    print(
        f"\nMaskContrast training step, batch {args.batch}, {args.size} px, median of {args.steps} interleaved "
        f"steps after {args.warmup} warm-up\n"
    )
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

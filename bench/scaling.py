"""Scaling study of the CPU preset: (b) MoCo v2 only and (d) MaskContrast from (b) at several budgets.

Each budget F is a full run of ``bench/quality.py --preset cpu --budget F --models b d`` (its own
schedule over F x the preset's steps, not a snapshot of the longer run), evaluated with the
preset's K-means (prototype protocol, fused masks) and linear probe on MSRC-v2 and Pet. The masks
are those of the full preset run (``--preset-out``), whose own (b) and (d) give the F = 1 point.
Cost is the CPU time of the training stages (user + system, every thread), so (d) at F includes
(b) at F, which it starts from. Writes ``scaling.json``, ``scaling.md`` and ``scaling.png``
(mIoU against CPU-hours) into ``--out``; every run resumes.

    MASKCONTRAST_DATA=../shared/data python bench/scaling.py --preset-out runs/preset --out runs/scaling
    python bench/scaling.py --preset-out runs/preset --out runs/scaling --report-only
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("bench.scaling")

HERE = Path(__file__).resolve().parent
PROTOCOLS = {"kmeans": ("kmeans_prototype_folder.json", "miou_mean"), "linear": ("linear/results.json", "miou")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset-out", required=True, help="folder of the full `bench/quality.py --preset cpu` run")
    p.add_argument("--out", default="runs/scaling", help="output folder (one sub-folder per budget; resumable)")
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[0.125, 0.25, 0.5],
        help="fractions of the preset's steps to train at (1.0 is the preset run itself)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per training process (0: default)")
    p.add_argument("--report-only", action="store_true", help="only aggregate finished results")
    args = p.parse_args(argv)
    if any(not 0 < b < 1 for b in args.budgets):
        p.error(f"--budgets must lie in (0, 1); the full budget is --preset-out's run, got {args.budgets}")
    return args


def run_dir(out: Path, budget: float) -> Path:
    return out / f"budget_{budget:g}"


def collect(folder: Path, budget: float) -> dict | None:
    """The (b) and (d) results and training CPU time of one finished quality run, or None."""
    stages_file = folder / "stages.json"
    if not stages_file.is_file():
        return None
    stages = json.loads(stages_file.read_text())
    cpu = {
        name: stages[stage].get("cpu_seconds")
        for name, stage in (("b", "train:moco"), ("d", "train:d_seed0"))
        if stage in stages
    }
    wall = {
        name: stages[stage]["seconds"]
        for name, stage in (("b", "train:moco"), ("d", "train:d_seed0"))
        if stage in stages
    }
    if len(cpu) < 2 or None in cpu.values():
        return None
    row: dict = {
        "budget": budget,
        "cpu_hours": {"b": cpu["b"] / 3600, "d": (cpu["b"] + cpu["d"]) / 3600},
        "wall_minutes": {"b": wall["b"] / 60, "d": (wall["b"] + wall["d"]) / 60},
        "miou": {},
    }
    for model, sub in (("b", "b"), ("d", "d_seed0")):
        for ev in ("msrc", "pet"):
            for proto, (fname, key) in PROTOCOLS.items():
                f = folder / "eval" / sub / ev / fname
                if f.is_file():
                    row["miou"][f"{model}/{ev}/{proto}"] = 100 * json.loads(f.read_text())[key]
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, ev in zip(axes, ("msrc", "pet")):
        for model, colour in (("b", "tab:blue"), ("d", "tab:red")):
            for proto, style in (("kmeans", "-o"), ("linear", "--s")):
                pts = [
                    (r["cpu_hours"][model], r["miou"][f"{model}/{ev}/{proto}"])
                    for r in rows
                    if f"{model}/{ev}/{proto}" in r["miou"]
                ]
                if pts:
                    ax.plot(*zip(*pts), style, color=colour, label=f"({model}) {proto}")
        ax.set_xscale("log", base=2)
        ax.set_title({"msrc": "MSRC-v2 (21 classes)", "pet": "Oxford-IIIT Pet (bg, cat, dog)"}[ev])
        ax.set_xlabel("training CPU-hours (2-core VM; (d) includes its (b))")
        ax.set_ylabel("mIoU %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(args: argparse.Namespace) -> list[dict]:
    out = Path(args.out)
    folders = [(b, run_dir(out, b)) for b in sorted(args.budgets)] + [(1.0, Path(args.preset_out))]
    rows = [r for b, f in folders if (r := collect(f, b))]
    keys = [f"{m}/{ev}/{p}" for m in "bd" for ev in ("msrc", "pet") for p in PROTOCOLS]
    lines = [
        "| budget | model | training CPU-h | training wall min | MSRC K-means | MSRC linear | Pet K-means | Pet linear |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for m in "bd":
            cells = [f"{r['miou'][k]:.1f}" if k in r["miou"] else "n/a" for k in keys if k.startswith(m + "/")]
            lines.append(
                f"| {r['budget']:g} | ({m}) | {r['cpu_hours'][m]:.2f} | {r['wall_minutes'][m]:.1f} | "
                + " | ".join(cells)
                + " |"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "scaling.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if rows:
        plot(rows, out / "scaling.png")
    print("\n".join(lines))
    print(f"wrote {out / 'scaling.md'}, scaling.json and scaling.png")
    return rows


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    args = parse_args(argv)
    masks = Path(args.preset_out).resolve() / "masks"
    if not args.report_only:
        if not masks.is_dir():
            raise SystemExit(
                f"bench/scaling.py: no masks in {masks}; run bench/quality.py --preset cpu "
                f"--out {args.preset_out} --until masks first"
            )
        for b in sorted(args.budgets):
            cmd = [
                sys.executable,
                str(HERE / "quality.py"),
                "--preset",
                "cpu",
                "--budget",
                f"{b:g}",
                "--models",
                "b",
                "d",
                "--masks",
                str(masks),
                "--out",
                str(run_dir(Path(args.out), b)),
                "--threads",
                str(args.threads),
            ]
            log.info("budget %g: %s", b, " ".join(cmd))
            subprocess.run(cmd, check=True)
    report(args)


if __name__ == "__main__":
    main()

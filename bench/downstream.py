"""Downstream uses of the quality benchmark's models: segment by example and video propagation.

For every model ``DIR/models/{a,b,c,d}.pt`` (the models of bench/quality.py: (a) random init and
(b) MoCo v2, backbone-only files; (c), (d) maskcontrast checkpoints; any file that loads with
``maskcontrast.load_model`` works) this runs:

* ``eval.oneshot`` with 1 and 5 shots on Oxford-IIIT Pet (classes cat and dog, ``target=species``)
  and on MSRC-v2 (21-class protocol): mIoU and FB-IoU, mean ± std over the episodes;
* ``eval.propagation`` on DAVIS-2016 (the shared copy keeps every 10th frame): J, F and J&F;

and records the wall time per image (one-shot: decoding + network + prototypes, pass 1) and per
frame (propagation: decoding + network + propagation). ``DIR/models/eval.json`` may hold
``{"size": N, ...}`` (only ``size`` is read: the shorter image side the network sees, as the quality benchmark's evaluations
use; scores are always computed at label resolution). Every evaluation is a ``python -m`` command
run through :class:`maskcontrast.stages.StageRunner`: a re-run skips finished ones.
Results: ``OUT/downstream.md`` (tables) and ``OUT/downstream.json``.

    MASKCONTRAST_DATA=../shared/data python bench/downstream.py --dir runs/quality_preset
    python bench/downstream.py --dir runs/quality_preset --report-only      # re-write the tables
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from maskcontrast.data.paths import data_root  # noqa: E402
from maskcontrast.stages import StageRunner  # noqa: E402
from maskcontrast.utils import setup_logging  # noqa: E402

log = logging.getLogger("bench.downstream")

MODELS = {
    "a": "(a) random init",
    "b": "(b) MoCo v2 only",
    "c": "(c) MaskContrast from random",
    "d": "(d) MaskContrast from MoCo",
}
#: few-shot sets: name -> (dataset, folder under $MASKCONTRAST_DATA, reader options)
FEWSHOT_SETS = {
    "pet": ("pet", "oxford_iiit_pet", ["target=species"]),
    "msrc": ("msrc", "msrc_v2", []),
}
DAVIS = ("davis2016", "davis2016")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dir", required=True, help="folder holding models/{a,b,c,d}.pt (and models/eval.json)")
    p.add_argument("--out", default=None, help="output folder (default: DIR/downstream; resumable)")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="model names (files models/<name>.pt)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", nargs="+", default=[*FEWSHOT_SETS, "davis"], choices=[*FEWSHOT_SETS, "davis"])
    p.add_argument("--size", type=int, default=None, help="shorter image side (default: models/eval.json, else native)")
    p.add_argument(
        "--davis-size",
        type=int,
        default=None,
        help="shorter frame side for DAVIS (default: --size; 480 = the native 480p frames, the usual protocol)",
    )
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: CUDA when present)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding workers per evaluation")
    p.add_argument("--limit", type=int, default=None, help="only the first N images/frames of every set (smoke runs)")
    p.add_argument("--report-only", action="store_true", help="only aggregate finished results")
    return p.parse_args(argv)


def read_eval_settings(models_dir: Path) -> dict[str, Any]:
    """``models/eval.json``, as ``bench/quality.py`` writes it: ``{"size": N, ...}`` (optional
    file). Only ``size`` is used here; the other keys describe the quality benchmark's own
    evaluations (K-means seeds, linear-probe config)."""
    path = models_dir / "eval.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SystemExit(f'{path}: not valid JSON ({err}); expected {{"size": N}}') from err
    if not isinstance(data, dict):
        raise SystemExit(f'{path}: expected a JSON object {{"size": N, ...}}, got {type(data).__name__}')
    size = data.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise SystemExit(f"{path}: size must be a positive integer (the shorter image side), got {size!r}")
    return {} if size is None else {"size": size}


class Downstream:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.argv = argv
        self.dir = Path(args.dir).expanduser().resolve()
        self.models_dir = self.dir / "models"
        self.out = Path(args.out).expanduser().resolve() if args.out else self.dir / "downstream"
        self.data = data_root()
        if self.data is None and not args.report_only:
            raise SystemExit("bench/downstream.py: set MASKCONTRAST_DATA to the shared data folder")
        settings = read_eval_settings(self.models_dir)
        self.size = args.size if args.size is not None else settings.get("size")
        self.davis_size = args.davis_size if args.davis_size is not None else self.size
        self.out.mkdir(parents=True, exist_ok=True)
        self.runner = StageRunner(self.out / "stages.json")

    def checkpoints(self) -> dict[str, Path]:
        found = {}
        for name in self.args.models:
            path = self.models_dir / f"{name}.pt"
            if path.is_file():
                found[name] = path
            else:
                log.warning("%s: not found; model (%s) is left out", path, name)
        if not found:
            raise SystemExit(f"no model file found in {self.models_dir} (expected {', '.join(self.args.models)} .pt)")
        return found

    def result_file(self, model: str, name: str) -> Path:
        return self.out / "eval" / model / f"{name}.json"

    def common(self, ckpt: Path, size: int | None) -> list[str]:
        a = self.args
        out = ["--checkpoint", str(ckpt), "--workers", str(a.workers), "--no-progress"]
        out += ["--size", str(size)] if size else []
        out += ["--device", a.device] if a.device else []
        out += ["--limit", str(a.limit)] if a.limit else []
        return out

    def run(self) -> None:
        a = self.args
        assert self.data is not None
        for model, ckpt in self.checkpoints().items():
            for ev in a.sets:
                if ev == "davis":
                    js = self.result_file(model, "davis")
                    self.runner.run(
                        f"{model}:davis",
                        [
                            "eval.propagation",
                            *self.common(ckpt, self.davis_size),
                            "--dataset",
                            DAVIS[0],
                            "--root",
                            str(self.data / DAVIS[1]),
                            "--json",
                            str(js),
                        ],
                        done=js,
                    )
                    continue
                dataset, folder, opts = FEWSHOT_SETS[ev]
                for k in a.shots:
                    js = self.result_file(model, f"{ev}_{k}shot")
                    self.runner.run(
                        f"{model}:{ev}:{k}shot",
                        [
                            "eval.oneshot",
                            *self.common(ckpt, self.size),
                            "--dataset",
                            dataset,
                            "--root",
                            str(self.data / folder),
                            *(x for o in opts for x in ("--dataset-arg", o)),
                            "--shots",
                            str(k),
                            "--episodes",
                            str(a.episodes),
                            "--seed",
                            str(a.seed),
                            "--rare",
                            "skip",
                            "--json",
                            str(js),
                        ],
                        done=js,
                    )

    # -- report --------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        a = self.args

        def load(path: Path) -> dict[str, Any] | None:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

        def pct(r: dict[str, Any] | None, key: str, std: str | None = None) -> str:
            if r is None or r.get(key) is None:
                return "n/a"
            return f"{100 * r[key]:.1f}" + (f" ± {100 * r[std]:.1f}" if std and r.get(std) is not None else "")

        def ms(r: dict[str, Any] | None, key: str) -> str:
            return "n/a" if r is None else f"{r['timing'][key]:.0f}"

        results: dict[str, Any] = {
            "models": {},
            "size": self.size,
            "davis_size": self.davis_size,
            "stages": self.runner.finished,
        }
        fs_sets = [s for s in a.sets if s in FEWSHOT_SETS]
        head = ["model"] + [f"{s} {k}-shot mIoU (FB-IoU)" for s in fs_sets for k in a.shots]
        head += ["DAVIS J&F (J / F)"] if "davis" in a.sets else []
        head += [f"ms/img {s}" for s in fs_sets] + (["ms/frame DAVIS"] if "davis" in a.sets else [])
        rows, notes = [], set()
        for model in a.models:
            entry: dict[str, Any] = {}
            cells = [MODELS.get(model, model)]
            for s in fs_sets:
                for k in a.shots:
                    r = load(self.result_file(model, f"{s}_{k}shot"))
                    entry[f"{s}_{k}shot"] = r and {
                        key: r.get(key)
                        for key in (
                            "miou",
                            "miou_std",
                            "fb_iou",
                            "fb_iou_std",
                            "per_class",
                            "n_queries",
                            "skipped_classes",
                            "timing",
                            "n_images",
                            "layout",
                        )
                    }
                    if r and r.get("skipped_classes"):
                        notes.add(
                            f"{s} {k}-shot left out {', '.join(r['skipped_classes'])} (fewer than {k + 1} images)"
                        )
                    cells.append(f"{pct(r, 'miou', 'miou_std')} ({pct(r, 'fb_iou')})")
            davis = load(self.result_file(model, "davis")) if "davis" in a.sets else None
            if "davis" in a.sets:
                entry["davis"] = davis and {
                    key: davis.get(key)
                    for key in (
                        "j_mean",
                        "f_mean",
                        "jf_mean",
                        "j_recall",
                        "n_frames",
                        "n_scored",
                        "frame_step",
                        "frame_note",
                        "timing",
                        "per_sequence",
                        "layout",
                    )
                }
                cells.append(f"{pct(davis, 'jf_mean')} ({pct(davis, 'j_mean')} / {pct(davis, 'f_mean')})")
                if davis:
                    notes.add(f"DAVIS: {davis['frame_note']}")
            for s in fs_sets:
                cells.append(ms(load(self.result_file(model, f"{s}_{a.shots[0]}shot")), "ms_per_image"))
            if "davis" in a.sets:
                cells.append(ms(davis, "ms_per_frame"))
            results["models"][model] = entry
            rows.append("| " + " | ".join(cells) + " |")
        device = "cpu"
        try:
            import torch

            if torch.cuda.is_available() and a.device != "cpu":
                device = torch.cuda.get_device_name(0)
        except Exception:  # pragma: no cover - torch is a dependency
            pass
        header = [
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, device {device}, {platform.platform()}; "
            f"date {time.strftime('%Y-%m-%d %H:%M')}; size {self.size or 'native'} (DAVIS {self.davis_size or 'native'}); "
            f"command: `python bench/downstream.py {' '.join(self.argv)}`",
            "",
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows, ""]
        lines += [f"* {n}" for n in sorted(notes)] + ([""] if notes else [])
        lines += [
            f"mIoU / FB-IoU: % over the classes, mean ± std over {a.episodes} episodes (seed {a.seed}); "
            "J, F: % (DAVIS definitions), mean over sequences; ms: wall time per image (one-shot pass 1: "
            "decoding, network, prototypes) or per frame (propagation), from the result JSONs.",
            "",
        ]
        stage_rows = [f"| {n} | {s['seconds']:.0f} | `{s['command']}` |" for n, s in self.runner.finished.items()]
        lines += ["| stage | seconds | command |", "|---|---:|---|", *stage_rows, ""]
        (self.out / "downstream.md").write_text("\n".join(header + lines), encoding="utf-8")
        (self.out / "downstream.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        print("\n".join(header + lines))
        print(f"wrote {self.out / 'downstream.md'} and {self.out / 'downstream.json'}")
        return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup_logging()
    args = parse_args(argv)
    bench = Downstream(args, list(argv if argv is not None else sys.argv[1:]))
    if not args.report_only:
        bench.run()
    return bench.report()


if __name__ == "__main__":
    main()

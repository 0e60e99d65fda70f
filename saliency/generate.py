"""Generate object masks for a folder of images (the input of MaskContrast pretraining).

Output layout (what ``maskcontrast.data`` reads with ``masks=OUT``)::

    OUT/<id>.png         0 = background, 255 = object (or 1..n object ids with --multi-object)
    OUT/skipped.txt      "<id>\\t<reason>" per image without a mask (too small, unreadable, error)
    OUT/flagged.txt      "<id>\\t<agreement>" per image where the fused methods disagree (fused only)
    OUT/saliency.json    the manifest: method, parameters, version, counts
    SOFT/<id>.png        optional (--soft-out SOFT): the soft map as 8-bit grey, for saliency.evaluate

``<id>`` is the image path relative to ``--images`` without its extension (so nested folders are
kept), or the dataset's sample id with ``--dataset``. The job is resumable: an image whose mask
(and soft map, when asked for) exists, or that is listed in ``skipped.txt`` as too small, is not
redone; unreadable images and errors are retried. A non-empty ``--out`` written by another
method or with other parameters is refused unless ``--overwrite`` is given.

Usage::

    python -m saliency.generate --images DIR --out DIR --method fused --workers 2
    python -m saliency.generate --dataset weizmann --root $MASKCONTRAST_DATA/weizmann_horse \\
        --out /tmp/masks --method refined --checkpoint /tmp/refiner/refiner.pt --soft-out /tmp/soft

Python API::

    from saliency.generate import generate
    counts = generate(images="photos/", out="masks/", method="fused", workers=2)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from tqdm import tqdm

import maskcontrast
from maskcontrast.config_checks import ConfigError
from maskcontrast.config_loading import add_config_arguments, load_config
from maskcontrast.data import DataError, build_dataset, write_mask
from maskcontrast.data.base import SegmentationDataset
from maskcontrast.data.io import SKIPPED_LIST, read_skipped
from maskcontrast.preemption import Preempted, requested, section
from maskcontrast.runs import RunFolderError, RunLayout, claim_run_folder
from maskcontrast.utils import atomic_write_bytes, setup_logging
from saliency.common import pool_map
from saliency.fusion import FusionConfig
from saliency.methods import METHODS, build_estimator, estimator_params
from saliency.postprocess import postprocess

__all__ = ["generate", "OutputConflict", "MANIFEST", "main"]

log = logging.getLogger("saliency.generate")

MANIFEST = "saliency.json"
FLAGGED = "flagged.txt"
FORMAT = "maskcontrast-saliency-masks"
FORMAT_VERSION = 1
_RETRY_PREFIXES = ("unreadable", "error")


#: ``--out`` holds outputs that this run must not silently overwrite (the run layer's error)
OutputConflict = RunFolderError


# ----------------------------------------------------------------------------------------------
# Output folder bookkeeping
# ----------------------------------------------------------------------------------------------


def _append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _manifest(method: str, params: dict, multi_object: bool, rule: dict, source: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "params": params,
        "multi_object": multi_object,
        "rule": rule,
        "source": source,
        "maskcontrast_version": maskcontrast.__version__,
    }


#: what saliency.generate writes in ``--out`` besides the masks (its identity is the manifest)
RUN_LAYOUT = RunLayout(
    "mask folder",
    owned=(MANIFEST, SKIPPED_LIST, FLAGGED),
    identity_file=MANIFEST,
    compare=("method", "params", "multi_object", "rule"),
    writer="saliency.generate",
)


def _prepare_out(out: Path, manifest: dict, overwrite: bool) -> bool:
    """Claim ``out`` for ``manifest`` (:func:`maskcontrast.runs.claim_run_folder`); returns True
    when earlier outputs of the same settings may be reused."""
    claim = claim_run_folder(out, RUN_LAYOUT, identity=manifest, resume=True, overwrite=overwrite)
    claim.prepare(write_identity=False)
    return claim.reuse


# ----------------------------------------------------------------------------------------------
# Work done per image (in a worker process or in-process)
# ----------------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(spec: dict[str, Any]) -> None:
    ds = build_dataset(spec["dataset"], spec["root"], spec["split"], **spec["dataset_kwargs"])
    fusion = FusionConfig(**spec["fusion"]) if spec["fusion"] is not None else None
    _STATE.update(
        spec=spec,
        dataset=ds,
        estimate=build_estimator(spec["method"], fusion, spec["checkpoint"], spec["device"]),
    )


def _work(sample_id: str) -> tuple[str, str, dict[str, Any]]:
    spec, ds = _STATE["spec"], _STATE["dataset"]
    assert isinstance(ds, SegmentationDataset)
    try:
        image = ds.read_sample_image(ds.files(sample_id), sample_id)
    except DataError as err:
        return sample_id, "unreadable", {"reason": f"unreadable: {err}"}
    try:
        est = _STATE["estimate"](image)
        if spec["soft_out"] is not None:
            soft8 = np.rint(np.clip(est.saliency, 0, 1) * 255).astype(np.uint8)
            write_mask(Path(spec["soft_out"]) / f"{sample_id}.png", soft8)
        result = postprocess(est.saliency, **spec["rule"], multi_object=spec["multi_object"])
        info: dict[str, Any] = {"flagged": est.flagged, "agreement": est.agreement}
        if result.mask is None:
            info["reason"] = f"small: {result.reason}"
            return sample_id, "skipped", info
        mask = result.mask if spec["multi_object"] else result.mask * np.uint8(255)
        write_mask(Path(spec["out"]) / f"{sample_id}.png", mask)
        info["n_objects"] = result.n_objects
        return sample_id, "written", info
    except Exception as err:  # keep going; the id is recorded and retried on the next run
        return sample_id, "error", {"reason": f"error: {type(err).__name__}: {err}"}


# ----------------------------------------------------------------------------------------------
# API
# ----------------------------------------------------------------------------------------------


def generate(
    out: str | Path,
    method: str = "fused",
    images: str | Path | None = None,
    dataset: str | None = None,
    root: str | Path | None = None,
    split: str | None = None,
    dataset_kwargs: dict[str, Any] | None = None,
    soft_out: str | Path | None = None,
    multi_object: bool = False,
    workers: int = 0,
    overwrite: bool = False,
    checkpoint: str | Path | None = None,
    fusion: FusionConfig | None = None,
    device: str | None = None,
    limit: int | None = None,
    threshold: float = 0.5,
    min_component: float = 0.01,
    min_coverage: float = 0.01,
    progress: bool = True,
) -> dict[str, int]:
    """Write masks (and optionally soft maps) for every image; see the module doc for the layout.

    Give either ``images`` (a folder, searched recursively) or ``dataset`` + ``root`` (a reader
    of ``maskcontrast.data``, e.g. ``weizmann``, whose images are read the way the reader does).

    Returns:
        counts: ``total``, ``done_before`` (reused), ``written``, ``skipped`` (too small),
        ``unreadable``, ``errors``, ``flagged``, ``remaining`` (left for a later run by ``limit``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {list(METHODS)}")
    if (images is None) == (dataset is None):
        raise ValueError("give either images=DIR or dataset=NAME with root=DIR")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if images is not None:
        dataset, root, split = "image_folder", images, None
    if root is None:
        raise ValueError(f"dataset '{dataset}' needs root=DIR")
    out = Path(out).expanduser()
    soft_dir = Path(soft_out).expanduser() if soft_out is not None else None
    if soft_dir is not None and soft_dir.resolve() == out.resolve():
        raise ValueError("--soft-out must differ from --out (soft maps would be read as masks)")
    if checkpoint is not None:
        checkpoint = str(Path(checkpoint).expanduser().resolve())
    params = estimator_params(method, fusion, checkpoint)
    rule = {"threshold": threshold, "min_component": min_component, "min_coverage": min_coverage}
    postprocess(np.zeros((4, 4), np.float32), **rule)  # validates the rule's values
    ds = build_dataset(dataset, root, split, **(dataset_kwargs or {}))
    source = f"{dataset}:{Path(root).expanduser().resolve()}" + (f":{split}" if split else "")
    manifest = _manifest(method, params, multi_object, rule, source)
    reuse = _prepare_out(out, manifest, overwrite)
    skipped_path, flagged_path = out / SKIPPED_LIST, out / FLAGGED
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())

    skipped_before = read_skipped(skipped_path, bare_ids=False) if reuse else {}
    todo, done_before = [], 0
    for sid in ds.ids:
        has_mask = (out / f"{sid}.png").is_file()
        small = skipped_before.get(sid, "").startswith("small")
        has_soft = soft_dir is None or (soft_dir / f"{sid}.png").is_file()
        if reuse and (has_mask or small) and has_soft:
            done_before += 1
        else:
            todo.append(sid)
    if reuse and done_before:
        log.info("resuming: %d of %d images are already done in %s", done_before, len(ds), out)
    remaining = 0
    if limit is not None and len(todo) > limit:
        remaining = len(todo) - limit
        todo = todo[:limit]
    counts = {
        "total": len(ds),
        "done_before": done_before,
        "written": 0,
        "skipped": 0,
        "unreadable": 0,
        "errors": 0,
        "flagged": 0,
        "remaining": remaining,
    }
    spec = {
        "method": method,
        "dataset": dataset,
        "root": str(root),
        "split": split,
        "dataset_kwargs": dict(dataset_kwargs or {}),
        "fusion": dataclasses.asdict(fusion) if fusion is not None else None,
        "checkpoint": checkpoint,
        "device": device,
        "soft_out": str(soft_dir) if soft_dir is not None else None,
        "out": str(out),
        "multi_object": multi_object,
        "rule": rule,
    }
    start = time.perf_counter()

    def handle(sid: str, status: str, info: dict[str, Any]) -> None:
        if status == "written":
            counts["written"] += 1
        elif status == "skipped":
            counts["skipped"] += 1
            _append_line(skipped_path, f"{sid}\t{info['reason']}")
        else:
            counts["unreadable" if status == "unreadable" else "errors"] += 1
            log.warning("%s: %s", sid, info["reason"])
            _append_line(skipped_path, f"{sid}\t{info['reason']}")
        if info.get("flagged"):
            counts["flagged"] += 1
            _append_line(flagged_path, f"{sid}\t{info['agreement']:.3f}")

    bar = tqdm(total=len(todo), desc=f"saliency {method}", unit="img", disable=not progress or not todo)
    with section("saliency.generate"):
        for result in pool_map(_work, todo, workers=workers, initializer=_init_worker, initargs=(spec,), ordered=False):
            handle(*result)
            bar.update()
            if requested() is not None:
                break  # every mask written so far is complete; the rest is done by the next run
        bar.close()
        seconds = time.perf_counter() - start
        manifest["counts"] = counts
        manifest["seconds_last_run"] = round(seconds, 2)
        atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())
        if (signum := requested()) is not None:
            done = sum(counts[k] for k in ("written", "skipped", "unreadable", "errors"))
            err = Preempted(
                signum,
                "saliency.generate",
                step=f"after {done} of {len(todo)} images",
                saved=out,
                hint="rerun the same command to continue",
            )
            log.warning("%s", err)
            raise err
    return counts


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m saliency.generate",
        description="Unsupervised object masks for a folder of images (no labels, no downloaded weights). "
        "Writes OUT/<id>.png (0 = background, 255 = object), OUT/skipped.txt and OUT/saliency.json. "
        "Resumable: rerun the same command to finish an interrupted job.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--images", help="folder of images (searched recursively; ids are relative paths without extension)"
    )
    src.add_argument("--dataset", help="a maskcontrast.data reader instead of a folder (e.g. weizmann, pet, davis2016)")
    p.add_argument("--root", help="dataset folder for --dataset")
    p.add_argument("--split", help="dataset split for --dataset (default: the reader's)")
    p.add_argument("--out", required=True, help="output folder for the masks")
    p.add_argument("--method", required=True, choices=METHODS, help="saliency estimator")
    p.add_argument("--checkpoint", help="refiner checkpoint for --method refined (from python -m saliency.refine)")
    p.add_argument("--soft-out", help="also write the soft maps (8-bit grey PNG) to this folder, for saliency.evaluate")
    p.add_argument("--multi-object", action="store_true", help="label connected components 1..n instead of 255")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: in this process)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of a different earlier run in --out")
    p.add_argument("--limit", type=int, help="process at most this many new images, then stop (rerun to continue)")
    p.add_argument("--device", help="torch device for --method refined (default: CUDA when present)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground where saliency >= this (paper: 0.5)")
    p.add_argument("--min-component", type=float, default=0.01, help="drop components below this image fraction")
    p.add_argument("--min-coverage", type=float, default=0.01, help="skip images whose mask covers less than this")
    add_config_arguments(p)
    p.epilog = (
        "The positional key=value overrides and --config (YAML) set the fusion parameters "
        "(saliency.fusion.FusionConfig: max_side, scales, compactness, priors, temperature, enhance_b, "
        "margin, vote, flag_agreement) and apply to --method fused only."
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.dataset is not None and args.root is None:
        log.error("--dataset needs --root DIR")
        return 2
    fusion = None
    try:
        if args.method == "fused":
            fusion = OmegaConf.to_object(load_config(FusionConfig, args.config, args.overrides))
        elif args.config or args.overrides:
            raise ConfigError("--config and key=value overrides set fusion parameters; use them with --method fused")
        counts = generate(
            out=args.out,
            method=args.method,
            images=args.images,
            dataset=args.dataset,
            root=args.root,
            split=args.split,
            soft_out=args.soft_out,
            multi_object=args.multi_object,
            workers=args.workers,
            overwrite=args.overwrite,
            checkpoint=args.checkpoint,
            fusion=fusion,  # type: ignore[arg-type]
            device=args.device,
            limit=args.limit,
            threshold=args.threshold,
            min_component=args.min_component,
            min_coverage=args.min_coverage,
        )
    except (OutputConflict, ConfigError, DataError, ValueError) as err:
        log.error("%s", err)
        return 2
    log.info(
        "%d images: %d written, %d too small, %d unreadable, %d errors, %d flagged, %d done before, %d left",
        counts["total"],
        counts["written"],
        counts["skipped"],
        counts["unreadable"],
        counts["errors"],
        counts["flagged"],
        counts["done_before"],
        counts["remaining"],
    )
    print(
        f"masks written to {Path(args.out).resolve()}"
        + (f", soft maps to {Path(args.soft_out).resolve()}" if args.soft_out else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

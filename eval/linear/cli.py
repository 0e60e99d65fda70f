"""``python -m eval.linear``: the argument parser, the run folder and the command.

Run folder (``--out``): ``run.json`` (the run's identity: the same one resumes, another is
refused), ``config.yaml``, the seeded split lists, the feature cache, ``state.pt`` (the
classifier, resumable), ``results.json`` (a finished run), pictures in ``vis/`` and TensorBoard
logs in ``tb/``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from eval.arguments import dataset_from_args, model_from_args
from eval.caches import checkpoint_fingerprint
from eval.linear.config import LinearConfig
from eval.linear.training import run_linear_probe
from eval.outputs import jsonable, write_json
from eval.splits import resolve_split
from maskcontrast.config_loading import add_config_arguments, config_to_dict, load_config, save_config
from maskcontrast.data import SegmentationDataset
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.runs import RunLayout, claim_run_folder
from maskcontrast.utils import peak_rss_mib, setup_logging

__all__ = ["build_parser", "RUN_LAYOUT", "main"]

log = logging.getLogger("eval.linear")


def build_parser() -> argparse.ArgumentParser:
    from eval.arguments import add_dataset_arguments, add_model_arguments

    p = argparse.ArgumentParser(
        prog="python -m eval.linear",
        description="Linear probe (1x1 conv) on frozen features; the default config is the paper's schedule. "
        "Settings: --config YAML and key=value overrides of eval.linear.LinearConfig (docs/EVAL.md).",
    )
    add_model_arguments(p, with_size=False)
    add_dataset_arguments(p, with_split=False)
    add_config_arguments(p)
    o = p.add_argument_group("outputs")
    o.add_argument(
        "--out",
        default=None,
        help="run folder: config, split lists, feature cache, classifier state, "
        "results.json, TensorBoard logs (default: runs/eval_linear/<dataset>-<checkpoint name>)",
    )
    o.add_argument("--json", default=None, help="also write the results here (default: <out>/results.json only)")
    o.add_argument("--vis", type=int, default=0, help="write N validation pictures to <out>/vis")
    o.add_argument("--overwrite", action="store_true", help="discard a finished or differently configured run in --out")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


#: what a linear-probe run writes in ``--out`` (its identity is ``run.json``; ``results.json`` marks it finished)
RUN_LAYOUT = RunLayout(
    "linear-probe run",
    owned=(
        "state.pt",
        "state.prev.pt",
        "state.damaged*.pt",
        "results.json",
        "run.json",
        "config.yaml",
        "split_train.txt",
        "split_val.txt",
        "features",
        "vis",
        "tb",
    ),
    state=("state.pt",),
    identity_file="run.json",
    finished="results.json",
    writer="eval.linear",
)


def _prepare_run_dir(out: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Claim ``out`` for this run (:func:`maskcontrast.runs.claim_run_folder`): the same identity
    resumes, another is refused, a finished run needs ``--overwrite``."""
    claim_run_folder(out, RUN_LAYOUT, identity=jsonable(identity), resume=True, overwrite=overwrite).prepare()


def _datasets(
    args: argparse.Namespace, cfg: LinearConfig, out: Path
) -> tuple[SegmentationDataset, SegmentationDataset]:
    d = cfg.data
    if d.train_split is None or d.train_split == d.val_split:
        full = dataset_from_args(args, split=d.train_split)
        train_ids, val_ids = resolve_split(full.ids, out, d.val_fraction, d.split_seed, d.split_dir)
        train_ds = dataset_from_args(args, split=d.train_split, ids=train_ids)
        val_ds = dataset_from_args(args, split=d.train_split, ids=val_ids)
    else:
        train_ds = dataset_from_args(args, split=d.train_split)
        val_ds = dataset_from_args(args, split=d.val_split)
    if d.train_limit is not None:
        train_ds.ids = train_ds.ids[: d.train_limit]
    if d.val_limit is not None:
        val_ds.ids = val_ds.ids[: d.val_limit]
    return train_ds, val_ds


def _identity(args: argparse.Namespace, cfg_node: Any) -> dict[str, Any]:
    """What makes two runs the same run (stored as ``run.json``): the checkpoint, the data and the config."""
    return {
        "checkpoint": checkpoint_fingerprint(args.checkpoint, getattr(args, "init_key", "teacher")),
        "output_stride": args.output_stride,
        "dataset": args.dataset,
        "root": args.root,
        "dataset_args": parse_key_values(args.dataset_arg),
        "ids": args.ids,
        "limit": args.limit,
        "config": config_to_dict(cfg_node),
    }


def _log_scores(result: dict[str, Any], n_val: int) -> None:
    log.info(
        "linear probe: mIoU %.2f %%, pixel accuracy %.2f %% (%d val images)",
        100 * result["miou"],
        100 * result["pixel_acc"],
        n_val,
    )
    if result.get("crf_scores"):
        log.info(
            "with dense CRF: mIoU %.2f %%, pixel accuracy %.2f %%",
            100 * result["crf_scores"]["miou"],
            100 * result["crf_scores"]["pixel_acc"],
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The command: claim ``--out``, train and score the probe, write ``results.json``; returns the results."""
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg_node = load_config(LinearConfig, args.config, args.overrides)
    cfg: LinearConfig = OmegaConf.to_object(cfg_node)  # type: ignore[assignment]
    out = Path(args.out) if args.out else Path("runs") / "eval_linear" / f"{args.dataset}-{Path(args.checkpoint).stem}"
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite to replace it")
    _prepare_run_dir(out, _identity(args, cfg_node), args.overwrite)
    save_config(cfg_node, out / "config.yaml")
    model = model_from_args(args)
    train_ds, val_ds = _datasets(args, cfg, out)
    log.info(
        "linear probe on %s features of %s: %d train / %d val images of %s, %d epochs%s",
        model.layout,
        args.checkpoint,
        len(train_ds),
        len(val_ds),
        args.dataset,
        cfg.epochs,
        " (cached features)" if cfg.cache_features else "",
    )
    result = run_linear_probe(
        model, train_ds, val_ds, cfg, out, vis_n=args.vis, workers=args.workers, progress=not args.no_progress
    )
    result = {
        **result,
        "dataset": args.dataset,
        "train_split": train_ds.split if cfg.data.train_split else f"seeded split of {train_ds.split}",
        "val_split": val_ds.split if cfg.data.train_split else f"seeded split of {val_ds.split}",
        "checkpoint": str(args.checkpoint),
        "layout": model.layout,
        "feature_dim": model.feature_dim,
        "config": config_to_dict(cfg_node),
        "units": "fractions in [0, 1]",
        "peak_rss_mib": peak_rss_mib(),
    }
    write_json(out / "results.json", result)
    if args.json:
        write_json(args.json, result)
    _log_scores(result, len(val_ds))
    print(f"wrote results to {out / 'results.json'}" + (f" and {args.json}" if args.json else ""))
    return result

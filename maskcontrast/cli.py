"""The command lines of the entry points: how they report bad input, and the shared command line
of the training entry points (``maskcontrast.pretrain``, ``maskcontrast.moco`` and the other objectives).

Bad input is one logged line and exit status 2::

    if __name__ == "__main__":
        run_main(main, "eval.kmeans")

A traceback is kept for bugs; the errors in :data:`USER_ERRORS` are the user's to fix (a missing
file, a bad key, an existing output folder), and their message already says how.

A training entry point declares its command line once and shares it between ``build_parser``
and ``main``::

    CLI = {"prog": "python -m maskcontrast.pretrain", "description": "...", "schema": PretrainConfig,
           "docs": "docs/PRETRAIN.md"}
    def main(argv=None) -> int:
        return training_main(argv, **CLI, build_objective=build_objective, stage="pretrain")
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from maskcontrast.data.record import DataError

__all__ = [
    "USER_ERRORS",
    "run_main",
    "user_message",
    "config_summary",
    "schema_keys",
    "training_parser",
    "training_main",
]

#: errors an entry point prints as one line and exits 2 on: ``ValueError`` covers ConfigError,
#: CheckpointError and NoSaliencyHeadError, which subclass it
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileExistsError, DataError)


def user_message(err: BaseException) -> str:
    """The message of ``err`` as the user should read it. An error raised in a DataLoader worker
    comes back with the worker's whole traceback as its message (``Caught DataError in DataLoader
    worker process 0. Original Traceback ...``); its last line holds the original message."""
    text = str(err)
    first, _, rest = text.partition("\n")
    if not (first.startswith("Caught ") and " in DataLoader worker process " in first and rest):
        return text
    last = rest.rstrip().rsplit("\n", 1)[-1]
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    return last[len(prefix) :] if last.startswith(prefix) else last


def run_main(main: Callable[[], object], name: str) -> None:
    """Call ``main()``; on one of :data:`USER_ERRORS`, log its message (:func:`user_message`) on
    logger ``name`` and exit with 2."""
    try:
        main()
    except USER_ERRORS as err:
        logging.getLogger(name).error("%s", user_message(err))
        sys.exit(2)


def config_summary(cfg: DictConfig) -> str:
    """The resolved config as YAML (for ``--print-config``)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def schema_keys(schema: Any) -> list[str]:
    """``key = default`` lines for every option of a config schema (for ``--help``)."""
    flat: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, DictConfig):
                walk(v, f"{prefix}{k}.")
            else:
                flat.append(f"  {prefix}{k} = {OmegaConf.to_yaml(OmegaConf.create({'v': v})).strip()[3:]}")

    node = OmegaConf.structured(schema)
    walk(node, "")
    return flat


def training_parser(*, prog: str, description: str, schema: Any, docs: str) -> argparse.ArgumentParser:
    """The argument parser of ``maskcontrast.pretrain`` and ``maskcontrast.moco``: ``--config``,
    ``key=value`` overrides of ``schema`` (listed in the epilog), ``--overwrite``, ``--resume``,
    ``--print-config``."""
    from maskcontrast.config_loading import add_config_arguments

    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key=value overrides; defaults shown, "
        f"explained in {docs}):\n" + "\n".join(schema_keys(schema)),
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh even if trainer.run_dir holds a run (its checkpoints are deleted)",
    )
    parser.add_argument("--resume", action="store_true", help="same as trainer.resume=auto: continue from last.pt")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def training_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    schema: Any,
    build_objective: Callable[[DictConfig], Any],
    stage: str,
    docs: str,
) -> int:
    """The shared command line of ``maskcontrast.pretrain`` and ``maskcontrast.moco``: parse, load
    the config, train (:func:`maskcontrast.train.train`). Returns the exit status: 0, 1 for a
    failure at run time (NaN loss, a full disk), 2 for bad input (the message names it)."""
    import torch.distributed as dist

    from maskcontrast.config_checks import ConfigError
    from maskcontrast.config_loading import load_config, resolve_config
    from maskcontrast.models import CheckpointError
    from maskcontrast.train import NonFiniteLossError, train
    from maskcontrast.train_folder import RunDirError
    from maskcontrast.utils import setup_logging

    parser = training_parser(prog=prog, description=description, schema=schema, docs=docs)
    args = parser.parse_intermixed_args(argv)  # options may come between key=value overrides
    setup_logging()
    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("trainer.overwrite=true")
    if args.resume:
        overrides.append("trainer.resume=auto")
    try:
        cfg = resolve_config(load_config(schema, args.config, overrides), args.config or "config")
        if args.print_config:
            print(config_summary(cfg))
            return 0
        result = train(cfg, lambda: build_objective(cfg), stage=stage)
    except (ConfigError, DataError, CheckpointError, RunDirError, NonFiniteLossError, OSError) as err:
        print(f"{prog}: error: {user_message(err)}", file=sys.stderr)
        return 1 if isinstance(err, (NonFiniteLossError, OSError)) and not isinstance(err, RunDirError) else 2
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {result.checkpoint}")
        print(
            f"run folder: {result.run_dir} (config.yaml, train.log; TensorBoard: tensorboard --logdir {result.run_dir / 'tb'})"
        )
    return 0

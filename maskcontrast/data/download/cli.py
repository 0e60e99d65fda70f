"""``python -m maskcontrast.data.download DATASET --root DIR``: the command line of the dataset
downloads (exit status 0 done, 1 failed, 2 bad arguments)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from maskcontrast.data.download.datasets import DOWNLOADERS
from maskcontrast.data.download.fetching import ChecksumMismatch, DownloadError, mismatch_hint
from maskcontrast.data.download.resources import select_resources
from maskcontrast.utils import setup_logging

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.data.download",
        description=(
            "Download and extract a dataset: streamed, resumable (run again after an interruption), "
            "checksum-verified, extracted atomically; a second run finds the data and does nothing."
        ),
    )
    p.add_argument(
        "dataset", choices=sorted(DOWNLOADERS), help="; ".join(f"{k}: {v[2]}" for k, v in sorted(DOWNLOADERS.items()))
    )
    p.add_argument("--root", type=Path, required=True, help="install folder (the data ends up in a folder inside it)")
    parts = sorted({f"{r.name}" for _, res, _ in DOWNLOADERS.values() for r in res if len(res) > 1})
    p.add_argument(
        "--only",
        action="append",
        choices=parts,
        help="install only this part (repeatable): voc2012 or aug for voc, images or annotations for pet",
    )
    p.add_argument(
        "--url",
        action="append",
        default=None,
        metavar="URL",
        help="download from this URL instead of the default mirrors (repeatable: tried in order); for a dataset "
        "of two archives, name the one with --only",
    )
    p.add_argument(
        "--md5", default=None, metavar="HEX", help="expected MD5 of the archive instead of the published one"
    )
    p.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="where archives are stored (default: ROOT/downloads); put an archive you already have here to skip "
        "its download (it is still verified)",
    )
    p.add_argument("--keep-archives", action="store_true", help="keep the archives after extraction")
    p.add_argument(
        "--aug-sha256", default=None, help="voc: expected SHA-256 of SegmentationClassAug.zip (none is published)"
    )
    p.add_argument("--retries", type=int, default=3, help="retries per mirror after a dropped connection (default: 3)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default: 60)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 failed, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    install_fn, resources, _ = DOWNLOADERS[args.dataset]
    names = [r.name for r in resources]
    if args.only and len(resources) > 1 and set(args.only) - set(names):
        parser.error(f"--only {sorted(set(args.only) - set(names))}: {args.dataset} has the parts {names}")
    if args.only and len(resources) == 1:
        parser.error(f"--only: {args.dataset} is a single archive")
    if args.aug_sha256 and args.dataset != "voc":
        parser.error("--aug-sha256 is for voc")
    kwargs: dict = {"urls": args.url, "md5": args.md5}
    if len(resources) > 1:
        kwargs["only"] = args.only
    if args.dataset == "voc":
        kwargs["aug_sha256"] = args.aug_sha256
    try:
        select_resources(resources, kwargs.get("only"), urls=args.url, md5=args.md5)
    except ValueError as err:
        parser.error(str(err))
    try:
        out = install_fn(
            args.root,
            **kwargs,
            download_dir=args.download_dir,
            keep_archives=args.keep_archives,
            retries=args.retries,
            timeout=args.timeout,
            progress=False if args.no_progress else None,
        )
    except ChecksumMismatch as err:
        flag = "--aug-sha256" if err.algorithm == "sha256" else "--md5"
        log.error("%s\n%s", err, mismatch_hint(err, flag + " {actual}"))
        return 1
    except DownloadError as err:
        log.error("%s", err)
        return 1
    print(f"{args.dataset} is ready in {out}")
    return 0

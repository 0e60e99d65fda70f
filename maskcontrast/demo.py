"""The main job, end to end: ``python -m maskcontrast.demo`` (``make demo``; ``make demo FAST=1``).

Its data is MSRC-v2, found in this order:

* ``--data DIR`` (either layout: the official ``Images/*.bmp`` + colour ``GroundTruth/*_GT.bmp``,
  or the shared copy's PNGs);
* ``$MASKCONTRAST_DATA/msrc_v2``;
* ``<cache>/msrc_v2``, where ``<cache>`` is ``$MASKCONTRAST_CACHE`` or ``~/.cache/maskcontrast``;
  when it is not there yet, the official archive is downloaded into it (resumable, MD5-checked,
  extracted atomically; :func:`maskcontrast.data.download.download_msrc`).
  ``$MASKCONTRAST_MSRC_URL`` (one or more URLs, separated by spaces) replaces the mirrors and
  ``$MASKCONTRAST_MSRC_MD5`` the digest. Without network it stops with one message that names the
  URLs it tried and the alternatives, and leaves nothing half-written.

On that data it runs, each stage through the same command line a user would type:

1. ``saliency.generate``: unsupervised object masks (fused classical estimators);
2. ``maskcontrast.moco``: a MoCo v2 initialisation on the images (labels unused);
3. ``maskcontrast.pretrain``: MaskContrast from that initialisation, with the masks of step 1;
4. ``eval.linear`` (CPU config, seeded 80/20 split) and ``eval.kmeans`` (prototype protocol with
   the object masks of the model's saliency head and with the fused masks of step 1, and the pixel
   protocol);
5. ``eval.segment`` on the linear probe's held-out images (fused masks, the network at the
   training image size): label maps, overlays, contact sheets and an ``index.html``;
6. a report folder: ``summary.md`` (headline numbers, per-class IoU, every command with its wall
   time, a link to the segment page), ``per_class_iou.png``, ``overlays/`` (image | ground truth |
   fused mask | K-means with the model's saliency | K-means with the fused masks | linear),
   ``segment/`` (the page) and the TensorBoard logs of every training stage.

Every stage is resumable: run the same command again after an interruption and finished stages
are skipped. ``--overwrite`` starts afresh. The stages run as subprocesses, so this module imports
nothing from ``saliency`` or ``eval``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from maskcontrast.data.download import MSRC_RESOURCES, ChecksumMismatch, DownloadError, download_msrc, mismatch_hint
from maskcontrast.data.paths import data_root
from maskcontrast.demo_report import write_report
from maskcontrast.demo_stages import CONFIGS, PRESETS, Budget, Demo
from maskcontrast.utils import setup_logging

log = logging.getLogger("maskcontrast.demo")

#: environment variables of the data fallback
CACHE_ENV, URL_ENV, MD5_ENV = "MASKCONTRAST_CACHE", "MASKCONTRAST_MSRC_URL", "MASKCONTRAST_MSRC_MD5"

ALTERNATIVES = """\
Alternatives:
  * pass --data DIR: an MSRC-v2 copy (Images/ + GroundTruth/, official BMP or shared PNG layout);
  * set MASKCONTRAST_DATA to a folder that holds msrc_v2/;
  * download it on a machine with network: python -m maskcontrast.data.download msrc --root DIR
    (then --data DIR/msrc_v2), or put msrc_objcategimagedatabase_v2.zip into {downloads}/
    and run the demo again (it is checked and used);
  * MASKCONTRAST_MSRC_URL=URL to use a mirror (MASKCONTRAST_MSRC_MD5=HEX for its digest)."""


def find_data(arg: str | None) -> Path | None:
    """``--data`` when given, else ``$MASKCONTRAST_DATA/msrc_v2``; None when neither is there."""
    if arg:
        # absolute, like data_root(): the stage commands must not depend on how the path was spelled
        path = Path(arg).expanduser().resolve()
        return path if path.is_dir() else None
    root = data_root()
    if root is not None and (root / "msrc_v2").is_dir():
        return root / "msrc_v2"
    return None


def cache_dir() -> Path:
    """``$MASKCONTRAST_CACHE`` or ``~/.cache/maskcontrast`` (absolute)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value or "~/.cache/maskcontrast").expanduser().resolve()


def msrc_sources() -> tuple[list[str] | None, str | None]:
    """The mirrors and digest from ``$MASKCONTRAST_MSRC_URL`` (space-separated) and
    ``$MASKCONTRAST_MSRC_MD5``; None where unset (the official ones are used)."""
    urls = os.environ.get(URL_ENV, "").split()
    md5 = os.environ.get(MD5_ENV, "").strip()
    return (urls or None), (md5 or None)


def _remove_new_empty_dirs(dirs: list[Path], existed: set[Path]) -> None:
    for d in dirs:  # deepest first
        if d not in existed and d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def fetch_demo_data(cache: Path, progress: bool | None = True) -> Path:
    """``<cache>/msrc_v2``, downloading the official MSRC-v2 archive when it is not there.

    Raises:
        SystemExit: the download failed (no network, a checksum mismatch, a bad archive); the
            message names the URLs tried and the alternatives. Folders this call created are
            removed again when they are empty; a partial download stays as ``<archive>.part``
            (the next run resumes it) and is named in the message.
    """
    folder = cache / MSRC_RESOURCES[0].dest
    if (folder / MSRC_RESOURCES[0].marker).is_dir():
        log.info("demo data: MSRC-v2 in the cache %s", folder)
        return folder
    urls, md5 = msrc_sources()
    try:
        urls_tried = list(urls or MSRC_RESOURCES[0].urls)
        downloads = cache / "downloads"
        created = [downloads, *[p for p in (cache, *cache.parents) if not p.exists()]]
        existed = {p for p in created if p.exists()}
        log.info("no demo data found: downloading MSRC-v2 into %s (from %s)", cache, " or ".join(urls_tried))
        try:
            return download_msrc(cache, urls=urls, md5=md5, progress=progress)
        finally:
            _remove_new_empty_dirs(created, existed)
    except ValueError as err:  # a malformed MASKCONTRAST_MSRC_MD5
        raise SystemExit(f"maskcontrast.demo: {MD5_ENV}: {err}") from err
    except ChecksumMismatch as err:
        print(
            "maskcontrast.demo: no demo data found, and the downloaded MSRC-v2 archive failed its check:\n"
            f"  {err}\n{mismatch_hint(err, MD5_ENV + '={actual}')}\n"
            f"{ALTERNATIVES.format(downloads=cache / 'downloads')}",
            file=sys.stderr,
        )
        raise SystemExit(2) from err
    except DownloadError as err:
        archive = cache / "downloads" / MSRC_RESOURCES[0].filename
        part = archive.with_name(archive.name + ".part")
        left = (
            [p for p in sorted(archive.parent.glob(archive.name + ".*")) if p != part]
            if archive.parent.is_dir()
            else []
        )
        if part.is_file():
            kept = f"{part.stat().st_size} bytes are kept in {part}; running again resumes there."
        elif left:
            kept = f"Nothing was extracted; left for inspection: {', '.join(map(str, left))}."
        else:
            kept = f"Nothing was written under {cache}."
        tried = "\n".join(f"  {u}" for u in (err.urls or urls_tried))
        print(
            f"maskcontrast.demo: no demo data found, and downloading MSRC-v2 failed.\nTried, in order:\n{tried}\n"
            f"Error: {err}\n{kept}\n{ALTERNATIVES.format(downloads=cache / 'downloads')}",
            file=sys.stderr,
        )
        raise SystemExit(2) from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.demo",
        description="The main job end to end on MSRC-v2: saliency masks -> MoCo -> MaskContrast -> K-means "
        "(prototype + pixel protocols) and linear probe -> report folder. Resumable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Environment: MASKCONTRAST_DATA (a folder holding msrc_v2/), MASKCONTRAST_CACHE (where MSRC-v2 is "
        "downloaded when no data is found), MASKCONTRAST_MSRC_URL (mirrors for that download, separated by spaces) "
        "and MASKCONTRAST_MSRC_MD5 (their digest). docs/DATA.md, 'Where make demo gets its data'.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (report in <out>/report)")
    p.add_argument(
        "--data",
        default=None,
        help="MSRC-v2 folder (default: $MASKCONTRAST_DATA/msrc_v2, else $MASKCONTRAST_CACHE/msrc_v2 with "
        "MASKCONTRAST_CACHE=~/.cache/maskcontrast by default, downloaded there when missing)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fast", action="store_true", help="the ~8 minute preset (shorter stages, smaller images)")
    size.add_argument(
        "--tiny", action="store_true", help="a couple of steps per stage: checks the plumbing, numbers mean nothing"
    )
    p.add_argument("--moco-steps", type=int, default=None, help="override the preset's MoCo steps")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the preset's MaskContrast steps")
    p.add_argument("--seed", type=int, default=0, help="training and split seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per training process (0: default)")
    p.add_argument("--overwrite", action="store_true", help="delete --out and start afresh")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    if not CONFIGS.is_dir():
        raise SystemExit(f"maskcontrast.demo: config folder {CONFIGS} not found; run the demo from a source checkout")
    data = find_data(args.data)
    if data is None and args.data:
        raise SystemExit(f"maskcontrast.demo: --data {args.data}: folder not found")
    if data is None:
        data = fetch_demo_data(cache_dir())
    log.info("demo data: %s", data)
    preset = PRESETS["tiny" if args.tiny else "fast" if args.fast else "default"]
    budget = Budget(
        **{
            **preset.__dict__,
            **({"moco_steps": args.moco_steps} if args.moco_steps is not None else {}),
            **({"pretrain_steps": args.pretrain_steps} if args.pretrain_steps is not None else {}),
        }
    )
    out = Path(args.out).expanduser().resolve()
    marker = out / "demo.json"
    settings = {"data": str(data), "budget": budget.settings(), "seed": args.seed}
    if out.exists() and any(out.iterdir()):
        if args.overwrite:
            shutil.rmtree(out)
        elif not marker.is_file() or json.loads(marker.read_text())["settings"] != settings:
            raise SystemExit(
                f"maskcontrast.demo: {out} holds other outputs (or a demo with other settings); "
                "pass --overwrite to replace them or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"settings": settings}, indent=2), encoding="utf-8")
    demo = Demo(out=out, data=data, budget=budget, seed=args.seed, threads=args.threads)
    t0 = time.perf_counter()
    demo.all_stages()
    headline = write_report(demo)
    total = time.perf_counter() - t0
    print()
    print(f"maskcontrast demo finished in {total / 60:.1f} min; report: {demo.report_dir / 'summary.md'}")
    print(
        f"  K-means, prototype protocol: mIoU {100 * headline['kmeans_prototype_miou']:.1f} "
        f"± {100 * headline['kmeans_prototype_miou_std']:.1f} %"
    )
    print(
        f"  K-means, prototype, fused masks: mIoU {100 * headline['kmeans_prototype_fused_miou']:.1f} "
        f"± {100 * headline['kmeans_prototype_fused_miou_std']:.1f} %"
    )
    print(f"  segment page: {demo.report_dir / 'segment' / 'index.html'}")
    print(
        f"  K-means, pixel protocol:     mIoU {100 * headline['kmeans_pixel_miou']:.1f} "
        f"± {100 * headline['kmeans_pixel_miou_std']:.1f} %"
    )
    print(f"  linear probe:                mIoU {100 * headline['linear_miou']:.1f} %")
    return headline


if __name__ == "__main__":
    main()

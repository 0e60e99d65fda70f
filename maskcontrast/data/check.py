"""Validate a dataset folder: every file present, decodable, of matching size, with legal labels.

The checks are the ones that protect the readers (:meth:`SegmentationDataset.load` and its
:class:`DataError` messages); this module runs them over every id, collects the problems instead
of stopping at the first one, and prints a summary (or writes JSON).

Library use (e.g. a trainer that wants to fail fast, before the first epoch)::

    from maskcontrast.data import build_dataset
    from maskcontrast.data.check import check_dataset

    report = check_dataset(build_dataset("msrc", "/data/msrc_v2"))
    if not report.ok:
        raise SystemExit(report.summary())

Command line::

    python -m maskcontrast.data.check --dataset msrc --root /data/msrc_v2 --json /tmp/msrc.json
    python -m maskcontrast.data.check --shared          # every dataset under $MASKCONTRAST_DATA

Exit status: 0 when no problem was found, 1 when problems were found (or the dataset could not
be opened at all), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from maskcontrast.data.base import DATASETS, SegmentationDataset, build_dataset
from maskcontrast.data.io import SKIPPED_LIST, read_skipped
from maskcontrast.data.paths import SHARED_LAYOUT
from maskcontrast.data.record import DataError
from maskcontrast.keyvalues import parse_key_values
from maskcontrast.utils import atomic_write_bytes, setup_logging

__all__ = [
    "Problem",
    "CheckReport",
    "check_sample",
    "check_dataset",
    "check_shared",
    "open_and_check",
    "SHARED_CHECKS",
    "main",
]

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One problem of one sample. ``id`` is None for a problem of the whole dataset."""

    id: str | None
    problem: str


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`.

    ``to_dict()`` gives the JSON written by ``--json``: ``dataset, split, images, with_labels,
    num_classes, classes, problems`` (a list of ``{"id", "problem"}``).
    """

    dataset: str
    split: str | None
    images: int
    with_labels: int
    num_classes: int
    classes: list[str]
    problems: list[Problem] = field(default_factory=list)
    root: str | None = None
    #: informative lines for the summary (object-mask counts, what was not checked); not problems
    notes: list[str] = field(default_factory=list)
    #: False when the reader could not even be built (missing folder or split list, empty folder)
    opened: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of the issue: exactly the keys listed in the class docstring."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "images": self.images,
            "with_labels": self.with_labels,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "problems": [asdict(p) for p in self.problems],
        }

    def summary(self, max_problems: int = 50) -> str:
        """A readable multi-line summary; lists at most ``max_problems`` problems."""
        where = f" at {self.root}" if self.root else ""
        lines = [f"dataset   {self.dataset}{where} (split {self.split})"]
        lines.append(f"images    {self.images} ({self.with_labels} with labels)")
        if not self.opened:
            lines.append("classes   unknown (the dataset could not be opened)")
        elif self.num_classes:
            shown = ", ".join(self.classes[:25]) + (", ..." if self.num_classes > 25 else "")
            lines.append(f"classes   {self.num_classes}: {shown}")
        else:
            lines.append("classes   none (images only)")
        lines.extend(f"note      {n}" for n in self.notes)
        if self.ok:
            lines.append("problems  none: OK")
        else:
            lines.append(f"problems  {len(self.problems)}:")
            for p in self.problems[:max_problems]:
                lines.append(f"  {p.id if p.id is not None else '(dataset)'}: {p.problem}")
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more (write them all with --json)")
        return "\n".join(lines)


def check_sample(ds: SegmentationDataset, sample_id: str) -> tuple[list[str], bool]:
    """Check one sample of ``ds``.

    Every missing file of the sample is reported (image, label, dataset mask), then the sample is
    decoded with :meth:`SegmentationDataset.load`, which reports an undecodable file, a label or
    mask whose size differs from the image, or label values out of range.

    Returns:
        ``(problems, has_label)``: the problem messages (empty when the sample is fine) and
        whether the sample has a label file.
    """
    try:
        files = ds.files(sample_id)
    except (DataError, KeyError, OSError) as err:
        return [f"cannot locate the files: {err}"], False
    problems: list[str] = []
    missing: set[str] = set()
    for kind, path in (("image", files.image), ("label", files.label), ("mask", files.mask)):
        if path is not None and not path.is_file():
            problems.append(f"{path}: {kind} file not found")
            missing.add(str(path))
    has_label = files.label is not None and str(files.label) not in missing
    if missing and str(files.image) in missing:
        return problems, has_label  # nothing to decode against
    try:
        ds.load(sample_id)
    except DataError as err:
        if err.path is None or err.path not in missing:
            problems.append(str(err))
    except Exception as err:  # a reader bug or an unexpected file: report it, keep going
        problems.append(f"unexpected {type(err).__name__} while loading: {err}")
    return problems, has_label


def _layout_notes(ds: SegmentationDataset) -> list[str]:
    """The layout a reader found, for readers that read more than one (``layout_note``, e.g. MSRC-v2)."""
    note = getattr(ds, "layout_note", None)
    return [note] if note else []


def _mask_notes(ds: SegmentationDataset) -> list[str]:
    """Counts of external object masks (``--masks``) and of ids skipped on purpose."""
    if ds.mask_dir is None:
        return []
    absent = [i for i in ds.ids if not ds.mask_dir.joinpath(f"{i}.png").is_file()]  # = ds.mask_path(i)
    skipped = read_skipped(ds.mask_dir / SKIPPED_LIST)  # bare <id> lines count too
    unexplained = [i for i in absent if i not in skipped]
    note = f"object masks in {ds.mask_dir}: {len(ds.ids) - len(absent)} of {len(ds.ids)} ids"
    if absent:
        note += f"; {len(absent) - len(unexplained)} without a mask are listed in {SKIPPED_LIST}"
        if unexplained:
            note += f", {len(unexplained)} are not (e.g. {unexplained[:3]}): those samples get mask=None"
    return [note]


def check_dataset(
    ds: SegmentationDataset,
    *,
    workers: int | None = None,
    progress: bool | None = None,
) -> CheckReport:
    """Decode every sample of ``ds`` and collect its problems, without stopping at the first one.

    Args:
        ds: any reader; label ranges are checked even when it was built with ``validate=False``.
        workers: decoding threads (Pillow and NumPy release the GIL); None = ``min(4, cpus)``.
        progress: show a tqdm bar; None = only on a terminal.

    Returns:
        A :class:`CheckReport`; ``report.ok`` is True when no problem was found. Problems keep
        the order of ``ds.ids``.

    Example::

        report = check_dataset(build_dataset("pet", root, target="species"))
        print(report.summary())
    """
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    saved_validate = ds.validate
    ds.validate = True
    try:
        ids = list(ds.ids)
        bar = tqdm(
            total=len(ids), desc=f"check {ds.info.name}", unit="img", disable=None if progress is None else not progress
        )
        results: list[tuple[list[str], bool]] = []
        with bar:
            if workers == 1:
                for i in ids:
                    results.append(check_sample(ds, i))
                    bar.update()
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for res in pool.map(lambda i: check_sample(ds, i), ids):
                        results.append(res)
                        bar.update()
    finally:
        ds.validate = saved_validate
    problems = [Problem(i, msg) for i, (msgs, _) in zip(ids, results) for msg in msgs]
    return CheckReport(
        dataset=ds.info.name,
        split=ds.split,
        images=len(ids),
        with_labels=sum(1 for _, has_label in results if has_label),
        num_classes=ds.info.num_classes,
        classes=list(ds.info.classes),
        problems=problems,
        root=str(ds.root),
        notes=[*_layout_notes(ds), *_mask_notes(ds)],
    )


def _failed_report(name: str, split: str | None, root: Path, err: Exception) -> CheckReport:
    cls = DATASETS.get(name)
    info = getattr(cls, "info", None) if cls is not None else None
    classes = list(info.classes) if info is not None else []
    if split is None and cls is not None:
        split = cls.default_split
    return CheckReport(
        dataset=name,
        split=split,
        images=0,
        with_labels=0,
        num_classes=len(classes),
        classes=classes,
        problems=[Problem(None, f"cannot open the dataset: {err}")],
        root=str(root),
        opened=False,
    )


def open_and_check(
    name: str,
    root: str | Path,
    split: str | None = None,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    **reader_kwargs: Any,
) -> CheckReport:
    """Build reader ``name`` on ``root`` and check it. A dataset that cannot be opened at all
    (missing folder or split list, empty folder) gives a report with one dataset-level problem."""
    try:
        ds = build_dataset(name, root, split, **reader_kwargs)
    except DataError as err:
        return _failed_report(name, split, Path(root), err)
    return check_dataset(ds, workers=workers, progress=progress)


#: What ``--shared`` checks: sub-folder key of :data:`SHARED_LAYOUT` -> (reader, split, kwargs).
#: ``voc_splits`` holds only the VOC split lists (no images), so only the lists are checked.
SHARED_CHECKS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "msrc": ("msrc", None, {}),
    "pet": ("pet", None, {"target": "breed"}),
    "coco128": ("coco128", None, {}),
    "davis2016": ("davis2016", None, {}),
    "weizmann": ("weizmann", None, {}),
    "sod": ("saliency_folder", None, {}),
    "voc_splits": ("voc", None, {}),
}


def _check_voc_lists(root: Path) -> list[CheckReport]:
    """The shared VOC copy has split lists but no images: check that each list parses."""
    reports = []
    seg = root / "ImageSets" / "Segmentation"
    splits = [s for s in ("train", "val", "trainval", "train_aug") if (seg / f"{s}.txt").is_file()]
    if not splits:
        return [_failed_report("voc", None, root, DataError(f"no split lists under {seg}"))]
    for split in splits:
        try:
            ds = build_dataset("voc", root, split)
        except DataError as err:
            reports.append(_failed_report("voc", split, root, err))
            continue
        problems = []
        if len(set(ds.ids)) != len(ds.ids):
            problems.append(Problem(None, f"{ds.split_file()}: {len(ds.ids) - len(set(ds.ids))} duplicate ids"))
        reports.append(
            CheckReport(
                dataset="voc",
                split=split,
                images=len(ds.ids),
                with_labels=0,
                num_classes=ds.info.num_classes,
                classes=list(ds.info.classes),
                problems=problems,
                root=str(root),
                notes=["split list only: this copy has no VOC images, so no file was decoded"],
            )
        )
    return reports


def check_shared(
    data_root: str | Path, *, workers: int | None = None, progress: bool | None = None
) -> list[CheckReport]:
    """Check every dataset found under ``data_root`` (the layout of ``$MASKCONTRAST_DATA``)."""
    data_root = Path(data_root)
    reports: list[CheckReport] = []
    for key, (reader, split, kwargs) in SHARED_CHECKS.items():
        folder = data_root / SHARED_LAYOUT[key][0]
        if not folder.is_dir():
            log.info("%s: not under %s, skipped", key, data_root)
            continue
        if key == "voc_splits":
            reports.extend(_check_voc_lists(folder))
        else:
            reports.append(open_and_check(reader, folder, split, workers=workers, progress=progress, **kwargs))
    return reports


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.data.check",
        description=(
            "Validate a dataset folder: report every missing file, undecodable image, label or mask "
            "whose size differs from its image, and label value out of range, by sample id. "
            "Exits 0 when nothing is wrong, 1 when problems were found, 2 for bad arguments."
        ),
    )
    p.add_argument("--dataset", choices=sorted(DATASETS), help="reader name (see docs/DATA.md)")
    p.add_argument("--root", type=Path, help="the dataset folder")
    p.add_argument("--split", default=None, help="split to check (default: the reader's default split)")
    p.add_argument(
        "--masks",
        type=Path,
        default=None,
        help="an object-mask folder (<DIR>/<id>.png) to check against the images, e.g. the output of "
        "saliency.generate; for voc also 'unsupervised' or 'supervised' (the official saliency folders)",
    )
    p.add_argument("--ids", type=Path, default=None, help="check only the ids listed in this file (one per line)")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reader option, repeatable: target=foreground|species|breed for pet, protocol=21|23 for msrc",
    )
    p.add_argument(
        "--shared",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="check every dataset found under DIR (default: $MASKCONTRAST_DATA) instead of --dataset/--root",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: min(4, CPUs))")
    p.add_argument("--max-print", type=int, default=50, help="problems listed in the printed summary (default: 50)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 OK, 1 problems, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.json is not None and args.json.exists() and not args.overwrite:
        parser.error(f"{args.json} exists; pass --overwrite to replace it")
    progress = False if args.no_progress else None

    if args.shared is not None:
        if args.dataset or args.root:
            parser.error("--shared checks every shared dataset; do not combine it with --dataset/--root")
        root = Path(args.shared) if args.shared else None
        if root is None:
            env = os.environ.get("MASKCONTRAST_DATA")
            if not env:
                parser.error("--shared needs a folder: pass --shared DIR or set MASKCONTRAST_DATA")
            root = Path(env)
        root = root.expanduser()
        if not root.is_dir():
            parser.error(f"shared data folder not found: {root}")
        reports = check_shared(root, workers=args.workers, progress=progress)
        if not reports:
            print(
                f"no known dataset under {root} (expected sub-folders: {sorted(v[0] for v in SHARED_LAYOUT.values())})"
            )
            return 1
        for r in reports:
            print(r.summary(args.max_print))
            print()
        bad = [r for r in reports if not r.ok]
        total = sum(len(r.problems) for r in reports)
        print(f"checked {len(reports)} datasets under {root}: " + ("all OK" if not bad else f"{total} problems"))
        payload: Any = {"data_root": str(root), "datasets": [r.to_dict() for r in reports]}
    else:
        if not args.dataset or args.root is None:
            parser.error("give --dataset NAME and --root DIR (or --shared)")
        try:
            kwargs: dict[str, Any] = parse_key_values(args.option, "--option", typed=False, example="target=species")
        except ValueError as err:
            parser.error(str(err))
        if args.masks is not None:
            kwargs["masks"] = args.masks
        if args.ids is not None:
            kwargs["ids"] = args.ids
        try:
            report = open_and_check(
                args.dataset, args.root, args.split, workers=args.workers, progress=progress, **kwargs
            )
        except TypeError as err:  # an --option the reader does not take
            parser.error(f"reader '{args.dataset}' does not accept these options: {err}")
        except ValueError as err:
            parser.error(str(err))
        reports = [report]
        print(report.summary(args.max_print))
        payload = report.to_dict()
        bad = [] if report.ok else [report]

    if args.json is not None:
        atomic_write_bytes(args.json, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
        print(f"report written to {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

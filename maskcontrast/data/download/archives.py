"""Extract a tar or zip archive all or nothing: into a hidden temporary folder beside the target,
its content checked there, then renamed into place; members that would escape the folder are refused.

Example::

    extract_atomic("downloads/VOCtrainval_11-May-2012.tar", "data/VOCdevkit/VOC2012", subdir="VOCdevkit/VOC2012")
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from maskcontrast.data.download.fetching import DownloadError

__all__ = ["extract_atomic"]


def _safe_member_name(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts


def _extract_all(archive: Path, into: Path) -> None:
    """Extract a tar or zip archive into ``into``, refusing members that would escape it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()  # verifies every member's CRC
            if bad is not None:
                raise DownloadError(f"{archive}: member {bad} is corrupt (CRC mismatch); delete the file and retry")
            for info in zf.infolist():
                if not _safe_member_name(info.filename):
                    raise DownloadError(f"{archive}: unsafe member path {info.filename!r}; refusing to extract")
            zf.extractall(into)
        return
    try:
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(into, filter="data")
            else:  # Python without extraction filters: check names, skip links and devices
                members = []
                for m in tf.getmembers():
                    if not _safe_member_name(m.name):
                        raise DownloadError(f"{archive}: unsafe member path {m.name!r}; refusing to extract")
                    if m.isfile() or m.isdir():
                        members.append(m)
                tf.extractall(into, members=members)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive}: cannot extract ({err}); delete the file and run again") from err


def _merge_plan(src: Path, dst: Path, plan: list[tuple[Path, Path]], conflicts: list[Path]) -> None:
    """Moves that bring ``src`` into the existing folder ``dst`` (recursing into shared folders)."""
    for child in sorted(src.iterdir()):
        target = dst / child.name
        if not target.exists():
            plan.append((child, target))
        elif child.is_dir() and target.is_dir():
            _merge_plan(child, target, plan, conflicts)
        else:
            conflicts.append(target)


def _locate(top: Path, entries: Sequence[str], ignore: Sequence[str], max_depth: int = 3) -> Path | None:
    """The shallowest folder under ``top`` (``top`` included, ``max_depth`` levels down) that holds
    every name in ``entries``; None when there is none."""
    level = [top]
    for _ in range(max_depth + 1):
        for folder in level:
            if all((folder / e).exists() for e in entries):
                return folder
        level = sorted(c for f in level for c in f.iterdir() if c.is_dir() and c.name not in ignore)
    return None


def extract_atomic(
    archive: str | Path,
    dest: str | Path,
    *,
    subdir: str = "",
    marker: str = ".",
    ignore: Sequence[str] = ("__MACOSX",),
    locate: Sequence[str] = (),
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Extract ``subdir`` of ``archive`` so that it becomes ``dest``, all or nothing.

    The archive is extracted into a hidden temporary folder beside ``dest`` and renamed into
    place (one ``rename`` when ``dest`` does not exist yet). When ``dest`` exists (e.g. the VOC tar
    arrives after SegmentationClassAug was put inside ``VOC2012``), the new entries are renamed
    in one by one, the one holding ``marker`` last, and an entry that exists on both sides stops
    the extraction before anything is moved. A failure removes the temporary folder.

    Args:
        locate: instead of ``subdir``, use the folder of the archive that holds all these entries
            (the archive root or up to 3 levels down).
        check: called with the extracted folder before anything is moved into place; a
            :class:`DownloadError` it raises leaves ``dest`` untouched.

    Returns:
        ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        _extract_all(archive, tmp)
        if locate:
            found = _locate(tmp, locate, ignore)
            if found is None:
                top = sorted(p.name for p in tmp.iterdir() if p.name not in ignore)
                raise DownloadError(
                    f"{archive}: expected a folder holding {list(locate)} in the archive, found {top[:10]} at its top"
                )
            src = found
        else:
            src = tmp / subdir if subdir else tmp
        if not src.is_dir():
            top = sorted(p.name for p in tmp.iterdir() if p.name not in ignore)
            raise DownloadError(f"{archive}: expected a folder '{subdir}' in the archive, found {top[:10]}")
        for name in ignore:
            shutil.rmtree(src / name, ignore_errors=True)
        if check is not None:
            check(src)
        if not dest.exists():
            os.replace(src, dest)
        else:
            if not dest.is_dir():
                raise DownloadError(f"{dest} exists and is not a folder; move it away and run again")
            plan: list[tuple[Path, Path]] = []
            conflicts: list[Path] = []
            _merge_plan(src, dest, plan, conflicts)
            if conflicts:
                raise DownloadError(
                    f"cannot extract {archive.name} into {dest}: {len(conflicts)} entries exist already, e.g. "
                    f"{[str(c) for c in conflicts[:3]]}; move them away (or the whole {dest}) and run again"
                )
            first_part = PurePosixPath(marker).parts[0] if marker not in (".", "") else None
            plan.sort(key=lambda m: first_part is not None and m[1] == dest / first_part)
            for s, d in plan:
                os.replace(s, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest

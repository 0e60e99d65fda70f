"""The base class of every dataset reader, and the registry that maps names to readers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import Dataset

from maskcontrast.data.io import image_size, read_image, read_index_png
from maskcontrast.data.record import DataError, DatasetInfo, Sample

__all__ = [
    "SampleFiles",
    "SegmentationDataset",
    "DATASETS",
    "register_dataset",
    "build_dataset",
    "read_id_list",
    "object_mask_from_png",
    "ensure_dataset_folder",
    "empty_folder_error",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleFiles:
    """The files behind one sample; ``label``/``mask`` are None when the dataset has none."""

    image: Path
    label: Path | None = None
    mask: Path | None = None


def read_id_list(path: Path, column: int = 0) -> list[str]:
    """Ids from a split list: one per line, whitespace-separated columns, ``#`` comments skipped."""
    if not path.is_file():
        raise DataError(f"split list not found: {path}", path=str(path))
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ids.append(line.split()[column])
    return ids


def object_mask_from_png(raw: np.ndarray) -> np.ndarray:
    """Interpret a stored object mask: 0/255 (or 0/1) binary files become 0/1; files with ids
    ``1..n`` are kept as they are."""
    raw = np.asarray(raw)
    if raw.size and raw.max() == 255:
        values = np.unique(raw)
        if np.all(np.isin(values, (0, 255))):
            return (raw == 255).astype(np.uint8)
        raise DataError(
            f"object mask has value 255 beside other values {values[:8].tolist()}; "
            "expected a binary 0/255 mask or object ids 1..n"
        )
    return raw.astype(np.uint8)


def ensure_dataset_folder(root: str | Path, reader: str) -> Path:
    """``root`` as a Path; a DataError naming it when it is not an existing folder."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{reader}: dataset folder not found: {path}; give an existing folder (--root or --images on "
            "the command line, data.sources[].root in a training config; MASKCONTRAST_DATA for the shared copies)",
            path=str(path),
        )
    return path


def empty_folder_error(root: Path, reader: str) -> DataError | None:
    """A DataError saying that ``root`` is empty (hidden files do not count), or None when it is not.

    Readers raise it instead of "split list / class list not found" when nothing is there at all.
    """
    if any(not p.name.startswith(".") for p in root.iterdir()):
        return None
    return DataError(
        f"{reader}: {root} is empty; download or copy the dataset there (layouts: docs/DATA.md)", path=str(root)
    )


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Make a DataError raised inside name ``path`` (decoders raise without knowing the file)."""
    try:
        yield
    except DataError as err:
        if err.path is not None:
            raise
        if str(err).startswith(str(path)):
            err.path = str(path)
            raise
        raise DataError(f"{path}: {err}", path=str(path), sample_id=err.sample_id) from err


class SegmentationDataset(Dataset):
    """Base class of all readers. Indexing returns a :class:`Sample` (or ``transform(sample)``).

    Subclasses set ``info`` and implement :meth:`_list_ids` and :meth:`files`; they override
    :meth:`decode_label` / :meth:`decode_mask` / :meth:`read_sample_image` where their storage needs it.

    Args:
        root: the dataset folder.
        split: a split name the reader knows (``splits``); None means the reader's default.
        masks: an optional folder with one object-mask PNG per image id (``<masks>/<id>.png``:
            0/255 binary, or 0 = background and 1..n = objects). It replaces the dataset's own
            object masks; an id without a file gets ``mask=None``.
        ids: an optional subset of ids (a sequence, or a text file with one id per line).
        transform: applied to the :class:`Sample` before it is returned.
        validate: check sizes and label ranges on every load (cheap; on by default).
    """

    info: ClassVar[DatasetInfo]
    splits: ClassVar[tuple[str, ...]] = ("all",)
    default_split: ClassVar[str] = "all"

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        *,
        masks: str | Path | None = None,
        ids: Sequence[str] | str | Path | None = None,
        transform: Callable[[Sample], Any] | None = None,
        validate: bool = True,
    ) -> None:
        self.root = ensure_dataset_folder(root, type(self).__name__)
        self.root = self._resolve_root(self.root)
        self.split = split or self.default_split
        if self.split not in self.splits:
            raise DataError(f"{type(self).__name__}: unknown split '{self.split}'; choose one of {list(self.splits)}")
        self.mask_dir = self._resolve_mask_dir(masks) if masks is not None else None
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DataError(f"mask folder not found: {self.mask_dir}", path=str(self.mask_dir))
        self.transform = transform
        self.validate = validate
        try:
            all_ids = self._list_ids()
        except DataError as err:
            empty = empty_folder_error(self.root, type(self).__name__)
            if empty is not None:
                raise empty from err
            raise
        if ids is not None:
            wanted = read_id_list(Path(ids)) if isinstance(ids, (str, Path)) else list(ids)
            known = set(all_ids)
            missing = [i for i in wanted if i not in known]
            if missing:
                raise DataError(
                    f"{len(missing)} requested ids are not in {self.root} split '{self.split}': {missing[:5]}"
                )
            all_ids = wanted
        if not all_ids:
            empty = empty_folder_error(self.root, type(self).__name__)
            if empty is not None:
                raise empty
            raise DataError(
                f"{type(self).__name__}: no images found in {self.root} (split '{self.split}'); "
                "check --root and the folder layout in docs/DATA.md",
                path=str(self.root),
            )
        self.ids: list[str] = list(all_ids)

    # -- to implement ------------------------------------------------------------------------
    def _resolve_root(self, root: Path) -> Path:
        """Accept common parent folders (e.g. ``VOCdevkit``); return the folder the reader uses."""
        return root

    def _list_ids(self) -> list[str]:
        raise NotImplementedError

    def files(self, sample_id: str) -> SampleFiles:
        """The files of one sample (they may not exist; :meth:`load` reports that)."""
        raise NotImplementedError

    def decode_label(self, raw: np.ndarray, sample_id: str) -> np.ndarray:
        """Stored label values -> int64 ``0..C-1`` / ignore."""
        return raw.astype(np.int64)

    def decode_mask(self, raw: np.ndarray, sample_id: str) -> np.ndarray:
        """Stored object-mask values -> uint8 ``0`` background, ``1..n`` objects."""
        return object_mask_from_png(raw)

    def object_mask_from_label(self, label: np.ndarray) -> np.ndarray | None:
        """The dataset's own object mask when it is derived from the label (default: none)."""
        return None

    def read_sample_image(self, files: SampleFiles, sample_id: str) -> np.ndarray:
        return read_image(files.image)

    def read_label_file(self, path: Path) -> np.ndarray:
        """Raw label values of a file (default: PNG indices; binary datasets threshold instead)."""
        return read_index_png(path)

    # -- shared ------------------------------------------------------------------------------
    def _resolve_mask_dir(self, masks: str | Path) -> Path:
        return Path(masks).expanduser()

    def mask_path(self, sample_id: str) -> Path | None:
        """Where an external object mask for ``sample_id`` would be (``<masks>/<id>.png``)."""
        if self.mask_dir is None:
            return None
        return self.mask_dir / f"{sample_id}.png"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        sample = self.load(self.ids[index])
        return self.transform(sample) if self.transform is not None else sample

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def image_size(self, sample_id: str) -> tuple[int, int]:
        """``(H, W)`` of an image without decoding its pixels."""
        path = self.files(sample_id).image
        try:
            return image_size(path)
        except DataError as err:
            err.sample_id = sample_id
            raise

    def load(self, sample_id: str) -> Sample:
        """Read and check one sample.

        Raises:
            DataError: a missing or undecodable file, a label/mask whose size differs from the
                image, or label values outside ``0..C-1`` and the ignore index. The message names
                the file.
        """
        files = self.files(sample_id)
        try:
            image = self.read_sample_image(files, sample_id)
            label = None
            if files.label is not None:
                with _naming(files.label):
                    label = self.decode_label(self.read_label_file(files.label), sample_id)
                self._check_size(label, image, files.label)
                if self.validate:
                    self._check_label_range(label, files.label)
            mask = None
            ext = self.mask_path(sample_id)
            if ext is not None:
                if ext.is_file():
                    with _naming(ext):
                        mask = self.decode_mask(read_index_png(ext), sample_id)
                    self._check_size(mask, image, ext)
            elif files.mask is not None:
                with _naming(files.mask):
                    mask = self.decode_mask(read_index_png(files.mask), sample_id)
                self._check_size(mask, image, files.mask)
            elif label is not None:
                mask = self.object_mask_from_label(label)
        except DataError as err:
            if err.sample_id is None:
                err.sample_id = sample_id
            raise
        return Sample(id=sample_id, image=image, label=label, mask=mask)

    @staticmethod
    def _check_size(arr: np.ndarray, image: np.ndarray, path: Path) -> None:
        if arr.shape[:2] != image.shape[:2]:
            raise DataError(
                f"{path}: size {arr.shape[1]}x{arr.shape[0]} differs from its image "
                f"{image.shape[1]}x{image.shape[0]} (W x H); regenerate or resize the mask",
                path=str(path),
            )

    def _check_label_range(self, label: np.ndarray, path: Path) -> None:
        n, ignore = self.info.num_classes, self.info.ignore_index
        bad = (label < 0) | ((label >= n) & (label != ignore))
        if bad.any():
            values = np.unique(label[bad])[:10].tolist()
            raise DataError(
                f"{path}: label values {values} are outside 0..{n - 1} and the ignore value {ignore}",
                path=str(path),
            )

    def __repr__(self) -> str:
        masks = f", masks={self.mask_dir}" if self.mask_dir else ""
        return f"{type(self).__name__}(root={self.root}, split={self.split}, n={len(self)}{masks})"


DATASETS: dict[str, type[SegmentationDataset]] = {}


def register_dataset(name: str) -> Callable[[type[SegmentationDataset]], type[SegmentationDataset]]:
    """Class decorator: make a reader available to ``build_dataset`` and the CLIs as ``name``."""

    def deco(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
        if name in DATASETS:
            raise ValueError(f"dataset name '{name}' is registered twice")
        DATASETS[name] = cls
        return cls

    return deco


def build_dataset(name: str, root: str | Path, split: str | None = None, **kwargs: Any) -> SegmentationDataset:
    """Build a registered reader by name (``voc``, ``msrc``, ``pet``, ``coco128``, ``davis2016``,
    ``weizmann``, ``saliency_folder``, ``image_folder``)."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset '{name}'; choose one of {sorted(DATASETS)}") from None
    return cls(root, split, **kwargs)

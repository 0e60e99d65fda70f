"""Oxford-IIIT Pet with trimaps (the official layout; torchvision's ``OxfordIIITPet`` folder works too).

Layout::

    images/<name>.jpg
    annotations/trimaps/<name>.png      1 = pet, 2 = background, 3 = border (not classified)
    annotations/{trainval,test,list}.txt

Labels (``target``):

* ``"foreground"``: background 0, pet 1;
* ``"species"``: background 0, cat 1, dog 2;
* ``"breed"``: background 0, then the breeds present under ``images/`` in the official class
  order (alphabetical, case-insensitive).

The border becomes 255 (ignore). The object mask is the pet (trimap 1). Species and breed come
from the file name, as in the official release: ``<Breed>_<n>``, capitalised breeds are cats.
Splits: ``trainval`` and ``test`` (the official lists) and ``all`` (every image with a trimap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskcontrast.data.base import SampleFiles, SegmentationDataset, read_id_list, register_dataset
from maskcontrast.data.record import IGNORE_INDEX, DataError, DatasetInfo

__all__ = ["OxfordIIITPet", "pet_breed", "pet_species"]


def pet_breed(name: str) -> str:
    """``Abyssinian_12`` -> ``Abyssinian``."""
    return name.rsplit("_", 1)[0]


def pet_species(name: str) -> str:
    """Capitalised breed names are cats, lower-case ones dogs (the official convention)."""
    return "cat" if pet_breed(name)[:1].isupper() else "dog"


@register_dataset("pet")
class OxfordIIITPet(SegmentationDataset):
    splits = ("trainval", "test", "all")
    default_split = "all"

    def __init__(self, root, split=None, *, target: str = "foreground", **kwargs) -> None:
        if target not in ("foreground", "species", "breed"):
            raise ValueError(f"pet target must be foreground, species or breed, got {target!r}")
        self.target = target
        root_path = self._find(Path(root).expanduser())
        if target == "foreground":
            classes = ("background", "pet")
        elif target == "species":
            classes = ("background", "cat", "dog")
        else:
            breeds = sorted(
                {
                    pet_breed(p.stem)
                    for p in (root_path / "annotations" / "trimaps").glob("*.png")
                    if not p.name.startswith(".")
                },
                key=str.lower,
            )
            classes = ("background", *breeds)
        self.info = DatasetInfo(
            "pet",
            classes,
            (
                (0, 0, 0),
                (128, 0, 0),
                (0, 128, 0),
                *(((37 * i) % 256, (91 * i) % 256, (173 * i) % 256) for i in range(3, len(classes) + 1)),
            ),
        )
        self._class_index = {c: i for i, c in enumerate(classes)}
        super().__init__(root_path, split, **kwargs)

    @staticmethod
    def _find(root: Path) -> Path:
        for cand in (root, root / "oxford-iiit-pet", root / "oxford_iiit_pet"):
            if (cand / "annotations" / "trimaps").is_dir():
                return cand
        return root

    def _list_ids(self) -> list[str]:
        if self.split == "all":
            folder = self.root / "annotations" / "trimaps"
            if not folder.is_dir():
                raise DataError(f"trimap folder not found: {folder}", path=str(folder))
            return sorted(p.stem for p in folder.glob("*.png") if not p.name.startswith("."))
        return read_id_list(self.root / "annotations" / f"{self.split}.txt")

    def files(self, sample_id: str) -> SampleFiles:
        return SampleFiles(
            image=self.root / "images" / f"{sample_id}.jpg",
            label=self.root / "annotations" / "trimaps" / f"{sample_id}.png",
        )

    def class_of(self, sample_id: str) -> int:
        """The label value of this image's pet under the chosen ``target``."""
        if self.target == "foreground":
            return 1
        key = pet_species(sample_id) if self.target == "species" else pet_breed(sample_id)
        return self._class_index[key]

    def decode_label(self, raw: np.ndarray, sample_id: str) -> np.ndarray:
        if raw.max() > 3 or raw.min() < 1:
            raise DataError(
                f"{self.files(sample_id).label}: trimap values must be 1, 2 or 3, found {np.unique(raw)[:6].tolist()}"
            )
        lut = np.array([IGNORE_INDEX, self.class_of(sample_id), 0, IGNORE_INDEX], dtype=np.int64)
        return lut[raw]

    def object_mask_from_label(self, label: np.ndarray) -> np.ndarray:
        return ((label != 0) & (label != IGNORE_INDEX)).astype(np.uint8)

"""Every reader on the real copies under $MASKCONTRAST_DATA (counts and classes as in
shared/data/SOURCES.md), plus the readers' own error handling on small trees built here.

The full decode of every real image (label ranges, sizes) is in test_check.py::test_check_shared_real_sets_ok.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from maskcontrast.data import (
    DATASETS,
    DataError,
    ImageFolder,
    Sample,
    build_dataset,
    read_binary_mask,
    read_index_png,
    write_mask,
)
from maskcontrast.data.msrc import MSRC_RAW_CLASSES
from maskcontrast.data.pet import pet_breed, pet_species

data = pytest.mark.data


def _check_sample(s: Sample, num_classes: int, ignore: int = 255) -> None:
    assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
    if s.label is not None:
        assert s.label.dtype == np.int64 and s.label.shape == s.image.shape[:2]
        values = np.unique(s.label)
        assert ((values >= 0) & (values < num_classes) | (values == ignore)).all(), values
    if s.mask is not None:
        assert s.mask.dtype == np.uint8 and s.mask.shape == s.image.shape[:2]


def test_registry_has_every_reader():
    assert {"voc", "msrc", "pet", "coco128", "davis2016", "weizmann", "saliency_folder", "image_folder"} <= set(
        DATASETS
    )
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        build_dataset("nope", ".")


# -- MSRC -----------------------------------------------------------------------------------------


@data
def test_msrc_counts_and_classes(shared_root):
    ds = build_dataset("msrc", shared_root("msrc"))
    assert len(ds) == 443
    assert ds.info.num_classes == 21 and ds.info.background is None
    expected = [name for raw, name, _ in MSRC_RAW_CLASSES if raw not in (0, 5, 8)]
    assert list(ds.info.classes) == expected
    assert ds.info.classes[:3] == ("building", "grass", "tree") and ds.info.classes[-1] == "boat"
    # the raw class list shipped with the data agrees with the reader's table
    lines = [ln.split() for ln in (shared_root("msrc") / "classes.txt").read_text().splitlines() if ln[:1].isdigit()]
    assert [(int(ln[0]), ln[1]) for ln in lines] == [(raw, name) for raw, name, _ in MSRC_RAW_CLASSES]


@data
def test_msrc_mapping_horse_mountain_void_ignored(shared_root):
    root = shared_root("msrc")
    ds = build_dataset("msrc", root)
    # 1_23_s holds horse (5); 18_16_s holds mountain (8) (found by scanning the GT once)
    for sid, dropped in (("1_23_s", 5), ("18_16_s", 8)):
        raw = read_index_png(root / "GroundTruth" / f"{sid}_GT.png")
        s = ds.load(sid)
        _check_sample(s, 21)
        assert (raw == dropped).any()
        assert (s.label[raw == dropped] == 255).all()
        assert (s.label[raw == 0] == 255).all()
        for r, name, _ in MSRC_RAW_CLASSES:
            if r in (0, 5, 8) or not (raw == r).any():
                continue
            assert (s.label[raw == r] == ds.info.classes.index(name)).all()
    # protocol 23 keeps horse and mountain
    ds23 = build_dataset("msrc", root, protocol="23")
    assert ds23.info.num_classes == 23
    s = ds23.load("1_23_s")
    raw = read_index_png(root / "GroundTruth" / "1_23_s_GT.png")
    assert (s.label[raw == 5] == ds23.info.classes.index("horse")).all()
    with pytest.raises(ValueError, match="protocol"):
        build_dataset("msrc", root, protocol="22")


# -- Pet ------------------------------------------------------------------------------------------


@data
def test_pet_counts_targets_and_trimap_mapping(shared_root):
    root = shared_root("pet")
    fg = build_dataset("pet", root)
    assert len(fg) == 449 and fg.info.classes == ("background", "pet")
    trainval, test = build_dataset("pet", root, "trainval"), build_dataset("pet", root, "test")
    assert set(trainval.ids).isdisjoint(test.ids)
    assert set(trainval.ids) | set(test.ids) <= set(fg.ids)
    sid = "american_bulldog_10"
    trimap = read_index_png(root / "annotations" / "trimaps" / f"{sid}.png")
    s = fg.load(sid)
    _check_sample(s, 2)
    assert (s.label[trimap == 1] == 1).all() and (s.label[trimap == 2] == 0).all()
    assert (s.label[trimap == 3] == 255).all()
    assert np.array_equal(s.mask, (trimap == 1).astype(np.uint8))

    species = build_dataset("pet", root, target="species", ids=[sid, "Bengal_58"])
    assert species.info.classes == ("background", "cat", "dog")
    assert set(np.unique(species.load(sid).label).tolist()) == {0, 2, 255}  # a dog
    assert set(np.unique(species.load("Bengal_58").label).tolist()) <= {0, 1, 255}  # a cat
    assert 1 in species.load("Bengal_58").label

    breed = build_dataset("pet", root, target="breed")
    assert breed.info.classes == ("background", "Abyssinian", "american_bulldog", "Bengal")
    assert 2 in breed.load(sid).label and 3 in breed.load("Bengal_58").label
    # breed order agrees with the official class ids of list.txt (alphabetical, case-insensitive)
    official = {}
    for line in (root / "annotations" / "list.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, class_id, species_id, _ = line.split()
            official[pet_breed(name)] = int(class_id)
            assert pet_species(name) == ("cat" if species_id == "1" else "dog")
    assert sorted(official, key=official.get) == list(breed.info.classes[1:])
    with pytest.raises(ValueError, match="target"):
        build_dataset("pet", root, target="colour")


@data
def test_pet_rgba_file_with_jpg_name(shared_root):
    # Abyssinian_5.jpg is really an RGBA PNG in the official release
    s = build_dataset("pet", shared_root("pet"), ids=["Abyssinian_5"])[0]
    _check_sample(s, 2)
    assert s.image.shape[:2] == s.label.shape


# -- coco128, DAVIS, Weizmann, SOD -----------------------------------------------------------------


@data
def test_coco128(shared_root):
    root = shared_root("coco128")
    ds = build_dataset("coco128", root)
    assert len(ds) == 94
    assert ds.info.num_classes == 81 and ds.info.classes[:3] == ("background", "person", "bicycle")
    assert ds.info.classes[-1] == "toothbrush"
    s = ds[0]
    _check_sample(s, 81)
    raw = read_index_png(root / "masks" / "train2017" / f"{s.id}.png")
    assert np.array_equal(s.label, raw.astype(np.int64))
    assert np.array_equal(s.mask, (raw > 0).astype(np.uint8))


@data
def test_davis2016(shared_root):
    ds = build_dataset("davis2016", shared_root("davis2016"))
    assert len(ds) == 100
    assert len({i.split("/")[0] for i in ds.ids}) == 15
    assert ds.ids[0] == "bmx-trees/00000"
    s = ds[0]
    _check_sample(s, 2)
    assert s.image.shape == (480, 854, 3)
    assert set(np.unique(s.label).tolist()) == {0, 1} and np.array_equal(s.mask, s.label.astype(np.uint8))


@data
def test_weizmann_rgb_resized_to_mask(shared_root):
    root = shared_root("weizmann")
    ds = build_dataset("weizmann", root)
    assert len(ds) == 246 and ds.info.classes == ("background", "horse")
    sid = ds.ids[0]
    db = root / "weizmann_horse_db"
    rgb_size = Image.open(db / "rgb" / f"{sid}.jpg").size
    mask_size = Image.open(db / "figure_ground" / f"{sid}.jpg").size
    assert rgb_size != mask_size  # the release stores them at different scales
    s = ds.load(sid)
    _check_sample(s, 2)
    assert s.image.shape[:2] == (mask_size[1], mask_size[0]) == ds.image_size(sid)
    assert np.array_equal(s.label, read_binary_mask(db / "figure_ground" / f"{sid}.jpg").astype(np.int64))
    # resized, not cropped: the gray image (stored at the mask's scale) matches the resized colour one
    gray = np.asarray(Image.open(db / "gray" / f"{sid}.jpg").convert("L"), dtype=float)
    lum = s.image.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.corrcoef(gray.ravel(), lum.ravel())[0, 1] > 0.9


@data
def test_sod_saliency_folder(shared_root):
    root = shared_root("sod")
    ds = build_dataset("saliency_folder", root)
    assert len(ds) == 225 and ds.info.classes == ("background", "foreground")
    assert ds.ids == sorted((root / "ids.txt").read_text().split())
    s = ds[0]
    _check_sample(s, 2)
    assert set(np.unique(s.label).tolist()) == {0, 1}


@data
def test_image_folder_on_real_images(shared_root, tmp_path):
    ds = ImageFolder(shared_root("sod") / "images")
    assert len(ds) == 225 and ds.info.num_classes == 0
    s = ds[0]
    assert s.label is None and s.mask is None and s.image.dtype == np.uint8
    # object masks from a folder: <DIR>/<id>.png, an id without a file gets mask=None
    h, w = s.size
    m = np.zeros((h, w), np.uint8)
    m[: h // 2] = 255
    Image.fromarray(m).save(tmp_path / f"{ds.ids[0]}.png")
    with_masks = ImageFolder(shared_root("sod") / "images", masks=tmp_path, ids=ds.ids[:2])
    assert np.array_equal(with_masks[0].mask, (m > 0).astype(np.uint8))
    assert with_masks[1].mask is None


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["msrc", "pet", "coco128", "davis2016", "weizmann", "saliency_folder", "image_folder", "voc"]
)
def test_reader_on_empty_folder_says_so(tmp_path, name):
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError) as err:
        build_dataset(name, root)
    assert f"{root} is empty" in str(err.value)


def test_reader_on_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder not found.*missing"):
        build_dataset("msrc", tmp_path / "missing")


def _tiny_saliency(tmp_path, n=3):
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "images" / f"im{i}.jpg")
        Image.fromarray(((rng.random((20, 30)) > 0.5) * 255).astype(np.uint8)).save(tmp_path / "masks" / f"im{i}.png")
    return tmp_path


def test_size_mismatch_names_the_file(tmp_path):
    root = _tiny_saliency(tmp_path)
    Image.fromarray(np.zeros((10, 30), np.uint8)).save(root / "masks" / "im1.png")
    ds = build_dataset("saliency_folder", root)
    ds.load("im0")
    with pytest.raises(DataError, match=r"im1\.png: size 30x10 differs from its image 30x20") as err:
        ds.load("im1")
    assert err.value.sample_id == "im1"


def test_external_mask_size_mismatch_and_values(tmp_path):
    root = _tiny_saliency(tmp_path / "ds")
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8) + 2).save(masks / "im0.png")  # object ids 0..n kept
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "im1.png")
    ds = build_dataset("saliency_folder", root, masks=masks)
    assert (ds.load("im0").mask == 2).all()
    with pytest.raises(DataError, match=r"masks/im1\.png: size 5x5"):
        ds.load("im1")
    assert ds.load("im2").mask is None
    with pytest.raises(DataError, match="mask folder not found"):
        build_dataset("saliency_folder", root, masks=tmp_path / "nowhere")


def test_ids_subset_and_unknown_ids(tmp_path):
    root = _tiny_saliency(tmp_path)
    (tmp_path / "subset.txt").write_text("# a comment\nim2\n\nim0\n")
    ds = build_dataset("saliency_folder", root, ids=tmp_path / "subset.txt")
    assert ds.ids == ["im2", "im0"]
    with pytest.raises(DataError, match=r"not in .*\['im9'\]"):
        build_dataset("saliency_folder", root, ids=["im0", "im9"])


@data
def test_missing_split_list_names_the_file(shared_root, tmp_path):
    with pytest.raises(DataError, match=r"split list not found: .*ImageSets/480p/train\.txt"):
        build_dataset("davis2016", shared_root("davis2016"), "train")
    with pytest.raises(DataError, match="unknown split 'nope'"):
        build_dataset("msrc", shared_root("msrc"), "nope")


@data
def test_corrupt_label_names_the_file(shared_root, tmp_path):
    src = shared_root("msrc")
    (tmp_path / "Images").mkdir()
    (tmp_path / "GroundTruth").mkdir()
    shutil.copy(src / "Images" / "1_1_s.png", tmp_path / "Images")
    gt = (src / "GroundTruth" / "1_1_s_GT.png").read_bytes()
    (tmp_path / "GroundTruth" / "1_1_s_GT.png").write_bytes(gt[: len(gt) // 3])
    with pytest.raises(DataError, match=r"1_1_s_GT\.png: cannot decode"):
        build_dataset("msrc", tmp_path).load("1_1_s")


def test_stray_label_value_names_the_file(tmp_path):
    (tmp_path / "images" / "train2017").mkdir(parents=True)
    (tmp_path / "masks" / "train2017").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("# yolo_id mask_value name\n0 1 person\n1 2 bicycle\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "train2017" / "a.jpg")
    lab = np.zeros((8, 8), np.uint8)
    lab[0, 0] = 7
    Image.fromarray(lab).save(tmp_path / "masks" / "train2017" / "a.png")
    ds = build_dataset("coco128", tmp_path)
    assert ds.info.classes == ("background", "person", "bicycle")
    with pytest.raises(DataError, match=r"a\.png: label values \[7\] are outside 0..2"):
        ds.load("a")
    assert build_dataset("coco128", tmp_path, validate=False).load("a").label[0, 0] == 7


def test_bad_object_mask_values_name_the_file(tmp_path):
    root = _tiny_saliency(tmp_path / "ds")
    masks = tmp_path / "masks"
    bad = np.zeros((20, 30), np.uint8)
    bad[0, :3] = (255, 7, 1)  # 255 beside other values: neither 0/255 nor object ids
    write_mask(masks / "im0.png", bad)
    with pytest.raises(DataError, match=r"masks/im0\.png: object mask has value 255") as err:
        build_dataset("saliency_folder", root, masks=masks).load("im0")
    assert err.value.path == str(masks / "im0.png") and err.value.sample_id == "im0"

"""eval.stream: the one "no ground-truth label" error of the evaluations."""

from types import SimpleNamespace

import numpy as np
import pytest

from eval.stream import require_label
from maskcontrast.data import DataError


class Files:
    def __init__(self, label):
        self.label = label


class Dataset:
    def files(self, sample_id):
        return Files(f"/data/labels/{sample_id}.png")


def test_require_label_returns_the_label():
    label = np.zeros((2, 3), np.int64)
    assert require_label(SimpleNamespace(id="a", label=label), "the evaluation") is label


@pytest.mark.parametrize(
    "purpose,ds,expected",
    [
        (
            "the evaluation",
            Dataset(),
            "/data/labels/x/1.png: no ground-truth label; the evaluation needs labelled images",
        ),
        ("the few-shot evaluation", Dataset(), "the few-shot evaluation needs labelled images"),
        ("the linear probe", None, "x/1: no ground-truth label; the linear probe needs labelled images"),
    ],
)
def test_require_label_names_the_file_and_who_needs_it(purpose, ds, expected):
    with pytest.raises(DataError, match=expected.replace(".", r"\.")) as err:
        require_label(SimpleNamespace(id="x/1", label=None), purpose, ds)
    assert err.value.sample_id == "x/1"


# ---------------------------------------------------------------------------------------------------
# Images whose network input would be too large


def _folder_with_a_strip(tmp_path):
    from PIL import Image

    from maskcontrast.data import build_dataset

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((4, 200, 3), 100, np.uint8)).save(folder / "b_strip.png")
    Image.fromarray(np.full((16, 20, 3), 100, np.uint8)).save(folder / "c.png")
    return folder, build_dataset("image_folder", folder)


@pytest.fixture
def small_input_limit(monkeypatch):
    from maskcontrast import images

    monkeypatch.setattr(images, "MAX_INPUT_PIXELS", 32 * 32 * 2)  # 32 x 1,600 for the strip at size 32


def _model():
    from maskcontrast.api import FeatureModel
    from maskcontrast.models import ResNetBackbone

    return FeatureModel(ResNetBackbone("resnet18", output_stride=8), size=32)


def test_readable_outputs_skip_an_image_too_large_for_the_model_by_name(tmp_path, small_input_limit):
    from eval.stream import Unreadable, iter_readable_outputs

    folder, ds = _folder_with_a_strip(tmp_path)
    rows = list(iter_readable_outputs(_model(), ds, start=0, workers=0, desc="t", progress=False))
    assert [type(s).__name__ for _, s, _ in rows] == ["Sample", "Unreadable", "Sample"]
    _, strip, out = rows[1]
    assert isinstance(strip, Unreadable) and out is None and strip.id == "b_strip"
    assert strip.reason.startswith(f"{folder / 'b_strip.png'}: the image (4 x 200) resized to shorter side 32")
    assert all(o is not None for _, s, o in rows if not isinstance(s, Unreadable))
    # an earlier pass's skips are kept by a pass that runs no model
    rows = list(
        iter_readable_outputs(None, ds, start=0, workers=0, desc="t", progress=False, skip={"b_strip": "too large"})
    )
    assert [(s.id, s.reason) for _, s, _ in rows if isinstance(s, Unreadable)] == [("b_strip", "too large")]


def test_model_outputs_refuse_an_image_too_large_for_the_model_by_name(tmp_path, small_input_limit):
    from eval.stream import iter_model_outputs

    _, ds = _folder_with_a_strip(tmp_path)
    with pytest.raises(DataError, match=r"b_strip\.png: the image \(4 x 200\) .* over the limit of 2,048"):
        list(iter_model_outputs(_model(), ds, progress=False))

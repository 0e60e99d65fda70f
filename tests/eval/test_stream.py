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

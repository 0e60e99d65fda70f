import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from eval.metrics import boundary_f_measure, boundary_map, region_similarity
from eval.propagation import (
    LabelPropagator,
    frame_step,
    group_sequences,
    labels_to_grid,
    main,
    propagate_frame,
)

# -- J and F against values worked out by hand ---------------------------------------------------


def test_region_similarity_by_hand():
    pred = np.zeros((5, 5), bool)
    pred[0:3, 0:3] = True  # 9 px
    gt = np.zeros((5, 5), bool)
    gt[1:4, 1:4] = True  # 9 px, 4 shared
    assert region_similarity(pred, gt) == pytest.approx(4 / 14)
    void = np.zeros((5, 5), bool)
    void[:, 0] = True  # pred loses 3 px: 6 px, gt 9 px, 4 shared -> 4 / 11
    assert region_similarity(pred, gt, void) == pytest.approx(4 / 11)
    assert region_similarity(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_boundary_map_by_hand():
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    want = {(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)}
    assert {tuple(p) for p in np.argwhere(boundary_map(m))} == want


def test_boundary_f_measure_by_hand():
    # gt: columns 0..2 of a 6 x 8 image -> boundary = column 2 (6 px)
    gt = np.zeros((6, 8), bool)
    gt[:, :3] = True
    # pred: columns 0..2 in rows 0..2, columns 0..4 in rows 3..5 -> boundary
    # (0,2) (1,2) (2,2) (2,3) (2,4) (3,4) (4,4) (5,4): 8 px
    pred = gt.copy()
    pred[3:, 3:5] = True
    assert boundary_map(pred).sum() == 8
    # tolerance 1 px: precision 4/8 ((0..2, 2) and (2, 3)), recall 4/6 ((0..3, 2)) -> F = 4/7
    assert boundary_f_measure(pred, gt, bound_th=1) == pytest.approx(4 / 7)
    # 0.008 of the diagonal (10 px) rounds up to the same 1 px
    assert boundary_f_measure(pred, gt) == pytest.approx(4 / 7)
    # tolerance 2 px: every boundary pixel has a partner -> F = 1
    assert boundary_f_measure(pred, gt, bound_th=2) == pytest.approx(1.0)
    # a boundary 2 px away with a 1 px tolerance matches nowhere
    shifted = np.zeros((6, 8), bool)
    shifted[:, :5] = True
    assert boundary_f_measure(shifted, gt, bound_th=1) == 0.0
    empty = np.zeros((6, 8), bool)
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(empty, gt) == 0.0 and boundary_f_measure(gt, empty) == 0.0


# -- propagation math ----------------------------------------------------------------------------


def test_propagate_frame_by_hand():
    # one row of 3 cells; keys (1, 0), (0, 1), (0.6, 0.8); labels [bg, fg] = fg, bg, bg... as one-hot
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]).T.reshape(2, 1, 3)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]).T.reshape(2, 1, 3)
    query = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]).T.reshape(2, 1, 3)
    out = propagate_frame(query, [keys], [labels], topk=2, temperature=0.1, radius=0)
    # top-2 cosines 1 (cell 0, bg) and 0.6 (cell 2, fg): fg weight = e^6 / (e^10 + e^6) = 1 / (1 + e^4)
    fg = 1 / (1 + math.exp(4))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1 - fg, fg]))
    # radius 1: cell 0 sees cells 0 and 1 only (cosines 1 and 0): fg weight 1 / (1 + e^10)
    near = propagate_frame(query, [keys], [labels], topk=2, temperature=0.1, radius=1)
    torch.testing.assert_close(near[1, 0, 0], torch.tensor(1 / (1 + math.exp(10))))
    # top-1 copies the label of the most similar cell; two context frames share one top-k
    torch.testing.assert_close(
        propagate_frame(query, [keys], [labels], topk=1, radius=0)[:, 0], labels[:, 0, [0, 0, 0]]
    )
    other = torch.tensor([[0.0, 1.0]] * 3).T.reshape(2, 1, 3)
    two = propagate_frame(query, [other, keys], [1 - labels, labels], topk=1, radius=0)
    torch.testing.assert_close(two[:, 0], labels[:, 0, [0, 0, 0]])


def test_labels_to_grid_and_propagator_queue():
    lab = np.zeros((8, 8), np.int64)
    lab[:4, :2] = 1
    grid = labels_to_grid(lab, 2, (2, 2))
    torch.testing.assert_close(grid[1], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(grid.sum(0), torch.ones(2, 2))
    desc = torch.nn.functional.normalize(torch.randn(4, 2, 2), dim=0)
    prop = LabelPropagator(desc, grid, n_last=2, topk=1)
    for _ in range(4):
        torch.testing.assert_close(prop.step(desc), grid)  # a static frame keeps its labels
    assert len(prop.recent) == 2
    with pytest.raises(ValueError, match="same size"):
        prop.step(torch.randn(4, 3, 2))


def test_sequences_and_frame_step():
    seqs = group_sequences(["b/00010", "a/00020", "b/00000", "a/00000", "a/00010"])
    assert seqs == {"b": ["b/00000", "b/00010"], "a": ["a/00000", "a/00010", "a/00020"]}
    assert frame_step(seqs) == 10
    assert frame_step({"a": ["a/00000", "a/00001"]}) == 1
    with pytest.raises(ValueError, match=r"\['c'\] have a single frame"):
        group_sequences(["a/00000", "a/00010", "c/00000"])
    with pytest.raises(ValueError, match="not <sequence>/<frame>"):
        group_sequences(["img1"])


# -- end to end on a DAVIS-layout folder ---------------------------------------------------------


def _davis(root, frames, seqs=("static",), hw=(64, 96)):
    rng = np.random.default_rng(0)
    base = root / "DAVIS"
    lines = []
    for seq in seqs:
        image = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)  # texture: no two cells alike
        mask = np.zeros(hw, np.uint8)
        # a band aligned with the 8-px feature grid: upsampling its grid labels bilinearly gives it back
        # exactly (a rectangle would lose its corner pixels, where the two blends multiply)
        mask[16:40, :] = 255
        for f in frames:
            (base / "JPEGImages" / "480p" / seq).mkdir(parents=True, exist_ok=True)
            (base / "Annotations" / "480p" / seq).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(base / "JPEGImages" / "480p" / seq / f"{f:05d}.jpg", quality=95)
            Image.fromarray(mask).save(base / "Annotations" / "480p" / seq / f"{f:05d}.png")
            lines.append(f"/JPEGImages/480p/{seq}/{f:05d}.jpg /Annotations/480p/{seq}/{f:05d}.png")
    (base / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "480p" / "val.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tv_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "resnet18_random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_static_sequence_gives_j_1(tmp_path, tv_ckpt):
    root = _davis(tmp_path / "data", frames=(0, 10, 20, 30))
    out = tmp_path / "davis.json"
    args = [
        "--checkpoint",
        str(tv_ckpt),
        "--dataset",
        "davis2016",
        "--root",
        str(root),
        "--workers",
        "0",
        "--no-progress",
        "--topk",
        "1",
        "--json",
        str(out),
        "--vis",
        "1",
    ]
    result = main(args)
    data = json.loads(out.read_text())
    for key in ("j_mean", "f_mean", "jf_mean", "per_sequence", "n_frames", "frame_step", "frame_note"):
        assert key in data
    assert data["j_mean"] == 1.0 and data["f_mean"] == 1.0 and data["jf_mean"] == 1.0
    assert data["n_frames"] == 4 and data["n_scored"] == 3 and data["frame_step"] == 10
    assert "every 10th frame" in data["frame_note"]
    assert data["per_sequence"]["static"]["frames"] == ["00010", "00020", "00030"]
    assert result["layout"] == "torchvision" and result["protocol"]["what"] == "features"
    assert len(list((tmp_path / "davis_vis").glob("*.png"))) == 4
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(args)
    # the default settings (top-5 over the first and up to 7 previous frames) stay close
    default = main([*args[:-6], "--exclude-last"])
    assert default["n_scored"] == 2 and default["j_mean"] > 0.9


def test_a_sequence_of_one_frame_is_a_clear_error(tmp_path, tv_ckpt):
    root = _davis(tmp_path / "data", frames=(0,), seqs=("one",))
    with pytest.raises(ValueError, match="single frame"):
        main(
            [
                "--checkpoint",
                str(tv_ckpt),
                "--dataset",
                "davis2016",
                "--root",
                str(root),
                "--workers",
                "0",
                "--no-progress",
            ]
        )


@pytest.mark.data
def test_cli_on_shared_davis(shared_root, maskcontrast_ckpt, tmp_path):
    root = shared_root("davis2016")
    result = main(
        [
            "--checkpoint",
            str(maskcontrast_ckpt),
            "--dataset",
            "davis2016",
            "--root",
            str(root),
            "--sequences",
            "car-shadow",
            "--size",
            "96",
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    assert result["frame_step"] == 10 and result["n_sequences"] == 1 and result["n_frames"] == 4
    assert 0.0 <= result["jf_mean"] <= 1.0 and result["protocol"]["what"] == "embed"

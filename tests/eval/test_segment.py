"""eval.segment: a folder of synthetic images (red squares and striped discs on grey noise),
written by the tests. The clustering tests use a colour model (its embedding is the pixels' mean
colour, its saliency their saturation), so that "two obviously different kinds of object" are
different for the model too; the plumbing tests use a real (random) ResNet-18 checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval.segment.cli as seg
from eval.segment import Clusters, ClustersError, fit_clusters, main, segment_images
from maskcontrast import images as images_module
from maskcontrast.api import FeatureOutput
from maskcontrast.data import read_image, read_index_png
from maskcontrast.runs import RunFolderError


def make_folder(folder: Path, n: int = 12, size: int = 48, seed: int = 0) -> dict[str, int]:
    """``n`` images, alternately a red square and a blue/cyan striped disc on grey noise, and their
    object masks in ``<folder>/../masks``. Returns ``{id: kind}``."""
    rng = np.random.default_rng(seed)
    masks = folder.parent / "masks"
    folder.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    kinds = {}
    for i in range(n):
        kind = i % 2
        im = rng.integers(90, 140, (size, size + 8, 3)).astype(np.uint8)
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        r = int(rng.integers(size // 6, size // 4))
        yy, xx = np.mgrid[:size, : size + 8]
        if kind == 0:
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            im[m] = (230, 30, 30)
        else:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            stripes = (xx // 3) % 2 == 0
            im[m & stripes] = (20, 60, 230)
            im[m & ~stripes] = (20, 200, 200)
        name = f"{'square' if kind == 0 else 'disc'}_{i:02d}"
        Image.fromarray(im).save(folder / f"{name}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(masks / f"{name}.png")
        kinds[name] = kind
    return kinds


class ColourModel:
    """Duck-typed FeatureModel: embedding = the centred mean colour of 4 x 4 cells (+ a constant),
    saliency logits = 40 * (saturation - 0.3)."""

    embed_dim = 4
    has_saliency = True
    batch_size = 4
    stride = 4
    device = torch.device("cpu")
    kind = layout = source = "colour"

    def __init__(self, size=None, digest: str = "colour-model") -> None:
        self.size = size
        self.weights_digest = digest

    def run(self, images, *, size=None):
        for i, im in enumerate(images):
            arr = read_image(im) if isinstance(im, (str, Path)) else np.asarray(im)
            t = torch.from_numpy(arr).permute(2, 0, 1).float()[None] / 255
            cells = F.avg_pool2d(t, 4, ceil_mode=True)
            sat = cells.amax(1, keepdim=True) - cells.amin(1, keepdim=True)
            emb = torch.cat([cells - cells.mean(1, keepdim=True), torch.full_like(sat, 0.1)], 1)
            yield i, FeatureOutput(emb, emb, 40 * (sat - 0.3)), (arr.shape[0], arr.shape[1])


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "photos" / "images"
    return images, make_folder(images)


@pytest.fixture
def colour(monkeypatch):
    """eval.segment loads the colour model whatever --checkpoint says."""
    made = {}

    def load(args, size):
        made["model"] = ColourModel(size, digest=getattr(args, "_digest", "colour-model"))
        return made["model"]

    monkeypatch.setattr(seg, "_load_any_model", load)
    return made


def run(ckpt, images, out, *extra):
    return main(
        [
            "--checkpoint",
            str(ckpt),
            "--images",
            str(images),
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
            "--size",
            "48",
            *extra,
        ]
    )


def clusters_of(summary):
    return {im["id"]: im["clusters"] for im in summary["images"]}


def test_two_kinds_of_object_give_two_clusters(folder, colour, maskcontrast_ckpt, tmp_path):
    images, kinds = folder
    out = tmp_path / "seg"
    summary = run(maskcontrast_ckpt, images, out, "--k", "2")
    found = clusters_of(summary)
    assert all(len(v) == 1 for v in found.values())
    by_kind = {kind: {found[i][0] for i, kk in kinds.items() if kk == kind} for kind in (0, 1)}
    assert len(by_kind[0]) == 1 and len(by_kind[1]) == 1 and by_kind[0] != by_kind[1]
    # label PNGs: palette mode, the image's size, 0 outside the object and the cluster inside it
    for name in kinds:
        png = Image.open(out / "labels" / f"{name}.png")
        assert png.mode == "P" and png.size == Image.open(images / f"{name}.png").size
        lab = read_index_png(out / "labels" / f"{name}.png")
        mask = read_index_png(images.parent / "masks" / f"{name}.png") > 0
        assert set(np.unique(lab)) == {0, found[name][0]}
        assert (lab[mask] > 0).mean() > 0.8 and (lab[~mask] == 0).mean() > 0.95
        assert Image.open(out / "overlays" / f"{name}.jpg").size == png.size
    # the pixel protocol separates them too (3 clusters: background, squares, discs)
    pix = run(maskcontrast_ckpt, images, tmp_path / "pix", "--k", "3", "--protocol", "pixel", "--fit-pixels", "3000")
    majority = {}
    for name, kind in kinds.items():
        lab = read_index_png(tmp_path / "pix" / "labels" / f"{name}.png")
        mask = read_index_png(images.parent / "masks" / f"{name}.png") > 0
        majority.setdefault(kind, set()).add(int(np.bincount(lab[mask]).argmax()))
        majority.setdefault("bg", set()).add(int(np.bincount(lab[~mask]).argmax()))
    assert all(len(v) == 1 for v in majority.values()) and len(set.union(*majority.values())) == 3
    assert pix["protocol"] == "pixel"


def test_saved_clusters_give_identical_labels_and_api_agrees(folder, colour, maskcontrast_ckpt, tmp_path):
    images, kinds = folder
    run(maskcontrast_ckpt, images, tmp_path / "a", "--k", "2")
    saved = tmp_path / "a" / "clusters.pt"
    state = torch.load(saved, weights_only=True)
    assert state["protocol"] == "prototype" and state["k"] == 2 and state["size"] == [48]
    assert state["model_id"] == "colour-model" and tuple(state["centroids"].shape) == (2, 4)
    run(maskcontrast_ckpt, images, tmp_path / "b", "--clusters", str(saved))
    for name in kinds:
        np.testing.assert_array_equal(
            read_index_png(tmp_path / "a" / "labels" / f"{name}.png"),
            read_index_png(tmp_path / "b" / "labels" / f"{name}.png"),
        )
    # the Python API gives the CLI's clustering and labels
    model = ColourModel(48)
    paths = sorted(images.glob("*.png"))
    clusters = fit_clusters(model, paths, 2)
    np.testing.assert_allclose(clusters.centroids, state["centroids"].numpy(), atol=1e-5)
    labels = segment_images(model, paths, Clusters.load(saved))
    assert labels.shape == (len(paths), 48, 56) and labels.dtype == torch.int64
    for p, lab in zip(paths, labels):
        np.testing.assert_array_equal(lab.numpy(), read_index_png(tmp_path / "a" / "labels" / p.name))


def test_page_lists_every_image_and_cluster(folder, colour, maskcontrast_ckpt, tmp_path):
    images, kinds = folder
    out = tmp_path / "seg"
    run(maskcontrast_ckpt, images, out, "--k", "3", "--sheet-size", "2")
    page = (out / "index.html").read_text()
    for name in kinds:
        assert f'href="overlays/{name}.jpg"' in page and (out / "overlays" / f"{name}.jpg").is_file()
    for c in (1, 2, 3):
        assert f'id="c{c}"' in page
        assert f'src="sheets/cluster_{c:03d}.jpg"' in page and (out / "sheets" / f"cluster_{c:03d}.jpg").is_file()
    # offline: no script, no external resource
    assert "<script" not in page and not re.search(r"(src|href)=\"(https?:)?//", page) and "@import" not in page
    summary = json.loads((out / "segment.json").read_text())
    assert sum(c["segments"] for c in summary["clusters"]) == len(kinds)
    # most typical first: distances increase along each cluster's members
    sheet = Image.open(out / "sheets" / "cluster_001.jpg")
    assert sheet.size[0] == 2 * 96 + 3 * 4


def test_resume_and_refuse_overwrite(folder, colour, maskcontrast_ckpt, tmp_path):
    images, kinds = folder
    out = tmp_path / "seg"
    first = run(maskcontrast_ckpt, images, out, "--k", "2", "--save-every", "3")
    with pytest.raises(RunFolderError, match="--overwrite"):
        run(maskcontrast_ckpt, images, out, "--k", "2")
    # an interruption after 6 images of the labelling pass: the rerun continues from there
    (out / "segment.json").unlink()
    with pytest.raises(ValueError, match="other settings"):
        run(maskcontrast_ckpt, images, out, "--k", "3")
    cache = out / "cache" / "assign.pt"
    data = torch.load(cache, weights_only=True)
    data["done"] = 6
    data["state"]["records"] = data["state"]["records"][:6]
    torch.save(data, cache)
    for p in sorted((out / "labels").glob("*.png"))[6:]:
        p.unlink()
    again = run(maskcontrast_ckpt, images, out, "--k", "2")
    assert clusters_of(again) == clusters_of(first)
    assert len(list((out / "labels").glob("*.png"))) == len(kinds)
    fresh = run(maskcontrast_ckpt, images, out, "--k", "3", "--overwrite")
    assert fresh["k"] == 3


@pytest.mark.parametrize("in_pass", ["fit", "label"])
def test_sigterm_saves_the_pass_and_the_rerun_equals_an_uninterrupted_run(
    folder, colour, maskcontrast_ckpt, tmp_path, in_pass
):
    import os
    import signal

    import eval.segment.passes as passes
    from maskcontrast.preemption import Preempted

    images, kinds = folder
    whole = run(maskcontrast_ckpt, images, tmp_path / "whole", "--k", "2")
    calls = {"n": 0}

    def signal_at_the_fifth(fn):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            return fn(*args, **kwargs)

        return wrapped

    out = tmp_path / "seg"
    with pytest.MonkeyPatch.context() as mp:
        if in_pass == "fit":  # the 5th image through the network
            mp.setattr(passes, "fit_points", signal_at_the_fifth(passes.fit_points))
        else:  # the 5th image labelled (from the fit pass's cache: the network does not run again)
            mp.setattr(passes, "label_prototype", signal_at_the_fifth(passes.label_prototype))
        with pytest.raises(Preempted) as info:
            run(maskcontrast_ckpt, images, out, "--k", "2")
    assert info.value.code == 143 and "progress saved in" in str(info.value)
    assert not (out / "segment.json").exists()
    again = run(maskcontrast_ckpt, images, out, "--k", "2")
    assert clusters_of(again) == clusters_of(whole) and again["n_segmented"] == len(kinds)
    for name in kinds:
        np.testing.assert_array_equal(
            read_index_png(out / "labels" / f"{name}.png"),
            read_index_png(tmp_path / "whole" / "labels" / f"{name}.png"),
        )


def test_bad_input(folder, colour, maskcontrast_ckpt, tmp_path):
    images, kinds = folder
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"--images .*empty: no images"):
        run(maskcontrast_ckpt, empty, tmp_path / "o1", "--k", "2")
    with pytest.raises(ValueError, match=r"--k must lie in 1\.\.255"):
        main(
            [
                "--checkpoint",
                str(tmp_path / "missing.pt"),
                "--images",
                str(images),
                "--k",
                "0",
                "--out",
                str(tmp_path / "o2"),
            ]
        )
    assert not (tmp_path / "o2").exists()
    with pytest.raises(ValueError, match=r"--k 20 is more than the 12 object prototypes"):
        run(maskcontrast_ckpt, images, tmp_path / "o3", "--k", "20")
    # an unreadable image is skipped and named
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    summary = run(maskcontrast_ckpt, images, tmp_path / "o4", "--k", "2")
    assert list(summary["skipped"]) == ["broken"] and "cannot decode" in summary["skipped"]["broken"]
    assert "broken" in (tmp_path / "o4" / "index.html").read_text() and summary["n_segmented"] == len(kinds)
    (images / "broken.jpg").unlink()
    # so is an image whose network input would be over MASKCONTRAST_MAX_INPUT_PIXELS (a thin strip
    # at --size 48 would be 48 x 4,800), in both passes (fit and label)
    Image.fromarray(np.full((4, 400, 3), 128, np.uint8)).save(images / "strip.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images_module, "MAX_INPUT_PIXELS", 48 * 4800 - 1)
        summary = run(maskcontrast_ckpt, images, tmp_path / "o6", "--k", "2")
    assert list(summary["skipped"]) == ["strip"] and summary["n_segmented"] == len(kinds)
    assert summary["skipped"]["strip"].startswith(f"{images / 'strip.png'}: the image (4 x 400) resized to")
    assert not (tmp_path / "o6" / "labels" / "strip.png").exists()
    (images / "strip.png").unlink()
    # clusters fitted at another size, or with another model
    saved = tmp_path / "o4" / "clusters.pt"
    with pytest.raises(ClustersError, match=r"input size shorter side 48.*--size 48"):
        main(
            [
                "--checkpoint",
                str(maskcontrast_ckpt),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "o5"),
                "--clusters",
                str(saved),
                "--size",
                "64",
                "--workers",
                "0",
            ]
        )
    other = ColourModel([48], digest="another-model")
    with pytest.raises(ClustersError, match="another checkpoint"):
        Clusters.load(saved).check(other, "--clusters clusters.pt")
    with pytest.raises(ClustersError, match="not a clustering"):
        torch.save({"a": 1}, tmp_path / "junk.pt")
        Clusters.load(tmp_path / "junk.pt")


def test_masks_folder_source(folder, colour, maskcontrast_ckpt, tmp_path):
    images, kinds = folder
    masks = images.parent / "masks"
    summary = run(
        maskcontrast_ckpt, images, tmp_path / "m", "--k", "2", "--saliency-source", "folder", "--masks", str(masks)
    )
    assert summary["saliency_source"] == "folder"
    name = next(iter(kinds))
    lab = read_index_png(tmp_path / "m" / "labels" / f"{name}.png")
    np.testing.assert_array_equal(lab > 0, read_index_png(masks / f"{name}.png") > 0)
    (masks / f"{name}.png").unlink()
    with pytest.raises(ValueError, match="1 of 12 images have no mask"):
        run(
            maskcontrast_ckpt, images, tmp_path / "m2", "--k", "2", "--saliency-source", "folder", "--masks", str(masks)
        )


def test_real_checkpoint_cli_and_model_segment(folder, maskcontrast_ckpt, tmp_path):
    """The plumbing with a real network (random weights: the clusters mean nothing)."""
    import maskcontrast

    images, _ = folder
    out = tmp_path / "r"
    run(maskcontrast_ckpt, images, out, "--k", "2", "--protocol", "pixel", "--fit-pixels", "2000", "--nredo", "2")
    model = maskcontrast.load_model(maskcontrast_ckpt, "cpu", size=48, batch_size=4)  # the CLI's batches
    clusters = Clusters.load(out / "clusters.pt")
    paths = sorted(images.glob("*.png"))[:4]
    labels = model.segment(paths, clusters)
    for p, lab in zip(paths, labels):
        np.testing.assert_array_equal(lab.numpy(), read_index_png(out / "labels" / p.name))
    refit = maskcontrast.fit_clusters(model, sorted(images.glob("*.png")), 2, "pixel", fit_pixels=2000, nredo=2)
    np.testing.assert_allclose(refit.centroids, clusters.centroids, atol=1e-4)
    with pytest.raises(ClustersError, match="input size"):
        maskcontrast.load_model(maskcontrast_ckpt, "cpu", size=64).segment(paths, clusters)


@pytest.mark.data
def test_labelled_dataset_scores(shared_root, maskcontrast_ckpt, tmp_path):
    root = shared_root("weizmann")
    out = tmp_path / "w"
    summary = main(
        [
            "--checkpoint",
            str(maskcontrast_ckpt),
            "--dataset",
            "weizmann",
            "--root",
            str(root),
            "--limit",
            "6",
            "--size",
            "48",
            "--k",
            "2",
            "--protocol",
            "pixel",
            "--fit-pixels",
            "2000",
            "--out",
            str(out),
            "--workers",
            "0",
            "--no-progress",
        ]
    )
    scores = summary["scores"]
    assert 0 <= scores["miou"] <= 1 and 0 <= scores["pixel_acc"] <= 1 and len(scores["per_class"]) == 2
    assert "pixel accuracy" in (out / "index.html").read_text()

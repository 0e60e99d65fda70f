import json

import numpy as np
import pytest
import torch

from eval.metrics import binary_counts
from eval.oneshot import (
    collect_class_prototypes,
    episode_supports,
    eval_classes,
    main,
    present_classes,
    run_oneshot,
    sample_supports,
    summarize_episodes,
)
from maskcontrast.prompt import combine_shots


def test_binary_counts_by_hand():
    np.testing.assert_array_equal(binary_counts([1, 1, 0, 0], [1, 0, 1, 0]), [1, 1, 1, 1])
    pred = np.array([[1, 1, 1], [0, 0, 1]], bool)
    gt = np.array([[1, 0, 0], [1, 0, 1]], bool)
    valid = np.array([[1, 1, 0], [1, 1, 1]], bool)  # the fp at (0, 2) is not counted
    np.testing.assert_array_equal(binary_counts(pred, gt, valid), [2, 1, 1, 1])
    t = binary_counts(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid))
    np.testing.assert_array_equal(t, [2, 1, 1, 1])


def test_summary_by_hand():
    # episode 0: class a tp2 fp1 fn1 tn4 -> IoU 2/4; class b tp1 fp0 fn1 tn2 -> IoU 1/2
    # episode 1: class a perfect (3, 0, 0, 5) -> 1; class b tp0 fp1 fn1 tn2 -> 0
    counts = np.array([[[2, 1, 1, 4], [1, 0, 1, 2]], [[3, 0, 0, 5], [0, 1, 1, 2]]])
    r = summarize_episodes(counts, ["a", "b"])
    assert r["per_episode"][0]["miou"] == pytest.approx(0.5)
    assert r["per_episode"][1]["miou"] == pytest.approx(0.5)
    assert r["miou"] == pytest.approx(0.5) and r["miou_std"] == pytest.approx(0.0)
    # FB-IoU, episode 0: fg 3 / (3 + 1 + 2) = 1/2, bg 6 / (6 + 2 + 1) = 2/3
    fb0 = (1 / 2 + 2 / 3) / 2
    # episode 1: fg 3 / (3 + 1 + 1) = 3/5, bg 7 / (7 + 1 + 1) = 7/9
    fb1 = (3 / 5 + 7 / 9) / 2
    assert r["per_episode"][0]["fb_iou"] == pytest.approx(fb0)
    assert r["fb_iou"] == pytest.approx((fb0 + fb1) / 2)
    assert r["fb_iou_std"] == pytest.approx(np.std([fb0, fb1], ddof=1))
    assert r["per_class"] == pytest.approx({"a": 0.75, "b": 0.25})


def test_classes_and_presence():
    assert eval_classes(("background", "cat", "dog"), 0) == [1, 2]
    assert eval_classes(("grass", "sky"), None) == [0, 1]
    assert eval_classes(("background", "cat", "dog"), 0, ["dog"]) == [2]
    with pytest.raises(ValueError, match="unknown class"):
        eval_classes(("background", "cat"), 0, ["cow"])
    label = np.zeros((10, 10), np.int64)
    label[0, :5] = 1  # 5 % of the pixels
    label[1:, :] = 255
    label[0, 5] = 2  # 10 % of the 10 valid pixels
    assert present_classes(label, [1, 2], 255, 0.0) == [1, 2]
    assert present_classes(label, [1, 2], 255, 0.2) == [1]


def test_support_sampling_is_seeded_and_errors_are_clear():
    rng = np.random.default_rng
    assert sample_supports([3, 5, 9, 11], 2, rng(0), "cat") == sample_supports([3, 5, 9, 11], 2, rng(0), "cat")
    with pytest.raises(ValueError, match=r"class 'cat' is in only 2 image\(s\), but 2 shot\(s\) need at least 3"):
        sample_supports([3, 5], 2, rng(0), "cat")
    images = {1: [0, 1, 2, 3], 2: [4, 5]}
    names = ["bg", "cat", "dog"]
    with pytest.raises(ValueError, match="class 'dog'"):
        episode_supports(images, 2, 3, 0, names)
    with pytest.raises(ValueError, match=r"2 classes are in fewer than 5 images .*: 'cat' \(4\), 'dog' \(2\)"):
        episode_supports(images, 4, 3, 0, names)
    supports, skipped = episode_supports(images, 2, 3, 0, names, rare="skip")
    assert skipped == [2] and len(supports) == 3 and all(len(ep[1]) == 2 for ep in supports)
    assert len({tuple(ep[1]) for ep in supports}) > 1  # episodes differ


def test_separated_features_are_perfect(synthetic):
    ds, model = synthetic  # one-hot class embeddings: prototypes separate every class
    result, table, supports = run_oneshot(model, ds, shots=2, episodes=3, seed=1, progress=False)
    assert result["miou"] == pytest.approx(1.0) and result["fb_iou"] == pytest.approx(1.0)
    assert set(result["per_class"]) == {"c1", "c2", "c3"} and result["n_images"] == 12
    # 3 classes in 4 images each, 2 supports -> 2 queries per class and episode
    assert result["n_queries"] == 3 * 3 * 2
    assert all(set(ep[c]) <= set(table.images[c]) for ep in supports for c in ep)
    # a kept embedding budget of 0 runs pass 2 through the network again, with the same result
    again, table2, _ = run_oneshot(model, ds, shots=2, episodes=3, seed=1, keep_mib=0, progress=False)
    assert not table2.kept and again["miou"] == pytest.approx(1.0)


def test_prototypes_of_a_class_and_its_complement(synthetic):
    ds, model = synthetic
    table = collect_class_prototypes(model, ds, [1, 2, 3], progress=False)
    i = table.images[1][0]
    s = ds[i]
    _, out, _ = next(iter(model.run([s.image])))
    e = torch.nn.functional.normalize(out.embedding[0], dim=0)
    fg = torch.from_numpy(s.label == 1)
    bg = torch.from_numpy((s.label != 1) & (s.label != 255))
    # the synthetic model draws fresh noise on every run: compare loosely
    torch.testing.assert_close(table.fg[(i, 1)], combine_shots([e[:, fg].sum(1)]), atol=0.02, rtol=0)
    torch.testing.assert_close(table.bg[(i, 1)], combine_shots([e[:, bg].sum(1)]), atol=0.02, rtol=0)


@pytest.mark.data
def test_cli_on_pet_species(shared_root, moco_ckpt, maskcontrast_ckpt, tmp_path):
    root = shared_root("pet")
    out = tmp_path / "os.json"
    base = [
        "--dataset",
        "pet",
        "--root",
        str(root),
        "--dataset-arg",
        "target=species",
        "--limit",
        "6",
        "--size",
        "64",
        "--workers",
        "0",
        "--no-progress",
    ]
    # the first 6 Pet images are all cats (Abyssinian): dog is in none
    with pytest.raises(ValueError, match="class 'dog' is in only 0 image"):
        main(["--checkpoint", str(moco_ckpt), *base])
    args = [
        "--checkpoint",
        str(moco_ckpt),
        *base,
        "--classes",
        "cat",
        "--shots",
        "2",
        "--episodes",
        "2",
        "--json",
        str(out),
        "--vis",
        "2",
    ]
    result = main(args)
    data = json.loads(out.read_text())
    for key in ("miou", "miou_std", "fb_iou", "per_class", "shots", "episodes", "n_images", "timing"):
        assert key in data
    assert data["shots"] == 2 and data["episodes"] == 2 and data["n_images"] == 6 and data["layout"] == "moco"
    assert 0.0 <= data["miou"] <= 1.0 and result["miou"] == data["miou"] and set(data["per_class"]) == {"cat"}
    assert len(list((tmp_path / "os_vis").glob("*.png"))) == 2
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(args)
    mc = main(["--checkpoint", str(maskcontrast_ckpt), *base, "--classes", "cat", "--rare", "skip"])
    assert mc["layout"] == "maskcontrast" and mc["embedding"] == "embeddings"

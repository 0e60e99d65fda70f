import json

import numpy as np
import pytest
import torch

from eval.kmeans import PrototypeStats
from eval.retrieval import knn_vote, main, retrieval_confusion, retrieval_scores, segment_labels
from maskcontrast.data import DatasetInfo


def test_segment_labels_and_vote():
    np.testing.assert_array_equal(segment_labels(np.array([[1, 5, 0], [0, 0, 0], [3, 0, 3]])), [1, -1, 0])
    db = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]]), dim=1)
    labels = torch.tensor([1, 1, 2, 2])
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    torch.testing.assert_close(knn_vote(q, db, labels, 1), torch.tensor([1, 2]))
    torch.testing.assert_close(knn_vote(q, db, labels, 3), torch.tensor([1, 2]))
    # a 2-2 tie is won by the class of the nearest neighbour
    torch.testing.assert_close(knn_vote(q, db, labels, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="empty"):
        knn_vote(q, db[:0], labels[:0], 1)


def test_confusion_hand_example():
    fg = np.array([[0, 4, 1], [0, 0, 0]])
    bg = np.array([[6, 0, 0], [5, 0, 2]])
    conf = retrieval_confusion(np.array([1, -1]), fg, bg, 3, background=0)
    np.testing.assert_array_equal(conf, [[11, 0, 2], [0, 4, 1], [0, 0, 0], [0, 0, 0]])
    conf = retrieval_confusion(np.array([2, -1]), fg, bg, 3, background=None)
    np.testing.assert_array_equal(conf[2], [0, 4, 1])
    np.testing.assert_array_equal(conf[3], [11, 0, 2])


def _stats(protos, fg, bg):
    n = len(protos)
    return PrototypeStats(
        [str(i) for i in range(n)], np.asarray(protos, np.float32), np.ones(n, bool), np.asarray(fg), np.asarray(bg)
    )


def test_scores_perfect_and_subset():
    info = DatasetInfo("t", ("background", "a", "b", "c"))
    e = np.eye(3, dtype=np.float32)
    db = _stats(e, [[0, 9, 1, 0], [0, 0, 8, 0], [0, 0, 0, 7]], [[5, 0, 0, 0]] * 3)
    q = _stats(e[[2, 0, 1]], [[0, 0, 0, 3], [0, 4, 0, 0], [0, 0, 6, 0]], [[2, 0, 0, 0]] * 3)
    res = retrieval_scores(db, q, info, topk=1)
    assert res["miou"] == pytest.approx(1.0) and res["n_queries"] == 3
    sub = retrieval_scores(db, q, info, topk=1, subset=["a", "c"])
    assert set(sub["per_class"]) == {"a", "c"} and sub["miou"] == pytest.approx(1.0)
    assert sub["n_database"] == 2 and sub["n_queries"] == 2
    with pytest.raises(ValueError, match="not classes"):
        retrieval_scores(db, q, info, topk=1, subset=["zebra"])
    # swapped database labels give zero IoU on the object classes
    db_bad = _stats(e, [[0, 0, 8, 0], [0, 9, 0, 0], [0, 0, 0, 7]], [[5, 0, 0, 0]] * 3)
    bad = retrieval_scores(db_bad, q, info, topk=1)
    assert bad["per_class"]["a"] == 0.0 and bad["per_class"]["b"] == 0.0


@pytest.mark.data
def test_cli_end_to_end_with_moco_checkpoint(shared_root, moco_ckpt, tmp_path):
    root = shared_root("weizmann")
    out = tmp_path / "r" / "retrieval.json"
    args = [
        "--checkpoint",
        str(moco_ckpt),
        "--dataset",
        "weizmann",
        "--root",
        str(root),
        "--limit",
        "10",
        "--size",
        "64",
        "--workers",
        "0",
        "--saliency-source",
        "gt",
        "--topk",
        "3",
        "--json",
        str(out),
        "--no-progress",
    ]
    result = main(args)
    data = json.loads(out.read_text())
    assert data["layout"] == "moco" and data["n_db_images"] == 5 and data["n_query_images"] == 5
    assert set(data["per_class"]) == {"background", "horse"} and "subset" not in data
    # every segment is a horse: retrieval labels it horse, and GT saliency makes the prediction exact
    assert result["miou"] == pytest.approx(1.0)
    # the seeded split was saved next to the JSON and is reused; the JSON is not silently replaced
    assert (out.parent / "split_train.txt").is_file() and (out.parent / "split_val.txt").is_file()
    with pytest.raises(FileExistsError):
        main(args)


@pytest.mark.data
def test_cli_pet_species_with_model_saliency(shared_root, maskcontrast_ckpt, tmp_path):
    root = shared_root("pet")
    out = tmp_path / "retrieval.json"
    args = [
        "--checkpoint",
        str(maskcontrast_ckpt),
        "--dataset",
        "pet",
        "--root",
        str(root),
        "--dataset-arg",
        "target=species",
        "--ids",
        str(_ids_file(root, tmp_path)),
        "--size",
        "64",
        "--workers",
        "0",
        "--subset",
        "cat",
        "--json",
        str(out),
        "--no-progress",
    ]
    result = main(args)
    assert set(result["per_class"]) == {"background", "cat", "dog"} and result["subset"]["classes"] == ["cat"]
    assert result["n_db_images"] + result["n_query_images"] == 8
    assert 0.0 <= result["miou"] <= 1.0


def _ids_file(root, tmp_path):
    names = sorted(p.stem for p in (root / "annotations" / "trimaps").glob("*.png") if not p.name.startswith("."))
    cats = [n for n in names if n[0].isupper()][:4]
    dogs = [n for n in names if n[0].islower()][:4]
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(cats + dogs) + "\n")
    return path

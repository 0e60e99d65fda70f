"""Compare label-free output rules of a trained saliency refiner on two halves of each set.

How refiner version 3's output rule (``combine: fusion``) was chosen (docs/SALIENCY.md,
"Version 3"). The protocol was written down before any rule was scored:

* candidates, all from one trained network and the image's classical maps, no labels:
  ``B0`` 0.5 network + 0.5 fused; ``B`` 0.5 aligned network + 0.5 fused (``combine: blend``
  with ``align_mean``); ``C`` the aligned network joins the fusion as a fifth estimator
  (``combine: fusion``); ``D`` the aligned network averaged within the fusion's SLIC superpixels,
  then blended; ``E`` the Otsu-centred sigmoid (the fusion's calibration) of ``B``;
* ``B`` and ``C`` are :meth:`saliency.refine.RefinerPredictor.output` with ``combine`` set, so
  they follow the run's ``fused_weight`` and ``align_mean`` (0.5 and on in version 3);
* selection half: the even positions of each set's sorted ground-truth ids; report half: the odd;
* choice: on the selection half, the rule that beats the fusion on both max F-beta and MAE on
  the most sets; ties go to the larger mean over sets of (max F gain + MAE reduction).

``--tta-scales 0.75,1,1.25`` overrides the run's multi-scale inference (``tta_scales``); that is how
the multi-scale test in docs/SALIENCY.md was run (rule C against version 3's rule C).

Sets are given as ``NAME=READER:ROOT:GT`` (GT a mask folder, or ``dataset`` to read the labels
through the reader, as for the Pet trimaps). Two worker processes, one thread each.

Usage::

    D=$MASKCONTRAST_DATA
    python bench/refiner_output_rules.py --checkpoint RUN/refiner.pt --json rules.json \\
        --set sod=saliency_folder:$D/saliency/SOD:$D/saliency/SOD/masks \\
        --set davis=davis2016:$D/davis2016:$D/davis2016/DAVIS/Annotations/480p \\
        --set weizmann=weizmann:$D/weizmann_horse:$D/weizmann_horse/weizmann_horse_db/figure_ground \\
        --set pet=pet:$D/oxford_iiit_pet:dataset
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from maskcontrast.data import build_dataset  # noqa: E402
from saliency.common import build_superpixel_graph, normalize_map, otsu_threshold, resize_map, to_lab, working_image  # noqa: E402
from saliency.evaluate import load_ground_truth, match_files  # noqa: E402
from saliency.fusion import fuse  # noqa: E402
from saliency.metrics import SaliencyMetrics  # noqa: E402
from saliency.refine import RefinerPredictor, align_mean  # noqa: E402

RULES = ("fused", "B0", "B", "C", "D", "E")
_STATE: dict = {}


def _init(reader: str, root: str, checkpoint: str, tta_scales: list[float] | None) -> None:
    torch.set_num_threads(1)
    _STATE["ds"] = build_dataset(reader, root)
    _STATE["predict"] = RefinerPredictor(checkpoint, device="cpu", tta_scales=tta_scales)


def candidate_maps(image: np.ndarray, predict: RefinerPredictor) -> dict[str, np.ndarray]:
    """Every rule's ``H x W`` map in ``[0, 1]`` for one image."""
    cfg = predict.fusion
    result = fuse(image, cfg)
    fused = result.saliency
    net = predict.network(image)
    aligned = align_mean(torch.from_numpy(net)[None], torch.tensor([float(fused.mean())]))[0].numpy()
    blend = predict.output(net, result, combine="blend")  # with the run's fused_weight (0.5) and align_mean
    small = working_image(image, cfg.max_side)
    lab, a_small = to_lab(small), resize_map(aligned, small.shape[:2])
    snapped = np.zeros_like(a_small)
    for n in cfg.scales:
        labels = build_superpixel_graph(lab, int(n), cfg.compactness).labels.ravel()
        sums, counts = np.bincount(labels, a_small.ravel()), np.bincount(labels)
        snapped += (sums / np.maximum(counts, 1))[labels].reshape(a_small.shape)
    b = normalize_map(blend)
    return {
        "fused": fused,
        "B0": 0.5 * net + 0.5 * fused,
        "B": blend,
        "C": predict.output(net, result, combine="fusion"),
        "D": 0.5 * resize_map(snapped / len(cfg.scales), fused.shape) + 0.5 * fused,
        "E": normalize_map(1.0 / (1.0 + np.exp(-cfg.enhance_b * (b - otsu_threshold(b))))),
    }


def _work(sid: str) -> tuple[str, dict[str, np.ndarray]]:
    ds = _STATE["ds"]
    maps = candidate_maps(ds.read_sample_image(ds.files(sid), sid), _STATE["predict"])
    return sid, {k: np.round(np.clip(v, 0, 1) * 255).astype(np.uint8) for k, v in maps.items()}


def score_set(
    reader: str, root: str, gt: str, checkpoint: str, tta_scales: list[float] | None = None
) -> dict[str, dict[str, float]]:
    """``{"RULE|HALF": metrics}`` for HALF in ``all``, ``0`` (selection) and ``1`` (report)."""
    from multiprocessing import get_context

    ids = list(build_dataset(reader, root).ids)
    truths = load_ground_truth(root, reader) if gt == "dataset" else load_ground_truth(gt)
    matched = match_files(ids, list(truths))  # gt id -> sample id
    order = sorted(matched)
    half = {g: i % 2 for i, g in enumerate(order)}
    by_sample = {sid: g for g, sid in matched.items()}
    meters = {(k, h): SaliencyMetrics() for k in RULES for h in ("all", 0, 1)}
    with get_context("fork").Pool(2, initializer=_init, initargs=(reader, root, checkpoint, tta_scales)) as pool:
        for sid, maps in pool.imap_unordered(_work, [matched[g] for g in order], chunksize=4):
            g = by_sample[sid]
            mask, valid = truths[g]()
            for k, p in maps.items():
                if p.shape != mask.shape:
                    p = np.asarray(Image.fromarray(p).resize((mask.shape[1], mask.shape[0]), Image.BILINEAR))
                for h in ("all", half[g]):
                    meters[(k, h)].update(p, mask, valid, g)
    keys = ("max_fbeta", "mae", "adaptive_fbeta", "iou")
    return {f"{k}|{h}": {m: meters[(k, h)].compute()[m] for m in keys} for (k, h) in meters}


def choose(results: dict[str, dict[str, dict[str, float]]], half: str = "0") -> tuple[str, dict[str, tuple]]:
    """The protocol's choice on ``half``: most sets beaten on both metrics, then the mean gain."""
    table = {}
    for k in RULES[1:]:
        wins = gain = 0.0
        for r in results.values():
            x, f = r[f"{k}|{half}"], r[f"fused|{half}"]
            wins += x["max_fbeta"] > f["max_fbeta"] and x["mae"] < f["mae"]
            gain += (x["max_fbeta"] - f["max_fbeta"]) + (f["mae"] - x["mae"])
        table[k] = (int(wins), gain / len(results))
    return max(table, key=lambda k: table[k]), table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="refiner.pt of a finished saliency.refine run")
    p.add_argument("--set", action="append", required=True, metavar="NAME=READER:ROOT:GT")
    p.add_argument("--json", help="write every rule's metrics per set and half to this file")
    p.add_argument("--tta-scales", help="override the run's tta_scales, e.g. 0.75,1,1.25 (default: the run's)")
    args = p.parse_args()
    scales = [float(x) for x in args.tta_scales.split(",")] if args.tta_scales else None
    results = {}
    for spec in args.set:
        name, _, rest = spec.partition("=")
        reader, root, gt = rest.split(":", 2)
        results[name] = score_set(reader, root, gt, args.checkpoint, scales)
        for h in ("0", "1", "all"):
            for k in RULES:
                r = results[name][f"{k}|{h}"]
                print(
                    f"{name} half={h} {k:6s} maxF {r['max_fbeta']:.4f} MAE {r['mae']:.4f} "
                    f"adpF {r['adaptive_fbeta']:.4f} IoU {r['iou']:.4f}",
                    flush=True,
                )
    chosen, table = choose(results)
    print("selection half: (sets beaten on both, mean gain) " + ", ".join(f"{k} {v}" for k, v in table.items()))
    print(f"chosen: {chosen}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "choice": chosen, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

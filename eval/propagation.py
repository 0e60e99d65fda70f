"""Video object segmentation by label propagation: ``python -m eval.propagation``.

The usual dense-feature protocol for semi-supervised video object segmentation (the DAVIS
evaluation of self-supervised features, as in STC and DINO), written from its definition:

* every frame is run through the network; its pixel descriptors are the L2-normalised
  feature-resolution embeddings (maskcontrast checkpoints; ``--what features``: the 256-d decoder
  features) or backbone features (backbone-only checkpoints), as in ``eval.kmeans``;
* the first frame's ground-truth mask is the only annotation used: its one-hot labels are
  area-averaged onto the feature grid;
* each later frame ``t`` attends to a context of the first frame (always kept) and the
  ``--n-last`` previous frames. A query cell ``i`` is compared with every context cell ``j`` within
  ``--radius`` cells (a square window, ``|dy|, |dx| <= radius``; 0 = the whole frame) by cosine
  similarity; the ``--topk`` most similar context cells get the weights
  ``softmax(cos / --temperature)``, and the cell's soft label is the weighted sum of their soft
  labels. The soft labels of frame ``t`` (at feature resolution) join the context of the next
  frames;
* the soft labels are upsampled bilinearly to the frame size and the arg max is the mask.

Scores (DAVIS definitions, :mod:`eval.metrics`): region similarity J (IoU) and contour accuracy
F (boundary F-measure with a tolerance of ``ceil(0.008 * diagonal)`` pixels, ``--bound-th``),
for every frame after the first (``--exclude-last`` also drops the last frame, as the DAVIS-2017
evaluation toolkit does); per sequence the mean over its frames, overall the mean over sequences,
and J&F the mean of the two.

**Frame rate.** The shared DAVIS-2016 copy keeps every 10th frame (SOURCES.md), so consecutive
frames here are 10 original frames apart: objects move about ten times further between frames
than in the full sequences, and the scores are not comparable with published full-frame-rate
DAVIS numbers. The step is read from the frame numbers and written to the JSON (``frame_step``).

Example::

    python -m eval.propagation --checkpoint run/last.pt --dataset davis2016 --json davis.json
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from eval.arguments import add_dataset_arguments, add_model_arguments, dataset_from_args, model_from_args
from eval.metrics import boundary_f_measure, boundary_map, region_similarity
from eval.outputs import add_output_arguments, ensure_new_file, safe_name, vis_folder, write_json
from eval.stream import iter_model_outputs
from maskcontrast.cli import run_main
from maskcontrast.data import DataError
from maskcontrast.data.io import write_panel
from maskcontrast.utils import peak_rss_mib, setup_logging

__all__ = [
    "group_sequences",
    "frame_step",
    "labels_to_grid",
    "propagate_frame",
    "LabelPropagator",
    "main",
]

log = logging.getLogger("eval.propagation")

#: bytes of one block of query x context affinities in :func:`propagate_frame`
AFFINITY_BYTES = 1 << 26


# ----------------------------------------------------------------------------------------------
# Sequences
# ----------------------------------------------------------------------------------------------


def group_sequences(ids: Sequence[str]) -> dict[str, list[str]]:
    """``["seq/00010", "seq/00000", ...]`` -> ``{seq: [frame ids sorted by frame number]}``, in the
    order the sequences first appear.

    Raises:
        ValueError: an id without ``/``, or a sequence with a single frame (nothing to propagate to).
    """
    out: dict[str, list[str]] = {}
    for sid in ids:
        seq, sep, _ = sid.rpartition("/")
        if not sep:
            raise ValueError(
                f"frame id {sid!r} is not <sequence>/<frame>; propagation needs a video dataset such as davis2016"
            )
        out.setdefault(seq, []).append(sid)
    for frames in out.values():
        frames.sort(key=lambda s: (int(s.rpartition("/")[2]) if s.rpartition("/")[2].isdigit() else math.inf, s))
    single = [s for s, f in out.items() if len(f) < 2]
    if single:
        raise ValueError(
            f"sequence(s) {single} have a single frame: there is nothing to propagate the first mask "
            "to; give at least 2 frames per sequence (check --ids/--limit, or leave them out with "
            "--sequences)"
        )
    return out


def frame_step(sequences: dict[str, list[str]]) -> int | None:
    """The greatest common divisor of the gaps between consecutive frame numbers (10 for the
    shared DAVIS copy), or None when frame names are not numbers."""
    gaps = []
    for frames in sequences.values():
        nums = [f.rpartition("/")[2] for f in frames]
        if not all(n.isdigit() for n in nums):
            return None
        gaps += [int(b) - int(a) for a, b in itertools.pairwise(nums)]
    gaps = [g for g in gaps if g > 0]
    return reduce(math.gcd, gaps) if gaps else None


# ----------------------------------------------------------------------------------------------
# The math
# ----------------------------------------------------------------------------------------------


def labels_to_grid(label: np.ndarray | torch.Tensor, num_classes: int, grid: tuple[int, int]) -> torch.Tensor:
    """``H x W`` integer labels -> ``C x h x w`` soft labels: the share of each class in every
    grid cell (adaptive average pooling of the one-hot map; values outside ``0..C-1`` count for
    no class)."""
    lab = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label).long()
    onehot = torch.stack([(lab == c).float() for c in range(num_classes)])
    return F.adaptive_avg_pool2d(onehot[None], grid)[0]


def propagate_frame(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    *,
    topk: int = 5,
    temperature: float = 0.1,
    radius: int = 12,
) -> torch.Tensor:
    """Soft labels of one frame from its context frames.

    Args:
        query: ``D x h x w`` L2-normalised descriptors of the frame.
        keys: ``M`` context frames, ``D x h x w`` each, L2-normalised.
        labels: their ``C x h x w`` soft labels.
        topk: context cells kept per query cell (over all context frames together).
        temperature: of the softmax over the kept cosine similarities.
        radius: a query cell at ``(y, x)`` sees context cells with ``|dy| <= radius`` and
            ``|dx| <= radius``; 0 = every cell.

    Returns:
        ``C x h x w``: ``sum_j softmax_j(cos(q_i, k_j) / T) * label_j`` over the top-k cells ``j``.
    """
    if not keys or len(keys) != len(labels):
        raise ValueError(f"need one label map per context frame and at least one, got {len(keys)} and {len(labels)}")
    if topk < 1 or temperature <= 0 or radius < 0:
        raise ValueError(f"topk must be >= 1, temperature > 0 and radius >= 0; got {topk}, {temperature}, {radius}")
    d, h, w = query.shape
    c = labels[0].shape[0]
    q = query.reshape(d, h * w)
    ks = [k.reshape(d, h * w) for k in keys]
    ls = [lab.reshape(c, h * w) for lab in labels]
    out = torch.empty(c, h * w, dtype=q.dtype, device=q.device)
    ys = torch.arange(h, device=q.device).repeat_interleave(w)
    xs = torch.arange(w, device=q.device).repeat(h)
    rows = max(1, min(h, AFFINITY_BYTES // max(1, 4 * w * w * (h if radius == 0 else 2 * radius + 1))))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        k0, k1 = (0, h) if radius == 0 else (max(0, r0 - radius), min(h, r1 + radius))
        qi = slice(r0 * w, r1 * w)
        ki = slice(k0 * w, k1 * w)
        near = None
        if radius > 0:
            near = ((ys[qi, None] - ys[None, ki]).abs() <= radius) & ((xs[qi, None] - xs[None, ki]).abs() <= radius)
        vals, labs = [], []
        for k, lab in zip(ks, ls):
            sim = q[:, qi].T @ k[:, ki]  # nq x nk
            if near is not None:
                sim = sim.masked_fill(~near, -math.inf)
            kk = min(topk, sim.shape[1])
            v, idx = sim.topk(kk, dim=1)
            vals.append(v)
            labs.append(lab[:, ki][:, idx])  # C x nq x kk
        v = torch.cat(vals, 1)
        lab = torch.cat(labs, 2)
        v, idx = v.topk(min(topk, v.shape[1]), dim=1)
        weight = torch.softmax(v / temperature, dim=1)  # nq x k; -inf (outside every window) never wins
        chosen = torch.gather(lab, 2, idx[None].expand(c, -1, -1))
        out[:, qi] = (chosen * weight[None]).sum(2)
    return out.reshape(c, h, w)


class LabelPropagator:
    """Propagate the first frame's labels through one sequence, frame by frame.

    Example::

        prop = LabelPropagator(first_desc, labels_to_grid(first_mask, 2, first_desc.shape[1:]))
        soft = prop.step(next_desc)          # C x h x w, then joins the context
    """

    def __init__(
        self,
        first: torch.Tensor,
        first_labels: torch.Tensor,
        *,
        n_last: int = 7,
        topk: int = 5,
        temperature: float = 0.1,
        radius: int = 12,
    ) -> None:
        if n_last < 0:
            raise ValueError(f"n_last must be >= 0, got {n_last}")
        self.first = (first, first_labels)
        self.recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last)
        self.options = {"topk": topk, "temperature": temperature, "radius": radius}

    def step(self, desc: torch.Tensor) -> torch.Tensor:
        """``D x h x w`` unit descriptors of the next frame -> its ``C x h x w`` soft labels."""
        if desc.shape != self.first[0].shape:
            raise ValueError(
                f"frame descriptors {tuple(desc.shape)} differ from the first frame's "
                f"{tuple(self.first[0].shape)}; every frame of a sequence needs the same size"
            )
        context = [self.first, *self.recent]
        soft = propagate_frame(desc, [k for k, _ in context], [lab for _, lab in context], **self.options)
        if self.recent.maxlen:
            self.recent.append((desc, soft))
        return soft


def soft_to_mask(soft: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """``C x h x w`` soft labels -> ``H x W`` int64 arg max after bilinear upsampling."""
    up = F.interpolate(soft[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
    return up.argmax(0).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _descriptors(out: Any, what: str) -> torch.Tensor:
    x = out.embedding if what == "embed" else out.features
    return F.normalize(x[0].float(), dim=0)


def _overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[pred] = 0.5 * out[pred] + 0.5 * np.array((255.0, 0.0, 0.0))
    if gt is not None:
        out[boundary_map(gt)] = (0.0, 255.0, 0.0)
    return out.astype(np.uint8)


def run_propagation(
    model: Any,
    ds: Any,
    *,
    what: str = "embed",
    n_last: int = 7,
    topk: int = 5,
    temperature: float = 0.1,
    radius: int = 12,
    bound_th: float = 0.008,
    exclude_last: bool = False,
    vis_dir: Path | None = None,
    vis: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Propagate and score every sequence of ``ds`` (its ids are regrouped by sequence)."""
    if what not in ("embed", "features"):
        raise ValueError(f"what must be embed or features, got {what!r}")
    sequences = group_sequences(ds.ids)
    ds.ids = [f for frames in sequences.values() for f in frames]
    if exclude_last and any(len(f) < 3 for f in sequences.values()):
        short = [s for s, f in sequences.items() if len(f) < 3]
        raise ValueError(f"--exclude-last leaves no frame to score in {short} (fewer than 3 frames)")
    seq_of = {f: s for s, frames in sequences.items() for f in frames}
    position = {f: k for frames in sequences.values() for k, f in enumerate(frames)}
    vis_seqs = set(list(sequences)[:vis]) if vis_dir is not None else set()
    num_classes = ds.info.num_classes
    per_seq: dict[str, dict[str, Any]] = {}
    prop: LabelPropagator | None = None
    prop_seconds = 0.0
    t0 = time.perf_counter()
    for _, sample, out in iter_model_outputs(model, ds, workers=workers, desc="frames", progress=progress):
        seq, k = seq_of[sample.id], position[sample.id]
        n = len(sequences[seq])
        if sample.label is None:
            raise DataError(
                f"{sample.id}: no ground-truth mask; propagation needs the masks to score against", sample_id=sample.id
            )
        desc = _descriptors(out, what)
        t1 = time.perf_counter()
        if k == 0:
            prop = LabelPropagator(
                desc,
                labels_to_grid(sample.label, num_classes, tuple(desc.shape[1:])).to(desc),
                n_last=n_last,
                topk=topk,
                temperature=temperature,
                radius=radius,
            )
            per_seq[seq] = {"frames": [], "j": [], "f": [], "n_frames": n}
            pred = sample.label.astype(np.int64)
        else:
            assert prop is not None
            pred = soft_to_mask(prop.step(desc), sample.size)
        prop_seconds += time.perf_counter() - t1
        gt = sample.label
        if k > 0 and not (exclude_last and k == n - 1):
            ignore = gt == ds.info.ignore_index
            fg_pred, fg_gt = (pred > 0) & ~ignore, (gt > 0) & ~ignore
            per_seq[seq]["frames"].append(sample.id.rpartition("/")[2])
            per_seq[seq]["j"].append(region_similarity(fg_pred, fg_gt))
            per_seq[seq]["f"].append(boundary_f_measure(fg_pred, fg_gt, bound_th))
        if seq in vis_seqs:
            assert vis_dir is not None
            write_panel(
                vis_dir / f"{safe_name(sample.id)}.png",
                [_overlay(sample.image, pred > 0, gt > 0), _overlay(sample.image, gt > 0, None)],
            )
        if k == n - 1:
            prop = None
    seconds = time.perf_counter() - t0
    n_frames = len(ds.ids)
    rows = {}
    for seq, r in per_seq.items():
        j, f = float(np.mean(r["j"])), float(np.mean(r["f"]))
        rows[seq] = {
            "j_mean": j,
            "f_mean": f,
            "jf_mean": (j + f) / 2,
            "j_recall": float(np.mean(np.asarray(r["j"]) > 0.5)),
            "n_frames": r["n_frames"],
            "n_scored": len(r["j"]),
            "frames": r["frames"],
            "j": r["j"],
            "f": r["f"],
        }
    j_mean = float(np.mean([r["j_mean"] for r in rows.values()]))
    f_mean = float(np.mean([r["f_mean"] for r in rows.values()]))
    step = frame_step(sequences)
    protocol = {
        "what": what,
        "n_last": n_last,
        "topk": topk,
        "temperature": temperature,
        "radius": radius,
        "bound_th": bound_th,
        "exclude_last": exclude_last,
        "first_frame": "ground truth, not scored",
        "averaging": "per sequence over its scored frames, then over sequences",
    }
    timing = {
        "seconds": seconds,
        "ms_per_frame": 1000 * seconds / max(1, n_frames),
        "propagation_ms_per_frame": 1000 * prop_seconds / max(1, n_frames),
    }
    return {
        "j_mean": j_mean,
        "f_mean": f_mean,
        "jf_mean": (j_mean + f_mean) / 2,
        "j_recall": float(np.mean([r["j_recall"] for r in rows.values()])),
        "per_sequence": rows,
        "n_sequences": len(rows),
        "n_frames": n_frames,
        "n_scored": sum(r["n_scored"] for r in rows.values()),
        "frame_step": step,
        "frame_note": (
            f"frames are {step} original frames apart (the shared DAVIS-2016 copy keeps every 10th frame); "
            "not comparable with full-frame-rate DAVIS results"
            if step and step > 1
            else "consecutive frames"
        ),
        "protocol": protocol,
        "timing": timing,
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.propagation",
        description="Semi-supervised video object segmentation by label propagation on DAVIS (docs/EVAL.md).",
    )
    add_model_arguments(p)
    add_dataset_arguments(p, split_help="val")
    g = p.add_argument_group("propagation")
    g.add_argument("--sequences", default=None, help="comma-separated sequence names (default: all)")
    g.add_argument(
        "--what",
        default="embed",
        choices=("embed", "features"),
        help="descriptors of a maskcontrast "
        "checkpoint: the embeddings (default) or the 256-d decoder features; backbone-only checkpoints "
        "always use their features",
    )
    g.add_argument(
        "--n-last", type=int, default=7, help="previous frames in the context, besides the first (default 7)"
    )
    g.add_argument("--topk", type=int, default=5, help="context cells kept per query cell (default 5)")
    g.add_argument("--temperature", type=float, default=0.1, help="softmax temperature on the cosine (default 0.1)")
    g.add_argument(
        "--radius", type=int, default=12, help="neighbourhood radius in feature cells; 0 = whole frame (default 12)"
    )
    g.add_argument(
        "--bound-th",
        type=float,
        default=0.008,
        help="F tolerance: a fraction of the image diagonal (< 1) or pixels (>= 1) (default 0.008, DAVIS)",
    )
    g.add_argument(
        "--exclude-last",
        action="store_true",
        help="do not score the last frame of each sequence (the DAVIS-2017 toolkit's convention)",
    )
    add_output_arguments(p, vis="write overlays (prediction | ground truth) of every frame of the first N sequences")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    ensure_new_file(args.json, args.overwrite)
    vis_dir = vis_folder(args)
    if vis_dir is not None:
        vis_dir.mkdir(parents=True, exist_ok=True)
    model = model_from_args(args)
    ds = dataset_from_args(args)
    if args.sequences:
        wanted = [s.strip() for s in args.sequences.split(",") if s.strip()]
        known = {i.rpartition("/")[0] for i in ds.ids}
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise ValueError(f"--sequences: {unknown} not in {ds.root} ({ds.split}); known: {sorted(known)}")
        ds.ids = [i for i in ds.ids if i.rpartition("/")[0] in wanted]
    what = args.what if model.kind == "maskcontrast" else "features"
    log.info("propagating on %s/%s (%d frames) with %s of %s", args.dataset, ds.split, len(ds), what, args.checkpoint)
    result = run_propagation(
        model,
        ds,
        what=what,
        n_last=args.n_last,
        topk=args.topk,
        temperature=args.temperature,
        radius=args.radius,
        bound_th=args.bound_th,
        exclude_last=args.exclude_last,
        vis_dir=vis_dir,
        vis=args.vis,
        workers=args.workers,
        progress=not args.no_progress,
    )
    result.update(
        dataset=args.dataset,
        split=ds.split,
        checkpoint=str(args.checkpoint),
        layout=model.layout,
        size=args.size,
        device=str(model.device),
        units="fractions in [0, 1]",
        peak_rss_mib=peak_rss_mib(),
    )
    log.info(
        "%d sequences, %d frames scored (%s): J %.2f %%, F %.2f %%, J&F %.2f %%",
        result["n_sequences"],
        result["n_scored"],
        result["frame_note"],
        100 * result["j_mean"],
        100 * result["f_mean"],
        100 * result["jf_mean"],
    )
    if args.json:
        write_json(args.json, result)
        print(f"wrote results to {args.json}")
    if vis_dir is not None:
        print(f"wrote overlays to {vis_dir}")
    if not args.json:
        print(
            f"J&F {100 * result['jf_mean']:.2f} (J {100 * result['j_mean']:.2f}, F {100 * result['f_mean']:.2f}; "
            "no --json: nothing written)"
        )
    return result


if __name__ == "__main__":
    run_main(main, "eval.propagation")

"""Export a checkpoint's network for inference without this code: ``python -m maskcontrast.export``.

::

    python -m maskcontrast.export --checkpoint run/last.pt --format onnx --out model.onnx
    python -m maskcontrast.export --checkpoint run/last.pt --format torchscript --out model.ts.pt
    python -m eval.segment --model model.onnx --images photos/ --k 10 --out seg/

The exported network is :meth:`maskcontrast.FeatureModel.forward` without the preprocessing:

* input ``image``: ``B x 3 x H x W`` float32, RGB in ``[0, 1]`` normalised with the ImageNet mean
  and std (stored in the file), any ``B``, ``H`` and ``W`` (dynamic axes; multiples of the output
  stride give the same grid as :class:`~maskcontrast.FeatureModel`, which rounds to them);
* outputs at feature resolution (``ceil(H / stride) x ceil(W / stride)``): ``features``
  (``B x F x h x w``), ``embedding`` (``B x D x h x w``, not normalised) and, for models with a
  saliency head, ``saliency`` (``B x 1 x h x w`` logits).

Whatever network :class:`~maskcontrast.FeatureModel` wraps (a ResNet MaskContrast model, a
backbone-only baseline, and the ViT models once ``maskcontrast.api`` knows them) is exported
through the same output function, so a new kind of network needs no change here.

The file also holds what a reader needs (ONNX ``metadata_props``; TorchScript extra file
``maskcontrast.json``): the mean and std, the output stride, the dimensions, whether there is a
saliency head, and :func:`weights_digest` of the weights, so that clusters fitted with the
checkpoint (``eval.segment``'s ``clusters.pt``) apply to the exported file and vice versa.
:func:`load_exported` reads both formats back as a :class:`~maskcontrast.FeatureModel`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskcontrast.api import FeatureModel, FeatureOutput, load_model, net_kind
from maskcontrast.cli import run_main
from maskcontrast.config import IMAGENET_MEAN, IMAGENET_STD
from maskcontrast.utils import get_device, setup_logging

__all__ = ["FORMATS", "weights_digest", "ExportNet", "export_model", "load_exported", "ExportedModel", "main"]

log = logging.getLogger("maskcontrast.export")

FORMATS = ("onnx", "torchscript")
META_KEY = "maskcontrast.json"


def weights_digest(module: nn.Module) -> str:
    """A short digest of a network's parameters and buffers (names, shapes, dtypes and values)."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


class ExportNet(nn.Module):
    """``B x 3 x H x W`` normalised images -> ``(features, embedding[, saliency])`` at feature
    resolution: the network of a :class:`FeatureModel`, with the same output function."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        kind = net_kind(net)
        self.net = net
        self._outputs = kind.outputs
        self.has_saliency = kind.has_saliency

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats, emb, sal = self._outputs(self.net, x)
        return (feats, emb, sal) if sal is not None else (feats, emb)


def _metadata(model: FeatureModel, fmt: str) -> dict[str, Any]:
    return {
        "format": fmt,
        "kind": model.kind,
        "arch": model.arch,
        "layout": model.layout,
        "source": str(model.source),
        "output_stride": int(model.output_stride),
        "feature_dim": int(model.feature_dim),
        "embed_dim": int(model.embed_dim),
        "has_saliency": bool(model.has_saliency),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "weights_digest": weights_digest(model.net),
        "outputs": ["features", "embedding"] + (["saliency"] if model.has_saliency else []),
    }


def export_model(
    model: FeatureModel, path: str | Path, fmt: str = "onnx", *, example_size: int = 64, opset: int = 17
) -> dict[str, Any]:
    """Write ``model``'s network to ``path`` as ONNX or TorchScript (on the CPU, float32).

    ``example_size``: the side of the example input that traces the network (any size works
    afterwards). Returns the metadata written with it.

    Example::

        model = maskcontrast.load_model("last.pt")
        export_model(model, "model.onnx")                    # then load_exported("model.onnx")
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format must be onnx or torchscript, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = ExportNet(model.net).cpu().eval()
    meta = _metadata(model, fmt)
    side = max(model.output_stride, example_size - example_size % model.output_stride)
    x = torch.rand(1, 3, side, side + model.output_stride)
    names = meta["outputs"]
    tmp = path.with_name(f".{path.name}.export.tmp")
    try:
        if fmt == "onnx":
            import onnx

            axes = {"image": {0: "batch", 2: "height", 3: "width"}}
            axes.update({n: {0: "batch", 2: "feat_height", 3: "feat_width"} for n in names})
            with torch.no_grad():
                torch.onnx.export(
                    net,
                    (x,),
                    str(tmp),
                    input_names=["image"],
                    output_names=names,
                    dynamic_axes=axes,
                    opset_version=opset,
                    dynamo=False,
                )
            proto = onnx.load(str(tmp))
            for key, value in meta.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = f"maskcontrast.{key}", json.dumps(value)
            onnx.save(proto, str(tmp))
        else:
            with torch.no_grad():
                traced = torch.jit.trace(net, (x,), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={META_KEY: json.dumps(meta)})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s, outputs %s)", path, fmt, ", ".join(names))
    return meta


class ExportedModel(FeatureModel):
    """An exported file (ONNX through onnxruntime, or TorchScript) behind the
    :class:`FeatureModel` methods (``run``, ``embed``, ``saliency``, ``features``, ``segment``)."""

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        runner: Any,
        *,
        size: Any = None,
        batch_size: int = 8,
        device: torch.device | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.kind = str(meta.get("kind", "exported"))
        self.output_stride = int(meta["output_stride"])
        self.feature_dim = int(meta["feature_dim"])
        self.embed_dim = int(meta["embed_dim"])
        self.has_saliency = bool(meta["has_saliency"])
        self.arch = str(meta.get("arch", "?"))
        self._outputs = None
        self.net = runner if isinstance(runner, nn.Module) else None
        self._session = None if isinstance(runner, nn.Module) else runner
        self.size = size
        self.stride = self.output_stride
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.amp = False
        self.source = str(path)
        self.layout = str(meta["format"])
        self.weights_digest = str(meta["weights_digest"])
        self.register_buffer("mean", torch.tensor(meta.get("mean", IMAGENET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(meta.get("std", IMAGENET_STD)).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        if device is not None:
            self.to(device)

    def forward(self, x: torch.Tensor) -> FeatureOutput:
        if self._session is not None:
            outs = self._session.run(None, {"image": x.detach().float().cpu().numpy()})
            ts = [torch.from_numpy(np.asarray(o)).to(x.device) for o in outs]
        else:
            with torch.no_grad():
                ts = list(self.net(x.float()))
        return FeatureOutput(ts[0].float(), ts[1].float(), ts[2].float() if len(ts) > 2 else None)


def load_exported(
    path: str | Path, device: str | torch.device | None = None, *, size: Any = None, batch_size: int = 8
) -> ExportedModel:
    """Read a file written by :func:`export_model` (``.onnx``: onnxruntime, on the CPU unless a
    CUDA provider is installed; else TorchScript).

    Raises:
        ValueError: a missing file, one without maskcontrast metadata, or onnxruntime missing.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--model {path}: file not found; write one with python -m maskcontrast.export")
    dev = get_device(device)
    if path.suffix.lower() == ".onnx":
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as err:
            raise ValueError(
                f"--model {path}: reading ONNX needs onnx and onnxruntime (pip install 'maskcontrast[export]')"
            ) from err
        proto = onnx.load(str(path), load_external_data=False)
        meta = {
            p.key[len("maskcontrast.") :]: json.loads(p.value)
            for p in proto.metadata_props
            if p.key.startswith("maskcontrast.")
        }
        if "weights_digest" not in meta:
            raise ValueError(f"--model {path}: no maskcontrast metadata; export it with python -m maskcontrast.export")
        providers = ["CPUExecutionProvider"]
        if dev.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        runner: Any = ort.InferenceSession(str(path), providers=providers)
    else:
        extra = {META_KEY: ""}
        try:
            runner = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
        except Exception as err:
            raise ValueError(f"--model {path}: not a TorchScript file written by maskcontrast.export ({err})") from err
        if not extra[META_KEY]:
            raise ValueError(f"--model {path}: no maskcontrast metadata; export it with python -m maskcontrast.export")
        meta = json.loads(extra[META_KEY])
    return ExportedModel(path, meta, runner, size=size, batch_size=batch_size, device=dev)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskcontrast.export",
        description="Export a checkpoint's network (embeddings, saliency, features; any "
        "input size) as ONNX or TorchScript.",
    )
    p.add_argument("--checkpoint", required=True, help="maskcontrast checkpoint (or MoCo / torchvision file)")
    p.add_argument("--format", default="onnx", choices=FORMATS, help="onnx (default) or torchscript")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.onnx)")
    p.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32), help="backbone-only files only")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    setup_logging()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    model = load_model(args.checkpoint, "cpu", output_stride=args.output_stride)
    meta = export_model(model, out, args.format, opset=args.opset)
    print(f"wrote {out} ({args.format}; outputs {', '.join(meta['outputs'])}; weights {meta['weights_digest']})")
    return meta


if __name__ == "__main__":
    run_main(main, "maskcontrast.export")

"""The quality protocol at GPU scale: pack the shared images here, run (a)-(d) on one GPU there.

Two steps, because a lent GPU machine has no copy of the data:

1. ``--pack FILE`` (here, where ``MASKCONTRAST_DATA`` is): the shared sets of ``bench/quality.py``
   in their own reader layouts, every photo resized to a shorter side of ``--pack-size`` px
   (default 256) and stored as JPEG, every label map resized with nearest neighbour and kept as
   PNG, the text files (id and split lists, class names) as they are, in one uncompressed tar of
   at most ``--max-mib`` (60 MiB). ``--limit N`` keeps N evenly spaced images per set (the id
   lists are filtered to them).
2. ``--from-pack FILE --out DIR`` (there): unpacks into ``DIR/data`` (photos go back to the format
   each reader reads), checks the device (CUDA, bf16 autocast forward/backward, faiss GPU index),
   and runs ``bench/quality.py --preset gpu`` (R50-OS8 at 224 px with the paper's
   hyper-parameters, scaled to the images there are) into ``DIR/quality``. It prints the table and
   writes ``DIR/gpu_quality.json`` (device checks, wall time of every stage). Every stage resumes.
   ``--tiny`` runs the same stages at toy sizes on a CPU in about a minute (a test does).

    MASKCONTRAST_DATA=../shared/data python bench/gpu_quality.py --pack /tmp/pack.tar
    python bench/gpu_quality.py --from-pack /tmp/pack.tar --out runs/gpu_quality
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import quality  # bench/quality.py: the protocol and its presets
except ImportError:  # a bare machine before --from-bundle installed omegaconf and kornia
    quality = None  # type: ignore[assignment]

log = logging.getLogger("bench.gpu_quality")

MANIFEST = "pack_manifest.json"
#: label maps: palette / binary / integer images (an 8-bit grey PNG with few values counts too)
LABEL_MODES = ("P", "1", "I", "I;16", "I;16B", "F")
PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
SKIP_EXTS = (".mat", ".xml", ".npy", ".zip", ".tar", ".gz")
MAX_META_BYTES = 2 << 20
REPO = HERE.parent
BUNDLE_MANIFEST = "bundle.json"
#: what the GPU protocol needs beyond torch, torchvision, numpy, scipy, scikit-learn/-image, tensorboard,
#: matplotlib and tqdm: distribution -> import name. The bundle pins the versions installed here (tested).
BUNDLE_PURE = {"kornia": "kornia", "omegaconf": "omegaconf"}
BUNDLE_BINARY = {"kornia_rs": "kornia_rs", "PyYAML": "yaml"}  # one wheel per Python version
BUNDLE_FAISS = {"faiss-cpu": "faiss"}  # one abi3 wheel (19 MiB); --bundle-faiss (eval falls back to torch K-means)
BUNDLE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pack", metavar="FILE", help="write the pack of the shared images (needs MASKCONTRAST_DATA)")
    mode.add_argument("--from-pack", metavar="FILE", help="unpack FILE and run the protocol")
    mode.add_argument(
        "--bundle",
        metavar="DIR",
        help="write DIR: the pack (192 px, JPEG 85) and the wheels of the packages a bare CUDA "
        "machine lacks; DIR plus this repository stay under --max-mib",
    )
    mode.add_argument(
        "--from-bundle",
        metavar="DIR",
        help="install DIR's wheels that this Python lacks into DIR/site (pip --target, no "
        "network), then run --from-pack DIR/pack.tar with DIR/site on PYTHONPATH",
    )
    p.add_argument(
        "--pack-size",
        type=int,
        default=None,
        help="shorter side of the packed images (px; default 256, 192 for --bundle)",
    )
    p.add_argument("--jpeg-quality", type=int, default=None, help="default 90, 85 for --bundle")
    p.add_argument(
        "--max-mib",
        type=float,
        default=60.0,
        help="refuse to write a pack (--bundle: the bundle plus the repository) larger than this",
    )
    names = [n for n, _ in quality.TRAIN_SETS] if quality is not None else None
    p.add_argument("--sets", nargs="+", default=names, choices=names, help="sets to pack")
    p.add_argument(
        "--bundle-python",
        nargs="+",
        default=["3.10", "3.11", "3.12", "3.13"],
        metavar="X.Y",
        help="--bundle: Python versions to fetch the compiled wheels for",
    )
    p.add_argument("--bundle-faiss", action="store_true", help="--bundle: add faiss-cpu (19 MiB)")
    p.add_argument(
        "--until",
        default="report",
        choices=("masks", "moco", "train", "report"),
        help="stop after this stage of bench/quality.py (each stage resumes; see docs/BENCHMARKS.md)",
    )
    p.add_argument("--limit", type=int, default=0, help="> 0: pack only N evenly spaced images per set")
    p.add_argument("--out", default="runs/gpu_quality", help="output folder of --from-pack (resumable)")
    p.add_argument("--tiny", action="store_true", help="toy sizes on any device (the test of this script)")
    p.add_argument(
        "--quality-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for bench/quality.py (repeatable), e.g. --quality-arg=--pretrain-steps=200",
    )
    args = p.parse_args(argv)
    if args.pack_size is None:
        args.pack_size = 192 if args.bundle else 256
    if args.jpeg_quality is None:
        args.jpeg_quality = 85 if args.bundle else 90
    if args.pack_size < 16:
        p.error(f"--pack-size must be >= 16, got {args.pack_size}")
    if args.limit < 0:
        p.error(f"--limit must be >= 0, got {args.limit}")
    return args


# -- packing ------------------------------------------------------------------------------------
def resized(img: Image.Image, size: int, label: bool) -> Image.Image:
    """``img`` with its shorter side scaled down to ``size`` (never up); nearest neighbour for labels."""
    w, h = img.size
    s = size / min(w, h)
    if s >= 1:
        return img
    new = (max(1, round(w * s)), max(1, round(h * s)))
    return img.resize(new, Image.Resampling.NEAREST if label else Image.Resampling.BILINEAR, reducing_gap=None)


def is_label(img: Image.Image, path: Path) -> bool:
    if img.mode in LABEL_MODES:
        return True
    return img.mode == "L" and path.suffix.lower() == ".png" and len(np.unique(np.asarray(img))) <= 32


def select_ids(ids: list[str], limit: int) -> list[str]:
    """Every id, or ``limit`` evenly spaced ones (the rule of ``data.sources[].limit``)."""
    if not limit or limit >= len(ids):
        return list(ids)
    step = len(ids) / limit
    return [ids[int(i * step)] for i in range(limit)]


def filter_id_lines(text: str, keep: set[str], all_ids: set[str]) -> str:
    """Drop the lines of an id list whose first column is an id that is not kept; other lines stay."""
    out = []
    for line in text.splitlines():
        first = line.split()[0] if line.strip() else ""
        if first in all_ids and first not in keep:
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def pack(args: argparse.Namespace) -> Path:
    from maskcontrast.data import build_dataset, data_root

    data = data_root()
    if data is None:
        raise SystemExit("bench/gpu_quality.py --pack: set MASKCONTRAST_DATA to the shared data folder")
    target = Path(args.pack).expanduser()
    if target.exists():
        raise SystemExit(f"bench/gpu_quality.py --pack: {target} exists; remove it or pick another file")
    folders = dict(quality.TRAIN_SETS)
    restore: dict[str, str] = {}
    counts: dict[str, int] = {}
    tmp = target.with_name(target.name + ".tmp")
    t0 = time.perf_counter()
    with tarfile.open(tmp, "w") as tar:

        def add_bytes(name: str, blob: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for name in args.sets:
            root = data / folders[name]
            ds = build_dataset(name, root)
            all_ids = set(ds.ids)
            keep = select_ids(list(ds.ids), args.limit)
            media: set[Path] = set()
            for sid in keep:
                files = ds.files(sid)
                for path, label in ((files.image, False), (files.label, True)):
                    if path is None or not path.is_file():
                        continue
                    media.add(path)
                    rel = f"{folders[name]}/{path.relative_to(root).as_posix()}"
                    with Image.open(path) as img:
                        img.load()
                        label = label and is_label(img, path)
                        small = resized(img, args.pack_size, label)
                    buf = io.BytesIO()
                    if label:
                        small.save(buf, format="PNG", optimize=True)
                        add_bytes(rel, buf.getvalue())
                    else:
                        small.convert("RGB").save(buf, format="JPEG", quality=args.jpeg_quality)
                        packed = rel if path.suffix.lower() in (".jpg", ".jpeg") else rel + ".jpg"
                        if packed != rel:
                            restore[packed] = rel
                        add_bytes(packed, buf.getvalue())
            counts[name] = len(keep)
            for path in sorted(root.rglob("*")):  # lists, class names, READMEs: as they are (id lists filtered)
                low = path.suffix.lower()
                if not path.is_file() or path in media or low in PHOTO_EXTS or low in SKIP_EXTS:
                    continue
                if path.stat().st_size > MAX_META_BYTES:
                    continue
                text = path.read_bytes()
                if args.limit and low in (".txt", ""):
                    text = filter_id_lines(text.decode("utf-8", "replace"), set(keep), all_ids).encode()
                add_bytes(f"{folders[name]}/{path.relative_to(root).as_posix()}", text)
            log.info("packed %s: %d images", name, len(keep))
        manifest = {
            "pack_size": args.pack_size,
            "sets": counts,
            "restore": restore,
            "source": str(data),
            "date": time.strftime("%Y-%m-%d"),
        }
        add_bytes(MANIFEST, json.dumps(manifest, indent=2).encode())
    mib = tmp.stat().st_size / 2**20
    if mib > args.max_mib:
        tmp.unlink()
        raise SystemExit(
            f"bench/gpu_quality.py --pack: the pack would be {mib:.1f} MiB, over --max-mib "
            f"{args.max_mib:g}; lower --pack-size or --jpeg-quality"
        )
    os.replace(tmp, target)
    print(
        f"wrote {target}: {mib:.1f} MiB, {sum(counts.values())} images ({counts}) in {time.perf_counter() - t0:.0f} s"
    )
    return target


def unpack(pack_file: Path, dest: Path) -> dict:
    """Extract ``pack_file`` into ``dest`` (atomically: a finished ``dest`` is reused) and restore
    every photo to the format its reader reads. Returns the manifest."""
    if (dest / MANIFEST).is_file():
        return json.loads((dest / MANIFEST).read_text())
    if not pack_file.is_file():
        raise SystemExit(f"bench/gpu_quality.py: no pack at {pack_file}; make one with --pack {pack_file}")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(pack_file) as tar:
        try:
            tar.extractall(tmp, filter="data")
        except tarfile.TarError as err:
            raise SystemExit(f"bench/gpu_quality.py: {pack_file} is not a readable pack ({err}); re-make it") from err
    manifest = json.loads((tmp / MANIFEST).read_text())
    for packed, original in manifest["restore"].items():
        with Image.open(tmp / packed) as img:
            img.convert("RGB").save(tmp / original)
        (tmp / packed).unlink()
    os.replace(tmp, dest)
    return manifest


# -- the device -----------------------------------------------------------------------------------
def device_checks() -> dict:
    """What the GPU run relies on: CUDA, bf16 autocast forward + backward of a conv net, faiss GPU."""
    import torch
    import torchvision

    out: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    device = torch.device("cuda" if out["cuda"] else "cpu")
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
        out["bf16_supported"] = bool(torch.cuda.is_bf16_supported())  # False: the trainer falls back to fp16
    dtype = torch.bfloat16 if out.get("bf16_supported", True) else torch.float16
    net = torchvision.models.resnet18(weights=None).to(device)
    x = torch.randn(4, 3, 64, 64, device=device)
    with torch.autocast(device.type, dtype=dtype):
        y = net(x)
    y.float().sum().backward()
    out["amp_bf16" if dtype == torch.bfloat16 else "amp_fp16"] = {
        "output_dtype": str(y.dtype),
        "grad_finite": bool(torch.isfinite(net.conv1.weight.grad).all()),
    }
    try:
        import faiss

        out["faiss"] = {"version": faiss.__version__, "gpus": int(faiss.get_num_gpus())}
    except ImportError as err:
        out["faiss"] = {"error": str(err)}
    return out


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = unpack(Path(args.from_pack).expanduser().resolve(), out / "data")
    checks = device_checks()
    print("device checks:", json.dumps(checks))
    os.environ["MASKCONTRAST_DATA"] = str(out / "data")
    qargs = [
        "--preset",
        "tiny" if args.tiny else "gpu",
        "--out",
        str(out / "quality"),
        "--train-sets",
        *manifest["sets"],
        "--until",
        args.until,
        *args.quality_arg,
    ]
    try:
        quality.main(qargs)
    except SystemExit as stop:  # --until: the stages so far are done; the next command resumes from them
        if args.until == "report" or not str(stop.code).startswith("stopped after"):
            raise
        print(stop.code)
    stages_file = out / "quality" / "stages.json"
    stages = json.loads(stages_file.read_text()) if stages_file.is_file() else {}
    report_file = out / "quality" / "quality.json"
    result = {
        "device": checks,
        "pack": manifest["sets"],
        "quality_args": qargs,
        "stages": {k: {"seconds": v["seconds"], "cpu_seconds": v.get("cpu_seconds")} for k, v in stages.items()},
        "until": args.until,
        "failed_stages": json.loads(report_file.read_text()).get("failed_stages", {}) if report_file.is_file() else {},
        "wall_seconds_this_call": time.perf_counter() - t0,
    }
    (out / "gpu_quality.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wall time of this call: {result['wall_seconds_this_call']:.0f} s; wrote {out / 'gpu_quality.json'}")
    return result


# -- the bundle for a bare CUDA machine -------------------------------------------------------------
def repo_mib() -> float:
    """Size of this repository's tracked files (what a checkout copies), in MiB."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        paths = [REPO / f for f in files.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        paths = [f for f in REPO.rglob("*") if f.is_file() and ".git" not in f.parts]
    return sum(f.stat().st_size for f in paths if f.is_file()) / 2**20


def pip(args: list[str]) -> None:
    """``python -m pip ARGS`` (the one place the bundle talks to pip; tests replace it)."""
    log.info("pip %s", " ".join(args))
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def bundle_packages(with_faiss: bool) -> dict[str, dict]:
    """Distribution -> ``{"version", "module", "binary"}``: the versions installed here (the tested ones)."""
    from importlib import metadata

    groups = [(BUNDLE_PURE, False), (BUNDLE_BINARY, True)] + ([(BUNDLE_FAISS, True)] if with_faiss else [])
    out = {}
    for group, binary in groups:
        for dist, module in group.items():
            try:
                out[dist] = {"version": metadata.version(dist), "module": module, "binary": binary}
            except metadata.PackageNotFoundError as err:
                raise SystemExit(
                    f"bench/gpu_quality.py --bundle: {dist} is not installed here; install it first"
                ) from err
    return out


def bundle(args: argparse.Namespace) -> Path:
    """Write ``--bundle DIR``: ``pack.tar``, ``wheels/`` and ``bundle.json``; refuse an existing DIR
    and a bundle that, with the repository, is over ``--max-mib``."""
    target = Path(args.bundle).expanduser().resolve()
    if target.exists():
        raise SystemExit(f"bench/gpu_quality.py --bundle: {target} exists; remove it or pick another folder")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wheels").mkdir(parents=True)
    try:
        packages = bundle_packages(args.bundle_faiss)
        pure = [f"{d}=={p['version']}" for d, p in packages.items() if not p["binary"]]
        binary = [f"{d}=={p['version']}" for d, p in packages.items() if p["binary"]]
        pip(["download", "--no-deps", "--only-binary=:all:", "-d", str(tmp / "wheels"), *pure])
        for version in args.bundle_python:
            platforms = [x for plat in BUNDLE_PLATFORMS for x in ("--platform", plat)]
            pip(
                [
                    "download",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--implementation",
                    "cp",
                    "--python-version",
                    version,
                    *platforms,
                    "-d",
                    str(tmp / "wheels"),
                    *binary,
                ]
            )
        pack(argparse.Namespace(**{**vars(args), "pack": str(tmp / "pack.tar"), "max_mib": args.max_mib}))
        mib = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) / 2**20
        total = mib + repo_mib()
        if total > args.max_mib:
            raise SystemExit(
                f"bench/gpu_quality.py --bundle: the bundle is {mib:.1f} MiB, {total:.1f} MiB with the "
                f"repository, over --max-mib {args.max_mib:g}; lower --pack-size or --jpeg-quality, "
                "or fetch fewer --bundle-python versions"
            )
        info = {
            "packages": packages,
            "python": args.bundle_python,
            "platforms": list(BUNDLE_PLATFORMS),
            "pack_size": args.pack_size,
            "jpeg_quality": args.jpeg_quality,
            "bundle_mib": round(mib, 1),
            "with_repository_mib": round(total, 1),
            "date": time.strftime("%Y-%m-%d"),
        }
        (tmp / BUNDLE_MANIFEST).write_text(json.dumps(info, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, target)
    print(
        f"wrote {target}: {mib:.1f} MiB ({total:.1f} MiB with the repository); on the GPU machine run\n"
        f"  python bench/gpu_quality.py --from-bundle {target.name} --out runs/gpu_quality --until masks"
    )
    return target


def install_bundle(folder: Path, force: bool = False) -> Path:
    """Install the bundle's wheels that this Python cannot import into ``folder/site`` (pip
    ``--target``, ``--no-index``: no network). Returns that folder (for PYTHONPATH)."""
    import importlib.util

    info_file = folder / BUNDLE_MANIFEST
    if not info_file.is_file():
        raise SystemExit(
            f"bench/gpu_quality.py --from-bundle: {folder} has no {BUNDLE_MANIFEST}; make it with "
            f"--bundle {folder} where the data is"
        )
    info = json.loads(info_file.read_text())
    site = folder / "site"
    missing = [
        f"{d}=={p['version']}"
        for d, p in info["packages"].items()
        if force or importlib.util.find_spec(p["module"]) is None
    ]
    done = site / ".installed.json"
    if missing and not (done.is_file() and json.loads(done.read_text()) == missing):
        tmp = folder / "site.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        pip(
            [
                "install",
                "--no-index",
                "--no-deps",
                "--find-links",
                str(folder / "wheels"),
                "--target",
                str(tmp),
                *missing,
            ]
        )
        (tmp / ".installed.json").write_text(json.dumps(missing))
        shutil.rmtree(site, ignore_errors=True)
        os.replace(tmp, site)
    log.info("bundle: %s", f"installed {', '.join(missing)} into {site}" if missing else "nothing missing here")
    return site


def run_bundle(args: argparse.Namespace, argv: list[str]) -> int:
    """``--from-bundle DIR``: install what is missing, then run ``--from-pack DIR/pack.tar`` (the other
    flags as given) in a fresh interpreter with ``DIR/site`` on PYTHONPATH."""
    folder = Path(args.from_bundle).expanduser().resolve()
    site = install_bundle(folder)
    rest, skip = [], False
    for a in argv:  # every flag but --from-bundle DIR
        if skip:
            skip = False
        elif a == "--from-bundle":
            skip = True
        elif not a.startswith("--from-bundle="):
            rest.append(a)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")]))
    )
    command = [sys.executable, str(Path(__file__).resolve()), "--from-pack", str(folder / "pack.tar"), *rest]
    return subprocess.run(command, env=env).returncode


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_bundle:
        code = run_bundle(args, argv)
        if code:
            raise SystemExit(code)
        return
    if quality is None:
        raise SystemExit(
            "bench/gpu_quality.py: omegaconf or kornia is missing here; run with --from-bundle DIR "
            "(a folder made by --bundle DIR), or install them"
        )
    if args.bundle:
        bundle(args)
    elif args.pack:
        pack(args)
    else:
        run(args)


if __name__ == "__main__":
    main()

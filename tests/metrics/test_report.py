"""The HTML report parses, is self-contained, and every image it names is an embedded PNG."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
from click.testing import CliRunner
from helpers import EXAMPLES, model_path
from PIL import Image

from blackbox_xai.cli import cli
from blackbox_xai.metrics.deletion import CurveResult
from blackbox_xai.report import Figure, Section, plot_curves, render_report

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "area", "base", "source", "wbr"}


class Page(HTMLParser):
    """Collects <img> attributes and checks that every non-void tag is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict] = []
        self.tags: list[str] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")

    def handle_data(self, data):
        self.text.append(data)


def check_page(text: str) -> Page:
    """Parse; assert well-formed, offline (no scripts, links, remote URLs), images embedded PNGs."""
    page = Page()
    page.feed(text)
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    assert text.startswith("<!DOCTYPE html>")
    assert "script" not in page.tags and "link" not in page.tags
    assert "http://" not in text and "https://" not in text
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            assert (im.width, im.height) == (int(img["width"]), int(img["height"]))
        assert img.get("alt")
    return page


def curves() -> CurveResult:
    t = np.linspace(0, 1, 29).astype(np.float32)
    return CurveResult(0.2, 0.8, np.exp(-5 * t), 1 - np.exp(-5 * t), t)


def test_plot_curves_draws_both_curves():
    img = plot_curves(curves(), "cat - occlusion")
    arr = np.asarray(img)
    red = np.all(arr == (200, 40, 40), axis=-1).sum()
    blue = np.all(arr == (30, 90, 200), axis=-1).sum()
    assert img.size == (330, 250) and red > 300 and blue > 300


def test_render_report_embeds_every_image():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8))
    sections = [Section("cat.jpg <b>", [Figure(photo, "photo & map"), Figure(plot_curves(curves()), "curves")],
                        text="a note")]
    table = [{"image": "cat.jpg", "method": "occlusion", "deletion_auc": 0.123456,
              "pointing_hit": True, "energy_pointing": float("nan"), "queries": 17}]
    html = render_report("report <title>", sections, tables=[("Metrics", table, None)],
                         meta=["model x"])
    page = check_page(html)
    assert len(page.images) == 2
    text = " ".join(page.text)
    assert "cat.jpg <b>" in text and "0.1235" in text and "yes" in text  # escaped, not markup
    assert "<b>" not in html.replace("&lt;b&gt;", "")


def test_evaluate_report_is_self_contained(tmp_path):
    photos = [EXAMPLES / "cat.jpg", EXAMPLES / "rocket.jpg"]
    report = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["evaluate", model_path("tiny_cnn"), *map(str, photos),
                                 "--methods", "occlusion", "-o", "window=8", "-o", "stride=8",
                                 "--report", str(report)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = check_page(report.read_text())
    assert len(page.images) == 2 * 3  # per photo: the photo, the overlay, the curves
    alts = [img["alt"] for img in page.images]
    assert sum("cat.jpg" in a for a in alts) == 1 and sum("rocket.jpg" in a for a in alts) == 1
    text = " ".join(page.text)
    assert "Per-method means" in text and "deletion_auc" in text and "insertion_auc" in text
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind

"""The bad-input corpus (issue 10): every bad input is one clear line, every output is
all-or-nothing, the user's files are never touched.

Each CLI case runs ``bbx -q ...`` in-process and checks, whatever the command:

* bad input: exit code 2 and exactly one line, starting with ``error: ``;
* odd but valid input: exit code 0, no error line, and every map written is finite;
* nothing partial anywhere: the whole temporary directory (inputs and ``--out``) is listed and
  hashed before and after; a bad input leaves it exactly as it was (no file, no folder, no
  ``.tmp``), a good one only adds files under its output folder (and replaces files there only
  with ``--overwrite``); the models, sidecars, images and box files are byte-identical;
* nothing printed behind click's back (ONNX Runtime's C++ log goes to file descriptor 2).

The Python API cases expect a :class:`blackbox_xai.errors.BlackboxError` (a subclass where one
fits) with a message that says what is wrong, or a finite map.

Every fixture (images, sidecars, box files, broken models) is generated into ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import TEST_MODELS
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from blackbox_xai.cli import cli
from blackbox_xai.errors import BlackboxError

OPSET = [helper.make_opsetid("", 17)]

# Small budgets so that each good case costs a few model evaluations.
BUDGET = {
    "occlusion": ["--window", "16", "--stride", "16"],
    "rise": ["--n-masks", "8"],
    "shapley": ["--grid", "2", "--n-permutations", "2"],
    "lime": ["--num-samples", "8", "--segments", "grid"],
    "meaningful-perturbation": ["--iterations", "2", "--mask-size", "4", "--jitter", "0"],
    "integrated-gradients": ["--steps", "2"],
    "smoothgrad": ["--n-samples", "2"],
    "smooth-gradcampp": ["--n-samples", "2"],
}
EVAL_BUDGET = ["--methods", "occlusion", "-o", "window=16", "-o", "stride=16"]


# ---- fixtures generated at run time -------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (and whose data is one tiny row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _value(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), check=True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "corpus", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    if check:
        onnx.checker.check_model(m)
    return m


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


IMAGE_IN = _value("x", TensorProto.FLOAT, ["N", 3, 32, 32])
W35 = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)


def _pool_head(src: str, out: str = "scores") -> list:
    """src (N, C, H, W) -> global average pool -> (N, C) -> Gemm W35 -> out (N, 5)."""
    return [helper.make_node("GlobalAveragePool", [src], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W"], [out])]


def build_model(kind: str) -> onnx.ModelProto:
    """The broken or unusual models of the corpus, built with onnx.helper."""
    scores = _value("scores", TensorProto.FLOAT, ["N", 5])
    w = _init("W", W35)
    if kind == "reshape_batch1":  # Reshape to (1, -1): runs for batch 1, fails at run time otherwise
        return _model([helper.make_node("Reshape", ["x", "shape"], ["flat"]),
                       helper.make_node("MatMul", ["flat", "W"], ["scores"])],
                      [IMAGE_IN], [scores],
                      [_init("shape", np.array([1, -1], np.int64)),
                       _init("W", np.full((3 * 32 * 32, 5), 1e-3, np.float32))])
    if kind == "reshape_never":  # Reshape to (7, -1): 3072 is no multiple of 7, fails on any batch
        return _model([helper.make_node("Reshape", ["x", "shape"], ["flat"]),
                       helper.make_node("ReduceSum", ["flat"], ["scores"], keepdims=1)],
                      [IMAGE_IN], [scores], [_init("shape", np.array([7, -1], np.int64))])
    if kind == "log_of_mean":  # scores = log(channel means): NaN once a channel mean is negative
        return _model([helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
                       helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
                       helper.make_node("Log", ["flat"], ["scores"])],
                      [IMAGE_IN], [_value("scores", TensorProto.FLOAT, ["N", 3])])
    if kind == "nan_always":  # log(-1 - |mean|): NaN for every input
        return _model([*_pool_head("x", "lin"),
                       helper.make_node("Abs", ["lin"], ["a"]),
                       helper.make_node("Add", ["a", "one"], ["b"]),
                       helper.make_node("Neg", ["b"], ["c"]),
                       helper.make_node("Log", ["c"], ["scores"])],
                      [IMAGE_IN], [scores], [w, _init("one", np.float32(1))])
    if kind == "inf_always":  # 1 / 0
        return _model([*_pool_head("x", "lin"),
                       helper.make_node("Mul", ["lin", "zero"], ["z"]),
                       helper.make_node("Div", ["one", "z"], ["scores"])],
                      [IMAGE_IN], [scores], [w, _init("one", np.float32(1)), _init("zero", np.float32(0))])
    if kind == "if_outer":  # an If whose branches read the outer tensor 'flat'
        then_g = helper.make_graph([helper.make_node("Identity", ["flat"], ["t_out"])], "then", [],
                                   [_value("t_out", TensorProto.FLOAT, ["N", 8])])
        else_g = helper.make_graph([helper.make_node("Neg", ["flat"], ["e_out"])], "else", [],
                                   [_value("e_out", TensorProto.FLOAT, ["N", 8])])
        rng = np.random.default_rng(1)
        return _model([helper.make_node("Conv", ["x", "cw"], ["conv"], pads=[1, 1, 1, 1]),
                       helper.make_node("Relu", ["conv"], ["features"]),
                       helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
                       helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
                       helper.make_node("If", ["cond"], ["sel"], then_branch=then_g, else_branch=else_g),
                       helper.make_node("Gemm", ["sel", "W8"], ["scores"])],
                      [IMAGE_IN], [scores],
                      [_init("cw", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
                       _init("W8", rng.standard_normal((8, 5)).astype(np.float32)),
                       _init("cond", np.array(True))])
    if kind == "sin":  # an op with no gradient rule
        return _model([helper.make_node("Sin", ["x"], ["s"]), *_pool_head("s")], [IMAGE_IN], [scores], [w])
    if kind == "zero_classes":  # scores of shape (N, 0)
        return _model([helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
                       helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
                       helper.make_node("Slice", ["flat", "s0", "s0", "ax"], ["scores"])],
                      [IMAGE_IN], [_value("scores", TensorProto.FLOAT, ["N", 0])],
                      [_init("s0", np.array([0], np.int64)), _init("ax", np.array([1], np.int64))])
    if kind == "text":  # token ids (N, 16) int64
        return _model([helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
                       helper.make_node("MatMul", ["f", "W16"], ["scores"])],
                      [_value("ids", TensorProto.INT64, ["N", 16])], [scores],
                      [_init("W16", np.ones((16, 5), np.float32))])
    if kind == "audio":  # a waveform (N, 1, 16000)
        return _model([helper.make_node("GlobalAveragePool", ["wav"], ["pooled"]),
                       helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
                       helper.make_node("Gemm", ["flat", "W1"], ["scores"])],
                      [_value("wav", TensorProto.FLOAT, ["N", 1, 16000])], [scores],
                      [_init("W1", np.ones((1, 5), np.float32))])
    if kind == "two_images":
        return _model([helper.make_node("Add", ["x", "x2"], ["s"]), *_pool_head("s")],
                      [IMAGE_IN, _value("x2", TensorProto.FLOAT, ["N", 3, 32, 32])], [scores], [w])
    if kind == "five_channels":
        return _model([*_pool_head("x")], [_value("x", TensorProto.FLOAT, ["N", 5, 32, 32])], [scores],
                      [_init("W", np.ones((5, 5), np.float32))])
    if kind == "dynamic_hw":  # a fully convolutional classifier: any input size
        return _model([*_pool_head("x")], [_value("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                      [scores], [w])
    if kind == "external_missing":  # weights in an external file that is not there
        m = _model([*_pool_head("x")], [IMAGE_IN], [scores], [w])
        t = m.graph.initializer[0]
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "missing_weights.bin"), ("offset", "0"), ("length", "60")):
            t.external_data.add(key=k, value=v)
        return m
    if kind == "custom_op":  # an op from a domain ONNX Runtime does not know
        graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["s"], domain="com.example"),
                                   *_pool_head("s")], "corpus", [IMAGE_IN], [scores], [w])
        return helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("com.example", 1)],
                                 ir_version=8)
    raise KeyError(kind)


class Fx:
    """Inputs generated on demand under ``tmp_path / "in"``; outputs go to ``tmp_path / "out"``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "in"
        self.dir.mkdir()
        self.out = root / "out"
        self._made: dict[str, Path] = {}

    def _once(self, key: str, make: Callable[[], Path]) -> str:
        if key not in self._made:
            self._made[key] = make()
        return str(self._made[key])

    def write(self, name: str, data: bytes | str) -> str:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(p)

    # models
    def model(self, name: str = "tiny_cnn", as_name: str | None = None) -> str:
        """A copy of a committed test model (so that its bytes are checked afterwards)."""
        dest = as_name or f"{name}.onnx"
        return self._once(f"model:{dest}", lambda: Path(shutil.copy(TEST_MODELS / f"{name}.onnx",
                                                                    self.dir / dest)))

    def built(self, kind: str) -> str:
        def make() -> Path:
            p = self.dir / f"{kind}.onnx"
            p.write_bytes(build_model(kind).SerializeToString())
            return p
        return self._once(f"built:{kind}", make)

    def sidecar(self, content: Any, name: str = "sc", raw: bool = False) -> str:
        """tiny_cnn copied as ``name.onnx`` with ``content`` as its sidecar (JSON, or bytes)."""
        model = self.model("tiny_cnn", f"{name}.onnx")
        data = content if raw else json.dumps(content, allow_nan=True)
        self.write(f"{name}.onnx.json", data)
        return model

    # images
    def image(self, kind: str = "good", name: str | None = None) -> str:
        return self._once(f"image:{kind}:{name}", lambda: self._make_image(kind, name))

    def _make_image(self, kind: str, name: str | None) -> Path:
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        ext = {"exif_rotated": "jpg", "cmyk": "jpg", "gif": "gif", "tiff_float": "tif",
               "webp": "webp"}.get(kind, "png")
        p = self.dir / (name or f"{kind}.{ext}")
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "good":
            Image.fromarray(rgb).save(p, format="PNG")
        elif kind == "dark":  # every pixel 10: channel means 0.04 after / 255
            Image.fromarray(np.full((32, 32, 3), 10, np.uint8)).save(p)
        elif kind == "strip":
            Image.fromarray(rng.integers(0, 256, (1, 20000, 3), dtype=np.uint8)).save(p)
        elif kind == "tall_strip":
            Image.fromarray(rng.integers(0, 256, (20000, 1, 3), dtype=np.uint8)).save(p)
        elif kind == "one_pixel":
            Image.fromarray(rgb[:1, :1]).save(p)
        elif kind == "exif_rotated":  # stored 40 wide x 20 high, orientation 6: shown 20 x 40
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(p, exif=exif)
        elif kind == "png16":
            Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)).save(p)
        elif kind == "palette_transparent":
            im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
            im.save(p, transparency=0)
        elif kind == "cmyk":
            Image.fromarray(rgb).convert("CMYK").save(p)
        elif kind == "grey":
            Image.fromarray(rgb[..., 0]).save(p)
        elif kind == "grey_alpha":
            Image.fromarray(rgb[..., :2].copy(), "LA").save(p)
        elif kind == "rgba":
            Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(p)
        elif kind == "bilevel":
            Image.fromarray(rgb[..., 0] > 128).save(p)
        elif kind == "gif":  # animated: the first frame is used
            frames = [Image.fromarray(rgb).convert("P"), Image.fromarray(255 - rgb).convert("P")]
            frames[0].save(p, save_all=True, append_images=frames[1:])
        elif kind == "tiff_float":
            Image.fromarray(rng.random((40, 48), dtype=np.float32) * 255, "F").save(p)
        elif kind == "webp":
            Image.fromarray(rgb).save(p)
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "text":
            p.write_text("this is not an image\n")
        elif kind == "svg":
            p.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
        elif kind == "cut":  # a PNG cut short
            Image.fromarray(rgb).save(p)
            p.write_bytes(p.read_bytes()[:200])
        elif kind == "bomb":
            p.write_bytes(bomb_png(100_000, 100_000))
        else:
            raise KeyError(kind)
        return p

    def boxes(self, content: Any, name: str = "boxes.json", raw: bool = False) -> str:
        return self.write(name, content if raw else json.dumps(content, allow_nan=True))


def snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---- the CLI corpus -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[Fx], list]
    expect: str  # "bad" or "ok"
    match: str | None = None  # a substring the error line must contain (case-insensitive)
    out: bool = True  # explain: add --out (so "nothing written" and finite maps are checked)
    check: Callable[[Fx, Any], None] | None = None  # extra checks on a good result
    env: Callable[[Fx], dict[str, str]] | None = None  # environment variables for the run


def explain(method: str, *extra, model: str = "tiny_cnn", image: str = "good", budget: bool = True):
    def args(fx: Fx) -> list:
        return ["explain", method, fx.model(model), fx.image(image),
                *(BUDGET.get(method, []) if budget else []), *extra]
    return args


def bad_option(method: str, flag: str, value: str, match: str | None = None) -> Case:
    """A method option value that must be refused (before loading the model)."""
    def args(fx: Fx) -> list:
        budget = BUDGET.get(method, [])
        if flag in budget:  # replace the budget's value
            i = budget.index(flag)
            budget = budget[:i] + budget[i + 2:]
        return ["explain", method, fx.model(), fx.image(), *budget, flag, value]
    return Case(f"{method}{flag}={value}", args, "bad", match if match is not None else flag)


OPTION_CASES = [
    # occlusion
    bad_option("occlusion", "--window", "0"), bad_option("occlusion", "--window", "-1"),
    bad_option("occlusion", "--window", "abc"), bad_option("occlusion", "--window", "1.5"),
    bad_option("occlusion", "--window", "33", "window"),  # larger than the 32 x 32 input
    bad_option("occlusion", "--stride", "0"), bad_option("occlusion", "--stride", "-4"),
    bad_option("occlusion", "--baseline", "nan"), bad_option("occlusion", "--baseline", "inf"),
    bad_option("occlusion", "--baseline", "-inf"), bad_option("occlusion", "--baseline", "1e999"),
    bad_option("occlusion", "--baseline", "purple", "purple"),
    # rise
    bad_option("rise", "--n-masks", "0"), bad_option("rise", "--n-masks", "-1"),
    bad_option("rise", "--n-masks", "lots"), bad_option("rise", "--grid", "0"),
    bad_option("rise", "--p", "0"), bad_option("rise", "--p", "-0.5"), bad_option("rise", "--p", "1.5"),
    bad_option("rise", "--p", "nan"), bad_option("rise", "--p", "inf"), bad_option("rise", "--p", "half"),
    # shapley
    bad_option("shapley", "--grid", "0"), bad_option("shapley", "--grid", "-2"),
    bad_option("shapley", "--grid", "abc"),
    bad_option("shapley", "--n-permutations", "0"), bad_option("shapley", "--baseline", "nan"),
    bad_option("shapley", "--segments", "bogus", "segments"),
    # lime
    bad_option("lime", "--num-samples", "1"), bad_option("lime", "--num-samples", "0"),
    bad_option("lime", "--kernel-width", "0"), bad_option("lime", "--kernel-width", "-1"),
    bad_option("lime", "--kernel-width", "nan"), bad_option("lime", "--alpha", "-1"),
    bad_option("lime", "--alpha", "nan"), bad_option("lime", "--alpha", "inf"),
    bad_option("lime", "--fill", "nan"), bad_option("lime", "--fill", "bogus", "fill"),
    # meaningful perturbation
    bad_option("meaningful-perturbation", "--mask-size", "0"),
    bad_option("meaningful-perturbation", "--mask-size", "1000", "mask-size"),
    bad_option("meaningful-perturbation", "--iterations", "0"),
    bad_option("meaningful-perturbation", "--lr", "0"), bad_option("meaningful-perturbation", "--lr", "nan"),
    bad_option("meaningful-perturbation", "--lr", "-0.1"),
    bad_option("meaningful-perturbation", "--l1", "-1"), bad_option("meaningful-perturbation", "--l1", "nan"),
    bad_option("meaningful-perturbation", "--tv", "inf"),
    bad_option("meaningful-perturbation", "--tv-beta", "0.5"),
    bad_option("meaningful-perturbation", "--jitter", "-1"),
    bad_option("meaningful-perturbation", "--jitter", "100", "jitter"),
    bad_option("meaningful-perturbation", "--fd-directions", "0"),
    bad_option("meaningful-perturbation", "--fd-eps", "0"),
    bad_option("meaningful-perturbation", "--mode", "sideways", "mode"),
    # gradients
    bad_option("integrated-gradients", "--steps", "0"), bad_option("integrated-gradients", "--steps", "-1"),
    bad_option("integrated-gradients", "--baseline", "nan"),
    bad_option("smoothgrad", "--n-samples", "0"), bad_option("smoothgrad", "--sigma", "-1"),
    bad_option("smoothgrad", "--sigma", "nan"), bad_option("smoothgrad", "--sigma", "inf"),
    # smooth Grad-CAM++
    bad_option("smooth-gradcampp", "--n-samples", "-1"), bad_option("smooth-gradcampp", "--sigma", "nan"),
    bad_option("smooth-gradcampp", "--sigma", "-1"),
    bad_option("smooth-gradcampp", "--filters", "a,b", "filters"),
    bad_option("smooth-gradcampp", "--filters", "1,99", "filters"),
    bad_option("smooth-gradcampp", "--filters", "-1", "filters"),
    bad_option("smooth-gradcampp", "--neurons", "x,y", "neurons"),
    bad_option("smooth-gradcampp", "--neurons", "100,100", "neurons"),  # outside the 32 x 32 map
    bad_option("smooth-gradcampp", "--neurons", "1,2,3", "neurons"),
    bad_option("smooth-gradcampp", "--neurons", "nan,nan", "neurons"),
]

VALID_EDGE_OPTIONS = [  # the edges of the ranges are valid and give a finite map
    Case("occlusion-window=32", explain("occlusion", "--window", "32", budget=False), "ok"),
    Case("occlusion-stride=1000", explain("occlusion", "--window", "16", "--stride", "1000", budget=False), "ok"),
    Case("occlusion-baseline=-3.5", explain("occlusion", "--baseline", "-3.5"), "ok"),
    Case("rise-p=1", explain("rise", "--p", "1"), "ok"),
    Case("rise-grid=1", explain("rise", "--grid", "1"), "ok"),
    Case("shapley-grid=1", explain("shapley", "--grid", "1", "--n-permutations", "1", budget=False), "ok"),
    Case("lime-alpha=0", explain("lime", "--alpha", "0"), "ok"),
    Case("lime-num-samples=2", explain("lime", "--num-samples", "2", "--segments", "grid", budget=False), "ok"),
    Case("mp-l1=0-tv=0", explain("meaningful-perturbation", "--l1", "0", "--tv", "0"), "ok"),
    Case("mp-grad=fd", explain("meaningful-perturbation", "--grad", "fd", "--fd-directions", "1"), "ok"),
    Case("smoothgrad-sigma=0", explain("smoothgrad", "--sigma", "0"), "ok"),
    Case("ig-steps=1", explain("integrated-gradients", "--steps", "1", budget=False), "ok"),
    Case("sgcpp-n-samples=0", explain("smooth-gradcampp", "--n-samples", "0"), "ok"),  # documented: Grad-CAM++
    Case("sgcpp-neurons-inside", explain("smooth-gradcampp", "--neurons", "0,0,8,8"), "ok"),
]

COMMON_CASES = [
    Case("seed=-1", explain("occlusion", "--seed", "-1"), "bad", "seed"),
    Case("seed=abc", explain("occlusion", "--seed", "abc"), "bad", "seed"),
    Case("seed=2**64", explain("occlusion", "--seed", str(2**64)), "bad", "seed"),
    Case("target=5", explain("occlusion", "--target", "5"), "bad", "target"),
    Case("target=-1", explain("occlusion", "--target", "-1"), "bad", "target"),
    Case("target=1e30", explain("occlusion", "--target", "1" + "0" * 30), "bad", "target"),
    Case("target=cat", explain("occlusion", "--target", "cat"), "bad", "target"),
    Case("batch-size=0", explain("occlusion", "--batch-size", "0"), "bad", "batch"),
    Case("batch-size=-3", explain("occlusion", "--batch-size", "-3"), "bad", "batch"),
    Case("batch-size=abc", explain("occlusion", "--batch-size", "abc"), "bad", "batch"),
    Case("batch-size=1.5", explain("occlusion", "--batch-size", "1.5"), "bad", "batch"),
    Case("batch-size=100000", explain("rise", "--batch-size", "100000"), "ok"),
    Case("device=cuda-no-gpu", explain("occlusion", "--device", "cuda"), "bad", "cuda"),
    Case("device=tpu", explain("occlusion", "--device", "tpu"), "bad", "device"),
    Case("threads=-1", explain("occlusion", "--threads", "-1"), "bad", "threads"),
    Case("score=bogus", explain("occlusion", "--score", "bogus"), "bad", "score"),
    Case("score=prob", explain("occlusion", "--score", "prob"), "ok"),
    Case("output=unknown", explain("occlusion", "--output", "logitz"), "bad", "logits"),
    Case("layout=NHWC-on-NCHW", explain("occlusion", "--layout", "NHWC"), "bad", "layout"),
    Case("unknown-method", lambda fx: ["explain", "occlusoin", fx.model(), fx.image()], "bad", "occlusion"),
    Case("unknown-option", explain("occlusion", "--windw", "3"), "bad", "--window"),
    Case("option-of-other-method", explain("occlusion", "--n-masks", "3"), "bad", "n-masks"),
    Case("unknown-layer", explain("gradcam", "--layer", "featurs"), "bad", "features"),
    Case("layer-is-2d-logits", explain("gradcam", "--layer", "logits"), "bad", "logits"),
    Case("layer-is-2d-flat-scorecam", explain("scorecam", "--layer", "flat"), "bad", "flat"),
    Case("layer-is-input-shape-tensor", explain("gradcam", "--layer", "fc.w"), "bad", "fc.w"),
    # click usage errors: one line too
    Case("usage-missing-image", lambda fx: ["explain", "occlusion", fx.model()], "bad", "IMAGE", out=False),
    Case("usage-missing-method", lambda fx: ["explain"], "bad", None, out=False),
    Case("usage-unknown-command", lambda fx: ["explian"], "bad", "explian", out=False),
    Case("usage-unknown-flag", explain("occlusion", "--frobnicate"), "bad", "--frobnicate"),
    Case("usage-flag-without-value", explain("occlusion", "--window"), "bad", "--window"),
    Case("usage-unknown-global-flag", lambda fx: ["--frobnicate", "methods"], "bad", "--frobnicate", out=False),
    Case("predict-top=0", lambda fx: ["predict", fx.model(), fx.image(), "--top", "0"], "bad", "--top", out=False),
]

PREPROCESS_CASES = [
    Case("mean=nan-nan-nan", explain("occlusion", "--mean", "nan", "nan", "nan"), "bad", "mean"),
    Case("mean=inf", explain("occlusion", "--mean", "inf"), "bad", "mean"),
    Case("mean=1-2", explain("occlusion", "--mean", "1", "2"), "bad", "mean"),
    Case("mean=abc", explain("occlusion", "--mean", "abc"), "bad", "mean"),
    Case("std=0", explain("occlusion", "--std", "0"), "bad", "std"),
    Case("std=-1", explain("occlusion", "--std", "-1"), "bad", "std"),
    Case("std=nan", explain("occlusion", "--std", "nan"), "bad", "std"),
    Case("std=1e-40", explain("occlusion", "--std", "1e-40"), "bad", "float32"),  # 1 / std overflows
    Case("scale=0", explain("occlusion", "--scale", "0"), "bad", "scale"),
    Case("scale=nan", explain("occlusion", "--scale", "nan"), "bad", "scale"),
    Case("scale=1e-40", explain("occlusion", "--scale", "1e-40"), "bad", "float32"),  # pixels overflow
    Case("resize=0", explain("occlusion", "--resize", "0"), "bad", "resize"),
    Case("resize=-5", explain("occlusion", "--resize", "-5"), "bad", "resize"),
    Case("resize=abc", explain("occlusion", "--resize", "abc"), "bad", "resize"),
    Case("resize=1.5", explain("occlusion", "--resize", "1.5"), "bad", "resize"),
    Case("resize=1e9-huge", explain("occlusion", "--resize", "1000000000"), "ok"),
    Case("crop=16-vs-fixed-32", explain("occlusion", "--crop", "16"), "bad", "crop"),
    Case("crop=0", explain("occlusion", "--crop", "0"), "bad", "crop"),
    Case("pad=300", explain("occlusion", "--letterbox", "--pad", "300"), "bad", "pad"),
    Case("pad=-1", explain("occlusion", "--letterbox", "--pad", "-1"), "bad", "pad"),
    Case("letterbox-and-resize", explain("occlusion", "--letterbox", "--resize", "40"), "bad", "letterbox"),
    Case("preset=bogus", explain("occlusion", "--preset", "bogus"), "bad", "preset"),
    Case("max-pixels=0", explain("occlusion", "--max-pixels", "0"), "bad", "max-pixels"),
    Case("max-pixels=10", explain("occlusion", "--max-pixels", "10"), "bad", "max-pixels"),
    Case("letterbox-pad-255", explain("occlusion", "--letterbox", "--pad", "255"), "ok"),
    Case("preset-torchvision-mean-std", explain("occlusion", "--preset", "torchvision", "--std", "0.5"), "ok"),
]


def sc(case_id: str, content: Any, expect: str = "bad", match: str | None = None,
       raw: bool = False) -> Case:
    return Case(case_id, lambda fx: ["explain", "occlusion", fx.sidecar(content, raw=raw), fx.image(),
                                     *BUDGET["occlusion"]], expect, match)


SIDECAR_CASES = [
    sc("sidecar-std-nan", {"preprocess": {"std": [float("nan")] * 3}}, match="std"),
    sc("sidecar-std-zero", {"preprocess": {"std": 0}}, match="std"),
    sc("sidecar-mean-string", {"preprocess": {"mean": "0.5"}}, match="mean"),
    sc("sidecar-mean-wrong-length", {"preprocess": {"mean": [0.5, 0.5]}}, match="mean"),
    sc("sidecar-mean-empty-list", {"preprocess": {"mean": []}}, match="mean"),
    sc("sidecar-mean-nested", {"preprocess": {"mean": [[0.5], [0.5], [0.5]]}}, match="mean"),
    sc("sidecar-mean-bool", {"preprocess": {"mean": True}}, match="mean"),
    sc("sidecar-resize-string", {"preprocess": {"resize": "256"}}, match="resize"),
    sc("sidecar-resize-zero", {"preprocess": {"resize": 0}}, match="resize"),
    sc("sidecar-resize-three", {"preprocess": {"resize": [40, 40, 40]}}, match="resize"),
    sc("sidecar-crop-mismatch", {"preprocess": {"crop": 16}}, match="crop"),
    sc("sidecar-scale-zero", {"preprocess": {"scale": 0}}, match="scale"),
    sc("sidecar-channel-order", {"preprocess": {"channel_order": "RBG"}}, match="channel_order"),
    sc("sidecar-interpolation", {"preprocess": {"interpolation": "cubic"}}, match="interpolation"),
    sc("sidecar-non-utf8", b'{"labels": ["caf\xe9"]}', match="UTF-8", raw=True),
    sc("sidecar-invalid-json", '{"preprocess": {"std": [0.2,}', match="JSON", raw=True),
    sc("sidecar-empty-file", b"", match="JSON", raw=True),
    sc("sidecar-top-level-list", [1, 2, 3], match="object"),
    sc("sidecar-preprocess-list", {"preprocess": [1, 2]}, match="preprocess"),
    sc("sidecar-fewer-labels", {"labels": ["a", "b", "c"]}, match="labels"),
    sc("sidecar-labels-not-strings", {"labels": [1, 2, 3, 4, 5]}, match="labels"),
    sc("sidecar-labels-string", {"labels": "a,b,c,d,e"}, match="labels"),
    sc("sidecar-unknown-key", {"preprocesss": {}}, match="preprocesss"),
    sc("sidecar-unknown-field", {"preprocess": {"means": [0.5]}}, match="means"),
    sc("sidecar-utf8-bom", b'\xef\xbb\xbf{"labels": ["a", "b", "c", "d", "e"]}', expect="ok", raw=True),
    sc("sidecar-valid-labels", {"labels": ["a", "b", "c", "d", "e"],
                                "preprocess": {"mean": [0.5], "std": [0.25, 0.25, 0.25]}}, expect="ok"),
]


def _exif_upright(fx: Fx, result) -> None:
    manifest = json.loads((fx.out / "exif_rotated_occlusion.json").read_text())
    assert manifest["inputs"]["size"] == [20, 40], manifest["inputs"]  # shown upright: 20 wide, 40 high


def _fast(limit: float):
    def check(fx: Fx, result) -> None:
        assert result.seconds < limit, f"took {result.seconds:.1f} s"
    return check


IMAGE_CASES = [
    Case("image-missing", lambda fx: ["explain", "occlusion", fx.model(), str(fx.dir / "nope.png")],
         "bad", "nope.png"),
    Case("image-empty-file", explain("occlusion", image="empty"), "bad", "empty file"),
    Case("image-text-file", explain("occlusion", image="text"), "bad", "text.png"),
    Case("image-svg", explain("occlusion", image="svg"), "bad", "svg.png"),
    Case("image-truncated-png", explain("occlusion", image="cut"), "bad", "truncated"),
    Case("image-bomb-header", explain("occlusion", image="bomb"), "bad", "max-pixels"),
    Case("image-is-a-directory", lambda fx: ["explain", "occlusion", fx.model(), str(fx.dir)], "bad", "folder"),
    Case("image-bad-after-good", lambda fx: ["explain", "occlusion", fx.model(), fx.image(), fx.image("text"),
                                             *BUDGET["occlusion"]], "bad", "text.png"),
    Case("image-strip-20000x1", explain("occlusion", image="strip"), "ok", check=_fast(5)),
    Case("image-strip-1x20000", explain("occlusion", image="tall_strip"), "ok", check=_fast(5)),
    Case("image-one-pixel", explain("occlusion", image="one_pixel"), "ok"),
    Case("image-exif-rotated-jpeg", explain("occlusion", image="exif_rotated"), "ok", check=_exif_upright),
    Case("image-16bit-png", explain("occlusion", image="png16"), "ok"),
    Case("image-palette-transparent", explain("occlusion", image="palette_transparent"), "ok"),
    Case("image-cmyk-jpeg", explain("occlusion", image="cmyk"), "ok"),
    Case("image-grey", explain("occlusion", image="grey"), "ok"),
    Case("image-grey-alpha", explain("occlusion", image="grey_alpha"), "ok"),
    Case("image-rgba", explain("occlusion", image="rgba"), "ok"),
    Case("image-1bit", explain("occlusion", image="bilevel"), "ok"),
    Case("image-animated-gif", explain("occlusion", image="gif"), "ok"),
    Case("image-float-tiff", explain("occlusion", image="tiff_float"), "ok"),
    Case("image-webp", explain("occlusion", image="webp"), "ok"),
    Case("image-png-named-jpg", lambda fx: ["explain", "occlusion", fx.model(), fx.image("good", "photo.jpg"),
                                            *BUDGET["occlusion"]], "ok"),
    Case("image-no-extension", lambda fx: ["explain", "occlusion", fx.model(), fx.image("good", "photo"),
                                           *BUDGET["occlusion"]], "ok"),
]


def model_case(case_id: str, kind: str, expect: str, match: str | None, method: str = "occlusion",
               *extra, image: str = "good") -> Case:
    return Case(case_id, lambda fx: ["explain", method, fx.built(kind), fx.image(image),
                                     *BUDGET.get(method, []), *extra], expect, match)


MODEL_CASES = [
    Case("model-missing", lambda fx: ["explain", "occlusion", str(fx.dir / "nope.onnx"), fx.image()],
         "bad", "nope.onnx"),
    Case("model-empty-file", lambda fx: ["explain", "occlusion", fx.write("empty.onnx", b""), fx.image()],
         "bad", "empty.onnx"),
    Case("model-random-bytes", lambda fx: ["explain", "occlusion",
                                           fx.write("random.onnx", np.random.default_rng(0).bytes(4096)),
                                           fx.image()], "bad", "random.onnx"),
    Case("model-truncated", lambda fx: ["explain", "occlusion",
                                        fx.write("trunc.onnx", Path(fx.model()).read_bytes()[:700]),
                                        fx.image()], "bad", "trunc.onnx"),
    Case("model-is-a-directory", lambda fx: ["explain", "occlusion", str(fx.dir), fx.image()], "bad", "folder"),
    Case("model-is-a-png", lambda fx: ["explain", "occlusion", fx.image(), fx.image()], "bad", "good.png"),
    Case("model-not-image-input", lambda fx: ["explain", "occlusion", fx.model("not_image"), fx.image()],
         "bad", "not an image"),
    model_case("model-text-input", "text", "bad", "ids"),
    model_case("model-audio-input", "audio", "bad", "wav"),
    model_case("model-two-image-inputs", "two_images", "bad", "inputs"),
    model_case("model-five-channels", "five_channels", "bad", None),
    model_case("model-zero-classes", "zero_classes", "bad", "scores"),
    model_case("model-external-data-missing", "external_missing", "bad", None),
    model_case("model-custom-op", "custom_op", "bad", "Frobnicate"),
    model_case("model-reshape-fails-always", "reshape_never", "bad", None),
    model_case("model-reshape-fails-at-batch-4", "reshape_batch1", "bad", "batch", "occlusion",
               "--batch-size", "4"),
    model_case("model-reshape-batch1-auto", "reshape_batch1", "ok", None),
    model_case("model-nan-for-some-inputs", "log_of_mean", "bad", "NaN", "occlusion", "--baseline", "-1",
               image="dark"),
    model_case("model-nan-always", "nan_always", "bad", "NaN"),
    model_case("model-inf-always", "inf_always", "bad", "infinite"),
    model_case("model-if-outer-scope-gradcam", "if_outer", "bad", "If", "gradcam"),
    model_case("model-if-outer-scope-saliency", "if_outer", "bad", "If", "saliency"),
    model_case("model-if-outer-scope-occlusion", "if_outer", "ok", None),
    model_case("model-no-gradient-rule", "sin", "bad", "Sin", "saliency"),
    model_case("model-no-gradient-rule-names-alternatives", "sin", "bad", "scorecam",
               "integrated-gradients"),
    model_case("model-no-gradient-rule-rise", "sin", "ok", None, "rise"),
    model_case("model-dynamic-hw", "dynamic_hw", "ok", None),
    model_case("model-if-outer-scope-scorecam", "if_outer", "ok", None, "scorecam"),
    model_case("model-no-gradient-rule-gradcam-above-it", "sin", "ok", None, "gradcam"),
    model_case("model-no-gradient-rule-mp-backward", "sin", "bad", "fd", "meaningful-perturbation"),
    Case("predict-bad-image", lambda fx: ["predict", fx.model(), fx.image(), fx.image("cut")], "bad",
         "cut.png", out=False),
    Case("inspect-missing", lambda fx: ["inspect", str(fx.dir / "nope.onnx")], "bad", "nope.onnx", out=False),
    Case("evaluate-random-bytes-model", lambda fx: ["evaluate", fx.write("r.onnx", b"\x00garbage"), fx.image(),
                                                    *EVAL_BUDGET], "bad", "r.onnx", out=False),
    Case("compare-against-random-bytes", lambda fx: ["compare", fx.model(), fx.image(), "--against",
                                                     fx.write("r.onnx", b"\x00garbage"), "-o", "window=16"],
         "bad", "r.onnx", out=False),
    Case("compare-device-b-cuda", lambda fx: ["compare", fx.model(), fx.image(), "--device-b", "cuda",
                                              "-o", "window=16"], "bad", "cuda", out=False),
    Case("sanity-text-model", lambda fx: ["sanity", fx.built("text"), fx.image()], "bad", "ids", out=False),
    Case("model-spatial-output", lambda fx: ["explain", "occlusion", fx.model("idiom_spatial_output"),
                                             fx.image()], "bad", "spatial"),
    Case("model-three-outputs-ambiguous", lambda fx: ["explain", "occlusion", fx.model("idiom_three_outputs"),
                                                      fx.image()], "bad", "--output"),
    Case("model-three-outputs-features", lambda fx: ["explain", "occlusion", fx.model("idiom_three_outputs"),
                                                     fx.image(), "--output", "features"], "bad", "features"),
    Case("model-three-outputs-probs", explain("occlusion", "--output", "probs", model="idiom_three_outputs"), "ok"),
    Case("model-rank0-declared-output", explain("occlusion", model="idiom_rank0_output"), "ok"),
    Case("model-fixed-batch1", explain("rise", model="tiny_cnn_batch1"), "ok"),
    Case("model-fp16", explain("integrated-gradients", model="tiny_cnn_fp16"), "ok"),
    Case("model-nhwc", explain("gradcam", model="tiny_cnn_nhwc"), "ok"),
    Case("model-ir3-opset7", explain("occlusion", model="idiom_ir3_opset7_fp16"), "ok"),
    Case("inspect-random-bytes", lambda fx: ["inspect", fx.write("r.onnx", b"\x00\x01garbage")], "bad", "r.onnx",
         out=False),
    Case("layers-not-image", lambda fx: ["layers", fx.model("not_image")], "bad", None, out=False),
    Case("expose-unknown-tensor", lambda fx: ["expose", fx.model(), "featurs", "-o", str(fx.dir / "e.onnx")],
         "bad", "features", out=False),
    Case("backward-unknown-wrt", lambda fx: ["backward", fx.model(), "--wrt", "nope", "-o", str(fx.dir / "b.onnx")],
         "bad", "nope", out=False),
]


def ev(*extra, boxes: Any = None, raw: bool = False, name: str = "boxes.json"):
    def args(fx: Fx) -> list:
        b = ["--boxes", fx.boxes(boxes, name, raw)] if boxes is not None else []
        return ["evaluate", fx.model(), fx.image(), *EVAL_BUDGET, *b, "--out", str(fx.out), *extra]
    return args


BOXES_CASES = [
    Case("boxes-non-utf8", ev(boxes=b'{"good.png": {"box": [0, 0, 10, 10], "label": "\xff"}}', raw=True),
         "bad", "UTF-8", out=False),
    Case("boxes-nan-coordinate", ev(boxes={"good.png": {"box": [0, 0, float("nan"), 10]}}), "bad", "finite",
         out=False),
    Case("boxes-inf-coordinate", ev(boxes={"good.png": [0, 0, float("inf"), 10]}), "bad", "finite", out=False),
    Case("boxes-wrong-length", ev(boxes={"good.png": {"box": [0, 0, 10]}}), "bad", "good.png", out=False),
    Case("boxes-string-coordinates", ev(boxes={"good.png": {"box": "0,0,10,10"}}), "bad", "good.png", out=False),
    Case("boxes-inverted", ev(boxes={"good.png": [10, 10, 0, 0]}), "bad", "x0 < x1", out=False),
    Case("boxes-label-not-int", ev(boxes={"good.png": {"box": [0, 0, 10, 10], "label": "cat"}}), "bad", "label",
         out=False),
    Case("boxes-label-out-of-range", ev("--target", "label", boxes={"good.png": {"box": [0, 0, 10, 10],
                                                                               "label": 7}}),
         "bad", "7", out=False),
    Case("boxes-invalid-json", ev(boxes="{", raw=True), "bad", "JSON", out=False),
    Case("boxes-top-level-list", ev(boxes=[[0, 0, 10, 10]]), "bad", "object", out=False),
    Case("boxes-csv-nan", ev(boxes="image,x0,y0,x1,y1\ngood.png,0,0,nan,10\n", raw=True, name="b.csv"),
         "bad", "finite", out=False),
    Case("boxes-csv-short-row", ev(boxes="good.png,0,0,10\n", raw=True, name="b.csv"), "bad", "b.csv", out=False),
    Case("boxes-missing-file", lambda fx: ["evaluate", fx.model(), fx.image(), *EVAL_BUDGET,
                                           "--boxes", str(fx.dir / "nope.json")], "bad", "nope.json", out=False),
    Case("boxes-label-mode-without-label", ev("--target", "label", boxes={"good.png": [0, 0, 10, 10]}),
         "bad", "label", out=False),
    Case("boxes-no-entry-for-image", ev(boxes={"other.png": [0, 0, 10, 10]}), "ok", out=False),
    Case("boxes-utf8-bom", ev(boxes=b'\xef\xbb\xbf{"good.png": [0, 0, 10, 10]}', raw=True), "ok", out=False),
    Case("boxes-valid", ev(boxes={"good.png": {"box": [0, 0, 10, 10], "label": 1}}), "ok", out=False),
    Case("evaluate-tolerance-nan", ev("--tolerance", "nan", boxes={"good.png": [0, 0, 10, 10]}), "bad",
         "tolerance", out=False),
    Case("evaluate-pixels-per-step-0", ev("--pixels-per-step", "0"), "bad", "pixels-per-step", out=False),
    Case("evaluate-methods-empty", lambda fx: ["evaluate", fx.model(), fx.image(), "--methods", ","],
         "bad", "methods", out=False),
    Case("evaluate-option-no-equals", ev("-o", "window"), "bad", "window", out=False),
    Case("evaluate-option-bad-value", ev("-o", "occlusion.window=abc"), "bad", "window", out=False),
    Case("evaluate-option-nan", ev("-o", "occlusion.baseline=nan"), "bad", "baseline", out=False),
    Case("compare-threshold-nan", lambda fx: ["compare", fx.model(), fx.image(), "--threshold", "nan",
                                              "-o", "window=16", "-o", "stride=16"], "bad", "threshold", out=False),
    Case("compare-top-k-nan", lambda fx: ["compare", fx.model(), fx.image(), "--top-k", "nan",
                                          "-o", "window=16", "-o", "stride=16"], "bad", "top-k", out=False),
    Case("sanity-steps-0", lambda fx: ["sanity", fx.model(), fx.image(), "--steps", "0"], "bad", "steps", out=False),
    Case("sanity-unknown-method", lambda fx: ["sanity", fx.model(), fx.image(), "--method", "gradcma"],
         "bad", "gradcam", out=False),
]


def _prefile(fx: Fx, name: str, data: bytes = b"old") -> Path:
    p = fx.out / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _two_stems(fx: Fx) -> list:
    a = fx.image("good", "a/img.png")
    b = fx.image("good", "b/img.png")
    return ["explain", "occlusion", fx.model(), a, b, *BUDGET["occlusion"]]


def _same_stem_other_ext(fx: Fx) -> list:
    return ["explain", "occlusion", fx.model(), fx.image("good", "img.png"), fx.image("good", "img.jpg"),
            *BUDGET["occlusion"]]


def _existing_output(fx: Fx) -> list:
    _prefile(fx, "good_occlusion.npy")
    return ["explain", "occlusion", fx.model(), fx.image(), *BUDGET["occlusion"]]


def _collision_at_second_image(fx: Fx) -> list:
    _prefile(fx, "second_occlusion.json")
    return ["explain", "occlusion", fx.model(), fx.image(), fx.image("good", "second.png"),
            *BUDGET["occlusion"]]


def _dir_where_file_goes(fx: Fx) -> list:
    (fx.out / "good_occlusion.png").mkdir(parents=True)
    return ["explain", "occlusion", fx.model(), fx.image(), *BUDGET["occlusion"], "--overwrite"]


def _out_below_file(fx: Fx) -> list:
    f = fx.write("plain.txt", "x")
    return ["explain", "occlusion", fx.model(), fx.image(), *BUDGET["occlusion"], "--out", f"{f}/out"]


def _out_is_file(fx: Fx) -> list:
    f = fx.write("plain.txt", "x")
    return ["explain", "occlusion", fx.model(), fx.image(), *BUDGET["occlusion"], "--out", f]


def _output_is_an_input_image(fx: Fx) -> list:
    # img.png's outputs include img_occlusion.png: the second input image, refused even with --overwrite
    a = fx.image("good", "img.png")
    b = fx.image("good", "img_occlusion.png")
    return ["explain", "occlusion", fx.model(), a, b, *BUDGET["occlusion"], "--out", str(fx.dir), "--overwrite"]


def _output_is_the_model(fx: Fx) -> list:
    # the model is named like img.png's manifest
    model = fx.model("tiny_cnn", "img_occlusion.json")
    return ["explain", "occlusion", model, fx.image("good", "img.png"), *BUDGET["occlusion"],
            "--out", str(fx.dir), "--overwrite"]


def _overwrite_ok(fx: Fx) -> list:
    _prefile(fx, "good_occlusion.npy")
    return ["explain", "occlusion", fx.model(), fx.image(), *BUDGET["occlusion"], "--overwrite"]


def _cache(fx: Fx) -> Path:
    return fx.root.parent / "cache"


def _cache_env(fx: Fx) -> dict[str, str]:
    return {"BLACKBOX_XAI_CACHE": str(_cache(fx))}


def _damaged_cache(size: Callable[[int], int]):
    """Fill the backward-graph cache with one run, cut every entry to ``size(len)`` bytes, run again."""
    def args(fx: Fx) -> list:
        _forget_backward_graphs()
        first = ["-q", "explain", "gradcam", fx.model(), fx.image()]
        r = CliRunner().invoke(cli, first)
        assert r.exit_code == 0, r.output
        entries = [p for p in _cache(fx).rglob("*") if p.is_file()]
        assert entries, "the first run cached nothing"
        for p in entries:
            p.write_bytes(p.read_bytes()[:size(p.stat().st_size)])
        _forget_backward_graphs()  # the next run reads the damaged entries
        return ["explain", "gradcam", fx.model(), fx.image()]
    return args


def _forget_backward_graphs() -> None:
    from blackbox_xai.graph import autodiff

    autodiff._memory_cache.clear()


def _cache_is_a_file(fx: Fx) -> list:
    _forget_backward_graphs()
    _cache(fx).write_text("not a folder")
    return ["explain", "gradcam", fx.model(), fx.image()]


CACHE_CASES = [
    Case("cache-entry-truncated", _damaged_cache(lambda n: n // 2), "ok", env=_cache_env),
    Case("cache-entry-empty", _damaged_cache(lambda n: 0), "ok", env=_cache_env),
    Case("cache-dir-is-a-file", _cache_is_a_file, "ok", env=_cache_env),
]


def _unicode_names(fx: Fx) -> list:
    return ["explain", "occlusion", fx.model("tiny_cnn", "modèle ✓.onnx"), fx.image("good", "café ☕.png"),
            *BUDGET["occlusion"]]


def _out_below_file_before_computing(fx: Fx) -> list:
    # the model fails on every input: the output problem must be found first, before any computing
    f = fx.write("plain.txt", "x")
    return ["explain", "occlusion", fx.built("nan_always"), fx.image(), *BUDGET["occlusion"],
            "--out", f"{f}/out"]


def _existing_before_computing(fx: Fx) -> list:
    _prefile(fx, "good_occlusion.npy")
    return ["explain", "occlusion", fx.built("nan_always"), fx.image(), *BUDGET["occlusion"]]


OUTPUT_CASES = [
    Case("out-unicode-and-spaces-in-names", _unicode_names, "ok"),
    Case("out-nested-new-folders", lambda fx: ["explain", "occlusion", fx.model(), fx.image(),
                                               *BUDGET["occlusion"], "--out", str(fx.out / "a" / "b" / "c")],
         "ok", out=False),
    Case("out-below-file-found-before-computing", _out_below_file_before_computing, "bad", "plain.txt", out=False),
    Case("out-existing-found-before-computing", _existing_before_computing, "bad", "exists"),
    Case("evaluate-two-images-same-stem", lambda fx: ["evaluate", fx.model(), fx.image("good", "a/img.png"),
                                                      fx.image("good", "b/img.png"), *EVAL_BUDGET,
                                                      "--out", str(fx.out)], "ok", out=False),
    Case("out-two-images-same-stem", _two_stems, "bad", "img"),
    Case("out-same-stem-other-extension", _same_stem_other_ext, "bad", "img"),
    Case("out-existing-file", _existing_output, "bad", "exists"),
    Case("out-collision-at-second-image", _collision_at_second_image, "bad", "second_occlusion"),
    Case("out-directory-where-file-goes", _dir_where_file_goes, "bad", "good_occlusion.png"),
    Case("out-below-regular-file", _out_below_file, "bad", "plain.txt", out=False),
    Case("out-is-regular-file", _out_is_file, "bad", "plain.txt", out=False),
    Case("out-would-overwrite-input-image", _output_is_an_input_image, "bad", "img_occlusion.png", out=False),
    Case("out-would-overwrite-model", _output_is_the_model, "bad", "img_occlusion.json", out=False),
    Case("out-overwrite-existing", _overwrite_ok, "ok"),
    Case("evaluate-report-is-model", lambda fx: ["evaluate", fx.model(), fx.image(), *EVAL_BUDGET,
                                                 "--report", fx.model(), "--overwrite"], "bad", "tiny_cnn.onnx",
         out=False),
    Case("evaluate-report-is-image", lambda fx: ["evaluate", fx.model(), fx.image(), *EVAL_BUDGET,
                                                 "--report", fx.image(), "--overwrite"], "bad", "good.png",
         out=False),
    Case("evaluate-report-is-boxes", lambda fx: ["evaluate", fx.model(), fx.image(), *EVAL_BUDGET,
                                                 "--boxes", fx.boxes({"good.png": [0, 0, 9, 9]}),
                                                 "--report", fx.boxes({"good.png": [0, 0, 9, 9]}),
                                                 "--overwrite"], "bad", "boxes.json", out=False),
    Case("evaluate-report-is-sidecar", lambda fx: ["evaluate", fx.sidecar({"labels": list("abcde")}), fx.image(),
                                                   *EVAL_BUDGET, "--report", str(fx.dir / "sc.onnx.json"),
                                                   "--overwrite"], "bad", "sc.onnx.json", out=False),
    Case("evaluate-report-inside-out", lambda fx: ["evaluate", fx.model(), fx.image(), *EVAL_BUDGET,
                                                   "--out", str(fx.out), "--report", str(fx.out / "metrics.csv")],
         "bad", "metrics.csv", out=False),
    Case("evaluate-out-below-file", lambda fx: ["evaluate", fx.model(), fx.image(), *EVAL_BUDGET,
                                                "--out", fx.write("plain.txt", "x") + "/o"], "bad", "plain.txt",
         out=False),
    Case("compare-json-is-model", lambda fx: ["compare", fx.model(), fx.image(), "-o", "window=16",
                                              "-o", "stride=16", "--json", fx.model(), "--overwrite"],
         "bad", "tiny_cnn.onnx", out=False),
    Case("compare-csv-is-image", lambda fx: ["compare", fx.model(), fx.image(), "-o", "window=16",
                                             "-o", "stride=16", "--csv", fx.image(), "--overwrite"],
         "bad", "good.png", out=False),
    Case("compare-json-equals-csv", lambda fx: ["compare", fx.model(), fx.image(), "-o", "window=16",
                                                "-o", "stride=16", "--json", str(fx.dir / "r"),
                                                "--csv", str(fx.dir / "r")], "bad", None, out=False),
    Case("sanity-json-is-model", lambda fx: ["sanity", fx.model(), fx.image(), "--json", fx.model()],
         "bad", "tiny_cnn.onnx", out=False),
    Case("expose-out-is-model", lambda fx: ["expose", fx.model(), "features", "-o", fx.model(), "--overwrite"],
         "bad", "tiny_cnn.onnx", out=False),
    Case("backward-out-is-model", lambda fx: ["backward", fx.model(), "--wrt", "x", "-o", fx.model(),
                                              "--overwrite"], "bad", "tiny_cnn.onnx", out=False),
]

CLI_CASES = (OPTION_CASES + VALID_EDGE_OPTIONS + COMMON_CASES + PREPROCESS_CASES + SIDECAR_CASES
             + IMAGE_CASES + MODEL_CASES + BOXES_CASES + OUTPUT_CASES + CACHE_CASES)


@dataclass
class Result:
    exit_code: int
    output: str
    seconds: float


def run_cli(fx: Fx, case: Case, capfd) -> Result:
    args = [str(a) for a in case.args(fx)]
    if case.out and args[0] == "explain" and "--out" not in args:
        args += ["--out", str(fx.out)]
    capfd.readouterr()
    before = snapshot(fx.root)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # the CLI would print them
        warnings.simplefilter("always")
        r = CliRunner().invoke(cli, ["-q", *args])
    seconds = time.perf_counter() - t0
    shown_warnings = [f"{w.category.__name__}: {w.message} ({Path(w.filename).name}:{w.lineno})"
                      for w in caught if not issubclass(w.category, (DeprecationWarning,
                                                                     PendingDeprecationWarning))]
    after = snapshot(fx.root)
    leaked = capfd.readouterr()
    out = r.output + leaked.out + leaked.err + "".join(f"{w}\n" for w in shown_warnings)
    lines = [line for line in out.splitlines() if line.strip()]
    shown = f"exit {r.exit_code}, output:\n{out}" + (f"\nexception: {r.exception!r}" if r.exception and
                                                     not isinstance(r.exception, SystemExit) else "")
    out_dir = Path(args[args.index("--out") + 1]).relative_to(fx.root) if "--out" in args and \
        Path(args[args.index("--out") + 1]).is_relative_to(fx.root) else None

    if case.expect == "bad":
        assert r.exit_code == 2, shown
        assert len(lines) == 1 and lines[0].startswith("error: "), shown
        assert len(lines[0]) <= 400, f"not a clear line ({len(lines[0])} characters); {shown}"
        if case.match:
            assert case.match.lower() in lines[0].lower(), shown
        added = sorted(set(after) - set(before))
        changed = sorted(k for k in before if after.get(k) != before[k])
        assert not added and not changed, f"a bad input wrote {added} and changed {changed}; {shown}"
    else:
        assert r.exit_code == 0, shown
        assert not any(line.startswith(("error", "internal error", "Traceback")) for line in lines), shown
        assert not shown_warnings, f"warnings reach the terminal; {shown}"
        assert not [k for k in after if k.endswith(".tmp") or "/." in k or k.startswith(".")], after
        overwrite = "--overwrite" in args
        for k, h in before.items():
            in_out = out_dir is not None and Path(k).is_relative_to(out_dir)
            if not (in_out and overwrite):
                assert after.get(k) == h, f"{k} changed; {shown}"
        for k in set(after) - set(before):  # only the output folder (and its new parents)
            assert out_dir is not None and (Path(k).is_relative_to(out_dir)
                                            or out_dir.is_relative_to(k)), f"{k} written; {shown}"
        maps = [fx.root / k for k in after if k.endswith(".npy")]
        if args[0] == "explain" and out_dir is not None:
            assert maps, f"no map written; {shown}"
        for m in maps:
            assert np.isfinite(np.load(m)).all(), f"{m.name} is not finite"
    return Result(r.exit_code, out, seconds)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli(case: Case, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("BLACKBOX_XAI_CACHE", "")
    (tmp_path / "t").mkdir()
    fx = Fx(tmp_path / "t")
    for k, v in (case.env(fx) if case.env else {}).items():
        monkeypatch.setenv(k, v)
    result = run_cli(fx, case, capfd)
    if case.check is not None:
        case.check(fx, result)


def test_case_ids_are_unique_and_many():
    ids = [c.id for c in CLI_CASES] + [c[0] for c in API_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 100


# ---- the Python API -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from blackbox_xai import load_model

    return load_model(TEST_MODELS / "tiny_cnn.onnx", device="cpu")


def linear(x):
    return x.reshape(len(x), -1)[:, :5] * 1.0


X = np.random.default_rng(2).standard_normal((3, 32, 32)).astype(np.float32)


def _nan_for_dark(x):
    s = x.reshape(len(x), -1).mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return np.log(np.concatenate([s, s + 1], axis=1))  # NaN where the mean is negative


def _api(fn: Callable, *, match: str | None = None, error: type = BlackboxError):
    """A case: ``fn(tiny)`` raises ``error`` with ``match`` in its message (or returns a finite map
    when ``error`` is None)."""
    return fn, match, error


API_CASES = [
    ("api-load-missing", *_api(lambda m, p: _load(p / "nope.onnx"), match="nope.onnx")),
    ("api-load-empty", *_api(lambda m, p: _load(_w(p / "e.onnx", b"")), match="e.onnx")),
    ("api-load-random", *_api(lambda m, p: _load(_w(p / "r.onnx", b"\x08\x07garbage" * 50)), match="r.onnx")),
    ("api-load-truncated", *_api(lambda m, p: _load(_w(p / "t.onnx", (TEST_MODELS / "tiny_cnn.onnx")
                                                       .read_bytes()[:500])), match="t.onnx")),
    ("api-load-directory", *_api(lambda m, p: _load(p))),
    ("api-load-not-image", *_api(lambda m, p: _load(TEST_MODELS / "not_image.onnx"), match="image")),
    ("api-load-cuda", *_api(lambda m, p: _load(TEST_MODELS / "tiny_cnn.onnx", device="cuda"), match="cuda")),
    ("api-load-device-tpu", *_api(lambda m, p: _load(TEST_MODELS / "tiny_cnn.onnx", device="tpu"), match="tpu")),
    ("api-load-batch-size-0", *_api(lambda m, p: _load(TEST_MODELS / "tiny_cnn.onnx", batch_size=0),
                                    match="batch_size")),
    ("api-load-batch-size-str", *_api(lambda m, p: _load(TEST_MODELS / "tiny_cnn.onnx", batch_size="8"),
                                      match="batch_size")),
    ("api-load-score-bogus", *_api(lambda m, p: _load(TEST_MODELS / "tiny_cnn.onnx", score="bogus"),
                                   match="score")),
    ("api-load-output-unknown", *_api(lambda m, p: _load(TEST_MODELS / "tiny_cnn.onnx", output="logitz"),
                                      match="logits")),
    ("api-load-zero-classes", *_api(lambda m, p: _load(_built(p, "zero_classes")), match="scores")),
    ("api-fn-returns-n-by-0", *_api(lambda m, p: _ex(lambda x: np.zeros((len(x), 0)), X, "occlusion"),
                                    match="shape")),
    ("api-fn-returns-nan", *_api(lambda m, p: _ex(lambda x: np.full((len(x), 3), np.nan), X, "occlusion"),
                                 match="NaN")),
    ("api-fn-returns-nan-for-some", *_api(lambda m, p: _ex(_nan_for_dark, X - X.mean() + 0.01, "occlusion",
                                                           baseline=-10.0, window=16, stride=16), match="NaN")),
    ("api-fn-returns-wrong-n", *_api(lambda m, p: _ex(lambda x: np.zeros((len(x) + 1, 3)), X, "rise",
                                                      n_masks=8), match="shape")),
    ("api-fn-returns-none", *_api(lambda m, p: _ex(lambda x: None, X, "occlusion"), match="model")),
    ("api-fn-returns-scalar", *_api(lambda m, p: _ex(lambda x: 1.0, X, "occlusion"), match="shape")),
    ("api-fn-returns-strings", *_api(lambda m, p: _ex(lambda x: np.full((len(x), 2), "a"), X, "occlusion"),
                                     match="model")),
    ("api-fn-returns-1d", *_api(lambda m, p: _ex(lambda x: x.reshape(len(x), -1).sum(1), X, "occlusion",
                                                 window=16, stride=16), error=None)),
    ("api-fn-returns-int", *_api(lambda m, p: _ex(lambda x: (x.reshape(len(x), -1)[:, :4] > 0).astype(int), X,
                                                  "occlusion", window=16, stride=16), error=None)),
    ("api-x-nan-pixel", *_api(lambda m, p: _ex(m, _with(X, 0, 3, 3, np.nan), "occlusion"), match="NaN")),
    ("api-x-inf-pixel", *_api(lambda m, p: _ex(m, _with(X, 1, 0, 0, np.inf), "occlusion"), match="infinite")),
    ("api-x-2d", *_api(lambda m, p: _ex(m, X[0], "occlusion"), match="shape")),
    ("api-x-batch-of-2", *_api(lambda m, p: _ex(m, np.stack([X, X]), "occlusion"), match="shape")),
    ("api-x-empty", *_api(lambda m, p: _ex(linear, np.zeros((3, 0, 0), np.float32), "occlusion"), match="shape")),
    ("api-x-strings", *_api(lambda m, p: _ex(linear, np.full((3, 4, 4), "a"), "occlusion"), match="x")),
    ("api-x-wrong-size-for-model", *_api(lambda m, p: _ex(m, X[:, :16, :16], "occlusion"), match="32")),
    ("api-x-one-channel-for-rgb-model", *_api(lambda m, p: _ex(m, X[:1], "occlusion"), match="3")),
    ("api-unknown-method", *_api(lambda m, p: _ex(m, X, "occlusoin"), match="occlusion")),
    ("api-unknown-option", *_api(lambda m, p: _ex(m, X, "occlusion", windw=3), match="window")),
    ("api-window-0", *_api(lambda m, p: _ex(m, X, "occlusion", window=0), match="window")),
    ("api-window-str", *_api(lambda m, p: _ex(m, X, "occlusion", window="abc"), match="window")),
    ("api-window-float", *_api(lambda m, p: _ex(m, X, "occlusion", window=1.5), match="window")),
    ("api-window-bool", *_api(lambda m, p: _ex(m, X, "occlusion", window=True), match="window")),
    ("api-n-masks-negative", *_api(lambda m, p: _ex(m, X, "rise", n_masks=-1), match="n_masks")),
    ("api-p-nan", *_api(lambda m, p: _ex(m, X, "rise", p=float("nan")), match="p")),
    ("api-steps-0", *_api(lambda m, p: _ex(m, X, "integrated-gradients", steps=0), match="steps")),
    ("api-sigma-inf", *_api(lambda m, p: _ex(m, X, "smoothgrad", sigma=float("inf")), match="sigma")),
    ("api-baseline-nan", *_api(lambda m, p: _ex(m, X, "occlusion", baseline=float("nan")), match="baseline")),
    ("api-baseline-array-wrong-shape", *_api(lambda m, p: _ex(m, X, "occlusion", baseline=np.zeros(3)),
                                             match="baseline")),
    ("api-target-negative", *_api(lambda m, p: _ex(m, X, "occlusion", target=-1), match="target")),
    ("api-target-5", *_api(lambda m, p: _ex(m, X, "occlusion", target=5), match="target")),
    ("api-target-str", *_api(lambda m, p: _ex(m, X, "occlusion", target="1"), match="target")),
    ("api-target-numpy-int", *_api(lambda m, p: _ex(m, X, "occlusion", target=np.int64(1), window=16,
                                                    stride=16), error=None)),
    ("api-seed-negative", *_api(lambda m, p: _ex(m, X, "occlusion", seed=-1), match="seed")),
    ("api-seed-float", *_api(lambda m, p: _ex(m, X, "occlusion", seed=1.5), match="seed")),
    ("api-seed-none", *_api(lambda m, p: _ex(m, X, "rise", seed=None, n_masks=8), error=None)),
    ("api-graph-method-plain-fn", *_api(lambda m, p: _ex(linear, X, "gradcam"), match="Model")),
    ("api-layer-2d", *_api(lambda m, p: _ex(m, X, "gradcam", layer="logits"), match="logits")),
    ("api-layer-unknown", *_api(lambda m, p: _ex(m, X, "gradcam", layer="featurs"), match="features")),
    ("api-neurons-outside", *_api(lambda m, p: _ex(m, X, "smooth-gradcampp", neurons="100,100", n_samples=2),
                                  match="neurons")),
    ("api-filters-letters", *_api(lambda m, p: _ex(m, X, "smooth-gradcampp", filters="a,b", n_samples=2),
                                  match="filters")),
    ("api-segments-wrong-shape", *_api(lambda m, p: _ex(linear, X, "shapley", segments=np.zeros((4, 4), int)),
                                       match="segments")),
    ("api-segments-one-negative-label", *_api(lambda m, p: _ex(linear, X, "shapley",
                                                               segments=-np.ones((32, 32), int)),
                                              error=None)),
    ("api-segments-float", *_api(lambda m, p: _ex(linear, X, "shapley", segments=np.zeros((32, 32))),
                                 match="segments")),
    ("api-batch-size-100000", *_api(lambda m, p: _ex(_load(TEST_MODELS / "tiny_cnn.onnx", device="cpu",
                                                           batch_size=100000), X, "rise", n_masks=8), error=None)),
    ("api-preprocessing-mean-nan", *_api(lambda m, p: _pre(mean=(float("nan"),)), match="mean")),
    ("api-preprocessing-std-0", *_api(lambda m, p: _pre(std=(0.0,)), match="std")),
    ("api-preprocessing-resize-str", *_api(lambda m, p: _pre(resize="256"), match="resize")),
    ("api-prepare-missing-image", *_api(lambda m, p: _pre().prepare(p / "nope.png"), match="nope.png")),
    ("api-prepare-bomb", *_api(lambda m, p: _pre().prepare(_w(p / "bomb.png", bomb_png(100_000, 100_000))),
                               match="pixels")),
    ("api-deletion-nan-map", *_api(lambda m, p: _deletion(m, np.full((32, 32), np.nan)), match="map")),
    ("api-deletion-wrong-map-shape", *_api(lambda m, p: _deletion(m, np.zeros((8, 8))), match="map")),
    ("api-pointing-nan-box", *_api(lambda m, p: _pointing(np.zeros((32, 32)), (0, 0, float("nan"), 9)),
                                   match="box")),
    ("api-pointing-nan-map", *_api(lambda m, p: _pointing(np.full((32, 32), np.nan), (0, 0, 9, 9)), match="map")),
    ("api-energy-pointing-nan-map", *_api(lambda m, p: _energy(np.full((32, 32), np.nan), (0, 0, 9, 9)),
                                          match="map")),
    ("api-load-boxes-non-utf8", *_api(lambda m, p: _boxes(_w(p / "b.json", b'{"\xff": [0, 0, 1, 1]}')),
                                      match="UTF-8")),
]


def _w(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _built(p: Path, kind: str) -> Path:
    return _w(p / f"{kind}.onnx", build_model(kind).SerializeToString())


def _load(path, **kwargs):
    from blackbox_xai import load_model

    return load_model(path, **kwargs)


def _ex(model, x, method, **kwargs):
    from blackbox_xai import explain

    return explain(model, x, method, **kwargs)


def _with(x, c, i, j, v):
    x = x.copy()
    x[c, i, j] = v
    return x


def _pre(**kwargs):
    from blackbox_xai.preprocess import Preprocessing

    return Preprocessing(crop=(32, 32), **kwargs)


def _deletion(model, amap):
    from blackbox_xai.metrics import deletion_insertion

    return deletion_insertion(model, X, amap, 1)


def _pointing(amap, box):
    from blackbox_xai.metrics import pointing_hit

    return pointing_hit(amap, box)


def _energy(amap, box):
    from blackbox_xai.metrics import energy_pointing

    return energy_pointing(amap, box)


def _boxes(path):
    from blackbox_xai.metrics import load_boxes

    return load_boxes(path)


@pytest.mark.parametrize("fn,match,error", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api(fn, match, error, tiny, tmp_path):
    if error is None:
        exp = fn(tiny, tmp_path)
        assert np.isfinite(exp.map).all()
        return
    with pytest.raises(error) as info:
        fn(tiny, tmp_path)
    msg = str(info.value)
    assert msg and "\n" not in msg.strip(), repr(msg)
    if match:
        assert match.lower() in msg.lower(), msg

"""Make the FP16 and INT8 versions of the shipped EfficientNet-Lite0, for `blackbox-xai compare`.

    python tools/make_quantized_models.py            # writes models/efficientnet_lite0_{fp16,int8}.onnx
    python tools/make_quantized_models.py --only int8 --int8-format qoperator --out-dir DIR
    python tools/make_quantized_models.py --only int8 --int8-format dynamic --out-dir DIR

* FP16: every float32 initializer and op converted to float16 with float32 input and output kept
  (``keep_io_types``), by ``onnxruntime.transformers.float16`` (ships with ONNX Runtime; falls
  back to ``onnxconverter_common.float16`` when that is missing).
* INT8: static quantization in QDQ format by ``onnxruntime.quantization.quantize_static``:
  per-channel symmetric int8 weights in 7 bits (``reduce_range``: x86 CPUs without VNNI, e.g.
  AVX2-only, saturate u8 x s8 products in 8 bits and the model drifts by 3 logits), uint8 activations, MinMax calibration on the example
  photos (each photo, its mirror image and a tighter crop: 9 inputs), after
  ``quant_pre_process`` (shape inference and graph clean-up). Calibrating on the images the
  README then evaluates is a small leak; use your own photos with ``--calibration``.

Each output gets a copy of the FP32 model's sidecar (preprocessing and labels), so the files
work on their own. Then the script prints the top-1 agreement with FP32 on the photos.
Needs only the packages blackbox-xai already depends on (onnx, onnxruntime, numpy, pillow).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_xai.model import load_model, sha256_of, softmax
from blackbox_xai.preprocess import Preprocessing, read_image


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` topologically (the converter appends its input casts at the end)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise RuntimeError(f"graph has a cycle or a missing input near {rest[0].name!r}")
        for n in done:
            ready.update(n.output)
        ordered += done
        pending = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def make_fp16(src: Path, dst: Path) -> None:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:  # older or trimmed onnxruntime builds
        from onnxconverter_common.float16 import convert_float_to_float16
    model = onnx.load(str(src))
    fp16 = convert_float_to_float16(model, keep_io_types=True)
    fp16.ir_version, fp16.producer_name = model.ir_version, "blackbox-xai tools/make_quantized_models.py"
    toposort(fp16.graph)
    onnx.checker.check_model(fp16)
    onnx.save(fp16, str(dst))


def calibration_inputs(model_path: Path, photos: list[Path]) -> list[np.ndarray]:
    """Each photo as the model sees it, mirrored, and with a tighter crop (resize 224 instead of 256)."""
    pre = Preprocessing.for_model(model_path, (224, 224))
    tight = replace(pre, resize=224)
    out = []
    for p in photos:
        img = read_image(p)
        x, _ = pre.to_tensor(img)
        out += [x, x[:, :, ::-1].copy(), tight.to_tensor(img)[0]]
    return out


def make_int8_dynamic(src: Path, dst: Path) -> None:
    """Dynamic quantization: uint8 weights, activations quantized at run time from their range
    (DynamicQuantizeLinear -> ConvInteger / MatMulInteger); no calibration."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)


def make_int8(src: Path, dst: Path, inputs: list[np.ndarray], fmt: str = "qdq") -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{input_name: x[None].astype(np.float32)} for x in inputs])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        quant_format = QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ
        quantize_static(str(prepped), str(dst), Reader(), quant_format=quant_format,
                        per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax)


def check(reference: Path, others: list[Path], photos: list[Path]) -> None:
    pre = Preprocessing.for_model(reference, (224, 224))
    xs = np.stack([pre.prepare(p).tensor for p in photos])
    ref = load_model(reference, device="cpu")(xs)
    for path in others:
        out = load_model(path, device="cpu")(xs)
        agree = int((ref.argmax(1) == out.argmax(1)).sum())
        dprob = float(np.abs(softmax(ref) - softmax(out)).max())
        print(f"{path.name}: {path.stat().st_size / 1e6:.1f} MB, sha256 {sha256_of(path)[:16]}, "
              f"top-1 agreement with FP32 {agree}/{len(photos)}, max |dlogit| "
              f"{float(np.abs(ref - out).max()):.3f}, max |dprob| {dprob:.4f}")
        for p, a, b in zip(photos, ref, out):
            print(f"  {p.name}: FP32 {a.argmax()} ({softmax(a)[a.argmax()]:.3f})  "
                  f"{path.stem.rsplit('_', 1)[-1]} {b.argmax()} ({softmax(b)[b.argmax()]:.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet_lite0.onnx")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: beside --model")
    ap.add_argument("--calibration", type=Path, nargs="+",
                    default=sorted((ROOT / "examples").glob("*.jpg")), help="calibration photos")
    ap.add_argument("--only", choices=["fp16", "int8"], default=None)
    ap.add_argument("--int8-format", choices=["qdq", "qoperator", "dynamic"], default="qdq",
                    help="qoperator: ONNX Runtime's integer-op format (QLinearConv ...); dynamic: "
                         "quantize_dynamic (ConvInteger ...); written as "
                         "<model>_int8_<format>.onnx; blackbox-xai reads both in QDQ form")
    args = ap.parse_args()
    src: Path = args.model
    out_dir = args.out_dir or src.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    if args.only in (None, "fp16"):
        dst = out_dir / f"{src.stem}_fp16.onnx"
        make_fp16(src, dst)
        made.append(dst)
    if args.only in (None, "int8"):
        suffix = "" if args.int8_format == "qdq" else f"_{args.int8_format}"
        dst = out_dir / f"{src.stem}_int8{suffix}.onnx"
        if args.int8_format == "dynamic":
            make_int8_dynamic(src, dst)
        else:
            make_int8(src, dst, calibration_inputs(src, args.calibration), args.int8_format)
        made.append(dst)
    sidecar = Path(f"{src}.json")
    for dst in made:
        if sidecar.is_file():
            shutil.copyfile(sidecar, f"{dst}.json")
    check(src, made, args.calibration)


if __name__ == "__main__":
    main()

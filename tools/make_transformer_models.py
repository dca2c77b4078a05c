"""Export the tiny vision transformers the tests use, from PyTorch, to ``tests/models/transformers``.

torch is used only here (and in ``tools/check_against_torch.py``); blackbox-xai and its tests
never import it. Needs, in a throwaway venv: ``pip install torch torchvision timm onnx
onnxscript numpy`` (torch 2.14, torchvision 0.29, timm 1.0 wrote the committed files).

The models are the libraries' own classes at toy sizes, so the ONNX graphs carry the real
exporters' op patterns (issue 12):

* ``vit_tiny_opset14.onnx``: torchvision ``VisionTransformer`` (nn.MultiheadAttention, whose
  legacy export has the ``T x N x 3 x C`` in-projection tensor), 32 x 32 input, patch 8 (a 4 x 4
  grid), 2 blocks, dim 32, 2 heads, class token; legacy exporter at opset 14, where LayerNorm is
  decomposed into ReduceMean/Sub/Pow/Sqrt/Div;
* ``vit_tiny.onnx``: the same torch model, legacy exporter at opset 17 (LayerNormalization);
* ``vit_tiny_dynamo.onnx``: the same model, the dynamo exporter at opset 18;
* ``deit_tiny.onnx``: timm ``VisionTransformerDistilled`` (class and distillation tokens,
  fused qkv Linear, scaled_dot_product_attention), 32 x 32, patch 8, 2 blocks, dim 32, 2 heads;
  legacy exporter, opset 17;
* ``swin_tiny.onnx``: torchvision ``SwinTransformer`` ((N, H, W, C) tokens, shifted windows
  rolled by Slice+Concat, relative position bias Gather, patch merging), 32 x 32, patch 4,
  depths (2, 2), dims 16/32, heads 2/4, window 4; legacy exporter, opset 17.

Weights come from a fixed seed (torch's default initialisation, then every parameter perturbed
so LayerNorm scales, biases, class tokens and the zero-initialised heads are all non-zero);
:func:`torch_models` rebuilds the same torch modules for comparisons with torch. The batch axis
is dynamic (``N``). Run ``python tools/make_transformer_models.py [OUT_DIR]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "models" / "transformers"
SIZE, CLASSES, SEED = 32, 10, 0


def _perturb(model: nn.Module, seed: int) -> nn.Module:
    """Add N(0, 0.1^2) to every parameter (N(0, 0.5^2) to the classification head), in eval mode:
    the libraries zero the heads and use unit LayerNorm scales, which would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.startswith("head") else 0.1
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(SEED)
    m = VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2,
                          hidden_dim=32, mlp_dim=64, num_classes=CLASSES)
    return _perturb(m, SEED)


def deit() -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(SEED + 1)
    m = VisionTransformerDistilled(img_size=SIZE, patch_size=8, embed_dim=32, depth=2,
                                   num_heads=2, mlp_ratio=2.0, num_classes=CLASSES)
    return _perturb(m, SEED + 1)


def swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(SEED + 2)
    m = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                        window_size=[4, 4], mlp_ratio=2.0, num_classes=CLASSES)
    return _perturb(m, SEED + 2)


def torch_models() -> dict[str, Callable[[], nn.Module]]:
    """File stem -> builder of the torch model that file was exported from (same weights)."""
    return {"vit_tiny_opset14": vit, "vit_tiny": vit, "vit_tiny_dynamo": vit,
            "deit_tiny": deit, "swin_tiny": swin}


EXPORTS = {  # file stem -> (opset, dynamo)
    "vit_tiny_opset14": (14, False),
    "vit_tiny": (17, False),
    "vit_tiny_dynamo": (18, True),
    "deit_tiny": (17, False),
    "swin_tiny": (17, False),
}


def export(model: nn.Module, path: Path, opset: int, dynamo: bool) -> None:
    """Export with input ``x`` (N, 3, 32, 32) and output ``logits`` (N, 10), N dynamic."""
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED))
    if dynamo:
        batch = torch.export.Dim("N", min=1, max=1024)
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                    input_names=["x"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: batch}}, optimize=True,
                                    external_data=False)
        program.save(str(path), external_data=False)
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
                          do_constant_folding=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    with torch.no_grad():
        expected = model(x).numpy()
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {proto.graph.input[0].name: x.numpy()})[0]
    err = float(abs(got - expected).max())
    if err > 1e-4:
        raise RuntimeError(f"{path.name}: ONNX Runtime differs from torch by {err:.2e}")
    print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, opset {opset}, "
          f"{'dynamo' if dynamo else 'legacy'}, max |ort - torch| {err:.1e}")


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    builders = torch_models()
    for stem, (opset, dynamo) in EXPORTS.items():
        export(builders[stem](), out / f"{stem}.onnx", opset, dynamo)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)

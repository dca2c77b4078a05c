"""Reverse-mode differentiation of an ONNX graph into ONNX ops (no training framework).

:func:`backward` appends the adjoint of every node on the path from the ``wrt`` tensors to the
scores, one vector-Jacobian rule per op type (:mod:`.vjp_rules`), and returns a model with an
extra ``seed`` input (N, K) and the outputs ``<wrt>_grad = d sum(seed * scores) / d wrt``.
One graph serves every target class (one-hot seed) and weighted targets.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import helper, shape_inference

from ..cache import write_cache_file
from ..errors import BlackboxError, UnknownNameError, did_you_mean
from .inspect import node_inputs
from .io import copy_model
from .vjp_rules import (
    NON_DIFFERENTIABLE,
    Emitter,
    Evaluate,
    GraphInfo,
    UnsupportedOpError,
    has_rule,
    unsupported,
    vjp,
)

__all__ = ["ENGINE_VERSION", "UnsupportedOpError", "backward", "backward_cached"]

log = logging.getLogger(__name__)


def engine_version(folder: Path = Path(__file__).parent) -> str:
    """A hash of the sources in ``folder`` that emit backward graphs (this module, the rules and
    the graph helpers they import): part of every cache key, so any change to a rule rebuilds
    the cached graphs. It replaced a hand-bumped "1" that ten rule changes never bumped."""
    digest = hashlib.sha256()
    for name in ("autodiff.py", "vjp_rules.py", "inspect.py", "io.py"):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:16]


ENGINE_VERSION = engine_version()
_MEMORY_CACHE_SIZE = 4
_memory_cache: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
_PROTOBUF_LIMIT = 2**31 - 1


def backward(
    model: onnx.ModelProto,
    wrt: Sequence[str],
    output: str | None = None,
    seed_name: str = "seed",
    grad_suffix: str = "_grad",
    evaluate: Evaluate | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` that also computes ``d sum(seed * scores) / d t`` for each t in ``wrt``.

    Args:
        model: the forward model (not modified); its ``ir_version`` and opsets are kept.
        wrt: graph input or intermediate tensor names to differentiate with respect to.
        output: the scores output; default the only output, or the only 2-D output.
        seed_name: name of the new input, shaped like the scores (float32, float64 for float64
            models); a one-hot seed selects one class.
        grad_suffix: the gradient of ``t`` is the output ``t + grad_suffix``, shaped like ``t``.
        evaluate: runs the one-node probes some rules need (pooling and resize matrices);
            default ONNX's reference evaluator; pass the runtime's to match its semantics.

    Returns:
        The model with outputs: the original ones (unchanged), then the gradients in ``wrt``
        order, then the forward values of the intermediate ``wrt`` tensors (named as themselves).

    Raises:
        UnknownNameError: a name is not a tensor of the graph (close matches suggested).
        UnsupportedOpError: an op on the path has no gradient rule.
        ValueError: the scores do not depend on a ``wrt`` tensor, or a new name is taken.
    """
    wrt = list(dict.fromkeys(wrt))
    if not wrt:
        raise ValueError("wrt is empty: name at least one tensor to differentiate with respect to")
    m = copy_model(model)
    info = GraphInfo(_inferred(m))
    score = _score_output(m.graph, output)
    taken = _check_names(m.graph, wrt, [seed_name, *(w + grad_suffix for w in wrt)])
    reach, path = _path(list(m.graph.node), wrt, score, info)
    for node in reversed(path):  # the first op without a rule, not a rule after it that
        if not has_rule(node):   # misses a shape that op left unknown
            raise unsupported(node, "no gradient rule for this op")
    e = Emitter(info, taken, evaluate=evaluate)
    grads = _reverse(e, path, reach, wrt, score, seed_name)
    _attach(m.graph, e, wrt, grads, score, seed_name, grad_suffix)
    if m.ByteSize() < _PROTOBUF_LIMIT:
        m = _inferred(m)  # shapes on the new tensors let ORT keep them in its NCHWc layout
        onnx.checker.check_model(m)
    return m


def backward_cached(
    model: onnx.ModelProto | bytes,
    wrt: Sequence[str],
    output: str | None = None,
    *,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    evaluate: Evaluate | None = None,
) -> onnx.ModelProto:
    """:func:`backward`, memoised in memory (last few) and optionally on disk in ``cache_dir``.

    The key is (engine version, onnx version, sha256 of the exact graph differentiated, wrt,
    output); pass ``sha256`` only when it is the hash of that graph. An unreadable cache entry
    (truncated, empty) is rebuilt; a cache folder that cannot be written means no disk cache.
    Each call returns a fresh ``ModelProto``.
    """
    data = model if isinstance(model, bytes) else model.SerializeToString()
    digest = sha256 or hashlib.sha256(data).hexdigest()
    key = (ENGINE_VERSION, onnx.__version__, digest, tuple(wrt), output)
    if key in _memory_cache:
        _memory_cache.move_to_end(key)
        return onnx.load_from_string(_memory_cache[key])
    path = None
    if cache_dir is not None:
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        path = Path(cache_dir) / f"backward-{name}.onnx"
    result = _read_cached(path) if path is not None else None
    if result is None:
        src = onnx.load_from_string(data) if isinstance(model, bytes) else model
        result = backward(src, wrt, output, evaluate=evaluate).SerializeToString()
        if path is not None:
            try:
                write_cache_file(path, result)
            except OSError as e:
                log.warning("backward-graph cache %s is not writable (%s): not cached",
                            path.parent, e.strerror or e)
    _memory_cache[key] = result
    while len(_memory_cache) > _MEMORY_CACHE_SIZE:
        _memory_cache.popitem(last=False)
    return onnx.load_from_string(result)


def _read_cached(path: Path) -> bytes | None:
    """The cached graph's bytes, or None when absent or unreadable (then it is rebuilt)."""
    try:
        data = path.read_bytes()
        if not onnx.load_from_string(data).graph.node:
            return None  # an empty file parses as an empty model
    except Exception:  # noqa: BLE001 - OSError, protobuf DecodeError (no public base)
        if path.exists():
            log.info("backward-graph cache entry %s is unreadable: rebuilding it", path.name)
        return None
    log.debug("backward graph read from %s", path)
    return data


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy for dtypes and static shapes (the model itself if inference fails)."""
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as err:
        log.warning("shape inference failed (%s); differentiating with partial shapes", err)
        return model


def _tensor_names(g: onnx.GraphProto) -> set[str]:
    names = {i.name for i in g.input} | {t.name for t in g.initializer}
    names.update(o for n in g.node for o in n.output if o)
    return names


def _check_names(g: onnx.GraphProto, wrt: list[str], new: list[str]) -> set[str]:
    """Every name in use (tensors and nodes), after checking ``wrt`` exist and ``new`` do not."""
    names = _tensor_names(g)
    for w in wrt:
        if w not in names:
            raise UnknownNameError(did_you_mean(w, sorted(names), "tensor"))
    taken = names | {n.name for n in g.node}
    for n in new:
        if n in taken:
            raise ValueError(
                f"name {n!r} is already used in the model: pick another seed_name / grad_suffix"
            )
    return taken | set(new)


def _attach(
    g: onnx.GraphProto,
    e: Emitter,
    wrt: list[str],
    grads: list[str],
    score: str,
    seed: str,
    suffix: str,
) -> None:
    """Append the backward nodes, the seed input, the gradient outputs and the intermediate
    wrt tensors as outputs (after the original outputs, which stay untouched)."""
    info = e.info
    e.nodes.extend(
        helper.make_node("Identity", [gw], [w + suffix], name=e.fresh("grad_output"))
        for w, gw in zip(wrt, grads)
    )
    g.node.extend(e.nodes)
    g.initializer.extend(e.initializers)
    shown = {o.name for o in g.output} | {i.name for i in g.input}
    g.input.append(helper.make_tensor_value_info(seed, e.gdtype(score), info.shape(score)))
    g.output.extend(
        helper.make_tensor_value_info(w + suffix, e.gdtype(w), info.shape(w)) for w in wrt
    )
    g.output.extend(
        helper.make_tensor_value_info(w, info.dtype(w), info.shape(w))
        for w in wrt
        if w not in shown
    )


def _score_output(g: onnx.GraphProto, output: str | None) -> str:
    """The named graph output, else the only output, else the only 2-D output."""
    outs = [o.name for o in g.output]
    if output is not None:
        if output not in outs:
            raise UnknownNameError(did_you_mean(output, outs, "graph output"))
        return output
    if len(outs) == 1:
        return outs[0]
    two_d = [o.name for o in g.output if len(o.type.tensor_type.shape.dim) == 2]
    if len(two_d) == 1:
        return two_d[0]
    raise BlackboxError(f"the model has several outputs {outs}: choose the scores with output=")


def _path(
    nodes: list[onnx.NodeProto], wrt: list[str], score: str, info: GraphInfo
) -> tuple[set[str], list[onnx.NodeProto]]:
    """Float tensors reachable from ``wrt`` through differentiable ops, and the nodes that lie
    between them and ``score``, in reverse topological order."""
    reach = set(wrt)
    for n in nodes:  # node_inputs: If/Loop subgraphs read outer tensors without listing them
        if n.op_type not in NON_DIFFERENTIABLE and any(i in reach for i in node_inputs(n)):
            if n.op_type == "DynamicQuantizeLinear":  # its scale and zero point: constants
                reach.add(n.output[0])  # for the straight-through estimator
                continue
            # QuantizeLinear's integer output carries a straight-through gradient (QDQ models)
            reach.update(o for o in n.output
                         if o and (info.is_float(o) or n.op_type == "QuantizeLinear"))
    if score not in reach:
        raise BlackboxError(f"the scores {score!r} do not depend (differentiably) on {wrt}"
                            f"{_where_the_float_path_ends(nodes, reach, info)}")
    relevant, path = {score}, []
    for n in reversed(nodes):
        if any(o in relevant for o in n.output) and any(i in reach for i in node_inputs(n)):
            path.append(n)
            relevant.update(i for i in node_inputs(n) if i in reach)
    missing = [w for w in wrt if w not in relevant]
    if missing:
        raise BlackboxError(f"the scores {score!r} do not depend (differentiably) on {missing}")
    return reach, path


def _where_the_float_path_ends(nodes: list[onnx.NodeProto], reach: set[str],
                               info: GraphInfo) -> str:
    """': the float path ends at ...' naming the ops that read a differentiable tensor and give
    none (integer outputs: quantized arithmetic; or ops without a derivative), or ''."""
    ends = [n for n in nodes if any(i in reach for i in node_inputs(n))
            and not any(o in reach for o in n.output)]
    if not ends:
        return ""
    first = ends[0]
    out = next((o for o in first.output if o), "")
    dtype = info.dtype(out)
    why = (f"its output is {helper.tensor_dtype_to_np_dtype(dtype).name}: integer (quantized) "
           "arithmetic has no gradient; explain the float model or use a black-box method"
           if dtype and not info.is_float(out) else "it has no derivative")
    kinds = sorted({n.op_type for n in ends})
    more = f" (and {len(ends) - 1} more: {', '.join(kinds)})" if len(ends) > 1 else ""
    return f": the float path ends at {first.op_type} {first.name or out!r}{more}: {why}"


def _reverse(
    e: Emitter, path: list[onnx.NodeProto], reach: set[str], wrt: list[str], score: str, seed: str
) -> list[str]:
    """Run the rules from the scores back; returns the summed gradient of each wrt tensor."""
    contribs: dict[str, list[str]] = {score: [seed]}

    def total(name: str) -> str | None:
        parts = contribs.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            contribs[name] = parts = [e.op("Sum", *parts)]
        return parts[0]

    for node in path:
        gys = [total(o) if o else None for o in node.output]
        if not any(gys):
            continue
        need = [bool(i) and i in reach for i in node.input]
        grads = vjp(e, node, gys, need)
        for name, gname, n in zip(node.input, grads, need):
            if n and gname is not None:
                contribs.setdefault(name, []).append(gname)
            elif n:
                raise unsupported(node, f"the rule gave no gradient for input {name!r}")
    return [total(w) for w in wrt]

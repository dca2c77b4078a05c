"""The package's structure: no import cycles, graph/ free of ONNX Runtime, the README's method
table generated from the registry."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

from blackbox_xai.methods import methods_table

PACKAGE = ROOT / "blackbox_xai"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every import (at any depth, lazy ones too) between the package's modules."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                while t and t not in modules:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name:
                    edges[name].add(t)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    edges = _imports()
    assert _cycles(edges) == []
    # the walker sees imports: a known edge must be there, or the test could not fail
    assert "blackbox_xai.runtime" in edges["blackbox_xai.model"]


def test_a_cycle_is_detected():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_graph_rewrites_never_import_onnx_runtime():
    """graph/ is pure ModelProto -> ModelProto; sessions live in model.py and runtime.py only."""
    edges = _imports()
    for name, targets in edges.items():
        if name.startswith("blackbox_xai.graph"):
            assert not {"blackbox_xai.runtime", "blackbox_xai.model"} & targets, name
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("runtime.py", "model.py", "explanation.py"):  # explanation: version
            continue
        text = path.read_text(encoding="utf-8")
        assert "import onnxruntime" not in text, path
        assert "InferenceSession(" not in text, path


def test_the_readme_method_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert methods_table() in readme, "README is stale: paste `bbx methods --markdown`"


def test_the_methods_named_as_alternatives_come_from_the_registry():
    from blackbox_xai.methods import alternatives

    no_graph = alternatives(without_graph=True).split(", ")
    assert no_graph == ["adaptive-occlusion", "lime", "meaningful-perturbation --grad fd",
                        "occlusion", "rise", "shapley"]
    no_gradient = alternatives(without_graph=False).split(", ")
    assert {"cam", "scorecam", "ablationcam", "eigencam", *no_graph} == set(no_gradient)


def test_the_readme_example_of_adding_a_method_works():
    """The 'Adding a method' code registers a method that is exact on a linear model."""
    import numpy as np

    from blackbox_xai import explain
    from blackbox_xai.registry import METHODS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\nfrom typing import Annotated") + len("```python\n")
    code = readme[start:readme.index("```", start)]
    code = code.replace("from ..", "from blackbox_xai.")
    try:
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
        w = np.random.default_rng(0).standard_normal((3 * 8 * 8, 2)).astype(np.float32)
        x = np.random.default_rng(1).standard_normal((3, 8, 8)).astype(np.float32)
        e = explain(lambda b: b.reshape(len(b), -1) @ w, x, "half-occlusion", target=0)
        contrib = (x[..., None] * w.reshape(3, 8, 8, 2))[..., 0]  # each pixel's share of f_0
        np.testing.assert_allclose(e.map[0, :4], contrib[:, :, :4].sum(), rtol=1e-5)
        np.testing.assert_allclose(e.map[0, 4:], contrib[:, :, 4:].sum(), rtol=1e-5)
        assert e.n_queries == 3
    finally:
        METHODS.pop("half-occlusion", None)

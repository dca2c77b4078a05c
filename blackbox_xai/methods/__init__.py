"""Built-in methods; importing a module registers its methods (one line per module)."""

from ..errors import UnknownNameError, did_you_mean
from ..registry import METHODS, MethodSpec
from . import (  # noqa: F401
    adaptive,
    attention,
    cam,
    drise,
    gradients,
    lime,
    meaningful_perturbation,
    occlusion,
    rise,
    shapley,
)

__all__ = ["METHODS", "all_methods", "alternatives", "get_method", "methods_table"]


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``, or an error listing close matches."""
    if name not in METHODS:
        raise UnknownNameError(did_you_mean(name, sorted(METHODS), "method"))
    return METHODS[name]


def all_methods() -> dict[str, MethodSpec]:
    """Every registered method by name, sorted."""
    return dict(sorted(METHODS.items()))


def alternatives(*, without_graph: bool) -> str:
    """The methods that still run when gradients are impossible (an op with no rule) or, with
    ``without_graph``, when the graph cannot be rewritten at all; from the registry."""
    names = []
    for spec in all_methods().values():
        if spec.family in ("attention", "detection"):  # transformers / detectors only
            continue
        if spec.requires_graph if without_graph else spec.needs_gradient:
            continue
        has_fd = any(o.name == "grad" for o in spec.options)  # a finite-difference mode
        names.append(f"{spec.name} --grad fd" if has_fd else spec.name)
    return ", ".join(names)


def methods_table() -> str:
    """The methods as a markdown table, generated from the registry (the README's table is
    this text; a test fails when it is stale)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| method | family | what it computes | options (defaults) | reference |",
            "|---|---|---|---|---|"]
    for spec in all_methods().values():
        opts = ", ".join(f"`{o.name}={o.default!r}`" for o in spec.options) or "-"
        rows.append(f"| `{spec.name}` | {spec.family} | {cell(spec.summary)} | {cell(opts)} | "
                    f"{cell(spec.reference)} |")
    return "\n".join(rows) + "\n"

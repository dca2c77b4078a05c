"""The method registry: plain functions registered by name, with their options read from the signature.

A method is ``def name(query, x, target, *, ctx, **options) -> Attribution``: ``query`` maps
(N, C, H, W) float32 to (N, K) scores, ``x`` is one input (C, H, W), ``ctx`` a :class:`Context`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import UnknownNameError, did_you_mean


@dataclass
class Attribution:
    """What a method returns: a map (H, W) at the input resolution plus method-specific extras."""

    map: npt.NDArray[np.float32]
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What a method may use besides the query function.

    Attributes:
        rng: the only source of randomness, derived from the seed.
        scores: the model's scores (K,) for the unperturbed input (already paid for).
        model: the :class:`~blackbox_xai.model.Model` when there is one (graph methods need it).
        progress: a progress bar ticked by every query (or None); ``set_total`` sizes it.
    """

    rng: np.random.Generator
    scores: npt.NDArray[np.float32]
    model: Any = None
    progress: Any = None

    def set_total(self, n: int) -> None:
        if self.progress is not None:
            self.progress.reset(total=n)


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    annotation: Any


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., Attribution]
    family: str
    reference: str
    stochastic: bool
    requires_graph: bool
    options: tuple[Option, ...]

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    def validate(self, options: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults; reject unknown options with a did-you-mean message."""
        names = [o.name for o in self.options]
        for key in options:
            if key not in names:
                raise UnknownNameError(did_you_mean(key, names, f"option for {self.name!r}"))
        return {o.name: options.get(o.name, o.default) for o in self.options}


METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, family: str, reference: str, stochastic: bool = False,
             requires_graph: bool = False) -> Callable:
    """Register a method under ``name``; its keyword-only arguments (but ``ctx``) are its options."""

    def deco(fn: Callable[..., Attribution]) -> Callable[..., Attribution]:
        hints = inspect.get_annotations(fn, eval_str=True)
        opts = tuple(
            Option(p.name, p.default, hints.get(p.name, type(p.default)))
            for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "ctx"
        )
        METHODS[name] = MethodSpec(name, fn, family, reference, stochastic, requires_graph, opts)
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    from . import methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise UnknownNameError(did_you_mean(name, sorted(METHODS), "method"))
    return METHODS[name]


def all_methods() -> dict[str, MethodSpec]:
    from . import methods  # noqa: F401

    return dict(sorted(METHODS.items()))

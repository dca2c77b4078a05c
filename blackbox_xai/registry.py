"""The method registry (a leaf module): plain functions registered by name, with their options
read from the signature. :mod:`blackbox_xai.methods` registers the built-in methods and looks
them up.

A method is ``def name(query, x, target, *, ctx, **options) -> Attribution``: ``query`` maps
(N, C, H, W) float32 to (N, K) scores, ``x`` is one input (C, H, W), ``ctx`` a :class:`Context`.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import BlackboxError, UnknownNameError, did_you_mean


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
class Range:
    """Valid values of a numeric option, declared in the signature with ``Annotated``:
    ``n_samples: Annotated[int, Range(1)] = 25``. Bounds are inclusive unless ``*_open``;
    NaN and infinities are never valid."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return " and ".join(parts) or "finite"


class OptionError(BlackboxError):
    """An option value of the wrong type or out of its range."""


@dataclass(frozen=True)
class Option:
    """One keyword-only option of a method: its type, default, valid range and help text."""

    name: str
    default: Any
    annotation: Any
    range: Range | None = None
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, method: str, value: Any) -> Any:
        """``value`` if valid for this option, else a one-line :class:`OptionError`."""
        if value is None and _allows_none(self.annotation):
            return value
        kinds = _kinds(self.annotation)
        literals = [v for k in kinds if typing.get_origin(k) is typing.Literal
                    for v in typing.get_args(k)]
        if isinstance(value, str) and value in literals:
            return value
        number = _as_number(value, kinds)
        if number is not None:
            if not (self.range or Range()).contains(float(number)):
                raise self._error(method, value, f"must be {(self.range or Range()).describe()}")
            return number
        if isinstance(value, str) and str in kinds:
            return value
        if bool in kinds and isinstance(value, (bool, np.bool_)):
            return bool(value)
        if any(_is_array_type(k) for k in kinds) and \
                isinstance(value, np.ndarray):
            return value
        allowed = ", ".join(map(repr, literals)) if literals else ""
        want = " or ".join(filter(None, [allowed, *(k.__name__ for k in kinds
                                                    if k in (int, float, str, bool))]))
        raise self._error(method, value, f"use {want or 'a valid value'}")

    def _error(self, method: str, value: Any, why: str) -> OptionError:
        return OptionError(f"{self.flag} {value!r}: {why} ({method} option {self.name})")


def _is_array_type(kind: Any) -> bool:
    """``np.ndarray`` or ``npt.NDArray[...]`` (from numpy 2.5 a type alias of it: followed
    through its value and each generic's origin, a few levels at most)."""
    for _ in range(8):  # bounded: an alias may name itself
        if kind is None or kind is np.ndarray:
            return kind is np.ndarray
        kind = getattr(kind, "__value__", None) or typing.get_origin(kind)
    return False


def _kinds(annotation: Any) -> list[Any]:
    """The alternatives of a (possibly Optional/Union) annotation, ``None`` left out."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _allows_none(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and \
        type(None) in typing.get_args(annotation)


def _as_number(value: Any, kinds: list[Any]) -> int | float | None:
    """``value`` as the option's int/float (a numeric string when the option also takes
    strings, as the CLI passes them), or None when it is not a number for this option."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if int in kinds and isinstance(value, (int, np.integer)):
        return int(value)
    if float in kinds:
        if isinstance(value, (int, float, np.integer, np.floating)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return None
    return None


def docstring_args(fn: Callable) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: {name: one-line help}."""
    doc = inspect.getdoc(fn) or ""
    out: dict[str, str] = {}
    if "Args:" not in doc:
        return out
    current = None
    for line in doc.split("Args:", 1)[1].splitlines()[1:]:
        if line and not line.startswith(" "):
            break  # the next section
        m = re.match(r"^ {4}(\w+)(?: \(.*?\))?: (.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.strip():
            out[current] += " " + line.strip()
    return out


@dataclass(frozen=True)
class MethodSpec:
    """Everything the package knows about a method, read once from its registration.

    Attributes:
        fast: option values for a quick look (``bbx evaluate --fast``, the tests).
        needs_gradient: the method runs a backward graph (so it fails on ops with no rule).
        batch_fn: an optional batched form (:func:`register_batch`; used by
            :func:`blackbox_xai.api.explain_batch`).
    """

    name: str
    fn: Callable[..., Attribution]
    family: str
    reference: str
    stochastic: bool
    requires_graph: bool
    options: tuple[Option, ...]
    fast: dict[str, Any] = field(default_factory=dict)
    needs_gradient: bool = False
    batch_fn: Callable[..., tuple[Any, list[int], list[Attribution]]] | None = None

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""

    def validate(self, options: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults; reject unknown options (did-you-mean) and invalid values, before any
        model evaluation."""
        names = [o.name for o in self.options]
        for key in options:
            if key not in names:
                raise UnknownNameError(did_you_mean(key, names, f"option for {self.name!r}"))
        return {o.name: o.check(self.name, options[o.name]) if o.name in options else o.default
                for o in self.options}


METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, family: str, reference: str, stochastic: bool = False,
             requires_graph: bool = False, needs_gradient: bool = False,
             fast: dict[str, Any] | None = None) -> Callable:
    """Register a method under ``name``; its keyword-only arguments (but ``ctx``) are its
    options, with ranges from ``Annotated[type, Range(...)]`` and help from the docstring's
    ``Args:`` section. A name registered twice is an error."""

    def deco(fn: Callable[..., Attribution]) -> Callable[..., Attribution]:
        if name in METHODS and METHODS[name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"method {name!r} is registered twice")
        hints = typing.get_type_hints(fn, include_extras=True)
        helps = docstring_args(fn)
        opts = []
        for p in inspect.signature(fn).parameters.values():
            if p.kind is not p.KEYWORD_ONLY or p.name == "ctx":
                continue
            hint = hints.get(p.name, type(p.default))
            rng = None
            if typing.get_origin(hint) is typing.Annotated:
                hint, *meta = typing.get_args(hint)
                rng = next((m for m in meta if isinstance(m, Range)), None)
            opts.append(Option(p.name, p.default, hint, rng, helps.get(p.name, "")))
        METHODS[name] = MethodSpec(name, fn, family, reference, stochastic, requires_graph,
                                   tuple(opts), dict(fast or {}), needs_gradient)
        return fn

    return deco


def register_batch(name: str) -> Callable:
    """Register ``fn(xs, targets, *, ctx, **options) -> (scores, targets, attributions)`` as
    the batched form of the registered method ``name`` (same options): over inputs xs
    (N, C, H, W) with one target each (None: the input's top-1), it returns the scores (N, K)
    of its own passes (no forward pass comes first), each input's target and attribution: the
    maps of ``fn`` one input at a time. ``ctx`` has the model (``ctx.scores`` is empty). A
    stochastic method has no batched form: its maps depend on one generator per input."""

    def deco(fn: Callable) -> Callable:
        spec = METHODS[name]
        if spec.stochastic:
            raise ValueError(f"method {name!r} is stochastic: it has no batched form")
        METHODS[name] = replace(spec, batch_fn=fn)
        return fn

    return deco

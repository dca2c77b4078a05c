"""User-facing errors: one clear line each, exit code 2 from the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BlackboxError(ValueError):
    """Base class for errors caused by the user's input (model, image, option, name)."""


class ModelLoadError(BlackboxError):
    """The file is missing, unreadable, or not a valid ONNX model."""


class ModelInputError(BlackboxError):
    """The model's input or output is not what an image explainer can use."""


class DeviceError(BlackboxError):
    """The requested execution provider is not usable on this machine."""


class ImageError(BlackboxError):
    """An image file could not be read or decoded."""


class UnknownNameError(BlackboxError):
    """A method, option or tensor name that does not exist."""


class GraphUnavailableError(BlackboxError):
    """The model's graph cannot be rewritten (an opset the converter cannot upgrade)."""


class ModelRunError(BlackboxError):
    """ONNX Runtime failed while running the model (a shape it rejects, memory)."""


class InternalError(RuntimeError):
    """A bug in blackbox-xai (e.g. a generated graph ONNX Runtime rejects): exit code 3."""


def did_you_mean(name: str, choices: Iterable[str], what: str, n: int = 3) -> str:
    """Return ``"unknown <what> 'name'; did you mean: a, b?"`` (or the list of valid names)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if close:
        return f"unknown {what} {name!r}; did you mean: {', '.join(close)}?"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"unknown {what} {name!r}; valid: {shown}"
